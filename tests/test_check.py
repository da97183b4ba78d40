"""`osgtest-dag check`: HTCondor's own condor_submit and condor_dagman validate a run directory.

The tests marked `pool` use the test pool's root (osgtest_dag/devpool/, HTCondor 23.9): its
tools run on the host through the root's own loader, so no pool is started, no chroot is
entered and nothing needs root. They skip when the root is not built (`osgtest-dag pool up`
builds it, as root, in ~2 min). Their run directories are outside /tmp: DAGMan refuses a DAG
whose node log is under /tmp (one of the things `check` reports).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest

SHIPPED_TEMPLATES = Path(__file__).resolve().parent.parent / "submit_templates"
SMALL = """\
platforms: [debian_12.x86_64, debian_13.aarch64]
sources: ['stable; main', 'stable; main > updates']
package_sets:
  - label: Hello
    packages: [hello]
  - label: Other
    packages: [hello, jq]
"""


def _params(base: Path) -> Path:
    d = base / "params"
    d.mkdir(parents=True, exist_ok=True)
    (d / "small.yaml").write_text(SMALL)
    return d


def test_without_htcondor_check_says_it_checked_syntax_only(tmp_path, cli):
    run = tmp_path / "run"
    assert cli("generate", _params(tmp_path), "-o", run).returncode == 0
    # no pool root in this cache, no condor_submit on this PATH
    env = {"OSGTEST_DAG_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    res = cli("check", run, env=env)
    assert res.returncode == 0, res.stderr
    assert "only the syntax was checked" in res.stderr and "HTCondor's tools were not found" in res.stderr
    assert "osgtest-dag pool up" in res.stderr
    assert res.stdout.startswith("ok (syntax only): 2 DAG(s), 37 nodes, 8 submit files")
    res = cli("check", run, "--strict", env=env)
    assert res.returncode == 2 and "error: only the syntax was checked" in res.stderr


# --- with the test pool's HTCondor ------------------------------------------------------------


@pytest.fixture(scope="module")
def pool_tools():
    from osgtest_dag.devpool.inside import pool_tools

    tools = pool_tools()
    if tools is None:
        pytest.skip("the test pool's root is not built (`osgtest-dag pool up` builds it, as root)")
    return tools


@pytest.fixture
def run_home(pool_tools):
    """A directory for run directories outside /tmp, removed afterwards."""
    from osgtest_dag.base import paths

    base = paths.cache_dir() / "test-check"
    base.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(dir=base))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _no_scratch_left(run: Path) -> None:
    assert not [p for p in run.parent.iterdir() if ".check-" in p.name]


@pytest.mark.pool
def test_a_generated_run_passes_htcondors_checks(run_home, cli):
    run = run_home / "run"
    assert cli("generate", _params(run_home), "-o", run).returncode == 0
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    res = cli("check", run)
    assert res.returncode == 0, res.stderr
    assert "ok: 2 DAG(s), 37 nodes, 8 submit files; 36 node submissions (8 submit files)" in res.stdout
    assert "condor_submit -dry-run and 2 DAG(s) by condor_dagman -DryRun, HTCondor 23.9." in res.stdout
    assert "test pool's root" in res.stdout
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # the run is not written
    _no_scratch_left(run)


@pytest.mark.pool
def test_a_bogus_universe_in_a_template_override_is_refused_with_htcondors_message(run_home, cli):
    templates = run_home / "templates"
    templates.mkdir()
    text = (SHIPPED_TEMPLATES / "test-run.sub.j2").read_text()
    assert "universe                = vm\n" in text
    (templates / "test-run.sub.j2").write_text(
        text.replace("universe                = vm\n", "universe = bogus\n")
    )
    run = run_home / "run"
    res = cli("generate", _params(run_home), "-o", run, "--template-dir", templates)
    assert res.returncode == 0, res.stderr  # the bindings' parser takes any universe
    res = cli("check", run)
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"{run}/submit/test-run.sub (node TestRun000)" in res.stderr
    assert "ERROR: I don't know about the 'bogus' universe." in res.stderr
    assert "1 error(s) found by HTCondor's tools" in res.stderr
    _no_scratch_left(run)


@pytest.mark.pool
def test_a_failing_node_is_named_among_its_batch(run_home, cli):
    """One node's VARS make its submission fail: the batch is narrowed down to that node."""
    run = run_home / "run"
    assert cli("generate", _params(run_home), "-o", run).returncode == 0
    dag = run / "matrix.dag"
    text = dag.read_text()
    assert 'vm_memory="2048"' in text
    lines = [
        ln.replace('vm_memory="2048"', 'vm_memory="lots"') if ln.startswith("VARS TestRun005 ") else ln
        for ln in text.splitlines(keepends=True)
    ]
    dag.write_text("".join(lines))
    res = cli("check", run)
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"{run}/submit/test-run.sub (node TestRun005) (and possibly more of its 8 nodes): " in res.stderr
    assert "ERROR: vm_memory is incorrectly specified" in res.stderr
    _no_scratch_left(run)


@pytest.mark.pool
def test_a_dag_error_is_caught_by_dagmans_dry_run(run_home, cli):
    run = run_home / "run"
    assert cli("generate", _params(run_home), "-o", run).returncode == 0
    dag = run / "matrix.dag"
    text = dag.read_text()
    assert "NODE_STATUS_FILE matrix.status 30\n" in text
    dag.write_text(
        text.replace("NODE_STATUS_FILE matrix.status 30\n", "NODE_STATUS_FILE matrix.status often\n")
    )
    res = cli("check", run)
    assert res.returncode == 2, res.stdout + res.stderr
    assert f'{run}/matrix.dag: error: ERROR: matrix.dag (line 3): Invalid min update time value "often"' in (
        res.stderr
    )
    _no_scratch_left(run)


@pytest.mark.pool
def test_a_run_under_tmp_is_refused_as_dagman_would(tmp_path, pool_tools, cli):
    run = tmp_path / "run"
    assert cli("generate", _params(tmp_path), "-o", run).returncode == 0
    res = cli("check", run)
    assert res.returncode == 2
    assert f"default node log file {run}/./workflow.dag.nodes.log is in /tmp" in res.stderr


@pytest.mark.pool
def test_check_of_the_nightly_fixture_is_fast(params_d, run_home, pool_tools):
    """Every node of the 1,564-cell fixture run (6,260 submissions) in a handful of
    condor_submit runs."""
    from osgtest_dag.engine.condor.dryrun import dry_run
    from osgtest_dag.generate.workflow import write_run
    from osgtest_dag.model.manifest import WorkflowOptions
    from osgtest_dag.plan import matrix
    from osgtest_dag.plan.catalog import Catalog

    catalog = Catalog.load(image_dir="/images")
    m = matrix.build([params_d], catalog)
    run = write_run(
        run_home / "nightly", list(m.cells), catalog, WorkflowOptions(), param_files=list(m.files)
    )
    t0 = time.monotonic()
    report = dry_run(run, pool_tools)
    seconds = time.monotonic() - t0
    assert report.errors == ()
    assert report.nodes == 4 * 1564 + 4 and report.submit_files == 8 and report.dags == 2
    assert report.tool_runs == 8 + 2  # one condor_submit per submit file, one condor_dagman per DAG
    print(f"dry run of the 1,564-cell run: {seconds:.1f} s, {report.tool_runs} tool runs")
    assert seconds < 60
