"""The local executor: run a generated DAG on this machine, as DAGMan would, VMs under qemu.

What it honours, with DAGMan's semantics: dependencies, RETRY (with UNLESS-EXIT), PRE and POST
scripts (with $JOB $RETURN $RETRY $MAX_RETRIES $JOBID $DAG_STATUS $FAILED_COUNT), PRE_SKIP,
PRIORITY, CATEGORY + MAXJOBS, ABORT-DAG-ON, SUBDAG EXTERNAL and the FINAL node (which runs
whatever happened, and whose result is the DAG's). A node whose parent failed never runs.

Jobs are read from their submit descriptions with HTCondor's own parser (`htcondor2.Submit`,
with the node's VARS): local/vanilla/scheduler universe jobs run as processes; VM-universe jobs
boot under qemu (vmjob.py).

State (`<dag>.local-state.json`) is written atomically after every node, so after Ctrl-C or
`kill -9` the next `run` finishes the rest without redoing finished nodes (failed nodes are run
again, as a DAGMan rescue DAG would). Ctrl-C stops VMs and jobs cleanly.

The parts, each in its own module:
    submit     a node's submit file as a JobSpec
    state      NodeStatus, NodeState and the state file
    decide     retry / UNLESS-EXIT / ABORT-DAG-ON / futility / $DAG_STATUS, as pure functions
    slots      -j, local-job and MAXJOBS limits
    jobs       the Job protocol (run, kill), ProcessJob, ForkedJob, and the jobs running now
    vmjob      VmJob: a VM-universe job under qemu, and its local-vm.json records
    reaper     what a `kill -9`ed executor left running
    extraction result disks of VMs that end close together, read ahead in one appliance
    noderun    one node: PRE, job, POST, retries
    scheduler  one DAG: readiness, priorities, slots, the FINAL node
    executor   the entry point: one executor per DAG file, Ctrl-C
"""

from __future__ import annotations

import fcntl
import logging
import signal
import threading
from pathlib import Path

from osgtest_dag.base.errors import UserError
from osgtest_dag.engine.local.context import Context, Interrupted, Options
from osgtest_dag.engine.local.reaper import ChildRecord
from osgtest_dag.engine.local.runview import executor_lock
from osgtest_dag.engine.local.scheduler import DagScheduler
from osgtest_dag.engine.local.slots import default_jobs

# Callers (localrun, the CLI, tests) use these names from here.
__all__ = ["Executor", "Interrupted", "Options", "default_jobs", "run_dag"]

log = logging.getLogger(__name__)


class Executor:
    """Runs one DAG file (and, through SUBDAG EXTERNAL, the DAGs it names)."""

    def __init__(self, dag_path: Path, opts: Options):
        self.dag_path = Path(dag_path).resolve()
        self.ctx = Context(opts, ChildRecord.for_dag(self.dag_path))

    def run(self) -> bool:
        """Run the DAG to its end; True when it succeeded. Raises Interrupted on Ctrl-C."""
        dag_path = self.dag_path
        with open(executor_lock(dag_path), "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(
                    "another executor is running this DAG",
                    where=dag_path,
                    hint="wait for it, or stop it first",
                ) from None
            self.ctx.children.reap()
            try:
                return DagScheduler(self.ctx, dag_path).run()
            finally:
                self.ctx.close()

    def interrupt(self) -> None:
        """Stop: no new jobs; running VMs and processes are terminated."""
        self.ctx.stop.set()
        self.ctx.jobs.kill_all()


def run_dag(dag_path: Path, opts: Options | None = None) -> bool:
    """Run a DAG file locally to its end (Ctrl-C stops it cleanly; run again to resume)."""
    ex = Executor(dag_path, opts or Options())
    old = signal.getsignal(signal.SIGINT)
    is_main = threading.current_thread() is threading.main_thread()

    def on_sigint(signum, frame):
        log.warning("interrupted: stopping running jobs")
        # Not in the handler itself: it runs in the main thread, which may be holding the
        # locks interrupt() takes (the scheduler starting the FINAL node's job).
        threading.Thread(target=ex.interrupt, name="interrupt").start()

    if is_main:
        signal.signal(signal.SIGINT, on_sigint)
        signal.signal(signal.SIGTERM, on_sigint)
    try:
        return ex.run()
    finally:
        if is_main:
            signal.signal(signal.SIGINT, old)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
