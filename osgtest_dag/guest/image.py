"""The base-image store: `<platform>.qcow2` plus `<platform>.json` metadata per platform.

An image is built here (`build_image`: the local Debian builder or Oz) or imported from a
distribution's own image (guest/image_import.py: builder `import`, with the imported file's
digest and origin in the metadata). A build is skipped when the hash of its inputs (builder,
template/recipe text, package list, payload files baked into the image, builder code version)
matches the stored metadata; when it does not, the log says which input changed. Image and
metadata are written atomically, and a per-platform lock keeps two processes from making the
same image at once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from osgtest_dag.base import paths
from osgtest_dag.base.atomic import write_json_atomic
from osgtest_dag.base.errors import UserError
from osgtest_dag.guest import debian_builder, oz_builder, payload
from osgtest_dag.model.documents import read_document
from osgtest_dag.plan.catalog import Catalog, Platform

log = logging.getLogger("osgtest_dag.guest.image")

META_SCHEMA = "osgtest-dag/image"
META_VERSION = 1
BUILDERS = ("auto", "local", "oz")
IMPORT_BUILDER = "import"  # the metadata's builder of an image made by `image import`
# What each input is called when it changed (the order is the order of the log message).
INPUT_NAMES = {
    "builder": "builder changed",
    "template": "template changed",
    "packages": "package list changed",
    "payload": "payload changed",
    "code": "builder code changed",
}


@dataclass(frozen=True)
class BuildInputs:
    """What decides an image's content; `digest` is the inputs hash stored in the metadata."""

    builder: str
    template: str
    packages: tuple[str, ...]
    payload: str
    code: str

    def parts(self) -> dict[str, str]:
        """One sha256 per input, so a rebuild can say which one changed."""

        def h(s: str) -> str:
            return hashlib.sha256(s.encode()).hexdigest()

        return {
            "builder": h(self.builder),
            "template": h(self.template),
            "packages": h("\n".join(self.packages)),
            "payload": self.payload,
            "code": h(self.code),
        }

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.parts(), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class ImageOrigin:
    """The file an imported image was made from, as it was when imported."""

    path: str  # absolute
    size: int
    mtime: str  # ISO 8601, UTC
    sha256: str
    format: str  # as qemu-img saw it: qcow2 | raw

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "size": self.size,
            "mtime": self.mtime,
            "sha256": self.sha256,
            "format": self.format,
        }

    @classmethod
    def from_json(cls, doc: dict) -> ImageOrigin:
        return cls(
            path=str(doc["path"]),
            size=int(doc["size"]),
            mtime=str(doc["mtime"]),
            sha256=str(doc["sha256"]),
            format=str(doc["format"]),
        )


@dataclass(frozen=True)
class ImageInfo:
    """One stored image, as its metadata describes it."""

    platform: str
    path: Path
    meta_path: Path
    builder: str
    sha256: str
    size: int
    inputs_hash: str
    inputs: dict = field(repr=False)
    built: str
    build_seconds: float
    packages: tuple[str, ...] = field(repr=False)
    origin: ImageOrigin | None = None  # an imported image's source file


@dataclass(frozen=True)
class BuildOutcome:
    """What `build_image` did: `built` false means the stored image was up to date."""

    image: ImageInfo
    built: bool
    reasons: tuple[str, ...]


def resolve_platform(platform_id: str, catalog: Catalog | None = None) -> Platform:
    """`debian_12.x86_64`, or `debian_12` meaning x86_64."""
    pid = platform_id if "." in platform_id else f"{platform_id}.x86_64"
    return (catalog or Catalog.load()).platform(pid)


def image_path(platform_id: str, store: Path | str | None = None) -> Path:
    return Path(store or paths.default_image_dir()) / f"{platform_id}.qcow2"


def choose_builder(platform: Platform, builder: str) -> str:
    """`auto`: the local builder for Debian (needs no install media), Oz otherwise."""
    if builder not in BUILDERS:
        raise UserError(f"unknown image builder {builder!r}", hint=f"use one of {', '.join(BUILDERS)}")
    if builder == "auto":
        return "local" if platform.family == "debian" else "oz"
    if builder == "local" and platform.family != "debian":
        raise UserError(
            f"the local builder makes Debian images only, not {platform.name}",
            hint="use --builder oz for EL platforms",
        )
    return builder


def _local_recipe(platform: Platform, catalog: Catalog) -> debian_builder.Recipe:
    return debian_builder.recipe_for(
        platform.codename,
        mirror=catalog.settings.get("debian_mirror", "http://deb.debian.org/debian"),
        security_mirror=catalog.settings.get(
            "debian_security_mirror", "http://deb.debian.org/debian-security"
        ),
        arch=platform.arch,
    )


def build_inputs(platform: Platform, builder: str, catalog: Catalog | None = None) -> BuildInputs:
    """The inputs of building `platform` with `builder` ("local" or "oz")."""
    catalog = catalog or Catalog.load()
    if builder == "local":
        recipe = _local_recipe(platform, catalog)
        return BuildInputs(
            builder="local",
            template=recipe.text(),
            packages=recipe.packages,
            payload=payload.files_hash(),
            code=debian_builder.CODE_VERSION,
        )
    tdl = oz_builder.render_template(platform)
    return BuildInputs(
        builder="oz",
        template=tdl,
        packages=oz_builder.template_packages(tdl),
        payload=payload.files_hash(),
        code=oz_builder.CODE_VERSION,
    )


def read_info(meta_path: Path) -> ImageInfo | None:
    """The metadata at `meta_path`, or None when missing or unreadable (then: rebuild)."""
    try:
        doc = read_document(meta_path, META_SCHEMA, META_VERSION)
    except UserError:
        return None
    try:
        return ImageInfo(
            platform=doc["platform"],
            path=meta_path.with_suffix(".qcow2"),
            meta_path=meta_path,
            builder=doc["builder"],
            sha256=doc["sha256"],
            size=int(doc["size"]),
            inputs_hash=doc["inputs_hash"],
            inputs=dict(doc["inputs"]),
            built=doc["built"],
            build_seconds=float(doc.get("build_seconds", 0)),
            packages=tuple(doc.get("packages", ())),
            origin=ImageOrigin.from_json(doc["origin"]) if doc.get("origin") else None,
        )
    except (KeyError, TypeError, ValueError):
        return None


def rebuild_reasons(info: ImageInfo | None, inputs: BuildInputs) -> list[str]:
    """Why the stored image is stale: [] when it is up to date."""
    if info is None:
        return ["no image yet"]
    if not info.path.is_file():
        return ["image file missing"]
    if info.path.stat().st_size != info.size:
        return ["image file changed since it was built"]
    if info.inputs_hash == inputs.digest:
        return []
    new = inputs.parts()
    reasons = [text for key, text in INPUT_NAMES.items() if info.inputs.get(key) != new[key]]
    return reasons or ["inputs changed"]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def platform_lock(store: Path, platform_id: str) -> Iterator[None]:
    """Held while a platform's image is made: two processes never write the same image."""
    with open(store / f".{platform_id}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def utc_stamp(seconds: float | None = None) -> str:
    """`2026-11-30T22:40:00Z`: now, or the time `seconds` since the epoch."""
    t = dt.datetime.now(dt.UTC) if seconds is None else dt.datetime.fromtimestamp(seconds, dt.UTC)
    return t.replace(microsecond=0).isoformat().replace("+00:00", "Z")


# Called with a made image (still a temporary file in the store) and its platform before it is
# installed; raises to keep it out of the store (ops/smoke.py's smoke boot). What it returns
# is not used.
Verify = Callable[[Path, Platform], object]


def refuse_own_hook(platform: Platform) -> None:
    """UserError for a platform whose catalog entry says `hook: own` (plan.catalog.HOOKS)."""
    if platform.hook == "own":
        raise UserError(
            f"{platform.id}'s image has a boot hook of its own (catalog `hook: own`): osgtest-dag "
            "neither builds nor customizes it (a second hook would run the cell twice)",
            hint=f"put the image at {platform.image}",
        )


def install_image(tmp: Path, dest: Path, doc: dict) -> ImageInfo:
    """Move the made image `tmp` to `dest` and write its metadata `doc` beside it; return it."""
    meta = dest.with_suffix(".json")
    meta.unlink(missing_ok=True)  # never a new image with old metadata
    os.replace(tmp, dest)
    write_json_atomic(meta, {"schema": META_SCHEMA, "version": META_VERSION, **doc}, sort_keys=True)
    info = read_info(meta)
    assert info is not None, meta
    return info


def build_image(
    platform_id: str,
    store: Path | str | None = None,
    builder: str = "auto",
    force: bool = False,
    catalog: Catalog | None = None,
    verify: Verify | None = None,
) -> BuildOutcome:
    """Build the base image of `platform_id` into `store` unless it is up to date (an imported
    image is kept unless `force`). `verify` checks the new image before it is installed."""
    catalog = catalog or Catalog.load()
    platform = resolve_platform(platform_id, catalog)
    refuse_own_hook(platform)
    store = Path(store or paths.default_image_dir())
    dest = image_path(platform.id, store)
    meta = dest.with_suffix(".json")
    imported = read_info(meta)
    if not force and imported is not None and imported.builder == IMPORT_BUILDER and dest.is_file():
        log.info(
            "%s: the stored image was imported (%s); `image build --force` replaces it",
            platform.id,
            imported.origin.path if imported.origin else "?",
        )
        return BuildOutcome(image=imported, built=False, reasons=())
    which = choose_builder(platform, builder)
    if which == "oz":
        oz_builder.check_supported(platform)  # a clear UserError before any work
    inputs = build_inputs(platform, which, catalog)
    store.mkdir(parents=True, exist_ok=True)
    with platform_lock(store, platform.id):
        info = read_info(meta)
        reasons = ["forced"] if force else rebuild_reasons(info, inputs)
        if info is not None and not reasons:
            log.info("%s: image up to date (%s, built %s)", platform.id, info.builder, info.built)
            return BuildOutcome(image=info, built=False, reasons=())
        log.info("%s: building with the %s builder: %s", platform.id, which, ", ".join(reasons))
        built = utc_stamp()
        stamp = {
            "platform": platform.id,
            "name": platform.name,
            "builder": which,
            "created": built,
            "inputs_hash": inputs.digest,
        }
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        t0 = time.monotonic()
        try:
            if which == "local":
                packages = debian_builder.build(
                    _local_recipe(platform, catalog), tmp, stamp=stamp, workdir=store
                )
            else:
                packages = oz_builder.build(platform, tmp, stamp=stamp, workdir=store)
            seconds = round(time.monotonic() - t0, 1)
            if verify is not None:
                verify(tmp, platform)
            info = install_image(
                tmp,
                dest,
                {
                    "platform": platform.id,
                    "builder": which,
                    "sha256": sha256_file(tmp),
                    "size": tmp.stat().st_size,
                    "format": "qcow2",
                    "inputs_hash": inputs.digest,
                    "inputs": inputs.parts(),
                    "built": built,
                    "build_seconds": seconds,
                    "packages": list(packages),
                },
            )
        finally:
            tmp.unlink(missing_ok=True)
        log.info("%s: built in %.1f s (%d packages) -> %s", platform.id, seconds, len(packages), dest)
        return BuildOutcome(image=info, built=True, reasons=tuple(reasons))


def list_images(store: Path | str | None = None) -> list[ImageInfo]:
    """Every image in the store that has readable metadata, by platform id."""
    store = Path(store or paths.default_image_dir())
    if not store.is_dir():
        return []
    infos = (read_info(p) for p in sorted(store.glob("*.json")))
    return [i for i in infos if i is not None]


# ------------------------------------------------------------------------------ missing images
@dataclass(frozen=True)
class MissingImage:
    """A cell's base image that is not on this machine, and the command that builds it."""

    platform: str
    path: Path

    @property
    def build_command(self) -> str:
        cmd = f"osgtest-dag image build {self.platform}"
        if self.path.parent.resolve() != Path(paths.default_image_dir()).resolve():
            cmd += f" --store {self.path.parent}"
        return cmd

    @property
    def buildable(self) -> bool:
        """The store's own name for the platform's image: `image build` makes exactly this file."""
        return self.path.name == f"{self.platform}.qcow2"

    def describe(self) -> str:
        if self.buildable:
            return f"{self.platform}: no base image {self.path}; build it with `{self.build_command}`"
        return (
            f"{self.platform}: no base image {self.path} (the catalog's own path: put the image "
            f"there, or build the store's with `{self.build_command}` and point the catalog at it)"
        )


def is_local_path(image: str) -> bool:
    """A path on this machine rather than a URL the job transfers from elsewhere."""
    return "://" not in image or image.startswith("file://")


def missing_images(
    platforms: Iterable[tuple[str, str]], *, only_present_dirs: bool = False
) -> list[MissingImage]:
    """Of `(platform id, image path)` pairs (a cell configuration's platform), the local images
    that are not there, one per platform. `only_present_dirs`: only those whose directory is on
    this machine (a run generated here for another submit host names directories it has)."""
    out: dict[str, MissingImage] = {}
    for platform_id, image in platforms:
        if not image or not is_local_path(image):
            continue
        path = Path(image.removeprefix("file://"))
        if path.is_file() or (only_present_dirs and not path.parent.is_dir()):
            continue
        out.setdefault(platform_id, MissingImage(platform_id, path))
    return [out[k] for k in sorted(out)]


def build_missing(missing: Iterable[MissingImage]) -> list[BuildOutcome]:
    """Build each missing image into its store (`run --build-images`)."""
    outcomes = []
    for m in missing:
        if not m.buildable:
            raise UserError(
                f"cannot build {m.path}: not the image store's name for {m.platform}",
                hint=f"put the image there, or build the store's with `{m.build_command}` and point the catalog at it",
            )
        log.warning("%s: building the missing base image into %s", m.platform, m.path.parent)
        outcomes.append(build_image(m.platform, m.path.parent))
    return outcomes


def refuse_missing(missing: list[MissingImage], where: Path, doing: str, hint: str = "") -> None:
    """UserError (exit 2) naming each missing image and its build command."""
    if not missing:
        return
    lines = "\n  ".join(m.describe() for m in missing)
    raise UserError(
        f"cannot {doing}: {len(missing)} base image(s) missing:\n  {lines}",
        where=where,
        hint=hint or "build them with the commands above",
    )
