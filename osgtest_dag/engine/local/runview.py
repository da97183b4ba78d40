"""A local run as `status` and `watch` see it: the executor's state files read back in the
shape of DAGMan's node status (NodeStatus codes, RetryCount), whether an executor runs it now,
and how it ended.
"""

from __future__ import annotations

import fcntl
from dataclasses import dataclass
from pathlib import Path

from osgtest_dag.engine.local.state import NodeStatus, StateFile
from osgtest_dag.model import dagfile
from osgtest_dag.model.rundir import RunDir

# DAGMan's NodeStatus codes (not_ready, submitted, done, error, futile) for the local words
DAGMAN_NODE_STATUS = {
    NodeStatus.PENDING: 0,
    NodeStatus.RUNNING: 3,
    NodeStatus.DONE: 5,
    NodeStatus.FAILED: 6,
    NodeStatus.FUTILE: 7,
}


def executor_lock(dag_path: Path) -> Path:
    """The file an executor holds locked while it runs `dag_path`."""
    return dag_path.with_name(f".{dag_path.name}.local.lock")


def executor_running(dag_path: Path) -> bool:
    """An executor holds `dag_path`'s lock now (a killed one holds nothing)."""
    try:
        with open(executor_lock(dag_path), "rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False
    except FileNotFoundError:
        return False


@dataclass(frozen=True)
class LocalRunView:
    running: bool  # an executor runs it now
    state: str  # running | done | failed | interrupted (stopped before its FINAL node ended)
    nodes: dict[str, dict]  # node -> {"NodeStatus": DAGMan's code, "RetryCount": n}
    started: float | None  # the first attempt's start (epoch seconds)
    ended: float | None  # the last attempt's end, once no executor runs it

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")


def read_local_run(run_dir: Path) -> LocalRunView | None:
    """None when no local executor ever ran this run directory."""
    layout = RunDir(run_dir)
    outer_file = StateFile.for_dag(layout.outer_dag)
    if not outer_file.path.is_file():
        return None
    files = [outer_file, StateFile.for_dag(layout.matrix_dag)]
    running = executor_running(layout.outer_dag)
    nodes = {
        name: {"NodeStatus": DAGMAN_NODE_STATUS[st.status], "RetryCount": st.retries}
        for sf in files
        for name, st in sf.nodes.items()
    }
    attempts = [a for sf in files for st in sf.nodes.values() for a in st.attempts]
    started = min((a.started for a in attempts if a.started), default=None)
    ended = None if running else max((a.ended for a in attempts if a.ended), default=None)
    state = "running" if running else _how_it_ended(outer_file, dagfile.parse(layout.outer_dag).final)
    return LocalRunView(running=running, state=state, nodes=nodes, started=started, ended=ended)


def _how_it_ended(outer: StateFile, final: str | None) -> str:
    """As DAGMan decides a DAG's result: its FINAL node's, else every node done (a failed node
    fails it); nodes left to run without a failure: interrupted."""
    if final is not None:
        st = outer.nodes.get(final)
        status = st.status if st else NodeStatus.PENDING
        return {NodeStatus.DONE: "done", NodeStatus.FAILED: "failed"}.get(status, "interrupted")
    statuses = {st.status for st in outer.nodes.values()}
    if statuses & {NodeStatus.FAILED, NodeStatus.FUTILE}:
        return "failed"
    return "done" if statuses == {NodeStatus.DONE} else "interrupted"
