"""Where the tool keeps things between runs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$OSGTEST_DAG_CACHE`, else `$XDG_CACHE_HOME/osgtest-dag`, else `~/.cache/osgtest-dag`."""
    if os.environ.get("OSGTEST_DAG_CACHE"):
        return Path(os.environ["OSGTEST_DAG_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "osgtest-dag"


def default_image_dir() -> Path:
    """The image store: `$OSGTEST_DAG_IMAGES`, else `<cache>/images`."""
    if os.environ.get("OSGTEST_DAG_IMAGES"):
        return Path(os.environ["OSGTEST_DAG_IMAGES"])
    return cache_dir() / "images"


# The directories shipped beside the package: in a source tree (or an editable install) they
# are at its top level; a wheel carries them inside the package as `_<name>` (pyproject.toml).
SHIPPED = ("payload", "image_templates", "submit_templates")


def shipped_dir(name: str) -> Path:
    """The shipped directory `name` (one of SHIPPED), wherever this installation keeps it."""
    assert name in SHIPPED, name
    package = Path(__file__).resolve().parent.parent  # osgtest_dag/ (this file is base/paths.py)
    inside = package / f"_{name}"
    return inside if inside.is_dir() else package.parent / name
