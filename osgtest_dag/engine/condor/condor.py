"""HTCondor operations through the Python bindings (htcondor2, classad2): submit a run's DAG,
read its progress (node status files, job event logs), follow it.

Files a run directory gains once submitted (written by condor_submit_dag / DAGMan):

    workflow.dag.condor.sub     the DAGMan job's submit description (Submit.from_dag)
    workflow.dag.dagman.log     the DAGMan job's own event log
    workflow.dag.dagman.out     DAGMan's debug log
    workflow.dag.nodes.log      the outer DAG's node events (DAGMan's default node log)
    workflow.status             NODE_STATUS_FILE of the outer DAG (ClassAds)
    matrix.dag.*                the same for the matrix sub-DAG (SUBDAG EXTERNAL)
    matrix.status               NODE_STATUS_FILE of the matrix
    logs/jobs.log               every node job's own log (`log =` in the submit files)
    *.metrics                   JSON, written when a DAGMan exits
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from osgtest_dag.analyze import results
from osgtest_dag.base.errors import UserError
from osgtest_dag.model.documents import read_json
from osgtest_dag.model.manifest import RunManifest
from osgtest_dag.model.outcome import Outcome
from osgtest_dag.model.rundir import (CLEAN_OUTPUT, CREATE_DISK, MATRIX_DAG, OUTER_DAG, PROCESS_RESULT, TEST_RUN,
                                      NodeName, RunDir)

log = logging.getLogger("osgtest_dag.engine.condor.condor")


# NodeStatus / DagStatus values in a node status file (the DAGMan manual, "Current Node Status File")
NODE_STATES = {0: "not_ready", 1: "ready", 2: "prerun", 3: "submitted", 4: "postrun",
               5: "done", 6: "error", 7: "futile"}
# The DAGMan job's exit codes (on_exit_remove keeps 0..2)
DAGMAN_EXIT = {0: "succeeded", 1: "failed", 2: "aborted"}


def _htcondor():
    import htcondor2
    return htcondor2


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


# ============================================================================================
# Submission
# ============================================================================================

@dataclass(frozen=True)
class SubmitOptions:
    batch_name: str = ""
    maxjobs: int | None = None
    maxidle: int | None = None
    append: tuple[str, ...] = ()          # submit commands added to the DAGMan job
    schedd: str | None = None             # schedd name (looked up in the pool's collector)
    pool: str | None = None               # collector host[:port]
    dagman: str | None = None             # condor_dagman path on the schedd's host
    allow_version_mismatch: bool = False
    client_config: tuple[tuple[str, str], ...] = ()   # htcondor2.param settings for this client
    getenv_exclude: tuple[str, ...] = ()  # env names not to pass to DAGMan (its host is not ours)


@dataclass(frozen=True)
class SubmitReport:
    run_dir: str
    submit_file: str
    description: str
    cluster: int | None = None
    schedd: str | None = None
    dry_run: bool = False

    def to_json(self) -> dict:
        return self.__dict__.copy()


def dagman_path(explicit: str | None = None) -> str:
    """condor_dagman as the schedd's host sees it: explicit, else on PATH, else the path
    HTCondor's packages install it to."""
    if explicit:
        return explicit
    found = shutil.which("condor_dagman")
    return found or "/usr/bin/condor_dagman"


def _apply_client_config(settings: Sequence[tuple[str, str]]) -> None:
    if not settings:
        return
    htcondor2 = _htcondor()
    for k, v in settings:
        htcondor2.param[k] = v


def dag_submit_description(run_dir: Path, opts: SubmitOptions = SubmitOptions()):
    """Write RUN_DIR/workflow.dag.condor.sub with htcondor2.Submit.from_dag (what
    condor_submit_dag would write) and return (Submit, path)."""
    htcondor2 = _htcondor()
    run_dir = Path(run_dir).resolve()
    manifest = RunManifest.read(run_dir)
    if not RunDir(run_dir).outer_dag.is_file():
        raise UserError(f"no {OUTER_DAG} in the run directory", where=run_dir,
                        hint="regenerate it with `osgtest-dag generate`")
    _apply_client_config(opts.client_config)
    options: dict = {"batch-name": opts.batch_name or manifest.options.batch_name
                     or manifest.run_name or run_dir.name,
                     "dagman": dagman_path(opts.dagman)}
    if opts.maxjobs is not None:
        options["maxjobs"] = int(opts.maxjobs)
    if opts.maxidle is not None:
        options["maxidle"] = int(opts.maxidle)
    if opts.append:
        options["AppendLines"] = "\n".join(opts.append)
    if opts.allow_version_mismatch:
        options["AllowVersionMismatch"] = True
    layout = RunDir(run_dir)
    sub_file = layout.dag_file(OUTER_DAG, ".condor.sub")
    if sub_file.exists():
        if layout.dag_file(OUTER_DAG, ".dagman.out").exists() or layout.dag_file(OUTER_DAG, ".lock").exists():
            raise UserError("this run was already submitted", where=run_dir,
                            hint="follow it with `osgtest-dag watch`, or make a new run with `osgtest-dag rerun`")
        options["UpdateSubmit"] = True     # a previous --dry-run's file: rewrite it
    with _cwd(run_dir):
        try:
            sub = htcondor2.Submit.from_dag(OUTER_DAG, options)
        except Exception as e:  # HTCondorException and friends carry HTCondor's message
            raise UserError(f"cannot make the DAGMan submit description: {e}", where=run_dir / OUTER_DAG,
                            hint="`osgtest-dag check` validates the run directory") from None
    sub["initialdir"] = str(run_dir)
    exclude = set(opts.getenv_exclude)
    if os.environ.get("CONDOR_CONFIG") == "/dev/null":
        # set in-process by the bindings when this host has no HTCondor configuration:
        # DAGMan, on the schedd's host, must not inherit it
        exclude.add("CONDOR_CONFIG")
    if exclude and sub.get("getenv"):
        names = [n.strip() for n in sub["getenv"].split(",")]
        sub["getenv"] = ",".join(n for n in names if n and n not in exclude)
    return sub, sub_file


def locate_schedd(schedd: str | None = None, pool: str | None = None):
    """The Schedd to submit to: a named one and/or one in another pool via its collector,
    else the local one. A missing or unreachable schedd is a UserError."""
    htcondor2 = _htcondor()
    where = f"schedd {schedd!r}" if schedd else ("a schedd" if pool else "the local schedd")
    if pool:
        where += f" in the pool at {pool}"
    hint = ("is HTCondor running here? (`condor_status -schedd`); name another with --schedd/--pool, "
            "or use `osgtest-dag pool up` for a test pool on this machine")
    try:
        if schedd or pool:
            coll = htcondor2.Collector(pool) if pool else htcondor2.Collector()
            if schedd:
                ad = coll.locate(htcondor2.DaemonType.Schedd, schedd)
            else:
                ads = coll.locateAll(htcondor2.DaemonType.Schedd)
                if not ads:
                    raise UserError(f"no schedd in the pool at {pool}", hint=hint)
                if len(ads) > 1:
                    names = ", ".join(str(a.get("Name")) for a in ads)
                    raise UserError(f"the pool at {pool} has {len(ads)} schedds ({names})",
                                    hint="choose one with --schedd NAME")
                ad = ads[0]
            return htcondor2.Schedd(ad)
        return htcondor2.Schedd()
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"cannot find {where}: {e}", hint=hint) from None


def submit_run(run_dir: Path, opts: SubmitOptions = SubmitOptions(), *, dry_run: bool = False) -> SubmitReport:
    """Submit the run's outer DAG (htcondor2.Submit.from_dag + Schedd.submit). With
    `dry_run`, only write the DAGMan submit file and return what would be submitted."""
    run_dir = Path(run_dir).resolve()
    sub, sub_file = dag_submit_description(run_dir, opts)
    text = str(sub)
    if dry_run:
        return SubmitReport(run_dir=str(run_dir), submit_file=str(sub_file), description=text, dry_run=True)
    schedd = locate_schedd(opts.schedd, opts.pool)
    try:
        with _cwd(run_dir):
            result = schedd.submit(sub, count=1)
    except Exception as e:
        msg = str(e)
        hint = "check that the schedd is reachable and lets you submit (`condor_q` from this host)"
        if "allocate" in msg.lower() and os.geteuid() == 0:
            hint = "root cannot submit jobs: submit as an ordinary user (or via the test pool's user)"
        raise UserError(f"the schedd refused the DAG: {msg}", where=run_dir / OUTER_DAG, hint=hint) from None
    cluster = result.cluster()
    record = {"cluster": cluster, "submitted": _utcnow(), "schedd": opts.schedd, "pool": opts.pool,
              "batch_name": sub.get("My.JobBatchName") or opts.batch_name}
    RunDir(run_dir).submission.write_text(json.dumps(record, indent=1) + "\n")
    return SubmitReport(run_dir=str(run_dir), submit_file=str(sub_file), description=text,
                        cluster=cluster, schedd=opts.schedd or opts.pool or "local")


def _utcnow() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ============================================================================================
# Node status files (ClassAds)
# ============================================================================================

@dataclass
class NodeStatusFile:
    dag: dict                     # the DagStatus ad
    nodes: dict[str, dict]        # node name -> its NodeStatus ad
    end: dict | None              # the StatusEnd ad (None: the file was being written)

    @property
    def state(self) -> str:
        return NODE_STATES.get(int(self.dag.get("DagStatus", -1)), "unknown")


def _ad_dict(ad) -> dict:
    out = {}
    for k in ad.keys():
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
    import classad2
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
# Job event logs
# ============================================================================================

@dataclass
class JobRecord:
    """One job (cluster.proc) as its events tell it."""

    cluster: int
    proc: int
    node: str | None = None
    submitted: float | None = None
    started: list[float] = field(default_factory=list)
    ended: float | None = None
    host: str | None = None
    hosts: list[str] = field(default_factory=list)
    state: str = "idle"           # idle | running | held | done | failed | removed
    return_value: int | None = None
    holds: list[dict] = field(default_factory=list)
    shadow_exceptions: list[dict] = field(default_factory=list)
    evictions: int = 0
    events: int = 0

    @property
    def id(self) -> str:
        return f"{self.cluster}.{self.proc}"


_DAG_NODE = re.compile(r"DAG Node:\s*(\S+)")


def host_of(ev) -> str | None:
    """The execute host of an EXECUTE event: SlotName's machine, else the sinful string's
    alias, else its address."""
    slot = ev.get("SlotName")
    if slot and "@" in str(slot):
        return str(slot).split("@", 1)[1]
    sinful = str(ev.get("ExecuteHost") or "")
    m = re.search(r"alias=([^&>]+)", sinful)
    if m:
        return m.group(1)
    m = re.match(r"<([^:>?]+)", sinful)
    return m.group(1) if m else (sinful or None)


def read_events(path: Path) -> list:
    """Every event of a user job event log (htcondor2.JobEventLog), without blocking."""
    htcondor2 = _htcondor()
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return []
    jel = htcondor2.JobEventLog(str(path))
    try:
        return list(jel.events(stop_after=0))
    except Exception as e:
        log.warning("%s: cannot read all events: %s", path, e)
        return []
    finally:
        with contextlib.suppress(Exception):
            jel.close()


def job_records(events: Sequence) -> dict[str, JobRecord]:
    """Fold events into one record per job."""
    htcondor2 = _htcondor()
    T = htcondor2.JobEventType
    jobs: dict[str, JobRecord] = {}
    for ev in events:
        key = f"{ev.cluster}.{ev.proc}"
        j = jobs.get(key)
        if j is None:
            j = jobs[key] = JobRecord(cluster=ev.cluster, proc=ev.proc)
        j.events += 1
        t = float(ev.timestamp)
        et = ev.type
        if et == T.SUBMIT:
            j.submitted = t
            m = _DAG_NODE.search(str(ev.get("LogNotes") or ""))
            if m:
                j.node = m.group(1)
        elif et == T.EXECUTE:
            j.started.append(t)
            j.host = host_of(ev)
            if j.host:
                j.hosts.append(j.host)
            j.state = "running"
        elif et == T.JOB_TERMINATED:
            j.ended = t
            rv = ev.get("ReturnValue")
            j.return_value = int(rv) if rv is not None else None
            normal = ev.get("TerminatedNormally")
            j.state = "done" if (normal is None or normal) and j.return_value == 0 else "failed"
        elif et == T.JOB_ABORTED:
            j.ended = t
            j.state = "removed"
        elif et == T.JOB_HELD:
            j.state = "held"
            j.holds.append({"time": t, "code": ev.get("HoldReasonCode"), "subcode": ev.get("HoldReasonSubCode"),
                            "reason": str(ev.get("HoldReason") or ""), "host": j.host})
        elif et == T.JOB_RELEASED:
            j.state = "idle"
        elif et == T.SHADOW_EXCEPTION:
            j.shadow_exceptions.append({"time": t, "message": str(ev.get("Message") or ""), "host": j.host})
            if j.state == "running":
                j.state = "idle"
        elif et == T.JOB_EVICTED:
            j.evictions += 1
            if j.state == "running":
                j.state = "idle"
    return jobs


# ============================================================================================
# Run progress
# ============================================================================================

CELL_STATES = ("waiting", "disk", "queued", "running", "held", "post", "extracting", "cleanup",
               "done", "failed")


@dataclass
class RunProgress:
    run_dir: str
    submitted: bool
    dag_state: str                        # not_submitted | running | done | failed | unknown
    finished: bool
    elapsed_s: float | None
    cells_total: int
    cells: dict[str, str]                 # serial -> one of CELL_STATES
    cell_counts: dict[str, int]
    nodes: dict[str, dict]                # DAG counts (both DAGs summed)
    held: list[dict]
    retries: dict[str, int]               # node -> RetryCount (> 0 only)
    outcomes: dict[str, int]              # outcome -> count of the finished cells
    cell_outcomes: dict[str, str]         # serial -> outcome of each finished cell
    dagman_exit: int | None

    @property
    def cells_finished(self) -> int:
        return self.cell_counts.get("done", 0) + self.cell_counts.get("failed", 0)

    def to_json(self) -> dict:
        d = self.__dict__.copy()
        d["cells_finished"] = self.cells_finished
        return d


def _cell_state(serial: str, nodes: dict[str, dict], jobs_by_node: dict[str, JobRecord]) -> str:
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
        job = jobs_by_node.get(NodeName(TEST_RUN, serial).format())
        if job and job.state == "held":
            return "held"
        if job and job.state == "running":
            return "running"
        return "queued"
    if st[CREATE_DISK] in (1, 2, 3, 4) or st[CREATE_DISK] == 5:
        return "disk"
    return "waiting"


def _serials(run_dir: Path) -> list[str]:
    from osgtest_dag.generate.cellconfig import iter_cells
    try:
        return [c.serial for c in iter_cells(run_dir)]
    except Exception:
        return []


def dagman_job(run_dir: Path) -> JobRecord | None:
    jobs = job_records(read_events(RunDir(run_dir).dag_file(OUTER_DAG, ".dagman.log")))
    return min(jobs.values(), key=lambda j: (j.cluster, j.proc)) if jobs else None


def progress(run_dir: Path, now: float | None = None,
             known_outcomes: dict[str, Outcome] | None = None) -> RunProgress:
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
    events = read_events(layout.job_log)
    for nodes_log in (layout.dag_file(MATRIX_DAG, ".nodes.log"), layout.dag_file(OUTER_DAG, ".nodes.log")):
        if nodes_log.is_file() and not events:
            events = read_events(nodes_log)
    jobs = job_records(events)
    by_node: dict[str, JobRecord] = {}
    for j in sorted(jobs.values(), key=lambda j: (j.cluster, j.proc)):
        if j.node:
            by_node[j.node] = j          # the newest job of a node (retries)

    submitted = dagman is not None or outer is not None or layout.submission.is_file()
    nodes: dict[str, dict] = {}
    counts = {"total": 0, "done": 0, "failed": 0, "queued": 0, "ready": 0, "unready": 0,
              "pre": 0, "post": 0, "futile": 0}
    for nsf in (outer, matrix):
        if nsf is None:
            continue
        nodes.update(nsf.nodes)
        for key, attr in (("total", "NodesTotal"), ("done", "NodesDone"), ("failed", "NodesFailed"),
                          ("queued", "NodesQueued"), ("ready", "NodesReady"), ("unready", "NodesUnready"),
                          ("pre", "NodesPre"), ("post", "NodesPost"), ("futile", "NodesFutile")):
            counts[key] += int(nsf.dag.get(attr, 0) or 0)

    finished = False
    dagman_exit = None
    state = "not_submitted" if not submitted else "running"
    if dagman and dagman.state in ("done", "failed", "removed"):
        finished = True
        dagman_exit = dagman.return_value
        state = {"done": "done", "failed": "failed", "removed": "removed"}[dagman.state]
    elif outer is not None and outer.end is not None and int(outer.dag.get("DagStatus", 0)) in (5, 6):
        finished = True
        state = "done" if int(outer.dag["DagStatus"]) == 5 else "failed"
    elif layout.dag_file(OUTER_DAG, ".metrics").is_file():
        finished = True
        with contextlib.suppress(UserError):
            m = read_json(layout.dag_file(OUTER_DAG, ".metrics"))
            dagman_exit = m.get("exitcode") if isinstance(m, dict) else None
            state = "done" if dagman_exit == 0 else "failed"

    serials = _serials(run_dir)
    cells = {s: _cell_state(s, nodes, by_node) for s in serials}
    cell_counts: dict[str, int] = {}
    for s in cells.values():
        cell_counts[s] = cell_counts.get(s, 0) + 1

    held = []
    for j in jobs.values():
        if j.state == "held" and j.holds:
            h = j.holds[-1]
            held.append({"job": j.id, "node": j.node, "code": h["code"], "subcode": h["subcode"],
                         "reason": h["reason"], "host": h["host"]})
    retries = {name: int(ad.get("RetryCount", 0)) for name, ad in nodes.items() if int(ad.get("RetryCount", 0) or 0) > 0}

    start = None
    if dagman and dagman.submitted:
        start = dagman.submitted
    elif jobs:
        start = min((j.submitted for j in jobs.values() if j.submitted), default=None)
    end = dagman.ended if (dagman and dagman.ended) else None
    elapsed = None if start is None else max(0.0, (end or now) - start)

    decided = _finished_outcomes(layout, cells, known_outcomes)
    outcomes: dict[str, int] = {}
    for o in sorted(decided.values()):
        outcomes[o.value] = outcomes.get(o.value, 0) + 1
    return RunProgress(run_dir=str(run_dir), submitted=submitted, dag_state=state, finished=finished,
                       elapsed_s=elapsed, cells_total=len(serials), cells=cells, cell_counts=cell_counts,
                       nodes=counts, held=sorted(held, key=lambda h: h["job"]), retries=retries,
                       outcomes=outcomes, cell_outcomes={s: o.value for s, o in sorted(decided.items())},
                       dagman_exit=dagman_exit)


# Cell states whose evidence is all there (the POST script decided, the output is extracted).
_FINISHED = ("done", "failed", "cleanup")


def _finished_outcomes(layout: RunDir, cells: dict[str, str],
                       known: dict[str, Outcome] | None) -> dict[str, Outcome]:
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
            known[s] = o      # its nodes are over: nothing will add evidence
    return {s: known.get(s) or fresh.get(s, Outcome.MISSING) for s in finished}


def _fmt_elapsed(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def format_progress(p: RunProgress) -> str:
    lines = [f"run {p.run_dir}: {p.dag_state}" + (f" (DAGMan exit {p.dagman_exit})" if p.dagman_exit is not None else "")
             + f", elapsed {_fmt_elapsed(p.elapsed_s)}"]
    lines.append(f"cells: {p.cells_finished}/{p.cells_total} finished; "
                 + ", ".join(f"{k} {p.cell_counts[k]}" for k in CELL_STATES if p.cell_counts.get(k)))
    if p.outcomes:
        lines.append("outcomes: " + ", ".join(f"{k} {v}" for k, v in p.outcomes.items()))
    n = p.nodes
    if n["total"]:
        lines.append(f"nodes: {n['done']}/{n['total']} done, {n['queued']} queued, {n['post']} post, "
                     f"{n['failed']} failed, {n['futile']} futile")
    if p.retries:
        lines.append("retries: " + ", ".join(f"{k} {v}" for k, v in sorted(p.retries.items())))
    for h in p.held:
        lines.append(f"held: job {h['job']} ({h['node'] or '?'}) code {h['code']}/{h['subcode']}: {h['reason']}")
    return "\n".join(lines) + "\n"


def progress_bar(p: RunProgress, width: int = 30) -> str:
    total = max(p.cells_total, 1)
    filled = int(width * p.cells_finished / total)
    counts = " ".join(f"{k}:{p.cell_counts[k]}" for k in CELL_STATES if p.cell_counts.get(k))
    held = f" held:{len(p.held)}" if p.held else ""
    return (f"[{'#' * filled}{'.' * (width - filled)}] {p.cells_finished}/{p.cells_total} cells "
            f"{counts}{held} {_fmt_elapsed(p.elapsed_s)}")


def watch(run_dir: Path, *, interval: float = 5.0, timeout: float | None = None, tty: bool | None = None,
          out=None, sleep=time.sleep) -> RunProgress:
    """Follow a run until its DAG ends: a progress bar redrawn in place on a TTY, otherwise a
    plain line whenever something changes."""
    import sys
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
            key = line.rsplit(" ", 1)[0]   # without the clock
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
