"""A minimal initramfs for the local Debian images: busybox, the disk drivers, nothing else.

Debian's initramfs-tools image (15 MB, udev, every storage driver, fsck) takes ~5 s of a TCG
boot to find the root disk; the cloud kernel builds virtio_blk and friends as modules, so some
initramfs is needed. Ours loads the drivers a VM's root disk may sit behind (virtio, SCSI, AHCI,
IDE), finds the root file system by label, mounts it read-write and hands over to systemd:
~0.5 s. Debian's initramfs stays in the image as the bootloader's second entry.
"""

from __future__ import annotations

import gzip
import logging
import lzma
import os
import shutil
import tempfile
from pathlib import Path

from osgtest_dag.base import command
from osgtest_dag.base.errors import UserError

log = logging.getLogger(__name__)

# The drivers a hypervisor may put the root disk (and the IO disk) behind, the NIC drivers
# (so the network is not waiting for udev's coldplug) and the entropy device.
WANTED_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "virtio_net",
    "virtio_rng",
    "sd_mod",
    "ahci",
    "ata_piix",
    "ata_generic",
    "e1000",
    "e1000e",
)

# Mounts proc/sys/dev, loads the modules in dependency order, waits for the root file system by
# label (ROOT_WAIT_S), mounts it read-write and switches to it; a root shell on the console if
# any of that fails, so a broken image says why instead of hanging.
INIT_SCRIPT = """\
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.order); do insmod "/modules/$m" 2>/dev/null; done
root=""
label=@LABEL@
for a in $(cat /proc/cmdline); do
    case $a in root=LABEL=*) label=${a#root=LABEL=} ;; esac
done
i=0
while [ $i -lt @WAIT_TENTHS@ ]; do
    root=$(findfs "LABEL=$label" 2>/dev/null) && [ -b "$root" ] && break
    root=""
    sleep 0.1
    i=$((i + 1))
done
if [ -z "$root" ] || ! mount -t ext4 -o rw "$root" /root; then
    echo "osgtest initramfs: no file system labelled $label (or it does not mount)"
    cat /proc/partitions
    exec sh
fi
umount /proc /sys
mount --move /dev /root/dev
exec switch_root /root /sbin/init
"""
ROOT_WAIT_S = 30


def _module_index(moddir: Path) -> dict[str, tuple[str, list[str]]]:
    """modules.dep as {name: (relative path, [relative paths of its dependencies])}."""
    dep = moddir / "modules.dep"
    if not dep.is_file():
        raise UserError(f"{dep} is missing", hint="the image's kernel package did not install its modules")
    index = {}
    for line in dep.read_text().splitlines():
        path, _, deps = line.partition(":")
        name = Path(path).name.split(".ko")[0].replace("-", "_")
        index[name] = (path, deps.split())
    return index


def module_closure(moddir: Path, wanted: tuple[str, ...] = WANTED_MODULES) -> list[str]:
    """Relative paths of `wanted` and everything they depend on, each after its dependencies.
    Modules the kernel builds in (absent from modules.dep) are skipped."""
    index = _module_index(moddir)
    by_path = dict(index.values())
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for d in by_path.get(path, []):
            visit(d)
        order.append(path)

    for name in wanted:
        if name in index:
            visit(index[name][0])
    return order


def _copy_module(src: Path, dest: Path) -> None:
    """Copy a module, decompressed (busybox insmod reads plain .ko files only)."""
    if src.suffix == ".xz":
        dest.write_bytes(lzma.decompress(src.read_bytes()))
    elif src.suffix == ".zst":
        command.run(["zstd", "-q", "-d", "-f", "-o", dest, src], timeout=60)
    else:
        shutil.copyfile(src, dest)


def _pack(root: Path, dest: Path, compresslevel: int) -> None:
    """The tree at `root` as a gzipped newc cpio (owned by root) at `dest`."""
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    cpio = command.run(
        ["cpio", "--quiet", "-o", "-H", "newc", "--owner", "0:0"],
        input="".join(f + "\n" for f in ["."] + files).encode(),
        cwd=root,
        timeout=120,
    ).stdout
    dest.write_bytes(gzip.compress(cpio, compresslevel=compresslevel, mtime=0))


def build(tree: Path, kernel_version: str, dest: Path, root_label: str) -> None:
    """Write the initramfs for the tree's kernel `kernel_version` to `dest`: a gzipped cpio
    (a plain one has runs of zeros, which `mkfs.ext4 -d` stores as holes, and EXTLINUX then
    fails to load the file with "I/O error")."""
    busybox = tree / "bin" / "busybox"
    if not busybox.is_file():
        raise UserError(f"{busybox} is missing", hint="the image recipe must include busybox-static")
    moddir = tree / "lib" / "modules" / kernel_version
    modules = module_closure(moddir)
    with tempfile.TemporaryDirectory(prefix="osgtest-initramfs-") as tmp:
        root = Path(tmp)
        for d in ("bin", "dev", "proc", "sys", "root", "modules"):
            (root / d).mkdir()
        shutil.copyfile(busybox, root / "bin" / "busybox")
        (root / "bin" / "busybox").chmod(0o755)
        names = []
        for rel in modules:
            plain = Path(rel).name.split(".ko")[0] + ".ko"
            _copy_module(moddir / rel, root / "modules" / plain)
            names.append(plain)
        (root / "modules.order").write_text("".join(n + "\n" for n in names))
        init = INIT_SCRIPT.replace("@LABEL@", root_label).replace("@WAIT_TENTHS@", str(ROOT_WAIT_S * 10))
        (root / "init").write_text(init)
        (root / "init").chmod(0o755)
        _pack(root, dest, compresslevel=6)
        os.chmod(dest, 0o644)
    log.info(
        "initramfs %s: busybox and %d modules, %d KiB", dest.name, len(names), dest.stat().st_size // 1024
    )


# The smallest user space there is: /init powers the VM off at once. The accelerator probe boots
# it with this machine's own kernel, and the cell benchmark takes that boot as its floor.
POWEROFF_INIT = """\
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
exec /bin/busybox poweroff -f
"""
HOST_BUSYBOX = Path("/bin/busybox")


def poweroff_initramfs(dest: Path, init: str = POWEROFF_INIT) -> Path | None:
    """Write a gzipped initramfs of this machine's static busybox and `init` (a busybox sh
    script; POWEROFF_INIT by default) to `dest`; None when there is no static busybox (the
    set-up installs busybox-static)."""
    if not HOST_BUSYBOX.is_file() or b"ld-linux" in HOST_BUSYBOX.read_bytes()[:4096]:
        return None  # missing, or a dynamically linked busybox: no loader in this initramfs
    with tempfile.TemporaryDirectory(prefix="osgtest-poweroff-") as tmp:
        root = Path(tmp)
        for d in ("bin", "proc", "dev"):
            (root / d).mkdir()
        shutil.copyfile(HOST_BUSYBOX, root / "bin" / "busybox")
        (root / "bin" / "busybox").chmod(0o755)
        (root / "init").write_text(init)
        (root / "init").chmod(0o755)
        _pack(root, dest, compresslevel=1)
    return dest
