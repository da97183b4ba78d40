"""Record vm-test-runs' own matrix expansion of each of its parameter sets, for
tests/test_reference_params.py.

Usage: python3 record_expansion.py REFERENCE_CHECKOUT OUT_DIR

Runs the reference's bin/generate-dag unchanged (with its bin/vmu.py and PyYAML) on each
parameter set of the checkout: parameters.d, parameters.d-prerelease and every
parameters.d-promotion/<package>. The only thing it cannot do here is find its base images
under /staging/osg-images, so that existence check answers yes. From the test-run.dag it
writes, OUT_DIR/<set>.tsv.gz (gzip without a time stamp, so a re-run is byte-identical)
records one line per cell: serial, platform, sources, packages (the reference's list, with
the /usr/sbin/semanage it appends for SELinux), tab-separated.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Runs generate-dag as its own __main__ in a child Python, images reported present.
RUNNER = """
import os, runpy, sys
real_exists = os.path.exists
os.path.exists = lambda p: str(p).startswith("/staging/osg-images/") or real_exists(p)
sys.path.insert(0, os.path.dirname(sys.argv[1]))
script, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""

FRAGMENT = re.compile(
    r"^# Nodes (?P<serial>\d+)\n# Platform: (?P<platform>.*)\n# Sources: (?P<sources>.*)\n"
    r"# Packages: (?P<packages>.*)\n",
    re.MULTILINE,
)


def parameter_sets(checkout: Path) -> dict[str, Path]:
    sets = {
        "parameters.d": checkout / "parameters.d",
        "parameters.d-prerelease": checkout / "parameters.d-prerelease",
    }
    for d in sorted((checkout / "parameters.d-promotion").iterdir()):
        sets[f"parameters.d-promotion/{d.name}"] = d
    return sets


def expansion(checkout: Path, param_dir: Path) -> list[tuple[str, ...]]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "bin").mkdir()
        for name in ("generate-dag", "vmu.py"):
            shutil.copy(checkout / "bin" / name, root / "bin" / name)
        shutil.copy(checkout / "osg-test.conf", root / "osg-test.conf")
        (root / "run_label").write_text("recorded\n")
        run = root / "run"
        run.mkdir()
        subprocess.run(
            [sys.executable, "-c", RUNNER, str(root / "bin" / "generate-dag"), str(param_dir)],
            cwd=run,
            check=True,
            env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"),
        )
        dag = (run / "test-run.dag").read_text()
    return [(m["serial"], m["platform"], m["sources"], m["packages"]) for m in FRAGMENT.finditer(dag)]


def main() -> None:
    checkout, out = Path(sys.argv[1]), Path(sys.argv[2])
    for name, param_dir in parameter_sets(checkout).items():
        rows = expansion(checkout, param_dir)
        path = out / f"{name.replace('/', '--')}.tsv.gz"
        text = "".join("\t".join(r) + "\n" for r in rows)
        with open(path, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as z:
            z.write(text.encode())
        print(f"{name}: {len(rows)} cells -> {path}")


if __name__ == "__main__":
    main()
