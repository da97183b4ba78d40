"""Options several commands share."""

from __future__ import annotations

from pathlib import Path

import click

PARAMS = click.argument("params", nargs=-1, required=True, type=click.Path(path_type=Path))
ONLY = click.option(
    "--only",
    "only",
    multiple=True,
    metavar="KEY=GLOB",
    help="Select cells: serial, platform, os, arch, family, source, series, label, "
    "package. Repeat for more (same key: any; different keys: all).",
)
CATALOG = click.option(
    "--catalog",
    "catalogs",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Extra platform/repository catalog (YAML) overriding the shipped one.",
)
IMAGE_DIR = click.option(
    "--image-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where base images live (default: $OSGTEST_DAG_IMAGES or ~/.cache/osgtest-dag/images).",
)
