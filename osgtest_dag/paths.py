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
