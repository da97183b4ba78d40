"""A cluster cell's CreateDisk and POST nodes (nodes/cluster.py) on real disks and real
libguestfs, no VM: one IO disk per VM with its own identity, every VM's returned disk read in
one appliance, the cell's decision the worst of its VMs'."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from osgtest_dag.base import command
from osgtest_dag.guest.iodisk import IO_LABEL
from osgtest_dag.model.cluster import ClusterRunRecord
from osgtest_dag.model.documents import PostHistory, VmRecord
from osgtest_dag.model.rundir import CellDir, RunDir
from osgtest_dag.nodes import cluster

PARAMS = """\
platforms: [debian_12.x86_64]
sources: ['stable; main']
package_sets:
  - label: Web cluster
    packages: [curl]
    cluster:
      roles:
        server: {count: 1, packages: [nginx-light]}
        client: {count: 2}
      stages:
        - name: init
          server: systemctl start nginx
        - name: run
          client: curl -fsS http://server-1/
"""


def _guest_result(vm: str, role: str, status: str) -> dict:
    code = {"pass": 0, "test": 1}[status]
    return {
        "schema": "osgtest-dag/guest-result",
        "version": 1,
        "serial": "000",
        "started": "2026-11-30T20:00:00Z",
        "finished": "2026-11-30T20:01:00Z",
        "phases": [{"name": "test", "status": "ok" if code == 0 else "failed", "exit_code": code}],
        "status": status,
        "exit_code": code,
        "vm": vm,
        "role": role,
        "stages": [{"name": "init", "status": "ok", "exit_code": 0}],
    }


def _result_disk(vm_dir: CellDir, role: str, status: str, work: Path) -> None:
    tree = work / f"tree-{vm_dir.vm}"
    (tree / "output").mkdir(parents=True)
    (tree / "output" / "result.json").write_text(json.dumps(_guest_result(str(vm_dir.vm), role, status)))
    raw = work / f"{vm_dir.vm}.raw"
    command.run(["mkfs.ext4", "-q", "-F", "-L", IO_LABEL, "-m", "0", "-d", tree, raw, "16M"])
    command.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, vm_dir.result_disk])


def test_cluster_create_disk_and_post(tmp_path, cli, caplog):
    caplog.set_level(logging.INFO, logger="osgtest_dag")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "c.yaml").write_text(PARAMS)
    assert cli("generate", tmp_path / "p", "-o", tmp_path / "run").returncode == 0
    run = RunDir(tmp_path / "run")

    # CreateDisk: an IO disk per VM (what each holds: tests/test_payload.py, test_cluster_vm.py)
    disks = cluster.create_io_disk(run.path, "000", 0)
    cell = run.cell("000")
    assert disks == [cell.vm_dir(v).io_disk for v in ("server-1", "client-1", "client-2")]
    # attempt 0: client-2 was killed at its limit before it wrote anything, its disk is missing
    _result_disk(cell.vm_dir("server-1"), "server", "pass", tmp_path / "a0")
    _result_disk(cell.vm_dir("client-1"), "client", "test", tmp_path / "a0")
    rec = [
        VmRecord(node=v, starts=1, timed_out=(v == "client-2"), wall_s=900.0, returncode=0, console="c")
        for v in ("server-1", "client-1", "client-2")
    ]
    cell.cluster_record.write_text(json.dumps(ClusterRunRecord(vms=tuple(rec)).to_json()))
    assert cluster.post_vm(run.path, "TestRun000", 0, 0, 2) == 1  # retried: the cluster runs again
    (first,) = PostHistory.read(cell.post_vm).decisions
    assert first.verdict.value == "timeout"
    assert first.reason == "client-2: VM killed at its wall-clock limit after 900 s"
    launches = [r for r in caplog.records if r.getMessage().startswith("appliance up with")]
    assert len(launches) == 1, [r.getMessage() for r in launches]  # both disks in one appliance

    # attempt 1: all three back; client-1's test failed: a product result, done
    for v in ("server-1", "client-1"):
        cell.vm_dir(v).result_disk.unlink()
    _result_disk(cell.vm_dir("server-1"), "server", "pass", tmp_path / "a1")
    _result_disk(cell.vm_dir("client-1"), "client", "test", tmp_path / "a1")
    _result_disk(cell.vm_dir("client-2"), "client", "pass", tmp_path / "a1")
    rec = [
        VmRecord(node=v, starts=1, timed_out=False, returncode=0)
        for v in ("server-1", "client-1", "client-2")
    ]
    cell.cluster_record.write_text(json.dumps(ClusterRunRecord(vms=tuple(rec)).to_json()))
    assert cluster.post_vm(run.path, "TestRun000", 0, 1, 2) == 0
    second = PostHistory.read(cell.post_vm).decisions[-1]
    assert second.verdict.value == "done" and second.exit == 0
    for v, status in (("server-1", "pass"), ("client-1", "test"), ("client-2", "pass")):
        got = json.loads((cell.vm_dir(v).output / "result.json").read_text())
        assert (got["vm"], got["status"]) == (v, status)
        assert cell.vm_dir(v).extraction.is_file()
    assert not (cell.vm_dir("server-1").path / "attempts").exists()  # its first read was a result


def test_reproduce_refuses_a_cluster_cell_and_says_what_to_do(tmp_path, cli):
    from osgtest_dag.base.errors import UserError
    from osgtest_dag.engine.local import reproduce

    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "c.yaml").write_text(PARAMS)
    assert cli("generate", tmp_path / "p", "-o", tmp_path / "run").returncode == 0
    with pytest.raises(UserError, match="cell 000 is a cluster cell \\(3 VMs\\)") as e:
        reproduce.prepare(tmp_path / "run", "000")
    assert "--only serial=000" in (e.value.hint or "")
