"""The mounts a running pool needs under its root, and taking them down again.

Every mount made is recorded in the pool's state file as it is made, so `down` after a failed
`up` still finds it; unmounting goes by what the kernel reports under the root.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from osgtest_dag.base import command
from osgtest_dag.base.errors import UserError
from osgtest_dag.devpool.chroot import SRC, Pool


def mountpoints() -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4]
        out.append(mp.encode().decode("unicode_escape"))
    return out


def mounted_under(path: Path) -> list[str]:
    p = str(Path(path).resolve())
    return [m for m in mountpoints() if m == p or m.startswith(p + "/")]


def is_mountpoint(path: Path) -> bool:
    return str(Path(path).resolve()) in mountpoints()


def _mount(pool: Pool, state: dict, target: Path, argv: list[str]) -> None:
    if is_mountpoint(target):
        return
    target.mkdir(parents=True, exist_ok=True)
    command.run(argv + [str(target)], timeout=60)
    state.setdefault("mounts", []).append(str(target))
    pool.save_state(state)


def mount_all(pool: Pool, state: dict, binds: Sequence[Path], src: Path) -> None:
    """What a chroot needs (proc; sys and dev recursively; a private tmpfs on /run), the
    working tree `src` read-only at SRC, and each work directory in `binds` at its own path."""
    r = pool.root
    _mount(pool, state, r / "proc", ["mount", "-t", "proc", "proc"])
    _mount(pool, state, r / "sys", ["mount", "--rbind", "--make-rslave", "/sys"])
    _mount(pool, state, r / "dev", ["mount", "--rbind", "--make-rslave", "/dev"])
    _mount(pool, state, r / "run", ["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs"])
    target = pool.inside(SRC)
    if not is_mountpoint(target):
        _mount(pool, state, target, ["mount", "--bind", str(src)])
        command.run(["mount", "-o", "remount,bind,ro", str(target)], timeout=60)
    for b in binds:
        b.mkdir(parents=True, exist_ok=True)
        target = pool.inside(b.resolve())
        _mount(pool, state, target, ["mount", "--bind", str(b.resolve())])
        # the job owner must reach it: the root's own directories on the way (/root is 0700)
        d = target.parent
        while d != pool.root and pool.root in d.parents:
            os.chmod(d, os.stat(d).st_mode | 0o111)
            d = d.parent


def unmount_all(pool: Pool) -> list[str]:
    """Unmount everything under the root, deepest first. Returns what was unmounted."""
    done = []
    for _ in range(3):
        left = sorted(mounted_under(pool.root), key=lambda m: m.count("/"), reverse=True)
        if not left:
            break
        for m in left:
            if command.run(["umount", m], check=False, timeout=60).returncode != 0:
                command.run(["umount", "-l", m], check=False, timeout=60)
            done.append(m)
    left = mounted_under(pool.root)
    if left:
        raise UserError(f"could not unmount: {', '.join(left)}", hint="see `fuser -m` for who uses them")
    return done
