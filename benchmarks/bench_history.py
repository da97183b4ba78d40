"""History benchmark: `history` over 120 nightlies of the 1,564-cell fixture.

How the 120 run directories are made (generating and analyzing 120 x 1,564 cells would take
hours, and every copy would be the same run anyway):

1. One real run: the fixture's parameter set (../shared/fixtures/vm-test-runs/parameters.d,
   1,564 cells) is planned and generated as `generate` does; every cell's output/ is filled as
   extraction leaves it (the guest's result.json with phase times, and one of the fixture's real
   osg-test logs: pass, fail, cleanup, update; some cells fail their install); then it is
   analyzed by `analyze` into a real results.json.
2. It is copied 120 times (run.json and cells.jsonl as they are, with a date per night;
   results.json rewritten): each copy's cells get that night's outcome and phase times (every
   phase time jittered by up to 10% a night), with planted cells: a flaky one (its acceptable
   state flips 4 times in the last 14 nights), a regression and a fix in the last night, one
   that fails every night (neither flaky nor a regression), and one whose test phase takes
   twice its usual time in the last night. The counts are recomputed as `analyze` computes them.

Then, in this one process, with the files in the page cache: the baseline (parse every
results.json once, as every reader of them does: `ResultsDocument.read`), the first `history`
call (no index: it is built), a later call (index present) and a call after one more night.
Targets: first <= 3x the baseline, later <= 0.5x.

    .venv/bin/python benchmarks/bench_history.py [--nights 120] [--keep DIR]

With --keep DIR the run directories stay in DIR, and a later call with the same DIR measures
again without making them anew.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

from osgtest_dag.analyze import results, runindex
from osgtest_dag.base.atomic import write_json_atomic
from osgtest_dag.generate import workflow
from osgtest_dag.model.manifest import RunManifest
from osgtest_dag.model.outcome import Outcome
from osgtest_dag.model.results import ResultsDocument
from osgtest_dag.model.rundir import RunDir
from osgtest_dag.plan import matrix
from osgtest_dag.plan.catalog import Catalog

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT.parent / "shared" / "fixtures" / "vm-test-runs"
PHASES = ("environment", "network", "hostname", "repositories", "install", "test", "update", "collect")
# What the base run's cells are (by serial position): guest status and the fixture log.
KINDS = (
    [("pass", "pass.log")] * 85
    + [("test", "fail.log")] * 6
    + [("test", "cleanup.log")] * 4
    + [("test", "update.log")] * 3
    + [("install", None)] * 2
)


def _stamp(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def guest_result(serial: str, status: str, rng: random.Random) -> dict:
    """result.json as run-job writes it: phases up to the failing one (then skipped), timed."""
    failed = {"test": "test", "install": "install"}.get(status)
    t = dt.datetime(2026, 7, 14, 23, 0, tzinfo=dt.UTC)
    seconds = {"install": rng.uniform(200, 700), "test": rng.uniform(900, 3000)}
    phases, stop = [], False
    for name in PHASES:
        if stop and name != "collect":
            phases.append({"name": name, "start": None, "end": None, "exit_code": None, "status": "skipped"})
            continue
        end = t + dt.timedelta(seconds=seconds.get(name, 20))
        code = 1 if name == failed else 0
        phases.append(
            {
                "name": name,
                "start": _stamp(t),
                "end": _stamp(end),
                "exit_code": code,
                "status": "failed" if code else "ok",
            }
        )
        stop = stop or bool(code)
        t = end
    return {
        "schema": "osgtest-dag/guest-result",
        "version": 1,
        "serial": serial,
        "platform": None,
        "started": phases[0]["start"],
        "finished": _stamp(t),
        "current_phase": None,
        "phases": phases,
        "status": status,
        "exit_code": 0 if status == "pass" else 1,
        "message": None,
    }


def base_run(work: Path) -> Path:
    """The fixture's parameter set, generated, filled and analyzed: one real run directory."""
    cat = Catalog.load(image_dir="/images")
    m = matrix.build([FIXTURES / "parameters.d"], cat)
    run = workflow.write_run(
        work / "base",
        list(m.cells),
        cat,
        workflow.WorkflowOptions(tool="/opt/osgtest-dag"),
        param_files=list(m.files),
    )
    logs = work / "logs"  # one copy of each fixture log, hard-linked into every cell using it
    logs.mkdir()
    for name in ("pass.log", "fail.log", "cleanup.log", "update.log"):
        shutil.copyfile(FIXTURES / "osg-test-logs" / name, logs / name)
    rng = random.Random(14)
    layout = RunDir(run)
    for i, cell in enumerate(m.cells):
        status, log = KINDS[i % len(KINDS)]
        out = layout.cell(cell.serial).output
        out.mkdir(parents=True)
        (out / "result.json").write_text(json.dumps(guest_result(cell.serial, status, rng)))
        if log:
            (out / "test.log").hardlink_to(logs / log)
    t0 = time.perf_counter()
    doc = results.analyze_run(run)
    print(
        f"base run: {len(doc.cells):,} cells generated and analyzed in {time.perf_counter() - t0:.1f} s "
        f"(results.json {layout.results.stat().st_size / 1e6:.1f} MB): "
        + ", ".join(f"{n} {o}" for o, n in doc.counts["by_outcome"].items() if n),
        flush=True,
    )
    return run


def plant(cells: list[dict]) -> dict[str, dict]:
    """The planted cells (label -> the base run's cell), chosen among those that passed."""
    passing = [c for c in cells if c["outcome"] == "pass" and c["durations"].get("test")]
    names = ("flaky", "regression", "fix", "always_failing", "slower")
    return dict(zip(names, passing[:: len(passing) // len(names)], strict=False))


FLAKY_FAIL_NIGHTS = (-12, -11, -10, -7, -6, -5)  # of the last 14: acceptable flips 4 times


def night_outcome(role: str | None, base: str, night: int, nights: int) -> str:
    back = night - nights  # -1 is the last night
    if role == "flaky":
        return "fail" if back in FLAKY_FAIL_NIGHTS else "pass"
    if role == "regression":
        return "fail" if back == -1 else "pass"
    if role == "fix":
        return "install" if back < -1 else "pass"
    if role == "always_failing":
        return "fail"
    return base


def make_nights(base: Path, root: Path, nights: int, first: int = 0) -> dict[str, dict]:
    """Copies of the base run, one per night, with that night's outcomes and times."""
    doc = ResultsDocument.read(base).to_json()
    manifest = RunManifest.read(base)
    planted = plant(doc["cells"])
    roles = {c["serial"]: role for role, c in planted.items()}
    rng = random.Random(120)
    for night in range(first, nights):
        name = f"nightly-{night:03d}"
        when = _stamp(dt.datetime(2026, 1, 1, 23, 0, tzinfo=dt.UTC) + dt.timedelta(days=night))
        run = root / name
        run.mkdir()
        shutil.copyfile(RunDir(base).cell_store, RunDir(run).cell_store)
        write_json_atomic(
            RunDir(run).manifest, dataclasses.replace(manifest, generated=when, run_name=name).to_json()
        )
        night_doc = copy.copy(doc)
        cells = []
        for c in doc["cells"]:
            role = roles.get(c["serial"])
            cell = dict(c)
            cell["outcome"] = night_outcome(role, c["outcome"], night, nights)
            jitter = 1 + rng.uniform(-0.1, 0.1)
            cell["durations"] = {k: round(v * jitter, 1) for k, v in c["durations"].items()}
            if role == "slower" and night == nights - 1:
                cell["durations"]["test"] = round(c["durations"]["test"] * 2, 1)
            cells.append(cell)
        night_doc["cells"] = cells
        night_doc["counts"] = results.summarize(cells)
        night_doc["worst"] = Outcome.worst((Outcome(c["outcome"]) for c in cells), Outcome.PASS).value
        night_doc["run"] = {**doc["run"], "name": name, "dir": str(run), "generated": when}
        write_json_atomic(RunDir(run).results, night_doc)
    return planted


def _key(c: dict) -> dict:
    return {"platform": c["platform"]["id"], "source": c["source"]["raw"], "label": c["label"]}


def check(h: dict, planted: dict[str, dict]) -> None:
    """The planted cells, and only they, are where they belong."""
    assert [{k: f[k] for k in ("platform", "source", "label")} for f in h["flaky"]] == [
        _key(planted["flaky"])
    ], h["flaky"]
    assert h["flaky"][0]["flips"] == 4
    assert [{k: c[k] for k in ("platform", "source", "label")} for c in h["regressions"]] == [
        _key(planted["regression"])
    ]
    assert [{k: c[k] for k in ("platform", "source", "label")} for c in h["fixes"]] == [_key(planted["fix"])]
    assert [(s["label"], s["phase"]) for s in h["slower"]] == [(planted["slower"]["label"], "test")], h[
        "slower"
    ]
    always = _key(planted["always_failing"])
    row = next(c for c in h["cells"] if {k: c[k] for k in always} == always)
    assert set(row["outcomes"]) == {"fail"}


def timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nights", type=int, default=120)
    ap.add_argument("--keep", type=Path, help="Build in (and keep, or reuse) this directory.")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-history-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        base, root = work / "base", work / "runs"
        if (root / f"nightly-{args.nights - 1:03d}" / "results.json").is_file():  # made by an earlier --keep
            shutil.rmtree(root / f"nightly-{args.nights:03d}", ignore_errors=True)
            planted = plant(ResultsDocument.read(base).to_json()["cells"])
            print(f"reusing the run directories of {root}")
        else:
            base_run(work)
            root.mkdir()
            planted, made_s = timed(lambda: make_nights(base, root, args.nights))
            print(f"run directories made in {made_s:.0f} s")
        files = sorted(root.glob("*/results.json"))
        size = sum(p.stat().st_size for p in files)
        print(f"{len(files)} run directories ({size / 1e9:.2f} GB of results.json)", flush=True)
        for p in files:  # page cache warm for every measurement alike
            p.read_bytes()

        _, baseline = timed(lambda: [ResultsDocument.read(p) for p in files])
        runindex.index_path(root).unlink(missing_ok=True)
        h, first = timed(lambda: runindex.history(root).to_json())
        check(h, planted)
        h2, later = timed(lambda: runindex.history(root).to_json())
        assert h2 == h
        make_nights(base, root, args.nights + 1, first=args.nights)
        h3, added = timed(lambda: runindex.history(root).to_json())
        assert h3["runs"][-1]["name"] == f"nightly-{args.nights:03d}"
        index_mb = runindex.index_path(root).stat().st_size / 1e6

        print(f"baseline: parse every results.json once ({len(files)} files): {baseline:8.2f} s")
        print(
            f"history, first call (index built):              {first:8.2f} s  ratio {first / baseline:5.2f}x (target <= 3)"
        )
        print(
            f"history, later call (index present):            {later:8.2f} s  ratio {later / baseline:5.3f}x (target <= 0.5)"
        )
        print(
            f"history, after one more night (1 file read):    {added:8.2f} s  ratio {added / baseline:5.3f}x"
        )
        print(
            f"index: {index_mb:.1f} MB; planted cells found: flaky, regression, fix, slower; always-failing neither"
        )
        ok = first <= 3 * baseline and later <= 0.5 * baseline
        print("targets met" if ok else "TARGETS MISSED")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
