"""The machines qemu runs guests on, one per guest architecture, and which accelerator a guest
of each gets on this host (KVM runs the host's own architecture only)."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

from osgtest_dag.base import command
from osgtest_dag.base.errors import UserError

# The UEFI firmware an aarch64 VM boots its disk through (Debian's edk2 build for qemu's
# `virt` machine, package qemu-efi-aarch64; `-bios` keeps its variables in memory, so no
# per-VM variable store).
AARCH64_FIRMWARE = Path("/usr/share/qemu-efi-aarch64/QEMU_EFI.fd")


@dataclass(frozen=True)
class Machine:
    """How qemu runs a guest of one architecture: its binary, `-machine` / `-cpu` per
    accelerator, and the firmware (none: qemu's own BIOS)."""

    qemu: str
    accel_args: dict[str, list[str]]
    firmware: Path | None = None
    package: str = ""  # the Debian package with `qemu` (and the firmware)
    tcg_cpu_v2: str | None = None  # TCG's `-cpu` for a guest built for x86-64-v2 at most

    def args(self, accel: str, x86_64_level: int = 3) -> list[str]:
        """`-machine` and `-cpu` for a guest under `accel`; `x86_64_level`: the x86-64 level
        its userland is built for (model.cell.x86_64_level)."""
        args = list(self.accel_args[accel])
        if accel == "tcg" and x86_64_level <= 2 and self.tcg_cpu_v2:
            args[args.index("-cpu") + 1] = self.tcg_cpu_v2
        return args


MACHINES = {
    # TCG: `-cpu max` gives every feature TCG emulates (x86-64-v3 for EL10 userlands). A guest
    # built for x86-64-v2 at most gets it without AVX and the features that need AVX: offered
    # AVX2, glibc's string functions and the like take forms TCG emulates more slowly than the
    # SSE ones (apt in a Debian 12 guest: 15-28% slower).
    "x86_64": Machine(
        "qemu-system-x86_64",
        {
            "kvm": ["-machine", "q35,accel=kvm", "-cpu", "host"],
            "tcg": ["-machine", "q35,accel=tcg", "-cpu", "max"],
        },
        package="qemu-system-x86",
        tcg_cpu_v2="max,avx=off,avx2=off,fma=off,f16c=off,vaes=off,vpclmulqdq=off",
    ),
    # The `virt` machine, as an aarch64 execute point's qemu-kvm runs it. TCG: `-cpu max` with
    # the cheap pointer-authentication algorithm (the architected one, QARMA, costs the
    # emulated guest a large share of its time).
    "aarch64": Machine(
        "qemu-system-aarch64",
        {
            "kvm": ["-machine", "virt,accel=kvm,gic-version=host", "-cpu", "host"],
            "tcg": ["-machine", "virt,accel=tcg", "-cpu", "max,pauth-impdef=on"],
        },
        firmware=AARCH64_FIRMWARE,
        package="qemu-system-arm and qemu-efi-aarch64",
    ),
}
HOST_ARCH = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine(), platform.machine())


def machine(arch: str) -> Machine:
    """The qemu machine for guests of `arch`; UserError for an architecture it cannot run."""
    if arch not in MACHINES:
        raise UserError(f"no qemu machine for {arch!r} guests", hint=f"known: {', '.join(MACHINES)}")
    return MACHINES[arch]


def check_machine(arch: str) -> None:
    """UserError unless this host has the qemu binary and firmware for `arch` guests."""
    kind = machine(arch)
    missing = [kind.qemu] if command.which(kind.qemu) is None else []
    if kind.firmware is not None and not kind.firmware.is_file():
        missing.append(str(kind.firmware))
    if missing:
        raise UserError(
            f"cannot run {arch} VMs here: {' and '.join(missing)} missing",
            hint=f"install {kind.package} (scripts/setup: make setup)",
        )


def accel_for(arch: str, accel: str) -> str:
    """The accelerator a VM of `arch` really gets when the run's is `accel`: KVM runs guests of
    the host's own architecture only, so any other is emulated (TCG)."""
    return accel if arch == HOST_ARCH else "tcg"
