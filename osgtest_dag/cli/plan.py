"""The planning commands: lint and plan parameter files, generate a run directory, check it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import click

from osgtest_dag.base.errors import UserError
from osgtest_dag.cli.options import CATALOG, IMAGE_DIR, ONLY, PARAMS, input_files, pinned_input_options
from osgtest_dag.devpool.chroot import Pool
from osgtest_dag.devpool.inside import pool_tools
from osgtest_dag.engine.condor.dryrun import dry_run, host_tools
from osgtest_dag.generate import cellconfig
from osgtest_dag.generate.workflow import WorkflowOptions, check_run, wall_clock_limit, write_run
from osgtest_dag.ops.hosts import active_excluded_hosts
from osgtest_dag.ops.nightly import check_inputs
from osgtest_dag.plan import matrix
from osgtest_dag.plan.catalog import Catalog
from osgtest_dag.plan.cluster import describe


def _matrix(params, catalogs, image_dir, only=()):
    """Load and expand the parameter files, print their warnings (stderr), select `--only`
    (an `--only` matching nothing is an error)."""
    catalog = Catalog.load(catalogs, image_dir=image_dir)
    m = matrix.build(params, catalog)
    for warning in m.warnings:
        click.echo(f"osgtest-dag: {warning}", err=True)
    cells = matrix.select_some(m.cells, matrix.parse_only(only))
    return catalog, m, cells


@click.command()
@PARAMS
@CATALOG
def lint(params, catalogs):
    """Validate parameter files; exit 0 when they are good, 2 otherwise. Warnings (e.g. an EL
    repository id the catalog does not know) go to stderr and do not change the exit code."""
    _, m, cells = _matrix(params, catalogs, None)
    warned = f", {len(m.warnings)} warning(s)" if m.warnings else ""
    clusters = [c.cluster for c in cells if c.cluster is not None]
    if clusters:
        warned = f" ({len(clusters)} cluster cell(s), {sum(c.size for c in clusters)} VMs){warned}"
    click.echo(f"ok: {len(m.files)} parameter file(s), {len(cells)} cells{warned}")


@click.command()
@PARAMS
@ONLY
@CATALOG
@IMAGE_DIR
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def plan(params, only, catalogs, image_dir, fmt):
    """List the cells the parameter files make, and what each file contributed: its cells,
    the duplicates dropped, what each include/exclude rule removed."""
    _, m, cells = _matrix(params, catalogs, image_dir, only)
    if fmt == "json":
        click.echo(json.dumps([c.to_json() for c in cells], indent=1))
        return
    rows = [
        (c.serial, c.platform.id, c.source.raw, c.package_set.label, str(c.priority), _test_text(c))
        for c in cells
    ]
    head = ("SERIAL", "PLATFORM", "SOURCE", "PACKAGE SET", "PRIORITY", "TEST")
    widths = [max([len(head[i])] + [len(r[i]) for r in rows]) for i in range(5)]
    out = ["  ".join(f"{r[i]:<{widths[i]}}" for i in range(5)) + f"  {r[5]}" for r in [head, *rows]]
    # a cluster cell's line is followed by its roles and stages (one-VM cells have one line)
    for at, c in reversed(list(enumerate(cells, start=1))):
        if c.cluster is not None:
            out.insert(at + 1, f"{'':<{widths[0]}}  cluster: {describe(c.cluster)}")
    out += ["", "Per parameter file, in expansion order:"]
    out += [line for part in m.expansions for line in _file_lines(part)]
    total = f"{len(m.cells)} cells from {len(m.files)} parameter file(s)"
    out.append(f"{len(cells)} of {total} selected by --only" if only else total)
    click.echo("\n".join(out))


# A test command longer than this is cut in the table (`--format json` has it whole).
TEST_COMMAND_SHOWN = 60


def _test_text(cell: matrix.Cell) -> str:
    """The TEST column: the kind, and a test command on one line."""
    if cell.test_command is None:
        return cell.test_kind
    command = " ".join(cell.test_command.split())
    if len(command) > TEST_COMMAND_SHOWN:
        command = command[: TEST_COMMAND_SHOWN - 3] + "..."
    return f"command: {command}"


def _file_lines(part: matrix.FileExpansion) -> list[str]:
    removed = sum(r.removed for r in part.rules)
    counts = [f"{part.combinations} combinations"]
    if removed:
        counts.append(f"{removed} removed by rules")
    counts.append(f"{part.duplicates} duplicate(s) dropped")
    span = f" ({part.serials[0]}-{part.serials[-1]})" if part.cells > 1 else ""
    span = f" ({part.serials[0]})" if part.cells == 1 else span
    lines = [f"  {part.path}: {', '.join(counts)} -> {part.cells} cell(s){span}"]
    for r in part.rules:
        what = "matched by no include rule" if r.kind == "include" else "excluded"
        lines.append(f"    {r.kind} {r.where} [{r.text}]: {r.removed} {what}")
    return lines


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
@click.option(
    "--vm-type",
    type=click.Choice(["kvm", "xen"]),
    default="kvm",
    show_default=True,
    help="The VM jobs' hypervisor. xen: xen_kernel = included (the image's own kernel), disks xvda "
    "and xvdb (README, 'On an HTCondor pool').",
)
@click.option("--tool", default="", help="Path of osgtest-dag for the DAG's nodes (default: this one).")
@click.option("--batch-name", default="", help="HTCondor batch name (default: the run directory's name).")
@click.option("--nightly", is_flag=True, help="Mark the run as the nightly run.")
@pinned_input_options
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
    **pinned,
):
    """Write a self-contained run directory (DAGs, submit files, per-cell configuration), with
    the known failures, component tags, osg-test configuration, previous run and publish
    configuration given pinned into its inputs/."""
    inputs = replace(
        input_files(**pinned),
        parameter_arguments=tuple(params),
        only=tuple(only),
        catalog_files=tuple(catalogs),
    )
    check_inputs(inputs)
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
    )
    write_run(run_dir, cells, catalog, opts, param_files=list(m.files), force=force, inputs=inputs)
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
