"""Generation benchmark: parameter files -> run directory, at the nightly size and beyond.

Baseline (same process): the reference tool's expansion (vm-test-runs' generate-dag: list
membership de-duplication, which is quadratic) on the same inputs, where it finishes in
reasonable time. Each size of ours runs in a fresh subprocess so its peak memory (ru_maxrss)
is its own.

    .venv/bin/python benchmarks/bench_generate.py [--sizes 20000,100000]
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT.parent / "shared" / "fixtures" / "vm-test-runs" / "parameters.d"
PLATFORMS = [
    f"{os}.{arch}"
    for os in (
        "alma_8",
        "alma_9",
        "alma_10",
        "rocky_8",
        "rocky_9",
        "rocky_10",
        "centos_stream_9",
        "centos_stream_10",
    )
    for arch in ("x86_64", "aarch64")
]


def synthetic(dest: Path, cells: int) -> Path:
    """One parameter file with len(PLATFORMS) x S x P ~= cells."""
    plats = PLATFORMS
    per = cells // len(plats)
    n_sources = 50
    n_sets = max(1, per // n_sources)
    doc = {
        "platforms": plats,
        "sources": [f"acct{i}:master; 24; osg, osg-testing > osg-upcoming" for i in range(n_sources)],
        "package_sets": [
            {"label": f"Set {j}", "packages": [f"pkg-{j}-a", f"pkg-{j}-b"]} for j in range(n_sets)
        ],
    }
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "synthetic.yaml").write_text(yaml.safe_dump(doc))
    return dest


def reference_expand(param_dir: Path) -> int:
    """The reference's loop: `if combo not in run_combos` on a list."""
    combos = []
    for f in reversed(sorted(glob.glob(f"{param_dir}/*"))):
        data = yaml.safe_load(open(f))
        sets = [(ps["label"], tuple(ps["packages"])) for ps in data["package_sets"]]
        for combo in itertools.product(data["platforms"], data["sources"], sets):
            if combo not in combos:
                combos.append(combo)
    return len(combos)


def ours_in_subprocess(param_dir: Path, out: Path) -> dict:
    code = f"""
import json, resource, time, sys
t0 = time.perf_counter()
from osgtest_dag.plan import matrix
from osgtest_dag.generate import workflow
from osgtest_dag.plan.catalog import Catalog
cat = Catalog.load(image_dir="/images")
m = matrix.build([{str(param_dir)!r}], cat)
t1 = time.perf_counter()
workflow.write_run({str(out)!r}, list(m.cells), cat, workflow.WorkflowOptions(tool="/usr/bin/osgtest-dag"),
                   param_files=list(m.files))
t2 = time.perf_counter()
print(json.dumps({{"cells": len(m.cells), "expand_s": t1 - t0, "write_s": t2 - t1, "total_s": t2 - t0,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="20000,100000")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    try:
        rows = []
        inputs = [("fixture (nightly)", FIXTURE)]
        inputs += [
            (f"synthetic {int(n):,}", synthetic(work / f"p{n}", int(n))) for n in args.sizes.split(",")
        ]
        for name, pdir in inputs:
            r = ours_in_subprocess(pdir, work / f"run-{len(rows)}")
            shutil.rmtree(work / f"run-{len(rows)}")
            rows.append((name, pdir, r))
            print(
                f"{name:<22} {r['cells']:>7} cells  expand {r['expand_s']:6.2f} s  write {r['write_s']:6.2f} s"
                f"  total {r['total_s']:6.2f} s  peak {r['peak_mib']:6.0f} MiB",
                flush=True,
            )
        # Baseline: the reference expansion alone (no files written) on the fixture and a 5k set.
        print("\nbaseline: reference expansion (list de-duplication), same process")
        for name, pdir in [
            ("fixture (nightly)", FIXTURE),
            ("synthetic 5,000", synthetic(work / "p5k", 5000)),
            ("synthetic 20,000", synthetic(work / "p20k", 20000)),
        ]:
            t0 = time.perf_counter()
            n = reference_expand(pdir)
            ref_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            from osgtest_dag.plan import matrix
            from osgtest_dag.plan.catalog import Catalog

            ours_n = len(matrix.build([pdir], Catalog.load(image_dir="/images")).cells)
            ours_s = time.perf_counter() - t0
            assert n == ours_n, (n, ours_n)
            print(
                f"{name:<22} {n:>7} cells  reference {ref_s:7.3f} s  ours {ours_s:7.3f} s"
                f"  ratio {ref_s / ours_s:6.1f}x"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"(this process peak: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
