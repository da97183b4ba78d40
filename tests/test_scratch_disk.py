"""The VM profile's `disk` honoured: what it has beyond the image's root is a scratch disk that
CreateDisk makes, the VM job names as its third disk (HTCondor's parser, the local executor's
reading of it, Xen's names) and the payload lays under the writable trees. A cell whose disk is
not larger than its image gets none, and its submit file stays as it always was. The guest's
use of it: tests/test_local_run.py (a real run)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import htcondor2
import pytest

from osgtest_dag.base import command
from osgtest_dag.base.errors import UserError
from osgtest_dag.engine.local.submit import read_job
from osgtest_dag.generate import cellconfig, workflow
from osgtest_dag.generate.clusterjob import cluster_vars
from osgtest_dag.guest import payload
from osgtest_dag.guest.iodisk import SCRATCH_LABEL
from osgtest_dag.model import dagfile
from osgtest_dag.model.cell import MIN_SCRATCH_MB, CellConfig, scratch_size
from osgtest_dag.model.rundir import RunDir
from osgtest_dag.nodes import cluster, node
from osgtest_dag.plan import matrix
from osgtest_dag.plan.catalog import DEFAULT_IMAGE_SIZE_MB, Catalog

# Two cells: 000 with the image's disk (no scratch disk), 001 (debian 13) with 6 GiB.
MIXED = """\
platforms: [debian_12.x86_64, debian_13.x86_64]
sources: ['stable; main']
package_sets:
  - {label: Hello, packages: [hello]}
vm: {disk: 3GB}
vm_per_platform:
  debian_13.*: {disk: 6GB}
"""


def _run(base: Path, params: str, vm_type: str = "kvm", catalog_text: str | None = None) -> Path:
    (base / "p").mkdir(parents=True)
    (base / "p" / "p.yaml").write_text(params)
    extra = []
    if catalog_text is not None:
        (base / "catalog.yaml").write_text(catalog_text)
        extra = [base / "catalog.yaml"]
    catalog = Catalog.load(extra, image_dir="/images")
    m = matrix.build([base / "p"], catalog)
    opts = workflow.WorkflowOptions(tool="/opt/osgtest/bin/osgtest-dag", vm_type=vm_type)
    return workflow.write_run(base / "run", list(m.cells), catalog, opts, param_files=list(m.files))


def _submit(run: Path, serial: str) -> htcondor2.Submit:
    """test-run.sub with the cell's VARS, as DAGMan submits it."""
    sub = htcondor2.Submit((run / "submit" / "test-run.sub").read_text())
    for k, v in dagfile.parse(run / "matrix.dag").nodes[f"TestRun{serial}"].vars.items():
        sub[k] = v
    return sub


def test_the_scratch_disk_is_what_the_disk_has_beyond_the_image():
    assert scratch_size(8192, 3072) == 5120
    assert scratch_size(3072, 3072) == 0 and scratch_size(2048, 3072) == 0
    assert scratch_size(3072 + MIN_SCRATCH_MB - 1, 3072) == 0  # not worth a disk
    assert scratch_size(8192, None) == 0  # a cell.json from before the catalog said the image's size


def test_the_catalog_says_an_images_size(tmp_path):
    cat = Catalog.load(image_dir="/images")
    assert cat.platform("debian_12.x86_64").image_size == DEFAULT_IMAGE_SIZE_MB == 3072
    (tmp_path / "c.yaml").write_text(
        "platforms:\n  rocky_9: {family: el, distro: rocky, display: Rocky, major: 9, "
        "arches: [x86_64], image_size: 10240}\n"
    )
    assert Catalog.load([tmp_path / "c.yaml"]).platform("rocky_9.x86_64").image_size == 10240
    (tmp_path / "bad.yaml").write_text("defaults:\n  image_size: 10GB\n")
    with pytest.raises(UserError, match="image_size must be a positive whole number of MiB") as e:
        Catalog.load([tmp_path / "bad.yaml"])
    assert "bad.yaml:2" in str(e.value.where)


def test_no_disk_beyond_the_image_leaves_the_submit_file_as_it_was(tmp_path):
    run = _run(tmp_path, MIXED.replace("{disk: 6GB}", "{disk: 3GB}"))
    text = (run / "submit" / "test-run.sub").read_text()
    assert "transfer_input_files    = $(image),io-$(serial).qcow2\n" in text
    assert (
        "vm_disk                 = $(image_name):vda:w:$(image_format),io-$(serial).qcow2:vdb:w:qcow2\n"
        in text
    )
    assert "scratch" not in text and "scratch" not in (run / "matrix.dag").read_text()
    assert "SCRATCH_MB=0\n" in cellconfig.cell_env(cellconfig.read_cell(run, "000"))


@pytest.mark.parametrize(("vm_type", "dev"), [("kvm", "vd"), ("xen", "xvd")])
def test_a_cell_with_a_larger_disk_gets_a_third_disk_the_other_none(tmp_path, vm_type, dev):
    run = _run(tmp_path, MIXED, vm_type)
    lines = (run / "matrix.dag").read_text().splitlines()
    (small,) = [x for x in lines if x.startswith("VARS TestRun000 ")]
    (large,) = [x for x in lines if x.startswith("VARS TestRun001 ")]
    assert "scratch" not in small and small.endswith('request_disk="3072MB"')
    assert large.endswith(
        f'request_disk="6144MB" scratch_inputs=",scratch-001.qcow2" '
        f'scratch_vm_disks=",scratch-001.qcow2:{dev}c:w:qcow2"'
    )
    image, image13 = "debian_12.x86_64.qcow2", "debian_13.x86_64.qcow2"
    s0, s1 = _submit(run, "000"), _submit(run, "001")
    assert s0.expand("vm_disk") == f"{image}:{dev}a:w:qcow2,io-000.qcow2:{dev}b:w:qcow2"
    assert s0.expand("transfer_input_files") == f"/images/{image},io-000.qcow2"
    assert s1.expand("vm_disk") == (
        f"{image13}:{dev}a:w:qcow2,io-001.qcow2:{dev}b:w:qcow2,scratch-001.qcow2:{dev}c:w:qcow2"
    )
    assert s1.expand("transfer_input_files") == f"/images/{image13},io-001.qcow2,scratch-001.qcow2"
    # only the IO disk comes back
    assert s1.expand("transfer_output_files") == "io-001.qcow2"
    # the local executor reads the same file: it attaches the disks after the base image, in order
    dag = dagfile.parse(run / "matrix.dag")
    spec = read_job(
        run / "submit" / "test-run.sub", dag.nodes["TestRun001"].vars, run, node_name="TestRun001"
    )
    assert [d[:2] for d in spec.vm_disks] == [
        (image13, f"{dev}a"),
        ("io-001.qcow2", f"{dev}b"),
        ("scratch-001.qcow2", f"{dev}c"),
    ]
    spec = read_job(
        run / "submit" / "test-run.sub", dag.nodes["TestRun000"].vars, run, node_name="TestRun000"
    )
    assert [d[0] for d in spec.vm_disks] == [image, "io-000.qcow2"]
    assert spec.transfer_input_files == (f"/images/{image}", "io-000.qcow2")


def _label_and_size(disk: Path, work: Path) -> tuple[str, int]:
    info = command.run(["qemu-img", "info", "--output=json", disk]).stdout
    raw = work / "check.raw"
    command.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", disk, raw])
    label = command.run(["blkid", "-o", "value", "-s", "LABEL", raw]).stdout.strip()
    raw.unlink()
    return label, int(json.loads(info)["virtual-size"]) // (1024 * 1024)


def test_create_disk_makes_it_small_and_labelled_and_clean_up_removes_it(tmp_path):
    run = _run(tmp_path, MIXED)
    node.create_io_disk(run, "000", 0)
    node.create_io_disk(run, "001")
    small, large = RunDir(run).cell("000"), RunDir(run).cell("001")
    assert not small.scratch_disk.exists()
    assert (CellConfig.read(large.config).scratch_mb, CellConfig.read(large.config).platform.image_size) == (
        3072,
        3072,
    )
    assert _label_and_size(large.scratch_disk, tmp_path) == (SCRATCH_LABEL, 3072)
    assert large.scratch_disk.stat().st_size < 16 * 1024 * 1024  # its metadata only: small to transfer
    assert "SCRATCH_MB=3072\n" in cellconfig.cell_env(CellConfig.read(large.config))
    (large.output).mkdir()
    removed = node.clean_output(run, "001")
    assert large.scratch_disk in removed and not large.scratch_disk.exists()


CLUSTER = """\
platforms: [debian_12.x86_64]
sources: ['stable; main']
package_sets:
  - label: Web cluster
    packages: [curl]
    cluster:
      roles:
        server: {count: 1, vm: {disk: 3GB}}
        client: {count: 1}
      stages:
        - name: run
          client: curl -fsS http://server-1/
vm: {memory: 512, vcpus: 1, disk: 4GB}
"""


def test_a_cluster_vm_gets_its_own_scratch_disk_in_its_job(tmp_path):
    run = _run(tmp_path, CLUSTER)
    cfg = cellconfig.read_cell(run, "000")
    server, client = cfg.cluster_vms()
    assert (cfg.vm_scratch_mb(server), cfg.vm_scratch_mb(client)) == (0, 1024)
    assert cluster_vars(cfg)["vm_inputs"] == (
        "vms/server-1/io-000-server-1.qcow2,vms/client-1/io-000-client-1.qcow2,"
        "vms/client-1/scratch-000-client-1.qcow2"
    )
    cluster.create_io_disk(run, "000", 0)
    cell = RunDir(run).cell("000")
    assert not cell.vm_dir("server-1").scratch_disk.exists()
    assert _label_and_size(cell.vm_dir("client-1").scratch_disk, tmp_path) == (SCRATCH_LABEL, 1024)
    assert "SCRATCH_MB=1024\n" in cellconfig.cell_env(cfg, client)
    assert "SCRATCH_MB=0\n" in cellconfig.cell_env(cfg, server)


# --- the payload's side, with the system commands replaced (the real one: test_local_run.py)


def _scratch_setup(tmp_path: Path, scratch_mb: str, fakes: str) -> tuple[subprocess.CompletedProcess, list]:
    calls = tmp_path / "calls"
    script = (
        f". {payload.payload_file(payload.RUN_JOB)}\n"
        f'mount() {{ echo "mount $*" >> {calls}; case "$*" in *redirect_dir*) return 32 ;; esac; }}\n'
        f"modprobe() {{ :; }}\n{fakes}\nscratch_setup\n"
    )
    r = subprocess.run(
        ["dash", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "PATH": "/usr/bin:/bin",
            "RUN_JOB_LIB": "1",
            "SCRATCH_MB": scratch_mb,
            "RUN_JOB_SCRATCH_MNT": str(tmp_path / "scratch"),
            "RUN_JOB_SCRATCH_TREES": " ".join(str(tmp_path / t) for t in ("usr", "tmp", "link", "var")),
            "RUN_JOB_MOUNTINFO": str(tmp_path / "mountinfo"),
        },
    )
    return r, calls.read_text().splitlines() if calls.exists() else []


def test_the_payload_lays_an_overlay_over_each_tree(tmp_path):
    for t in ("usr", "tmp", "var", "elsewhere"):
        (tmp_path / t).mkdir()
    (tmp_path / "tmp").chmod(0o1777)
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    # something mounted below var: an overlay there would hide it
    (tmp_path / "mountinfo").write_text(
        f"22 1 8:1 / / rw - ext4 /dev/vda1 rw\n40 22 0:40 / {tmp_path}/var/lib/nfs/rpc_pipefs rw - rpc_pipefs x rw\n"
    )
    r, calls = _scratch_setup(tmp_path, "5120", "scratch_device() { echo /dev/vdc; }")
    assert r.returncode == 0, r.stdout + r.stderr
    s = tmp_path / "scratch"

    def overlay(t: str, extra: str = "") -> str:
        return (
            f"mount -t overlay osgtest-scratch -o lowerdir={tmp_path}/{t},upperdir={s}/trees{tmp_path}/{t}/upper,"
            f"workdir={s}/trees{tmp_path}/{t}/work{extra} {tmp_path}/{t}"
        )

    # this kernel lacks redirect_dir: without it, and not asked again for the next tree
    assert calls == [
        f"mount -t ext4 -o rw,noinit_itable /dev/vdc {s}",
        overlay("usr", ",redirect_dir=on"),
        overlay("usr"),
        overlay("tmp"),
    ]
    # the merged tree shows the upper directory's mode: /tmp stays sticky and world-writable
    assert (s / f"trees{tmp_path}" / "tmp" / "upper").stat().st_mode & 0o7777 == 0o1777
    assert f"{tmp_path}/link: a symbolic link, left as it is" in r.stdout
    assert f"{tmp_path}/var: something is mounted below it, left as it is" in r.stdout


def test_the_payload_without_a_scratch_disk_or_missing_it(tmp_path):
    r, calls = _scratch_setup(tmp_path, "0", "")
    assert r.returncode == 0 and calls == []
    assert "no scratch disk" in r.stdout
    r, calls = _scratch_setup(tmp_path, "5120", "scratch_device() { return 1; }\nlsblk() { :; }")
    assert r.returncode == 1 and calls == []
    assert "no disk labelled OSGTEST-SCRATCH appeared" in r.stdout
