"""Counting limits on what runs at once: VMs (-j), local jobs, MAXJOBS categories."""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from pathlib import Path


class Slots:
    """Counting limits shared by a DAG and its sub-DAGs: VMs (-j), local jobs, categories."""

    def __init__(self, vm_jobs: int, local_jobs: int):
        self.cond = threading.Condition()
        self.limits = {"vm": vm_jobs, "local": local_jobs}
        self.used: dict[str, int] = {}

    def add_limit(self, key: str, limit: int) -> None:
        """A MAXJOBS category's limit; the first DAG to name the key sets it."""
        with self.cond:
            self.limits.setdefault(key, limit)

    def try_take(self, keys: list[str]) -> bool:
        """Take one of each key; a key named n times is n of it (a cluster cell's VMs). More
        than a limit allows is taken only when none is in use: the job runs alone."""
        need = Counter(keys)
        with self.cond:
            if all(self._fits(k, n) for k, n in need.items()):
                for k, n in need.items():
                    self.used[k] = self.used.get(k, 0) + n
                return True
            return False

    def _fits(self, key: str, n: int) -> bool:
        used = self.used.get(key, 0)
        return used + n <= self.limits.get(key, 1 << 30) or used == 0

    def give(self, keys: list[str]) -> None:
        with self.cond:
            for k in keys:
                self.used[k] -= 1
            self.cond.notify_all()


def default_jobs(vm_memory_mb: int = 2048) -> int:
    """VMs this machine can hold at once, by cores and by available memory."""
    cores = os.cpu_count() or 1
    try:
        m = re.search(r"MemAvailable:\s+(\d+)", Path("/proc/meminfo").read_text())
    except OSError:
        m = None
    avail_kb = int(m.group(1)) if m else 4 << 20
    by_mem = max(1, (avail_kb // 1024 - 1024) // (vm_memory_mb + 256))
    return max(1, min(cores, by_mem))


class JobSlot:
    """A node's hold on its job slots (VM or local, category): the scheduler takes them when
    it starts the node, the node gives them back when its job ends and takes them again for
    a retry."""

    def __init__(self, slots: Slots, keys: list[str]):
        self.slots, self.keys, self.held = slots, keys, True

    def take(self, stop: threading.Event) -> bool:
        while not self.held:
            if stop.is_set():
                return False
            if self.slots.try_take(self.keys):
                self.held = True
            else:
                with self.slots.cond:
                    self.slots.cond.wait(timeout=1.0)
        return True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.slots.give(self.keys)
