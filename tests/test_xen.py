"""`generate --vm-type xen`: the VM job's submit description as HTCondor's manual asks of a Xen
job (xen_kernel, xvd* disks), read by HTCondor's own parser, by the local executor, and by the
real `condor_submit -dry-run` of the test pool's root."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import htcondor2
import pytest

from osgtest_dag.engine.local.submit import read_job
from osgtest_dag.generate import workflow
from osgtest_dag.model import dagfile
from osgtest_dag.plan import matrix
from osgtest_dag.plan.catalog import Catalog

PARAMS = """\
platforms: [debian_12.x86_64]
sources: ['stable; main']
package_sets:
  - {label: Hello, packages: [hello]}
"""


def _run(base: Path, vm_type: str, name: str = "run") -> Path:
    """A one-cell run directory `base/name` with VM jobs of `vm_type`."""
    (base / "p").mkdir(parents=True, exist_ok=True)
    (base / "p" / "p.yaml").write_text(PARAMS)
    catalog = Catalog.load(image_dir="/images")
    m = matrix.build([base / "p"], catalog)
    opts = workflow.WorkflowOptions(vm_type=vm_type)
    return workflow.write_run(base / name, list(m.cells), catalog, opts, param_files=list(m.files))


def _vm_submit(run: Path) -> htcondor2.Submit:
    """test-run.sub with cell 000's VARS, as DAGMan submits it."""
    sub = htcondor2.Submit((run / "submit" / "test-run.sub").read_text())
    for k, v in dagfile.parse(run / "matrix.dag").nodes["TestRun000"].vars.items():
        sub[k] = v
    return sub


def test_a_xen_job_names_its_kernel_and_xen_disks(tmp_path):
    xen, kvm = _vm_submit(_run(tmp_path / "xen", "xen")), _vm_submit(_run(tmp_path / "kvm", "kvm"))
    assert (xen["vm_type"], xen["xen_kernel"]) == ("xen", "included")
    # the base image, the IO disk, the scratch disk (the default profile's disk is larger than the image)
    assert xen.expand("vm_disk") == (
        "debian_12.x86_64.qcow2:xvda:w:qcow2,io-000.qcow2:xvdb:w:qcow2,scratch-000.qcow2:xvdc:w:qcow2"
    )
    assert kvm["vm_type"] == "kvm" and "xen_kernel" not in kvm
    assert kvm.expand("vm_disk") == (
        "debian_12.x86_64.qcow2:vda:w:qcow2,io-000.qcow2:vdb:w:qcow2,scratch-000.qcow2:vdc:w:qcow2"
    )
    # everything else is the same job
    others = set(kvm.keys()) - {"vm_type", "vm_disk", "scratch_vm_disks"}
    assert set(xen.keys()) == others | {"vm_type", "vm_disk", "scratch_vm_disks", "xen_kernel"}
    assert {k: xen.expand(k) for k in others} == {k: kvm.expand(k) for k in others}


def test_the_local_executor_reads_a_xen_job_as_its_disks_in_order(tmp_path):
    run = _run(tmp_path, "xen")
    node = dagfile.parse(run / "matrix.dag").nodes["TestRun000"]
    spec = read_job(run / "submit" / "test-run.sub", node.vars, run, node_name=node.name)
    # the VM job boots the first disk and attaches the others after it, whatever their names
    assert spec.universe == "vm"
    assert spec.vm_disks == (
        ("debian_12.x86_64.qcow2", "xvda", "w", "qcow2"),
        ("io-000.qcow2", "xvdb", "w", "qcow2"),
        ("scratch-000.qcow2", "xvdc", "w", "qcow2"),
    )
    assert spec.transfer_input_files == (
        "/images/debian_12.x86_64.qcow2",
        "io-000.qcow2",
        "scratch-000.qcow2",
    )


@pytest.fixture
def pool_tools():
    from osgtest_dag.devpool.inside import pool_tools

    tools = pool_tools()
    if tools is None:
        pytest.skip("the test pool's root is not built (`osgtest-dag pool up` builds it, as root)")
    return tools


@pytest.fixture
def run_home(pool_tools):
    """Run directories outside /tmp (DAGMan refuses a node log under /tmp), removed afterwards."""
    from osgtest_dag.base import paths

    base = paths.cache_dir() / "test-check"
    base.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(dir=base))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_a_xen_run_passes_condor_submits_dry_run(run_home, pool_tools):
    """The test pool's HTCondor run from its root on the host: no pool is started."""
    from osgtest_dag.engine.condor.dryrun import dry_run

    report = dry_run(_run(run_home, "xen"), pool_tools)
    assert not report.errors, "\n".join(map(str, report.errors))
    assert report.nodes == 8
    # without xen_kernel, HTCondor refuses the Xen job: the check above can fail
    run = _run(run_home, "xen", "no-kernel")
    sub = run / "submit" / "test-run.sub"
    text = sub.read_text()
    assert "xen_kernel              = included\n" in text
    sub.write_text(text.replace("xen_kernel              = included\n", ""))
    report = dry_run(run, pool_tools)
    assert [f.message for f in report.errors] == ["ERROR: 'xen_kernel' cannot be found."]
