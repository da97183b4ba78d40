"""Where the test pool lives and how to run a command inside its trixie root.

`Pool` knows the paths (the cached root, its state file, the default work directory) and runs
commands inside the root with a clean environment; the constants name what the root holds
(see pool.py for the whole picture).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from osgtest_dag.base import command, paths
from osgtest_dag.base.atomic import write_json_atomic
from osgtest_dag.base.errors import UserError
from osgtest_dag.model.documents import read_json

VENV = "/opt/osgtest-dag/venv"
SRC = "/opt/osgtest-dag/src"
POOL_USER = "osgtest"
POOL_UID = 4242
CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}


def pool_dir() -> Path:
    """`<cache>/pool`: the cached root, its state file and the default work directory."""
    return paths.cache_dir() / "pool"


@dataclass
class Pool:
    """Where one pool lives. Everything else is derived from `base`."""

    base: Path = field(default_factory=pool_dir)

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def state_file(self) -> Path:
        return self.base / "state.json"

    @property
    def work(self) -> Path:
        """The default work directory (bind-mounted at the same path inside the root)."""
        return self.base / "work"

    @property
    def stamp(self) -> Path:
        return self.root / ".osgtest-pool.json"

    def inside(self, path: str | os.PathLike) -> Path:
        """The host path of `path` (absolute, as seen inside the root)."""
        return self.root / str(path).lstrip("/")

    # --- state ------------------------------------------------------------------------------
    def load_state(self) -> dict:
        try:
            state = read_json(self.state_file)
        except UserError:
            return {}
        return state if isinstance(state, dict) else {}

    def save_state(self, state: dict) -> None:
        write_json_atomic(self.state_file, state)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        self.base.mkdir(parents=True, exist_ok=True)
        with open(self.base / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # --- running things inside ----------------------------------------------------------------
    def chroot_argv(self, argv: Sequence[str], user: str | None = None) -> list[str]:
        """argv that runs `argv` inside the root with a clean environment (as `user`)."""
        env = [f"{k}={v}" for k, v in CHROOT_ENV.items()]
        if user and user != "root":
            # runuser (util-linux) needs no PAM session config and no password.
            inner = [
                "runuser",
                "-u",
                user,
                "--",
                "env",
                f"HOME=/home/{user}",
                f"USER={user}",
                f"LOGNAME={user}",
                *argv,
            ]
        else:
            inner = list(argv)
        return ["chroot", str(self.root), "env", "-i", *env, *inner]

    def run(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        check: bool = True,
        timeout: float | None = 120,
        input: str | None = None,
    ):
        """command.run inside the root."""
        return command.run(self.chroot_argv(argv, user), check=check, timeout=timeout, input=input)


def require_root(what: str = "the test pool") -> None:
    if os.geteuid() != 0:
        raise UserError(
            f"{what} needs root (it builds a chroot, mounts and starts daemons)",
            hint="run as root, e.g. `sudo osgtest-dag pool up`",
        )
