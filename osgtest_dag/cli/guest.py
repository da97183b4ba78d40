"""Guest-side commands: `image build`, `image import`, `image list`, `iodisk`. Thin wrappers
over guest/image.py, guest/image_import.py, ops/smoke.py and guest/iodisk.py; cli.py calls
`register(main)`."""

from __future__ import annotations

from pathlib import Path

import click

from osgtest_dag.base import paths
from osgtest_dag.guest import image, image_import, iodisk, qemu
from osgtest_dag.ops import smoke
from osgtest_dag.plan.catalog import Platform

STORE = click.option(
    "--store",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Image store (default: $OSGTEST_DAG_IMAGES or ~/.cache/osgtest-dag/images).",
)

NO_SMOKE = click.option(
    "--no-smoke",
    is_flag=True,
    help="Install the new image without the smoke boot (a VM with a minimal cell that must "
    "start the payload).",
)


def _verifier(no_smoke: bool) -> image.Verify | None:
    """The smoke boot, saying how it went; None with --no-smoke."""
    if no_smoke:
        return None

    def verify(made: Path, platform: Platform) -> None:
        click.echo(f"{platform.id}: smoke boot (limit {smoke.LIMIT_S} s)...", err=True)
        click.echo(smoke.verify_image(made, platform).line(), err=True)

    return verify


@click.group("image")
def image_group():
    """Build, import and list base images."""


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
@click.option(
    "--force", is_flag=True, help="Rebuild even if the inputs did not change (or the image was imported)."
)
@NO_SMOKE
def image_build(platform: str, builder: str, store: Path | None, force: bool, no_smoke: bool):
    """Build the base image of PLATFORM (e.g. debian_12.x86_64) unless it is up to date,
    then smoke-boot it before it goes into the store. EL platforms: use `image import` with the
    distribution's GenericCloud image (the installed Oz knows no EL 8 or later)."""
    click.echo(qemu.accel_choice().line(), err=True)  # the builders' VMs and appliances run under it
    out = image.build_image(platform, store, builder=builder, force=force, verify=_verifier(no_smoke))
    info = out.image
    if out.built:
        click.echo(
            f"built {info.path} ({info.builder}, {info.build_seconds:.0f} s; {', '.join(out.reasons)})"
        )
    else:
        click.echo(f"up to date: {info.path} ({info.builder}, built {info.built})")


@image_group.command("import")
@click.argument("platform")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=True, exists=False))
@STORE
@NO_SMOKE
def image_import_cmd(platform: str, file: Path, store: Path | None, no_smoke: bool):
    """Make FILE, a distribution's own disk image (qcow2 or raw: Rocky/AlmaLinux GenericCloud,
    a Debian cloud image), the base image of PLATFORM: converted to qcow2, customized (boot
    hook, serial console, DHCP on any NIC, cloud-init disabled, SELinux permissive),
    smoke-booted, then stored with FILE's sha256 and origin. FILE is only read."""
    click.echo(qemu.accel_choice().line(), err=True)  # the appliance and the smoke boot run under it
    out = image_import.import_image(platform, file, store, verify=_verifier(no_smoke))
    info = out.image
    origin = info.origin
    assert origin is not None
    click.echo(
        f"imported {origin.path} (sha256 {origin.sha256[:16]}, {origin.format}) -> {info.path} "
        f"({len(info.packages)} packages, {info.build_seconds:.0f} s)"
    )


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
