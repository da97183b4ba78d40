"""`history`: a runs root's recent runs, flaky cells, regressions, fixes and slowdowns, from
its run index (analyze/runindex.py); cli/main.py calls `register(main)`."""

from __future__ import annotations

from pathlib import Path

import click

from osgtest_dag.analyze import runindex
from osgtest_dag.base.atomic import write_text_atomic
from osgtest_dag.model.history import DEFAULT_LAST
from osgtest_dag.report import history as report_history


@click.command("history")
@click.argument("runs_root", type=click.Path(path_type=Path))
@click.option(
    "--last",
    type=click.IntRange(min=1),
    default=DEFAULT_LAST,
    show_default=True,
    help="How many of the latest analyzed runs to look at.",
)
@click.option(
    "-f", "--format", "fmt", type=click.Choice(report_history.FORMATS), default="text", show_default=True
)
@click.option(
    "-o", "--output", type=click.Path(path_type=Path, dir_okay=False), help="Write to FILE (default: stdout)."
)
def history_cmd(runs_root: Path, last: int, fmt: str, output: Path | None):
    """The history of the runs in RUNS_ROOT (a directory of run directories, as `nightly` makes
    them): each run's counts, every cell's outcomes over the last runs, the flaky cells (the
    acceptable line crossed at least 3 times), the regressions and fixes since the previous run,
    and the cells whose install or test phase took at least 1.5 times its median.

    Kept fast by an index in RUNS_ROOT/.osgtest-dag-history.sqlite, updated on each call; it
    holds nothing the run directories do not: delete it at will."""
    text = report_history.render(runindex.history(runs_root, last), fmt)
    if output is None:
        click.echo(text, nl=False)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output, text)
    click.echo(f"wrote {output}", err=True)


def register(group: click.Group) -> None:
    group.add_command(history_cmd)
