"""The stage barrier of one cluster cell (docs/clusters.md).

Each VM's payload talks to the runner over a virtio-serial port (`org.osgtest.sync`), one line
at a time: `ready <k> ok|failed` before stage k (failed: its setup or one of its own stages
failed), `done ok|failed` after the last. The runner answers `ready` only when every VM has
arrived at stage k or ended: `run`, or `skip` when any VM has reported a failure (or died) and
stage k does not always run. So no VM starts stage k+1 before every VM has finished stage k.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

PORT_NAME = "org.osgtest.sync"
RUN, SKIP = "run", "skip"


def decision(always: bool, failed: bool) -> str:
    """Whether a stage runs: always-stages do; the others only while nothing has failed."""
    return RUN if always or not failed else SKIP


@dataclass
class StageBarrier:
    """Stage k's barrier: who arrived when, and what was decided."""

    index: int  # 1-based
    name: str
    always: bool
    arrivals: dict[str, tuple[float, str]] = field(default_factory=dict)  # vm -> (time, status)
    released: float | None = None
    decision: str | None = None

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "name": self.name,
            "always": self.always,
            "arrivals": {vm: {"time": t, "status": s} for vm, (t, s) in self.arrivals.items()},
            "released": self.released,
            "decision": self.decision,
        }


class Barrier:
    """The state every VM's connection thread shares."""

    def __init__(self, vms: Sequence[str], stages: Sequence[tuple[str, bool]], clock: Callable[[], float]):
        self.vms = tuple(vms)
        self.stages = [StageBarrier(i, name, always) for i, (name, always) in enumerate(stages, 1)]
        self.clock = clock
        self.failed: dict[str, str] = {}  # vm -> why (its report, or that it ended)
        self.ended: set[str] = set()
        self.finished: dict[str, str] = {}  # vm -> its `done` status
        self._cond = threading.Condition()

    def arrive(self, vm: str, index: int, status: str, timeout: float | None = None) -> str:
        """`vm` reached stage `index` (its status so far); blocks until every VM has; the
        decision for stage `index`."""
        if not 1 <= index <= len(self.stages):
            raise ValueError(f"no stage {index}")
        stage = self.stages[index - 1]
        with self._cond:
            stage.arrivals[vm] = (self.clock(), status)
            if status != "ok":
                self.failed.setdefault(vm, f"reported {status} before stage {stage.name}")
            self._release_ready()
            if not self._cond.wait_for(lambda: stage.decision is not None, timeout=timeout):
                raise TimeoutError(f"stage {stage.name}: not every VM arrived within {timeout} s")
            assert stage.decision is not None
            return stage.decision

    def done(self, vm: str, status: str) -> None:
        with self._cond:
            self.finished[vm] = status
            if status != "ok":
                self.failed.setdefault(vm, "reported failed after its last stage")

    def vm_ended(self, vm: str) -> None:
        """The VM is gone (powered off, killed): it takes part in no later barrier; gone before
        `done` it counts as failed."""
        with self._cond:
            self.ended.add(vm)
            if vm not in self.finished:
                self.failed.setdefault(vm, "ended before its last stage")
            self._release_ready()

    def _release_ready(self) -> None:
        for stage in self.stages:
            if stage.decision is not None:
                continue
            waiting = [v for v in self.vms if v not in stage.arrivals and v not in self.ended]
            if waiting:
                return  # later stages wait for this one
            stage.decision = decision(stage.always, bool(self.failed))
            stage.released = self.clock()
            log.info(
                "cluster: stage %s: %s (%d VMs arrived)", stage.name, stage.decision, len(stage.arrivals)
            )
            self._cond.notify_all()

    def to_json(self) -> list[dict]:
        with self._cond:
            return [s.to_json() for s in self.stages]


class SyncChannel:
    """One VM's end of the protocol: a unix stream socket qemu's chardev connects to."""

    def __init__(self, path: Path, vm: str, barrier: Barrier):
        self.path, self.vm, self.barrier = path, vm, barrier
        path.unlink(missing_ok=True)
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(1)
        self.lines: list[str] = []  # what the VM said, for the record
        self._thread = threading.Thread(target=self._serve, name=f"sync-{vm}", daemon=True)

    def qemu_args(self) -> list[str]:
        return [
            "-chardev",
            f"socket,id=sync,path={self.path},reconnect=1",
            "-device",
            "virtio-serial-pci",
            "-device",
            f"virtserialport,chardev=sync,name={PORT_NAME}",
        ]

    def start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self._server.accept()
        except OSError:
            return  # closed before the VM connected
        with conn, conn.makefile("rwb", buffering=0) as f:
            while True:
                raw = f.readline(512)
                if not raw:
                    return
                line = raw.decode("ascii", "replace").strip()
                self.lines.append(line)
                reply = self._handle(line)
                if reply is not None:
                    f.write(reply.encode() + b"\n")

    def _handle(self, line: str) -> str | None:
        parts = line.split()
        try:
            if len(parts) == 3 and parts[0] == "ready":
                return self.barrier.arrive(self.vm, int(parts[1]), parts[2])
            if len(parts) == 2 and parts[0] == "done":
                self.barrier.done(self.vm, parts[1])
                return None
        except ValueError as e:
            log.warning("cluster: %s: %s", self.vm, e)
            return SKIP
        log.warning("cluster: %s said %r: not the protocol", self.vm, line[:80])
        return None

    def close(self) -> None:
        try:
            self._server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._server.close()


def now() -> float:
    return time.time()
