"""The guest payload shipped with the tool: `run-job` (goes on every IO disk) and the boot
hook + systemd unit (baked into every base image)."""

from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass
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


# run-job's phases, in the order it runs them (payload/run-job's main).
PHASES = ("environment", "network", "hostname", "repositories", "install", "test", "update", "collect")

# A reproduction (`osgtest-dag reproduce`) puts this file in the IO disk's input/: run-job runs
# the phases up to and including REPRODUCE_UNTIL, skips the later ones, then runs
# REPRODUCE_EXEC as root (each output line on the console tagged `<mark>|`, then
# `<mark>:status N`), or without it gives a root shell on the serial console.
REPRODUCE_ENV = "reproduce.env"
REPRODUCE_EXEC_LOG = "reproduce-exec.log"  # in output/: the command's output, as it printed it


@dataclass(frozen=True)
class Reproduction:
    """What a reproduction asks run-job to do after its phases."""

    until: str
    mark: str  # tags the command's console lines: unique per reproduction
    exec_command: str | None = None  # None: a root shell on the serial console
    term: str = "vt220"  # the shell's TERM (the user's terminal)
    rows: int = 0  # the shell's terminal size (0: unknown)
    columns: int = 0

    def __post_init__(self) -> None:
        if self.until not in PHASES:
            raise UserError(f"unknown phase {self.until!r}", hint=f"one of {', '.join(PHASES)}")
        if not re.fullmatch(r"[A-Za-z0-9-]{8,}", self.mark):
            raise ValueError(f"not a console mark: {self.mark!r}")

    def env(self) -> str:
        """The reproduce.env file: shell assignments, every value quoted."""
        values = {
            "REPRODUCE_UNTIL": self.until,
            "REPRODUCE_MARK": self.mark,
            "REPRODUCE_MODE": "shell" if self.exec_command is None else "exec",
            "REPRODUCE_EXEC": self.exec_command or "",
            "REPRODUCE_TERM": re.sub(r"[^A-Za-z0-9._+-]", "", self.term) or "vt220",
            "REPRODUCE_ROWS": str(self.rows),
            "REPRODUCE_COLUMNS": str(self.columns),
        }
        lines = ["# osgtest-dag reproduce: what run-job does after its phases"]
        lines += [f"{k}={shlex.quote(v)}" for k, v in values.items()]
        return "\n".join(lines) + "\n"


class ExecConsole:
    """Reads a reproduction's command output back from the console's lines: the text of the
    lines tagged `<mark>|`, and the status from `<mark>:status N`. The console adds CR before
    each LF and may interleave other writers' lines (the kernel, journald), never ours."""

    def __init__(self, mark: str):
        self._text = (mark + "|").encode()
        self._status = (mark + ":status ").encode()
        self.status: int | None = None

    def line(self, line: bytes) -> bytes | None:
        """The command's output in one console line (with its newline), None when the line is
        not the command's; sets `status` when the line says the command ended."""
        line = line.rstrip(b"\r\n")
        text = None
        at = line.find(self._text)
        if at >= 0:
            text = line[at + len(self._text) :]
        end = (text if text is not None else line).find(self._status)
        if end >= 0:
            base = text if text is not None else line
            code = base[end + len(self._status) :].strip()
            self.status = int(code) if code.isdigit() else 255
            # the command's last line had no newline: the status followed it on the same line
            return base[:end] if text is not None and end > 0 else None
        return None if text is None else text + b"\n"
