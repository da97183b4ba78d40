"""`run`: a run directory on this machine, with the local executor."""

from __future__ import annotations

from pathlib import Path

import click

from osgtest_dag.cli.options import ONLY
from osgtest_dag.engine.local.localrun import run_local
from osgtest_dag.engine.local.vmjob import DEFAULT_SILENT_LIMIT_S
from osgtest_dag.plan import matrix


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(0),
    default=0,
    help="VMs at once (default: what this machine's cores and memory hold).",
)
@ONLY
@click.option(
    "--accel",
    type=click.Choice(["auto", "kvm", "tcg"]),
    default="auto",
    show_default=True,
    help="qemu acceleration; auto probes KVM and falls back to TCG.",
)
@click.option(
    "--silent-limit",
    type=click.FloatRange(min=1),
    default=DEFAULT_SILENT_LIMIT_S,
    show_default=True,
    help="Seconds a VM may stay silent on its console after it starts; then it is hung "
    "(under KVM: KVM is given up and the VM starts again under TCG).",
)
@click.option("--no-progress", is_flag=True, help="No live progress display.")
@click.option(
    "--build-images",
    is_flag=True,
    help="Build the selected cells' missing base images first (else a missing one is refused).",
)
def run(run_dir, jobs, only, accel, silent_limit, no_progress, build_images):
    """Run a generated run directory on this machine (VMs under qemu), then report
    (`osgtest-dag submit` runs it on an HTCondor pool).

    Interrupted (Ctrl-C, or a killed process), the same command resumes: finished nodes
    are not run again. A missing base image, or a directory another command or a DAGMan job
    has, is refused before anything runs.

    \b
    Exit codes (from the selected cells' outcomes, as results.json has them):
      0  every cell passed: pass, waived, cleanup
      1  product failures (fail, update, install), every other cell passed
      2  usage error: bad input, missing base image, run directory in use
      3  a cell without a verdict (timeout, infra, missing), or the workflow failed
    """
    r = run_local(
        run_dir,
        jobs=jobs,
        only=matrix.parse_only(only),
        accel=accel,
        progress=not no_progress,
        build_images=build_images,
        silent_limit_s=silent_limit,
    )
    if r.report:
        click.echo(r.report.read_text(), nl=False)
    html = Path(run_dir) / "report.html"
    click.echo(
        f"{'finished' if r.ok else 'FAILED'} in {r.wall_s:.0f} s ({_outcome_counts(r.outcomes)}); "
        f"run directory: {run_dir}"
        + (f"; reports: {r.report}" if r.report else "")
        + (f", {html}" if html.is_file() else "")
    )
    raise SystemExit(int(r.exit_code))


def _outcome_counts(outcomes: dict) -> str:
    counts: dict = {}
    for o in outcomes.values():
        counts[o] = counts.get(o, 0) + 1
    return ", ".join(f"{n} {o.value}" for o, n in sorted(counts.items(), key=lambda kv: kv[0].severity))


def register(group: click.Group) -> None:
    group.add_command(run)
