"""Local executor overhead: a whole generated run vs plain qemu boots of the same disks.

Baseline, named "plain qemu": the same cells' IO disks (made by the same function), booted
with qemu.boot at the same concurrency, each returned disk read once. Ours: `run_local` on
the generated run directory — CreateDisk, TestRun (+ POST classification and extraction),
ProcessResult, CleanOutput, FINAL, Analyze, Report. Both in this process, same cells.

    .venv/bin/python benchmarks/bench_executor.py [--cells 4] [-j 2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from pathlib import Path

from osgtest_dag.base.paths import default_image_dir
from osgtest_dag.engine.local.localrun import run_local
from osgtest_dag.generate import cellconfig, workflow
from osgtest_dag.guest import image, qemu
from osgtest_dag.nodes import node
from osgtest_dag.plan import matrix
from osgtest_dag.plan.catalog import Catalog

PARAMS = """\
platforms: [debian_12.x86_64]
sources: ['stable; main']
package_sets:
{sets}
vm: {{memory: 1024, vcpus: 2}}
"""


def make_run(work: Path, cells: int, name: str) -> Path:
    p = work / f"params-{name}"
    p.mkdir()
    # distinct package lists per label are required: vary them harmlessly
    sets = "\n".join(
        f"  - {{label: 'Set {i}', packages: [base-files{', coreutils' * (i % 2)}{', bash' * (i // 2)}],"
        f" selinux: false, test_command: 'true'}}"
        for i in range(cells)
    )
    (p / "b.yaml").write_text(PARAMS.format(sets=sets))
    cat = Catalog.load(image_dir=default_image_dir())
    m = matrix.build([p], cat)
    return workflow.write_run(
        work / name, list(m.cells), cat, workflow.WorkflowOptions(), param_files=list(m.files)
    )


def plain_qemu(run: Path, jobs: int, base: Path) -> float:
    serials = [c["serial"] for c in cellconfig.iter_cells(run)]
    t0 = time.perf_counter()
    sem = threading.Semaphore(jobs)

    def one(serial: str) -> None:
        with sem:
            disk = node.create_io_disk(run, serial)
            d = run / "cells" / serial
            res = qemu.boot(
                base,
                [qemu.Disk(disk, "qcow2")],
                memory_mb=1024,
                vcpus=2,
                networking=True,
                timeout_s=900,
                console_log=d / "console.log",
                workdir=d / "scratch",
            )
            assert res.ok, res
            node.read_guest_result(disk, d / "staging")

    threads = [threading.Thread(target=one, args=(s,)) for s in serials]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=4)
    ap.add_argument("-j", "--jobs", type=int, default=2)
    args = ap.parse_args()
    base = image.build_image("debian_12.x86_64", default_image_dir(), builder="local").image.path
    qemu.detect_accel()
    work = Path(tempfile.mkdtemp(prefix="bench-executor-"))
    try:
        run_b = make_run(work, args.cells, "baseline")
        run_o = make_run(work, args.cells, "ours")
        t_base = plain_qemu(run_b, args.jobs, base)
        r = run_local(run_o, jobs=args.jobs, progress=False)
        assert r.ok
        t_ours = r.wall_s
        print(f"{args.cells} cells, -j {args.jobs}, accel {qemu.detect_accel()}")
        print(f"plain qemu (baseline): {t_base:7.1f} s")
        print(f"local executor:        {t_ours:7.1f} s")
        print(
            f"overhead: {t_ours - t_base:+.1f} s = {(t_ours - t_base) / t_ours * 100:.1f}% of the executor's wall time"
            f" (ratio {t_ours / t_base:.3f})"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
