"""HTCondor operations that need no pool: submit --dry-run, status/watch from HTCondor's own
file formats, rerun, cleanup, the schedule units, host health and exclusions."""

from __future__ import annotations

import datetime as dt
import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import condor_cli

from osgtest_dag.model.manifest import RunManifest, WorkflowOptions

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "demo"
DATA = Path(__file__).resolve().parent / "data" / "condor"


@pytest.fixture
def demo_run(tmp_path):
    from osgtest_dag.generate.workflow import write_run
    from osgtest_dag.model.manifest import WorkflowOptions
    from osgtest_dag.plan import matrix
    from osgtest_dag.plan.catalog import Catalog

    catalog = Catalog.load(image_dir="/images")
    m = matrix.build([DEMO], catalog)
    return write_run(tmp_path / "run1", list(m.cells), catalog, WorkflowOptions(), param_files=list(m.files))


# --- submit ---------------------------------------------------------------------------------


def test_submit_dry_run_writes_the_dagman_submit_file(demo_run):
    r = condor_cli(
        "submit",
        str(demo_run),
        "--dry-run",
        "--maxjobs",
        "4",
        "--maxidle",
        "7",
        "--batch-name",
        "nightly-x",
        "--append",
        "accounting_group = ops",
        "--append",
        "+Foo = 1",
    )
    assert r.exit_code == 0, r.output
    sub = demo_run / "workflow.dag.condor.sub"
    assert sub.is_file()
    text = sub.read_text()
    assert "universe" in text and "scheduler" in text
    assert "-Dag workflow.dag" in text and "-MaxJobs 4" in text and "-MaxIdle 7" in text
    assert "accounting_group = ops" in text
    assert 'JobBatchName = "nightly-x"' in r.output
    assert f"initialdir = {demo_run.resolve()}" in r.output
    # a second dry run rewrites it instead of failing
    r = condor_cli("submit", str(demo_run), "--dry-run")
    assert r.exit_code == 0, r.output
    assert 'JobBatchName = "run1"' in r.output


def test_submit_without_a_schedd_is_a_user_error(demo_run):
    r = condor_cli("submit", str(demo_run), "--pool", "127.0.0.1:1")
    assert r.exit_code == 2
    assert "error:" in r.output and "Traceback" not in r.output
    assert "hint:" in r.output


def test_submit_refuses_a_submitted_run(demo_run):
    (demo_run / "workflow.dag.condor.sub").write_text("queue\n")
    (demo_run / "workflow.dag.dagman.out").write_text("")
    r = condor_cli("submit", str(demo_run), "--dry-run")
    assert r.exit_code == 2 and "already submitted" in r.output


def test_submit_not_a_run_dir(tmp_path):
    r = condor_cli("submit", str(tmp_path), "--dry-run")
    assert r.exit_code == 2 and "not a run directory" in r.output


# --- node status files and event logs (HTCondor's formats) ---------------------------------

DOC_STATUS = """\
[
  Type = "DagStatus";
  DagFiles = {
    "diamond.dag"
  };
  Timestamp = 1399674138;
  DagStatus = 3;
  NodesTotal = 12;
  NodesDone = 11;
  NodesPre = 0;
  NodesQueued = 1;
  NodesPost = 0;
  NodesReady = 0;
  NodesUnready = 0;
  NodesFailed = 0;
  JobProcsHeld = 0;
  JobProcsIdle = 1;
]
[
  Type = "NodeStatus";
  Node = "A";
  NodeStatus = 5;
  StatusDetails = "";
  RetryCount = 0;
  JobProcsQueued = 0;
  JobProcsHeld = 0;
]
[
  Type = "NodeStatus";
  Node = "D";
  NodeStatus = 3;
  StatusDetails = "idle";
  RetryCount = 0;
  JobProcsQueued = 1;
  JobProcsHeld = 0;
]
[
  Type = "StatusEnd";
  EndTime = 1399674138;
  NextUpdate = 1399674141;
]
"""


def test_node_status_file_as_documented():
    from osgtest_dag.engine.condor.status import parse_node_status

    nsf = parse_node_status(DOC_STATUS)
    assert nsf.state == "submitted"
    assert nsf.dag["NodesTotal"] == 12 and nsf.dag["DagFiles"] == ["diamond.dag"]
    assert nsf.nodes["A"]["NodeStatus"] == 5 and nsf.nodes["D"]["StatusDetails"] == "idle"
    assert nsf.end["NextUpdate"] == 1399674141


def test_half_written_node_status_file(tmp_path):
    from osgtest_dag.engine.condor.status import read_node_status

    p = tmp_path / "x.status"
    p.write_text(DOC_STATUS[:200])
    assert read_node_status(p, tries=1) is None
    assert read_node_status(tmp_path / "missing") is None


def _real(name: str) -> Path:
    p = DATA / name
    if not p.exists():
        pytest.fail(f"test data missing: {p} (recorded from the test pool by tests/test_pool.py)")
    return p


def test_real_node_status_file_of_the_injected_dag():
    """Recorded from HTCondor 23.9's DAGMan (tests/test_pool.py::test_differential...)."""
    from pooltest import EXPECTED, final_node_states

    assert final_node_states(_real("injected/injected.dag.status")) == EXPECTED


def _copy_run(tmp_path, name: str) -> Path:
    src = _real(name)
    dst = tmp_path / name.replace("/", "_")
    shutil.copytree(src, dst, symlinks=True)
    return dst


def test_status_of_a_finished_real_run(tmp_path):
    """A run directory shaped like ours (workflow.dag -> SUBDAG matrix.dag, logs/jobs.log,
    *.status, *.nodes.log, *.dagman.log) that the test pool ran: cells by state, held jobs
    with their codes, retries, elapsed time."""
    from osgtest_dag.engine.condor.status import format_progress, progress

    run = _copy_run(tmp_path, "shaped/finished")
    p = progress(run)
    assert p.finished and p.dag_state == "done" and p.dagman_exit == 0
    assert p.cells_total == 3
    assert p.cells == {"000": "done", "001": "done", "002": "failed"}
    assert p.retries == {"TestRun001": 1}
    assert p.held == []
    assert p.elapsed_s and 1 < p.elapsed_s < 3600
    text = format_progress(p)
    assert "done 2" in text and "failed 1" in text and "TestRun001 1" in text


def test_status_of_a_running_real_run_with_a_held_job(tmp_path):
    from osgtest_dag.engine.condor.status import progress

    run = _copy_run(tmp_path, "shaped/held")
    p = progress(run)
    assert not p.finished and p.dag_state == "running"
    assert p.cells["002"] == "held"
    [h] = p.held
    assert h["node"] == "TestRun002" and h["code"] == 3 and "osgtest" in h["reason"]


def test_watch_plain_lines_until_the_end(tmp_path):
    from osgtest_dag.engine.condor.status import watch

    run = _copy_run(tmp_path, "shaped/finished")
    out = io.StringIO()
    p = watch(run, interval=0.01, tty=False, out=out, sleep=lambda s: None)
    assert p.finished
    text = out.getvalue()
    assert "\r" not in text and "3/3 cells" in text and "done" in text


def test_watch_tty_redraws(tmp_path):
    from osgtest_dag.engine.condor.status import watch

    run = _copy_run(tmp_path, "shaped/finished")
    out = io.StringIO()
    watch(run, interval=0.01, tty=True, out=out, sleep=lambda s: None)
    assert out.getvalue().startswith("\r\x1b[K[")


def test_watch_gives_up_after_timeout(tmp_path, demo_run):
    r = condor_cli("watch", str(demo_run), "--interval", "0.1", "--timeout", "0.2")
    assert r.exit_code == 3, r.output
    assert "not_submitted" in r.output


def test_status_cli_json(tmp_path):
    run = _copy_run(tmp_path, "shaped/finished")
    r = condor_cli("status", str(run), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["cells_finished"] == 3


# --- rerun ----------------------------------------------------------------------------------


def _result(run: Path, serial: str, status: str) -> None:
    d = run / "cells" / serial / "output"
    d.mkdir(parents=True, exist_ok=True)
    (d / "result.json").write_text(
        json.dumps({"schema": "osgtest-dag/guest-result", "version": 1, "serial": serial, "status": status})
    )


def _post(run: Path, serial: str, verdict: str, reason: str = "x") -> None:
    d = run / "cells" / serial
    d.mkdir(parents=True, exist_ok=True)
    (d / "post-vm.json").write_text(
        json.dumps(
            {
                "schema": "osgtest-dag/post-vm",
                "version": 1,
                "decisions": [{"attempt": 0, "verdict": verdict, "reason": reason, "exit": 1}],
            }
        )
    )


def test_rerun_everything_not_passed_keeps_serials_and_inputs(demo_run, tmp_path):
    from osgtest_dag.generate.cellconfig import iter_cells

    _result(demo_run, "000", "pass")
    _result(demo_run, "001", "test")
    _result(demo_run, "002", "install")
    _post(demo_run, "003", "infra", "no result disk came back")
    for s in ("004", "005", "006"):
        _result(demo_run, s, "pass")
    # 007: nothing at all -> missing
    new = tmp_path / "rerun"
    r = condor_cli("rerun", str(demo_run), "-o", str(new))
    assert r.exit_code == 0, r.output
    cells = {c.serial: c for c in iter_cells(new)}
    assert sorted(cells) == ["001", "002", "003", "007"]
    orig = {c.serial: c for c in iter_cells(demo_run)}
    for s, c in cells.items():
        assert c == orig[s]  # the same cell, byte for byte in meaning
    manifest = json.loads((new / "run.json").read_text())
    old = json.loads((demo_run / "run.json").read_text())
    for k in ("max_wall", "vm_retries", "max_starts", "tool", "iodisk_size_mb"):
        assert manifest["options"][k] == old["options"][k]
    assert [Path(p).name for p in manifest["param_files"]] == ["debian.yaml"]
    doc = json.loads((new / "rerun.json").read_text())
    assert doc["cells"] == {"001": "fail", "002": "install", "003": "infra", "007": "missing"}
    assert "TestRun003" in (new / "matrix.dag").read_text()


def test_rerun_failed_only_and_only(demo_run, tmp_path):
    from osgtest_dag.generate.cellconfig import iter_cells

    _result(demo_run, "001", "test")
    _result(demo_run, "005", "update")
    _post(demo_run, "003", "infra")
    new = tmp_path / "r2"
    r = condor_cli("rerun", str(demo_run), "-o", str(new), "--failed", "--only", "platform=debian_12*")
    assert r.exit_code == 0, r.output
    assert [c.serial for c in iter_cells(new)] == ["005"]


def test_rerun_reads_results_json(demo_run, tmp_path):
    from osgtest_dag.generate.cellconfig import iter_cells
    from osgtest_dag.model.outcome import Outcome
    from osgtest_dag.model.results import KnownFailuresInfo, ResultsDocument, RunInfo

    cells = [{"serial": f"{i:03d}", "outcome": "pass"} for i in range(8)]
    cells[6]["outcome"] = "timeout"
    doc = ResultsDocument(
        generated="2026-11-21T23:00:00Z",
        tool_version="0",
        worst=Outcome.TIMEOUT,
        run=RunInfo(name="run1", dir=str(demo_run), generated=None, cells=8),
        counts={},
        known_failures=KnownFailuresInfo(),
        component_tags=None,
        cells=tuple(cells),
    )
    (demo_run / "results.json").write_text(json.dumps(doc.to_json()))
    _result(demo_run, "001", "test")  # results.json wins over the cell files
    new = tmp_path / "r3"
    r = condor_cli("rerun", str(demo_run), "-o", str(new))
    assert r.exit_code == 0, r.output
    assert [c.serial for c in iter_cells(new)] == ["006"]


def test_rerun_nothing_to_do(demo_run, tmp_path):
    for s in range(8):
        _result(demo_run, f"{s:03d}", "pass")
    r = condor_cli("rerun", str(demo_run), "-o", str(tmp_path / "r4"))
    assert r.exit_code == 2 and "no cells to rerun" in r.output and "pass 8" in r.output
    assert not (tmp_path / "r4").exists()


# --- cleanup --------------------------------------------------------------------------------


def _fake_run(root: Path, name: str, generated: str, size: int) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "run.json").write_text(
        json.dumps(
            RunManifest(
                generated=generated, tool_version="0", run_name=name, cells=1, options=WorkflowOptions()
            ).to_json()
        )
    )
    (d / "blob").write_bytes(b"x" * size)
    return d


class FakeDisk:
    """A filesystem of 1 MB whose usage is `base` plus what the runs under `root` occupy."""

    def __init__(self, root: Path, base: int):
        self.root, self.base, self.total = root, base, 1_000_000

    def __call__(self, path):
        from osgtest_dag.ops.runs import _tree_size

        used = self.base + sum(
            _tree_size(p) for p in self.root.iterdir() if p.is_dir() and not p.is_symlink()
        )
        return self.total, used


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / "runs"
    # names do not sort like their times: the run.json timestamp decides
    _fake_run(root, "b-oldest", "2026-11-01T04:23:00Z", 100_000)
    _fake_run(root, "a-middle", "2026-11-02T04:23:00Z", 100_000)
    _fake_run(root, "c-newest", "2026-11-03T04:23:00Z", 100_000)
    (root / "not-a-run").mkdir()
    (root / "not-a-run" / "blob").write_bytes(b"x" * 100_000)
    bad = root / "bad-json"
    bad.mkdir()
    (bad / "run.json").write_text("{")
    other = root / "other-schema"
    other.mkdir()
    (other / "run.json").write_text(
        json.dumps({"schema": "something/else", "generated": "2020-01-01T00:00:00Z"})
    )
    (root / "link").symlink_to(root / "b-oldest")
    return root


def test_cleanup_dry_run_deletes_nothing(runs_root):
    from osgtest_dag.ops.runs import cleanup

    disk = FakeDisk(runs_root, base=300_000)  # ~73 % used
    before = sorted(p.name for p in runs_root.iterdir())
    plan = cleanup(runs_root, keep_at_least=1, max_usage=70, usage=disk)
    assert [r.path.name for r in plan.delete] == ["b-oldest"]
    assert plan.usage_after < 70 <= plan.usage_before
    assert sorted(p.name for p in runs_root.iterdir()) == before


def test_cleanup_yes_deletes_oldest_until_under_limit(runs_root):
    from osgtest_dag.ops.runs import cleanup

    disk = FakeDisk(runs_root, base=300_000)
    plan = cleanup(runs_root, keep_at_least=1, max_usage=55, yes=True, usage=disk)
    assert [r.path.name for r in plan.delete] == ["b-oldest", "a-middle"]
    left = sorted(p.name for p in runs_root.iterdir())
    assert left == ["bad-json", "c-newest", "link", "not-a-run", "other-schema"]
    assert plan.usage_after <= 55 < plan.usage_before


def test_cleanup_never_below_keep_at_least(runs_root):
    from osgtest_dag.ops.runs import cleanup

    disk = FakeDisk(runs_root, base=900_000)  # never under 10 %
    plan = cleanup(runs_root, keep_at_least=2, max_usage=10, yes=True, usage=disk)
    assert [r.path.name for r in plan.delete] == ["b-oldest"]
    assert {r.path.name for r in plan.keep} == {"a-middle", "c-newest"}
    assert (runs_root / "not-a-run" / "blob").exists() and (runs_root / "bad-json").exists()


def test_cleanup_skips_a_running_dag(runs_root):
    from osgtest_dag.ops.runs import cleanup

    (runs_root / "b-oldest" / "workflow.dag.lock").write_text("")
    plan = cleanup(runs_root, keep_at_least=0, max_usage=60, yes=True, usage=FakeDisk(runs_root, 300_000))
    assert [r.path.name for r in plan.skipped_active] == ["b-oldest"]
    assert (runs_root / "b-oldest").is_dir()
    assert [r.path.name for r in plan.delete][:1] == ["a-middle"]


def test_cleanup_cli_real_usage_under_limit(runs_root):
    r = condor_cli("cleanup", str(runs_root), "--keep-at-least", "0", "--max-usage", "100", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["delete"] == []
    r = condor_cli("cleanup", str(runs_root), "--keep-at-least", "1", "--max-usage", "0.0001")
    assert r.exit_code == 0, r.output
    assert "would delete" in r.output and "pass --yes" in r.output
    assert (runs_root / "b-oldest").is_dir()


# --- schedule -------------------------------------------------------------------------------


def test_schedule_units_pass_systemd_analyze_verify(tmp_path):
    exe = shutil.which("systemd-analyze")
    if not exe:
        pytest.skip("systemd-analyze is not installed (scripts/setup installs the systemd package)")
    units = tmp_path / "units"
    r = condor_cli(
        "schedule",
        "install",
        "--at",
        "4:05",
        "--params",
        str(DEMO),
        "--runs-root",
        str(tmp_path / "runs dir"),
        "--unit-dir",
        str(units),
    )
    assert r.exit_code == 0, r.output
    service = (units / "osgtest-dag-nightly.service").read_text()
    timer = (units / "osgtest-dag-nightly.timer").read_text()
    assert "OnCalendar=*-*-* 04:05:00" in timer
    assert " nightly --params " in service and '"' in service  # the space is quoted
    assert "CONDOR_CONFIG=/dev/null" not in service
    assert "5 4 * * * " in r.output and "nightly --params" in r.output
    # systemd-analyze verify works without systemd as PID 1 (it only loads the units)
    proc = subprocess.run(
        [exe, "verify", str(units / "osgtest-dag-nightly.service"), str(units / "osgtest-dag-nightly.timer")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    # and it does catch a broken unit
    (units / "osgtest-dag-nightly.timer").write_text(timer.replace("04:05:00", "25:99:00"))
    proc = subprocess.run(
        [exe, "verify", str(units / "osgtest-dag-nightly.timer")], capture_output=True, text=True
    )
    assert proc.returncode != 0


def test_schedule_bad_time(tmp_path):
    r = condor_cli("schedule", "install", "--at", "4pm", "--params", str(DEMO), "--runs-root", str(tmp_path))
    assert r.exit_code == 2 and "HH:MM" in r.output


def test_nightly_generates_a_dated_run(tmp_path, monkeypatch):
    monkeypatch.setenv("OSGTEST_DAG_IMAGES", "/images")
    excl = tmp_path / "excluded.yaml"
    excl.write_text(
        "hosts:\n  - host: bad.example.org\n    until: 2999-01-01\n"
        "  - host: old.example.org\n    until: 2000-01-01\n"
    )
    r = condor_cli(
        "nightly",
        "--params",
        str(DEMO),
        "--runs-root",
        str(tmp_path / "runs"),
        "--excluded-hosts",
        str(excl),
        "--no-submit",
    )
    assert r.exit_code == 0, r.output
    [run] = list((tmp_path / "runs").iterdir())
    assert run.name == dt.date.today().isoformat()
    sub = (run / "submit" / "test-run.sub").read_text()
    assert '!member(TARGET.Machine, {"bad.example.org"})' in sub
    assert "old.example.org" not in sub
    assert json.loads((run / "run.json").read_text())["options"]["nightly"] is True
    r = condor_cli("nightly", "--params", str(DEMO), "--runs-root", str(tmp_path / "runs"), "--no-submit")
    assert r.exit_code == 0 and len(list((tmp_path / "runs").iterdir())) == 2


# --- hosts ----------------------------------------------------------------------------------


def test_excluded_hosts_file(tmp_path):
    from osgtest_dag.ops import hosts

    f = tmp_path / "ex.yaml"
    now = dt.datetime(2026, 11, 21, tzinfo=dt.UTC)
    f.write_text(
        "hosts:\n  - host: a.example\n    until: 2026-11-30\n    reason: VMGAHP\n"
        "  - host: b.example\n    until: 2026-11-01T00:00:00Z\n  - c.example\n"
    )
    assert hosts.active_excluded_hosts(f, now=now) == ("a.example", "c.example")
    hosts.exclude_hosts(f, ["b.example", "a.example"], days=3, reason="r", now=now)
    got = {e.host: e for e in hosts.load_exclusions(f)}
    assert got["b.example"].until == dt.datetime(2026, 11, 24, tzinfo=dt.UTC)
    assert got["a.example"].until.day == 30  # a longer exclusion is not shortened
    f.write_text("hosts:\n  - host: a\n    until: someday\n")
    from osgtest_dag.base.errors import UserError

    with pytest.raises(UserError) as e:
        hosts.load_exclusions(f)
    assert ":2" in str(e.value.where)
    f.write_text("hosts: [\n")
    with pytest.raises(UserError):
        hosts.load_exclusions(f)
    assert hosts.active_excluded_hosts(tmp_path / "none.yaml") == ()


def _runs_with_logs(tmp_path, logs: dict[str, Path]) -> Path:
    root = tmp_path / "runs"
    for i, (name, log) in enumerate(logs.items()):
        d = _fake_run(root, name, f"2026-11-0{i + 1}T04:23:00Z", 0)
        (d / "logs").mkdir()
        shutil.copy(log, d / "logs" / "jobs.log")
    return root


def test_host_report_from_real_vm_job_logs(tmp_path):
    """Event logs of real VM jobs on the test pool (tests/test_pool.py records them): one
    that failed to start once (VMGAHP_ERR_INTERNAL: the starter's message, then an eviction)
    and then ran; one whose domain libvirt refused (a disk that is not a disk: the same
    error); one that never started (more memory than any slot: removed while idle)."""
    root = _runs_with_logs(tmp_path, {"r1": _real("vm/jobs.log"), "r2": _real("vm/jobs.log")})
    r = condor_cli("hosts", str(root), "--last", "5", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["runs"] == ["r1", "r2"]
    [h] = rep["hosts"]
    assert h["host"] == "vm"  # the pool machine's name, from SlotName
    assert (h["jobs"], h["ok"], h["failures"], h["vmgahp_errors"]) == (6, 2, 4, 4)
    assert "VMGAHP_ERR_INTERNAL" in h["last_failure"]
    assert rep["never_started"] == 2
    excl = tmp_path / "excl.yaml"
    r = condor_cli("hosts", str(root), "--exclude-above", "0.3", "--days", "2", "--excluded-hosts", str(excl))
    assert r.exit_code == 0, r.output
    from osgtest_dag.ops import hosts

    assert hosts.active_excluded_hosts(excl) == (h["host"],)


def test_host_events_of_a_vm_held_at_its_wall_clock_limit():
    """HTCondor logs a held running job's eviction before its hold: the execution counts as
    held (with its codes) on its host, not as an eviction."""
    from osgtest_dag.ops import hosts

    events = hosts.run_host_events(_real("shaped/held"))
    assert [(e["node"], e["job"], e["host"], e["result"]) for e in events] == [
        ("TestRun000", "150.0", "vm", "ok"),
        ("TestRun001", "151.0", "vm", "ok"),
        ("TestRun002", "152.0", "vm", "hold"),
        ("TestRun001", "154.0", "vm", "ok"),
    ]
    assert events[2]["reason"] == "[3/1] osgtest-dag: VM ran longer than 3 s"


def test_recorded_final_states_json_is_the_expected_contract():
    """final-states.json (recorded from DAGMan 23.9 by tests/test_pool.py) is what the local
    executor's run of tests/pooltest.py's DAG must reproduce."""
    from pooltest import EXPECTED

    doc = json.loads(_real("injected/final-states.json").read_text())
    assert doc["engine"] == "dagman" and doc["version"].startswith("23.")
    assert doc["nodes"] == EXPECTED


def test_status_and_watch_read_a_local_run(demo_run):
    """A run directory run by `osgtest-dag run` is read from the executor's state files: running
    while an executor holds its lock, then how its DAG ended (or interrupted)."""
    import fcntl

    from osgtest_dag.engine.condor.status import format_progress, progress, watch
    from osgtest_dag.engine.local.runview import executor_lock
    from osgtest_dag.engine.local.state import Attempt, NodeStatus, StateFile
    from osgtest_dag.model import dagfile
    from osgtest_dag.model.rundir import NodeName, RunDir

    layout = RunDir(demo_run)
    p = progress(demo_run)
    assert (p.dag_state, p.engine, p.finished) == ("not_submitted", "dagman", False)
    outer, matrix_state = StateFile.for_dag(layout.outer_dag), StateFile.for_dag(layout.matrix_dag)
    outer.node("Matrix").status = NodeStatus.RUNNING
    for n in NodeName.of_cell("000"):
        st = matrix_state.node(n.format())
        st.status = NodeStatus.DONE
        st.attempts.append(Attempt(retry=0, started=1000.0, ended=1100.0))
    matrix_state.node("CreateDisk001").status = NodeStatus.DONE
    running = matrix_state.node("TestRun001")
    running.status, running.retries = NodeStatus.RUNNING, 1
    outer.save()
    matrix_state.save()
    with open(executor_lock(layout.outer_dag), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running executor holds it
        p = progress(demo_run, now=1130.0)
        assert (p.dag_state, p.engine, p.finished, p.submitted) == ("running", "local", False, False)
        assert p.cells["000"] == "done" and p.cells["001"] == "running"
        assert p.cells_total == 8 and p.cell_counts["waiting"] == 6
        assert p.retries == {"TestRun001": 1} and p.elapsed_s == 130.0
        assert format_progress(p).startswith(f"run {demo_run}: running (local executor), elapsed 0:02:10")
    p = progress(demo_run)  # the executor is gone before its DAG ended
    assert (p.dag_state, p.finished, p.elapsed_s) == ("interrupted", True, 100.0)
    for name in dagfile.parse(layout.outer_dag).nodes:
        outer.node(name).status = NodeStatus.DONE
    outer.save()
    out = io.StringIO()
    p = watch(demo_run, interval=0.1, tty=False, out=out, sleep=lambda s: None)
    assert (p.dag_state, p.finished) == ("done", True)
    assert "run " + str(demo_run) + ": done (local executor)" in out.getvalue()
