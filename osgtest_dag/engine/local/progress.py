"""Live progress of a local run: cells done / running / failed, elapsed time, ETA.

On a terminal one status line is redrawn in place; elsewhere (CI logs, pipes) a plain line is
printed whenever a cell changes state, so logs stay readable.
"""

from __future__ import annotations

import sys
import threading
import time

from osgtest_dag.model.rundir import NodeName


def _fmt(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    def __init__(self, stream=None, tty: bool | None = None, jobs: int = 1):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.start = time.monotonic()
        self.jobs = max(1, jobs)
        self.lock = threading.Lock()
        self.nodes: dict[str, str] = {}  # node name -> status (cell nodes only)
        self.cells: dict[str, str] = {}  # serial -> pending|running|done|failed
        self.other: dict[str, str] = {}  # outer workflow nodes
        self._last_line = ""

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
            before = self._cell_of(node)
            old = self.cells.get(before) if before else None
            self._set(node, status)
            new = self.cells.get(before) if before else None
        changed = before if before and old != new else None
        if changed or not before:
            self._render(changed=changed, node=node, status=status)

    # -----------------------------------------------------------------------------------
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
        elapsed = time.monotonic() - self.start
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
                self.stream.write("\r\033[K" + text)
                self.stream.flush()
            else:
                if changed is not None:
                    self.stream.write(f"cell {changed}: {self.cells[changed]} | {text}\n")
                elif node is not None and status in ("done", "failed", "running"):
                    self.stream.write(f"{node}: {status} | {text}\n")
                self.stream.flush()
            self._last_line = text

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
