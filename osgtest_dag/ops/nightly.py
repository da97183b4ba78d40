"""The nightly, with no person involved: a dated run directory under a runs root, generated
with its inputs pinned (known failures, component tags, osg-test configuration, the previous
comparable run, the publishing configuration) and VM jobs avoiding the excluded hosts, then
submitted; afterwards retention deletes the oldest runs. Every step is said in its log.

The previous comparable run (when --previous is not given) is the latest run under the runs
root, by run.json's time, with the same parameter set identity (model.inputs.ParameterSet: the
parameter files or directories as given, and the --only selection), that has been analyzed
(results.json) and is not a rerun (rerun.json): its results are what the new run's Report and
Publish nodes compare with.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from osgtest_dag.analyze.known_failures import load_component_tags, load_known_failures
from osgtest_dag.base.errors import UserError
from osgtest_dag.engine.condor.condor import SubmitOptions, submit_run
from osgtest_dag.generate.inputs import InputFiles, check_osg_test_config
from osgtest_dag.generate.workflow import wall_clock_limit, write_run
from osgtest_dag.model.inputs import ParameterSet, RunInputs
from osgtest_dag.model.manifest import WorkflowOptions
from osgtest_dag.model.rundir import RunDir
from osgtest_dag.ops import hosts
from osgtest_dag.ops.runs import cleanup, list_runs
from osgtest_dag.plan import matrix
from osgtest_dag.plan.catalog import Catalog

log = logging.getLogger("osgtest_dag.ops.nightly")


def check_inputs(given: InputFiles) -> None:
    """UserError, naming the file, for an input that is not what it says: known failures and
    component tags that do not load, an osg-test configuration the cells cannot extend."""
    if given.known_failures:
        load_known_failures(list(given.known_failures))
    if given.component_tags:
        load_component_tags(given.component_tags)
    if given.osg_test_config:
        check_osg_test_config(given.osg_test_config)


def find_previous(runs_root: Path, identity: str) -> Path | None:
    """The latest analyzed run under `runs_root` of the parameter set `identity` that is not
    a rerun (the module's docstring); None when there is none."""
    for entry in reversed(list_runs(runs_root, sizes=False)):
        layout = RunDir(entry.path)
        try:
            pinned = RunInputs.read(entry.path)
        except UserError:
            continue
        if pinned is None or pinned.parameter_set.identity != identity:
            continue
        if layout.rerun.exists() or not layout.results.is_file():
            continue
        return entry.path
    return None


def dated_run_dir(runs_root: Path, now: dt.datetime | None = None) -> Path:
    """RUNS_ROOT/YYYY-MM-DD, or YYYY-MM-DD-HHMM(SS) if that exists already."""
    now = now or dt.datetime.now()
    runs_root = Path(runs_root)
    for name in (now.strftime("%Y-%m-%d"), now.strftime("%Y-%m-%d-%H%M"), now.strftime("%Y-%m-%d-%H%M%S")):
        if not (runs_root / name).exists():
            return runs_root / name
    raise UserError("a run directory for this second exists already", where=runs_root / name)


@dataclass(frozen=True)
class HostPolicy:
    """Which execute hosts the VM jobs avoid: the excluded-hosts file's entries in force, plus
    (with `exclude_above`) hosts whose VM jobs failed more often than that over the last runs,
    added to the file for `days`."""

    excluded_hosts_file: Path | None = None  # default: ops.hosts.default_excluded_hosts_file()
    exclude_above: float | None = None
    min_jobs: int = 2
    days: float = 7.0
    last: int = 10


@dataclass(frozen=True)
class Retention:
    """Delete the oldest runs while the filesystem is above `max_usage` percent, keeping at
    least `keep_at_least` (one at least: the new run is the newest)."""

    keep_at_least: int
    max_usage: float


@dataclass
class NightlyReport:
    run_dir: Path
    cells: int = 0
    previous: Path | None = None
    excluded_hosts: tuple[str, ...] = ()
    cluster: int | None = None
    log: list[str] = field(default_factory=list)

    def say(self, line: str) -> None:
        log.info("%s", line)
        self.log.append(line)


def _apply_hosts(
    runs_root: Path, policy: HostPolicy, rep: NightlyReport, now: dt.datetime
) -> tuple[str, ...]:
    path = policy.excluded_hosts_file or hosts.default_excluded_hosts_file()
    if policy.exclude_above is not None:
        health = hosts.host_report(runs_root, last=policy.last)
        bad = hosts.failing_hosts(health, policy.exclude_above, policy.min_jobs)
        if bad:
            reason = f"failure rate above {policy.exclude_above:.0%} over {len(health['runs'])} run(s)"
            hosts.exclude_hosts(path, bad, days=policy.days, reason=reason, now=now)
            rep.say(f"hosts: excluded for {policy.days:g} days ({reason}): {', '.join(bad)}")
    active: list[str] = []
    for e in hosts.load_exclusions(path):
        until = e.until.strftime("%Y-%m-%dT%H:%M:%SZ") if e.until else None
        if not e.active(now):
            rep.say(f"hosts: the exclusion of {e.host} expired {until}: VM jobs may run there again")
        elif e.host not in active:
            active.append(e.host)
            why = f" ({e.reason})" if e.reason else ""
            rep.say(f"hosts: VM jobs avoid {e.host} " + (f"until {until}" if until else "(no expiry)") + why)
    if not active:
        rep.say(f"hosts: no host excluded ({path})")
    return tuple(active)


def nightly(
    params: Sequence[Path],
    runs_root: Path,
    *,
    catalogs: Sequence[Path] = (),
    image_dir: Path | None = None,
    inputs: InputFiles | None = None,
    host_policy: HostPolicy | None = None,
    retention: Retention | None = None,
    submit_opts: SubmitOptions | None = None,
    submit: bool = True,
    prepare: Callable[[Path], None] | None = None,
    now: dt.datetime | None = None,
) -> NightlyReport:
    """The nightly (the module's docstring). `inputs`: the known failures, component tags,
    osg-test configuration, previous run (default: found in `runs_root`) and publishing
    configuration to pin. `prepare(run_dir)` runs before the submission (the test pool's)."""
    runs_root = Path(runs_root)
    runs_root.mkdir(parents=True, exist_ok=True)
    given = inputs or InputFiles()
    check_inputs(given)
    if retention is not None and retention.keep_at_least < 1:
        raise UserError("the nightly keeps at least one run (the new one)", hint="--keep-at-least 1 or more")
    run_dir = dated_run_dir(runs_root, now)
    rep = NightlyReport(run_dir=run_dir)
    rep.excluded_hosts = _apply_hosts(runs_root, host_policy or HostPolicy(), rep, dt.datetime.now(dt.UTC))

    catalog = Catalog.load(list(catalogs), image_dir=image_dir)
    m = matrix.build(list(params), catalog)
    cells = list(m.cells)
    arguments = tuple(Path(p).resolve() for p in params)
    identity = ParameterSet.of(tuple(map(str, arguments))).identity
    previous = given.previous or find_previous(runs_root, identity)
    if previous is None:
        rep.say(
            "previous run: none comparable under the runs root (same parameter set, analyzed, not a rerun)"
        )
    else:
        rep.say(f"previous run: {previous} (the report says what changed since)")
    given = replace(given, parameter_arguments=arguments, catalog_files=tuple(catalogs), previous=previous)
    opts = WorkflowOptions(
        nightly=True, excluded_hosts=rep.excluded_hosts, max_wall=wall_clock_limit(cells, None)
    )
    write_run(run_dir, cells, catalog, opts, param_files=list(m.files), inputs=given)
    rep.cells = len(cells)
    rep.previous = previous
    pinned = [f"{len(given.known_failures)} known-failures file(s)"]
    pinned += [
        what
        for what, f in (
            ("component tags", given.component_tags),
            ("osg-test configuration", given.osg_test_config),
        )
        if f
    ]
    rep.say(f"generated {run_dir}: {len(cells)} cells; pinned {', '.join(pinned)}")
    if given.publish is None:
        rep.say("publish: nothing configured (no publish configuration)")
    else:
        where = [f"copies to {given.publish.publish_dir}"] if given.publish.publish_dir else []
        if given.publish.smtp:
            where.append(f"mails {', '.join(given.publish.smtp.recipients)} via {given.publish.smtp.host}")
        rep.say("publish: the Publish node " + " and ".join(where))

    if submit:
        if prepare is not None:
            prepare(run_dir)
        rep.cluster = submit_run(run_dir, submit_opts or SubmitOptions()).cluster
        rep.say(f"submitted: DAGMan job {rep.cluster}")
    if retention is not None:
        _retain(runs_root, retention, rep)
    return rep


def _retain(runs_root: Path, retention: Retention, rep: NightlyReport) -> None:
    plan = cleanup(runs_root, keep_at_least=retention.keep_at_least, max_usage=retention.max_usage, yes=True)
    for r in plan.delete:
        rep.say(f"retention: deleted {r.path} (generated {r.generated})")
    for r in plan.skipped_active:
        rep.say(f"retention: kept {r.path}: in use by {plan.in_use.get(r.path, 'another command')}")
    rep.say(
        f"retention: disk usage {plan.usage_before:.1f}% -> {plan.usage_after:.1f}% "
        f"(limit {plan.limit:g}%), {len(plan.keep)} run(s) kept"
    )
