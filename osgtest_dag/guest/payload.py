"""The guest payload shipped with the tool: `run-job` (goes on every IO disk) and the boot
hook + systemd unit (baked into every base image)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from osgtest_dag.base import paths
from osgtest_dag.base.errors import UserError

RUN_JOB = "run-job"
BOOT_HOOK = "osgtest-boot"
BOOT_UNIT = "osgtest-boot.service"
# Files baked into images: changing one of them must rebuild the images.
IMAGE_FILES = (BOOT_HOOK, BOOT_UNIT)
ALL_FILES = (RUN_JOB, BOOT_HOOK, BOOT_UNIT)


# What run-job prints on the serial console as each phase starts ("[osgtest 12:34:56] phase
# test: start"); the console is on the host even when the guest's disk is not readable.
PHASE_START = re.compile(rb"\bphase (\w+): start\b")


def console_reached_test(console: Path) -> bool:
    """The VM's console shows its payload started the test phase."""
    try:
        text = console.read_bytes()
    except OSError:
        return False
    return any(m.group(1) == b"test" for m in PHASE_START.finditer(text))


def payload_dir() -> Path:
    """The shipped `payload/` directory."""
    return paths.shipped_dir("payload")


def payload_file(name: str, directory: Path | None = None) -> Path:
    """Path of one payload file; a UserError if it is missing."""
    d = Path(directory) if directory else payload_dir()
    p = d / name
    if not p.is_file():
        raise UserError(
            f"payload file {p} is missing",
            hint="pass the directory holding run-job, osgtest-boot and osgtest-boot.service",
        )
    return p


def files_hash(names: tuple[str, ...] = IMAGE_FILES, directory: Path | None = None) -> str:
    """sha256 over the named payload files (name + content), for change detection."""
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode() + b"\0" + payload_file(name, directory).read_bytes() + b"\0")
    return h.hexdigest()
