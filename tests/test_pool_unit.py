"""Parts of the test pool that need neither root nor a running pool: the libvirt XML script,
the configuration, the client settings, the errors."""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
from conftest import condor_cli

VM_AD = """\
VMPARAM_VM_NAME = "osgtest_osgtest-pool_12.0"
JobVMMemory = 1024
JobVM_VCPUS = 2
JobVMNetworking = true
JobVM_MACADDR = "00:16:3e:00:00:01"
VMPARAM_vm_Disk = "debian_12.x86_64.qcow2:vda:w:qcow2, io-000.qcow2:vdb:w:qcow2,/abs/data.raw:vdc:r"
VM_WORKING_DIR = "/var/lib/condor/execute/dir_77"
"""


def _xml(tmp_path, accel: str, ad: str = VM_AD) -> ET.Element:
    from osgtest_dag.devpool import config

    if not shutil.which("awk"):
        pytest.skip("awk is not installed")
    script = tmp_path / "x.awk"
    script.write_text(config.libvirt_xml_script())
    out = subprocess.run(
        ["awk", "-f", str(script), accel, "/consoles"], input=ad, capture_output=True, text=True, check=True
    ).stdout
    return ET.fromstring(out)


def test_xml_script_tcg(tmp_path):
    dom = _xml(tmp_path, "tcg")
    assert dom.get("type") == "qemu"
    assert dom.find("cpu").get("mode") == "maximum"
    assert dom.findtext("memory") == str(1024 * 1024) and dom.findtext("vcpu") == "2"
    disks = dom.findall("devices/disk")
    assert [d.find("source").get("file") for d in disks] == [
        "/var/lib/condor/execute/dir_77/debian_12.x86_64.qcow2",
        "/var/lib/condor/execute/dir_77/io-000.qcow2",
        "/abs/data.raw",
    ]
    assert [d.find("driver").get("type") for d in disks] == ["qcow2", "qcow2", "raw"]
    assert disks[2].find("readonly") is not None and disks[0].find("readonly") is None
    nic = dom.find("devices/interface")
    assert nic.get("type") == "user" and nic.find("mac").get("address") == "00:16:3e:00:00:01"
    assert dom.find("devices/serial/source").get("path") == "/consoles/osgtest_osgtest-pool_12.0.log"
    assert dom.findtext("on_poweroff") == "destroy"


def test_xml_script_kvm_without_network(tmp_path):
    dom = _xml(tmp_path, "kvm", VM_AD.replace("JobVMNetworking = true", "JobVMNetworking = false"))
    assert dom.get("type") == "kvm" and dom.find("cpu").get("mode") == "host-passthrough"
    assert dom.find("devices/interface") is None


def test_pool_config_text():
    from osgtest_dag.devpool import config

    text = config.pool_config(accel="tcg")
    for line in (
        "MOUNT_UNDER_SCRATCH =",
        "USE_PID_NAMESPACES = false",
        "BASE_CGROUP =",
        "VM_TYPE = kvm",
        f"LIBVIRT_XML_SCRIPT = {config.XML_SCRIPT}",
        "LIBVIRT_XML_SCRIPT_ARGS = tcg",
        "SLOT_TYPE_1_PARTITIONABLE = TRUE",
        "COLLECTOR_HOST = 127.0.0.1:9618",
    ):
        assert line in text
    assert "VM_MAX_NUMBER" not in text.replace("VM_MAX_NUMBER stays unset", "")
    assert (
        "CLAIMTOBE"
        not in config.pool_config(claimtobe=False)
        .split("SEC_DEFAULT_AUTHENTICATION_METHODS")[1]
        .splitlines()[0]
    )


def test_test_pool_submit_options():
    from osgtest_dag.devpool import pool
    from osgtest_dag.devpool.chroot import POOL_USER
    from osgtest_dag.engine.condor.condor import SubmitOptions

    o = pool.submit_options(SubmitOptions(maxjobs=3))
    assert o.maxjobs == 3 and o.pool == "127.0.0.1:9618" and o.dagman == "/usr/bin/condor_dagman"
    assert ("SEC_CLAIMTOBE_USER", POOL_USER) in o.client_config
    assert "CONDOR_CONFIG" in o.getenv_exclude


def test_not_root_is_a_clear_error(monkeypatch):
    from osgtest_dag.devpool import pool

    monkeypatch.setattr("os.geteuid", lambda: 1000)
    r = condor_cli("pool", "up")
    assert r.exit_code == 2 and "needs root" in r.output and "Traceback" not in r.output
    r = condor_cli("pool", "down")
    assert r.exit_code == 2 and "needs root" in r.output
    assert pool.up  # the module imports without root


def test_submit_to_the_test_pool_when_it_is_down(tmp_path, monkeypatch):
    from osgtest_dag.devpool import pool
    from osgtest_dag.devpool.chroot import Pool

    monkeypatch.setenv("OSGTEST_DAG_CACHE", str(tmp_path / "cache"))
    from osgtest_dag.base.errors import UserError

    with pytest.raises(UserError, match="not up"):
        pool.prepare_run_dir(tmp_path, Pool())


def test_dry_run_for_the_test_pool(tmp_path):
    """What `submit --test-pool` would send: the pool's condor_dagman, and no CONDOR_CONFIG
    from this host in DAGMan's environment (the bindings set it to /dev/null in-process when
    the host has no HTCondor configuration)."""
    from conftest import ROOT

    from osgtest_dag.generate.workflow import write_run
    from osgtest_dag.model.manifest import WorkflowOptions
    from osgtest_dag.plan import matrix
    from osgtest_dag.plan.catalog import Catalog

    catalog = Catalog.load(image_dir="/images")
    m = matrix.build([ROOT / "examples" / "demo"], catalog)
    run = write_run(tmp_path / "r", list(m.cells)[:2], catalog, WorkflowOptions(), param_files=list(m.files))
    r = condor_cli("submit", run, "--dry-run", "--test-pool")
    assert r.exit_code == 0, r.output
    getenv = next(line for line in r.output.splitlines() if line.startswith("getenv"))
    assert "CONDOR_CONFIG" not in getenv and "PATH" in getenv
    assert "executable = /usr/bin/condor_dagman" in r.output
