"""The one wrapper through which every external command runs.

It logs the command line, captures output, enforces an optional time-out and turns every
failure into `CommandError`, so callers never see a bare `subprocess` exception.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from osgtest_dag.base.errors import CommandError

log = logging.getLogger("osgtest_dag.base.command")


def merged_env(env: Mapping[str, str] | None) -> dict[str, str] | None:
    """`env` added to the current environment (None: inherit it unchanged)."""
    return {**os.environ, **env} if env else None


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    input: str | bytes | None = None,
    capture: bool = True,
) -> subprocess.CompletedProcess[Any]:
    """Run `argv`; raise CommandError on failure when `check` (the default).

    `env` is added to the current environment, not a replacement for it.
    Output is captured as text (stdout and stderr separately) unless `capture` is false.
    """
    args = [os.fspath(a) for a in argv]
    log.debug("run: %s", shlex.join(args))
    full_env = merged_env(env)
    text = not isinstance(input, bytes)
    try:
        proc = subprocess.run(
            args,
            check=False,
            timeout=timeout,
            env=full_env,
            cwd=cwd,
            input=input,
            text=text,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
        )
    except FileNotFoundError as e:
        raise CommandError(args, None, reason=f"not found ({e.strerror}); run `make setup`") from None
    except subprocess.TimeoutExpired as e:
        out = e.output or b""
        out = out.decode(errors="replace") if isinstance(out, bytes) else out
        raise CommandError(args, None, out, reason=f"timed out after {timeout:g} s") from None
    if check and proc.returncode != 0:
        out = (proc.stderr or "") + (proc.stdout or "") if capture else ""
        if isinstance(out, bytes):
            out = out.decode(errors="replace")
        raise CommandError(args, proc.returncode, out)
    return proc


def which(name: str) -> Path | None:
    """Find a program on PATH (also /usr/sbin and /sbin, where Debian puts mkfs and friends)."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    found = shutil.which(name, path=path)
    return Path(found) if found else None


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    stdin: int | IO[Any] | None = subprocess.DEVNULL,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    die_with_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """Start `argv` in the background in its own session (process group), for long-lived
    children such as a VM that the caller waits on and may have to kill as a group.

    `env` is added to the current environment; `stdin` is /dev/null unless given (None: the
    caller's, for a VM console in the user's terminal). A missing program is a CommandError.
    `die_with_parent`: the kernel kills the child (SIGKILL) when the calling thread ends, so a
    runner killed with -9 leaves no VM behind; call it from a thread that lives as long as the
    child should. util-linux's setpriv sets it before the exec (a preexec_fn is not safe in a
    process with threads).
    """
    args = [os.fspath(a) for a in argv]
    if die_with_parent:
        program = (
            args[0] if os.sep in args[0] else shutil.which(args[0], path=(env or os.environ).get("PATH"))
        )
        if not program or not os.access(program, os.X_OK):  # as Popen would say, not setpriv's exit 127
            raise CommandError(args, None, reason="not found (no such program); run `make setup`")
        args = ["setpriv", "--pdeathsig", "KILL", "--", *args]
    log.debug("spawn: %s", shlex.join(args))
    full_env = merged_env(env)
    try:
        return subprocess.Popen(
            args,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            env=full_env,
            start_new_session=True,
        )
    except FileNotFoundError as e:
        raise CommandError(args, None, reason=f"not found ({e.strerror}); run `make setup`") from None
