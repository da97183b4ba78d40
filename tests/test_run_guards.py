"""What `run`, `watch`, `generate`, `check`, `submit`, `rerun` and `cleanup` refuse or report
before and after a run: missing base images, the run-directory lock, truthful exit codes.
No VM boots: runs are generated for real, their evidence recorded as a finished run leaves it
(as test_agreement.py does)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ResultsRun, condor_cli

from osgtest_dag.base.errors import UserError
from osgtest_dag.engine.condor.condor import submit_run
from osgtest_dag.generate import workflow
from osgtest_dag.model import dagfile, runlock
from osgtest_dag.model.joblog import read_job_log
from osgtest_dag.model.outcome import Outcome, RunExit, run_exit
from osgtest_dag.model.rundir import MATRIX_DAG, OUTER_DAG, RunDir
from osgtest_dag.plan import matrix
from osgtest_dag.plan.catalog import Catalog

CONDOR_DATA = Path(__file__).resolve().parent / "data" / "condor" / "shaped"

PARAMS = """\
platforms: [debian_12.x86_64]
sources: ['stable; main']
package_sets:
  - label: Hello
    packages: [hello]
    selinux: false
    test_command: hello
  - label: Other
    packages: [hello]
    selinux: false
    test_command: hello --version
"""
BUILD = "osgtest-dag image build debian_12.x86_64"


def _params(tmp_path: Path) -> Path:
    p = tmp_path / "params"
    p.mkdir(exist_ok=True)
    (p / "m.yaml").write_text(PARAMS)
    return p


def _run_dir(tmp_path: Path, images: Path, name: str = "run", tool: str = "/opt/osgtest-dag") -> Path:
    cat = Catalog.load(image_dir=images)
    m = matrix.build([_params(tmp_path)], cat)
    return workflow.write_run(
        tmp_path / name,
        list(m.cells),
        cat,
        workflow.WorkflowOptions(tool=tool),
        param_files=list(m.files),
    )


# ------------------------------------------------------------------------------ exit codes
@pytest.mark.parametrize(
    ("outcomes", "code"),
    [
        (["pass"], RunExit.ACCEPTABLE),
        (["pass", "waived", "cleanup"], RunExit.ACCEPTABLE),
        (["pass", "fail"], RunExit.PRODUCT_FAILURE),
        (["install", "update", "waived"], RunExit.PRODUCT_FAILURE),
        (["fail", "timeout"], RunExit.NO_VERDICT),
        (["pass", "infra"], RunExit.NO_VERDICT),
        (["pass", "missing"], RunExit.NO_VERDICT),
        ([], RunExit.NO_VERDICT),
    ],
)
def test_exit_code_of_outcomes(outcomes, code):
    assert run_exit(Outcome(o) for o in outcomes) is code


def test_a_failed_workflow_is_no_verdict_whatever_the_cells():
    assert run_exit([Outcome.PASS], workflow_ok=False) is RunExit.NO_VERDICT
    assert RunExit.USAGE == 2  # what UserError exits with


def _finished_locally(run: Path, pending: tuple[str, ...] = ()) -> None:
    """Every node of both DAGs but `pending` done in the local executor's state: `run` has
    nothing left to do but those nodes and read the outcomes (from the evidence, when Analyze
    did not run)."""
    for dag in (OUTER_DAG, MATRIX_DAG):
        nodes = dagfile.parse(run / dag).nodes
        state = {
            "schema": "osgtest-dag/local-state",
            "version": 1,
            "nodes": {
                n: {"status": "pending" if n in pending else "done", "retries": 0, "attempts": []}
                for n in nodes
            },
        }
        (run / f"{dag}.local-state.json").write_text(json.dumps(state))


@pytest.mark.parametrize(
    ("second", "code"),
    [("pass", 0), ("test", 1), ("network", 3)],
)
def test_run_exits_with_the_outcomes_of_its_cells(tmp_path, cli, second, code):
    images = tmp_path / "images"
    images.mkdir()
    (images / "debian_12.x86_64.qcow2").write_bytes(b"")  # present; never booted here
    run = _run_dir(tmp_path, images)
    r = ResultsRun(run)
    hello, other = r.serial("debian_12.x86_64", "Hello"), r.serial("debian_12.x86_64", "Other")
    r.guest(hello, "pass")
    r.guest(other, second)
    _finished_locally(run)
    res = cli("run", run, "--no-progress")
    assert res.returncode == code, res.stdout + res.stderr
    assert {"pass": "2 pass", "test": "1 fail", "network": "1 infra"}[second] in res.stdout


def test_watch_exits_with_the_outcomes_of_its_cells(tmp_path):
    run = _run_dir(tmp_path, tmp_path / "images")
    r = ResultsRun(run)
    r.guest(r.serial("debian_12.x86_64", "Hello"), "pass")
    r.guest(r.serial("debian_12.x86_64", "Other"), "install")
    RunDir(run).dag_file(OUTER_DAG, ".metrics").write_text(json.dumps({"exitcode": 0}))
    res = condor_cli("watch", run, "--interval", "0.1")
    assert res.exit_code == RunExit.PRODUCT_FAILURE, res.output
    shutil.rmtree(RunDir(run).cell(r.serial("debian_12.x86_64", "Other")).path)
    res = condor_cli("watch", run, "--interval", "0.1")
    assert res.exit_code == RunExit.NO_VERDICT, res.output  # a cell without a result


def test_exit_codes_are_in_the_help_and_the_readme(cli):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for cmd in ("run", "watch"):
        out = cli(cmd, "--help").stdout
        for line in ("0  every cell passed", "1  product failures", "3  a cell without a verdict"):
            assert line in out, (cmd, out)
    assert "(`timeout`, `infra`, `missing`)" in readme and "Exit codes of `run` and `watch`" in readme


# ------------------------------------------------------------------------------ missing images
def test_missing_base_image_is_refused_up_front(tmp_path, cli):
    images = tmp_path / "images"
    images.mkdir()
    env = {"OSGTEST_DAG_IMAGES": str(images)}
    run = tmp_path / "run"
    res = cli("generate", _params(tmp_path), "-o", run, env=env)
    assert res.returncode == 0, res.stderr
    assert f"build it with `{BUILD}`" in res.stderr
    # without HTCondor's tools (no pool root in this cache): DAGMan refuses a run under /tmp
    res = cli("check", run, env={**env, "OSGTEST_DAG_CACHE": str(tmp_path / "cache")})
    assert res.returncode == 0, res.stderr
    assert BUILD in res.stderr

    t0 = time.monotonic()
    res = cli("run", run, "--no-progress", env=env)
    assert res.returncode == 2, res.stdout + res.stderr
    assert time.monotonic() - t0 < 30
    assert f"`{BUILD}`" in res.stderr and "--build-images" in res.stderr
    assert not (run / f"{OUTER_DAG}.local-state.json").exists()  # nothing ran


def test_generate_for_another_host_does_not_warn(tmp_path, cli):
    res = cli(
        "generate", _params(tmp_path), "-o", tmp_path / "run", env={"OSGTEST_DAG_IMAGES": "/nonexistent"}
    )
    assert res.returncode == 0, res.stderr
    assert "image build" not in res.stderr


def test_a_store_elsewhere_is_named_in_the_command(tmp_path):
    run = _run_dir(tmp_path, tmp_path / "elsewhere")
    from osgtest_dag.generate.cellconfig import missing_images

    [m] = missing_images(run)
    assert m.build_command == f"{BUILD} --store {tmp_path / 'elsewhere'}"


def test_submit_refuses_a_missing_base_image(tmp_path):
    run = _run_dir(tmp_path, tmp_path / "images")
    with pytest.raises(UserError, match="image build debian_12.x86_64") as e:
        submit_run(run)  # refused before any schedd is asked
    assert "cannot submit" in str(e.value)
    assert not RunDir(run).submission.exists()


# ------------------------------------------------------------------------------ the lock
HOLD = """\
import sys, time
from osgtest_dag.model import runlock
from osgtest_dag.model.rundir import RunDir
with runlock.locked(RunDir(sys.argv[1]), "osgtest-dag run"):
    print("held", flush=True)
    time.sleep(120)
"""


def _hold(run: Path) -> subprocess.Popen:
    """A process holding the run directory with the real lock code, as `run` does."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def test_a_run_directory_in_use_is_refused(tmp_path, cli):
    root = tmp_path / "runs"
    root.mkdir()
    run = _run_dir(root, tmp_path / "images", name="run")
    shutil.move(str(root / "params"), tmp_path / "params")
    holder = _hold(run)
    try:
        who = f"pid {holder.pid}, `osgtest-dag run`"
        res = cli("generate", tmp_path / "params", "-o", run, "--force")
        assert res.returncode == 2, res.stderr
        assert who in res.stderr and "osgtest-dag generate --force" in res.stderr
        assert RunDir(run).cell_store.is_file()  # untouched

        res = cli("run", run, "--no-progress")
        assert res.returncode == 2 and who in res.stderr, res.stderr

        (run / "cells.jsonl").read_text()
        res = cli("rerun", run, "-o", run.with_name("other"), "--outcome", "missing")
        assert res.returncode == 0, res.stderr  # reading a run in use is fine
        res = cli("rerun", run.with_name("other"), "-o", run, "--outcome", "missing", "--force")
        assert res.returncode == 2 and who in res.stderr, res.stderr

        res = cli("cleanup", root, "--keep-at-least", "0", "--max-usage", "0.0001", "--yes")
        assert res.returncode == 0, res.stderr
        assert f"kept {run}: in use by {who}" in res.stdout
        assert run.is_dir()
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: the lock is stale and the next command takes it over
    res = cli("generate", tmp_path / "params", "-o", run, "--force")
    assert res.returncode == 0, res.stderr


def test_a_stale_lock_of_a_killed_process_is_taken_over(tmp_path, caplog):
    run = _run_dir(tmp_path, tmp_path / "images")
    holder = _hold(run)
    assert runlock.holder(RunDir(run)).pid == holder.pid
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert f'"pid": {holder.pid}' in RunDir(run).lock.read_text()  # its record is still there
    assert runlock.holder(RunDir(run)) is None
    with runlock.locked(RunDir(run), "osgtest-dag run") as me:
        assert me.pid == os.getpid()
        assert runlock.holder(RunDir(run)) == me  # the record is ours now
    assert f"stale lock of pid {holder.pid}" in caplog.text and "its process is gone" in caplog.text
    assert RunDir(run).lock.read_text() == ""  # released


def _submitted(run: Path, log: str) -> None:
    layout = RunDir(run)
    shutil.copy(CONDOR_DATA / log / "workflow.dag.dagman.log", layout.dag_file(OUTER_DAG, ".dagman.log"))
    cluster = read_job_log(layout.dag_file(OUTER_DAG, ".dagman.log"))[0].cluster
    layout.submission.write_text(
        json.dumps({"cluster": cluster, "submitted": "2026-11-30T12:00:00Z", "schedd": "s1"})
    )


def test_a_directory_dagman_runs_is_in_use_until_its_job_ends(tmp_path):
    run = _run_dir(tmp_path, tmp_path / "images")
    _submitted(run, "held")  # a held DAGMan job is not finished
    h = runlock.holder(RunDir(run))
    assert h is not None and h.cluster is not None and "DAGMan job" in h.describe() and "(s1)" in h.describe()
    with (
        pytest.raises(runlock.RunDirInUse, match="DAGMan job"),
        runlock.locked(RunDir(run), "osgtest-dag run"),
    ):
        pass
    _submitted(run, "finished")
    assert runlock.holder(RunDir(run)) is None
    with runlock.locked(RunDir(run), "osgtest-dag run"):
        pass


SLOW_TOOL = """#!/bin/sh
# the Analyze node of a run under test: says it started, waits to be let go
touch "$STARTED"
for i in $(seq 600); do [ -e "$RELEASE" ] && exit 0; sleep 0.1; done
exit 1
"""


def test_a_real_run_holds_its_directory(tmp_path, cli):
    root = tmp_path / "runs"
    root.mkdir()
    images = tmp_path / "images"
    images.mkdir()
    (images / "debian_12.x86_64.qcow2").write_bytes(b"")
    tool = tmp_path / "slow-tool"
    tool.write_text(SLOW_TOOL)
    tool.chmod(0o755)
    run = _run_dir(root, images, tool=str(tool))
    shutil.move(str(root / "params"), tmp_path / "params")
    r = ResultsRun(run)
    for c in r.cells:
        r.guest(c["serial"], "pass")
    _finished_locally(run, pending=("Analyze", "Report", "Publish"))
    started, release = tmp_path / "started", tmp_path / "release"
    env = dict(os.environ, STARTED=str(started), RELEASE=str(release), OSGTEST_DAG_IMAGES=str(images))
    exe = Path(sys.executable).parent / "osgtest-dag"
    p = subprocess.Popen(
        [str(exe), "run", str(run), "--no-progress"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not started.exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert started.exists(), p.communicate()
        who = f"pid {p.pid}, `osgtest-dag run`"
        res = cli("generate", tmp_path / "params", "-o", run, "--force", "--image-dir", images)
        assert res.returncode == 2 and who in res.stderr, res.stderr
        res = cli("cleanup", root, "--keep-at-least", "0", "--max-usage", "0.0001", "--yes")
        assert res.returncode == 0 and f"kept {run}: in use by {who}" in res.stdout, res.stdout + res.stderr
        release.touch()
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, out + err  # the run finished with its cells' results
    assert all(RunDir(run).cell(c["serial"]).guest_result.is_file() for c in r.cells)
    assert RunDir(run).lock.read_text() == ""  # and let go of the directory


def test_build_images_refuses_an_image_the_store_cannot_make(tmp_path):
    from osgtest_dag.guest.image import MissingImage, build_missing

    odd = MissingImage("debian_12.x86_64", tmp_path / "my-debian.img")
    assert not odd.buildable and "put the image there" in odd.describe()
    with pytest.raises(UserError, match="not the image store's name"):
        build_missing([odd])
