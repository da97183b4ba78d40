"""The local Debian base-image builder: no install media, no VM.

mmdebstrap makes a minbase tree from the Debian mirror; we add the boot hook, DHCP on any
NIC, a serial console and a stamp; `mkfs.ext4 -d` writes the tree straight into the
partition of a raw disk; EXTLINUX (MBR + ldlinux) boots the image's own kernel and initrd from
BIOS; qemu-img converts to qcow2. About 30-40 s for bookworm on 2 cores.

arm64 images are made the same way under emulation (mmdebstrap runs the arm64 maintainer
scripts through qemu-user-static's binfmt interpreter) and boot through UEFI from their own
disk: GPT, an EFI system partition with systemd-boot (guest/uefi_disk.py), the same root file
system and the same minimal initramfs (the image's arm64 busybox and modules).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from osgtest_dag.base import command
from osgtest_dag.base.errors import CommandError, UserError
from osgtest_dag.guest import gfs, initramfs, payload, uefi_disk
from osgtest_dag.guest.testvm import (
    COLDPLUG_DROPIN,
    JOURNALD_CONF,
    MASKED_GENERATORS,
    MASKED_UNITS,
    MODPROBE_CONF,
    NO_SANDBOX_DROPIN,
    UNSANDBOXED_SERVICES,
)

log = logging.getLogger("osgtest_dag.guest.debian_builder")

# Bump when the build changes in a way the recipe text below does not show.
CODE_VERSION = "debian-local-10"

ROOT_LABEL = "rootfs"
PART_OFFSET = 1024 * 1024  # the one partition starts at 1 MiB
DISK_SIZE_MB = 3072  # sparse; the qcow2 holds only what is used
MBR_BIN = Path("/usr/lib/EXTLINUX/mbr.bin")

# Debian's name for each architecture the builder makes images of; the kernel and the packages
# only some architectures need (systemd-boot-efi: the UEFI loader of guest/uefi_disk.py).
DEBIAN_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
KERNEL_PACKAGE = {"amd64": "linux-image-cloud-amd64", "arm64": "linux-image-cloud-arm64"}
ARCH_PACKAGES: dict[str, tuple[str, ...]] = {"amd64": (), "arm64": ("systemd-boot-efi",)}
# qemu-user-static's interpreter for foreign arm64 binaries, registered with binfmt_misc.
BINFMT = {"arm64": Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")}

BASE_PACKAGES = (
    "systemd-sysv",
    "udev",
    "e2fsprogs",
    "iproute2",
    "kmod",
    "ca-certificates",
    "netbase",
    "procps",
    "util-linux",
    "hostname",
    "gzip",
    "tar",
    "sed",
    "grep",
    "coreutils",
    "findutils",
    "mount",
    "apt",
    "gawk",
    "less",
    "busybox-static",  # the minimal initramfs's only program (guest/initramfs.py)
)
# Packages that exist only from some release on. None: no resolver service (systemd-resolved
# took 7 s of a TCG boot before the payload could start); run-job's network phase writes
# /etc/resolv.conf from the DHCP lease.
EXTRA_PACKAGES: dict[str, tuple[str, ...]] = {
    "bullseye": (),
    "bookworm": (),
    "trixie": (),
}
# /etc/resolv.conf as the image has it: qemu user networking's DNS until the network phase puts
# the lease's servers in (its first line tells run-job it may).
RESOLV_CONF = """\
# osgtest-dag: replaced with the DHCP lease's DNS servers by run-job (phase network)
nameserver 10.0.2.3
"""
SUPPORTED = tuple(EXTRA_PACKAGES)

DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*",
)

NETWORK_FILE = """\
# osgtest-dag: DHCP on whatever the NIC is called (names differ between hypervisors).
[Match]
Name=en* eth*

[Network]
DHCP=yes
LinkLocalAddressing=no
IPv6AcceptRA=no

[DHCPv4]
UseDomains=yes
"""

WAIT_ONLINE_DROPIN = """\
# osgtest-dag: one link is enough, and do not hold the boot for long without one
# (run-job's network phase retries and reports `network`).
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=20
"""

# The first entry boots with the minimal initramfs, quietly (the kernel's messages are in the
# cell's dmesg.txt; printing them on an emulated serial port costs seconds); the second with
# Debian's own initramfs and every message, for an image that does not boot the first way.
EXTLINUX_CONF = """\
DEFAULT osgtest
PROMPT 0
TIMEOUT 0
SERIAL 0 115200
LABEL osgtest
  LINUX /boot/{kernel}
  INITRD /boot/{fast_initrd}
  APPEND root=LABEL={label} rw console=ttyS0,115200 panic=-1 quiet systemd.show_status=auto
LABEL debian
  LINUX /boot/{kernel}
  INITRD /boot/{initrd}
  APPEND root=LABEL={label} rw console=ttyS0,115200 panic=-1 systemd.show_status=auto
"""
FAST_INITRD = "initrd.osgtest.img"

# apt in the guest: no translations (a third of `apt-get update`'s download), no recommends.
APT_CONF = """\
Acquire::Languages "none";
Acquire::Retries "3";
APT::Install-Recommends "false";
"""

FSTAB = f"LABEL={ROOT_LABEL} / ext4 defaults,errors=remount-ro 0 1\n"

# What systemd-update-done writes into /etc/.updated and /var/.updated (mtime = /usr's).
UPDATED_STAMP = """\
# This file was created by systemd-update-done. Its only
# purpose is to hold a timestamp of the time this directory
# was updated. See man:systemd-update-done.service(8).
"""


# Where the build records when the image's apt lists were fetched (seconds since the epoch):
# run-job uses the lists without `apt-get update` while they are younger than the cell's limit.
APT_LISTS_STAMP = "var/lib/apt/osgtest-lists-fetched"


@dataclass(frozen=True)
class Recipe:
    """Everything that decides what the local builder produces (hashed for change detection)."""

    codename: str
    mirror: str
    security_mirror: str
    packages: tuple[str, ...]
    arch: str = "amd64"  # Debian's name

    @property
    def sources(self) -> tuple[str, ...]:
        return (
            f"deb {self.mirror} {self.codename} main",
            f"deb {self.mirror} {self.codename}-updates main",
            f"deb {self.security_mirror} {self.codename}-security main",
        )

    def text(self) -> str:
        """The recipe as text: suites, sources, excludes, and the files we write. An amd64
        recipe's text says nothing of its architecture, as before there were others: the
        images already built stay current."""
        uefi = (
            {
                "arch": self.arch,
                "uefi": uefi_disk.entries(
                    self.arch, kernel="K", fast_initrd="F", initrd="I", label=ROOT_LABEL
                ),
            }
            if self.arch != "amd64"
            else {}
        )
        return json.dumps(
            {
                **uefi,
                "codename": self.codename,
                "sources": list(self.sources),
                "dpkg": list(DPKG_EXCLUDES),
                "network": NETWORK_FILE,
                "wait_online": WAIT_ONLINE_DROPIN,
                "extlinux": EXTLINUX_CONF,
                "fstab": FSTAB,
                "resolv_conf": RESOLV_CONF,
                "apt": APT_CONF,
                "masked": list(MASKED_UNITS),
                "masked_generators": list(MASKED_GENERATORS),
                "journald": JOURNALD_CONF,
                "modprobe": MODPROBE_CONF,
                "no_sandbox": [NO_SANDBOX_DROPIN, *UNSANDBOXED_SERVICES],
                "coldplug": COLDPLUG_DROPIN,
                "initramfs": initramfs.INIT_SCRIPT,
                "initramfs_modules": list(initramfs.WANTED_MODULES),
                "apt_lists": "kept",
            },
            indent=1,
            sort_keys=True,
        )


def recipe_for(
    codename: str | None,
    mirror: str = "http://deb.debian.org/debian",
    security_mirror: str = "http://deb.debian.org/debian-security",
    arch: str = "x86_64",
) -> Recipe:
    """The recipe for one Debian release on one architecture (`x86_64`, `aarch64`); UserError
    for releases or architectures this builder does not know."""
    if codename not in EXTRA_PACKAGES:
        raise UserError(
            f"the local Debian builder does not know release {codename!r}",
            hint=f"known: {', '.join(SUPPORTED)}",
        )
    if arch not in DEBIAN_ARCH:
        raise UserError(
            f"the local Debian builder makes no {arch} images", hint=f"known: {', '.join(DEBIAN_ARCH)}"
        )
    debian_arch = DEBIAN_ARCH[arch]
    return Recipe(
        codename=codename,
        mirror=mirror.rstrip("/"),
        security_mirror=security_mirror.rstrip("/"),
        packages=(KERNEL_PACKAGE[debian_arch], *BASE_PACKAGES, *ARCH_PACKAGES[debian_arch])
        + EXTRA_PACKAGES[codename],
        arch=debian_arch,
    )


def _check_tools(recipe: Recipe) -> None:
    if os.geteuid() != 0:
        raise UserError(
            "the local Debian builder must run as root (mmdebstrap --mode=root, loop mounts)",
            hint="run it with sudo, or use a prebuilt image",
        )
    for tool in ("mmdebstrap", "mkfs.ext4", "sfdisk", "extlinux", "qemu-img"):
        if command.which(tool) is None:
            raise UserError(f"{tool} is not installed", hint="run scripts/setup (make setup)")
    if not MBR_BIN.is_file():
        raise UserError(f"{MBR_BIN} is missing", hint="install the extlinux/syslinux-common packages")
    if recipe.arch == "amd64":
        return
    for tool in ("mkfs.vfat", "mmd", "mcopy", "arch-test"):  # arch-test: mmdebstrap's foreign-arch check
        if command.which(tool) is None:
            raise UserError(f"{tool} is not installed", hint="run scripts/setup (make setup)")
    binfmt = BINFMT[recipe.arch]
    if not binfmt.is_file() or not binfmt.read_text().startswith("enabled"):
        raise UserError(
            f"{recipe.arch} programs do not run here ({binfmt} is not an enabled binfmt_misc entry): "
            "mmdebstrap cannot configure the image's packages",
            hint="run scripts/setup (qemu-user-static, binfmt-support, `update-binfmts --enable`)",
        )


def bootstrap(recipe: Recipe, tree: Path) -> None:
    """mmdebstrap the minbase tree (the slow, network-bound step)."""
    argv = [
        "mmdebstrap",
        "--variant=minbase",
        "--mode=root",
        "--format=directory",
        "--components=main",
        f"--architectures={recipe.arch}",
        "--include=" + ",".join(recipe.packages),
        '--aptopt=Acquire::Retries "3"',
        '--aptopt=APT::Install-Recommends "false"',
        '--aptopt=Acquire::Languages "none"',
        # the lists stay in the image: cells use them instead of fetching them again
        "--skip=cleanup/apt/lists",
    ]
    argv += [f"--dpkgopt={opt}" for opt in DPKG_EXCLUDES]
    argv += [recipe.codename, str(tree), *recipe.sources]
    log.info("mmdebstrap %s into %s", recipe.codename, tree)
    command.run(argv, timeout=1800)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _symlink(link: Path, target: str) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def kernel_and_initrd(tree: Path) -> tuple[str, str]:
    """File names (in /boot) of the newest kernel and its initrd in the tree."""
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    for k in reversed(kernels):
        version = k.name[len("vmlinuz-") :]
        initrd = tree / "boot" / f"initrd.img-{version}"
        if initrd.is_file():
            return k.name, initrd.name
    raise UserError(
        f"no kernel with an initrd in {tree / 'boot'}",
        hint="the recipe must include a linux-image package and initramfs-tools",
    )


def customize(tree: Path, recipe: Recipe, stamp: dict[str, str]) -> None:
    """Make the tree an osgtest image: boot hook, networking, console, stamp, fstab."""
    etc = tree / "etc"
    _write(etc / "hostname", "osgtest\n")
    _write(etc / "hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    _write(etc / "fstab", FSTAB)
    # The image's apt sources: its release's main suite, which is what a cell of the catalog's
    # `stable; main` source has; run-job then leaves them, and apt the package cache built for
    # them below. The lists of all three suites the image was built from stay for other cells.
    _write(etc / "apt" / "sources.list", recipe.sources[0] + "\n")
    _write(etc / "apt" / "apt.conf.d" / "90osgtest", APT_CONF)
    # Networking: networkd + DHCP on any NIC name; DNS from the lease (RESOLV_CONF).
    _write(etc / "systemd" / "network" / "80-osgtest-dhcp.network", NETWORK_FILE)
    _write(
        etc / "systemd" / "system" / "systemd-networkd-wait-online.service.d" / "osgtest.conf",
        WAIT_ONLINE_DROPIN,
    )
    (etc / "udev" / "rules.d" / "70-persistent-net.rules").unlink(missing_ok=True)
    resolv = etc / "resolv.conf"
    if resolv.is_symlink():
        resolv.unlink()
    _write(resolv, RESOLV_CONF)
    # A fresh machine-id on every boot (the image is shared by many VMs).
    _write(etc / "machine-id", "")
    (tree / "var" / "lib" / "dbus" / "machine-id").unlink(missing_ok=True)
    # Boot hook.
    hook = payload.payload_file(payload.BOOT_HOOK)
    unit = payload.payload_file(payload.BOOT_UNIT)
    (tree / "usr" / "local" / "sbin").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(hook, tree / "usr" / "local" / "sbin" / payload.BOOT_HOOK)
    (tree / "usr" / "local" / "sbin" / payload.BOOT_HOOK).chmod(0o755)
    shutil.copyfile(unit, etc / "systemd" / "system" / payload.BOOT_UNIT)
    (etc / "systemd" / "system" / payload.BOOT_UNIT).chmod(0o644)
    command.run(
        [
            "systemctl",
            f"--root={tree}",
            "enable",
            payload.BOOT_UNIT,
            "systemd-networkd.service",
            "systemd-networkd-wait-online.service",
        ],
        timeout=60,
    )
    for unit_name in MASKED_UNITS:
        _symlink(etc / "systemd" / "system" / unit_name, "/dev/null")
    for generator in MASKED_GENERATORS:
        _symlink(etc / "systemd" / "system-generators" / generator, "/dev/null")
    _symlink(etc / "systemd" / "system" / "default.target", "/lib/systemd/system/multi-user.target")
    _write(etc / "systemd" / "journald.conf.d" / "osgtest.conf", JOURNALD_CONF)
    _write(etc / "modprobe.d" / "osgtest-test-vm.conf", MODPROBE_CONF)
    for service in UNSANDBOXED_SERVICES:
        _write(etc / "systemd" / "system" / f"{service}.d" / "osgtest-no-sandbox.conf", NO_SANDBOX_DROPIN)
    _write(etc / "systemd" / "system" / "systemd-udev-trigger.service.d" / "osgtest.conf", COLDPLUG_DROPIN)
    # Stamp: what the image is and when it was made.
    _write(etc / "osgtest-image-release", "".join(f"{k}={v}\n" for k, v in stamp.items()))
    # Bootloader configuration (installed into the filesystem later; a UEFI image's is on its
    # ESP, made with the disk).
    kernel, initrd = kernel_and_initrd(tree)
    initramfs.build(tree, kernel[len("vmlinuz-") :], tree / "boot" / FAST_INITRD, ROOT_LABEL)
    if recipe.arch == "amd64":
        _write(
            tree / "boot" / "extlinux" / "extlinux.conf",
            EXTLINUX_CONF.format(kernel=kernel, initrd=initrd, fast_initrd=FAST_INITRD, label=ROOT_LABEL),
        )
    # Every VM boots this image fresh, so first-boot-after-update work would run on every
    # boot: mark /etc and /var as up to date with /usr, as systemd-update-done would (this
    # skips ldconfig.service, the journal catalog rebuild and friends: ~4 s per TCG boot here).
    usr_mtime = (tree / "usr").stat().st_mtime_ns
    for d in (etc, tree / "var"):
        _write(d / ".updated", UPDATED_STAMP)
        os.utime(d / ".updated", ns=(usr_mtime, usr_mtime))
    # The apt lists mmdebstrap fetched for the image's sources stay; no downloaded packages.
    _write(tree / APT_LISTS_STAMP, f"{int(time.time())}\n")
    archives = tree / "var" / "cache" / "apt" / "archives"
    if archives.is_dir():
        for p in archives.glob("*.deb"):
            p.unlink()
    # apt's binary cache of those lists, for the image's own sources, built last (apt trusts
    # it while the sources and lists are older): a cell whose sources are the image's, which
    # run-job then leaves as they are, installs without apt parsing every list again (~6 s
    # under emulation). Other sources make apt build it again, as before.
    command.run(["chroot", str(tree), "apt-cache", "gencaches"], timeout=600)


def installed_packages(tree: Path) -> list[str]:
    """`name<TAB>version<TAB>arch` for every package installed in the tree."""
    out = command.run(
        [
            "dpkg-query",
            f"--admindir={tree / 'var/lib/dpkg'}",
            "-W",
            "-f=${binary:Package}\t${Version}\t${Architecture}\n",
        ],
        timeout=60,
    ).stdout
    return sorted(line for line in out.splitlines() if line.strip())


def _install_extlinux(raw: Path, work: Path) -> None:
    """Put ldlinux into /boot/extlinux of the partition: a loop mount, else libguestfs."""
    mnt = work / "mnt"
    mnt.mkdir(exist_ok=True)
    try:
        command.run(["mount", "-o", f"loop,offset={PART_OFFSET}", raw, mnt], timeout=60)
    except CommandError as e:
        log.info(
            "loop mount failed (%s); installing EXTLINUX with libguestfs",
            (e.output.strip().splitlines() or ["?"])[-1],
        )
        with gfs.open_disks([(raw, "raw")], readonly=False) as g:
            g.mount("/dev/sda1", "/")
            g.extlinux("/boot/extlinux")
            g.umount_all()
        return
    try:
        command.run(["extlinux", "--install", mnt / "boot" / "extlinux"], timeout=60)
    finally:
        command.run(["umount", mnt], timeout=60)


def make_disk(tree: Path, dest_qcow2: Path, work: Path, size_mb: int = DISK_SIZE_MB) -> None:
    """Tree -> partitioned raw disk with EXTLINUX -> qcow2 at `dest_qcow2`."""
    raw = work / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    command.run(
        ["sfdisk", "--quiet", raw],
        input=f"label: dos\nstart={PART_OFFSET // 512}, type=83, bootable\n",
        timeout=60,
    )
    part_kib = (size_mb * 1024 * 1024 - PART_OFFSET) // 1024
    command.run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            ROOT_LABEL,
            "-E",
            f"offset={PART_OFFSET}",
            "-d",
            tree,
            raw,
            f"{part_kib}k",
        ],
        timeout=600,
    )
    with open(raw, "r+b") as f:
        f.write(MBR_BIN.read_bytes()[:440])
    _install_extlinux(raw, work)
    command.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, dest_qcow2], timeout=600)
    raw.unlink()


def make_uefi_disk(
    tree: Path, recipe: Recipe, dest_qcow2: Path, work: Path, size_mb: int = DISK_SIZE_MB
) -> None:
    """Tree -> GPT raw disk with an ESP (systemd-boot, the kernel, both initramfs images) and
    the root file system -> qcow2 at `dest_qcow2`."""
    kernel, initrd = kernel_and_initrd(tree)
    raw = work / "disk.raw"
    uefi_disk.make_bootable_disk(
        tree, recipe.arch, kernel, (FAST_INITRD, initrd), label=ROOT_LABEL, raw=raw, size_mb=size_mb
    )
    command.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, dest_qcow2], timeout=600)
    raw.unlink()


def build(
    recipe: Recipe, dest_qcow2: Path, *, stamp: dict[str, str], workdir: Path | None = None
) -> list[str]:
    """Build the image into `dest_qcow2` (overwritten); return its installed package list.

    The caller (image.build_image) makes the result atomic and writes the metadata.
    """
    _check_tools(recipe)
    with tempfile.TemporaryDirectory(prefix="osgtest-debian-", dir=workdir) as tmp:
        work = Path(tmp)
        tree = work / "tree"
        bootstrap(recipe, tree)
        if not (tree / "lib" / "systemd" / "systemd-networkd").exists():
            raise UserError(
                f"{recipe.codename}: the tree has no systemd-networkd",
                hint="add the package providing it to EXTRA_PACKAGES",
            )
        customize(tree, recipe, stamp)
        packages = installed_packages(tree)
        log.info("%s: %d packages; making the disk", recipe.codename, len(packages))
        if recipe.arch == "amd64":
            make_disk(tree, dest_qcow2, work)
        else:
            make_uefi_disk(tree, recipe, dest_qcow2, work)
    return packages
