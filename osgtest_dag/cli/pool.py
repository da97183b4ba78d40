"""`osgtest-dag pool up|status|down`: a personal HTCondor pool on this machine (pool.py)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from osgtest_dag.devpool import pool as devpool


def register(group: click.Group) -> None:
    group.add_command(pool)


@click.group()
def pool():
    """A personal HTCondor pool (trixie chroot) to run workflows for real. Needs root."""


@pool.command("up")
@click.option(
    "--bind",
    "binds",
    multiple=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Work directory to share at the same path inside the pool (repeatable; default: <cache>/pool/work).",
)
@click.option("--rebuild", is_flag=True, help="Rebuild the cached root first.")
def pool_up(binds, rebuild):
    """Build the root once (cached), then start libvirtd and HTCondor in it. Idempotent."""
    if rebuild:
        devpool.down()
        devpool.build_root(force=True)
    r = devpool.up(binds=binds)
    b = r.get("build", {})
    if b.get("built"):
        click.echo(f"built the pool root in {b['seconds']:.0f} s: {b['root']}")
    if r.get("already_up"):
        click.echo("the pool is already up")
    else:
        click.echo(f"pool up in {r['seconds']:.0f} s (VM guests: {r.get('accel')})")
    _show(devpool.status())


def _show(st) -> None:
    click.echo(f"root: {st.root} ({'built' if st.built else 'not built'})")
    click.echo("daemons: " + (", ".join(f"{k} {v if v else '-'}" for k, v in st.daemons.items()) or "-"))
    for s in st.slots:
        click.echo(
            f"slot {s.get('Name')}: {s.get('State')}/{s.get('Activity')} cpus {s.get('Cpus')} "
            f"memory {s.get('Memory')} MB HasVM {s.get('HasVM')}"
            + (f" offline {s.get('OfflineUniverses')}" if s.get("OfflineUniverses") else "")
        )
    click.echo(f"work directories: {', '.join(st.binds) or '-'}")
    click.echo(f"status: {'up' if st.up else 'down'}" + ("" if st.has_vm is None else f", HasVM={st.has_vm}"))


@pool.command("status")
@click.option("--json", "as_json", is_flag=True)
def pool_status(as_json):
    """Daemons, slots, HasVM."""
    st = devpool.status()
    if as_json:
        click.echo(json.dumps(st.to_json(), indent=1))
    else:
        _show(st)


@pool.command("down")
def pool_down():
    """Stop everything the pool started (by pid) and unmount."""
    r = devpool.down()
    click.echo(f"pool down: stopped {len(set(r['pids']))} process(es), unmounted {len(r['unmounted'])}")
