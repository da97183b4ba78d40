"""Shared test fixtures. Sections: paths and catalogs; guest fixtures (images, disks, VMs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT.parent / "shared" / "fixtures" / "vm-test-runs"
PARAMS_D = FIXTURES / "parameters.d"


@pytest.fixture(scope="session")
def params_d() -> Path:
    if not PARAMS_D.is_dir():
        pytest.fail(f"the shared fixtures are missing: {PARAMS_D}")
    return PARAMS_D


@pytest.fixture(scope="session")
def catalog():
    from osgtest_dag.catalog import Catalog
    return Catalog.load(image_dir="/images")


@pytest.fixture
def cli(tmp_path):
    """Run the real console script in a subprocess: exit code, stdout, stderr."""
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "osgtest-dag"

    def run(*args, cwd=None, env=None):
        full_env = dict(os.environ, OSGTEST_DAG_IMAGES="/images")
        full_env.update(env or {})
        return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True,
                              cwd=cwd or tmp_path, env=full_env, timeout=600)
    return run
