"""Live progress of a local run: cells done / running / failed, elapsed time, ETA, and where
each running VM is (the payload phase its console last announced, and for how long).

On a terminal the status line and one line per running VM are redrawn in place, every second;
elsewhere (CI logs, pipes) a plain line is printed whenever a cell changes state or a VM starts a
phase, plus a heartbeat when nothing was printed for `HEARTBEAT_S`, so logs stay readable and a
long quiet phase is still visibly alive. The first line says which accelerator VMs use and why.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from osgtest_dag.model.rundir import NodeName

HEARTBEAT_S = 30.0
BOOTING = "boot"  # a VM's phase before its payload announced one


def _fmt(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass(frozen=True)
class VmPhase:
    phase: str
    since: float  # monotonic


class Progress:
    """`labels`: serial -> how a cell is named next to its serial (e.g. `debian_12 Hello`);
    `header`: the first line (the accelerator); `clock`: the time source (tests set it)."""

    def __init__(
        self,
        stream=None,
        tty: bool | None = None,
        jobs: int = 1,
        *,
        labels: Mapping[str, str] | None = None,
        header: str | None = None,
        clock=time.monotonic,
    ):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.clock = clock
        self.start = clock()
        self.jobs = max(1, jobs)
        self.labels = dict(labels or {})
        self.lock = threading.Lock()
        self.nodes: dict[str, str] = {}  # node name -> status (cell nodes only)
        self.cells: dict[str, str] = {}  # serial -> pending|running|done|failed
        self.other: dict[str, str] = {}  # outer workflow nodes
        self.vms: dict[str, VmPhase] = {}  # node name -> phase, while its VM runs
        self._last_line = ""
        self._last_write = self.start
        self._drawn_vm_lines = 0  # terminal: VM lines under the status line, to redraw
        self._ticker: threading.Thread | None = None
        self._closed = threading.Event()
        if header:
            self.note(header)

    # called by the executor ------------------------------------------------------------
    def add_dag(self, dag_path, statuses: dict[str, str]) -> None:
        """A DAG's nodes (those this run runs) and their status words before it starts."""
        with self.lock:
            for n, st in statuses.items():
                st = "pending" if st in ("running", "failed", "futile") else st
                self._set(n, st)
        self._render(changed=None)

    def update(self, dag_path, node: str, status: str) -> None:
        with self.lock:
            if status != "running":
                self.vms.pop(node, None)
            before = self._cell_of(node)
            old = self.cells.get(before) if before else None
            self._set(node, status)
            new = self.cells.get(before) if before else None
        changed = before if before and old != new else None
        if changed or not before:
            self._render(changed=changed, node=node, status=status)

    def phase(self, node: str, phase: str | None) -> None:
        """A node's VM started (None) or its payload started `phase`."""
        with self.lock:
            self.vms[node] = VmPhase(phase or BOOTING, self.clock())
            if not self.tty:
                self._write(f"{self._vm_text(node, self.vms[node])} | {self.line()}\n")
        if self.tty:
            self._render(changed=None)

    def note(self, text: str) -> None:
        """A line of its own (the accelerator, and when it changes)."""
        with self.lock:
            self._write((self._erase() if self.tty else "") + text + "\n")
            self._drawn_vm_lines = 0

    def note_accel(self, choice) -> None:
        self.note(choice.line())

    def tick(self) -> None:
        """Called every second: a terminal redraws (the clocks move); elsewhere a heartbeat
        when nothing was printed for HEARTBEAT_S."""
        if self.tty:
            self._render(changed=None)
            return
        with self.lock:
            if self.clock() - self._last_write >= HEARTBEAT_S:
                vms = "; ".join(self._vm_text(n, v) for n, v in sorted(self.vms.items()))
                self._write(f"{self.line()}" + (f" | {vms}" if vms else "") + "\n")

    def start_ticker(self) -> None:
        def loop() -> None:
            while not self._closed.wait(1.0):
                self.tick()

        self._ticker = threading.Thread(target=loop, name="progress", daemon=True)
        self._ticker.start()

    # -----------------------------------------------------------------------------------
    def _vm_text(self, node: str, vm: VmPhase) -> str:
        serial = self._cell_of(node)
        who = f"{serial} {self.labels[serial]}" if serial in self.labels else (serial or node)
        return f"{who}: {vm.phase} {_fmt(self.clock() - vm.since)}"

    def _erase(self) -> str:
        """Terminal: back to the status line and clear it and the VM lines under it."""
        up = f"\033[{self._drawn_vm_lines}A" if self._drawn_vm_lines else ""
        return "\r" + up + "\033[J"

    def _write(self, text: str) -> None:
        """Under self.lock."""
        self.stream.write(text)
        self.stream.flush()
        self._last_write = self.clock()

    @staticmethod
    def _cell_of(node: str) -> str | None:
        name = NodeName.parse_or_none(node)
        return name.serial if name else None

    def _set(self, node: str, status: str) -> None:
        serial = self._cell_of(node)
        if serial is None:
            self.other[node] = status
            return
        self.nodes[node] = status
        mine = [self.nodes.get(n.format()) for n in NodeName.of_cell(serial)]
        if any(s in ("failed", "futile") for s in mine):
            cell = "failed"
        elif all(s == "done" for s in mine if s is not None) and mine[-1] == "done":
            cell = "done"
        elif any(s == "running" for s in mine):
            cell = "running"  # waiting for a VM slot between nodes counts as pending
        else:
            cell = "pending"
        self.cells[serial] = cell

    def counts(self) -> dict:
        c = {"pending": 0, "running": 0, "done": 0, "failed": 0}
        for v in self.cells.values():
            c[v] += 1
        return c

    def line(self) -> str:
        c = self.counts()
        total = len(self.cells)
        finished = c["done"] + c["failed"]
        elapsed = self.clock() - self.start
        eta = "?"
        if finished and total > finished:
            eta = _fmt(elapsed / finished * (total - finished))
        elif total and finished == total:
            eta = "0:00"
        return (
            f"cells {finished}/{total} finished ({c['done']} done, {c['failed']} failed), "
            f"{c['running']} running; elapsed {_fmt(elapsed)}, ETA {eta}"
        )

    def _render(self, changed: str | None, node: str | None = None, status: str | None = None) -> None:
        with self.lock:
            text = self.line()
            if self.tty:
                vms = [self._vm_text(n, v) for n, v in sorted(self.vms.items())]
                # cut to the terminal's width: a wrapped line would throw off the redraw
                width = shutil.get_terminal_size().columns - 1
                self._write(self._erase() + "\n".join(line[:width] for line in [text, *vms]))
                self._drawn_vm_lines = len(vms)
            elif changed is not None:
                self._write(f"cell {changed}: {self.cells[changed]} | {text}\n")
            elif node is not None and status in ("done", "failed", "running"):
                self._write(f"{node}: {status} | {text}\n")
            self._last_line = text

    def close(self) -> None:
        self._closed.set()
        if self._ticker is not None:
            self._ticker.join()
        if self.tty:
            with self.lock:
                self._write("\n")
