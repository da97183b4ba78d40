"""Opening disks with libguestfs (python `guestfs`), the way this tool needs everywhere.

libguestfs boots a small appliance VM. Where KVM does not work it must be told to use TCG
(`LIBGUESTFS_BACKEND_SETTINGS=force_tcg`), or it aborts or hangs: we set that from
`qemu.detect_accel()` unless the user already set the variable.

libguestfs has no launch time-out of its own short of 20 minutes, so the launch is bounded
here: the appliance's qemu is started through a wrapper that says its pid, and killed when the
launch has not finished in `launch_limit_s`. An appliance that hung under KVM gives KVM up (for
this process and later commands, as a hung VM does in the executor) and is launched once more
under TCG.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from osgtest_dag.base.errors import UserError
from osgtest_dag.guest import qemu

log = logging.getLogger("osgtest_dag.guest.gfs")

LAUNCH_LIMIT_S = 300.0  # an appliance under TCG on a busy host starts in well under a minute
_SETTINGS = "LIBGUESTFS_BACKEND_SETTINGS"


class LaunchTimedOut(RuntimeError):
    """The appliance did not come up in time (a RuntimeError, as libguestfs' own errors)."""


def prepare_environment() -> None:
    """Set LIBGUESTFS_BACKEND_SETTINGS=force_tcg in os.environ when KVM is unusable."""
    if _SETTINGS not in os.environ and qemu.detect_accel() == "tcg":
        os.environ[_SETTINGS] = "force_tcg"


def _forcing_tcg() -> bool:
    return "force_tcg" in os.environ.get(_SETTINGS, "").split(":")


def _module():
    try:
        import guestfs  # optional: Debian's python3-guestfs, needed only to read or write disks
    except ImportError:
        raise UserError(
            "the python module 'guestfs' is not importable",
            hint="install python3-guestfs (scripts/setup does) and use a venv made "
            "with --system-site-packages",
        ) from None
    return guestfs


def preload() -> None:
    """Load guestfs now when it is there, so that a fork server's children share it."""
    with contextlib.suppress(UserError):
        _module()


@contextlib.contextmanager
def open_disks(
    disks: Sequence[tuple[Path, str]],
    *,
    readonly: bool,
    launch_limit_s: float = LAUNCH_LIMIT_S,
    smp: int = 2,
) -> Iterator[Any]:
    """A launched guestfs handle with `disks` ((path, format) pairs) added, closed on exit.

    `readonly` adds the drives with readonly=1: libguestfs then writes to its own overlay,
    so e.g. a journal replay happens there and the file is untouched. A launch that does not
    finish in `launch_limit_s` raises LaunchTimedOut (after one more try under TCG if it ran
    under KVM). `smp`: the appliance's vCPUs (one leaves the other core to a booting VM).
    """
    prepare_environment()
    guestfs = _module()
    while True:
        g = guestfs.GuestFS(python_return_dict=True)
        try:
            g.set_smp(smp)
            for path, fmt in disks:
                g.add_drive_opts(str(path), readonly=1 if readonly else 0, format=fmt)
            log.debug("launching libguestfs appliance for %s", ", ".join(str(p) for p, _ in disks))
            launch_bounded(g, launch_limit_s)
            break
        except LaunchTimedOut as e:
            g.close()
            if _forcing_tcg():
                raise
            qemu.mark_kvm_unusable(str(e))
            os.environ[_SETTINGS] = ":".join(filter(None, [os.environ.get(_SETTINGS), "force_tcg"]))
        except BaseException:
            g.close()
            raise
    try:
        yield g
        if not readonly:
            g.shutdown()  # flushes and reports write errors
    finally:
        g.close()


def _parent_of(pid: int) -> int:
    """The parent pid of a running process (from /proc/PID/stat, after the command's parens)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def launch_bounded(g: Any, limit_s: float) -> None:
    """`g.launch()`, its appliance's qemu killed if the launch has not finished in `limit_s`.

    Only the direct backend runs qemu itself (through `g.set_hv`); under another (libvirt)
    the launch is libguestfs' own, unbounded here.
    """
    if not g.get_backend().startswith("direct"):
        g.launch()
        return
    hv = g.get_hv()
    hv = hv if os.path.isabs(hv) else shutil.which(hv) or hv
    with tempfile.TemporaryDirectory(prefix="osgtest-gfs-") as tmp:
        pidfile, wrapper = Path(tmp) / "qemu.pid", Path(tmp) / "qemu"
        # libguestfs also runs qemu briefly to ask its version and options: each run says its
        # pid, and the last one is the appliance (the only one still running at the limit).
        wrapper.write_text(f'#!/bin/sh\necho $$ > {shlex.quote(str(pidfile))}\nexec {shlex.quote(hv)} "$@"\n')
        wrapper.chmod(0o755)
        # libguestfs caches what it asked qemu under the binary's size and mtime: the real
        # qemu's mtime (and a wrapper of constant size) keeps that cache valid across launches.
        real = os.stat(hv)
        os.utime(wrapper, ns=(real.st_atime_ns, real.st_mtime_ns))
        g.set_hv(str(wrapper))
        done, fired = threading.Event(), threading.Event()

        def kill_when_late() -> None:
            if done.wait(limit_s):
                return
            fired.set()
            while not done.is_set():  # qemu may not have started yet (supermin still building)
                try:
                    pid = int(pidfile.read_text())
                    if _parent_of(pid) == os.getpid():  # still libguestfs' qemu, not a reused pid
                        os.kill(pid, signal.SIGKILL)
                except (OSError, ValueError):
                    pass
                done.wait(1.0)

        watcher = threading.Thread(target=kill_when_late, name="gfs-launch-limit", daemon=True)
        watcher.start()
        try:
            g.launch()
        except RuntimeError as e:
            if fired.is_set():
                accel = "TCG" if _forcing_tcg() else "KVM"
                raise LaunchTimedOut(
                    f"the libguestfs appliance did not start in {limit_s:g} s under {accel} ({e})"
                ) from e
            raise
        finally:
            done.set()
            watcher.join()
