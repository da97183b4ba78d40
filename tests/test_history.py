"""`history` over a runs root of real generated and analyzed runs: the exact flaky, regression,
fix and slower lists, the run index kept up to date incrementally and rebuilt when deleted,
corrupt, of another schema or left half-built, the page in Chromium, and the nightly's report
and e-mail carrying the flaky and slower cells."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sqlite3
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import KNOWN_FAILURES_2014, make_results_run
from test_reports import _chromium

from osgtest_dag.analyze import results, runindex
from osgtest_dag.base.atomic import write_json_atomic
from osgtest_dag.base.errors import UserError
from osgtest_dag.cli.main import main as cli_main
from osgtest_dag.model.history import CellKey, CellRun, RunCells, compute
from osgtest_dag.model.manifest import RunManifest
from osgtest_dag.model.outcome import Outcome
from osgtest_dag.model.rundir import RunDir
from osgtest_dag.nodes import node
from osgtest_dag.report import email as report_email
from osgtest_dag.report import history as report_history

PLATFORM = "rocky_9.x86_64"
SOURCE = "opensciencegrid:master; 24; osg"
PARAMS = {
    "el.yaml": f"""\
platforms: [{PLATFORM}]
sources: ['{SOURCE}']
package_sets:
  - {{label: Flaky, packages: [flaky-pkg]}}
  - {{label: Regressed, packages: [regressed-pkg]}}
  - {{label: Fixed, packages: [fixed-pkg]}}
  - {{label: Broken, packages: [broken-pkg]}}
  - {{label: Steady, packages: [steady-pkg]}}
"""
}
# label -> outcome each night (oldest first)
PLAN = {
    "Flaky": ("pass", "fail", "waived", "fail", "pass", "pass"),
    "Regressed": ("pass", "pass", "pass", "pass", "pass", "fail"),
    "Fixed": ("install", "install", "install", "install", "install", "pass"),
    "Broken": ("fail",) * 6,
    "Steady": ("pass",) * 6,
}
STEADY_TEST_SECONDS = (600, 610, 590, 605, 600, 1000)
# outcome -> (guest status, osg-test log of the fixtures)
GUEST = {
    "pass": ("pass", "pass.log"),
    "fail": ("test", "fail.log"),
    "waived": ("test", "ignore.log"),
    "install": ("install", None),
}


def _timed(doc: dict, install_s: float, test_s: float) -> dict:
    """The guest result with its install and test phases taking these seconds."""
    for ph in doc["phases"]:
        if ph["name"] in ("install", "test") and ph["start"]:
            seconds = install_s if ph["name"] == "install" else test_s
            start = "2014-12-12T05:00:00Z"
            ph["start"] = start
            ph["end"] = (
                f"2014-12-12T{5 + int(seconds // 3600):02d}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}Z"
            )
    return doc


def make_night(root: Path, night: int, outcomes: dict[str, str], steady_test_s: float = 600) -> Path:
    """A real run directory: generated from PARAMS, its cells filled as extraction leaves
    them, analyzed."""
    r = make_results_run(root, f"night-{night}", PARAMS)
    shutil.rmtree(root / f"night-{night}-params")
    (r.dir / "known-failures.yaml").write_text(KNOWN_FAILURES_2014)
    for label, outcome in outcomes.items():
        s = r.serial(PLATFORM, label)
        status, log = GUEST[outcome]
        doc = r.guest(s, status)
        test_s = steady_test_s if label == "Steady" else 600
        r.file(s, "result.json", json.dumps(_timed(doc, 300, test_s)))
        if log:
            r.osgtest_log(s, log)
    results.analyze_run(r.dir)
    return r.dir


def night_outcomes(night: int) -> dict[str, str]:
    return {label: plan[night] for label, plan in PLAN.items()}


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for n in range(6):
        make_night(root, n, night_outcomes(n), STEADY_TEST_SECONDS[n])
    return root


@pytest.fixture
def root_copy(runs_root, tmp_path) -> Path:
    dest = tmp_path / "runs"
    # the run directories as they are (mtimes too), without the index another test built
    shutil.copytree(
        runs_root, dest, copy_function=shutil.copy2, ignore=shutil.ignore_patterns(runindex.INDEX_NAME)
    )
    return dest


def _key(label: str) -> dict:
    return {"platform": PLATFORM, "source": SOURCE, "label": label}


EXPECTED = {
    "flaky": [{**_key("Flaky"), "flips": 4, "outcomes": list(PLAN["Flaky"])}],
    "regressions": [{**_key("Regressed"), "from": "pass", "to": "fail"}],
    "fixes": [{**_key("Fixed"), "from": "install", "to": "pass"}],
    "slower": [{**_key("Steady"), "phase": "test", "seconds": 1000.0, "median": 600.0, "ratio": 1.67}],
}


def _lists(doc: dict) -> dict:
    return {k: doc[k] for k in EXPECTED}


def test_history_lists_exactly_the_planted_cells(runs_root):
    doc = runindex.history(runs_root).to_json()
    assert _lists(doc) == EXPECTED  # Broken: always failing, neither flaky nor a regression
    assert [r["name"] for r in doc["runs"]] == [f"night-{n}" for n in range(6)]
    assert doc["runs"][5]["counts"] == {
        "pass": 3,
        "cleanup": 0,
        "waived": 0,
        "fail": 2,
        "update": 0,
        "install": 0,
        "timeout": 0,
        "infra": 0,
        "missing": 0,
    }
    assert all(r["generated"] for r in doc["runs"])
    cells = {c["label"]: c["outcomes"] for c in doc["cells"]}
    assert cells == {label: list(plan) for label, plan in PLAN.items()}
    # the window: the last 3 runs only
    short = runindex.history(runs_root, last=3).to_json()
    assert [r["name"] for r in short["runs"]] == ["night-3", "night-4", "night-5"]
    assert short["flaky"] == [] and short["slower"] == []  # 1 flip; 2 earlier samples are no trend
    assert short["regressions"] == EXPECTED["regressions"]


def test_index_is_incremental(root_copy):
    _, first = runindex.load(root_copy)
    assert first.rebuilt == "missing" and first.read == 6
    _, again = runindex.load(root_copy)
    assert (again.rebuilt, again.read, again.kept) == (None, 0, 6)
    # a new night: only it is read
    make_night(root_copy, 6, dict.fromkeys(PLAN, "pass"))
    runs, added = runindex.load(root_copy)
    assert (added.rebuilt, added.read, added.kept) == (None, 1, 6)
    assert runs[-1].name == "night-6"
    doc = runindex.history(root_copy).to_json()
    assert doc["regressions"] == [] and {c["label"] for c in doc["fixes"]} == {"Regressed", "Broken"}
    # touched but the same bytes: the digest says unchanged
    res = RunDir(root_copy / "night-2").results
    os.utime(res, ns=(res.stat().st_atime_ns, res.stat().st_mtime_ns + 5_000_000_000))
    _, touched = runindex.load(root_copy)
    assert (touched.read, touched.kept) == (0, 7)
    # re-analyzed with another outcome: read again
    data = json.loads(res.read_text())
    cell = next(c for c in data["cells"] if c["label"] == "Broken")
    cell["outcome"] = "pass"
    write_json_atomic(res, data)
    runs, changed = runindex.load(root_copy)
    assert (changed.read, changed.kept) == (1, 6)
    assert runs[2].cells[CellKey(PLATFORM, SOURCE, "Broken")].outcome is Outcome.PASS
    # a run directory deleted (retention): dropped
    shutil.rmtree(root_copy / "night-0")
    runs, dropped = runindex.load(root_copy)
    assert dropped.dropped == 1 and [r.name for r in runs][0] == "night-1"
    # not analyzed yet: left out, and said
    make_results_run(root_copy, "night-7", PARAMS)
    _, pending = runindex.load(root_copy)
    assert pending.unanalyzed == ("night-7",)


def _rebuilds_the_same(root: Path, damage) -> str | None:
    before = runindex.history(root).to_json()
    damage(runindex.index_path(root))
    _, report = runindex.load(root)
    assert report.read == 6 and runindex.history(root).to_json() == before
    return report.rebuilt


def test_index_rebuilt_when_deleted_corrupt_or_of_another_schema(root_copy):
    assert _rebuilds_the_same(root_copy, Path.unlink) == "missing"

    def garbage(p: Path) -> None:
        p.write_bytes(b"this is no database\n" * 500)

    assert "unreadable" in _rebuilds_the_same(root_copy, garbage)

    def truncated(p: Path) -> None:
        with open(p, "r+b") as f:
            f.truncate(p.stat().st_size // 3)

    assert _rebuilds_the_same(root_copy, truncated)

    def other_version(p: Path) -> None:
        with sqlite3.connect(p) as db:
            db.execute("UPDATE meta SET value = '0' WHERE key = 'schema'")

    assert "schema version 0" in _rebuilds_the_same(root_copy, other_version)


def test_a_killed_build_leaves_the_index_usable(root_copy, monkeypatch):
    """An update dies half-way (after storing a run): its transaction leaves nothing behind."""
    before = runindex.history(root_copy).to_json()
    make_night(root_copy, 6, dict.fromkeys(PLAN, "pass"))
    make_night(root_copy, 7, dict.fromkeys(PLAN, "pass"))
    stored = []
    real_store = runindex._Writer.store

    def dies_after_one(self, *args):
        if stored:
            raise KeyboardInterrupt
        stored.append(args)
        real_store(self, *args)

    monkeypatch.setattr(runindex._Writer, "store", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        runindex.load(root_copy)
    with sqlite3.connect(runindex.index_path(root_copy)) as db:
        assert db.execute("SELECT count(*) FROM runs").fetchone() == (6,)
    monkeypatch.undo()
    (root_copy / "night-6").rename(root_copy / ".night-6")  # hidden: not a run of the root
    shutil.rmtree(root_copy / "night-7")
    assert runindex.history(root_copy).to_json() == before


def test_a_first_build_killed_is_rebuilt(root_copy, monkeypatch):
    monkeypatch.setattr(runindex, "_update", lambda db, scanned: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        runindex.load(root_copy)
    monkeypatch.undo()
    _, report = runindex.load(root_copy)
    assert report.rebuilt and report.read == 6


def test_unreadable_results_are_left_out_and_said(root_copy):
    RunDir(root_copy / "night-5").results.write_text('{"schema": "osgtest-dag/results", "version": 99}')
    runs, report = runindex.load(root_copy)
    assert [r.name for r in runs][-1] == "night-4"
    assert [d for d, _ in report.unreadable] == ["night-5"] and "version 99" in report.unreadable[0][1]


def test_compute_is_pure_and_follows_the_acceptable_line():
    k = CellKey("p", "s", "l")

    def run(name: str, outcome: str, test_s: float | None = None) -> RunCells:
        return RunCells(name, name, {k: CellRun(Outcome(outcome), test_s=test_s)})

    # cleanup is not acceptable (model/outcome.py): pass -> cleanup is a regression
    h = compute([run("a", "pass"), run("b", "cleanup")])
    assert [c.to_json() for c in h.regressions] == [
        {"platform": "p", "source": "s", "label": "l", "from": "pass", "to": "cleanup"}
    ]
    # waived is: fail -> waived is a fix, waived -> pass nothing
    assert compute([run("a", "fail"), run("b", "waived")]).fixes
    assert not compute([run("a", "waived"), run("b", "pass")]).regressions
    # a cell missing from a run does not count as a flip
    gaps = [run("a", "pass"), run("b", "fail"), RunCells("c", "c", {}), run("d", "pass"), run("e", "fail")]
    h = compute(gaps)
    assert h.cells[0].outcomes == (Outcome.PASS, Outcome.FAIL, None, Outcome.PASS, Outcome.FAIL)
    assert [f.cell.flips for f in h.flaky] == [3]
    # slower needs 3 earlier samples and 10 s more besides the ratio
    assert not compute([run("a", "pass", 10), run("b", "pass", 10), run("c", "pass", 19)]).slower
    assert not compute([run(x, "pass", 4) for x in "abc"] + [run("d", "pass", 9)]).slower
    assert compute([run(x, "pass", 40) for x in "abc"] + [run("d", "pass", 60)]).slower
    with pytest.raises(ValueError):
        compute([], last=0)


# ------------------------------------------------------------------------------ the command
def _cli(*args: str):
    return CliRunner().invoke(cli_main, list(args), catch_exceptions=False)


def test_cli_formats(runs_root, tmp_path):
    res = _cli("history", str(runs_root), "--format", "json")
    assert res.exit_code == 0, res.output
    assert _lists(json.loads(res.output)) == EXPECTED
    res = _cli("history", str(runs_root))
    assert res.exit_code == 0
    assert "Regressions (1):\n  pass -> fail  rocky_9.x86_64 | Regressed" in res.output
    assert "4 flips  rocky_9.x86_64 | Flaky" in res.output and "Broken" in res.output
    out = tmp_path / "h" / "history.html"
    res = _cli("history", str(runs_root), "--last", "4", "-f", "html", "-o", str(out))
    assert res.exit_code == 0 and out.is_file()
    assert "night-1" not in out.read_text() and "night-2" in out.read_text()


def test_cli_bad_input(tmp_path):
    res = _cli("history", str(tmp_path / "nowhere"))
    assert res.exit_code == 2 and "not a directory" in res.output and "hint" in res.output
    (tmp_path / "file").write_text("x")
    assert _cli("history", str(tmp_path / "file")).exit_code == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    res = _cli("history", str(empty))
    assert res.exit_code == 2 and "no analyzed run" in res.output
    assert _cli("history", str(empty), "--last", "0").exit_code == 2
    with pytest.raises(UserError, match="no analyzed run"):
        runindex.history(empty)


def test_history_page_in_chromium(runs_root, tmp_path):
    h = runindex.history(runs_root)
    page = report_history.html(h)
    assert "<link" not in page and "url(" not in page and "src=" not in page
    out = tmp_path / "history.html"
    out.write_text(page)
    proc = _chromium(tmp_path, "--dump-dom", out.as_uri())
    dom = proc.stdout
    assert 'data-js="ok"' in dom and 'data-js-error="' not in dom and "Uncaught" not in proc.stderr
    grid = dom.split('id="history-grid"')[1].split("</table>")[0]
    assert grid.count("<tr") == 1 + len(PLAN)  # the head, then one row per cell
    assert grid.count('class="o o-') == 6 * len(PLAN)
    assert 'class="flaky"' in grid and grid.count('class="steady"') == 1
    # the box ticked (as a click would): the script hides the cells that passed every run
    ticked = tmp_path / "ticked.html"
    ticked.write_text(page.replace('id="hide-steady">', 'id="hide-steady" checked>'))
    dom = _chromium(tmp_path, "--dump-dom", ticked.as_uri()).stdout
    assert 'class="steady hidden"' in dom
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, "--window-size=1200,900", f"--screenshot={shot}", out.as_uri())
    assert shot.stat().st_size > 10_000


def test_history_page_escapes(tmp_path):
    k = CellKey("<script>alert(1)</script>", "<b>src</b>", "<img src=x>")
    h = compute([RunCells("<i>run</i>", None, {k: CellRun(Outcome.FAIL, platform_name="<u>p</u>")})])
    page = report_history.html(h)
    assert "<script>alert" not in page and "<img src=x" not in page and "<i>run" not in page


# ------------------------------------------------------------------------------ the nightly
def _mark_nightly(run_dir: Path) -> None:
    m = RunManifest.read(run_dir)
    write_json_atomic(
        RunDir(run_dir).manifest,
        dataclasses.replace(m, options=dataclasses.replace(m.options, nightly=True)).to_json(),
    )


def test_nightly_report_and_mail_carry_flaky_and_slower(root_copy):
    latest = root_copy / "night-5"
    assert runindex.nightly_history(latest) is None  # not a nightly: no section
    written = node.report(latest)
    assert "Flaky cells" not in written["text"].read_text()
    _mark_nightly(latest)
    written = node.report(latest)
    report_txt = written["text"].read_text()
    assert "Flaky cells over the last 6 runs (1):\n  4 flips  rocky_9.x86_64 | Flaky" in report_txt
    assert "Slower than their median over the last 6 runs (1):\n  test" in report_txt
    assert 'id="history"' in written["html"].read_text()
    # an earlier nightly's report shows the history up to that night
    _mark_nightly(root_copy / "night-3")
    early = runindex.nightly_history(root_copy / "night-3")
    assert early is not None and [r.name for r in early.runs][-1] == "night-3"
    # the mail: text, HTML body and the attached report
    from osgtest_dag.model.results import ResultsDocument

    settings = report_email.SmtpSettings(host="localhost", recipients=("a@example.org",))
    msg = report_email.build_message(
        ResultsDocument.read(latest), settings, history=runindex.nightly_history(latest)
    )
    parsed = message_from_bytes(bytes(msg), policy=default_policy)
    body = parsed.get_body(("plain",)).get_content()
    assert "Flaky cells over the last 6 runs (1)" in body
    html_body = parsed.get_body(("html",)).get_content()
    assert "Slower than their median" in html_body and "Steady" in html_body
