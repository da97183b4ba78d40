"""What a run was generated from, pinned in its `inputs/` directory so a rerun or a reproduction
uses the same things, or says what changed.

    inputs/images.json   ImagePins   the identity (sha256) of every base image the cells use
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from osgtest_dag.base.errors import UserError
from osgtest_dag.model.documents import Fields, JsonObject, check_document, read_json
from osgtest_dag.model.rundir import RunDir

HINT = "a run directory from an incompatible osgtest-dag version: regenerate it"


@dataclass(frozen=True)
class PinnedImage:
    """One base image as the run first saw it: at generate time, or when the run built it."""

    platform: str  # platform id, e.g. debian_12.x86_64
    path: str  # where the cells' configuration says the image is
    sha256: str
    size: int
    built: str | None = None  # the image store's build time, when it came from the store

    def to_json(self) -> JsonObject:
        return {
            "platform": self.platform,
            "path": self.path,
            "sha256": self.sha256,
            "size": self.size,
            "built": self.built,
        }

    @classmethod
    def from_json(cls, data: Any, where: Path | str, prefix: str) -> PinnedImage:
        f = Fields(data, where, prefix)
        return cls(
            platform=f.text("platform"),
            path=f.text("path"),
            sha256=f.text("sha256"),
            size=f.integer("size"),
            built=f.opt_text("built"),
        )


@dataclass(frozen=True)
class ImagePins:
    """inputs/images.json: one pin per image path; the first pin of a path is the run's."""

    SCHEMA = "osgtest-dag/image-pins"
    VERSION = 1
    images: tuple[PinnedImage, ...] = ()

    def get(self, path: str) -> PinnedImage | None:
        return next((p for p in self.images if p.path == path), None)

    def adding(self, pins: tuple[PinnedImage, ...]) -> ImagePins:
        """These pins plus those of `pins` whose path is not pinned yet."""
        known = {p.path for p in self.images}
        new = tuple(p for p in pins if p.path not in known)
        return ImagePins(tuple(sorted((*self.images, *new), key=lambda p: (p.platform, p.path))))

    def to_json(self) -> JsonObject:
        return {
            "schema": self.SCHEMA,
            "version": self.VERSION,
            "images": [p.to_json() for p in self.images],
        }

    @classmethod
    def from_json(cls, data: Any, where: Path | str) -> ImagePins:
        doc = check_document(data, cls.SCHEMA, cls.VERSION, where, HINT)
        images = doc.get("images")
        if not isinstance(images, list):
            raise UserError("`images` is not a list", where=where, hint=HINT)
        return cls(tuple(PinnedImage.from_json(v, where, f"images[{i}].") for i, v in enumerate(images)))

    @classmethod
    def read(cls, run_dir: Path) -> ImagePins:
        """The run's pins; none for a run generated before images were pinned."""
        path = RunDir(run_dir).image_pins
        if not path.exists():
            return cls()
        return cls.from_json(read_json(path, hint=HINT), path)
