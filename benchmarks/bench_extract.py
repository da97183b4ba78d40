"""Extraction benchmark: 50 result disks, batched (one libguestfs appliance for all of them)
against the baseline "one appliance per disk" (what the reference tool does: launch, read one
disk, shut down), in one run, on the same disks.

Each disk looks like a real payload output: result.json, the phase logs, package lists, the
journal and two tarballs (~1.2 MB, 16 files). Both ways use extract.extract_disks with the same
limits, so the only difference is the number of appliance launches.

Run it under the VM lock (libguestfs boots an appliance VM):

    flock /tmp/osgtest-vm.lock .venv/bin/python benchmarks/bench_extract.py [--disks 50]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from osgtest_dag.analyze import extract  # noqa: E402
from osgtest_dag.base import command  # noqa: E402

PHASES = ("environment", "network", "hostname", "repositories", "install", "test", "update", "collect")


def make_disk(dest: Path, serial: str, work: Path) -> Path:
    rnd = random.Random(serial)
    tree = work / f"tree-{serial}"
    out = tree / "output"
    out.mkdir(parents=True)
    phases = [
        {
            "name": p,
            "start": "2026-11-21T22:00:00Z",
            "end": "2026-11-21T22:01:00Z",
            "exit_code": 0,
            "status": "ok",
            "log": f"{p}.log",
        }
        for p in PHASES
    ]
    (out / "result.json").write_text(
        json.dumps(
            {
                "schema": "osgtest-dag/guest-result",
                "version": 1,
                "serial": serial,
                "phases": phases,
                "status": "pass",
                "exit_code": 0,
            }
        )
    )
    (out / "exit-status").write_text("0\n")
    for p in PHASES:
        lines = [
            f"[{i:05d}] {p}: " + "".join(rnd.choice("abcdefghij ") for _ in range(70)) for i in range(400)
        ]
        (out / f"{p}.log").write_text("\n".join(lines) + "\n")
    pk = "".join(f"package-{i}\t1.{i}-{rnd.randint(1, 9)}.el9\tx86_64\n" for i in range(900))
    (out / "packages-start.txt").write_text(pk)
    (out / "packages-end.txt").write_text(pk + "osg-xrootd\t24-1.el9\tx86_64\n")
    (out / "journal.txt").write_text(
        "".join(f"Nov 21 22:00:{i % 60:02d} host kernel: line {i}\n" for i in range(6000))
    )
    (out / "var-log.tar.gz").write_bytes(os.urandom(150_000))
    (out / "etc.tar.gz").write_bytes(os.urandom(20_000))
    raw = work / f"{serial}.raw"
    command.run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            extract.IO_LABEL,
            "-m",
            "0",
            "-E",
            "root_owner=0:0",
            "-d",
            tree,
            raw,
            "16M",
        ]
    )
    disk = dest / f"result-{serial}.qcow2"
    command.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, disk])
    raw.unlink()
    shutil.rmtree(tree)
    return disk


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--disks", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        work = Path(tmp)
        disks_dir = work / "disks"
        disks_dir.mkdir()
        t0 = time.monotonic()
        disks = [make_disk(disks_dir, f"{i:03d}", work) for i in range(args.disks)]
        print(f"made {len(disks)} disks in {time.monotonic() - t0:.1f} s")

        def check(reports, out: Path) -> None:
            bad = [r for r in reports if not r["ok"] or r["files"] != 15 or r["skipped_count"]]
            assert not bad, bad[:2]
            assert all((out / d.stem / "output" / "result.json").is_file() for d in disks)

        out_b = work / "batched"
        t0 = time.monotonic()
        reports = extract.extract_disks([extract.ExtractJob(d, out_b / d.stem / "output") for d in disks])
        batched = time.monotonic() - t0
        check(reports, out_b)
        print(f"batched (one appliance):      {batched:7.1f} s  {args.disks / batched:6.2f} disks/s")

        out_s = work / "single"
        t0 = time.monotonic()
        reports = []
        for d in disks:
            reports += extract.extract_disks([extract.ExtractJob(d, out_s / d.stem / "output")])
        single = time.monotonic() - t0
        check(reports, out_s)
        print(f"one appliance per disk:       {single:7.1f} s  {args.disks / single:6.2f} disks/s")
        print(f"speed-up: {single / batched:.1f}x  (target >= 10x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
