"""Processes a killed executor left running: listed on disk as they start, stopped by the next run.

Ctrl-C stops running jobs cleanly (see jobs.RunningJobs); a `kill -9` of the executor cannot,
so every child (job, script, qemu) is appended to `.<dag>.local-children.jsonl` and the next
executor of that DAG kills those still alive before it starts anything.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from osgtest_dag.base.errors import UserError
from osgtest_dag.model.documents import parse_json

log = logging.getLogger(__name__)


class ChildRecord:
    """The on-disk list of one DAG's children (sub-DAGs run by the same executor share it)."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()

    @classmethod
    def for_dag(cls, dag_path: Path) -> ChildRecord:
        return cls(dag_path.with_name(f".{dag_path.name}.local-children.jsonl"))

    def add(self, pid: int, argv: Sequence[str], where: Path) -> None:
        line = json.dumps({"pid": pid, "argv0": str(argv[0]), "where": str(where), "started": time.time()})
        with self._lock, open(self.path, "a") as f:
            f.write(line + "\n")

    def reap(self) -> None:
        """Kill the recorded children still running (the same program under the same pid),
        then forget them all."""
        if not self.path.is_file():
            return
        for line in self.path.read_text().splitlines():
            try:
                rec = parse_json(line, self.path)
                cmdline = Path(f"/proc/{rec['pid']}/cmdline").read_bytes().split(b"\0")
            except (UserError, OSError, KeyError, TypeError):
                continue
            if cmdline and cmdline[0].decode(errors="replace") == rec["argv0"]:
                log.warning("stopping pid %d left running by an earlier executor", rec["pid"])
                try:
                    os.killpg(rec["pid"], signal.SIGKILL)
                except OSError:
                    pass
        self.path.unlink()
