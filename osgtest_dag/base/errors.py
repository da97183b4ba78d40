"""One error hierarchy for the whole tool.

`UserError` is what a user can fix (bad input, missing file, wrong option): the CLI prints it
without a traceback and exits 2. `CommandError` is an external tool that failed. Everything
else is a bug and shows a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Location:
    """Where a value came from: file, 1-based line, optional 1-based column."""

    path: Path
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        s = str(self.path)
        if self.line is not None:
            s += f":{self.line}"
            if self.column is not None:
                s += f":{self.column}"
        return s


class OsgtestDagError(Exception):
    """Base of every error this tool raises on purpose."""

    exit_code = 1


class UserError(OsgtestDagError):
    """Something the user can fix. Rendered as `where: error: message` plus `hint: ...`."""

    exit_code = 2

    def __init__(
        self, message: str, *, where: Location | Path | str | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint

    def __str__(self) -> str:
        s = f"{self.where}: error: {self.message}" if self.where else f"error: {self.message}"
        if self.hint:
            s += f"\n  hint: {self.hint}"
        return s


class CommandError(OsgtestDagError):
    """An external command failed (non-zero exit, missing binary or time-out)."""

    def __init__(
        self, argv: list[str], returncode: int | None, output: str = "", reason: str | None = None
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output
        self.reason = reason
        what = reason or f"exited with status {returncode}"
        tail = "\n".join(output.strip().splitlines()[-15:])
        super().__init__(f"command {argv[0]!r} {what}: {' '.join(argv)}" + (f"\n{tail}" if tail else ""))
