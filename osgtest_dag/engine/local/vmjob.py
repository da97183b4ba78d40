"""A VM-universe job under qemu, as HTCondor's VM universe runs it.

The VM boots from `vm_disk` (the base image behind a copy-on-write overlay, the other disks
copied into a scratch directory as HTCondor transfers them), with `vm_memory`, `vm_vcpus` and
`vm_networking`; `transfer_output_files` + `transfer_output_remaps` bring the disk back where
the DAG expects it. A VM past its wall-clock limit (the run's max_wall, the number in
`periodic_hold`) is killed, its console kept, and treated as a held-then-released job: it starts
again until `max_starts` - unless its payload reached the test phase (its console says so): a
test that ran out of time is a result, not worth another start. The last start's disk comes
back as a finished VM's would, so the POST script reads the phases it finished; the node
counts as removed ($RETURN -1004). Every start is recorded in the cell's local-vm.json.

The console is followed while the VM runs: the phase the payload is in goes to the progress
display, and a watchdog kills a VM that has printed nothing `silent_limit_s` after its start (a
quiet test later is no hang). Under KVM that is KVM hanging the guest: KVM is given up for the
run and the VM starts again under TCG, not counted as a start. Under TCG it is a start that hung,
counted as one killed at its limit.

The VM is of the architecture the job's requirements ask for (`JobSpec.arch`): one that is not
the host's is emulated (qemu-system-aarch64 under TCG on an x86_64 host), never under KVM.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from osgtest_dag.base.errors import UserError
from osgtest_dag.engine.local.accel import RunAccel
from osgtest_dag.engine.local.console import ConsoleFollower
from osgtest_dag.engine.local.jobs import RETURN_REMOVED, RETURN_SUBMIT_FAILED
from osgtest_dag.engine.local.reaper import ChildRecord
from osgtest_dag.engine.local.state import Attempt
from osgtest_dag.engine.local.submit import JobSpec
from osgtest_dag.guest import machines, payload, qemu
from osgtest_dag.model import dagfile
from osgtest_dag.model.documents import VmRecord
from osgtest_dag.model.rundir import LOCAL_VM
from osgtest_dag.plan.catalog import Catalog

log = logging.getLogger(__name__)

DEFAULT_SILENT_LIMIT_S = 30.0  # a Linux guest prints its first console line within seconds
PhaseCallback = Callable[[str | None], None]  # a phase started (None: the VM is booting)


@functools.lru_cache(maxsize=64)
def x86_64_level(platform_id: str) -> int:
    """The x86-64 level the job's platform is built for, from the catalog; a job that names no
    platform, or one the catalog does not know, gets every feature (level 3)."""
    if not platform_id:
        return 3
    try:
        return Catalog.load().platform(platform_id).x86_64_level
    except UserError:
        return 3


class VmJob:
    """One node's VM job (all its starts); killing it stops the running VM and any restart."""

    def __init__(
        self,
        spec: JobSpec,
        node: dagfile.Node,
        attempt: Attempt,
        *,
        accel: RunAccel,
        children: ChildRecord,
        silent_limit_s: float = DEFAULT_SILENT_LIMIT_S,
        on_phase: PhaseCallback | None = None,
    ):
        if not spec.vm_disks:
            raise UserError(f"node {node.name}: a VM job needs vm_disk")
        self.spec, self.node, self.attempt = spec, node, attempt
        self.accel, self.children = accel, children
        self.silent_limit_s, self.on_phase = silent_limit_s, on_phase
        self._inputs = {Path(f).name: f for f in spec.transfer_input_files}
        self._lock = threading.Lock()
        self._vm: qemu.VM | None = None
        self._killed = False

    def kill(self) -> None:
        with self._lock:
            self._killed = True
            vm = self._vm
        if vm is not None:
            vm.kill()  # SIGTERM, then SIGKILL

    def _source(self, name: str) -> Path:
        """Where an input file named in the submit file is on this machine."""
        src = self._inputs.get(name, name)
        if "://" in src:
            if not src.startswith("file://"):
                raise UserError(
                    f"node {self.node.name}: cannot fetch {src} locally",
                    hint="use a local path or file:// URL for the base image",
                )
            src = src[len("file://") :]
        p = Path(src)
        return p if p.is_absolute() else self.spec.initialdir / p

    def run(self) -> int:
        spec, node = self.spec, self.node
        scratch = spec.initialdir / f".scratch-{node.name}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        try:
            base_file, _, _, base_fmt = spec.vm_disks[0]
            base = self._source(base_file)
            if not base.is_file():
                self.attempt.error = f"base image {base} missing"
                log.error("node %s: base image %s does not exist", node.name, base)
                return RETURN_SUBMIT_FAILED
            disks = []
            for f, _dev, _perm, fmt in spec.vm_disks[1:]:
                src = self._source(f)
                if not src.is_file():
                    self.attempt.error = f"input {src} missing"
                    return RETURN_SUBMIT_FAILED
                dst = scratch / Path(f).name
                shutil.copy2(src, dst)  # HTCondor transfers a copy; the original stays intact
                # a disk HTCondor would not transfer back is thrown away with the VM
                kept = Path(f).name in spec.transfer_output_files
                disks.append(qemu.Disk(dst, fmt or qemu.image_format(dst), kept=kept))
            res = self._boot(base, base_fmt, disks, scratch)
            if res is None:
                return RETURN_REMOVED
            self._transfer_outputs(scratch)  # at the limit too: the disk holds what the guest did
            if res.timed_out:
                return RETURN_REMOVED
            return 0 if res.returncode == 0 else 1
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _boot(
        self, base: Path, base_fmt: str, disks: list[qemu.Disk], scratch: Path
    ) -> qemu.BootResult | None:
        """Start the VM until it powers off or is stopped at its wall-clock limit for good
        (its result), or it is killed (None). At the limit it starts again unless its payload
        reached the test phase or it is out of starts."""
        spec, node, init = self.spec, self.node, self.spec.initialdir
        starts = 0
        fresh = True  # the disks are as transferred
        while True:
            starts += 1
            if not fresh:
                for d, (f, *_rest) in zip(disks, spec.vm_disks[1:], strict=True):  # a fresh copy per start
                    shutil.copy2(self._source(f), d.path)
            fresh = False
            # a foreign architecture is always emulated: no KVM probe for it
            accel = self.accel.current() if spec.arch == machines.HOST_ARCH else "tcg"
            console = init / f"console.{self.attempt.retry}.{starts}.log"
            with self._lock:
                if self._killed:
                    return None
                vm = self._vm = qemu.start(
                    base,
                    disks,
                    memory_mb=spec.vm_memory or 1024,
                    vcpus=spec.vm_vcpus,
                    networking=spec.vm_networking,
                    timeout_s=spec.max_wall,
                    console_log=console,
                    workdir=scratch,
                    base_format=base_fmt or None,
                    accel=accel,
                    arch=spec.arch,
                    x86_64_level=x86_64_level(spec.platform),
                )
            self.children.add(vm.pid, vm.argv, scratch)
            res, silent = self._watch(vm)
            with self._lock:
                self._vm = None
            if silent and accel == "kvm" and not self._killed:
                # KVM hung the guest (or qemu could not run it): not the job's fault, so this
                # start is not counted; its console is kept under another name.
                why = (
                    f"a VM ({node.name}) printed nothing in {self.silent_limit_s:g} s"
                    if res.returncode is None
                    else f"qemu exited {res.returncode} under KVM before the VM printed anything ({node.name})"
                )
                log.warning("node %s: %s: starting it again under TCG", node.name, why)
                kept = console.with_name(f"console.{self.attempt.retry}.{starts}.kvm-silent.log")
                console.replace(kept)
                self._record(
                    VmRecord(
                        node=node.name,
                        starts=starts,
                        timed_out=False,
                        wall_s=res.wall_s,
                        returncode=res.returncode,
                        accel=res.accel,
                        console=str(kept.relative_to(init)),
                    )
                )
                self.accel.give_up_kvm(why)
                starts -= 1
                continue
            record = VmRecord(
                node=node.name,
                starts=starts,
                timed_out=res.timed_out,
                wall_s=res.wall_s,
                returncode=res.returncode,
                accel=res.accel,
                console=str(console.relative_to(init)),
            )
            self._record(record)
            if self._killed:
                return None
            if not res.timed_out:
                return res
            in_test = payload.console_reached_test(console)
            log.warning(
                "node %s: VM killed at its %d s limit (start %d of %d%s); console: %s",
                node.name,
                spec.max_wall,
                starts,
                spec.max_starts,
                ", in its test phase: not started again" if in_test else "",
                console,
            )
            if in_test or starts >= spec.max_starts:
                return res  # the test ran out of time, or periodic_remove: out of starts
            # else periodic_release: held for running too long -> released, starts again

    def _watch(self, vm: qemu.VM) -> tuple[qemu.BootResult, bool]:
        """Wait for the VM to end, following its console; (result, silent): silent when it was
        killed, or qemu ended in error, before printing anything. A silent VM killed by the
        watchdog counts as killed at its limit (timed_out)."""
        follower = ConsoleFollower(vm.console_log)
        silent_until = vm.started + self.silent_limit_s
        if self.on_phase:
            self.on_phase(None)
        while True:
            res = vm.wait(timeout=1.0)
            for phase in follower.poll():
                if self.on_phase:
                    self.on_phase(phase)
            if res is not None:
                return res, not follower.printed and res.returncode != 0 and not res.timed_out
            if not follower.printed and time.monotonic() >= silent_until and not self._killed:
                log.warning(
                    "node %s: the VM (%s) printed nothing in %g s: killing it",
                    self.node.name,
                    vm.accel,
                    self.silent_limit_s,
                )
                return replace(vm.kill(), returncode=None, timed_out=True), True

    def _record(self, record: VmRecord) -> None:
        self.attempt.vm.append(
            {k: v for k, v in record.to_json().items() if k not in ("schema", "version", "node")}
        )
        VmRecord.append(self.spec.initialdir / LOCAL_VM, record)

    def _transfer_outputs(self, scratch: Path) -> None:
        """The VM powered off: its outputs go back, renamed as the remaps say."""
        spec = self.spec
        for f in spec.transfer_output_files:
            produced = scratch / f
            if not produced.exists():
                log.warning("node %s: output %s was not produced", self.node.name, f)
                continue
            dest = spec.initialdir / spec.transfer_output_remaps.get(f, f)
            tmp = dest.with_name(f".{dest.name}.part")
            shutil.move(produced, tmp)
            os.replace(tmp, dest)
