"""Real HTCondor in the loop: the test pool (osgtest_dag/devpool/, HTCondor 23.9 in a trixie
chroot) validates our generated files and runs DAGs.

Marked `pool`; they need root and skip (with that reason) only when not root. The first run
builds the pool root (~2 min, cached in ~/.cache/osgtest-dag/pool). OSGTEST_DAG_KEEP_POOL=1
keeps the pool up and the work directories after the session; OSGTEST_DAG_RECORD=1 rewrites
the recorded test data under tests/data/condor/ from what the pool produced.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import PARAMS_D, condor_cli

pytestmark = pytest.mark.pool

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "condor"
RECORD = bool(os.environ.get("OSGTEST_DAG_RECORD"))
VM_LOCK = "/tmp/osgtest-vm.lock"


@contextlib.contextmanager
def vm_lock():
    """Everything that boots VMs takes the machine-wide VM lock (2 cores, shared)."""
    with open(VM_LOCK, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def test_pool_is_up_with_a_vm_slot(test_pool):
    from osgtest_dag.devpool import pool

    p, info = test_pool
    st = pool.status(p)
    assert st.up and st.daemons["condor_master"] and st.daemons["libvirtd"]
    assert {"condor_schedd", "condor_startd", "condor_collector", "condor_negotiator"} <= set(st.daemons)
    assert st.has_vm is True
    r = condor_cli("pool", "status")
    assert r.exit_code == 0 and "HasVM True" in r.output
    # idempotent: up again does nothing
    assert pool.up(p)["already_up"] is True


# --- (1) generated files against the real condor_submit / condor_submit_dag / condor_dagman --


def _first_vars_per_submit_file(run_dir: Path) -> dict[str, dict]:
    from osgtest_dag.model import dagfile

    out: dict[str, dict] = {}
    for name in ("workflow.dag", "matrix.dag"):
        for node in dagfile.parse(run_dir / name).nodes.values():
            if node.submit_file:
                out.setdefault(node.submit_file, node.vars)
    return out


def test_nightly_fixture_submit_files_and_dags_pass_real_htcondor(test_pool, pool_workdir):
    """Every submit file generated from the real nightly fixture passes `condor_submit
    -dry-run` (with a node's VARS as macros); both DAGs are accepted by `condor_submit_dag
    -no_submit` and parsed by condor_dagman itself."""
    from osgtest_dag.devpool import inside, pool
    from osgtest_dag.devpool.chroot import POOL_UID

    p, _ = test_pool
    run = pool_workdir / "nightly"
    from osgtest_dag.generate.workflow import write_run
    from osgtest_dag.model.manifest import WorkflowOptions
    from osgtest_dag.plan import matrix
    from osgtest_dag.plan.catalog import Catalog

    catalog = Catalog.load()
    m = matrix.build([PARAMS_D], catalog)
    write_run(run, list(m.cells), catalog, WorkflowOptions(), param_files=list(m.files))
    pool.prepare_run_dir(run, p)
    per_file = _first_vars_per_submit_file(run)
    assert len(per_file) == 8
    for sub, macros in sorted(per_file.items()):
        if "serial" in macros:  # what the CreateDisk node makes before the node is submitted
            d = run / "cells" / macros["serial"]
            d.mkdir(parents=True, exist_ok=True)
            shutil.chown(d, POOL_UID, POOL_UID)
        ad = inside.condor_submit_dry_run(p, run, sub, macros)
        assert "1 job(s) dry-run" in ad, ad
        if sub.endswith("test-run.sub"):
            assert "JobUniverse=13" in ad and 'JobVMType="kvm"' in ad
            assert "TARGET.HasVM =?= true" in ad and "VMPARAM_vm_Disk=" in ad
            assert 'TransferOutputRemaps="io-000.qcow2 = result-000.qcow2"' in ad
        else:
            assert "JobUniverse=12" in ad
    # the nightly's cells with an update step carry PRIORITY lines: condor_dagman parses them below
    assert "\nPRIORITY TestRun" in (run / "matrix.dag").read_text()
    for dag in ("workflow.dag", "matrix.dag"):
        out = inside.condor_submit_dag_no_submit(p, run / dag)
        assert f"{dag}.condor.sub" in out
        assert (run / f"{dag}.condor.sub").is_file()
    scratch = pool_workdir / "parse"
    scratch.mkdir()
    for name in ("workflow.dag", "matrix.dag", "matrix.config"):
        shutil.copy(run / name, scratch / name)
    shutil.copytree(run / "submit", scratch / "submit")
    pool.prepare_run_dir(scratch, p)
    for dag in ("workflow.dag", "matrix.dag"):
        log = inside.dagman_parse(p, scratch / dag, timeout=120)
        assert "Parsing 1 dagfiles" in log


def test_dagman_parse_check_catches_errors(test_pool, pool_workdir):
    from osgtest_dag.base.errors import UserError
    from osgtest_dag.devpool import inside, pool

    p, _ = test_pool
    (pool_workdir / "bad.dag").write_text("JOB A a.sub\nRETRY A x\n")
    (pool_workdir / "a.sub").write_text("universe = local\nexecutable = /bin/true\nqueue\n")
    pool.prepare_run_dir(pool_workdir, p)
    with pytest.raises(UserError, match="Invalid Retry value"):
        inside.dagman_parse(p, pool_workdir / "bad.dag")


# --- (3) differential: the injected-failures DAG on the real DAGMan ---------------------------


def test_differential_injected_dag_on_real_dagman(test_pool, pool_workdir):
    import pooltest

    d = pool_workdir / "injected"
    pooltest.write_injected_dag(d)
    t0 = time.monotonic()
    states = pooltest.run_on_pool(d, timeout=300)
    seconds = time.monotonic() - t0
    metrics = json.loads((d / "injected.dag.metrics").read_text())
    (d / "final-states.json").write_text(
        json.dumps(
            {
                "engine": "dagman",
                "version": metrics["version"],
                "seconds": round(seconds, 1),
                "nodes": states,
            },
            indent=1,
        )
    )
    if RECORD:
        dst = DATA / "injected"
        dst.mkdir(parents=True, exist_ok=True)
        for name in (
            "injected.dag",
            "injected.dag.status",
            "injected.dag.nodes.log",
            "injected.dag.dagman.log",
            "injected.dag.metrics",
            "jobs.log",
            "post.log",
            "attempts.log",
            "final-states.json",
        ):
            shutil.copy(d / name, dst / name)
    assert states == pooltest.EXPECTED
    # the same DAG on the local executor: the same final node states and retry counts
    from osgtest_dag.engine.local import executor

    local = pool_workdir / "injected-local"
    dag = pooltest.write_injected_dag(local)
    assert executor.run_dag(dag, executor.Options(local_jobs=4)) is True  # FINAL succeeded
    ours = json.loads(dag.with_name(dag.name + ".local-state.json").read_text())["nodes"]
    assert {n: {"status": s["status"], "retries": s["retries"]} for n, s in ours.items()} == states
    assert (local / "post.log").read_text().count("TestRun004 ") == 3
    assert metrics["exitcode"] == 0  # the FINAL node succeeded
    assert metrics["jobs_failed"] == 3
    post = (d / "post.log").read_text().splitlines()
    assert sum(1 for line in post if line.startswith("TestRun004 ")) == 3
    assert "TestRun001 return=0 retry=1 post=0" in post


def test_differential_via_condor_submit_dag_inside(test_pool, pool_workdir):
    """The fallback path (condor_submit_dag inside the pool, as its user) gives the same."""
    import pooltest

    d = pool_workdir / "injected-inside"
    pooltest.write_injected_dag(d)
    assert pooltest.run_on_pool(d, timeout=300, via="inside") == pooltest.EXPECTED


# --- a run directory shaped like ours, submitted with `osgtest-dag submit --test-pool` -------

FAKE_TOOL = """#!/bin/sh
# A stand-in for osgtest-dag in shaped test runs: `node ACTION ARGS` with our exit codes.
[ "$1" = node ] || exit 64
action=$2; shift 2
case "$action" in
  create-io-disk) mkdir -p "cells/$1"; exit 0 ;;
  post-vm)
    serial=${1#TestRun}; retry=$3
    case "$serial" in
      001) [ "$retry" -eq 0 ] && exit 1; exit 0 ;;   # infrastructure once, then done
      002) exit 2 ;;                                  # infrastructure, not worth a retry
      *) exit 0 ;;
    esac ;;
  *) exit 0 ;;
esac
"""

FAKE_TEST_RUN = """\
# shaped-run stand-in for the VM job: a local-universe sleep (cell 002 sleeps long)
universe                = local
executable              = /bin/sh
arguments               = "-c 'case $0 in 002) sleep {{ 2 if max_wall > 100 else 300 }} ;; *) sleep 1 ;; esac' $(serial)"
batch_name              = {{ batch_name }}
log                     = logs/jobs.log
output                  = cells/$(serial)/test-run.out
error                   = cells/$(serial)/test-run.err
periodic_hold           = (JobStatus == 2) && (time() - JobCurrentStartDate > {{ max_wall }})
periodic_hold_reason    = "osgtest-dag: VM ran longer than {{ max_wall }} s"
periodic_hold_subcode   = 1
+OsgtestDagSerial       = "$(serial)"
queue
"""


def _shaped_run(workdir: Path, name: str, *, max_wall: int) -> Path:
    from osgtest_dag.generate.workflow import write_run
    from osgtest_dag.model.manifest import WorkflowOptions
    from osgtest_dag.plan import matrix
    from osgtest_dag.plan.catalog import Catalog

    tool = workdir / "fake-osgtest-dag"
    tool.write_text(FAKE_TOOL)
    tool.chmod(0o755)
    tmpl = workdir / "templates"
    tmpl.mkdir(exist_ok=True)
    (tmpl / "test-run.sub.j2").write_text(FAKE_TEST_RUN)
    # The stand-in VM job transfers no image, but `submit` refuses a run whose images are not
    # there: empty placeholders.
    images = workdir / "shaped-images"
    images.mkdir(exist_ok=True)
    catalog = Catalog.load(image_dir=images)
    m = matrix.build([ROOT / "examples" / "demo"], catalog)
    for c in m.cells:
        Path(c.platform.image).touch()
    cells = matrix.select(m.cells, matrix.parse_only(["serial=00[012]"]))
    opts = WorkflowOptions(tool=str(tool), template_dir=str(tmpl), max_wall=max_wall, node_status_interval=1)
    return write_run(workdir / name, cells, catalog, opts, param_files=list(m.files))


def _record_run(run: Path, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    (dest / "logs").mkdir()
    for f in run.iterdir():
        if f.is_file() and (
            f.name in ("run.json", "cells.jsonl", "workflow.dag", "matrix.dag", "submission.json")
            or f.suffix in (".status", ".metrics")
            or f.name.endswith((".nodes.log", ".dagman.log"))
        ):
            shutil.copy(f, dest / f.name)
    shutil.copy(run / "logs" / "jobs.log", dest / "logs" / "jobs.log")


def test_shaped_run_submit_watch_status(test_pool, pool_workdir):
    from osgtest_dag.engine.condor.status import progress

    run = _shaped_run(pool_workdir, "finished", max_wall=14400)
    r = condor_cli("submit", run, "--test-pool")
    assert r.exit_code == 0, r.output
    assert "DAGMan job" in r.output
    r = condor_cli("watch", run, "--interval", "1", "--timeout", "300")
    assert r.exit_code == 3, r.output  # the DAG is done, but the stand-in jobs bring no result back
    assert "3/3 cells" in r.output
    p = progress(run)
    assert p.finished and p.dag_state == "done"
    assert p.cells == {"000": "done", "001": "done", "002": "failed"}
    assert p.retries == {"TestRun001": 1}
    if RECORD:
        _record_run(run, DATA / "shaped" / "finished")


def test_shaped_run_held_job(test_pool, pool_workdir):
    from osgtest_dag.engine.condor.status import progress

    p_, _ = test_pool
    run = _shaped_run(pool_workdir, "held", max_wall=3)
    r = condor_cli("submit", run, "--test-pool")
    assert r.exit_code == 0, r.output
    cluster = json.loads((run / "submission.json").read_text())["cluster"]
    try:
        end = time.monotonic() + 180
        prog = None
        while time.monotonic() < end:
            prog = progress(run)
            if prog.held and prog.cells.get("002") == "held":
                break
            time.sleep(2)
        assert prog and prog.held, prog
        [h] = prog.held
        assert h["node"] == "TestRun002" and h["code"] == 3 and "longer than 3 s" in h["reason"]
        assert not prog.finished
        if RECORD:
            _record_run(run, DATA / "shaped" / "held")
    finally:
        p_.run(["condor_rm", str(cluster)], check=False)


# --- (2) the VM universe on the pool ---------------------------------------------------------

VM_SUB = """\
universe                = vm
vm_type                 = kvm
executable              = osgtest-vm-{name}
vm_memory               = {memory}
vm_vcpus                = 2
request_memory          = {memory}
request_cpus            = 2
request_disk            = 4GB
vm_networking           = true
vm_no_output_vm         = false
log                     = logs/jobs.log
transfer_input_files    = {image},io.qcow2
vm_disk                 = {image_name}:vda:w:qcow2,io.qcow2:vdb:w:qcow2
transfer_output_files   = io.qcow2
transfer_output_remaps  = "io.qcow2 = result.qcow2"
periodic_remove         = (JobStatus == 1) && (time() - QDate > {idle_limit})
submit_event_notes      = DAG Node: TestRun{serial}
queue
"""


def _vm_job_dir(
    workdir: Path, name: str, image: Path, make_cell_input, *, memory=1024, idle_limit=3600, serial="000"
):
    from osgtest_dag.guest import iodisk

    d = workdir / name
    (d / "logs").mkdir(parents=True)
    cell_input = make_cell_input(name, packages=("hello",), test_command="hello")
    iodisk.make_iodisk(cell_input, d / "io.qcow2", size_mb=64)
    (d / "vm.sub").write_text(
        VM_SUB.format(
            name=name, memory=memory, image=image, image_name=image.name, idle_limit=idle_limit, serial=serial
        )
    )
    return d


def _submit_inside(p, d: Path) -> int:
    proc = p.run(["sh", "-c", f"cd {d} && condor_submit vm.sub"], user="osgtest", check=False, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import re

    return int(re.search(r"submitted to cluster (\d+)", proc.stdout).group(1))


def _wait_job_gone(p, cluster: int, timeout: float, fail_on_hold: bool = True) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        q = p.run(["condor_q", str(cluster), "-af", "JobStatus", "HoldReason"], check=False, timeout=30)
        if q.returncode == 0 and not q.stdout.strip():
            return
        if fail_on_hold and q.stdout.startswith("5 "):
            p.run(["condor_rm", str(cluster)], check=False)
            raise AssertionError(f"job {cluster} held: {q.stdout.strip()}")
        time.sleep(3)
    raise AssertionError(f"job {cluster} still in the queue after {timeout} s")


@pytest.fixture
def vm_image():
    """The debian_12 base image (osgtest_dag.guest.image.build_image, cached in the image store)."""
    from osgtest_dag.base.paths import default_image_dir
    from osgtest_dag.guest import image

    with vm_lock():
        return image.build_image("debian_12.x86_64", default_image_dir(), builder="local").image.path


@pytest.mark.vm
def test_vm_job_failures_for_host_health(test_pool, pool_workdir, vm_image, make_cell_input):
    """A VMGAHP failure (a domain libvirt refuses: an IO disk that is not a disk) and a job
    that never starts (more memory than any slot: removed while idle) — recorded for the
    host-health tests together with a good run."""
    from osgtest_dag.devpool import pool
    from osgtest_dag.ops import hosts

    p, _ = test_pool
    bad = _vm_job_dir(pool_workdir, "vmbad", Path(vm_image), make_cell_input, serial="001")
    (bad / "io.qcow2").write_bytes(b"this is not a qcow2 image\n" * 100)
    never = _vm_job_dir(
        pool_workdir, "vmnever", Path(vm_image), make_cell_input, memory=200000, idle_limit=5, serial="002"
    )
    for d in (bad, never):
        pool.prepare_run_dir(d, p)
    with vm_lock():
        pool.wait_ready(p, need_vm=True)
        c_bad = _submit_inside(p, bad)
        c_never = _submit_inside(p, never)
        # libvirt refuses the domain: the starter reports VMGAHP_ERR_INTERNAL, the job is
        # evicted back to idle (and the startd turns its VM universe off)
        end = time.monotonic() + 300
        while time.monotonic() < end:
            log = bad / "logs" / "jobs.log"
            if log.is_file() and "VMGAHP" in log.read_text(errors="replace"):
                break
            time.sleep(2)
        p.run(["condor_rm", str(c_bad)], check=False)
        _wait_job_gone(p, c_never, 120)
        _wait_job_gone(p, c_bad, 120, fail_on_hold=False)
        # a VM failure turns the startd's VM universe off until it restarts
        pool.restart_startd(p)
        pool.wait_ready(p, need_vm=True, timeout=120)
    events = hosts.run_host_events(bad)
    results = [e["result"] for e in events]
    assert "vmgahp_error" in results, events
    assert [e["result"] for e in hosts.run_host_events(never)] == ["never_started"]
    ok_log = p.work / "last-vm-ok-jobs.log"  # left by the end-to-end test of an earlier session
    if RECORD and ok_log.is_file():
        parts = [ok_log, bad / "logs" / "jobs.log", never / "logs" / "jobs.log"]
        dst = DATA / "vm"
        dst.mkdir(parents=True, exist_ok=True)
        with open(dst / "jobs.log", "w") as out:
            for f in parts:
                out.write(f.read_text())


# --- (2) the 2-cell Debian VM matrix, end to end on the pool ---------------------------------

E2E_PARAMS = """\
platforms: [debian_12.x86_64]
sources: ['stable; main']
package_sets:
  - label: Hello
    packages: [hello]
    selinux: false
    test_command: hello | grep -q 'Hello, world!'
  - label: Missing package
    packages: [osgtest-dag-no-such-package]
    selinux: false
    test_command: 'true'
  - label: Web cluster
    packages: [curl]
    selinux: false
    cluster:
      roles:
        server: {count: 1, packages: [nginx-light]}
        client: {count: 2}
      stages:
        - name: init
          server: systemctl start nginx
        - name: run
          client: curl -fsS http://server-1/ | grep -q nginx
        - name: finalize
          all: 'true'
# one vCPU each: the pool's slot counts a CPU per VM, and runs the two VM jobs and the cluster
# cell's job (its three VMs on one execute point) at once
vm: {memory: 768, vcpus: 1}
"""


@pytest.mark.vm
def test_debian_matrix_with_a_cluster_end_to_end(test_pool, pool_workdir, vm_image):
    """generate (a passing cell, one whose package does not exist, a 3-VM cluster cell) ->
    `submit --test-pool` -> `watch`: real CreateDisk, VM jobs with IO disks, the cluster cell as
    one vanilla job running the cluster runner on the execute point, POST scripts, extraction,
    FINAL, Analyze/Report/Publish on HTCondor 23.9; the results say pass, install and pass."""
    from osgtest_dag.engine.condor.status import progress
    from osgtest_dag.generate.workflow import write_run
    from osgtest_dag.model.joblog import JobState, read_job_log
    from osgtest_dag.model.manifest import WorkflowOptions
    from osgtest_dag.plan import matrix
    from osgtest_dag.plan.catalog import Catalog

    catalog = Catalog.load()
    params = pool_workdir / "params"
    params.mkdir()
    (params / "e2e.yaml").write_text(E2E_PARAMS)
    m = matrix.build([params], catalog)
    assert len(m.cells) == 3
    run = write_run(pool_workdir / "e2e", m.cells, catalog, WorkflowOptions(), param_files=list(m.files))
    with vm_lock():
        r = condor_cli("submit", run, "--test-pool")
        assert r.exit_code == 0, r.output
        r = condor_cli("watch", run, "--interval", "5", "--timeout", "1800")
    assert r.exit_code == 1, r.output  # a product failure (install), every other cell passed
    p = progress(run)
    assert p.cells_finished == 3 and p.cell_counts == {"done": 3}, p  # product failures are done nodes
    assert p.outcomes == {"pass": 2, "install": 1}, p
    results = json.loads((run / "results.json").read_text())
    assert {c["label"]: c["outcome"] for c in results["cells"]} == {
        "Hello": "pass",
        "Missing package": "install",
        "Web cluster": "pass",
    }
    cluster = next(c for c in results["cells"] if c["label"] == "Web cluster")
    assert [(v["name"], [s["status"] for s in v["stages"]]) for v in cluster["vms"]] == [
        (name, ["ok", "ok", "ok"]) for name in ("server-1", "client-1", "client-2")
    ]
    # the barrier held on the execute point: each stage released once all three had arrived
    record = json.loads((run / "cells" / cluster["serial"] / "cluster.json").read_text())
    for b in record["barriers"]:
        assert sorted(b["arrivals"]) == ["client-1", "client-2", "server-1"], b
        assert b["released"] >= max(a["time"] for a in b["arrivals"].values())
    assert (run / "report.txt").read_text().strip()  # the Report node ran (its text is the report module's)
    # The VM jobs: real VM-universe jobs whose result disks came back (transfer_output_remaps).
    vm_jobs = [j for j in read_job_log(run / "logs" / "jobs.log") if (j.node or "").startswith("TestRun")]
    assert len(vm_jobs) == 3 and all(j.state == JobState.DONE and j.host for j in vm_jobs), vm_jobs
    for serial in ("000", "001"):
        assert json.loads((run / "cells" / serial / "output" / "result.json").read_text())["serial"] == serial
    print(
        "VM jobs (submit -> terminate):",
        ", ".join(f"{j.node} {j.ended - j.submitted:.0f} s" for j in vm_jobs),
    )
    shutil.copy(run / "logs" / "jobs.log", test_pool[0].work / "last-vm-ok-jobs.log")  # for RECORD
