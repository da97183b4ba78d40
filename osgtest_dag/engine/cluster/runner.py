"""The cluster runner: every VM of one cluster cell, on one machine, on a network of their own.

It is the cell's TestRun job on both engines (`osgtest-dag node cluster-run`, a vanilla job on
HTCondor, a process under the local executor): VM-universe jobs of one cell would land on
different execute points with no private network between them. In its working directory it
finds the cell's configuration and each VM's IO disk (`io-<serial>-<vm>.qcow2`, as HTCondor
transfers them); it boots each VM from the base image behind an overlay with its IO disk, the
usual outbound network, a NIC on the cell's hub (switch.Hub) and a sync port to the stage
barrier (barrier.Barrier), and waits for all of them. What comes back: the IO disks as the
guests left them, each VM's console (`console-<vm>.log`) and `cluster.json`
(model.cluster.ClusterRunRecord).

Like a one-VM job under the local executor: one wall-clock limit (the run's max_wall) for every
VM; under KVM, a VM that prints nothing within `silent_limit_s` means KVM hangs guests here: all
VMs stop, KVM is given up (qemu.mark_kvm_unusable) and they start again from their IO disks as
they came, under TCG. SIGTERM (the executor's kill, condor_rm) stops every VM and still writes
the record; the VMs die with the runner even on SIGKILL (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import logging
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from osgtest_dag.base.atomic import write_json_atomic
from osgtest_dag.base.errors import UserError
from osgtest_dag.engine.cluster.barrier import Barrier, SyncChannel
from osgtest_dag.engine.cluster.switch import Hub
from osgtest_dag.engine.local.console import ConsoleFollower
from osgtest_dag.guest import netboot, qemu
from osgtest_dag.model.cell import CellConfig
from osgtest_dag.model.cluster import ClusterRunRecord, ClusterVm
from osgtest_dag.model.documents import VmRecord
from osgtest_dag.model.rundir import CLUSTER_RECORD, vm_console, vm_console_returned, vm_disk_stem

log = logging.getLogger(__name__)

DEFAULT_SILENT_LIMIT_S = 30.0
POLL_S = 0.5


@dataclass(frozen=True)
class ClusterJob:
    """What one run of the runner is given."""

    cell: CellConfig
    image: Path
    image_format: str
    workdir: Path  # holds the IO disks; the consoles and cluster.json are written here
    max_wall: int  # s, for every VM
    accel: str | None = None  # None: the probe's choice (qemu.accel_choice)
    silent_limit_s: float = DEFAULT_SILENT_LIMIT_S

    def io_disk(self, vm: ClusterVm) -> Path:
        return self.workdir / f"io-{vm_disk_stem(self.cell.serial, vm.name)}.qcow2"

    def scratch_disk(self, vm: ClusterVm) -> Path | None:
        """The VM's scratch disk, transferred beside its IO disk, when its cell gives it one."""
        if not self.cell.vm_scratch_mb(vm):
            return None
        return self.workdir / f"scratch-{vm_disk_stem(self.cell.serial, vm.name)}.qcow2"


class _Stopped(Exception):
    """SIGTERM or SIGINT: stop every VM, write the record."""


class ClusterRunner:
    def __init__(self, job: ClusterJob):
        if job.cell.cluster is None:
            raise UserError(f"cell {job.cell.serial} is not a cluster cell", hint="run it as a VM job")
        self.job = job
        self.vms = job.cell.cluster_vms()
        self.booted = [v for v in self.vms if not v.network_boot]
        for vm in self.booted:
            for disk in (job.io_disk(vm), job.scratch_disk(vm)):
                if disk is not None and not disk.is_file():
                    raise UserError(f"VM {vm.name}: its disk {disk.name} is missing", where=disk)
        self.records: list[VmRecord] = []
        self.stop = threading.Event()

    def run(self) -> int:
        """Every VM to its end; 0 when they all powered off by themselves, 1 otherwise (the
        POST script reads each VM's disk either way)."""
        job = self.job
        pristine = {vm.name: self._keep_pristine(vm) for vm in self.booted}
        accel = job.accel or qemu.detect_accel()
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        error = None
        barriers: list = []
        frames: dict[str, int] = {}
        try:
            for start in (1, 2):
                outcome, barriers, frames = self._start_all(accel, start)
                if outcome != "kvm-silent":
                    break
                qemu.mark_kvm_unusable("a cluster VM printed nothing under KVM")
                accel = "tcg"
                for vm in self.booted:
                    shutil.copy2(pristine[vm.name], job.io_disk(vm))
        except _Stopped:
            error = "stopped by a signal"
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            for p in pristine.values():
                p.unlink(missing_ok=True)
            record = ClusterRunRecord(
                vms=tuple(self.records),
                barriers=tuple(barriers),
                frames=tuple(frames.items()),
                error=error,
            )
            write_json_atomic(job.workdir / CLUSTER_RECORD, record.to_json())
        if error:
            return 143
        last = {r.node: r for r in self.records}
        booted = [last.get(vm.name) for vm in self.booted]
        return 0 if all(r is not None and r.returncode == 0 and not r.timed_out for r in booted) else 1

    def _keep_pristine(self, vm: ClusterVm) -> Path:
        copy = self.job.workdir / f".pristine-{vm.name}.qcow2"
        shutil.copy2(self.job.io_disk(vm), copy)
        return copy

    def _on_signal(self, signum, _frame) -> None:
        self.stop.set()
        raise _Stopped()

    def _start_all(self, accel: str, start: int) -> tuple[str, list, dict[str, int]]:
        """One start of every VM: "done", or "kvm-silent" when a VM printed nothing under KVM."""
        cluster = self.job.cell.cluster
        assert cluster is not None
        # unix socket paths are short (108 bytes): not in the job's (deep) directory
        sockets = Path(tempfile.mkdtemp(prefix="osgtest-cluster-"))
        hub = Hub(sockets, len(self.vms))
        stages = [(s.name, s.runs_always) for s in cluster.stages]
        barrier = Barrier([v.name for v in self.booted], stages, time.time)
        channels = {
            v.name: SyncChannel(sockets / f"sync-{v.index}.sock", v.name, barrier) for v in self.booted
        }
        running: dict[str, qemu.VM] = {}
        outcome = "done"
        try:
            hub.start()
            for ch in channels.values():
                ch.start()
            for vm in self.vms:
                if vm.network_boot:
                    running[vm.name] = self._start_network_boot(vm, accel, hub)
                else:
                    running[vm.name] = self._start_vm(vm, accel, hub, channels[vm.name])
            outcome = self._watch(running, barrier, accel, start)
        finally:
            for name, v in running.items():
                res = v.kill()
                self._record(name, res, start)
            for ch in channels.values():
                ch.close()
            hub.close()
            shutil.rmtree(sockets, ignore_errors=True)
        frames = {vm.name: hub.frames[vm.index] for vm in self.vms}
        return outcome, barrier.to_json(), frames

    def _start_vm(self, vm: ClusterVm, accel: str, hub: Hub, channel: SyncChannel) -> qemu.VM:
        job = self.job
        log.info("cluster %s: starting %s (%s, %s)", job.cell.serial, vm.name, vm.address, accel)
        workdir = job.workdir / f".vm-{vm.name}"
        disks = [qemu.Disk(job.io_disk(vm), "qcow2")]
        scratch = job.scratch_disk(vm)
        if scratch is not None:
            # a fresh copy each start; the transferred one (maybe a link) stays as it came
            workdir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(scratch, workdir / scratch.name)
            disks.append(qemu.Disk(workdir / scratch.name, "qcow2", kept=False))
        return qemu.start(
            job.image,
            disks,
            memory_mb=vm.memory,
            vcpus=vm.vcpus,
            networking=True,
            timeout_s=job.max_wall,
            console_log=job.workdir / vm_console(vm.name),
            workdir=workdir,
            base_format=job.image_format,
            accel=accel,
            x86_64_level=job.cell.platform.x86_64_level,
            extra_args=[*hub.qemu_args(vm.index, vm.mac), *channel.qemu_args()],
            die_with_parent=True,  # started from the main thread, which outlives every VM
        )

    def _start_network_boot(self, vm: ClusterVm, accel: str, hub: Hub) -> qemu.VM:
        job = self.job
        log.info("cluster %s: starting %s to boot from the network", job.cell.serial, vm.name)
        return netboot.start_network_boot(
            hub.qemu_args(vm.index, vm.mac, boot=True),
            memory_mb=vm.memory,
            vcpus=vm.vcpus,
            timeout_s=job.max_wall,
            console_log=job.workdir / vm_console(vm.name),
            workdir=job.workdir / f".vm-{vm.name}",
            accel=accel,
            die_with_parent=True,
        )

    def _watch(self, running: dict[str, qemu.VM], barrier: Barrier, accel: str, start: int) -> str:
        """Until every VM has ended. Network-booted VMs are stopped once the disk-booted ones
        (their servers) have all ended; their consoles are silent until a kernel runs, so the
        KVM watchdog looks at the disk-booted ones only."""
        booted = {v.name for v in self.booted}
        consoles = {name: ConsoleFollower(vm.console_log) for name, vm in running.items()}
        started = time.monotonic()
        ended: set[str] = set()
        while len(ended) < len(running):
            if self.stop.is_set():
                raise _Stopped()
            for name, vm in running.items():
                if name in ended:
                    continue
                consoles[name].poll()
                res = vm.poll()
                if res is None and booted <= ended:
                    log.info("cluster: stopping %s: no VM is left to serve it", name)
                    res = vm.kill()
                if res is not None:
                    ended.add(name)
                    if name in booted:  # network-booted VMs take no part in the barrier
                        barrier.vm_ended(name)
                    self._record(name, res, start)
            silent = [n for n in booted if n not in ended and not consoles[n].printed]
            if accel == "kvm" and silent and time.monotonic() - started > self.job.silent_limit_s:
                log.warning("cluster: %s printed nothing under KVM: giving KVM up", ", ".join(silent))
                return "kvm-silent"
            time.sleep(POLL_S)
        return "done"

    def _record(self, name: str, res: qemu.BootResult, start: int) -> None:
        if any(r.node == name and r.starts == start for r in self.records):
            return
        self.records.append(
            VmRecord(
                node=name,
                starts=start,
                timed_out=res.timed_out,
                wall_s=res.wall_s,
                returncode=res.returncode,
                accel=res.accel,
                console=vm_console_returned(name),
            )
        )


def run_cluster(job: ClusterJob) -> int:
    return ClusterRunner(job).run()
