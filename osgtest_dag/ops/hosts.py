"""Execute-host health from the VM jobs' event logs, and the excluded-hosts list.

Over the last runs of a runs root, every VM job (a DAG node named TestRun<serial>) is
attributed to the host its EXECUTE event names; a host's failures are shadow exceptions,
holds (VMGAHP errors apart), evictions, reconnect failures and VM runs that ended without a
normal exit (VM GAHP errors, held or reported by the starter, counted apart). Jobs that never started (removed while idle) count against no host.

The excluded-hosts file (YAML; default `$XDG_CONFIG_HOME/osgtest-dag/excluded-hosts.yaml`):

    hosts:
      - host: exec17.example.org
        until: 2026-12-01            # expiry: date or ISO date-time (UTC); omit = no expiry
        reason: 5 of 6 VM jobs failed with VMGAHP errors
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from osgtest_dag.base.atomic import write_text_atomic
from osgtest_dag.base.errors import Location, UserError
from osgtest_dag.model.joblog import AttemptEnd, read_job_log
from osgtest_dag.model.rundir import TEST_RUN, NodeName, RunDir
from osgtest_dag.ops.runs import list_runs

log = logging.getLogger("osgtest_dag.ops.hosts")
NO_HOST = "(never started)"


@dataclass
class HostStats:
    host: str
    runs: set = field(default_factory=set)
    jobs: int = 0  # VM job executions on this host
    ok: int = 0  # ended with a normal exit
    shadow_exceptions: int = 0
    vmgahp_errors: int = 0  # VM GAHP failures: held, or the starter's message
    other_holds: int = 0
    evictions: int = 0
    failures: int = 0  # executions that did not end normally here
    last_failure: str = ""
    last_failure_time: float = 0.0

    @property
    def failure_rate(self) -> float:
        return self.failures / self.jobs if self.jobs else 0.0

    def to_json(self) -> dict:
        return {
            "host": self.host,
            "runs": len(self.runs),
            "jobs": self.jobs,
            "ok": self.ok,
            "failures": self.failures,
            "failure_rate": round(self.failure_rate, 3),
            "shadow_exceptions": self.shadow_exceptions,
            "vmgahp_errors": self.vmgahp_errors,
            "other_holds": self.other_holds,
            "evictions": self.evictions,
            "last_failure": self.last_failure,
            "last_failure_time": _iso(self.last_failure_time) if self.last_failure_time else None,
        }


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_vm_node(node: str | None) -> bool:
    name = NodeName.parse_or_none(node) if node else None
    return name is not None and name.layer == TEST_RUN


def _is_vmgahp(reason: str) -> bool:
    return "VMGAHP" in reason.upper() or "vm-gahp" in reason.lower() or "vm gahp" in reason.lower()


# How an execution ended, in the report's words (a VM GAHP error is told apart below).
_RESULT = {
    AttemptEnd.RUNNING: "running",
    AttemptEnd.LOST: "running",
    AttemptEnd.EXITED: "ok",
    AttemptEnd.SIGNALED: "abnormal",
    AttemptEnd.SHADOW_EXCEPTION: "shadow_exception",
    AttemptEnd.HELD: "hold",
    AttemptEnd.EVICTED: "evicted",
    AttemptEnd.RECONNECT_FAILED: "reconnect_failed",
    AttemptEnd.REMOTE_ERROR: "remote_error",
    AttemptEnd.REMOVED: "removed_running",
}


def run_host_events(run_dir: Path) -> list[dict]:
    """Per VM-job execution of one run: host, how it ended, why. Pure data for host_report."""
    run = Path(run_dir).name
    out: list[dict] = []
    for job in read_job_log(RunDir(Path(run_dir)).job_log):
        if not _is_vm_node(job.node):
            continue
        for a in job.attempts:
            result, reason = _RESULT[a.ending], a.reason
            if a.hold is not None:
                reason = f"[{a.hold.code}/{a.hold.subcode}] {reason}"
            if a.ending in (AttemptEnd.HELD, AttemptEnd.REMOTE_ERROR) and _is_vmgahp(a.reason):
                # "An internal error prevented HTCondor from starting the VM ...
                # (VMGAHP_ERR_INTERNAL)": the starter's message, then an eviction
                result = "vmgahp_error"
            out.append(
                {
                    "run": run,
                    "node": job.node,
                    "job": job.id,
                    "host": a.host or "unknown",
                    "start": a.start,
                    "end": a.end,
                    "result": result,
                    "reason": reason,
                }
            )
        if job.aborted and not job.attempts:
            out.append(
                {
                    "run": run,
                    "node": job.node,
                    "job": job.id,
                    "host": NO_HOST,
                    "start": None,
                    "end": job.ended,
                    "result": "never_started",
                    "reason": job.removed_reason,
                }
            )
    return out


def host_report(runs_root: Path, last: int = 10) -> dict:
    """Per-host VM-job failure statistics over the last `last` runs of `runs_root`."""
    runs = list_runs(runs_root, sizes=False)[-last:] if last > 0 else list_runs(runs_root, sizes=False)
    stats: dict[str, HostStats] = {}
    never_started = 0
    for r in runs:
        for e in run_host_events(r.path):
            if e["result"] == "never_started":
                never_started += 1
                continue
            s = stats.setdefault(e["host"], HostStats(host=e["host"]))
            s.runs.add(r.run_name)
            s.jobs += 1
            res = e["result"]
            if res == "ok":
                s.ok += 1
                continue
            if res == "running":
                s.jobs -= 1  # still going: not counted
                continue
            s.failures += 1
            if res == "shadow_exception":
                s.shadow_exceptions += 1
            elif res == "vmgahp_error":
                s.vmgahp_errors += 1
            elif res == "hold":
                s.other_holds += 1
            elif res == "evicted":
                s.evictions += 1
            t = e["end"] or 0
            if t >= s.last_failure_time:
                s.last_failure_time = t
                s.last_failure = f"{res}: {e['reason']}"[:300]
    hosts = sorted(stats.values(), key=lambda s: (-s.failure_rate, -s.failures, s.host))
    return {
        "runs": [r.run_name for r in runs],
        "hosts": [h.to_json() for h in hosts],
        "never_started": never_started,
    }


def failing_hosts(rep: dict, above: float, min_jobs: int) -> list[str]:
    """The hosts of a host_report whose VM jobs failed more often than `above` (0-1), over at
    least `min_jobs` jobs: what `hosts --exclude-above` and the nightly exclude."""
    return [
        x["host"]
        for x in rep["hosts"]
        if x["jobs"] >= min_jobs and x["failure_rate"] > above and x["host"] not in ("unknown", NO_HOST)
    ]


def format_report(rep: dict) -> str:
    lines = [f"{len(rep['runs'])} run(s): {', '.join(rep['runs']) or '-'}"]
    head = f"{'HOST':<32} {'JOBS':>5} {'OK':>4} {'FAIL':>5} {'RATE':>5} {'SHADOW':>6} {'VMGAHP':>6} {'HOLD':>5} {'EVICT':>5}  LAST FAILURE"
    lines.append(head)
    for h in rep["hosts"]:
        lines.append(
            f"{h['host'][:32]:<32} {h['jobs']:>5} {h['ok']:>4} {h['failures']:>5} "
            f"{h['failure_rate']:>5.0%} {h['shadow_exceptions']:>6} {h['vmgahp_errors']:>6} "
            f"{h['other_holds']:>5} {h['evictions']:>5}  {h['last_failure'][:80]}"
        )
    lines.append(f"VM jobs that never started: {rep['never_started']}")
    return "\n".join(lines) + "\n"


# ============================================================================================
# excluded hosts
# ============================================================================================


@dataclass(frozen=True)
class Exclusion:
    host: str
    until: dt.datetime | None
    reason: str = ""

    def active(self, now: dt.datetime) -> bool:
        return self.until is None or now < self.until

    def to_yaml(self) -> dict:
        d: dict = {"host": self.host}
        if self.until is not None:
            d["until"] = self.until.strftime("%Y-%m-%dT%H:%M:%SZ")
        if self.reason:
            d["reason"] = self.reason
        return d


def default_excluded_hosts_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "osgtest-dag" / "excluded-hosts.yaml"


def _utc(value, where) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    try:
        t = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise UserError(
            f"'until' must be a date or ISO date-time, not {value!r}",
            where=where,
            hint="e.g. until: 2026-12-01 or until: 2026-12-01T06:00:00Z",
        ) from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def load_exclusions(path: Path | None = None) -> list[Exclusion]:
    """Every entry of the excluded-hosts file (expired ones too); [] if there is no file."""
    path = Path(path) if path else default_excluded_hosts_file()
    if not path.is_file():
        return []
    try:
        text = path.read_text()
    except OSError as e:
        raise UserError(f"cannot read the excluded-hosts file: {e.strerror}", where=path) from None
    try:
        nodes = yaml.compose(text)
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = Location(path, mark.line + 1, mark.column + 1) if mark else path
        raise UserError(f"not valid YAML: {getattr(e, 'problem', e)}", where=where) from None
    if doc is None:
        return []
    if not isinstance(doc, dict) or not isinstance(doc.get("hosts", []), list):
        raise UserError(
            "expected a mapping with a 'hosts:' list",
            where=path,
            hint="hosts:\n    - host: NAME\n      until: 2026-12-01\n      reason: why",
        )
    out = []
    items = doc.get("hosts") or []
    item_nodes = []
    if nodes is not None:
        for k, v in nodes.value:
            if k.value == "hosts" and hasattr(v, "value"):
                item_nodes = v.value
    for i, entry in enumerate(items):
        line = item_nodes[i].start_mark.line + 1 if i < len(item_nodes) else None
        where = Location(path, line)
        if isinstance(entry, str):
            entry = {"host": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("host"), str) or not entry["host"].strip():
            raise UserError("each entry needs 'host: NAME'", where=where)
        unknown = set(entry) - {"host", "until", "reason"}
        if unknown:
            raise UserError(
                f"unknown key(s) {', '.join(sorted(unknown))}", where=where, hint="keys: host, until, reason"
            )
        out.append(
            Exclusion(
                host=entry["host"].strip(),
                until=_utc(entry.get("until"), where),
                reason=str(entry.get("reason") or ""),
            )
        )
    return out


def active_excluded_hosts(path: Path | None = None, now: dt.datetime | None = None) -> tuple[str, ...]:
    """The hosts VM jobs must avoid now: what `generate --excluded-hosts FILE` feeds into
    WorkflowOptions.excluded_hosts. Expired entries are skipped (and logged)."""
    now = now or dt.datetime.now(dt.UTC)
    hosts = []
    for e in load_exclusions(path):
        if e.active(now):
            if e.host not in hosts:
                hosts.append(e.host)
        else:
            log.info("excluded host %s expired on %s", e.host, e.until)
    return tuple(hosts)


def save_exclusions(path: Path, entries: Sequence[Exclusion]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"hosts": [e.to_yaml() for e in entries]}
    write_text_atomic(
        path,
        "# osgtest-dag excluded execute hosts (see `osgtest-dag hosts --help`)\n"
        + yaml.safe_dump(doc, sort_keys=False),
    )


def exclude_hosts(
    path: Path | None, hosts: Sequence[str], *, days: float, reason: str = "", now: dt.datetime | None = None
) -> list[Exclusion]:
    """Add (or extend) exclusions for `hosts` expiring in `days`; drop expired entries."""
    path = Path(path) if path else default_excluded_hosts_file()
    now = now or dt.datetime.now(dt.UTC)
    until = (now + dt.timedelta(days=days)).replace(microsecond=0)
    entries = {e.host: e for e in load_exclusions(path) if e.active(now)}
    for h in hosts:
        old = entries.get(h)
        if old and (old.until is None or old.until >= until):
            continue
        entries[h] = Exclusion(host=h, until=until, reason=reason or (old.reason if old else ""))
    result = sorted(entries.values(), key=lambda e: e.host)
    save_exclusions(path, result)
    return result
