"""Reproduce a cell: boot its VM again as it ran, on this machine, and run a command in it or
give a root shell on its serial console.

The VM is the run's: the same base image (checked against the identity the run pinned), a
fresh IO disk made from the cell's configuration as its CreateDisk node makes it, the memory,
vCPUs and networking its TestRun node's submit description gives it, under the engine's
accelerator choice. The IO disk also carries input/reproduce.env (guest.payload.Reproduction):
run-job runs the phases up to the one asked for, then the command or the shell. Everything
happens in a directory of its own (removed afterwards unless kept): the run directory is only
read.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import sys
import tempfile
import termios
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from osgtest_dag.base.errors import UserError
from osgtest_dag.engine.local.accel import RunAccel
from osgtest_dag.engine.local.console import ConsoleFollower
from osgtest_dag.engine.local.submit import JobSpec, read_job
from osgtest_dag.engine.local.vmjob import DEFAULT_SILENT_LIMIT_S
from osgtest_dag.generate import cellconfig
from osgtest_dag.generate.inputs import write_cell_io_disk
from osgtest_dag.guest import image, machines, payload, pins, qemu
from osgtest_dag.guest.iodisk import make_scratch_disk
from osgtest_dag.model import dagfile
from osgtest_dag.model.cell import CellConfig
from osgtest_dag.model.documents import GuestResult
from osgtest_dag.model.inputs import ImagePins
from osgtest_dag.model.rundir import CellDir, RunDir, vm_node

ALL_PHASES = payload.PHASES[-1]  # up to the last phase: all of them
INTERACTIVE_LIMIT_S = 8 * 3600  # the boot unit's own limit (TimeoutStartSec in osgtest-boot.service)
ALLOW_IMAGE_CHANGE = "--allow-image-change"
Say = Callable[[str], None]  # a line for the user (stderr)


def default_until(cell: CellDir) -> tuple[str, str]:
    """The phase a reproduction stops after when none is asked for, and why: the phase that
    failed (or the one the guest was in when it stopped), all phases for a cell that passed
    or that left no result."""
    path = cell.guest_result
    if not path.is_file():
        return ALL_PHASES, f"cell {cell.serial} left no guest result (it never ran?): running all phases"
    try:
        result = GuestResult.read(path)
    except UserError as e:
        return (
            ALL_PHASES,
            f"cell {cell.serial}'s guest result is unreadable ({e.message}): running all phases",
        )
    failed = next((p.name for p in result.phases if p.status == "failed" and p.name != "collect"), None)
    if failed in payload.PHASES:
        return failed, f"cell {cell.serial} failed in its {failed} phase: running the phases up to it"
    if result.current_phase in payload.PHASES:
        phase = result.current_phase
        return phase, f"cell {cell.serial} stopped in its {phase} phase: running the phases up to it"
    if result.status == "pass":
        return ALL_PHASES, f"cell {cell.serial} passed: running all phases"
    return ALL_PHASES, f"cell {cell.serial} ended {result.status or 'without a status'}: running all phases"


@dataclass(frozen=True)
class Target:
    """A cell's VM as it ran, and what to do in it."""

    run_dir: Path
    cell: CellConfig
    until: str
    until_why: str
    image: Path
    image_format: str
    memory_mb: int
    vcpus: int
    networking: bool
    max_wall: int
    warnings: tuple[str, ...] = ()
    arch: str = "x86_64"


def _job_spec(run: RunDir, serial: str) -> JobSpec:
    """The cell's VM job as the run's matrix DAG and submit description give it."""
    dag = dagfile.parse(run.matrix_dag)
    node = dag.nodes.get(vm_node(serial))
    if node is None or node.submit_file is None:
        raise UserError(f"the matrix DAG has no VM node for cell {serial}", where=run.matrix_dag)
    base = run.path / (node.dir or ".")
    return read_job(base / node.submit_file, node.vars, base, node_name=node.name)


def _image_warnings(run_dir: Path, cfg: CellConfig, allow_change: bool) -> list[str]:
    """Refuses a base image that is not the one the run pinned (unless allowed: a warning)."""
    platform = (cfg.platform.id, cfg.platform.image)
    if ImagePins.read(run_dir).get(cfg.platform.image) is None:
        return [
            f"the run pinned no identity for {cfg.platform.image} (generated before images were "
            "pinned?): cannot tell whether the image changed since"
        ]
    found = pins.changes(run_dir, [platform])
    if not allow_change:
        pins.refuse_changed(found, RunDir(run_dir).image_pins, "reproduce", ALLOW_IMAGE_CHANGE)
    return [f"{ALLOW_IMAGE_CHANGE}: {c.describe()}" for c in found]


def prepare(
    run_dir: Path | str, serial: str, *, until: str | None = None, allow_image_change: bool = False
) -> Target:
    """What reproducing the cell boots, checked: UserError for an unknown cell, a base image
    that is not here or changed since the run, an unknown phase."""
    run = RunDir(Path(run_dir).resolve())
    cfg = cellconfig.read_cell(run.path, serial)
    if cfg.cluster is not None:
        raise UserError(
            f"cell {serial} is a cluster cell ({cfg.cluster.size} VMs): reproduce boots one VM",
            hint=f"run it again alone: `osgtest-dag rerun {run.path} -o NEW_RUN --only serial={serial}`, "
            f"then `osgtest-dag run NEW_RUN`; each VM's console and stage logs are in cells/{serial}/vms/",
        )
    if until is not None and until not in payload.PHASES:
        raise UserError(f"unknown phase {until!r}", hint=f"one of {', '.join(payload.PHASES)}")
    base = cfg.platform.image
    if not image.is_local_path(base):
        raise UserError(
            f"cell {serial}'s base image {base} is not on this machine",
            hint="reproduce needs the run's image as a local file",
        )
    image.refuse_missing(
        image.missing_images([(cfg.platform.id, base)]), run.path, f"reproduce cell {serial}"
    )
    warnings = _image_warnings(run.path, cfg, allow_image_change)
    chosen, why = (until, f"running the phases up to {until}") if until else default_until(run.cell(serial))
    spec = _job_spec(run, serial)
    return Target(
        run_dir=run.path,
        cell=cfg,
        until=chosen,
        until_why=why,
        image=Path(base.removeprefix("file://")),
        image_format=cfg.platform.image_format,
        memory_mb=spec.vm_memory or 1024,
        vcpus=spec.vm_vcpus,
        networking=spec.vm_networking,
        max_wall=spec.max_wall,
        warnings=tuple(warnings),
        arch=spec.arch,
    )


@dataclass(frozen=True)
class Reproduced:
    """How a reproduction ended: the command's status (None: the VM ended before the command
    did, or there was none), how the VM ended, and the directory kept (None: removed)."""

    status: int | None
    boot: qemu.BootResult
    kept: Path | None


def _terminal_size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
    except OSError:
        return 0, 0
    return size.lines, size.columns


def _io_disk(target: Target, repro: payload.Reproduction, workdir: Path) -> Path:
    """The cell's IO disk as its CreateDisk node makes it, plus the reproduction's file."""
    return write_cell_io_disk(
        target.run_dir,
        target.cell,
        workdir / f"input-{target.cell.serial}.qcow2",
        extra_files={payload.REPRODUCE_ENV: repro.env()},
    )


@contextlib.contextmanager
def _ended_by_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP (the terminal closed) end the reproduction through its clean-up,
    so the VM, in a session of its own, does not outlive it."""

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def _terminal_restored() -> Iterator[None]:
    """qemu puts the terminal in raw mode; a qemu that is killed does not put it back."""
    fd = sys.stdin.fileno() if sys.stdin and sys.stdin.isatty() else None
    saved = termios.tcgetattr(fd) if fd is not None else None
    try:
        yield
    finally:
        if fd is not None and saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def reproduce(
    target: Target,
    *,
    exec_command: str | None = None,
    keep: bool = False,
    out: BinaryIO | None = None,
    say: Say = lambda line: print(line, file=sys.stderr, flush=True),
    accel: RunAccel | None = None,
) -> Reproduced:
    """Boot the cell's VM; with `exec_command` its output goes to `out` as it comes, else the
    serial console is this process's terminal until the guest powers off."""
    serial = target.cell.serial
    workdir = Path(tempfile.mkdtemp(prefix=f"osgtest-reproduce-{serial}-"))
    interactive = exec_command is None
    rows, columns = _terminal_size() if interactive else (0, 0)
    repro = payload.Reproduction(
        until=target.until,
        mark=f"osgtest-repro-{secrets.token_hex(8)}",
        exec_command=exec_command,
        term=os.environ.get("TERM", "vt220"),
        rows=rows,
        columns=columns,
    )
    accel = accel or RunAccel()
    try:
        pristine = _io_disk(target, repro, workdir)
        say(accel.choice().line())
        with _ended_by_signals():
            res, status = _boot(target, repro, pristine, workdir, accel, keep, out, say)
    except BaseException:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return Reproduced(status, res, workdir if keep else None)


def _boot(
    target: Target,
    repro: payload.Reproduction,
    pristine: Path,
    workdir: Path,
    accel: RunAccel,
    keep: bool,
    out: BinaryIO | None,
    say: Say,
) -> tuple[qemu.BootResult, int | None]:
    """Start the VM until it ends by itself or at its limit; a VM that prints nothing under
    KVM is KVM hanging it (as the executor's watchdog decides): KVM is given up, the VM starts
    again under TCG with a fresh IO disk."""
    serial = target.cell.serial
    interactive = repro.exec_command is None
    io = workdir / f"io-{serial}.qcow2"
    disks = [qemu.Disk(io, "qcow2")]
    if target.cell.scratch_mb:  # as its CreateDisk node gives it one
        disks.append(qemu.Disk(workdir / f"scratch-{serial}.qcow2", "qcow2", kept=False))
    while True:
        shutil.copy2(pristine, io)
        if len(disks) > 1:  # fresh, as the IO disk
            make_scratch_disk(disks[1].path, target.cell.scratch_mb)
        choice = accel.current() if target.arch == machines.HOST_ARCH else "tcg"  # foreign: emulated
        console = workdir / "console.log"
        exec_console = payload.ExecConsole(repro.mark)
        with contextlib.ExitStack() as stack:
            if interactive:
                stack.enter_context(_terminal_restored())
            vm = qemu.start(
                target.image,
                disks,
                memory_mb=target.memory_mb,
                vcpus=target.vcpus,
                networking=target.networking,
                timeout_s=INTERACTIVE_LIMIT_S if interactive else target.max_wall,
                console_log=console,
                workdir=workdir,
                base_format=target.image_format,
                accel=choice,
                keep_overlay=keep,
                console_stdio=interactive,
                arch=target.arch,
                x86_64_level=target.cell.platform.x86_64_level,
            )
            stack.enter_context(vm)  # killed on the way out, whatever happens
            on_line = None if interactive else _printer(exec_console, out)
            follower = ConsoleFollower(vm.console_log, on_line=on_line)
            res, silent = _watch(vm, follower, say if not interactive else None)
        if silent and choice == "kvm":
            accel.give_up_kvm(f"the reproduced VM of cell {serial} printed nothing")
            say(f"starting it again: {accel.choice().line()}")
            continue
        return res, exec_console.status


def _printer(exec_console: payload.ExecConsole, out: BinaryIO | None) -> Callable[[bytes], None]:
    """A console line handler that writes the command's output to `out` as it comes."""

    def on_line(line: bytes) -> None:
        text = exec_console.line(line)
        if text is not None and out is not None:
            out.write(text)
            out.flush()

    return on_line


def _watch(vm: qemu.VM, follower: ConsoleFollower, say: Say | None) -> tuple[qemu.BootResult, bool]:
    """Wait for the VM to end, following its console (phases said as they start when `say`);
    (result, silent): silent when the VM printed nothing for DEFAULT_SILENT_LIMIT_S (killed)."""
    silent_until = vm.started + DEFAULT_SILENT_LIMIT_S
    while True:
        res = vm.wait(timeout=1.0)
        for phase in follower.poll():
            if say:
                say(f"phase {phase}")
        if res is not None:
            return res, False
        if not follower.printed and vm.accel == "kvm" and time.monotonic() >= silent_until:
            return vm.kill(), True
