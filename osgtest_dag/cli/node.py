"""`osgtest-dag node ACTION`: the commands the generated DAG's nodes run.

Hidden from the main help: users don't call them, DAGMan and the local executor do. They work
in the current directory, which is the run directory for every node.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import click

from osgtest_dag.base import forkserver
from osgtest_dag.engine.cluster.runner import ClusterJob, run_cluster
from osgtest_dag.guest import gfs
from osgtest_dag.model.cell import CellConfig
from osgtest_dag.nodes import cluster as cluster_work
from osgtest_dag.nodes import node as node_work

RUN_DIR = click.option(
    "--run-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=".",
    show_default=True,
    help="The run directory.",
)


@click.group(hidden=True)
def node():
    """Work of the workflow's nodes (called by DAGMan and the local executor)."""


@node.command("create-io-disk")
@click.argument("serial")
@click.option("--offset", type=int, default=None, help="Byte offset of the cell in cells.jsonl.")
@RUN_DIR
def create_io_disk(serial, offset, run_dir):
    for disk in cluster_work.create_io_disk(run_dir, serial, offset):
        click.echo(disk)


# $RETURN is negative for a job killed by a signal or removed (-1004): not an option.
@node.command("post-vm", context_settings={"ignore_unknown_options": True})
@click.argument("node_name")
@click.argument("returncode", type=int)
@click.argument("retry", type=int, default=0)
@click.argument("max_retries", type=int, default=0)
@RUN_DIR
@click.pass_context
def post_vm(ctx, node_name, returncode, retry, max_retries, run_dir):
    ctx.exit(cluster_work.post_vm(run_dir, node_name, returncode, retry, max_retries))


@node.command("cluster-run")
@click.option(
    "--config",
    "config",
    type=click.Path(path_type=Path, dir_okay=False),
    default="cell.json",
    show_default=True,
)
@click.option(
    "--image", type=click.Path(path_type=Path, dir_okay=False), required=True, help="The base image."
)
@click.option("--image-format", default="qcow2", show_default=True)
@click.option("--max-wall", type=int, required=True, help="Every VM's wall-clock limit (s).")
@click.pass_context
def cluster_run(ctx, config, image, image_format, max_wall):
    """A cluster cell's VMs, in the job's directory (its TestRun job)."""
    job = ClusterJob(
        cell=CellConfig.read(config),
        image=image,
        image_format=image_format,
        workdir=Path.cwd(),
        max_wall=max_wall,
    )
    ctx.exit(run_cluster(job))


@node.command("process-result")
@click.argument("serial")
@RUN_DIR
def process_result(serial, run_dir):
    s = cluster_work.process_result(run_dir, serial)
    click.echo(f"cell {serial}: {s['outcome']} (exit {s['exit_code']})")


@node.command("clean-output")
@click.argument("serial")
@RUN_DIR
def clean_output(serial, run_dir):
    for p in node_work.clean_output(run_dir, serial):
        click.echo(f"removed {p}")


@node.command("matrix-final")
@RUN_DIR
def matrix_final(run_dir):
    s = node_work.matrix_summary(run_dir)
    click.echo(node_work.text_summary(s), nl=False)


@node.command("analyze")
@RUN_DIR
def analyze(run_dir):
    doc = node_work.analyze(run_dir)
    click.echo(f"results.json: {len(doc.cells)} cells")


@node.command("report")
@RUN_DIR
def report(run_dir):
    written = node_work.report(run_dir)
    click.echo(written["text"].read_text(), nl=False)
    click.echo("wrote " + ", ".join(str(p) for p in written.values()))


@node.command("publish")
@RUN_DIR
def publish(run_dir):
    click.echo("publish: " + node_work.publish(run_dir))


@node.command("fork-server")
@click.pass_context
def fork_server(ctx):
    """Run `osgtest-dag` commands sent on stdin, each in a child forked from this process (the
    local executor's fork server, base/forkserver.py): the node commands are loaded once."""
    gfs.preload()
    root = ctx.find_root().command

    def run(argv: list[str]) -> int:
        logging.getLogger().handlers.clear()  # main() sets logging up as in a new process
        return root.main(args=argv[1:], prog_name="osgtest-dag")

    forkserver.serve(socket.socket(fileno=0), run)


def register(group: click.Group) -> None:
    group.add_command(node)
