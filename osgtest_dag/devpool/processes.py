"""The processes running in the pool's root, found and waited for by pid (a chroot has no
process namespace of its own)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from osgtest_dag.devpool.chroot import Pool


def root_pids(pool: Pool) -> list[int]:
    """Processes whose root directory is the pool's root: everything started inside it."""
    want = str(pool.root.resolve())
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if os.readlink(d / "root") == want:
                pids.append(int(d.name))
        except OSError:
            continue
    return sorted(pids)


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def wait_gone(pids: Sequence[int], timeout: float) -> list[int]:
    """Wait up to `timeout` seconds for `pids` to exit; returns those still alive."""
    end = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < end:
        time.sleep(0.2)
        left = [p for p in left if alive(p)]
    return left
