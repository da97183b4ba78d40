"""`reproduce`: boot a cell's VM again as it ran, with a command or a root shell."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from osgtest_dag.base.errors import UserError
from osgtest_dag.engine.local.accel import RunAccel
from osgtest_dag.engine.local.reproduce import ALLOW_IMAGE_CHANGE, prepare, reproduce
from osgtest_dag.guest import payload

EXIT_NO_STATUS = 3  # the VM ended without the command's status, or not by powering off


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.argument("serial")
@click.option(
    "--until",
    type=click.Choice(payload.PHASES),
    default=None,
    help="Run the payload's phases up to and including this one, skip the later ones "
    "(default: the phase the cell failed in; all phases for a cell that passed).",
)
@click.option(
    "--exec",
    "exec_command",
    metavar="CMD",
    default=None,
    help="Run CMD (a shell command) as root after the phases, print its output and exit "
    "with its status (default: a root shell on the VM's serial console, in this terminal).",
)
@click.option("--keep", is_flag=True, help="Keep the VM's disks and console (the directory is printed).")
@click.option(
    ALLOW_IMAGE_CHANGE,
    "allow_image_change",
    is_flag=True,
    help="Boot today's base image even when it is not the one the run used.",
)
@click.option(
    "--accel",
    type=click.Choice(["auto", "kvm", "tcg"]),
    default="auto",
    show_default=True,
    help="qemu acceleration; auto probes KVM and falls back to TCG.",
)
def reproduce_cmd(run_dir, serial, until, exec_command, keep, allow_image_change, accel):
    """Boot cell SERIAL of RUN_DIR again as it ran, then run a command in it or give a root
    shell on its console.

    The VM gets the run's base image (refused if it changed since the run), a fresh copy of
    the cell's IO disk, and the run's memory, vCPUs and networking; the run directory is not
    changed. The payload runs its phases up to --until, then --exec CMD runs as root, or a
    root shell starts on the serial console: `poweroff` ends it, Ctrl-a x quits at once.

    \b
    Exit codes:
      with --exec  CMD's status; 3 when the VM ended before CMD did
      without      0 when the VM powered off; 3 when it had to be stopped
      2            usage error: unknown cell, missing or changed base image
    """
    target = prepare(run_dir, serial, until=until, allow_image_change=allow_image_change)
    for w in target.warnings:
        click.echo(f"osgtest-dag: warning: {w}", err=True)
    cell = target.cell
    click.echo(
        f"reproducing cell {serial} ({cell.platform.name} | {cell.label}): {target.until_why}; "
        f"{target.memory_mb} MiB, {target.vcpus} vCPU, network {'on' if target.networking else 'off'}",
        err=True,
    )
    if exec_command is None:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise UserError(
                "a root shell on the VM's console needs a terminal", hint="run a command with --exec CMD"
            )
        click.echo(
            "the console comes to this terminal: a root shell once the phases ran (a minute or "
            "more without KVM); `poweroff` in it ends the session, Ctrl-a x quits qemu at once.",
            err=True,
        )
    done = reproduce(
        target,
        exec_command=exec_command,
        keep=keep,
        out=sys.stdout.buffer,
        accel=RunAccel(None if accel == "auto" else accel),
    )
    if done.kept:
        click.echo(
            f"kept in {done.kept}: overlay-*.qcow2 (the system disk over {target.image}), "
            f"io-{serial}.qcow2 (the IO disk as the guest left it), console.log",
            err=True,
        )
    boot = done.boot
    if exec_command is not None:
        if done.status is None:
            why = (
                f"stopped at its {target.max_wall} s limit"
                if boot.timed_out
                else f"qemu exit {boot.returncode}"
            )
            click.echo(
                f"osgtest-dag: the VM ended before the command did ({why}); "
                + (
                    "see its console in the kept directory"
                    if done.kept
                    else "rerun with --keep to see its console"
                ),
                err=True,
            )
            raise SystemExit(EXIT_NO_STATUS)
        raise SystemExit(done.status)
    if not boot.ok:
        click.echo(
            "osgtest-dag: the VM did not power off by itself ("
            + ("stopped at its limit" if boot.timed_out else f"qemu exit {boot.returncode}")
            + ")",
            err=True,
        )
        raise SystemExit(EXIT_NO_STATUS)


def register(group: click.Group) -> None:
    group.add_command(reproduce_cmd, name="reproduce")
