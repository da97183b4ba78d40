"""What a run was generated from, pinned in its `inputs/` directory so a rerun or a reproduction
uses the same things, or says what changed.

    inputs/images.json   ImagePins   the identity (sha256) of every base image the cells use
    inputs/inputs.json   RunInputs   the parameter set's identity, and the pinned copies beside it:
                                     catalog.json (the catalog entries the cells use, in the
                                     catalog-file format), known-failures-N.<ext>,
                                     component-tags.yaml, osg-test.conf, previous-results.json
    inputs/publish.json  (model/publish.py) where the Publish node copies the reports and mails

The Analyze node applies the pinned known failures and component tags, CreateDisk the pinned
osg-test configuration, Report compares with the pinned previous results; `rerun` starts from
the pinned copies, not from today's files.
"""

from __future__ import annotations

import hashlib
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


# ------------------------------------------------------------------------------ inputs.json
def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class PinnedFile:
    """A file the run was generated with, copied into inputs/."""

    origin: str  # the file as given (absolute); for a rerun, the source run's copy
    copy: str  # the copy's name in inputs/
    sha256: str

    def to_json(self) -> JsonObject:
        return {"origin": self.origin, "copy": self.copy, "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: Any, where: Path | str, prefix: str) -> PinnedFile:
        f = Fields(data, where, prefix)
        copy = f.text("copy")
        if not copy or "/" in copy or copy.startswith("."):
            raise UserError(
                f"`{prefix}copy` is not a file name in inputs/ ({copy!r})", where=where, hint=HINT
            )
        return cls(origin=f.text("origin"), copy=copy, sha256=f.text("sha256"))

    def origin_now(self) -> str | None:
        """How the origin differs from the copy now: None when it is the same, else why."""
        origin = Path(self.origin)
        if not origin.is_file():
            return f"{self.origin} is gone"
        if file_sha256(origin) != self.sha256:
            return f"{self.origin} changed since the run pinned it"
        return None


@dataclass(frozen=True)
class ParameterSet:
    """What makes two runs comparable: the parameter files or directories as given (resolved,
    sorted) and the `--only` selection. The files' contents may change between two runs of
    the same set: that is what a comparison shows (new and gone cells)."""

    identity: str  # sha256 of the arguments and the selection
    arguments: tuple[str, ...]
    only: tuple[str, ...] = ()

    @classmethod
    def of(cls, arguments: tuple[str, ...], only: tuple[str, ...] = ()) -> ParameterSet:
        args, sel = tuple(sorted(arguments)), tuple(sorted(only))
        text = "\0".join(("params", *args, "only", *sel))
        return cls(hashlib.sha256(text.encode()).hexdigest(), args, sel)

    def to_json(self) -> JsonObject:
        return {"identity": self.identity, "arguments": list(self.arguments), "only": list(self.only)}

    @classmethod
    def from_json(cls, data: Any, where: Path | str) -> ParameterSet:
        f = Fields(data, where, "parameter_set.")
        return cls(identity=f.text("identity"), arguments=f.texts("arguments"), only=f.texts("only"))


@dataclass(frozen=True)
class PinnedPrevious:
    """The previous comparable run: its results.json is copied (previous-results.json), so
    the comparison holds after retention deletes that run."""

    run_dir: str
    run_name: str
    generated: str | None
    results: PinnedFile

    def to_json(self) -> JsonObject:
        return {
            "run_dir": self.run_dir,
            "run_name": self.run_name,
            "generated": self.generated,
            "results": self.results.to_json(),
        }

    @classmethod
    def from_json(cls, data: Any, where: Path | str) -> PinnedPrevious:
        f = Fields(data, where, "previous.")
        return cls(
            run_dir=f.text("run_dir"),
            run_name=f.text("run_name"),
            generated=f.opt_text("generated"),
            results=PinnedFile.from_json(f.data.get("results"), where, "previous.results."),
        )


@dataclass(frozen=True)
class RunInputs:
    """inputs/inputs.json: what the run was generated from besides its parameter files."""

    SCHEMA = "osgtest-dag/run-inputs"
    VERSION = 1
    parameter_set: ParameterSet
    catalog: PinnedFile  # origin: "" (the shipped catalog and catalog_files, merged)
    catalog_files: tuple[str, ...] = ()  # the --catalog files given
    known_failures: tuple[PinnedFile, ...] = ()
    component_tags: PinnedFile | None = None
    osg_test_config: PinnedFile | None = None
    previous: PinnedPrevious | None = None

    def files(self) -> tuple[tuple[str, PinnedFile], ...]:
        """(what, pin) of every pinned copy but the catalog's."""
        out: list[tuple[str, PinnedFile]] = [("known failures", k) for k in self.known_failures]
        if self.component_tags:
            out.append(("component tags", self.component_tags))
        if self.osg_test_config:
            out.append(("osg-test configuration", self.osg_test_config))
        return tuple(out)

    def to_json(self) -> JsonObject:
        return {
            "schema": self.SCHEMA,
            "version": self.VERSION,
            "parameter_set": self.parameter_set.to_json(),
            "catalog": self.catalog.to_json(),
            "catalog_files": list(self.catalog_files),
            "known_failures": [k.to_json() for k in self.known_failures],
            "component_tags": self.component_tags.to_json() if self.component_tags else None,
            "osg_test_config": self.osg_test_config.to_json() if self.osg_test_config else None,
            "previous": self.previous.to_json() if self.previous else None,
        }

    @classmethod
    def from_json(cls, data: Any, where: Path | str) -> RunInputs:
        f = Fields(check_document(data, cls.SCHEMA, cls.VERSION, where, HINT), where)
        known = f.data.get("known_failures")
        if not isinstance(known, list):
            raise UserError("`known_failures` is not a list", where=where, hint=HINT)

        def opt_file(key: str) -> PinnedFile | None:
            value = f.data.get(key)
            return None if value is None else PinnedFile.from_json(value, where, f"{key}.")

        previous = f.data.get("previous")
        return cls(
            parameter_set=ParameterSet.from_json(f.data.get("parameter_set"), where),
            catalog=PinnedFile.from_json(f.data.get("catalog"), where, "catalog."),
            catalog_files=f.texts("catalog_files"),
            known_failures=tuple(
                PinnedFile.from_json(v, where, f"known_failures[{i}].") for i, v in enumerate(known)
            ),
            component_tags=opt_file("component_tags"),
            osg_test_config=opt_file("osg_test_config"),
            previous=None if previous is None else PinnedPrevious.from_json(previous, where),
        )

    @classmethod
    def read(cls, run_dir: Path) -> RunInputs | None:
        """The run's pinned inputs; None for a run generated before they were pinned."""
        path = RunDir(run_dir).run_inputs
        if not path.exists():
            return None
        return cls.from_json(read_json(path, hint=HINT), path)
