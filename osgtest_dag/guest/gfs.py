"""Opening disks with libguestfs (python `guestfs`), the way this tool needs everywhere.

libguestfs boots a small appliance VM. Where KVM does not work it must be told to use TCG
(`LIBGUESTFS_BACKEND_SETTINGS=force_tcg`), or it aborts: we set that from `qemu.detect_accel()`
unless the user already set the variable.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from osgtest_dag.base.errors import UserError
from osgtest_dag.guest import qemu

log = logging.getLogger("osgtest_dag.guest.gfs")


def prepare_environment() -> None:
    """Set LIBGUESTFS_BACKEND_SETTINGS=force_tcg in os.environ when KVM is unusable."""
    if "LIBGUESTFS_BACKEND_SETTINGS" not in os.environ and qemu.detect_accel() == "tcg":
        os.environ["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"


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


@contextlib.contextmanager
def open_disks(disks: Sequence[tuple[Path, str]], *, readonly: bool) -> Iterator[Any]:
    """A launched guestfs handle with `disks` ((path, format) pairs) added, closed on exit.

    `readonly` adds the drives with readonly=1: libguestfs then writes to its own overlay,
    so e.g. a journal replay happens there and the file is untouched.
    """
    prepare_environment()
    guestfs = _module()
    g = guestfs.GuestFS(python_return_dict=True)
    try:
        g.set_smp(2)
        for path, fmt in disks:
            g.add_drive_opts(str(path), readonly=1 if readonly else 0, format=fmt)
        log.debug("launching libguestfs appliance for %s", ", ".join(str(p) for p, _ in disks))
        g.launch()
        yield g
        if not readonly:
            g.shutdown()  # flushes and reports write errors
    finally:
        g.close()
