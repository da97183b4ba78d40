"""Options several commands share."""

from __future__ import annotations

from pathlib import Path

import click

from osgtest_dag.generate.inputs import InputFiles
from osgtest_dag.model.publish import PublishConfig

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


# --- the inputs generate and nightly pin into the run directory (generate/inputs.py) ---
_PINNED_INPUT_OPTIONS = (
    click.option(
        "--known-failures",
        "known_failures",
        multiple=True,
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        help="Known failures (reference test-exceptions.yaml or extended format) the Analyze node "
        "applies; pinned into the run (repeatable).",
    ),
    click.option(
        "--component-tags",
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        default=None,
        help="component-tags.yaml for the Analyze node; pinned into the run.",
    ),
    click.option(
        "--osg-test-config",
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        default=None,
        help="osg-test's base configuration ([Config] section) each cell's keys are appended to; "
        "pinned into the run (default: the built-in one).",
    ),
    click.option(
        "--previous",
        type=click.Path(path_type=Path, exists=True),
        default=None,
        help="A previous comparable run (analyzed): its results are pinned and the reports say "
        "what changed since.",
    ),
    click.option(
        "--publish-config",
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        default=None,
        help="Publish configuration (YAML: publish_dir, smtp; see docs/nightly.md) written into "
        "the run as inputs/publish.json for the Publish node.",
    ),
    click.option(
        "--publish-dir",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help="Directory the Publish node copies the reports into (under the run's name); "
        "overrides the configuration's publish_dir.",
    ),
)


def pinned_input_options(f):
    for option in reversed(_PINNED_INPUT_OPTIONS):
        f = option(f)
    return f


def input_files(
    known_failures=(),
    component_tags=None,
    osg_test_config=None,
    previous=None,
    publish_config=None,
    publish_dir=None,
    *,
    default_publish_config: Path | None = None,
    **_,
) -> InputFiles:
    """The pinned-input options as generate/inputs.InputFiles. `default_publish_config`: read
    when there and no --publish-config is given (the nightly's)."""
    config_file = publish_config
    if config_file is None and default_publish_config is not None and default_publish_config.is_file():
        config_file = default_publish_config
    publish = PublishConfig.load(config_file) if config_file else None
    if publish_dir is not None:
        publish = PublishConfig(
            publish_dir=str(Path(publish_dir).resolve()), smtp=publish.smtp if publish else None
        )
    return InputFiles(
        known_failures=tuple(known_failures),
        component_tags=component_tags,
        osg_test_config=osg_test_config,
        previous=previous,
        publish=publish,
    )
