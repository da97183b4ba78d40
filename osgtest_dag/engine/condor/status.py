"""A submitted run's progress, from the files DAGMan writes (node status files, ClassAds) and
the job event logs: cell states, held jobs, retries, the outcomes of finished cells (the one
derivation), and `watch`, which follows a run until its DAG ends. A run directory never
submitted but run by the local executor is read from the executor's state files instead.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import classad2

from osgtest_dag.analyze import results
from osgtest_dag.base.errors import UserError
from osgtest_dag.engine.local.runview import LocalRunView, read_local_run
from osgtest_dag.generate.cellconfig import iter_cells
from osgtest_dag.model.documents import read_json
from osgtest_dag.model.joblog import JobRecord, JobState, jobs_by_node, read_job_log
from osgtest_dag.model.manifest import RunManifest
from osgtest_dag.model.outcome import Outcome
from osgtest_dag.model.rundir import (
    CLEAN_OUTPUT,
    CREATE_DISK,
    MATRIX_DAG,
    OUTER_DAG,
    PROCESS_RESULT,
    TEST_RUN,
    NodeName,
    RunDir,
)

log = logging.getLogger("osgtest_dag.engine.condor.status")


# NodeStatus / DagStatus values in a node status file (the DAGMan manual, "Current Node Status File")
NODE_STATES = {
    0: "not_ready",
    1: "ready",
    2: "prerun",
    3: "submitted",
    4: "postrun",
    5: "done",
    6: "error",
    7: "futile",
}
# The DAGMan job's exit codes (on_exit_remove keeps 0..2)
DAGMAN_EXIT = {0: "succeeded", 1: "failed", 2: "aborted"}


@dataclass
class NodeStatusFile:
    dag: dict  # the DagStatus ad
    nodes: dict[str, dict]  # node name -> its NodeStatus ad
    end: dict | None  # the StatusEnd ad (None: the file was being written)

    @property
    def state(self) -> str:
        return NODE_STATES.get(int(self.dag.get("DagStatus", -1)), "unknown")


def _ad_dict(ad) -> dict:
    out = {}
    for k in ad.keys():  # noqa: SIM118  a ClassAd iterates differently from a dict
        v = ad.eval(k) if hasattr(ad, "eval") else ad[k]
        if hasattr(v, "__iter__") and not isinstance(v, (str, bytes, dict)):
            try:
                v = list(v)
            except TypeError:
                pass
        out[k] = v if isinstance(v, (str, int, float, bool, list, type(None))) else str(v)
    return out


def parse_node_status(text: str) -> NodeStatusFile:
    """Parse a DAGMan node status file (a sequence of new-ClassAd-format ads)."""
    dag: dict = {}
    nodes: dict[str, dict] = {}
    end = None
    try:
        ads = list(classad2.parseAds(text))
    except Exception as e:
        raise ValueError(f"not a node status file: {e}") from None
    for ad in ads:
        d = _ad_dict(ad)
        kind = d.get("Type")
        if kind == "DagStatus":
            dag = d
        elif kind == "NodeStatus":
            nodes[d["Node"]] = d
        elif kind == "StatusEnd":
            end = d
    if not dag:
        raise ValueError("no DagStatus ad")
    return NodeStatusFile(dag=dag, nodes=nodes, end=end)


def read_node_status(path: Path, tries: int = 3) -> NodeStatusFile | None:
    """The node status file at `path`, or None when there is none (yet). DAGMan rewrites it;
    a half-written one is read again."""
    for i in range(tries):
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            return None
        try:
            return parse_node_status(text)
        except ValueError:
            if i + 1 < tries:
                time.sleep(0.2)
    return None


# ============================================================================================
# Run progress
# ============================================================================================

CELL_STATES = (
    "waiting",
    "disk",
    "queued",
    "running",
    "held",
    "post",
    "extracting",
    "cleanup",
    "done",
    "failed",
)


@dataclass
class RunProgress:
    run_dir: str
    submitted: bool
    dag_state: str  # not_submitted | running | done | failed | unknown
    finished: bool
    elapsed_s: float | None
    cells_total: int
    cells: dict[str, str]  # serial -> one of CELL_STATES
    cell_counts: dict[str, int]
    nodes: dict[str, int]  # DAG node counts by state (both DAGs summed)
    held: list[dict]
    retries: dict[str, int]  # node -> RetryCount (> 0 only)
    outcomes: dict[str, int]  # outcome -> count of the finished cells
    cell_outcomes: dict[str, str]  # serial -> outcome of each finished cell
    dagman_exit: int | None
    engine: str = "dagman"  # dagman | local (run by `osgtest-dag run`)

    @property
    def cells_finished(self) -> int:
        return self.cell_counts.get("done", 0) + self.cell_counts.get("failed", 0)

    def to_json(self) -> dict:
        d = self.__dict__.copy()
        d["cells_finished"] = self.cells_finished
        return d


def _cell_state(
    serial: str, nodes: dict[str, dict], newest_job: dict[str, JobRecord], local: bool = False
) -> str:
    st = {n.layer: nodes.get(n.format(), {}).get("NodeStatus") for n in NodeName.of_cell(serial)}
    if any(v in (6, 7) for v in st.values()):
        return "failed"
    if st[CLEAN_OUTPUT] == 5:
        return "done"
    if st[CLEAN_OUTPUT] in (1, 2, 3, 4) or (st[PROCESS_RESULT] == 5):
        return "cleanup"
    if st[PROCESS_RESULT] in (1, 2, 3, 4) or st[TEST_RUN] == 5:
        return "extracting"
    if st[TEST_RUN] == 4:
        return "post"
    if st[TEST_RUN] in (1, 2, 3):
        job = newest_job.get(NodeName(TEST_RUN, serial).format())
        if job and job.state == JobState.HELD:
            return "held"
        if (job and job.state == JobState.RUNNING) or (local and st[TEST_RUN] == 3):
            return "running"  # the local executor's running VM node (it queues nothing)
        return "queued"
    if st[CREATE_DISK] in (1, 2, 3, 4) or st[CREATE_DISK] == 5:
        return "disk"
    return "waiting"


def _serials(run_dir: Path) -> list[str]:
    try:
        return [c.serial for c in iter_cells(run_dir)]
    except Exception:
        return []


def dagman_job(run_dir: Path) -> JobRecord | None:
    """The DAGMan job of the outer DAG, from its own event log."""
    jobs = read_job_log(RunDir(run_dir).dag_file(OUTER_DAG, ".dagman.log"))
    return jobs[0] if jobs else None


def progress(
    run_dir: Path, now: float | None = None, known_outcomes: dict[str, Outcome] | None = None
) -> RunProgress:
    """What a run is doing now, from its node status files and event logs. The outcomes of
    finished cells are results.json's once the run is analyzed, else decided now from their
    evidence (analyze.results, the one derivation); `known_outcomes` (serial -> outcome)
    caches those of cells that can no longer change, and is filled in."""
    run_dir = Path(run_dir)
    layout = RunDir(run_dir)
    RunManifest.read(run_dir)
    now = time.time() if now is None else now
    outer = read_node_status(layout.outer_status)
    matrix = read_node_status(layout.matrix_status)
    dagman = dagman_job(run_dir)
    jobs = read_job_log(layout.job_log)
    for nodes_log in (layout.dag_file(MATRIX_DAG, ".nodes.log"), layout.dag_file(OUTER_DAG, ".nodes.log")):
        if not jobs:
            jobs = read_job_log(nodes_log)
    newest_job = {node: js[-1] for node, js in jobs_by_node(jobs).items()}  # a node's retries are new jobs

    submitted = dagman is not None or outer is not None or layout.submission.is_file()
    nodes: dict[str, dict] = {}
    counts = {
        "total": 0,
        "done": 0,
        "failed": 0,
        "queued": 0,
        "ready": 0,
        "unready": 0,
        "pre": 0,
        "post": 0,
        "futile": 0,
    }
    for nsf in (outer, matrix):
        if nsf is None:
            continue
        nodes.update(nsf.nodes)
        for key, attr in (
            ("total", "NodesTotal"),
            ("done", "NodesDone"),
            ("failed", "NodesFailed"),
            ("queued", "NodesQueued"),
            ("ready", "NodesReady"),
            ("unready", "NodesUnready"),
            ("pre", "NodesPre"),
            ("post", "NodesPost"),
            ("futile", "NodesFutile"),
        ):
            counts[key] += int(nsf.dag.get(attr, 0) or 0)

    finished = False
    dagman_exit = None
    state = "not_submitted" if not submitted else "running"
    if dagman and dagman.state.final:
        finished = True
        dagman_exit = dagman.exit_code
        state = dagman.state.value
    elif outer is not None and outer.end is not None and int(outer.dag.get("DagStatus", 0)) in (5, 6):
        finished = True
        state = "done" if int(outer.dag["DagStatus"]) == 5 else "failed"
    elif layout.dag_file(OUTER_DAG, ".metrics").is_file():
        finished = True
        with contextlib.suppress(UserError):
            m = read_json(layout.dag_file(OUTER_DAG, ".metrics"))
            dagman_exit = m.get("exitcode") if isinstance(m, dict) else None
            state = "done" if dagman_exit == 0 else "failed"

    local = None if submitted else read_local_run(run_dir)
    if local is not None:
        nodes, counts = local.nodes, _local_counts(local)
        state, finished = local.state, not local.running  # nothing changes without an executor

    serials = _serials(run_dir)
    cells = {s: _cell_state(s, nodes, newest_job, local is not None) for s in serials}
    cell_counts: dict[str, int] = {}
    for s in cells.values():
        cell_counts[s] = cell_counts.get(s, 0) + 1

    held = []
    for j in jobs:
        h = j.last_hold
        if j.state == JobState.HELD and h is not None:
            held.append(
                {
                    "job": j.id,
                    "node": j.node,
                    "code": h.code,
                    "subcode": h.subcode,
                    "reason": h.reason,
                    "host": h.host,
                }
            )
    retries = {
        name: int(ad.get("RetryCount", 0))
        for name, ad in nodes.items()
        if int(ad.get("RetryCount", 0) or 0) > 0
    }

    start: float | None = None
    if dagman and dagman.submitted:
        start = dagman.submitted
    elif jobs:
        start = min((j.submitted for j in jobs if j.submitted), default=None)
    end: float | None = dagman.ended if (dagman and dagman.ended) else None
    if local is not None:
        start, end = local.started, local.ended
    elapsed = None if start is None else max(0.0, (end or now) - start)

    decided = _finished_outcomes(layout, cells, known_outcomes)
    outcomes: dict[str, int] = {}
    for o in sorted(decided.values()):
        outcomes[o.value] = outcomes.get(o.value, 0) + 1
    return RunProgress(
        run_dir=str(run_dir),
        submitted=submitted,
        dag_state=state,
        finished=finished,
        elapsed_s=elapsed,
        cells_total=len(serials),
        cells=cells,
        cell_counts=cell_counts,
        nodes=counts,
        held=sorted(held, key=lambda h: h["job"]),
        retries=retries,
        outcomes=outcomes,
        cell_outcomes={s: o.value for s, o in sorted(decided.items())},
        dagman_exit=dagman_exit,
        engine="local" if local is not None else "dagman",
    )


def _local_counts(local: LocalRunView) -> dict[str, int]:
    """Node counts of a local run, under DAGMan's names (running nodes count as queued)."""
    codes = [ad["NodeStatus"] for ad in local.nodes.values()]
    return {
        "total": len(codes),
        "done": codes.count(5),
        "failed": codes.count(6),
        "queued": codes.count(3),
        "ready": 0,
        "unready": codes.count(0),
        "pre": 0,
        "post": 0,
        "futile": codes.count(7),
    }


# Cell states whose evidence is all there (the POST script decided, the output is extracted).
_FINISHED = ("done", "failed", "cleanup")


def _finished_outcomes(
    layout: RunDir, cells: dict[str, str], known: dict[str, Outcome] | None
) -> dict[str, Outcome]:
    """serial -> outcome of the cells that finished."""
    finished = [s for s, st in cells.items() if st in _FINISHED]
    if not finished:
        return {}
    if layout.results.is_file():
        analyzed = results.run_outcomes(layout.path)
        return {s: analyzed.get(s, Outcome.MISSING) for s in finished}
    known = {} if known is None else known
    todo = [s for s in finished if s not in known]
    fresh = {s: o for s, (o, _) in results.cell_outcomes(layout.path, todo).items()} if todo else {}
    for s, o in fresh.items():
        if cells[s] in ("done", "failed"):
            known[s] = o  # its nodes are over: nothing will add evidence
    return {s: known.get(s) or fresh.get(s, Outcome.MISSING) for s in finished}


def _fmt_elapsed(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def format_progress(p: RunProgress) -> str:
    lines = [
        f"run {p.run_dir}: {p.dag_state}"
        + (" (local executor)" if p.engine == "local" else "")
        + (f" (DAGMan exit {p.dagman_exit})" if p.dagman_exit is not None else "")
        + f", elapsed {_fmt_elapsed(p.elapsed_s)}"
    ]
    lines.append(
        f"cells: {p.cells_finished}/{p.cells_total} finished; "
        + ", ".join(f"{k} {p.cell_counts[k]}" for k in CELL_STATES if p.cell_counts.get(k))
    )
    if p.outcomes:
        lines.append("outcomes: " + ", ".join(f"{k} {v}" for k, v in p.outcomes.items()))
    n = p.nodes
    if n["total"]:
        lines.append(
            f"nodes: {n['done']}/{n['total']} done, {n['queued']} queued, {n['post']} post, "
            f"{n['failed']} failed, {n['futile']} futile"
        )
    if p.retries:
        lines.append("retries: " + ", ".join(f"{k} {v}" for k, v in sorted(p.retries.items())))
    for h in p.held:
        lines.append(
            f"held: job {h['job']} ({h['node'] or '?'}) code {h['code']}/{h['subcode']}: {h['reason']}"
        )
    return "\n".join(lines) + "\n"


def progress_bar(p: RunProgress, width: int = 30) -> str:
    total = max(p.cells_total, 1)
    filled = int(width * p.cells_finished / total)
    counts = " ".join(f"{k}:{p.cell_counts[k]}" for k in CELL_STATES if p.cell_counts.get(k))
    held = f" held:{len(p.held)}" if p.held else ""
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {p.cells_finished}/{p.cells_total} cells "
        f"{counts}{held} {_fmt_elapsed(p.elapsed_s)}"
    )


def watch(
    run_dir: Path,
    *,
    interval: float = 5.0,
    timeout: float | None = None,
    tty: bool | None = None,
    out=None,
    sleep=time.sleep,
) -> RunProgress:
    """Follow a run until its DAG ends: a progress bar redrawn in place on a TTY, otherwise a
    plain line whenever something changes."""
    out = out or sys.stdout
    tty = out.isatty() if tty is None else tty
    start = time.monotonic()
    last = None
    known_outcomes: dict[str, Outcome] = {}
    while True:
        p = progress(run_dir, known_outcomes=known_outcomes)
        line = progress_bar(p)
        if tty:
            out.write("\r\x1b[K" + line)
            out.flush()
        else:
            key = line.rsplit(" ", 1)[0]  # without the clock
            if key != last:
                out.write(time.strftime("%H:%M:%S ") + line + "\n")
                out.flush()
                last = key
        if p.finished or (timeout is not None and time.monotonic() - start > timeout):
            break
        sleep(interval)
    if tty:
        out.write("\n")
    out.write(format_progress(p))
    out.flush()
    return p
