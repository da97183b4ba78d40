"""Following a VM's serial console while it runs: has it printed anything, which phase is it in.

The payload (payload/run-job) says `[osgtest HH:MM:SS] phase NAME: start` as each phase begins;
the console file grows as qemu writes it, so each `poll()` reads only what was added since.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from osgtest_dag.guest.payload import PHASE_START


class ConsoleFollower:
    """Reads a console file incrementally; `printed` once any byte came, `phase` the latest;
    `on_line` is given every complete line (with its end) as it comes."""

    def __init__(self, path: Path, on_line: Callable[[bytes], None] | None = None):
        self.path = path
        self.on_line = on_line
        self.printed = False
        self.phase: str | None = None
        self._offset = 0
        self._partial = b""  # a line not ended yet

    def poll(self) -> list[str]:
        """Read what was added; the phases that started in it, in order."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return []  # not created yet
        if not data:
            return []
        self._offset += len(data)
        self.printed = True
        *lines, self._partial = (self._partial + data).split(b"\n")
        if self.on_line:
            for line in lines:
                self.on_line(line + b"\n")
        started = [m.group(1).decode() for line in lines if (m := PHASE_START.search(line))]
        if started:
            self.phase = started[-1]
        return started
