"""The planning commands: lint and plan parameter files, generate a run directory, check it."""

from __future__ import annotations

import json
from pathlib import Path

import click

from osgtest_dag.base.errors import UserError
from osgtest_dag.cli.options import CATALOG, IMAGE_DIR, ONLY, PARAMS
from osgtest_dag.devpool.chroot import Pool
from osgtest_dag.devpool.inside import pool_tools
from osgtest_dag.engine.condor.dryrun import dry_run, host_tools
from osgtest_dag.generate import cellconfig
from osgtest_dag.generate.workflow import WorkflowOptions, check_run, wall_clock_limit, write_run
from osgtest_dag.ops.hosts import active_excluded_hosts
from osgtest_dag.plan import matrix
from osgtest_dag.plan.catalog import Catalog


def _matrix(params, catalogs, image_dir, only=()):
    catalog = Catalog.load(catalogs, image_dir=image_dir)
    m = matrix.build(params, catalog)
    cells = matrix.select(m.cells, matrix.parse_only(only))
    return catalog, m, cells


@click.command()
@PARAMS
@CATALOG
def lint(params, catalogs):
    """Validate parameter files; exit 0 when they are good, 2 otherwise."""
    _, m, cells = _matrix(params, catalogs, None)
    click.echo(f"ok: {len(m.files)} parameter file(s), {len(cells)} cells")


@click.command()
@PARAMS
@ONLY
@CATALOG
@IMAGE_DIR
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def plan(params, only, catalogs, image_dir, fmt):
    """List the cells the parameter files make, and how many."""
    _, m, cells = _matrix(params, catalogs, image_dir, only)
    if fmt == "json":
        click.echo(json.dumps([c.to_json() for c in cells], indent=1))
        return
    rows = [(c.serial, c.platform.id, c.source.raw, c.package_set.label) for c in cells]
    head = ("SERIAL", "PLATFORM", "SOURCE", "PACKAGE SET")
    widths = [max([len(head[i])] + [len(r[i]) for r in rows]) for i in range(3)]
    out = [f"{head[0]:<{widths[0]}}  {head[1]:<{widths[1]}}  {head[2]:<{widths[2]}}  {head[3]}"]
    out += [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows]
    out.append(f"{len(cells)} cells from {len(m.files)} parameter file(s)")
    click.echo("\n".join(out))


@click.command()
@PARAMS
@click.option(
    "-o",
    "--output",
    "run_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="The run directory to create.",
)
@ONLY
@CATALOG
@IMAGE_DIR
@click.option("--force", is_flag=True, help="Replace an existing run directory.")
@click.option(
    "--template-dir",
    type=click.Path(path_type=Path),
    help="Directory whose *.sub.j2 templates override the shipped ones.",
)
@click.option(
    "--max-wall",
    type=click.IntRange(60),
    default=None,
    help="Seconds a VM may run before it is held (and, locally, killed); larger than every "
    "test_timeout. Default: the largest test_timeout plus 30 min for boot, repositories and "
    "install (twice that for cells with an update).",
)
@click.option(
    "--max-starts",
    type=click.IntRange(1),
    default=3,
    show_default=True,
    help="Job starts before a held VM job is removed.",
)
@click.option(
    "--max-queue-time",
    type=click.IntRange(60),
    default=43200,
    show_default=True,
    help="Seconds a VM job may stay in the queue.",
)
@click.option(
    "--vm-retries",
    type=click.IntRange(0),
    default=2,
    show_default=True,
    help="DAG retries of a VM node after an infrastructure failure.",
)
@click.option(
    "--local-io-maxjobs",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="Disk creation / extraction nodes at once (MAXJOBS LocalIO).",
)
@click.option(
    "--requirements", "extra_requirements", default=None, help="Extra ClassAd requirements for the VM jobs."
)
@click.option(
    "--exclude-host",
    "excluded_hosts",
    multiple=True,
    metavar="MACHINE",
    help="Execute host the VM jobs must avoid (repeatable).",
)
@click.option(
    "--excluded-hosts",
    "excluded_hosts_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Excluded-hosts list with expiries (default: ~/.config/osgtest-dag/excluded-hosts.yaml, "
    "maintained by `osgtest-dag hosts`).",
)
@click.option("--vm-type", type=click.Choice(["kvm", "xen"]), default="kvm", show_default=True)
@click.option("--tool", default="", help="Path of osgtest-dag for the DAG's nodes (default: this one).")
@click.option("--batch-name", default="", help="HTCondor batch name (default: the run directory's name).")
@click.option("--nightly", is_flag=True, help="Mark the run as the nightly run.")
@click.option(
    "--publish-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Directory the Publish node copies the results and reports into (under the run's name).",
)
def generate(
    params,
    run_dir,
    only,
    catalogs,
    image_dir,
    force,
    template_dir,
    max_wall,
    max_starts,
    max_queue_time,
    vm_retries,
    local_io_maxjobs,
    extra_requirements,
    excluded_hosts,
    excluded_hosts_file,
    vm_type,
    tool,
    batch_name,
    nightly,
    publish_dir,
):
    """Write a self-contained run directory (DAGs, submit files, per-cell configuration)."""
    catalog, m, cells = _matrix(params, catalogs, image_dir, only)
    if excluded_hosts_file and not excluded_hosts_file.is_file():
        raise UserError(
            "excluded-hosts file not found",
            where=excluded_hosts_file,
            hint="`osgtest-dag hosts RUNS_ROOT --exclude-above ...` writes one",
        )
    excluded_hosts = tuple(dict.fromkeys([*excluded_hosts, *active_excluded_hosts(excluded_hosts_file)]))
    opts = WorkflowOptions(
        tool=tool,
        vm_type=vm_type,
        max_wall=wall_clock_limit(cells, max_wall),
        max_starts=max_starts,
        max_queue_time=max_queue_time,
        vm_retries=vm_retries,
        local_io_maxjobs=local_io_maxjobs,
        extra_requirements=extra_requirements,
        excluded_hosts=tuple(excluded_hosts),
        template_dir=str(template_dir) if template_dir else None,
        batch_name=batch_name,
        nightly=nightly,
        publish_dir=str(Path(publish_dir).resolve()) if publish_dir else None,
    )
    write_run(run_dir, cells, catalog, opts, param_files=list(m.files), force=force)
    # Only images whose directory is here: a run generated for another submit host is fine.
    _warn_missing_images(cellconfig.missing_images(run_dir, only_present_dirs=True))
    click.echo(
        f"wrote {run_dir}: {len(cells)} cells; submit with "
        f"`condor_submit_dag {run_dir}/workflow.dag` or run here with `osgtest-dag run {run_dir}`"
    )


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--strict",
    is_flag=True,
    help="Fail (exit 2) when HTCondor's tools are not found and only the syntax could be checked.",
)
def check(run_dir, strict):
    """Check a run directory: DAGs acyclic with their files present; then HTCondor's own
    tools: `condor_submit -dry-run` of every node's submit file with its VARS, and
    `condor_dagman -DryRun` parsing every DAG. The tools are the test pool's (when its root is
    built), else the host's on PATH; without either only the syntax is checked, which is said
    and exits 0 (2 with --strict). Warns about each missing base image. Exit 2 on an error."""
    c = check_run(run_dir)
    _warn_missing_images(cellconfig.missing_images(run_dir))
    structure = f"{c['dags']} DAG(s), {c['nodes']} nodes, {c['submit_files']} submit files"
    tools = pool_tools() or host_tools()
    if tools is None:
        message = (
            f"only the syntax was checked ({structure} parsed by the htcondor2 bindings): HTCondor's "
            f"tools were not found (no test pool root in {Pool().root}, no condor_submit on PATH)"
        )
        hint = "build the test pool's root once with `osgtest-dag pool up` (as root), or install HTCondor"
        if strict:
            raise UserError(message, hint=hint)
        click.echo(f"osgtest-dag: warning: {message}\n  hint: {hint}", err=True)
        click.echo(f"ok (syntax only): {structure}")
        return
    report = dry_run(run_dir, tools)
    for w in report.warnings[:10]:
        click.echo(f"osgtest-dag: warning: {w}", err=True)
    if len(report.warnings) > 10:
        click.echo(f"osgtest-dag: warning: ... and {len(report.warnings) - 10} more", err=True)
    checked = (
        f"{report.nodes} node submissions ({report.submit_files} submit files) by condor_submit -dry-run "
        f"and {report.dags} DAG(s) by condor_dagman -DryRun, {report.htcondor} from "
        f"{report.tools}, in {report.seconds:g} s"
    )
    if report.errors:
        for e in report.errors:
            click.echo(f"{e.where}: error: {e.message}", err=True)
        raise UserError(f"{len(report.errors)} error(s) found by HTCondor's tools ({checked})")
    click.echo(f"ok: {structure}; {checked}")


def _warn_missing_images(missing) -> None:
    for m in missing:
        click.echo(f"osgtest-dag: warning: {m.describe()}", err=True)


def register(group: click.Group) -> None:
    for cmd in (lint, plan, generate, check):
        group.add_command(cmd)
