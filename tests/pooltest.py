"""DAGs for checking engines against the real DAGMan on the test pool (osgtest_dag/devpool/).

`write_injected_dag(dir)` writes a small DAG shaped like our matrix (per cell CreateDisk ->
TestRun -> ProcessResult -> CleanOutput, a FINAL node, NODE_STATUS_FILE) whose jobs are
local-universe shell commands and whose TestRun POST scripts follow our exit-code contract
(0 done, 1 infrastructure -> RETRY, 2 fatal -> RETRY ... UNLESS-EXIT 2), with injected
failures:

    cell 000  pass                   job 0, POST 0
    cell 001  infrastructure, once   POST 1 on the first try, then 0  -> done after 1 retry
    cell 002  product failure        job exits 1, POST 0 (a result)   -> done, no retry
    cell 003  fatal                  POST 2                          -> failed, no retry;
                                                                       its children stay
                                                                       pending (DAGMan 23.9:
                                                                       NOT_READY, not futile!)
    cell 004  infrastructure, always POST 1 every time              -> failed after 2 retries
    cell 005  disk creation fails    CreateDisk exits 3 (RETRY 1)    -> failed after 1 retry

`run_on_pool(dag_dir)` runs it (or any DAG directory with one *.dag) on the pool's DAGMan and
returns {node: {"status": ..., "retries": n}} from the final node status file — the shape the
local executor's side of the comparison produces too.
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from osgtest_dag.base.errors import UserError
from osgtest_dag.devpool import inside, pool
from osgtest_dag.engine.condor.condor import _apply_client_config, _cwd, dagman_path, locate_schedd
from osgtest_dag.engine.condor.status import NODE_STATES, read_node_status

DAG_NAME = "injected.dag"
CELLS = {
    "000": {"job": 0, "post": "0"},
    "001": {"job": 0, "post": "1,0"},
    "002": {"job": 1, "post": "0"},
    "003": {"job": 0, "post": "2"},
    "004": {"job": 0, "post": "1"},
    "005": {"job": 0, "post": "0", "disk": 3},
}
VM_RETRIES = 2
DISK_RETRIES = 1

# What DAGMan does with it (checked by the pool test; the executor must agree).
EXPECTED = {
    **{
        f"{layer}{s}": {"status": "done", "retries": 0}
        for s in ("000", "001", "002")
        for layer in ("CreateDisk", "TestRun", "ProcessResult", "CleanOutput")
    },
    "TestRun001": {"status": "done", "retries": 1},
    "CreateDisk003": {"status": "done", "retries": 0},
    "TestRun003": {"status": "failed", "retries": 0},
    # measured on DAGMan 23.9.6: after a POST script's UNLESS-EXIT code stops the retries,
    # the node's descendants are left STATUS_NOT_READY ("pending"), not STATUS_FUTILE as
    # after exhausted retries (cells 004, 005). Either way they never run.
    "ProcessResult003": {"status": "pending", "retries": 0},
    "CleanOutput003": {"status": "pending", "retries": 0},
    "CreateDisk004": {"status": "done", "retries": 0},
    "TestRun004": {"status": "failed", "retries": VM_RETRIES},
    "ProcessResult004": {"status": "futile", "retries": 0},
    "CleanOutput004": {"status": "futile", "retries": 0},
    "CreateDisk005": {"status": "failed", "retries": DISK_RETRIES},
    "TestRun005": {"status": "futile", "retries": 0},
    "ProcessResult005": {"status": "futile", "retries": 0},
    "CleanOutput005": {"status": "futile", "retries": 0},
    "MatrixFinal": {"status": "done", "retries": 0},
}

_JOB_SH = """#!/bin/sh
# job.sh NODE EXIT: record the attempt, exit with EXIT
echo "$1 $(date +%s)" >> attempts.log
exit "$2"
"""
# POST script: exit with the attempt's code from a comma list (the last one repeats)
_POST_SH = """#!/bin/sh
# post.sh NODE RETURN RETRY CODES
node=$1; ret=$2; retry=$3; codes=$4
i=0; code=0
for c in $(echo "$codes" | tr ',' ' '); do
  code=$c
  [ "$i" -ge "$retry" ] && break
  i=$((i + 1))
done
echo "$node return=$ret retry=$retry post=$code" >> post.log
exit "$code"
"""


def _submit(executable: str, args: str, log: str = "jobs.log") -> str:
    return (
        f'universe = local\nexecutable = {executable}\narguments = "{args}"\n'
        f"log = {log}\noutput = out/$(node).out\nerror = out/$(node).err\nqueue\n"
    )


def write_injected_dag(dag_dir: Path, *, status_interval: int = 1) -> Path:
    """Write the injected-failures DAG and its scripts into `dag_dir`; returns the DAG file."""
    d = Path(dag_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / "out").mkdir(exist_ok=True)
    for name, text in (("job.sh", _JOB_SH), ("post.sh", _POST_SH)):
        (d / name).write_text(text)
        (d / name).chmod(0o755)
    (d / "node.sub").write_text(_submit("job.sh", "$(node) $(code)"))
    (d / "final.sub").write_text(_submit("job.sh", "MatrixFinal 0"))
    lines = [f"NODE_STATUS_FILE {DAG_NAME}.status {status_interval}", "MAXJOBS LocalIO 4"]
    for s, c in CELLS.items():
        for layer, code in (
            ("CreateDisk", c.get("disk", 0)),
            ("TestRun", c["job"]),
            ("ProcessResult", 0),
            ("CleanOutput", 0),
        ):
            n = f"{layer}{s}"
            lines.append(f"JOB {n} node.sub")
            lines.append(f'VARS {n} node="{n}" code="{code}"')
            if layer == "CreateDisk":
                lines += [f"RETRY {n} {DISK_RETRIES}", f"CATEGORY {n} LocalIO"]
            if layer == "ProcessResult":
                lines.append(f"CATEGORY {n} LocalIO")
            if layer == "TestRun":
                lines.append(f"RETRY {n} {VM_RETRIES} UNLESS-EXIT 2")
                lines.append(f"SCRIPT POST {n} post.sh $JOB $RETURN $RETRY {c['post']}")
        lines.append(f"PARENT CreateDisk{s} CHILD TestRun{s}")
        lines.append(f"PARENT TestRun{s} CHILD ProcessResult{s}")
        lines.append(f"PARENT ProcessResult{s} CHILD CleanOutput{s}")
    lines.append("FINAL MatrixFinal final.sub")
    dag = d / DAG_NAME
    dag.write_text("\n".join(lines) + "\n")
    return dag


# DAGMan's node states in the local executor's words (executor.py: pending, running, done,
# failed, futile); the DAGMan name is kept as "dagman_status".
ENGINE_STATUS = {
    "not_ready": "pending",
    "ready": "pending",
    "prerun": "running",
    "submitted": "running",
    "postrun": "running",
    "done": "done",
    "error": "failed",
    "futile": "futile",
}


def final_node_states(status_file: Path, *, with_dagman_status: bool = False) -> dict[str, dict]:
    """{node: {"status": done|failed|futile|pending|running, "retries": n}} from a DAGMan
    node status file (with `with_dagman_status`, also DAGMan's own state name)."""
    nsf = read_node_status(status_file)
    if nsf is None:
        raise UserError("no node status file", where=status_file)
    out = {}
    for name, ad in sorted(nsf.nodes.items()):
        raw = NODE_STATES.get(int(ad.get("NodeStatus", -1)), "unknown")
        out[name] = {"status": ENGINE_STATUS.get(raw, raw), "retries": int(ad.get("RetryCount", 0) or 0)}
        if with_dagman_status:
            out[name]["dagman_status"] = raw
    return out


def wait_dag(dag: Path, timeout: float = 300) -> dict:
    """Wait for DAGMan to finish `dag` (its metrics file appears); returns the metrics."""
    metrics = Path(f"{dag}.metrics")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if metrics.is_file():
            try:
                return json.loads(metrics.read_text())
            except ValueError:
                pass
        time.sleep(1)
    out = Path(f"{dag}.dagman.out")
    tail = (
        "\n".join(out.read_text(errors="replace").splitlines()[-20:]) if out.is_file() else "(no dagman.out)"
    )
    raise UserError(f"DAGMan did not finish {dag.name} in {timeout:g} s", where=dag, hint=tail)


def run_on_pool(dag_dir: Path, *, timeout: float = 300, via: str = "bindings") -> dict[str, dict]:
    """Run the one *.dag of `dag_dir` on the test pool's DAGMan and return the final node
    states: {node_name: {"status": "done"|"failed"|"futile"|"pending", "retries": int}}
    (the executor's state names; final_node_states(..., with_dagman_status=True) adds DAGMan's).

    `dag_dir` must be in one of the pool's work directories (chroot.Pool().work by default).
    `via="bindings"` submits from this process with htcondor2 (Submit.from_dag +
    Schedd.submit, as `osgtest-dag submit --test-pool`); `via="inside"` runs
    condor_submit_dag inside the pool as its user."""
    dag_dir = Path(dag_dir).resolve()
    dags = sorted(dag_dir.glob("*.dag"))
    if len(dags) != 1:
        raise UserError(f"expected one *.dag in the directory, found {len(dags)}", where=dag_dir)
    dag = dags[0]
    pool.prepare_run_dir(dag_dir)
    if via == "inside":
        inside.submit_dag_inside(dag)
    else:
        submit_dag_bindings(dag)
    wait_dag(dag, timeout)
    status = _status_file(dag)
    return final_node_states(status)


def submit_dag_bindings(dag: Path, extra_options: dict | None = None) -> int:
    """Submit any DAG file to the test pool with the host's htcondor2 bindings."""
    import htcondor2  # heavy: only the pool tests submit

    opts = pool.submit_options()
    _apply_client_config(opts.client_config)
    options = {"dagman": dagman_path(opts.dagman), "batch-name": dag.parent.name, **(extra_options or {})}
    with _cwd(dag.parent):
        sub = htcondor2.Submit.from_dag(dag.name, options)
        sub["initialdir"] = str(dag.parent)
        names = [
            n.strip() for n in sub.get("getenv", "").split(",") if n.strip() and n.strip() != "CONDOR_CONFIG"
        ]
        sub["getenv"] = ",".join(names)
        schedd = locate_schedd(pool=opts.pool)
        return schedd.submit(sub, count=1).cluster()


def _status_file(dag: Path) -> Path:
    for line in dag.read_text().splitlines():
        parts = shlex.split(line) if line.strip() else []
        if parts and parts[0].upper() == "NODE_STATUS_FILE":
            return dag.parent / parts[1]
    raise UserError("the DAG has no NODE_STATUS_FILE", where=dag)
