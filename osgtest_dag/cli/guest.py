"""Guest-side commands: `image build`, `image list`, `iodisk`. Thin wrappers over
image.py and iodisk.py; cli.py calls `register(main)`."""

from __future__ import annotations

from pathlib import Path

import click

from osgtest_dag.base import paths
from osgtest_dag.guest import image, iodisk, qemu

STORE = click.option(
    "--store",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Image store (default: $OSGTEST_DAG_IMAGES or ~/.cache/osgtest-dag/images).",
)


@click.group("image")
def image_group():
    """Build and list base images."""


@image_group.command("build")
@click.argument("platform")
@click.option(
    "--builder",
    type=click.Choice(["auto", "local", "oz"]),
    default="auto",
    show_default=True,
    help="local: mmdebstrap, Debian only, no install media; oz: oz-install from "
    "image_templates/; auto: local for Debian, oz otherwise.",
)
@STORE
@click.option("--force", is_flag=True, help="Rebuild even if the inputs did not change.")
def image_build(platform: str, builder: str, store: Path | None, force: bool):
    """Build the base image of PLATFORM (e.g. debian_12.x86_64) unless it is up to date."""
    click.echo(qemu.accel_choice().line(), err=True)  # the builders' VMs and appliances run under it
    out = image.build_image(platform, store, builder=builder, force=force)
    info = out.image
    if out.built:
        click.echo(
            f"built {info.path} ({info.builder}, {info.build_seconds:.0f} s; {', '.join(out.reasons)})"
        )
    else:
        click.echo(f"up to date: {info.path} ({info.builder}, built {info.built})")


@image_group.command("list")
@STORE
def image_list(store: Path | None):
    """List the images in the store."""
    infos = image.list_images(store)
    if not infos:
        click.echo(f"no images in {store or paths.default_image_dir()}")
        return
    for i in infos:
        click.echo(
            f"{i.platform:<28} {i.builder:<6} {i.built:<21} {i.size / 2**20:8.0f} MiB  "
            f"{len(i.packages):4d} packages  {i.path}"
        )


@click.command("iodisk")
@click.argument("cell_input_dir", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "disk",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The qcow2 IO disk to write.",
)
@click.option("--size-mb", type=int, default=64, show_default=True)
@click.option("--backend", type=click.Choice(["mke2fs", "virt-make-fs"]), default="mke2fs", show_default=True)
def iodisk_cmd(cell_input_dir: Path, disk: Path, size_mb: int, backend: str):
    """Make a cell's IO disk (ext4 labelled OSGTEST-IO: run-job, input/, output/)."""
    click.echo(iodisk.make_iodisk(cell_input_dir, disk, size_mb=size_mb, backend=backend))


def register(group: click.Group) -> None:
    """Add the guest-side commands to the main command group."""
    group.add_command(image_group)
    group.add_command(iodisk_cmd)
