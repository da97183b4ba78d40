"""A VM with no disk that boots over the network (PXE), as OSCAR's compute nodes did from
their head node: a cluster role with `boot: network` (docs/clusters.md).

qemu's NIC boot ROM (iPXE) asks the private network for DHCP and a boot file; another VM of the
cluster serves them (e.g. dnsmasq on the head node). Until that server is up the ROM finds
nothing and the firmware tries again after `RETRY_MS`, so the VM may start with the others.
Its serial console, once a kernel runs, is its evidence.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from osgtest_dag.base import command
from osgtest_dag.guest.qemu import QEMU, VM, accel_args

log = logging.getLogger(__name__)

RETRY_MS = 3000  # SeaBIOS starts over this long after a boot found nothing


def network_boot_argv(
    nic_args: Sequence[str], *, accel: str, memory_mb: int, vcpus: int, console_log: Path
) -> list[str]:
    """No disk, the firmware's boot order the network only; `nic_args` attach the NIC to boot
    from (with bootindex). No -no-reboot: a failed PXE attempt is a reboot, and so tries again."""
    return [
        QEMU,
        *accel_args(accel),
        "-smp",
        str(vcpus),
        "-m",
        str(memory_mb),
        "-nodefaults",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        f"file:{console_log}",
        "-rtc",
        "base=utc",
        "-boot",
        f"order=n,reboot-timeout={RETRY_MS}",
        *nic_args,
    ]


def start_network_boot(
    nic_args: Sequence[str],
    *,
    memory_mb: int,
    vcpus: int,
    timeout_s: float,
    console_log: Path,
    workdir: Path,
    accel: str,
    die_with_parent: bool = False,
) -> VM:
    """Start the VM in the background (see qemu.VM: wall-clock limit, kill)."""
    workdir.mkdir(parents=True, exist_ok=True)
    console_log.parent.mkdir(parents=True, exist_ok=True)
    console_log.write_bytes(b"")
    argv = network_boot_argv(
        nic_args, accel=accel, memory_mb=memory_mb, vcpus=vcpus, console_log=console_log.resolve()
    )
    stderr_path = workdir / "qemu-stderr.log"
    with open(stderr_path, "wb") as err:
        started = time.monotonic()
        proc = command.spawn(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=workdir,
            die_with_parent=die_with_parent,
        )
    log.info("network-boot VM pid %d started (%s, %d MiB)", proc.pid, accel, memory_mb)
    return VM(
        proc,
        argv=argv,
        overlay=None,
        console_log=console_log,
        accel=accel,
        timeout_s=timeout_s,
        started=started,
        keep_overlay=False,
        stderr_path=stderr_path,
    )
