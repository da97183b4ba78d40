"""Boot one VM under qemu: the base image behind a throw-away overlay, the IO disk writable.

Used by the tests and by the local executor (which runs several at once: use `start()` and
the returned `VM` handle; `boot()` is the blocking form). Every VM has a wall-clock limit;
on expiry the whole process group is killed and the result says `timed_out`.

Acceleration: KVM when it really works, else TCG. `/dev/kvm` answering is not enough (on
some hosts `-cpu host` aborts on an MSR; on others a boot sector runs but a Linux guest hangs),
so `detect_accel()` boots a real Linux kernel with the exact KVM machine/CPU options and trusts
KVM only if that kernel runs to its end.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from osgtest_dag.base import command, paths
from osgtest_dag.base.atomic import write_text_atomic
from osgtest_dag.base.errors import CommandError, UserError
from osgtest_dag.guest import initramfs
from osgtest_dag.guest.machines import HOST_ARCH, MACHINES, accel_for, check_machine, machine
from osgtest_dag.model.documents import parse_json

log = logging.getLogger("osgtest_dag.guest.qemu")

ACCELS = ("kvm", "tcg")
QEMU = MACHINES["x86_64"].qemu

# The KVM probe boots a real Linux guest: the host's kernel from /boot with a busybox initramfs
# whose /init powers off (guest.initramfs.poweroff_initramfs; not the host's own initramfs,
# whose contents depend on what else is installed), so "reboot: Power down" on the console says
# the kernel booted and user space ran. A boot sector is not enough: on some hosts
# it runs under KVM while a Linux kernel hangs silently right after "Probing EDD". Without an
# initramfs the kernel alone must reach its no-root panic. The answer is kept per host boot (the
# cache file), so each process does not pay the probe again.
_PROBE_USER_SPACE = ("reboot: Power down", "console=ttyS0 panic=-1 quiet")
_PROBE_KERNEL_ONLY = ("Kernel panic", "console=ttyS0 panic=-1 root=/dev/osgtest-probe-no-root")

_accel_cache: AccelChoice | None = None
_accel_lock = threading.Lock()


@dataclass(frozen=True)
class AccelChoice:
    """The accelerator VMs start under, and why it was chosen (said at the start of commands)."""

    accel: str
    why: str

    def line(self) -> str:
        return f"accelerator: {self.accel} ({self.why})"


@dataclass(frozen=True)
class Disk:
    """A disk to attach writable after the (overlaid) base image, in order: vdb, vdc, ...

    `kept`: the disk's content outlives the VM (a result). A disk thrown away with the VM (a
    scratch disk) is attached as the root overlay is, ignoring the guest's flushes: dpkg
    flushes every file it unpacks, and each flush would reach the host's disk.
    """

    path: Path
    format: str = "qcow2"
    kept: bool = True


@dataclass(frozen=True)
class BootResult:
    """How a VM ended. `returncode` is qemu's (None if it had to be killed)."""

    returncode: int | None
    timed_out: bool
    wall_s: float
    console_log: Path
    accel: str
    argv: tuple[str, ...] = field(repr=False, default=())

    @property
    def ok(self) -> bool:
        """qemu exited by itself with status 0 (the guest powered off)."""
        return not self.timed_out and self.returncode == 0


def image_format(path: Path) -> str:
    """The format qemu-img sees in `path` (used for the overlay's backing format)."""
    out = command.run(["qemu-img", "info", "--output=json", "-U", path], timeout=60).stdout
    return str(parse_json(out, "qemu-img info")["format"])


def _probe_kernel() -> Path | None:
    """The newest kernel in /boot (Debian's linux-image-amd64, installed by the set-up)."""
    kernels = sorted(Path("/boot").glob("vmlinuz-*"), key=lambda k: k.stat().st_mtime)
    return kernels[-1] if kernels else None


def host_kernel() -> Path | None:
    """The newest kernel in /boot: the KVM probe's guest, and the floor the cell latency
    benchmark measures VMs against."""
    return _probe_kernel()


def accel_args(accel: str, x86_64_level: int = 3) -> list[str]:
    """The `-machine` / `-cpu` options an x86_64 VM gets under `accel` (one of ACCELS), its
    userland built for `x86_64_level` (machines.Machine.args)."""
    return MACHINES["x86_64"].args(accel, x86_64_level)


def _probe(accel: str, timeout: float) -> tuple[bool, str]:
    """Boot the probe guest with `accel`'s options; True when it reached user space (or, with no
    initramfs to run, when the kernel ran to its no-root panic)."""
    if accel == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible"
    kernel = _probe_kernel()
    if kernel is None:
        return False, "no Linux kernel in /boot to probe with (run `make setup`)"
    with tempfile.TemporaryDirectory(prefix="osgtest-probe-") as tmp:
        initrd = initramfs.poweroff_initramfs(Path(tmp) / "poweroff.img")
        return _probe_boot(accel, kernel, initrd, timeout)


def _probe_boot(accel: str, kernel: Path, initrd: Path | None, timeout: float) -> tuple[bool, str]:
    mark, append = _PROBE_USER_SPACE if initrd else _PROBE_KERNEL_ONLY
    initrd_args: list[str | Path] = ["-initrd", initrd] if initrd else []
    argv: list[str | Path] = [
        QEMU,
        *accel_args(accel),
        "-m",
        "512",
        "-nodefaults",
        "-no-reboot",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-kernel",
        kernel,
        *initrd_args,
        "-append",
        append,
    ]
    t0 = time.monotonic()
    try:
        proc = command.run(argv, check=False, timeout=timeout)
    except CommandError as e:
        return False, f"a Linux kernel did not finish booting ({e.reason or e})"
    if mark in (proc.stdout or ""):
        reached = "to user space" if initrd else "(kernel only: no initramfs to run)"
        return True, f"a Linux guest booted {reached} in {time.monotonic() - t0:.1f} s"
    err = (proc.stderr or "").strip().splitlines()
    return False, f"qemu exited {proc.returncode}" + (f": {err[0]}" if err else "")


def _probe_key() -> str:
    """What the probe's answer depends on: this host boot, the probe kernel and qemu."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = "unknown-boot"
    parts = [boot_id]
    kernel = _probe_kernel()
    busybox = initramfs.HOST_BUSYBOX if initramfs.HOST_BUSYBOX.is_file() else None
    for path in (kernel, busybox, command.which(QEMU)):
        parts.append(f"{path}:{path.stat().st_mtime_ns}" if path else "none")
    return "|".join(parts)


def _probe_cache() -> Path:
    return paths.cache_dir() / "accel-probe.txt"


def _cached_probe() -> tuple[str, str] | None:
    """(accel, why) from an earlier probe in this host boot, if its inputs are unchanged."""
    try:
        key, accel, why = _probe_cache().read_text().rstrip("\n").split("\t")
    except (OSError, ValueError):
        return None
    if not why.startswith("KVM "):  # kept by an earlier version, without saying whose answer
        why = f"KVM probe: {why}"
    return (accel, why) if key == _probe_key() and accel in ACCELS else None


def accel_choice(timeout: float = 20.0) -> AccelChoice:
    """KVM if a Linux guest really runs under it here, else TCG; and why.

    Cached per process and per host boot (`<cache>/accel-probe.txt`): a host where KVM hangs a
    Linux guest pays the probe's time-out once, not once per command.
    `OSGTEST_DAG_ACCEL=kvm|tcg` overrides the probe.
    """
    global _accel_cache
    forced = os.environ.get("OSGTEST_DAG_ACCEL", "").strip().lower()
    if forced:
        if forced not in ACCELS:
            raise UserError(
                f"OSGTEST_DAG_ACCEL={forced!r} is not one of {', '.join(ACCELS)}",
                hint="unset it to detect the accelerator automatically",
            )
        return AccelChoice(forced, f"set by OSGTEST_DAG_ACCEL={forced}")
    with _accel_lock:
        if _accel_cache is None:
            cached = _cached_probe()
            if cached is None:
                ok, why = _probe("kvm", timeout)
                cached = ("kvm" if ok else "tcg", f"KVM probe: {why}")
                _keep_probe_answer(*cached)
            _accel_cache = AccelChoice(*cached)
            log.info("%s", _accel_cache.line())
        return _accel_cache


def detect_accel(timeout: float = 20.0) -> str:
    """ "kvm" if a Linux guest really runs under KVM here, else "tcg" (see `accel_choice`)."""
    return accel_choice(timeout).accel


def mark_kvm_unusable(why: str) -> AccelChoice:
    """KVM hung a real VM (the executor's watchdog saw it): TCG from now on, in this process and
    for later commands in this host boot (the probe's answer is replaced)."""
    global _accel_cache
    choice = AccelChoice("tcg", f"KVM given up: {why}")
    with _accel_lock:
        _accel_cache = choice
        _keep_probe_answer(choice.accel, choice.why)
    log.warning("%s", choice.line())
    return choice


def _keep_probe_answer(accel: str, why: str) -> None:
    why = " ".join(why.split())  # one line, no tabs: the cache file is tab-separated
    try:
        _probe_cache().parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(_probe_cache(), f"{_probe_key()}\t{accel}\t{why}\n")
    except OSError as e:
        log.warning("cannot keep the accelerator probe's answer: %s", e)


def _q(path: Path) -> str:
    """A path as a qemu option value (commas are doubled)."""
    return str(path).replace(",", ",,")


def qemu_argv(
    overlay: Path,
    disks: Sequence[Disk],
    *,
    accel: str,
    memory_mb: int,
    vcpus: int,
    networking: bool,
    console_log: Path,
    console_stdio: bool = False,
    extra_args: Sequence[str] = (),
    arch: str = "x86_64",
    x86_64_level: int = 3,
) -> list[str]:
    """The qemu command line; separate so tests and `--dry-run`-style callers can see it.

    `console_stdio`: the serial console on qemu's stdin/stdout (the user's terminal), still
    logged to `console_log`; Ctrl-C goes to the guest, Ctrl-a x quits qemu. `arch`: the guest's
    architecture (MACHINES), whatever the host's; the disks and the NIC are the same.
    `x86_64_level`: the x86-64 level the guest's userland is built for (its CPU under TCG)."""
    kind = machine(arch)
    firmware = ["-bios", str(kind.firmware)] if kind.firmware else []
    serial = (
        [
            "-chardev",
            f"stdio,id=console0,mux=on,signal=off,logfile={_q(console_log)}",
            "-serial",
            "chardev:console0",
        ]
        if console_stdio
        else ["-serial", f"file:{console_log}"]
    )
    argv = [
        kind.qemu,
        *kind.args(accel, x86_64_level),
        *firmware,
        "-smp",
        str(vcpus),
        "-m",
        str(memory_mb),
        "-nodefaults",
        "-no-reboot",
        "-display",
        "none",
        "-monitor",
        "none",
        *serial,
        "-rtc",
        "base=utc",
        "-object",
        "rng-random,filename=/dev/urandom,id=rng0",
        "-device",
        "virtio-rng-pci,rng=rng0",
        "-drive",
        f"file={_q(overlay)},format=qcow2,if=none,id=vda,cache=unsafe",
        "-device",
        "virtio-blk-pci,drive=vda,bootindex=1",
    ]
    for i, d in enumerate(disks):
        name = "vd" + chr(ord("b") + i)
        # writeback for a kept disk: the guest's result must really reach the file.
        cache = "writeback" if d.kept else "unsafe"
        argv += [
            "-drive",
            f"file={_q(d.path)},format={d.format},if=none,id={name},cache={cache}",
            "-device",
            f"virtio-blk-pci,drive={name}",
        ]
    argv += ["-nic", "user,model=virtio-net-pci"] if networking else ["-nic", "none"]
    return argv + list(extra_args)


class VM:
    """A running VM. `wait()` enforces the wall-clock limit; `kill()` ends it early.

    The overlay lives in `workdir` and is removed when the VM has ended (unless `keep_overlay`).
    """

    def __init__(
        self,
        proc: subprocess.Popen,
        *,
        argv: list[str],
        overlay: Path | None,  # None: a VM with no disk (guest.netboot)
        console_log: Path,
        accel: str,
        timeout_s: float,
        started: float,
        keep_overlay: bool,
        stderr_path: Path,
    ) -> None:
        self.proc = proc
        self.argv = tuple(argv)
        self.overlay = overlay
        self.console_log = console_log
        self.accel = accel
        self.timeout_s = timeout_s
        self.started = started
        self.deadline = started + timeout_s
        self.keep_overlay = keep_overlay
        self.stderr_path = stderr_path
        self._result: BootResult | None = None
        self._killed_for_timeout = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> BootResult | None:
        """The result if the VM has ended (killing it if past its deadline), else None."""
        if self._result is not None:
            return self._result
        if self.proc.poll() is None:
            if time.monotonic() < self.deadline:
                return None
            log.warning("VM pid %d exceeded %g s: killing it", self.pid, self.timeout_s)
            self._killed_for_timeout = True
            self._kill_group()
        return self._finish()

    def wait(self, timeout: float | None = None) -> BootResult | None:
        """Block until the VM ends or its deadline passes; None only if `timeout` ran out first."""
        stop = None if timeout is None else time.monotonic() + timeout
        while True:
            res = self.poll()
            if res is not None:
                return res
            now = time.monotonic()
            left = self.deadline - now
            if stop is not None:
                if now >= stop:
                    return None
                left = min(left, stop - now)
            try:
                self.proc.wait(timeout=max(0.05, min(left, 1.0)))
            except subprocess.TimeoutExpired:
                pass

    def kill(self) -> BootResult:
        """End the VM now (SIGTERM, then SIGKILL) and return its result."""
        if self._result is None and self.proc.poll() is None:
            self._kill_group()
        return self._finish()

    def _kill_group(self) -> None:
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                continue

    def _finish(self) -> BootResult:
        if self._result is None:
            rc = self.proc.wait()
            wall = time.monotonic() - self.started
            if self.overlay is not None and not self.keep_overlay:
                self.overlay.unlink(missing_ok=True)
            err = self.stderr_path.read_text(errors="replace").strip() if self.stderr_path.exists() else ""
            if not err:
                self.stderr_path.unlink(missing_ok=True)  # keep it only when qemu said something
            if rc != 0 and err and not self._killed_for_timeout:
                log.warning("qemu exited %s: %s", rc, err.splitlines()[-1])
            self._result = BootResult(
                returncode=None if self._killed_for_timeout else rc,
                timed_out=self._killed_for_timeout,
                wall_s=round(wall, 3),
                console_log=self.console_log,
                accel=self.accel,
                argv=self.argv,
            )
            log.info(
                "VM pid %d ended: rc=%s timed_out=%s %.1f s",
                self.pid,
                self._result.returncode,
                self._result.timed_out,
                wall,
            )
        return self._result

    def __enter__(self) -> VM:
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


def _as_disk(d: Disk | Path | str) -> Disk:
    if isinstance(d, Disk):
        return d
    p = Path(d)
    return Disk(p, image_format(p))


def start(
    base_image: Path | str,
    disks: Sequence[Disk | Path | str] = (),
    *,
    memory_mb: int = 1024,
    vcpus: int = 2,
    networking: bool = True,
    timeout_s: float = 600.0,
    console_log: Path | str | None = None,
    workdir: Path | str,
    base_format: str | None = None,
    accel: str | None = None,
    keep_overlay: bool = False,
    console_stdio: bool = False,
    extra_args: Sequence[str] = (),
    die_with_parent: bool = False,
    arch: str = "x86_64",
    x86_64_level: int = 3,
) -> VM:
    """Start a VM in the background and return its handle.

    The base image is never written: it backs a qcow2 overlay created in `workdir`. `disks`
    are attached writable with an explicit format (a bare path is probed with qemu-img).
    `console_stdio`: the serial console in this process's terminal (see `qemu_argv`).
    `extra_args` go on qemu's command line last (a cluster VM's private NIC and sync port);
    `die_with_parent`: see `command.spawn`. `arch`: the guest's architecture; one that is not
    the host's is emulated (TCG) whatever `accel` says; `x86_64_level`: see `qemu_argv`.
    """
    base = Path(base_image).resolve()
    if not base.is_file():
        raise UserError(
            f"base image {base} does not exist", hint="build it with `osgtest-dag image build PLATFORM`"
        )
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    attach = [_as_disk(d) for d in disks]
    for d in attach:
        if not d.path.is_file():
            raise UserError(f"disk {d.path} does not exist")
    check_machine(arch)
    accel = accel_for(arch, accel or (detect_accel() if arch == HOST_ARCH else "tcg"))
    console = Path(console_log) if console_log else work / "console.log"
    console.parent.mkdir(parents=True, exist_ok=True)
    console.write_bytes(b"")
    fd, name = tempfile.mkstemp(prefix="overlay-", suffix=".qcow2", dir=work)
    os.close(fd)
    overlay = Path(name)
    command.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            base,
            "-F",
            base_format or image_format(base),
            overlay,
        ],
        timeout=60,
    )
    argv = qemu_argv(
        overlay,
        attach,
        accel=accel,
        memory_mb=memory_mb,
        vcpus=vcpus,
        networking=networking,
        console_log=console.resolve(),
        console_stdio=console_stdio,
        extra_args=extra_args,
        arch=arch,
        x86_64_level=x86_64_level,
    )
    stderr_path = work / f"{overlay.stem}.qemu-stderr.log"
    with open(stderr_path, "wb") as err:
        started = time.monotonic()
        try:
            proc = command.spawn(
                argv,
                stdin=None if console_stdio else subprocess.DEVNULL,
                stdout=None if console_stdio else subprocess.DEVNULL,
                stderr=err,
                cwd=work,
                die_with_parent=die_with_parent,
            )
        except BaseException:
            overlay.unlink(missing_ok=True)
            raise
    log.info(
        "VM pid %d started (%s, %d MiB, %d vCPU, net=%s, limit %g s): %s",
        proc.pid,
        accel,
        memory_mb,
        vcpus,
        networking,
        timeout_s,
        base.name,
    )
    return VM(
        proc,
        argv=argv,
        overlay=overlay,
        console_log=console,
        accel=accel,
        timeout_s=timeout_s,
        started=started,
        keep_overlay=keep_overlay,
        stderr_path=stderr_path,
    )


def boot(
    base_image: Path | str,
    disks: Sequence[Disk | Path | str] = (),
    *,
    memory_mb: int = 1024,
    vcpus: int = 2,
    networking: bool = True,
    timeout_s: float = 600.0,
    console_log: Path | str | None = None,
    workdir: Path | str,
    base_format: str | None = None,
    accel: str | None = None,
    arch: str = "x86_64",
    x86_64_level: int = 3,
) -> BootResult:
    """Boot, wait for power-off or the wall-clock limit, return how it ended."""
    vm = start(
        base_image,
        disks,
        memory_mb=memory_mb,
        vcpus=vcpus,
        networking=networking,
        timeout_s=timeout_s,
        console_log=console_log,
        workdir=workdir,
        base_format=base_format,
        accel=accel,
        arch=arch,
        x86_64_level=x86_64_level,
    )
    try:
        res = vm.wait()
    except BaseException:
        vm.kill()
        raise
    assert res is not None
    return res
