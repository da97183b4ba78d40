"""The disk of a local Debian image that boots through UEFI (arm64): as an aarch64 execute
point's qemu boots it, from its own disk through the firmware, with no kernel given from outside.

GPT with two partitions: an EFI system partition holding systemd-boot (the image's own
systemd-boot-efi package, so no arm64 package on the host) with the kernel and both initramfs
images, and the root file system (`mkfs.ext4 -d`, as for the BIOS images). The firmware finds
systemd-boot on the removable-media path (`\\EFI\\BOOT\\BOOTAA64.EFI`: no boot entries needed in
its variables, which `-bios` keeps in memory only). The FAT file system is made and filled as
a plain file (mkfs.vfat, mtools), no mount; then it and the root file system go into the disk.
"""

from __future__ import annotations

import gzip
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from osgtest_dag.base import command
from osgtest_dag.base.errors import UserError

log = logging.getLogger(__name__)

ALIGN = 1024 * 1024  # partitions start on MiB boundaries
ESP_SIZE_MB = 128  # the kernel (uncompressed) and two initramfs images, with room to spare
ESP_DIR = "osgtest"  # where the kernel and the initramfs images are on the ESP


@dataclass(frozen=True)
class Loader:
    """What one architecture's UEFI boot needs: the removable-media file name the firmware
    looks for, systemd-boot's binary in the image's tree, the serial console's device."""

    efi_name: str
    systemd_boot: str
    console: str


LOADERS = {
    "arm64": Loader("BOOTAA64.EFI", "usr/lib/systemd/boot/efi/systemd-bootaa64.efi", "ttyAMA0"),
}

# systemd-boot: no menu, the first entry at once. Like the BIOS images' EXTLINUX entries: the
# minimal initramfs, quietly; then Debian's own initramfs with every message.
LOADER_CONF = """\
timeout 0
default osgtest.conf
editor no
"""
ENTRY = """\
title {title}
linux /{dir}/{kernel}
initrd /{dir}/{initrd}
options root=LABEL={label} rw console={console},115200 panic=-1 {quiet}systemd.show_status=auto
"""


def loader(debian_arch: str) -> Loader:
    if debian_arch not in LOADERS:
        raise UserError(f"no UEFI boot for {debian_arch} images", hint=f"known: {', '.join(LOADERS)}")
    return LOADERS[debian_arch]


def entries(debian_arch: str, *, kernel: str, fast_initrd: str, initrd: str, label: str) -> dict[str, str]:
    """systemd-boot's loader.conf and entries, by their path on the ESP."""
    console = loader(debian_arch).console
    common = {"dir": ESP_DIR, "kernel": kernel, "label": label, "console": console}
    return {
        "loader/loader.conf": LOADER_CONF,
        "loader/entries/osgtest.conf": ENTRY.format(
            title="osgtest", initrd=fast_initrd, quiet="quiet ", **common
        ),
        "loader/entries/debian.conf": ENTRY.format(title="debian", initrd=initrd, quiet="", **common),
    }


def efi_kernel(kernel: Path, dest: Path) -> None:
    """The kernel as the firmware loads it: an arm64 kernel is a PE image (EFI stub) that
    Debian ships gzipped; systemd-boot hands the file to the firmware as it is."""
    with open(kernel, "rb") as f:
        compressed = f.read(2) == b"\x1f\x8b"
    if compressed:
        with gzip.open(kernel, "rb") as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
    else:
        shutil.copyfile(kernel, dest)
    if dest.read_bytes()[:2] != b"MZ":
        raise UserError(
            f"{kernel.name} is not an EFI application (no PE header)",
            hint="the image's kernel must be built with the EFI stub",
        )


def make_esp(tree: Path, debian_arch: str, files: dict[str, Path], texts: dict[str, str], esp: Path) -> None:
    """A FAT file system image at `esp` with systemd-boot as the removable-media loader,
    `files` (ESP path -> file) and `texts` (ESP path -> content)."""
    boot = loader(debian_arch)
    systemd_boot = tree / boot.systemd_boot
    if not systemd_boot.is_file():
        raise UserError(f"{systemd_boot} is missing", hint="the image recipe must include systemd-boot-efi")
    with open(esp, "wb") as f:
        f.truncate(ESP_SIZE_MB * 1024 * 1024)
    command.run(["mkfs.vfat", "-F", "32", "-n", "ESP", esp], timeout=60)
    staged = esp.parent / "esp-files"
    staged.mkdir()
    for rel, text in texts.items():
        (staged / rel.replace("/", "__")).write_text(text)
    placed = {f"EFI/BOOT/{boot.efi_name}": systemd_boot, **files}
    placed.update({rel: staged / rel.replace("/", "__") for rel in texts})
    # every directory on the way to each file, parents first
    parents = sorted({str(d) for rel in placed for d in Path(rel).parents if str(d) != "."})
    env = {"MTOOLS_SKIP_CHECK": "1"}  # a file system image, not a floppy of known geometry
    command.run(["mmd", "-i", esp, *[f"::/{d}" for d in parents]], env=env, timeout=60)
    for rel, src in placed.items():
        command.run(["mcopy", "-i", esp, src, f"::/{rel}"], env=env, timeout=120)
    shutil.rmtree(staged)


def _copy_into(disk: Path, image: Path, offset: int) -> None:
    with open(image, "rb") as src, open(disk, "r+b") as out:
        out.seek(offset)
        shutil.copyfileobj(src, out, 1 << 20)


def make_disk(
    tree: Path,
    debian_arch: str,
    esp_files: dict[str, Path],
    esp_texts: dict[str, str],
    *,
    label: str,
    raw: Path,
    size_mb: int,
) -> None:
    """The raw disk at `raw`: GPT, the ESP, and the root file system of `tree` labelled `label`."""
    esp = raw.with_name("esp.img")
    make_esp(tree, debian_arch, esp_files, esp_texts, esp)
    root_start = ALIGN + ESP_SIZE_MB * 1024 * 1024
    root_size = size_mb * 1024 * 1024 - root_start - ALIGN  # the backup GPT is in the last MiB
    with open(raw, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    command.run(
        ["sfdisk", "--quiet", raw],
        input=(
            "label: gpt\n"
            f"start={ALIGN // 512}, size={ESP_SIZE_MB * 2048}, type=U, name=ESP\n"
            f"start={root_start // 512}, size={root_size // 512}, type=L, name=root\n"
        ),
        timeout=60,
    )
    _copy_into(raw, esp, ALIGN)
    esp.unlink()
    command.run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            label,
            "-E",
            f"offset={root_start}",
            "-d",
            tree,
            raw,
            f"{root_size // 1024}k",
        ],
        timeout=600,
    )
    log.info("UEFI disk: ESP %d MiB (systemd-boot), root %d MiB", ESP_SIZE_MB, root_size >> 20)


def make_bootable_disk(
    tree: Path,
    debian_arch: str,
    kernel: str,
    initrds: tuple[str, str],
    *,
    label: str,
    raw: Path,
    size_mb: int,
) -> None:
    """`make_disk` with the tree's /boot/`kernel` and its two initramfs images (the minimal one,
    then Debian's) on the ESP, and systemd-boot's entries for them."""
    boot = tree / "boot"
    efi = raw.with_name("vmlinuz.efi")
    efi_kernel(boot / kernel, efi)
    fast, debian = initrds
    files = {
        f"{ESP_DIR}/{kernel}": efi,
        f"{ESP_DIR}/{fast}": boot / fast,
        f"{ESP_DIR}/{debian}": boot / debian,
    }
    texts = entries(debian_arch, kernel=kernel, fast_initrd=fast, initrd=debian, label=label)
    make_disk(tree, debian_arch, files, texts, label=label, raw=raw, size_mb=size_mb)
    efi.unlink()
