"""Every view of a run says the same outcome for every cell: `status --json`, the FINAL node's
matrix-summary.json, `rerun`'s selections and the report (results.json and its text).

The run directory is made by the generator and filled with what a finished run leaves: the
guest's result.json and osg-test logs in output/, post-vm.json written by the POST script
itself, local-vm.json by the executor's writer, the HTCondor job log, the matrix's node status
file. No VM, no pool.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import FIXTURES, KNOWN_FAILURES_2014, ResultsRun, condor_cli, make_results_run

from osgtest_dag.analyze import results
from osgtest_dag.generate import cellconfig
from osgtest_dag.generate.workflow import POST_INFRA_RETRY, POST_OK
from osgtest_dag.model.documents import GuestResult, PostDecision, PostHistory, Verdict, VmRecord
from osgtest_dag.model.outcome import Outcome
from osgtest_dag.model.rundir import LAYERS, NodeName, RunDir, vm_node
from osgtest_dag.nodes import node
from osgtest_dag.report import text as text_report

HELD_AT_LIMIT = """\
000 (41.000.000) 2026-11-21 22:00:00 Job submitted from host: <127.0.0.1:9618?addrs=127.0.0.1-9618>
    DAG Node: {node}
...
001 (41.000.000) 2026-11-21 22:00:05 Job executing on host: <10.0.0.5:9618?addrs=10.0.0.5-9618&alias=exec01.example.org>
	SlotName: slot1_1@exec01.example.org
...
012 (41.000.000) 2026-11-22 02:00:05 Job was held.
	osgtest-dag: VM ran longer than 14400 s
	Code 3 Subcode 1
...
009 (41.000.000) 2026-11-22 02:10:00 Job was aborted.
	via condor_rm (by user condor)
...
"""

# DAGMan's NodeStatus values
DONE, ERROR, FUTILE = 5, 6, 7


def _post_done(r: ResultsRun, serial: str, status: str) -> None:
    """The decision the POST script takes for a disk whose guest finished (it needs a disk to
    read; the decision is what it writes)."""
    cell = RunDir(r.dir).cell(serial)
    cell.path.mkdir(parents=True, exist_ok=True)
    decision = PostDecision(
        attempt=0,
        verdict=Verdict.DONE,
        reason=f"guest finished: {status}",
        exit=0,
        max_retries=2,
        job_exit=0,
        guest_status=status,
    )
    cell.post_vm.write_text(json.dumps(PostHistory((decision,)).to_json()))


def _post_no_disk(r: ResultsRun, serial: str, attempts: int) -> None:
    """The real POST script, for attempts that brought no disk back."""
    cell = RunDir(r.dir).cell(serial)
    cell.path.mkdir(parents=True, exist_ok=True)
    cell.config.write_text(json.dumps(cellconfig.read_cell(r.dir, serial).to_json()))
    for retry in range(attempts):
        node.post_vm(r.dir, vm_node(serial), -1004, retry, attempts - 1)


def _status_file(states: dict[str, int]) -> str:
    ads = [f'[\n  Type = "DagStatus";\n  DagStatus = 5;\n  NodesTotal = {len(states)};\n]']
    for name, st in states.items():
        ads.append(
            f'[\n  Type = "NodeStatus";\n  Node = "{name}";\n  NodeStatus = {st};\n  RetryCount = 0;\n]'
        )
    return "\n".join(ads) + "\n"


def populate(r: ResultsRun) -> dict[str, str]:
    """One cell per situation; serial -> the outcome every view must give."""
    want: dict[str, str] = {}
    s = r.serial("rocky_8.x86_64", "XRootD")
    r.guest(s, "pass")
    r.osgtest_log(s, "pass.log")
    _post_done(r, s, "pass")
    want[s] = "pass"
    s = r.serial("rocky_8.x86_64", "Condor")
    r.guest(s, "test")
    r.osgtest_log(s, "fail.log")
    _post_done(r, s, "test")
    want[s] = "fail"
    s = r.serial("rocky_9.x86_64", "Condor")
    r.guest(s, "install")
    _post_done(r, s, "install")
    want[s] = "install"
    s = r.serial("rocky_8.x86_64", "XRootD", update=True)
    r.guest(s, "test")
    r.osgtest_log(s, "update.log")
    _post_done(r, s, "test")
    want[s] = "update"
    s = r.serial("rocky_9.x86_64", "XRootD")
    r.guest(s, "test")
    r.osgtest_log(s, "cleanup.log")
    _post_done(r, s, "test")
    want[s] = "cleanup"
    s = r.serial("rocky_9.x86_64", "XRootD", update=True)
    r.guest(s, "test")
    r.osgtest_log(s, "ignore.log")
    _post_done(r, s, "test")
    want[s] = "waived"
    # timeout, local executor: the VM was killed at its limit; the POST script saw no disk
    s = r.serial("rocky_9.aarch64", "XRootD")
    cell = RunDir(r.dir).cell(s)
    cell.path.mkdir(parents=True, exist_ok=True)
    VmRecord.append(
        cell.local_vm,
        VmRecord(
            node=vm_node(s),
            starts=1,
            timed_out=True,
            wall_s=14400.3,
            returncode=None,
            console="console.0.1.log",
        ),
    )
    _post_no_disk(r, s, 1)
    want[s] = "timeout"
    # timeout, local executor: the guest's result says it was still running when it was killed
    s = r.serial("rocky_9.aarch64", "XRootD", update=True)
    r.guest(s, "running", current_phase="test")
    VmRecord.append(RunDir(r.dir).cell(s).local_vm, VmRecord(node=vm_node(s), starts=1, timed_out=True))
    _post_done(r, s, "running")
    want[s] = "timeout"
    # timeout, HTCondor: held at the wall-clock limit, removed; the POST script saw no disk
    s = r.serial("alma_10.x86_64", "Condor", update=True)
    RunDir(r.dir).job_log.write_text(HELD_AT_LIMIT.format(node=vm_node(s)))
    _post_no_disk(r, s, 1)
    want[s] = "timeout"
    # infrastructure: no disk, three times; and a guest without network
    s = r.serial("rocky_9.aarch64", "Condor")
    _post_no_disk(r, s, 3)
    want[s] = "infra"
    s = r.serial("rocky_9.x86_64", "Condor", update=True)
    r.guest(s, "network", message="phase network failed with exit code 1")
    want[s] = "infra"
    # the rest never ran
    for c in r.cells:
        want.setdefault(c["serial"], "missing")

    states = {}
    for serial, outcome in want.items():
        names = [n.format() for n in NodeName.of_cell(serial)]
        if outcome == "missing":  # its disk could not be made: nothing after it ran
            states.update({names[0]: ERROR, **dict.fromkeys(names[1:], FUTILE)})
        elif RunDir(r.dir).cell(serial).guest_result.is_file():
            states.update(dict.fromkeys(names, DONE))
        else:  # the VM node failed after its retries
            states.update({names[0]: DONE, names[1]: ERROR, **dict.fromkeys(names[2:], FUTILE)})
    assert len(states) == len(want) * len(LAYERS)
    RunDir(r.dir).matrix_status.write_text(_status_file(states))
    (r.dir / "known-failures.yaml").write_text(KNOWN_FAILURES_2014)
    (r.dir / "component-tags.yaml").write_text((FIXTURES / "component-tags.yaml").read_text())
    return want


def _rerun(run: Path, dest: Path, *args: str) -> set[str]:
    res = condor_cli("rerun", str(run), "-o", str(dest), *args)
    assert res.exit_code == 0, res.output
    return {c.serial for c in cellconfig.iter_cells(dest)}


def test_every_view_agrees_on_every_cell(tmp_path):
    r = make_results_run(tmp_path)
    want = populate(r)
    assert {Outcome(o) for o in want.values()} >= {
        Outcome.PASS,
        Outcome.FAIL,
        Outcome.INSTALL,
        Outcome.TIMEOUT,
        Outcome.INFRA,
        Outcome.WAIVED,
        Outcome.MISSING,
    }

    # before the analysis: status and the FINAL node decide from the evidence
    res = condor_cli("status", str(r.dir), "--json")
    assert res.exit_code == 0, res.output
    status = json.loads(res.output)
    assert status["cell_outcomes"] == want
    summary = node.matrix_summary(r.dir)
    assert {c["serial"]: c["outcome"] for c in summary["cells"]} == want
    assert json.loads(RunDir(r.dir).matrix_summary.read_text()) == summary

    # rerun's selections, before the analysis
    product_failures = {s for s, o in want.items() if Outcome(o).product_failure}
    assert product_failures and _rerun(r.dir, tmp_path / "failed", "--failed") == product_failures
    assert _rerun(
        r.dir,
        tmp_path / "all",
    ) == {s for s, o in want.items() if Outcome(o).needs_rerun}
    assert _rerun(r.dir, tmp_path / "waived", "--outcome", "waived", "--outcome", "cleanup") == {
        s for s, o in want.items() if o in ("waived", "cleanup")
    }

    # the report
    doc = results.analyze_run(r.dir)
    assert {c["serial"]: c["outcome"] for c in doc.cells} == want
    lines = text_report.render(doc).splitlines()
    for serial, outcome in want.items():
        if outcome != "pass":
            assert any(line.split()[:2] == [serial, outcome] for line in lines), (serial, outcome)

    # after the analysis, status and rerun read results.json: still the same
    status = json.loads(condor_cli("status", str(r.dir), "--json").output)
    assert status["cell_outcomes"] == want
    assert _rerun(r.dir, tmp_path / "failed2", "--failed") == product_failures


def test_timeouts_are_typed_not_worded(tmp_path):
    """A VM killed at its limit is a timeout by the POST decision's verdict and the records'
    flags, whatever the reason says."""
    r = make_results_run(tmp_path)
    s = r.serial("rocky_8.x86_64", "XRootD")
    cell = RunDir(r.dir).cell(s)
    cell.path.mkdir(parents=True)
    cell.post_vm.write_text(
        json.dumps(
            PostHistory(
                (PostDecision(attempt=0, verdict=Verdict.TIMEOUT, reason="whatever words", exit=1),)
            ).to_json()
        )
    )
    assert results.cell_outcomes(r.dir, [s])[s][0] is Outcome.TIMEOUT


def _killed_at_limit(r: ResultsRun, serial: str, result: GuestResult | None, attempts: int = 1) -> None:
    """What the local executor and the POST script leave for a VM killed at its wall-clock
    limit whose disk came back: a record per attempt's start, and the POST script's own
    decision on the result.json the disk held (`result`)."""
    cell = RunDir(r.dir).cell(serial)
    cell.path.mkdir(parents=True, exist_ok=True)
    decisions = []
    for retry in range(attempts):
        vm = VmRecord(
            node=vm_node(serial), starts=1, timed_out=True, wall_s=1920.4, console="console.0.1.log"
        )
        VmRecord.append(cell.local_vm, vm)
        verdict, reason, code = node.classify(result, vm)
        decisions.append(
            PostDecision(attempt=retry, verdict=verdict, reason=reason, exit=code, max_retries=attempts - 1)
        )
        if code == POST_OK:
            break
    cell.post_vm.write_text(json.dumps(PostHistory(tuple(decisions)).to_json()))


def test_a_vm_killed_in_its_test_keeps_its_phases_and_is_a_timeout(tmp_path):
    """Killed during its test phase: a timeout the POST script does not retry, with the phases
    it finished `ok` in results.json; killed before its payload started: infrastructure,
    retried; killed during its install, every attempt: a timeout, after its retries."""
    r = make_results_run(tmp_path)
    in_test = r.serial("rocky_8.x86_64", "XRootD")
    r.guest(in_test, "running", current_phase="test")
    _killed_at_limit(r, in_test, GuestResult.read(RunDir(r.dir).cell(in_test).guest_result))
    never_started = r.serial("rocky_9.x86_64", "XRootD")
    _killed_at_limit(r, never_started, None, attempts=3)
    in_install = r.serial("rocky_9.x86_64", "Condor")
    # the POST script moved each retried attempt's output aside (attempts/<n>/): none in output/
    _killed_at_limit(r, in_install, GuestResult(status="running", current_phase="install"), attempts=3)
    states = {}
    for serial in (in_test, never_started, in_install):
        names = [n.format() for n in NodeName.of_cell(serial)]
        if serial == in_test:  # a done node: ProcessResult and the rest ran
            states.update(dict.fromkeys(names, DONE))
        else:
            states.update({names[0]: DONE, names[1]: ERROR, **dict.fromkeys(names[2:], FUTILE)})
    RunDir(r.dir).matrix_status.write_text(_status_file(states))

    post = PostHistory.read(RunDir(r.dir).cell(in_test).post_vm).decisions
    assert [(d.verdict, d.exit) for d in post] == [(Verdict.TIMEOUT, POST_OK)]
    assert "during its test phase" in post[0].reason
    post = PostHistory.read(RunDir(r.dir).cell(never_started).post_vm).decisions
    assert [(d.verdict, d.exit) for d in post] == [(Verdict.INFRA, POST_INFRA_RETRY)] * 3

    want = {in_test: "timeout", never_started: "infra", in_install: "timeout"}
    status = json.loads(condor_cli("status", str(r.dir), "--json").output)
    summary = node.matrix_summary(r.dir)
    doc = results.analyze_run(r.dir)
    cells = {c["serial"]: c for c in doc.cells}
    for serial, outcome in want.items():
        assert status["cell_outcomes"][serial] == outcome
        assert next(c["outcome"] for c in summary["cells"] if c["serial"] == serial) == outcome
        assert cells[serial]["outcome"] == outcome
    phases = {p["name"]: p["status"] for p in cells[in_test]["phases"]}
    assert phases == dict.fromkeys(("environment", "network", "hostname", "repositories", "install"), "ok")
    assert "test" in cells[in_test]["reason"]
    assert "before its payload started" in cells[never_started]["reason"]
    assert "(after 3 attempts)" in cells[never_started]["reason"]


def test_post_decision_for_a_disk_back_from_the_limit(tmp_path):
    """The POST script's rule for a returned disk, by what the guest's result.json says and
    whether the VM was killed at its limit."""
    killed = VmRecord(node="TestRun000", starts=1, timed_out=True, wall_s=300.0, console="console.0.1.log")
    powered_off = VmRecord(node="TestRun000", starts=1, timed_out=False, returncode=0)
    r = make_results_run(tmp_path)
    s = r.serial("rocky_8.x86_64", "XRootD")

    def result(status: str, **kw) -> GuestResult:
        r.guest(s, status, **kw)
        return GuestResult.read(RunDir(r.dir).cell(s).guest_result)

    in_test = result("running", current_phase="test")
    assert in_test.reached_test
    assert node.classify(in_test, killed)[::2] == (Verdict.TIMEOUT, POST_OK)
    in_install = result("running", current_phase="install")
    assert not in_install.reached_test
    assert node.classify(in_install, killed)[::2] == (Verdict.TIMEOUT, POST_INFRA_RETRY)
    # the test finished (its own timeout), the VM was killed in the collect phase after it
    collecting = result("test", test_exit=124)
    collecting = GuestResult(status="running", current_phase="collect", phases=collecting.phases)
    assert node.classify(collecting, killed)[::2] == (Verdict.TIMEOUT, POST_OK)
    assert node.classify(None, killed)[::2] == (Verdict.INFRA, POST_INFRA_RETRY)
    # the guest's own limit ended the test: a finished run, not retried, a timeout outcome
    own = result("test", test_exit=124)
    assert node.classify(own, powered_off)[::2] == (Verdict.DONE, POST_OK)
    assert node.classify(own, None)[::2] == (Verdict.DONE, POST_OK)
    assert results.cell_outcomes(r.dir, [s])[s][0] is Outcome.TIMEOUT
    # a guest that died on its own (not at the limit) in its test: infrastructure, retried
    assert node.classify(in_test, powered_off)[::2] == (Verdict.INFRA, POST_INFRA_RETRY)
