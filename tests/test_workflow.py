"""The run directory: exact DAG lines, HTCondor's parser on every submit file, DAG checks."""

from __future__ import annotations

import htcondor2
import networkx as nx
import pytest

from osgtest_dag.base.errors import UserError
from osgtest_dag.generate import workflow
from osgtest_dag.model import dagfile
from osgtest_dag.plan import matrix
from osgtest_dag.plan.catalog import Catalog

SMALL = """\
platforms: [debian_12.x86_64, debian_13.aarch64]
sources: ['stable; main']
package_sets:
  - label: Hello
    packages: [hello]
"""


@pytest.fixture
def small_run(tmp_path):
    (tmp_path / "p").mkdir()
    # an update step (default priority 1) on both cells, and a platform priority on cell 001
    small = SMALL.replace("'stable; main'", "'stable; main > updates'")
    small = small.replace("debian_13.aarch64", "{platform: debian_13.aarch64, priority: 2}")
    (tmp_path / "p" / "small.yaml").write_text(small)
    cat = Catalog.load(image_dir="/images")
    m = matrix.build([tmp_path / "p"], cat)
    opts = workflow.WorkflowOptions(
        tool="/opt/osgtest/bin/osgtest-dag",
        excluded_hosts=("bad1.example.org",),
        extra_requirements="TARGET.HasVirshDefaultNetwork == True",
    )
    return workflow.write_run(tmp_path / "run", list(m.cells), cat, opts, param_files=list(m.files))


def test_matrix_dag_exact_lines(small_run):
    text = (small_run / "matrix.dag").read_text()
    assert (
        text
        == """\
# BEGIN META
CONFIG matrix.config
NODE_STATUS_FILE matrix.status 30
MAXJOBS LocalIO 10
# END META
# BEGIN NODES AND EDGES
JOB CreateDisk000 submit/create-io-disk.sub
VARS CreateDisk000 serial="000" offset="0"
RETRY CreateDisk000 3
PRIORITY CreateDisk000 1
CATEGORY CreateDisk000 LocalIO
JOB CreateDisk001 submit/create-io-disk.sub
VARS CreateDisk001 serial="001" offset="1069"
RETRY CreateDisk001 3
PRIORITY CreateDisk001 3
CATEGORY CreateDisk001 LocalIO
PARENT CreateDisk000 CHILD TestRun000
PARENT CreateDisk001 CHILD TestRun001
JOB TestRun000 submit/test-run.sub
VARS TestRun000 serial="000" platform="debian_12.x86_64" image="/images/debian_12.x86_64.qcow2" image_name="debian_12.x86_64.qcow2" image_format="qcow2" condor_arch="X86_64" vm_memory="2048" vm_vcpus="2" request_disk="8192MB" scratch_inputs=",scratch-000.qcow2" scratch_vm_disks=",scratch-000.qcow2:vdc:w:qcow2"
RETRY TestRun000 2 UNLESS-EXIT 2
SCRIPT POST TestRun000 /opt/osgtest/bin/osgtest-dag node post-vm $JOB $RETURN $RETRY $MAX_RETRIES
PRIORITY TestRun000 1
JOB TestRun001 submit/test-run.sub
VARS TestRun001 serial="001" platform="debian_13.aarch64" image="/images/debian_13.aarch64.qcow2" image_name="debian_13.aarch64.qcow2" image_format="qcow2" condor_arch="aarch64" vm_memory="2048" vm_vcpus="2" request_disk="8192MB" scratch_inputs=",scratch-001.qcow2" scratch_vm_disks=",scratch-001.qcow2:vdc:w:qcow2"
RETRY TestRun001 2 UNLESS-EXIT 2
SCRIPT POST TestRun001 /opt/osgtest/bin/osgtest-dag node post-vm $JOB $RETURN $RETRY $MAX_RETRIES
PRIORITY TestRun001 3
PARENT TestRun000 CHILD ProcessResult000
PARENT TestRun001 CHILD ProcessResult001
JOB ProcessResult000 submit/process-result.sub
VARS ProcessResult000 serial="000"
PRIORITY ProcessResult000 1
CATEGORY ProcessResult000 LocalIO
JOB ProcessResult001 submit/process-result.sub
VARS ProcessResult001 serial="001"
PRIORITY ProcessResult001 3
CATEGORY ProcessResult001 LocalIO
PARENT ProcessResult000 CHILD CleanOutput000
PARENT ProcessResult001 CHILD CleanOutput001
JOB CleanOutput000 submit/clean-output.sub
VARS CleanOutput000 serial="000"
PRIORITY CleanOutput000 1
JOB CleanOutput001 submit/clean-output.sub
VARS CleanOutput001 serial="001"
PRIORITY CleanOutput001 3
# END NODES AND EDGES
# FINAL NODE
FINAL MatrixFinal submit/matrix-final.sub
# END FINAL NODE
"""
    )
    assert (
        small_run / "matrix.config"
    ).read_text() == "DAGMAN_MAX_JOBS_IDLE = 1000\nDAGMAN_USER_LOG_SCAN_INTERVAL = 5\n"
    # the DAG reader (and so the local scheduler) sees each node's own priority
    dag = dagfile.parse(small_run / "matrix.dag")
    assert {name: node.priority for name, node in dag.nodes.items()} == {
        **{f"{layer}000": 1 for layer in ("CreateDisk", "TestRun", "ProcessResult", "CleanOutput")},
        **{f"{layer}001": 3 for layer in ("CreateDisk", "TestRun", "ProcessResult", "CleanOutput")},
        "MatrixFinal": 0,
    }


def test_outer_dag_exact_lines(small_run):
    assert (
        (small_run / "workflow.dag").read_text()
        == """\
# BEGIN META
NODE_STATUS_FILE workflow.status 30
# END META
# BEGIN NODES AND EDGES
SUBDAG EXTERNAL Matrix matrix.dag
PARENT Matrix CHILD Analyze
JOB Analyze submit/analyze.sub
PARENT Analyze CHILD Report
JOB Report submit/report.sub
PARENT Report CHILD Publish
JOB Publish submit/publish.sub
# END NODES AND EDGES
"""
    )


def test_vm_submit_with_node_vars_parses_and_expands(small_run):
    dag = dagfile.parse(small_run / "matrix.dag")
    text = (small_run / "submit" / "test-run.sub").read_text()
    node = dag.nodes["TestRun000"]
    sub = htcondor2.Submit(text)
    for k, v in node.vars.items():
        sub[k] = v
    assert sub["universe"] == "vm"
    # the default profile's 8192 MB disk is 5120 MB more than the image's: a scratch disk
    assert sub.expand("vm_disk") == (
        "debian_12.x86_64.qcow2:vda:w:qcow2,io-000.qcow2:vdb:w:qcow2,scratch-000.qcow2:vdc:w:qcow2"
    )
    assert (
        sub.expand("transfer_input_files") == "/images/debian_12.x86_64.qcow2,io-000.qcow2,scratch-000.qcow2"
    )
    assert sub.expand("transfer_output_remaps") == '"io-000.qcow2 = result-000.qcow2"'
    assert sub.expand("vm_memory") == "2048" and sub.expand("request_memory") == "2048"
    assert sub.expand("vm_vcpus") == "2" and sub.expand("request_cpus") == "2"
    assert sub.expand("initialdir") == "cells/000"
    assert sub.expand("requirements") == (
        '(TARGET.Arch == "X86_64") && (TARGET.HasVM =?= True) && '
        '(TARGET.HasVirshDefaultNetwork == True) && !member(TARGET.Machine, {"bad1.example.org"})'
    )
    assert sub["vm_networking"] == "true"
    assert "14400" in sub["periodic_hold"]
    assert "NumJobStarts < 3" in sub["periodic_release"]


def test_every_submit_file_parses_fixture_run(params_d, tmp_path, cli):
    r = cli("generate", params_d, "-o", tmp_path / "nightly")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "nightly"
    subs = sorted((run / "submit").glob("*.sub"))
    assert len(subs) == 8
    for f in subs:
        s = htcondor2.Submit(f.read_text())
        assert s.keys(), f
        assert s["universe"] in ("vm", "local")
    counts = workflow.check_run(run)
    assert counts == {"dags": 2, "nodes": 4 * 1564 + 1 + 4, "submit_files": 8}
    dag = dagfile.parse(run / "matrix.dag")
    g = dag.graph()
    assert nx.is_directed_acyclic_graph(g)
    assert g.number_of_edges() == 3 * 1564
    assert dag.maxjobs == {"LocalIO": 10}
    assert dag.final == "MatrixFinal"
    assert all(n.retry_unless_exit == 2 for k, n in dag.nodes.items() if k.startswith("TestRun"))
    assert sum(1 for _ in open(run / "cells.jsonl")) == 1564


def test_cell_config_is_complete(small_run):
    from osgtest_dag.generate.cellconfig import read_cell

    dag = dagfile.parse(small_run / "matrix.dag")
    off = int(dag.nodes["CreateDisk001"].vars["offset"])
    assert read_cell(small_run, "001", off).serial == "001"
    assert read_cell(small_run, "001", 0).serial == "001"  # a wrong offset falls back to a scan
    doc = read_cell(small_run, "000").to_json()
    assert doc["schema"] == "osgtest-dag/cell" and doc["version"] == 1
    assert doc["platform"]["codename"] == "bookworm"
    assert doc["repositories"]["initial"]["apt_sources"] == ["deb http://deb.debian.org/debian bookworm main"]
    assert doc["repositories"]["update"]["apt_sources"] == [
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
    ]
    cfg1 = read_cell(small_run, "001", off)
    assert cfg1.repositories.initial.apt_sources == ("deb http://deb.debian.org/debian trixie main",)


def test_dag_cycle_and_missing_file_are_caught(tmp_path):
    (tmp_path / "a.sub").write_text("executable=/bin/true\nqueue\n")
    (tmp_path / "c.dag").write_text("JOB A a.sub\nJOB B a.sub\nPARENT A CHILD B\nPARENT B CHILD A\n")
    with pytest.raises(Exception, match="cycle"):
        dagfile.check(dagfile.parse(tmp_path / "c.dag"))
    (tmp_path / "m.dag").write_text("JOB A a.sub\nJOB B missing.sub\n")
    with pytest.raises(Exception, match="missing file missing.sub"):
        dagfile.check(dagfile.parse(tmp_path / "m.dag"))


def test_generate_is_atomic_when_a_late_step_fails(tmp_path, monkeypatch):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "s.yaml").write_text(SMALL)
    cat = Catalog.load(image_dir="/images")
    m = matrix.build([tmp_path / "p"], cat)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(workflow, "outer_dag", boom)
    with pytest.raises(OSError):
        workflow.write_run(
            tmp_path / "run",
            list(m.cells),
            cat,
            workflow.WorkflowOptions(tool="/x"),
            param_files=list(m.files),
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]


def test_generate_feeds_excluded_hosts_file_into_requirements(tmp_path, cli):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "s.yaml").write_text(SMALL)
    hosts = tmp_path / "excluded.yaml"
    hosts.write_text(
        "hosts:\n  - host: bad2.example.org\n    until: 2999-01-01\n    reason: VMGAHP errors\n"
        "  - host: old.example.org\n    until: 2001-01-01\n    reason: fixed long ago\n"
    )
    r = cli(
        "generate",
        tmp_path / "p",
        "-o",
        tmp_path / "run",
        "--exclude-host",
        "bad1.example.org",
        "--excluded-hosts",
        hosts,
    )
    assert r.returncode == 0, r.stderr
    sub = htcondor2.Submit((tmp_path / "run" / "submit" / "test-run.sub").read_text())
    assert sub["requirements"].endswith('!member(TARGET.Machine, {"bad1.example.org", "bad2.example.org"})')
    r = cli("generate", tmp_path / "p", "-o", tmp_path / "run2", "--excluded-hosts", tmp_path / "nope.yaml")
    assert r.returncode == 2 and "excluded-hosts file not found" in r.stderr
    assert not (tmp_path / "run2").exists()


# --------------------------------------------------------------------- the VMs' wall-clock limit
TIMED = """\
platforms: [debian_12.x86_64]
sources: [{sources}]
package_sets:
  - label: Hangs
    packages: [hello]
    test_command: sleep 100000
test_timeout: 120
"""


def _timed_params(tmp_path, sources="'stable; main'"):
    p = tmp_path / "timed-params"
    p.mkdir(exist_ok=True)
    (p / "t.yaml").write_text(TIMED.format(sources=sources))
    return p


def _options(run):
    import json

    return json.loads((run / "run.json").read_text())["options"]


def test_max_wall_is_derived_from_the_test_timeout(tmp_path, cli):
    """Without --max-wall the host's limit is the test timeout plus the set-up allowance, so
    the guest's own limit fires first; a cell with an update runs its test twice."""
    r = cli("generate", _timed_params(tmp_path), "-o", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    assert _options(tmp_path / "run")["max_wall"] == 120 + workflow.SETUP_ALLOWANCE_S == 1920
    sub = htcondor2.Submit((tmp_path / "run" / "submit" / "test-run.sub").read_text())
    assert "time() - JobCurrentStartDate > 1920)" in sub["periodic_hold"]

    upd = tmp_path / "upd-params"
    upd.mkdir()
    (upd / "t.yaml").write_text(TIMED.format(sources="'stable; main', 'stable; main > updates'"))
    r = cli("generate", upd, "-o", tmp_path / "upd")
    assert r.returncode == 0, r.stderr
    assert _options(tmp_path / "upd")["max_wall"] == 2 * 1920


def test_max_wall_not_above_the_test_timeout_is_refused(tmp_path, cli):
    params = _timed_params(tmp_path)
    for too_small in ("60", "120"):
        r = cli("generate", params, "-o", tmp_path / f"run{too_small}", "--max-wall", too_small)
        assert r.returncode == 2, r.stdout + r.stderr
        assert f"--max-wall {too_small} is not larger than the test timeout of cell 000 (120 s" in r.stderr
        assert "leave --max-wall out to derive it (1920 s here" in r.stderr
        assert not (tmp_path / f"run{too_small}").exists()
    r = cli("generate", params, "-o", tmp_path / "run", "--max-wall", "121")
    assert r.returncode == 0, r.stderr
    assert _options(tmp_path / "run")["max_wall"] == 121


def test_wall_clock_policy_holds_only_a_guest_past_its_own_limit(tmp_path, cli):
    """The generated periodic_hold/_release/_remove, read by HTCondor's parser and evaluated by
    its ClassAd library on job ads: a guest whose test ran out of time (its own limit, then its
    collect phase) stays well inside the hold limit, so its job completes with its result and
    nothing restarts it; a VM past the limit (hung before its test) is held, released for another
    start while it has starts left, and removed after its last."""
    import time

    import classad2

    r = cli("generate", _timed_params(tmp_path), "-o", tmp_path / "run", "--max-starts", "2")
    assert r.returncode == 0, r.stderr
    sub = htcondor2.Submit((tmp_path / "run" / "submit" / "test-run.sub").read_text())

    def policy(**ad) -> dict[str, bool]:
        job = classad2.ClassAd({"QDate": int(time.time()) - 60, **ad})
        return {  # a policy acts when its expression is true, not undefined
            k: classad2.ExprTree(sub[k]).eval(job) is True
            for k in ("periodic_hold", "periodic_release", "periodic_remove")
        }

    now = int(time.time())
    # the test's own timeout fired and the guest collected: still far from the limit
    assert not policy(JobStatus=2, JobCurrentStartDate=now - 120 - 600, NumJobStarts=1)["periodic_hold"]
    # the whole set-up allowance on top of the test timeout fits too
    assert not policy(JobStatus=2, JobCurrentStartDate=now - 1900, NumJobStarts=1)["periodic_hold"]
    assert policy(JobStatus=2, JobCurrentStartDate=now - 1930, NumJobStarts=1)["periodic_hold"]
    held = {"JobStatus": 5, "HoldReasonCode": 3, "HoldReasonSubCode": 1, "JobCurrentStartDate": now - 1930}
    assert policy(**held, NumJobStarts=1) == {
        "periodic_hold": False,
        "periodic_release": True,
        "periodic_remove": False,
    }
    assert policy(**held, NumJobStarts=2) == {
        "periodic_hold": False,
        "periodic_release": False,
        "periodic_remove": True,
    }
    # a job that completed (the guest powered off after its own limit) is left alone
    assert not any(policy(JobStatus=4, JobCurrentStartDate=now - 900, NumJobStarts=1).values())


def test_wall_clock_limit_of_no_cells_and_of_a_given_value():
    assert workflow.wall_clock_limit([], None) == workflow.SETUP_ALLOWANCE_S
    assert workflow.wall_clock_limit([], 600) == 600


CLUSTER = """\
platforms: [debian_12.x86_64]
sources: ['stable; main']
package_sets:
  - label: Hello
    packages: [hello]
  - label: Web cluster
    packages: [curl]
    cluster:
      roles:
        server: {count: 1, packages: [nginx-light], vm: {memory: 1024}}
        client: {count: 2}
      stages:
        - name: init
          server: systemctl start nginx
          timeout: 100
        - name: run
          client: curl -fsS http://server-1/
vm: {memory: 512, vcpus: 1, disk: 4096}
test_timeout: 300
"""


@pytest.fixture
def cluster_run(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "c.yaml").write_text(CLUSTER)
    cat = Catalog.load(image_dir="/images")
    m = matrix.build([tmp_path / "p"], cat)
    opts = workflow.WorkflowOptions(tool="/opt/osgtest/bin/osgtest-dag")
    return workflow.write_run(tmp_path / "run", list(m.cells), cat, opts, param_files=list(m.files))


def test_cluster_cell_runs_the_cluster_runner(cluster_run):
    """A cluster cell's TestRun node runs submit/cluster-run.sub (a vanilla job), with the
    transfers and resources of its three VMs; a one-VM cell's stays a VM job."""
    lines = (cluster_run / "matrix.dag").read_text().splitlines()
    assert "JOB TestRun000 submit/test-run.sub" in lines
    assert "JOB TestRun001 submit/cluster-run.sub" in lines
    dag = dagfile.parse(cluster_run / "matrix.dag")
    node = dag.nodes["TestRun001"]
    sub = htcondor2.Submit((cluster_run / "submit" / "cluster-run.sub").read_text())
    for k, v in node.vars.items():
        sub[k] = v
    assert sub["universe"] == "vanilla"
    assert sub.expand("arguments") == (
        '"node cluster-run --image debian_12.x86_64.qcow2 --image-format qcow2 --max-wall 14400"'
    )
    assert sub.expand("transfer_input_files") == (
        "/images/debian_12.x86_64.qcow2,cell.json,vms/server-1/io-001-server-1.qcow2,"
        "vms/client-1/io-001-client-1.qcow2,vms/client-2/io-001-client-2.qcow2,"
        # their 4096 MB disks are 1024 MB more than the image's: a scratch disk each, never returned
        "vms/server-1/scratch-001-server-1.qcow2,vms/client-1/scratch-001-client-1.qcow2,"
        "vms/client-2/scratch-001-client-2.qcow2"
    )
    assert sub.expand("transfer_output_files") == (
        "cluster.json,io-001-server-1.qcow2,io-001-client-1.qcow2,io-001-client-2.qcow2,"
        "console-server-1.log,console-client-1.log,console-client-2.log"
    )
    assert sub.expand("transfer_output_remaps") == (
        '"io-001-server-1.qcow2=vms/server-1/result-001-server-1.qcow2;'
        "io-001-client-1.qcow2=vms/client-1/result-001-client-1.qcow2;"
        "io-001-client-2.qcow2=vms/client-2/result-001-client-2.qcow2;"
        "console-server-1.log=vms/server-1/console.log;console-client-1.log=vms/client-1/console.log;"
        'console-client-2.log=vms/client-2/console.log"'
    )
    # every VM at once: 1024 + 512 + 512 MB and the runner's share, a CPU and a disk each
    assert sub.expand("request_memory") == "2304"
    assert sub.expand("request_cpus") == "3"
    assert sub.expand("request_disk") == "12288MB"
    assert sub.expand("requirements") == '(TARGET.Arch == "X86_64") && (TARGET.OsgtestDagQemu =?= True)'
    assert sub.expand("MY.OsgtestDagVms") == "3"
    assert sub["should_transfer_files"] == "YES"


def test_max_wall_counts_a_clusters_stages_one_after_another(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "c.yaml").write_text(CLUSTER)
    cells = list(matrix.build([tmp_path / "p"], Catalog.load(image_dir="/images")).cells)
    # set-up (1800 s) plus init's 100 s and run's 300 s (the test timeout) > Hello's 1800 + 300
    assert workflow.wall_clock_limit(cells, None) == 2200
    with pytest.raises(UserError, match="not larger than the test timeout of cell 001 \\(400 s"):
        workflow.wall_clock_limit(cells, 400)


def test_runs_without_clusters_have_no_cluster_submit_file(small_run):
    assert not (small_run / "submit" / "cluster-run.sub").exists()
