#!/usr/bin/env python3
"""IO disk creation: the virt-make-fs backend (libguestfs appliance per disk) against the
mke2fs backend (mkfs.ext4 -d + qemu-img convert), then 1,600 disks with the fast backend in
a pool of 2 processes, as a DAG with 1,600 cells would make them.

Usage: .venv/bin/python benchmarks/bench_iodisk.py [--slow N] [--fast N] [--bulk N] [--jobs J]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from osgtest_dag.guest import iodisk  # noqa: E402


def make_input(root: Path) -> Path:
    """A realistic cell input dir: cell.json, cell.env, osg-test.conf."""
    d = root / "input"
    d.mkdir(parents=True)
    cfg = {
        "schema": "osgtest-dag/cell",
        "version": 1,
        "serial": "0001",
        "platform": {"id": "debian_12.x86_64", "family": "debian"},
        "packages": ["hello"],
    }
    (d / "cell.json").write_text(json.dumps(cfg, indent=1))
    (d / "cell.env").write_text("CELL_SERIAL='0001'\nCELL_FAMILY='debian'\nCELL_PACKAGES='hello'\n")
    (d / "osg-test.conf").write_text("[Config]\nadduser = True\n")
    return d


def timed(backend: str, inp: Path, out: Path, n: int) -> list[float]:
    times = []
    for i in range(n):
        t = time.perf_counter()
        iodisk.make_iodisk(inp, out / f"{backend}-{i:05d}.qcow2", backend=backend)
        times.append(time.perf_counter() - t)
    return times


def _one(args: tuple[str, str]) -> float:
    inp, dest = args
    t = time.perf_counter()
    iodisk.make_iodisk(inp, dest, backend="mke2fs")
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slow", type=int, default=3, help="virt-make-fs disks (baseline)")
    ap.add_argument("--fast", type=int, default=100, help="mke2fs disks, sequential")
    ap.add_argument("--bulk", type=int, default=1600, help="mke2fs disks in the pool")
    ap.add_argument("--jobs", type=int, default=2, help="pool size for the bulk run")
    a = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-iodisk-", dir=os.environ.get("TMPDIR")) as tmp:
        root = Path(tmp)
        inp = make_input(root)
        out = root / "disks"
        out.mkdir()

        slow = timed("virt-make-fs", inp, out, a.slow) if a.slow else []
        fast = timed("mke2fs", inp, out, a.fast)
        slow_mean = sum(slow) / len(slow) if slow else float("nan")
        fast_mean = sum(fast) / len(fast)
        if slow:
            print(
                f"virt-make-fs: {len(slow):5d} disks, {slow_mean:8.3f} s/disk "
                f"(min {min(slow):.3f}, max {max(slow):.3f})"
            )
        print(
            f"mke2fs:       {len(fast):5d} disks, {fast_mean:8.4f} s/disk "
            f"(min {min(fast):.4f}, max {max(fast):.4f})"
        )
        if slow:
            print(f"speed-up:     {slow_mean / fast_mean:8.0f}x")
        shutil.rmtree(out)
        out.mkdir()

        jobs = [(str(inp), str(out / f"bulk-{i:05d}.qcow2")) for i in range(a.bulk)]
        t = time.perf_counter()
        with ProcessPoolExecutor(max_workers=a.jobs) as pool:
            per = list(pool.map(_one, jobs, chunksize=16))
        wall = time.perf_counter() - t
        size = sum(p.stat().st_size for p in out.iterdir())
        print(
            f"bulk mke2fs:  {a.bulk:5d} disks with {a.jobs} processes in {wall:.1f} s wall "
            f"({wall / a.bulk * 1000:.1f} ms/disk wall, {sum(per) / len(per) * 1000:.1f} ms/disk "
            f"per process); {size / 2**20:.0f} MiB on disk"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
