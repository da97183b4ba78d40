"""The accelerator one run's VMs start under: chosen once, KVM given up for good if a VM hangs.

A host can run the KVM probe's kernel and still hang a real VM under KVM without a byte on its
console; the VM job's watchdog then calls `give_up_kvm`, and every later start of this run (and
every later command in this host boot, through `qemu.mark_kvm_unusable`) uses TCG.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from osgtest_dag.guest import qemu


class RunAccel:
    """`forced` is the run's `--accel` (None: the probe decides)."""

    def __init__(
        self, forced: str | None = None, on_change: Callable[[qemu.AccelChoice], None] | None = None
    ):
        self._lock = threading.Lock()
        self._forced = forced
        self._choice: qemu.AccelChoice | None = None
        self.on_change = on_change  # told when KVM is given up (the progress display says so)

    def choice(self) -> qemu.AccelChoice:
        with self._lock:
            if self._choice is None:
                self._choice = (
                    qemu.AccelChoice(self._forced, "chosen with --accel")
                    if self._forced
                    else qemu.accel_choice()
                )
            return self._choice

    def current(self) -> str:
        return self.choice().accel

    def give_up_kvm(self, why: str) -> None:
        """A VM hung under KVM: TCG for the rest of the run (once, whichever VM saw it first)."""
        with self._lock:
            if self._choice is not None and self._choice.accel == "tcg":
                return
            self._choice = qemu.mark_kvm_unusable(why)
            choice = self._choice
        if self.on_change:
            self.on_change(choice)
