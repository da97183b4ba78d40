"""`image import`: a distribution's own image (a qcow2 or raw cloud image such as Rocky's or
AlmaLinux's GenericCloud, or a Debian cloud image) made into a platform's base image.

The file is checked (readable, a disk image qemu-img knows, no backing file), hashed, converted
to a qcow2 of its own, customized as an Oz-installed image is (oz_builder.customize_image: boot
hook, serial console, DHCP on any NIC, cloud-init disabled, SELinux permissive), verified (the
CLI's smoke boot) and only then installed in the store, its metadata saying builder `import`,
the imported file's sha256 and where it came from. The file itself is only read.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from osgtest_dag.base import command, paths
from osgtest_dag.base.errors import CommandError, UserError
from osgtest_dag.guest import image, oz_builder, payload
from osgtest_dag.plan.catalog import Catalog

log = logging.getLogger("osgtest_dag.guest.image_import")

# Bump when the import's customization changes in a way the payload hash does not show.
CODE_VERSION = "import-1"
FORMATS = ("qcow2", "raw")
BOOT_SIGNATURE = b"\x55\xaa"  # bytes 510-511 of an MBR (a GPT disk's protective MBR too)
MIN_RAW_BYTES = 1 << 20


def probe(file: Path) -> dict:
    """qemu-img's view of `file` (`qemu-img info --output=json`); UserError for a file that is
    missing, unreadable, not a disk image we import, or one that names a backing file."""
    if not file.exists():
        raise UserError("the image to import does not exist", where=file)
    if not file.is_file():
        raise UserError("the image to import is not a regular file", where=file)
    try:
        with open(file, "rb") as f:
            head = f.read(512)
    except OSError as e:
        raise UserError(f"cannot read the image to import: {e.strerror}", where=file) from None
    try:
        out = command.run(["qemu-img", "info", "--output=json", "-U", file], timeout=120).stdout
        info = json.loads(out)
    except (CommandError, ValueError) as e:
        detail = (getattr(e, "output", "") or str(e)).strip().splitlines()
        raise UserError(
            f"qemu-img does not recognise the file as a disk image: {detail[-1] if detail else e}",
            where=file,
            hint="import a qcow2 or raw disk image (a distribution's cloud image)",
        ) from None
    fmt = info.get("format")
    if fmt not in FORMATS:
        raise UserError(
            f"the file is a {fmt} image; import takes {' or '.join(FORMATS)}",
            where=file,
            hint=f"convert it first: qemu-img convert -O qcow2 {file} {file.stem}.qcow2",
        )
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise UserError(
            f"the image has a backing file ({info.get('backing-filename')}): not a whole disk",
            where=file,
            hint=f"flatten it first: qemu-img convert -O qcow2 {file} {file.stem}-flat.qcow2",
        )
    if fmt == "raw" and (file.stat().st_size < MIN_RAW_BYTES or head[510:512] != BOOT_SIGNATURE):
        raise UserError(
            "qemu-img does not recognise the file as a disk image: it sees raw data with no "
            "partition table (no boot signature at byte 510)",
            where=file,
            hint="import a qcow2 or raw disk image; a compressed download (.xz, .tar.xz) "
            "must be unpacked first (Debian's .tar.xz holds disk.raw)",
        )
    return info


def import_inputs(origin: image.ImageOrigin) -> image.BuildInputs:
    """What decides an imported image's content: the file, our payload and customization."""
    return image.BuildInputs(
        builder=image.IMPORT_BUILDER,
        template=origin.sha256,
        packages=(),
        payload=payload.files_hash(),
        code=f"{CODE_VERSION}/{oz_builder.CODE_VERSION}",
    )


def import_image(
    platform_id: str,
    file: Path | str,
    store: Path | str | None = None,
    *,
    catalog: Catalog | None = None,
    verify: image.Verify | None = None,
) -> image.BuildOutcome:
    """Make `file` the base image of `platform_id` in `store`; `verify` checks it before it is
    installed (an image that fails is not installed)."""
    catalog = catalog or Catalog.load()
    platform = image.resolve_platform(platform_id, catalog)
    image.refuse_own_hook(platform)
    file = Path(file).absolute()
    info = probe(file)
    fmt = str(info["format"])
    stat = file.stat()
    log.info("%s: hashing %s (%d MiB)", platform.id, file, stat.st_size >> 20)
    origin = image.ImageOrigin(
        path=str(file),
        size=stat.st_size,
        mtime=image.utc_stamp(stat.st_mtime),
        sha256=image.sha256_file(file),
        format=fmt,
    )
    inputs = import_inputs(origin)
    store = Path(store or paths.default_image_dir())
    store.mkdir(parents=True, exist_ok=True)
    dest = image.image_path(platform.id, store)
    with image.platform_lock(store, platform.id):
        created = image.utc_stamp()
        stamp = {
            "platform": platform.id,
            "name": platform.name,
            "builder": image.IMPORT_BUILDER,
            "created": created,
            "inputs_hash": inputs.digest,
            "imported_sha256": origin.sha256,
        }
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        t0 = time.monotonic()
        try:
            command.run(["qemu-img", "convert", "-q", "-f", fmt, "-O", "qcow2", file, tmp], timeout=1800)
            try:
                packages = oz_builder.customize_image(tmp, "qcow2", stamp=stamp)
            except oz_builder.NoOperatingSystem:
                raise UserError(
                    "libguestfs finds no operating system in the image to import",
                    where=file,
                    hint="import a distribution's bootable cloud image (its root filesystem "
                    "must be one libguestfs can inspect: not encrypted, a known OS)",
                ) from None
            seconds = round(time.monotonic() - t0, 1)
            if verify is not None:
                verify(tmp, platform)
            stored = image.install_image(
                tmp,
                dest,
                {
                    "platform": platform.id,
                    "builder": image.IMPORT_BUILDER,
                    "sha256": image.sha256_file(tmp),
                    "size": tmp.stat().st_size,
                    "format": "qcow2",
                    "inputs_hash": inputs.digest,
                    "inputs": inputs.parts(),
                    "built": created,
                    "build_seconds": seconds,
                    "packages": list(packages),
                    "origin": origin.to_json(),
                },
            )
        finally:
            tmp.unlink(missing_ok=True)
    log.info("%s: imported %s in %.1f s (%d packages) -> %s", platform.id, file, seconds, len(packages), dest)
    return image.BuildOutcome(image=stored, built=True, reasons=(f"imported {file.name}",))
