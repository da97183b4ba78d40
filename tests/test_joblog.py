"""model.joblog: HTCondor job event logs read by htcondor2's JobEventLog into per-job records.
The logs under tests/data/condor/ were written by HTCondor (the test pool's DAGMan runs and VM
jobs, recorded by tests/test_pool.py); the hand-written one below is read by the same reader."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from osgtest_dag.model.joblog import (
    WALL_CLOCK_HOLD_CODE,
    WALL_CLOCK_HOLD_SUBCODE,
    Attempt,
    AttemptEnd,
    Hold,
    JobRecord,
    JobState,
    jobs_by_node,
    read_job_log,
)

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "condor"
VMGAHP = (
    "An internal error prevented HTCondor from starting the VM.  This job will be rescheduled.  "
    "(VMGAHP_ERR_INTERNAL)."
)


def _t(text: str) -> int:
    """A log's event time as htcondor2's JobEvent.timestamp gives it (the log's local time)."""
    return int(dt.datetime.fromisoformat(text).timestamp())


def test_vm_jobs_one_retried_after_a_vmgahp_error_one_removed_one_never_started():
    jobs = read_job_log(DATA / "vm" / "jobs.log")
    assert jobs == (
        JobRecord(
            cluster=159,
            proc=0,
            node="TestRun000",
            state=JobState.DONE,
            submitted=_t("2026-11-21 23:10:25"),
            ended=_t("2026-11-21 23:16:28"),
            exit_code=0,
            exit_signal=None,
            attempts=(
                Attempt(
                    host="vm",
                    start=_t("2026-11-21 23:10:31"),
                    end=_t("2026-11-21 23:10:44"),
                    ending=AttemptEnd.REMOTE_ERROR,
                    reason=VMGAHP,
                ),
                Attempt(
                    host="vm",
                    start=_t("2026-11-21 23:13:36"),
                    end=_t("2026-11-21 23:16:28"),
                    ending=AttemptEnd.EXITED,
                    exit_code=0,
                ),
            ),
            holds=(),
            released=0,
            evicted=1,
            aborted=False,
            removed_reason="",
            shadow_exceptions=(),
            events=14,
        ),
        JobRecord(
            cluster=162,
            proc=0,
            node="TestRun001",
            state=JobState.REMOVED,
            submitted=_t("2026-11-21 23:26:50"),
            ended=_t("2026-11-21 23:27:06"),
            exit_code=None,
            exit_signal=None,
            attempts=(
                Attempt(
                    host="vm",
                    start=_t("2026-11-21 23:26:54"),
                    end=_t("2026-11-21 23:27:06"),
                    ending=AttemptEnd.REMOTE_ERROR,
                    reason=VMGAHP,
                ),
            ),
            holds=(),
            released=0,
            evicted=1,
            aborted=True,
            removed_reason="via condor_rm (by user condor)",
            shadow_exceptions=(),
            events=7,
        ),
        JobRecord(
            cluster=163,
            proc=0,
            node="TestRun002",
            state=JobState.REMOVED,
            submitted=_t("2026-11-21 23:26:50"),
            ended=_t("2026-11-21 23:26:58"),
            exit_code=None,
            exit_signal=None,
            attempts=(),
            holds=(),
            released=0,
            evicted=0,
            aborted=True,
            removed_reason="The job attribute PeriodicRemove expression "
            "'(JobStatus == 1) && (time() - QDate > 5)' evaluated to TRUE",
            shadow_exceptions=(),
            events=2,
        ),
    )
    assert jobs[0].id == "159.0" and jobs[0].host == "vm" and jobs[0].hosts == ("vm", "vm")
    assert jobs[0].executed == (_t("2026-11-21 23:10:31"), _t("2026-11-21 23:13:36"))
    assert jobs[2].host is None and jobs[2].last_hold is None


def test_a_vm_held_at_its_wall_clock_limit():
    """The test pool's run with a 3 s limit: HTCondor logs the running job's eviction, then
    the hold of the template's periodic_hold (code 3, subcode 1); the hold ended the execution."""
    jobs = read_job_log(DATA / "shaped" / "held" / "logs" / "jobs.log")
    [held] = [j for j in jobs if j.state == JobState.HELD]
    hold = Hold(
        time=_t("2026-11-21 22:54:23"),
        reason="osgtest-dag: VM ran longer than 3 s",
        code=3,
        subcode=1,
        host="vm",
    )
    assert held == JobRecord(
        cluster=152,
        proc=0,
        node="TestRun002",
        state=JobState.HELD,
        submitted=_t("2026-11-21 22:53:41"),
        ended=None,
        exit_code=None,
        exit_signal=None,
        attempts=(
            Attempt(
                host="vm",
                start=_t("2026-11-21 22:53:46"),
                end=_t("2026-11-21 22:54:23"),
                ending=AttemptEnd.HELD,
                reason=hold.reason,
                hold=hold,
            ),
        ),
        holds=(hold,),
        released=0,
        evicted=1,
        aborted=False,
        removed_reason="",
        shadow_exceptions=(),
        events=4,
    )
    assert held.held_at_wall_clock_limit and held.last_hold == hold and hold.at_wall_clock_limit
    others = [j for j in jobs if j is not held]
    assert not any(j.held_at_wall_clock_limit or j.holds for j in others)
    assert all(j.state == JobState.DONE and j.exit_code == 0 and j.host == "vm" for j in others)
    by_node = jobs_by_node(jobs)
    assert sorted(by_node) == [
        "CleanOutput000",
        "CreateDisk000",
        "CreateDisk001",
        "CreateDisk002",
        "ProcessResult000",
        "ProcessResult001",
        "TestRun000",
        "TestRun001",
        "TestRun002",
    ]
    assert [j.id for j in by_node["TestRun001"]] == ["151.0", "154.0"]  # a retry is a new job
    assert by_node["TestRun000"][0].attempts == (
        Attempt(
            host="vm",
            start=_t("2026-11-21 22:53:46"),
            end=_t("2026-11-21 22:53:47"),
            ending=AttemptEnd.EXITED,
            exit_code=0,
        ),
    )


def test_the_wall_clock_hold_codes_are_the_submit_templates():
    text = (ROOT / "submit_templates" / "test-run.sub.j2").read_text()
    assert re.search(r"^periodic_hold\s*=", text, re.M)  # a JobPolicy hold: code 3
    assert WALL_CLOCK_HOLD_CODE == 3
    assert re.search(r"^periodic_hold_subcode\s*=\s*(\d+)\s*$", text, re.M)[1] == str(WALL_CLOCK_HOLD_SUBCODE)


def test_injected_dag_retries_and_exit_codes():
    """DAGMan's run of the differential-test DAG (failures injected by exit code)."""
    jobs = read_job_log(DATA / "injected" / "jobs.log")
    by_node = jobs_by_node(jobs)
    assert len(by_node["TestRun004"]) == 3  # RETRY 2: three attempts, three jobs
    assert [j.exit_code for j in by_node["CreateDisk005"]] == [3, 3]
    assert [j.state for j in by_node["CreateDisk005"]] == [JobState.FAILED, JobState.FAILED]
    [t2] = by_node["TestRun002"]
    assert (t2.exit_code, t2.state) == (1, JobState.FAILED)
    assert all(j.host and j.submitted and j.executed and j.ended for j in jobs)
    assert sum(len(js) for js in by_node.values()) == len(jobs)


def test_the_dagman_jobs_own_log():
    [done] = read_job_log(DATA / "shaped" / "finished" / "workflow.dag.dagman.log")
    assert (done.id, done.node, done.state, done.exit_code) == ("128.0", None, JobState.DONE, 0)
    assert (done.submitted, done.ended) == (_t("2026-11-21 22:51:49"), _t("2026-11-21 22:53:13"))
    [running] = read_job_log(DATA / "shaped" / "held" / "workflow.dag.dagman.log")
    assert (running.id, running.state, running.ended, running.exit_code) == (
        "145.0",
        JobState.RUNNING,
        None,
        None,
    )
    assert running.attempts == (
        Attempt(host="vm", start=_t("2026-11-21 22:53:18"), end=None, ending=AttemptEnd.RUNNING),
    )


def test_shadow_exception_hold_while_idle_release_and_a_signal(tmp_path):
    """Events the recordings lack, in HTCondor's event-log text format."""
    log = tmp_path / "jobs.log"
    log.write_text("""\
000 (41.000.000) 2026-11-21 22:00:00 Job submitted from host: <10.0.0.1:9618?addrs=10.0.0.1-9618>
    DAG Node: TestRun007
...
001 (41.000.000) 2026-11-21 22:00:05 Job executing on host: <10.0.0.5:9618?addrs=10.0.0.5-9618&alias=exec01.example.org>
\tSlotName: slot1_1@exec01.example.org
...
007 (41.000.000) 2026-11-21 22:01:00 Shadow exception!
\tError from slot1_1@exec01.example.org: Failed to start the VM
\t0  -  Run Bytes Sent By Job
\t0  -  Run Bytes Received By Job
...
012 (41.000.000) 2026-11-21 22:02:00 Job was held.
\tFailed to transfer files
\tCode 13 Subcode 2
...
013 (41.000.000) 2026-11-21 22:03:00 Job was released.
\tvia condor_release (by user osg)
...
001 (41.000.000) 2026-11-21 22:04:00 Job executing on host: <10.0.0.6:9618?addrs=10.0.0.6-9618>
...
005 (41.000.000) 2026-11-21 22:09:00 Job terminated.
\t(0) Abnormal termination (signal 9)
\t(0) No core file
\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Remote Usage
\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Local Usage
\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Total Remote Usage
\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Total Local Usage
\t0  -  Run Bytes Sent By Job
\t0  -  Run Bytes Received By Job
\t0  -  Total Bytes Sent By Job
\t0  -  Total Bytes Received By Job
...
""")
    hold = Hold(
        time=_t("2026-11-21 22:02:00"), reason="Failed to transfer files", code=13, subcode=2, host=None
    )
    shadow = "Error from slot1_1@exec01.example.org: Failed to start the VM"
    assert read_job_log(log) == (
        JobRecord(
            cluster=41,
            proc=0,
            node="TestRun007",
            state=JobState.FAILED,
            submitted=_t("2026-11-21 22:00:00"),
            ended=_t("2026-11-21 22:09:00"),
            exit_code=None,
            exit_signal=9,
            attempts=(
                Attempt(
                    host="exec01.example.org",
                    start=_t("2026-11-21 22:00:05"),
                    end=_t("2026-11-21 22:01:00"),
                    ending=AttemptEnd.SHADOW_EXCEPTION,
                    reason=shadow,
                ),
                Attempt(
                    host="10.0.0.6",
                    start=_t("2026-11-21 22:04:00"),
                    end=_t("2026-11-21 22:09:00"),
                    ending=AttemptEnd.SIGNALED,
                    reason="signal 9",
                    exit_signal=9,
                ),
            ),
            holds=(hold,),
            released=1,
            evicted=0,
            aborted=False,
            removed_reason="",
            shadow_exceptions=(shadow,),
            events=7,
        ),
    )
    assert not read_job_log(log)[0].held_at_wall_clock_limit


def test_no_log_an_empty_log_and_a_log_being_written(tmp_path):
    assert read_job_log(tmp_path / "none.log") == ()
    (tmp_path / "empty.log").write_text("")
    assert read_job_log(tmp_path / "empty.log") == ()
    # cut inside the first job's termination event: what came before it is read
    text = (DATA / "vm" / "jobs.log").read_text()
    cut = tmp_path / "cut.log"
    cut.write_text(text[: text.index("Job terminated.") + 40])
    [job] = read_job_log(cut)
    assert (job.id, job.state, job.ended) == ("159.0", JobState.RUNNING, None)
    assert [a.ending for a in job.attempts] == [AttemptEnd.REMOTE_ERROR, AttemptEnd.RUNNING]
