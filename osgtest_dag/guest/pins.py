"""Base-image identities pinned in a run directory (model.inputs.ImagePins): taken when the run
is generated, completed when the run builds or first submits an image that was missing, and
compared with what is on this machine before a rerun or a reproduction boots anything."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from osgtest_dag.base.atomic import write_json_atomic
from osgtest_dag.base.errors import UserError
from osgtest_dag.guest import image
from osgtest_dag.model.inputs import ImagePins, PinnedImage
from osgtest_dag.model.rundir import RunDir


def identify(platform_id: str, image_path: str) -> PinnedImage | None:
    """The identity of the image at `image_path`, None when it is not a file here (a URL, or
    not built yet). The image store's recorded digest stands for its file while the file has
    the recorded size (hashing every image on every generate would take seconds per image)."""
    if not image_path or not image.is_local_path(image_path):
        return None
    path = Path(image_path.removeprefix("file://"))
    if not path.is_file():
        return None
    size = path.stat().st_size
    info = image.read_info(path.with_suffix(".json"))
    if info is not None and info.platform == platform_id and info.size == size:
        return PinnedImage(platform_id, image_path, info.sha256, size, info.built)
    return PinnedImage(platform_id, image_path, image.sha256_file(path), size)


def current(platforms: Iterable[tuple[str, str]]) -> tuple[PinnedImage, ...]:
    """The identities of the distinct `(platform id, image path)` pairs present here."""
    found = (identify(pid, path) for pid, path in dict.fromkeys(platforms))
    return tuple(p for p in found if p is not None)


def pin(run_dir: Path, platforms: Iterable[tuple[str, str]]) -> ImagePins:
    """Add the pins of the images of `platforms` not pinned yet (the first pin stays: it is
    what the run's earlier cells ran on); returns the run's pins."""
    pins = ImagePins.read(run_dir)
    updated = pins.adding(current(platforms))
    if updated != pins:
        write_json_atomic(RunDir(run_dir).image_pins, updated.to_json())
    return updated


@dataclass(frozen=True)
class ImageChange:
    """A pinned image that is not the same here any more."""

    pinned: PinnedImage
    now: PinnedImage | None  # None: no longer on this machine

    def describe(self) -> str:
        was = f"{self.pinned.sha256[:12]}" + (f" built {self.pinned.built}" if self.pinned.built else "")
        if self.now is None:
            return f"{self.pinned.platform}: {self.pinned.path} is gone (the run used {was})"
        now = f"{self.now.sha256[:12]}" + (f" built {self.now.built}" if self.now.built else "")
        return f"{self.pinned.platform}: {self.pinned.path} is now {now}; the run used {was}"


def changes(run_dir: Path, platforms: Iterable[tuple[str, str]] | None = None) -> list[ImageChange]:
    """The run's pinned images (those of `platforms`, default all) that changed or are gone."""
    pins = ImagePins.read(run_dir)
    wanted = None if platforms is None else {path for _, path in platforms}
    out = []
    for p in pins.images:
        if wanted is not None and p.path not in wanted:
            continue
        now = identify(p.platform, p.path)
        if now is None or now.sha256 != p.sha256:
            out.append(ImageChange(p, now))
    return out


def refuse_changed(found: list[ImageChange], where: Path, doing: str, allow_option: str) -> None:
    """UserError naming each changed image, unless there is none."""
    if not found:
        return
    lines = "\n  ".join(c.describe() for c in found)
    raise UserError(
        f"cannot {doing}: {len(found)} base image(s) changed since the run:\n  {lines}",
        where=where,
        hint=f"pass {allow_option} to {doing} on today's images anyway",
    )
