"""The local executor's per-DAG node states, and the file that keeps them across runs.

`<dag>.local-state.json` is written atomically after every node, so after Ctrl-C or `kill -9`
the next run finishes the rest without redoing finished nodes. Format (version 1):

    {"schema": "osgtest-dag/local-state", "version": 1,
     "nodes": {NAME: {"status": pending|running|done|failed|futile, "retries": N,
                      "attempts": [{"retry", "started", "pre", "job", "post", "ended",
                                    "result", "error", "vm"}, ...],   # keys present when known
                      "unless_exit": BOOL}}}                          # present once it failed

Each node's state is changed by one thread at a time: the scheduler before it starts the node
and after the node's thread has finished, the node's thread in between; `save` snapshots under
a lock, so a save from one thread never sees another thread's dictionary half-changed.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from osgtest_dag.base.atomic import write_json_atomic
from osgtest_dag.base.errors import UserError
from osgtest_dag.model.documents import read_json

log = logging.getLogger(__name__)

STATE_SCHEMA = "osgtest-dag/local-state"
STATE_VERSION = 1


class NodeStatus(Enum):
    """Where a node is, in the words the state file (and the progress display) uses."""

    PENDING = "pending"  # not started yet, or to be run again after an interrupted run
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"  # out of retries, stopped by UNLESS-EXIT, or ABORT-DAG-ON with non-zero
    FUTILE = "futile"  # an ancestor failed: never runs


@dataclass
class Attempt:
    """One try of a node: its PRE script, job and POST script, and what came of them."""

    retry: int
    started: float
    pre: int | None = None
    job: int | None = None
    post: int | None = None
    ended: float | None = None
    result: int | None = None
    error: str | None = None
    vm: list[dict] = field(default_factory=list)  # one record per VM start (VM jobs)

    def to_json(self) -> dict:
        out: dict = {"retry": self.retry, "started": self.started}
        for key in ("pre", "job", "post", "ended", "result", "error"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.vm:
            out["vm"] = list(self.vm)
        return out

    @classmethod
    def from_json(cls, data: dict) -> Attempt:
        # Earlier executors wrote a bare {"error": ...} entry for a node that raised.
        return cls(
            retry=int(data.get("retry", 0)),
            started=float(data.get("started", 0.0)),
            pre=data.get("pre"),
            job=data.get("job"),
            post=data.get("post"),
            ended=data.get("ended"),
            result=data.get("result"),
            error=data.get("error"),
            vm=list(data.get("vm", [])),
        )


@dataclass
class NodeState:
    status: NodeStatus = NodeStatus.PENDING
    retries: int = 0
    attempts: list[Attempt] = field(default_factory=list)
    # Set when the node failed: True when UNLESS-EXIT stopped its retries (its descendants
    # then stay pending, as in DAGMan), False when it ran out of them (descendants: futile).
    stopped_by_unless_exit: bool | None = None

    def reset_for_resume(self) -> None:
        """A resumed run redoes what did not finish, as a DAGMan rescue DAG would."""
        if self.status in (NodeStatus.RUNNING, NodeStatus.FAILED, NodeStatus.FUTILE):
            self.status, self.retries, self.stopped_by_unless_exit = NodeStatus.PENDING, 0, None

    def to_json(self) -> dict:
        out: dict = {
            "status": self.status.value,
            "retries": self.retries,
            "attempts": [a.to_json() for a in list(self.attempts)],
        }
        if self.stopped_by_unless_exit is not None:
            out["unless_exit"] = self.stopped_by_unless_exit
        return out

    @classmethod
    def from_json(cls, data: dict) -> NodeState:
        return cls(
            status=NodeStatus(data["status"]),
            retries=int(data["retries"]),
            attempts=[Attempt.from_json(a) for a in data.get("attempts", [])],
            stopped_by_unless_exit=data.get("unless_exit"),
        )


class StateFile:
    """Per-DAG node states on disk, written atomically after every change that matters."""

    def __init__(self, path: Path):
        self.path = path
        self.nodes: dict[str, NodeState] = {}
        self._lock = threading.Lock()
        self._load()

    @classmethod
    def for_dag(cls, dag_path: Path) -> StateFile:
        return cls(dag_path.with_name(f"{dag_path.name}.local-state.json"))

    def _load(self) -> None:
        if not self.path.is_file():
            return
        try:
            data = read_json(self.path)
        except UserError:
            log.warning("ignoring unreadable state file %s", self.path)
            return
        if not isinstance(data, dict) or data.get("schema") != STATE_SCHEMA:
            log.warning("ignoring %s: not a local executor state file", self.path)
            return
        if data.get("version") != STATE_VERSION:
            raise UserError(
                f"state file version {data.get('version')!r}; this executor reads version {STATE_VERSION}",
                where=self.path,
                hint="written by another osgtest-dag: finish the run with it, or "
                "remove the file to run every node again",
            )
        try:
            self.nodes = {name: NodeState.from_json(st) for name, st in data["nodes"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UserError(
                f"malformed state file ({type(e).__name__}: {e})",
                where=self.path,
                hint="remove it to run every node again",
            ) from None

    def node(self, name: str) -> NodeState:
        with self._lock:
            return self.nodes.setdefault(name, NodeState())

    def save(self) -> None:
        with self._lock:
            nodes = {name: st.to_json() for name, st in list(self.nodes.items())}
            write_json_atomic(self.path, {"schema": STATE_SCHEMA, "version": STATE_VERSION, "nodes": nodes})
