"""The local executor's DAGMan semantics, on local-universe jobs (no VMs here)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from osgtest_dag.base.errors import UserError
from osgtest_dag.engine.local import executor, submit
from osgtest_dag.engine.local.accel import RunAccel
from osgtest_dag.engine.local.jobs import RETURN_REMOVED, RETURN_SUBMIT_FAILED, ProcessJob, RunningJobs
from osgtest_dag.engine.local.reaper import ChildRecord
from osgtest_dag.engine.local.state import Attempt, NodeStatus, StateFile
from osgtest_dag.engine.local.vmjob import VmJob
from osgtest_dag.model import dagfile


def sub(path: Path, script: str) -> None:
    """A local-universe submit file running `sh -c script` (HTCondor's new argument syntax)."""
    path.write_text(
        "universe = local\nexecutable = /bin/sh\n"
        f"arguments = \"-c '{script}'\"\noutput = $(node).out\nerror = $(node).err\nqueue\n"
    )


def make_failure_dag(d: Path) -> Path:
    """Injected failures: infrastructure retried, product not retried, a node failing for good."""
    d.mkdir(parents=True, exist_ok=True)
    sub(d / "ok.sub", "echo ok")
    # fails on its first try only (an infrastructure hiccup): a counter file per node
    sub(
        d / "flaky.sub",
        "n=$(cat $(node).count 2>/dev/null || echo 0); echo $((n+1)) > $(node).count; [ $n -ge 1 ]",
    )
    sub(d / "fail.sub", "exit 1")
    (d / "post.sh").write_text(
        "#!/bin/sh\n# $1 node, $2 job return: 0 ok, product failure -> 2 (not retried)\n"
        "case $1 in Product) exit 2;; esac\nexit $2\n"
    )
    (d / "post.sh").chmod(0o755)
    (d / "final.sh").write_text('#!/bin/sh\necho "final: DAG_STATUS=$1 FAILED_COUNT=$2" > final.txt\n')
    (d / "final.sh").chmod(0o755)
    sub(d / "final.sub", "sh final.sh $(dag_status) 0")
    dag = d / "f.dag"
    dag.write_text("""\
JOB Ok ok.sub
VARS Ok node="Ok"
JOB Infra flaky.sub
VARS Infra node="Infra"
RETRY Infra 2 UNLESS-EXIT 2
SCRIPT POST Infra post.sh $JOB $RETURN
JOB Product ok.sub
VARS Product node="Product"
RETRY Product 2 UNLESS-EXIT 2
SCRIPT POST Product post.sh $JOB $RETURN
JOB Broken fail.sub
VARS Broken node="Broken"
RETRY Broken 2 UNLESS-EXIT 2
SCRIPT POST Broken post.sh $JOB $RETURN
JOB AfterBroken ok.sub
VARS AfterBroken node="AfterBroken"
PARENT Broken CHILD AfterBroken
JOB AfterProduct ok.sub
VARS AfterProduct node="AfterProduct"
PARENT Product CHILD AfterProduct
PARENT Ok CHILD Infra Product
FINAL Final final.sub
SCRIPT POST Final final.sh $DAG_STATUS $FAILED_COUNT
""")
    return dag


def node_outcomes(dag: Path) -> dict:
    state = json.loads(dag.with_name(dag.name + ".local-state.json").read_text())["nodes"]
    return {n: {"status": s["status"], "retries": s["retries"]} for n, s in state.items()}


def test_failure_semantics(tmp_path):
    dag = make_failure_dag(tmp_path)
    ok = executor.run_dag(dag, executor.Options(jobs=2))
    got = node_outcomes(dag)
    assert got == {
        "Ok": {"status": "done", "retries": 0},
        "Infra": {"status": "done", "retries": 1},  # retried once, then fine
        "Product": {"status": "failed", "retries": 0},  # UNLESS-EXIT 2: not retried
        "Broken": {"status": "failed", "retries": 2},  # all retries used
        "AfterBroken": {"status": "futile", "retries": 0},  # parent failed: never runs
        "AfterProduct": {"status": "pending", "retries": 0},  # as DAGMan: after UNLESS-EXIT, not ready
        "Final": {"status": "done", "retries": 0},
    }
    assert not (tmp_path / "AfterBroken.out").exists() and not (tmp_path / "AfterProduct.out").exists()
    # the FINAL node ran after everything and saw the failure; its success is the DAG's
    assert (tmp_path / "final.txt").read_text() == "final: DAG_STATUS=1 FAILED_COUNT=2\n"
    assert ok is True
    assert (tmp_path / "Ok.out").read_text() == "ok\n"


def test_futility_reaches_every_descendant_when_the_failure_ends_the_run(tmp_path):
    """A failure that is the last thing to finish still makes the whole chain below it futile
    (CI caught CleanOutput004 left "pending" when TestRun004 finished last)."""
    sub(tmp_path / "fail.sub", "exit 3")
    sub(tmp_path / "ok.sub", "true")
    (tmp_path / "d.dag").write_text(
        'JOB A fail.sub\nVARS A node="A"\n'
        + "".join(f'JOB {n} ok.sub\nVARS {n} node="{n}"\n' for n in "BCD")
        + "PARENT A CHILD B\nPARENT B CHILD C\nPARENT C CHILD D\n"
    )
    assert executor.run_dag(tmp_path / "d.dag") is False
    assert {n: s["status"] for n, s in node_outcomes(tmp_path / "d.dag").items()} == {
        "A": "failed",
        "B": "futile",
        "C": "futile",
        "D": "futile",
    }


def test_without_final_a_failed_node_fails_the_dag(tmp_path):
    sub(tmp_path / "fail.sub", "exit 3")
    (tmp_path / "d.dag").write_text('JOB A fail.sub\nVARS A node="A"\n')
    assert executor.run_dag(tmp_path / "d.dag") is False


def test_maxjobs_category_and_priority(tmp_path):
    # each job records how many of its category run at once
    script = (
        "echo x >> running; c=$(wc -l < running); echo $c >> peak; sleep 0.3; "
        "sed -i 1d running; echo $(node) >> order"
    )
    sub(tmp_path / "j.sub", script)
    lines = []
    for i in range(4):
        lines += [f"JOB N{i} j.sub", f'VARS N{i} node="N{i}"', f"CATEGORY N{i} Slow", f"PRIORITY N{i} {i}"]
    lines.append("MAXJOBS Slow 1")
    (tmp_path / "c.dag").write_text("\n".join(lines) + "\n")
    assert executor.run_dag(tmp_path / "c.dag", executor.Options(local_jobs=4)) is True
    assert max(int(x) for x in (tmp_path / "peak").read_text().split()) == 1
    assert (tmp_path / "order").read_text().split() == ["N3", "N2", "N1", "N0"]


def test_post_scripts_do_not_hold_job_slots(tmp_path):
    """As in DAGMan, MAXJOBS counts jobs, not POST scripts: with room for one job, B's job
    runs while A's (slow) POST script does — the next VM boots while a POST reads a disk.
    A's retry waits for the slot again."""
    sub(tmp_path / "j.sub", "echo $(node) job >> events; sleep 0.2; echo $(node) job-end >> events")
    (tmp_path / "post.sh").write_text(
        "#!/bin/sh\necho $1 post >> events\n"
        "[ $1 = A ] && sleep 1.5\necho $1 post-end >> events\n"
        "[ $1 = A ] && [ $2 = 0 ] && exit 1\nexit 0\n"
    )
    (tmp_path / "post.sh").chmod(0o755)
    lines = []
    for n in "AB":
        lines += [
            f"JOB {n} j.sub",
            f'VARS {n} node="{n}"',
            f"CATEGORY {n} One",
            f"SCRIPT POST {n} post.sh $JOB $RETRY",
            f"PRIORITY {n} {1 if n == 'A' else 0}",
        ]
    lines += ["RETRY A 1", "MAXJOBS One 1"]
    (tmp_path / "p.dag").write_text("\n".join(lines) + "\n")
    assert executor.run_dag(tmp_path / "p.dag", executor.Options(local_jobs=4)) is True
    events = (tmp_path / "events").read_text().splitlines()
    assert events.index("B job") < events.index("A post-end"), events  # B ran during A's POST
    jobs = [e for e in events if e.endswith(("job", "job-end"))]
    assert jobs == ["A job", "A job-end", "B job", "B job-end", "A job", "A job-end"], events  # one at a time
    assert node_outcomes(tmp_path / "p.dag")["A"] == {"status": "done", "retries": 1}


def test_pre_script_skip_and_subdag(tmp_path):
    sub(tmp_path / "ok.sub", "echo $(node) >> ran")
    (tmp_path / "inner.dag").write_text('JOB I1 ok.sub\nVARS I1 node="I1"\n')
    (tmp_path / "outer.dag").write_text(
        'JOB Skipped ok.sub\nVARS Skipped node="Skipped"\nSCRIPT PRE Skipped /bin/sh -c "exit 7"\n'
        "PRE_SKIP Skipped 7\nSUBDAG EXTERNAL Inner inner.dag\n"
        'JOB After ok.sub\nVARS After node="After"\nPARENT Skipped Inner CHILD After\n'
    )
    assert executor.run_dag(tmp_path / "outer.dag") is True
    assert (tmp_path / "ran").read_text().split() == ["I1", "After"]


def test_arguments_new_syntax():
    assert submit.split_arguments("\"node post-vm 'a b' 'it''s'\"") == ["node", "post-vm", "a b", "it's"]
    assert submit.split_arguments("old style args") == ["old", "style", "args"]
    assert submit.split_arguments('"one ""quoted"" two"') == ["one", '"quoted"', "two"]


def test_resume_after_kill_does_not_redo_finished_nodes(tmp_path):
    # 6 independent nodes, one at a time; each appends its name when it runs
    sub(tmp_path / "j.sub", "echo $(node) >> ran; sleep 0.6")
    lines = []
    for i in range(6):
        lines += [f"JOB N{i} j.sub", f'VARS N{i} node="N{i}"', f"CATEGORY N{i} One"]
    lines.append("MAXJOBS One 1")
    dag = tmp_path / "r.dag"
    dag.write_text("\n".join(lines) + "\n")
    code = (
        f"import sys; from osgtest_dag.engine.local import executor; "
        f"sys.exit(0 if executor.run_dag({str(dag)!r}) else 1)"
    )
    p = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, start_new_session=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        ran = (tmp_path / "ran").read_text().split() if (tmp_path / "ran").exists() else []
        if len(ran) >= 3:
            break
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)  # the executor dies; its running child may finish or not
    p.wait()
    done_before = [n for n, s in node_outcomes(dag).items() if s["status"] == "done"]
    assert 2 <= len(done_before) < 6
    time.sleep(1.0)
    ran_before = (tmp_path / "ran").read_text().split()
    assert executor.run_dag(dag) is True
    ran = (tmp_path / "ran").read_text().split()
    rerun = ran[len(ran_before) :]
    assert not set(rerun) & set(done_before)  # no finished node ran twice
    assert sorted(set(ran)) == [f"N{i}" for i in range(6)]
    assert all(s["status"] == "done" for s in node_outcomes(dag).values())


def test_ctrl_c_stops_and_resume_finishes(tmp_path):
    sub(tmp_path / "j.sub", "echo $(node) >> ran; sleep 2")
    lines = []
    for i in range(3):
        lines += [f"JOB N{i} j.sub", f'VARS N{i} node="N{i}"', f"CATEGORY N{i} One"]
    lines.append("MAXJOBS One 1")
    dag = tmp_path / "i.dag"
    dag.write_text("\n".join(lines) + "\n")
    code = (
        f"import sys; from osgtest_dag.engine.local import executor\n"
        f"try:\n  executor.run_dag({str(dag)!r})\nexcept executor.Interrupted:\n  sys.exit(130)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path)
    while not (tmp_path / "ran").exists():
        time.sleep(0.05)
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=20) == 130
    st = node_outcomes(dag)
    assert all(s["status"] in ("pending", "done") for s in st.values())
    assert executor.run_dag(dag) is True


def test_progress_plain_lines_count_cells():
    import io

    from osgtest_dag.engine.local.progress import Progress

    out = io.StringIO()
    p = Progress(stream=out, tty=False)
    nodes = [
        f"{k}{s}" for s in ("000", "001") for k in ("CreateDisk", "TestRun", "ProcessResult", "CleanOutput")
    ]
    p.add_dag("m.dag", dict.fromkeys(nodes, "pending"))
    p.update("m.dag", "CreateDisk000", "running")
    p.update("m.dag", "CreateDisk000", "done")  # waiting for a VM: pending again
    for k in ("TestRun", "ProcessResult", "CleanOutput"):
        p.update("m.dag", f"{k}000", "running")
        p.update("m.dag", f"{k}000", "done")
    p.update("m.dag", "CreateDisk001", "failed")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("cell 000: running | cells 0/2 finished (0 done, 0 failed), 1 running")
    assert lines[1].startswith("cell 000: pending | cells 0/2 finished")
    assert lines[-2].startswith("cell 000: done | cells 1/2 finished (1 done, 0 failed), 0 running")
    assert lines[-1].startswith("cell 001: failed | cells 2/2 finished (1 done, 1 failed), 0 running")
    assert lines[-1].endswith("ETA 0:00")


def test_same_final_states_as_real_dagman(tmp_path):
    """The injected-failures DAG (pooltest.py) on our executor ends exactly as it did on
    HTCondor 23.9's DAGMan (recorded by tests/test_pool.py in tests/data/condor/injected)."""
    import pooltest

    recorded = json.loads(
        (Path(__file__).parent / "data" / "condor" / "injected" / "final-states.json").read_text()
    )
    assert recorded["engine"] == "dagman"
    dag = pooltest.write_injected_dag(tmp_path)
    assert executor.run_dag(dag, executor.Options(local_jobs=4)) is True
    assert node_outcomes(dag) == recorded["nodes"] == pooltest.EXPECTED


# A state file as the executor wrote it before NodeState (version 1): it must still resume.
OLD_STATE = {
    "schema": "osgtest-dag/local-state",
    "version": 1,
    "nodes": {
        "A": {
            "status": "done",
            "retries": 1,
            "attempts": [
                {"retry": 0, "started": 1.0, "pre": 0, "job": 1, "post": 1, "ended": 2.0, "result": 1},
                {
                    "retry": 1,
                    "started": 3.0,
                    "job": 0,
                    "ended": 4.0,
                    "result": 0,
                    "vm": [
                        {
                            "starts": 1,
                            "accel": "tcg",
                            "wall_s": 1.5,
                            "returncode": 0,
                            "timed_out": False,
                            "console": "console.1.1.log",
                        }
                    ],
                },
            ],
        },
        "B": {"status": "failed", "retries": 2, "attempts": [{"error": "boom"}], "unless_exit": True},
        "C": {"status": "futile", "retries": 0, "attempts": []},
        "D": {"status": "running", "retries": 0, "attempts": [{"retry": 0, "started": 5.0}]},
        "E": {"status": "pending", "retries": 0, "attempts": []},
    },
}


def test_state_file_round_trip_and_resume(tmp_path):
    path = tmp_path / "x.dag.local-state.json"
    path.write_text(json.dumps(OLD_STATE))
    state = StateFile(path)
    assert state.nodes["A"].status is NodeStatus.DONE and state.nodes["A"].attempts[1].vm[0]["accel"] == "tcg"
    assert state.nodes["B"].stopped_by_unless_exit is True
    state.save()
    saved = json.loads(path.read_text())
    assert saved["nodes"]["A"] == OLD_STATE["nodes"]["A"]  # same format, key for key
    assert saved["nodes"]["B"]["attempts"] == [{"retry": 0, "started": 0.0, "error": "boom"}]
    for st in state.nodes.values():
        st.reset_for_resume()
    assert {n: (st.status.value, st.retries, st.stopped_by_unless_exit) for n, st in state.nodes.items()} == {
        "A": ("done", 1, None),
        "B": ("pending", 0, None),
        "C": ("pending", 0, None),
        "D": ("pending", 0, None),
        "E": ("pending", 0, None),
    }


def test_state_file_of_another_version_is_refused(tmp_path):
    path = tmp_path / "x.dag.local-state.json"
    path.write_text(json.dumps({**OLD_STATE, "version": 2}))
    with pytest.raises(UserError, match="version 2"):
        StateFile(path)
    path.write_text(json.dumps({**OLD_STATE, "nodes": {"A": {"status": "exploded", "retries": 0}}}))
    with pytest.raises(UserError, match="malformed"):
        StateFile(path)
    path.write_text("{not json")  # unreadable: ignored, every node runs
    assert StateFile(path).nodes == {}


def test_jobs_are_killed_running_or_before_they_start(tmp_path):
    children = ChildRecord(tmp_path / "children.jsonl")
    running = RunningJobs()

    def job():
        return ProcessJob(["sleep", "30"], cwd=tmp_path, stdout=None, stderr=None, env={}, children=children)

    results = []
    t = threading.Thread(target=lambda: results.append(running.run(job())))
    t0 = time.monotonic()
    t.start()
    while not (tmp_path / "children.jsonl").exists():
        time.sleep(0.01)
    running.kill_all()
    t.join(timeout=10)
    assert results == [-signal.SIGTERM] and time.monotonic() - t0 < 10
    assert running.run(job()) == RETURN_SUBMIT_FAILED  # after Ctrl-C nothing starts
    assert len(children.path.read_text().splitlines()) == 1


def test_reaper_stops_what_a_killed_executor_left_running(tmp_path):
    left = subprocess.Popen(["sleep", "30"], start_new_session=True)
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)
    for p in (left, other):  # /proc shows the new program's command line a moment after exec
        while not Path(f"/proc/{p.pid}/cmdline").read_bytes().startswith(b"sleep\0"):
            time.sleep(0.01)
    record = ChildRecord.for_dag(tmp_path / "x.dag")
    record.add(left.pid, ["sleep", "30"], tmp_path)
    record.add(other.pid, ["qemu-system-x86_64"], tmp_path)  # the pid now runs something else
    try:
        record.reap()
        assert left.wait(timeout=10) == -signal.SIGKILL
        assert other.poll() is None
        assert not record.path.exists()
    finally:
        other.kill()
        other.wait()


def test_vm_job_without_its_base_image_or_killed_first_boots_nothing(tmp_path):
    spec = submit.JobSpec(
        universe="vm",
        executable="",
        arguments=(),
        initialdir=tmp_path,
        output=None,
        error=None,
        environment={},
        vm_disks=(("base.qcow2", "vda", "r", "qcow2"),),
    )
    node = dagfile.Node(name="TestRun000", submit_file="vm.sub")
    children = ChildRecord(tmp_path / "children.jsonl")
    attempt = Attempt(retry=0, started=0.0)
    assert VmJob(spec, node, attempt, accel=RunAccel("tcg"), children=children).run() == RETURN_SUBMIT_FAILED
    assert attempt.error == f"base image {tmp_path / 'base.qcow2'} missing"
    (tmp_path / "base.qcow2").write_bytes(b"")
    job = VmJob(spec, node, Attempt(retry=0, started=0.0), accel=RunAccel("tcg"), children=children)
    job.kill()  # Ctrl-C came first: no VM starts
    assert job.run() == RETURN_REMOVED
    assert not children.path.exists() and not (tmp_path / ".scratch-TestRun000").exists()
    with pytest.raises(UserError, match="needs vm_disk"):
        VmJob(
            submit.JobSpec(
                universe="vm",
                executable="",
                arguments=(),
                initialdir=tmp_path,
                output=None,
                error=None,
                environment={},
            ),
            node,
            attempt,
            accel=RunAccel(),
            children=children,
        )
