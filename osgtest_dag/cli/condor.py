"""`osgtest-dag submit|status|watch|rerun|schedule|nightly|cleanup|hosts`: HTCondor
operations on run directories (core: condor.py, runs.py, hosts.py, schedule.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from osgtest_dag.analyze.results import run_outcomes
from osgtest_dag.cli.options import input_files, pinned_input_options
from osgtest_dag.devpool import pool as poolmod
from osgtest_dag.engine.condor.condor import SubmitOptions, submit_run
from osgtest_dag.engine.condor.status import format_progress, progress
from osgtest_dag.engine.condor.status import watch as do_watch
from osgtest_dag.generate.workflow import default_tool
from osgtest_dag.model.outcome import Outcome, RunExit, run_exit
from osgtest_dag.model.publish import default_publish_config
from osgtest_dag.ops import hosts as host_ops
from osgtest_dag.ops import nightly as nightly_ops
from osgtest_dag.ops import schedule as sch
from osgtest_dag.ops.runs import cleanup as do_cleanup
from osgtest_dag.ops.runs import rerun as do_rerun

RUN_DIR = click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False))
JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
SCHEDD = click.option("--schedd", default=None, metavar="NAME", help="Submit to this schedd (by name).")
POOL = click.option(
    "--pool",
    default=None,
    metavar="HOST[:PORT]",
    help="The pool's collector (default: this host's configuration).",
)
TEST_POOL = click.option(
    "--test-pool",
    is_flag=True,
    help="Submit to the osgtest-dag test pool on this machine (`osgtest-dag pool up`).",
)


def _submit_options(
    batch_name="", maxjobs=None, maxidle=None, append=(), schedd=None, pool=None, dagman=None, test_pool=False
):
    opts = SubmitOptions(
        batch_name=batch_name or "",
        maxjobs=maxjobs,
        maxidle=maxidle,
        append=tuple(append),
        schedd=schedd,
        pool=pool,
        dagman=dagman,
    )
    if test_pool:
        opts = poolmod.submit_options(opts)
    return opts


def register(group: click.Group) -> None:
    for cmd in (submit, status, watch, rerun, schedule, nightly, cleanup, hosts):
        group.add_command(cmd)


@click.command()
@RUN_DIR
@click.option("--batch-name", default="", help="HTCondor batch name (default: the run's).")
@click.option("--maxjobs", type=click.IntRange(0), default=None, help="DAGMan -maxjobs.")
@click.option("--maxidle", type=click.IntRange(0), default=None, help="DAGMan -maxidle.")
@click.option(
    "--append",
    "append",
    multiple=True,
    metavar="CMD",
    help="Submit command for the DAGMan job, e.g. 'accounting_group = ops' (repeatable).",
)
@click.option("--dry-run", is_flag=True, help="Write the DAGMan submit file and show it; submit nothing.")
@SCHEDD
@POOL
@click.option(
    "--dagman",
    default=None,
    metavar="PATH",
    help="condor_dagman on the schedd's host (default: PATH's, else /usr/bin/condor_dagman).",
)
@TEST_POOL
def submit(run_dir, batch_name, maxjobs, maxidle, append, dry_run, schedd, pool, dagman, test_pool):
    """Submit a run directory's workflow DAG (the same as `condor_submit_dag workflow.dag`)."""
    opts = _submit_options(batch_name, maxjobs, maxidle, append, schedd, pool, dagman, test_pool)
    if test_pool and not dry_run:
        poolmod.prepare_run_dir(run_dir)
    rep = submit_run(run_dir, opts, dry_run=dry_run)
    if dry_run:
        click.echo(f"# would submit {rep.submit_file}:")
        click.echo(rep.description, nl=False)
        return
    click.echo(
        f"submitted {run_dir}: DAGMan job {rep.cluster} ({rep.schedd}); "
        f"follow it with `osgtest-dag watch {run_dir}`"
    )


@click.command()
@RUN_DIR
@JSON
def status(run_dir, as_json):
    """Progress of a run: cells by state, held jobs, retries, elapsed time."""
    p = progress(run_dir)
    if as_json:
        click.echo(json.dumps(p.to_json(), indent=1))
    else:
        click.echo(format_progress(p), nl=False)


@click.command()
@RUN_DIR
@click.option(
    "--interval", type=click.FloatRange(0.1), default=5.0, show_default=True, help="Seconds between looks."
)
@click.option("--timeout", type=click.FloatRange(0), default=None, help="Give up after this many seconds.")
@click.pass_context
def watch(ctx, run_dir, interval, timeout):
    """Follow a run until its DAG ends (a progress bar; plain lines when not a terminal).

    \b
    Exit codes (from the cells' outcomes, as results.json has them):
      0  every cell passed: pass, waived, cleanup
      1  product failures (fail, update, install), every other cell passed
      2  usage error (bad input)
      3  a cell without a verdict (timeout, infra, missing), the DAG failed,
         or --timeout came first
    """
    p = do_watch(run_dir, interval=interval, timeout=timeout, out=sys.stdout)
    if not p.finished:
        ctx.exit(int(RunExit.NO_VERDICT))
    ctx.exit(int(run_exit(run_outcomes(run_dir).values(), workflow_ok=p.dag_state == "done")))


@click.command()
@RUN_DIR
@click.option(
    "-o", "--output", "new_run", required=True, type=click.Path(path_type=Path), help="The new run directory."
)
@click.option(
    "--failed",
    "failed_only",
    is_flag=True,
    help=f"Only product failures ({', '.join(o.value for o in Outcome if o.product_failure)}); "
    f"default: every cell worse than waived ({', '.join(o.value for o in Outcome if o.needs_rerun)}).",
)
@click.option(
    "--outcome",
    "outcomes",
    multiple=True,
    type=click.Choice([o.value for o in Outcome]),
    help="Exactly these outcomes (repeatable).",
)
@click.option("--only", "only", multiple=True, metavar="KEY=GLOB", help="Further select cells (as generate).")
@click.option(
    "--catalog",
    "catalogs",
    multiple=True,
    type=click.Path(path_type=Path),
    help="The catalog files the original run was generated with.",
)
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
@click.option(
    "--allow-image-change",
    is_flag=True,
    help="Rerun even when a base image changed since RUN_DIR pinned it (the rerun says which).",
)
def rerun(run_dir, new_run, failed_only, outcomes, only, catalogs, force, allow_image_change):
    """A new run of some cells of RUN_DIR, from the same pinned inputs (serials kept): its
    parameter files, catalog entries, known failures, component tags, osg-test configuration.
    Refused when a base image changed since, unless --allow-image-change; says what differs
    today from the pinned inputs."""
    plan = do_rerun(
        run_dir,
        new_run,
        failed_only=failed_only,
        only=only,
        outcomes=outcomes or None,
        catalogs=catalogs,
        force=force,
        allow_image_change=allow_image_change,
    )
    if plan.image_changes:
        click.echo("rerunning on changed base images (--allow-image-change):")
        for line in plan.image_changes:
            click.echo(f"  {line}")
    if plan.differences:
        click.echo("today's inputs differ from those the run pinned (the rerun uses the pinned ones):")
        for line in plan.differences:
            click.echo(f"  {line}")
    click.echo(
        f"wrote {new_run}: {len(plan.selected)} cell(s) of {run_dir} "
        f"({', '.join(f'{s}:{plan.outcomes[s].value}' for s in plan.selected if s in plan.outcomes)})"
    )


@click.group()
def schedule():
    """The daily schedule (systemd timer, or cron)."""


@schedule.command("install")
@click.option("--at", "at", default="04:23", show_default=True, help="Time of day (HH:MM).")
@click.option("--params", type=click.Path(path_type=Path), required=True, help="Parameter files (directory).")
@click.option(
    "--runs-root",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Where dated run directories go.",
)
@click.option(
    "--unit-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where to write the units (default: /etc/systemd/system as root, else ~/.config/systemd/user).",
)
@click.option("--tool", default=None, help="osgtest-dag executable (default: this one).")
@click.option(
    "--nightly-arg", "extra", multiple=True, metavar="ARG", help="Extra argument for `nightly` (repeatable)."
)
def schedule_install(at, params, runs_root, unit_dir, tool, extra):
    """Write a systemd service + timer running `osgtest-dag nightly`; print the cron line."""
    s = sch.Schedule(
        at=sch.parse_time(at),
        params=params.resolve(),
        runs_root=runs_root.resolve(),
        tool=tool or default_tool(),
        unit_dir=(unit_dir or sch.default_unit_dir()).resolve(),
        extra_args=tuple(extra),
    )
    r = sch.install(s)
    click.echo(f"wrote {r['service']}\nwrote {r['timer']}\nenable with:\n  " + "\n  ".join(r["enable"]))
    click.echo(f"or, with cron (crontab -e):\n  {r['cron']}")


@click.command()
@click.option(
    "--params",
    "params",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path),
    help="Parameter files or directories.",
)
@click.option("--runs-root", type=click.Path(path_type=Path, file_okay=False), required=True)
@click.option("--catalog", "catalogs", multiple=True, type=click.Path(path_type=Path))
@click.option("--image-dir", type=click.Path(path_type=Path), default=None)
@click.option(
    "--excluded-hosts",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Excluded-hosts file (default: ~/.config/osgtest-dag/excluded-hosts.yaml).",
)
@click.option(
    "--exclude-above",
    type=click.FloatRange(0, 1),
    default=None,
    metavar="RATE",
    help="First add hosts whose VM jobs failed more often than RATE (0-1) over the last 10 runs "
    "to the excluded-hosts file (as `hosts --exclude-above`).",
)
@click.option(
    "--exclude-days",
    type=click.FloatRange(0, min_open=True),
    default=7,
    show_default=True,
    help="With --exclude-above: days until such an exclusion expires.",
)
@click.option(
    "--max-usage",
    type=click.FloatRange(0, 100, min_open=True),
    default=None,
    help="Retention: afterwards, delete the oldest runs until the filesystem is under this usage "
    "(percent), as `cleanup --yes`.",
)
@click.option(
    "--keep-at-least",
    type=click.IntRange(1),
    default=7,
    show_default=True,
    help="Retention: never fewer runs than this.",
)
@pinned_input_options
@click.option("--no-submit", is_flag=True, help="Generate only.")
@SCHEDD
@POOL
@TEST_POOL
def nightly(
    params,
    runs_root,
    catalogs,
    image_dir,
    excluded_hosts,
    exclude_above,
    exclude_days,
    max_usage,
    keep_at_least,
    no_submit,
    schedd,
    pool,
    test_pool,
    **pinned,
):
    """Create a dated run directory under RUNS_ROOT, generate the matrix into it with its inputs
    pinned, submit it; apply the host exclusions and retention. Prints what it did.

    The previous comparable run, unless --previous: the latest analyzed run under RUNS_ROOT
    generated from the same --params (not a rerun). The publish configuration, unless
    --publish-config: ~/.config/osgtest-dag/publish.yaml when there."""
    inputs = input_files(**pinned, default_publish_config=default_publish_config())
    prepare = poolmod.prepare_run_dir if test_pool else None
    rep = nightly_ops.nightly(
        params,
        runs_root,
        catalogs=catalogs,
        image_dir=image_dir,
        inputs=inputs,
        host_policy=nightly_ops.HostPolicy(
            excluded_hosts_file=excluded_hosts, exclude_above=exclude_above, days=exclude_days
        ),
        retention=nightly_ops.Retention(keep_at_least, max_usage) if max_usage is not None else None,
        submit_opts=_submit_options(schedd=schedd, pool=pool, test_pool=test_pool),
        submit=not no_submit,
        prepare=prepare,
    )
    for line in rep.log:
        click.echo(f"nightly: {line}")


@click.command()
@click.argument("runs_root", type=click.Path(path_type=Path, file_okay=False))
@click.option("--keep-at-least", type=click.IntRange(0), required=True, help="Never fewer runs than this.")
@click.option(
    "--max-usage",
    type=click.FloatRange(0, 100, min_open=True),
    required=True,
    help="Delete the oldest runs until the filesystem is under this usage (percent).",
)
@click.option("--yes", is_flag=True, help="Really delete (default: only show what would go).")
@JSON
def cleanup(runs_root, keep_at_least, max_usage, yes, as_json):
    """Delete the oldest run directories (by run.json time) to keep the disk under a limit."""
    plan = do_cleanup(runs_root, keep_at_least=keep_at_least, max_usage=max_usage, yes=yes)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "usage_before": plan.usage_before,
                    "usage_after": plan.usage_after,
                    "limit": plan.limit,
                    "done": plan.done,
                    "delete": [str(r.path) for r in plan.delete],
                    "keep": [str(r.path) for r in plan.keep],
                    "skipped_active": [str(r.path) for r in plan.skipped_active],
                },
                indent=1,
            )
        )
        return
    verb = "deleted" if yes else "would delete"
    for r in plan.delete:
        click.echo(f"{verb} {r.path} (generated {r.generated}, {r.size / 1e6:.1f} MB)")
    for r in plan.skipped_active:
        click.echo(f"kept {r.path}: in use by {plan.in_use.get(r.path, 'another command')}")
    click.echo(
        f"usage {plan.usage_before:.1f}% -> {plan.usage_after:.1f}% "
        f"({'measured' if yes else 'predicted'}; limit {plan.limit:g}%), {len(plan.keep)} run(s) kept"
        + ("" if yes or not plan.delete else "; pass --yes to delete")
    )


@click.command()
@click.argument("runs_root", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--last", type=click.IntRange(0), default=10, show_default=True, help="Runs to look at (0: all)."
)
@JSON
@click.option(
    "--exclude-above",
    type=click.FloatRange(0, 1),
    default=None,
    metavar="RATE",
    help="Add hosts whose failure rate exceeds RATE (0-1) to the excluded-hosts file.",
)
@click.option(
    "--min-jobs",
    type=click.IntRange(1),
    default=2,
    show_default=True,
    help="With --exclude-above: only hosts with at least this many VM jobs.",
)
@click.option(
    "--days",
    type=click.FloatRange(0, min_open=True),
    default=7,
    show_default=True,
    help="With --exclude-above: the exclusion expires after this many days.",
)
@click.option(
    "--excluded-hosts",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Excluded-hosts file (default: ~/.config/osgtest-dag/excluded-hosts.yaml).",
)
def hosts(runs_root, last, as_json, exclude_above, min_jobs, days, excluded_hosts):
    """Per-host VM-job failures over the last runs; optionally exclude the failing hosts."""
    rep = host_ops.host_report(runs_root, last=last)
    if exclude_above is not None:
        bad = host_ops.failing_hosts(rep, exclude_above, min_jobs)
        if bad:
            host_ops.exclude_hosts(
                excluded_hosts,
                bad,
                days=days,
                reason=f"failure rate above {exclude_above:.0%} over {len(rep['runs'])} run(s)",
            )
        rep["excluded"] = bad
    if as_json:
        click.echo(json.dumps(rep, indent=1))
        return
    click.echo(host_ops.format_report(rep), nl=False)
    if rep.get("excluded"):
        click.echo(
            f"excluded for {days:g} days: {', '.join(rep['excluded'])} "
            f"({excluded_hosts or host_ops.default_excluded_hosts_file()})"
        )
