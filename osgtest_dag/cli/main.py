"""The `osgtest-dag` command line: a thin layer of click commands over the core modules.

Every command's work is a function you can call from Python; here we only parse options,
call it and print. User errors exit 2 with `file:line: error: ...` and a hint, no traceback
unless --debug.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from osgtest_dag import __version__
from osgtest_dag.base.errors import CommandError, OsgtestDagError

log = logging.getLogger("osgtest_dag")

# Every command, by name -> the cli module that registers it. A module is loaded when one of its
# commands is used: every DAG node job runs `osgtest-dag node ...`, thousands a night, and should not
# load every stage to do so.
LAZY_COMMANDS = {
    **dict.fromkeys(("image", "iodisk"), "guest"),
    "node": "node",
    **dict.fromkeys(("analyze", "report", "compare", "email", "extract"), "results"),
    **dict.fromkeys(
        ("submit", "status", "watch", "rerun", "schedule", "nightly", "cleanup", "hosts"), "condor"
    ),
    "pool": "pool",
    **dict.fromkeys(("lint", "plan", "generate", "check"), "plan"),
    "run": "local",
    "history": "history",
    "reproduce": "reproduce",
}


class _Group(click.Group):
    """Turns our errors into messages and exit codes; loads the stages' commands when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            importlib.import_module(f"osgtest_dag.cli.{LAZY_COMMANDS[cmd_name]}").register(self)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OsgtestDagError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"osgtest-dag: {e}", err=True)
            if isinstance(e, CommandError):
                click.echo("  (run with --debug for details)", err=True)
            ctx.exit(e.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="osgtest-dag")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logging.")
@click.option("-v", "--verbose", is_flag=True, help="Log progress.")
@click.pass_context
def main(ctx, debug: bool, verbose: bool):
    """Test packages across Linux platforms in HTCondor's VM universe.

    Parameter files (platforms x sources x package sets) become a test matrix, the matrix an
    HTCondor workflow, which runs on a pool (DAGMan) or on this machine (local executor).
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
