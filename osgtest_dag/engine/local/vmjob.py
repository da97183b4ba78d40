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
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

from osgtest_dag.base.errors import UserError
from osgtest_dag.engine.local.jobs import RETURN_REMOVED, RETURN_SUBMIT_FAILED
from osgtest_dag.engine.local.reaper import ChildRecord
from osgtest_dag.engine.local.state import Attempt
from osgtest_dag.engine.local.submit import JobSpec
from osgtest_dag.guest import payload, qemu
from osgtest_dag.model import dagfile
from osgtest_dag.model.documents import VmRecord
from osgtest_dag.model.rundir import LOCAL_VM

log = logging.getLogger(__name__)


class VmJob:
    """One node's VM job (all its starts); killing it stops the running VM and any restart."""

    def __init__(
        self, spec: JobSpec, node: dagfile.Node, attempt: Attempt, *, accel: str | None, children: ChildRecord
    ):
        if not spec.vm_disks:
            raise UserError(f"node {node.name}: a VM job needs vm_disk")
        self.spec, self.node, self.attempt = spec, node, attempt
        self.accel, self.children = accel, children
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
                disks.append(qemu.Disk(dst, fmt or qemu.image_format(dst)))
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
        while True:
            starts += 1
            for d, (f, *_rest) in zip(disks, spec.vm_disks[1:], strict=True):  # a fresh copy per start
                if starts > 1:
                    shutil.copy2(self._source(f), d.path)
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
                    accel=self.accel,
                )
            self.children.add(vm.pid, vm.argv, scratch)
            res = vm.wait()
            assert res is not None  # without a timeout, wait() returns once the VM ended
            with self._lock:
                self._vm = None
            record = VmRecord(
                node=node.name,
                starts=starts,
                timed_out=res.timed_out,
                wall_s=res.wall_s,
                returncode=res.returncode,
                accel=res.accel,
                console=str(console.relative_to(init)),
            )
            self.attempt.vm.append(
                {k: v for k, v in record.to_json().items() if k not in ("schema", "version", "node")}
            )
            VmRecord.append(init / LOCAL_VM, record)
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
