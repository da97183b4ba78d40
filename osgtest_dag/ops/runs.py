"""Operations on run directories as a collection: rerun some cells of a run from its pinned
inputs, keep a runs root within a disk budget (the nightly is ops/nightly.py).

A run directory is recognised ONLY by a readable run.json of schema osgtest-dag/run: nothing
else under a runs root is ever deleted.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from osgtest_dag.analyze.results import run_outcomes
from osgtest_dag.base.atomic import write_json_atomic
from osgtest_dag.base.errors import UserError
from osgtest_dag.generate.cellconfig import iter_cells
from osgtest_dag.generate.inputs import InputFiles, catalog_entries
from osgtest_dag.generate.workflow import write_run
from osgtest_dag.guest import pins
from osgtest_dag.model import runlock
from osgtest_dag.model.documents import read_json
from osgtest_dag.model.inputs import ImagePins, RunInputs
from osgtest_dag.model.manifest import RunManifest, WorkflowOptions
from osgtest_dag.model.outcome import Outcome
from osgtest_dag.model.rundir import RunDir
from osgtest_dag.plan import matrix
from osgtest_dag.plan.catalog import Catalog

log = logging.getLogger("osgtest_dag.ops.runs")


# ============================================================================================
# rerun
# ============================================================================================


@dataclass(frozen=True)
class RerunPlan:
    source: str
    selected: tuple[str, ...]  # serials
    outcomes: dict[str, Outcome]  # serial -> outcome (of the source run)
    new_run: str
    image_changes: tuple[str, ...] = ()  # base images changed since the source (allowed)
    differences: tuple[str, ...] = ()  # today's inputs unlike the source's pinned ones


def _rerun_options(manifest: RunManifest) -> WorkflowOptions:
    """The source run's options for its rerun: its own batch name, and this tool when the
    source's is gone."""
    opts = replace(manifest.options, batch_name="")
    if opts.tool and not Path(opts.tool).exists():
        log.warning("the original run's tool %s is gone; using this one", opts.tool)
        opts = replace(opts, tool="")
    return opts


def select_cells(
    outcomes: dict[str, Outcome], *, failed_only: bool = False, which: Sequence[Outcome | str] | None = None
) -> list[str]:
    """Serials to rerun. Default: every cell worse than waived (Outcome.needs_rerun).
    `failed_only`: only product failures (Outcome.product_failure) — not infrastructure
    trouble or missing results. `which`: an explicit set of outcomes."""
    if which:
        want = {Outcome.parse(w) if isinstance(w, str) else w for w in which}
        chosen = lambda o: o in want  # noqa: E731
    elif failed_only:
        chosen = lambda o: o.product_failure  # noqa: E731
    else:
        chosen = lambda o: o.needs_rerun  # noqa: E731
    return [s for s, o in sorted(outcomes.items()) if chosen(o)]


def rerun(
    source: Path,
    new_run: Path,
    *,
    failed_only: bool = False,
    only: Sequence[str] = (),
    outcomes: Sequence[str] | None = None,
    catalogs: Sequence[Path] = (),
    force: bool = False,
    allow_image_change: bool = False,
) -> RerunPlan:
    """A new run of the chosen cells of `source`, from the same pinned inputs: the run's
    params/ copies (under their original names, in the original order), its options, its
    image directory, and its inputs/ (the catalog entries it used over today's catalog, its
    known failures, component tags and osg-test configuration). Cells keep their serials.
    Refuses when a base image of a chosen cell changed since the source pinned it, unless
    `allow_image_change`. Writes rerun.json into the new run; the plan says what differs
    today from what the source pinned."""
    source = Path(source).resolve()
    new_run = Path(new_run)
    manifest = RunManifest.read(source)
    if new_run.resolve() == source:
        raise UserError("the new run directory is the source run", where=new_run, hint="choose another -o")
    outs = run_outcomes(source)
    chosen = set(select_cells(outs, failed_only=failed_only, which=outcomes))
    original = {c.serial: c for c in iter_cells(source)}

    layout = RunDir(source)
    copies = sorted(layout.params.glob("*"))
    if not copies:
        raise UserError("the run has no params/ copies to rerun from", where=layout.params)
    names = [Path(p).name for p in manifest.param_files]
    pinned = RunInputs.read(source)
    pinned_catalog = [layout.pinned(pinned.catalog.copy)] if pinned else []
    catalog = Catalog.load([*catalogs, *pinned_catalog], image_dir=manifest.image_dir or None)
    with tempfile.TemporaryDirectory(prefix="osgtest-rerun-") as tmp:
        files = []
        for i, copy in enumerate(copies):
            name = names[i] if i < len(names) else copy.name.split("-", 1)[-1]
            d = Path(tmp) / f"{i:03d}"
            d.mkdir()
            shutil.copy2(copy, d / name)
            files.append(d / name)
        m = matrix.build(files, catalog)
        cells = [c for c in m.cells if c.serial in chosen]
        cells = matrix.select(cells, matrix.parse_only(only))
        # the same inputs must give the same cells: check every chosen cell against the source
        for c in cells:
            o = original.get(c.serial)
            if o is None or (o.platform.id, o.source.raw, o.label) != (
                c.platform.id,
                c.source.raw,
                c.package_set.label,
            ):
                raise UserError(
                    f"cell {c.serial} does not regenerate as it was in the source run",
                    where=layout.params,
                    hint="the catalog or the parameter-file grammar changed since; "
                    "pass the original --catalog files",
                )
            if o.platform.image and o.platform.image != c.platform.image:
                raise UserError(
                    f"cell {c.serial}: base image {c.platform.image} is not the run's {o.platform.image}",
                    where=layout.manifest,
                    hint="pass the original --catalog files",
                )
        if not cells:
            raise UserError(
                "no cells to rerun",
                where=source,
                hint="outcomes: " + (", ".join(f"{k.value} {v}" for k, v in _count(outs).items()) or "none"),
            )
        images = [(c.platform.id, c.platform.image) for c in cells]
        image_changes = pins.changes(source, images)
        if not allow_image_change:
            pins.refuse_changed(image_changes, layout.image_pins, "rerun", "--allow-image-change")
        differences = _differences(source, pinned, cells, catalogs, manifest)
        opts = _rerun_options(manifest)
        write_run(
            new_run,
            cells,
            catalog,
            opts,
            param_files=files,
            force=force,
            command="osgtest-dag rerun --force",
            inputs=_rerun_inputs(source, pinned),
        )
    source_pins = ImagePins.read(source)
    used = {path for _, path in images}
    doc = {
        "schema": "osgtest-dag/rerun",
        "version": 1,
        "source": str(source),
        "source_run": manifest.run_name,
        "source_generated": manifest.generated,
        "selection": {"failed_only": failed_only, "only": list(only), "outcomes": list(outcomes or [])},
        "cells": {c.serial: outs[c.serial].value for c in cells if c.serial in outs},
        "images": {p.path: p.sha256 for p in source_pins.images if p.path in used},
        "image_changes": [c.describe() for c in image_changes],
        "allow_image_change": allow_image_change,
    }
    write_json_atomic(RunDir(new_run).rerun, doc)
    return RerunPlan(
        source=str(source),
        selected=tuple(c.serial for c in cells),
        outcomes={s: outs[s] for s in sorted(chosen)},
        new_run=str(new_run),
        image_changes=tuple(c.describe() for c in image_changes),
        differences=differences,
    )


def _rerun_inputs(source: Path, pinned: RunInputs | None) -> InputFiles:
    """The source's pinned copies as the rerun's inputs (no previous run: a rerun of some
    cells is compared with nothing; no publishing: it is not the nightly)."""
    if pinned is None:
        return InputFiles()
    layout = RunDir(source)
    return InputFiles(
        parameter_arguments=tuple(Path(a) for a in pinned.parameter_set.arguments),
        only=pinned.parameter_set.only,
        catalog_files=(layout.pinned(pinned.catalog.copy),),
        known_failures=tuple(layout.pinned(k.copy) for k in pinned.known_failures),
        component_tags=layout.pinned(pinned.component_tags.copy) if pinned.component_tags else None,
        osg_test_config=layout.pinned(pinned.osg_test_config.copy) if pinned.osg_test_config else None,
    )


def _differences(
    source: Path, pinned: RunInputs | None, cells: list, catalogs: Sequence[Path], manifest: RunManifest
) -> tuple[str, ...]:
    """What today's files and catalog say differently from what the source pinned (the rerun
    uses the pinned ones)."""
    if pinned is None:
        return ("the run pinned no inputs (generated before they were pinned): today's catalog is used",)
    out = [f"{what}: {why}" for what, p in pinned.files() if (why := p.origin_now()) is not None]
    today = catalog_entries(cells, Catalog.load(list(catalogs), image_dir=manifest.image_dir or None))
    then = read_json(RunDir(source).pinned(pinned.catalog.copy))
    for section in sorted(set(today) | set(then)):
        a, b = then.get(section), today.get(section)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            out += [f"catalog: {section}.{k} differs today" for k in keys]
        else:
            out.append(f"catalog: {section} differs today")
    return tuple(out)


def _count(outs: dict[str, Outcome]) -> dict[Outcome, int]:
    c: dict[Outcome, int] = {}
    for o in sorted(outs.values()):
        c[o] = c.get(o, 0) + 1
    return c


# ============================================================================================
# retention
# ============================================================================================


@dataclass(frozen=True)
class RunEntry:
    path: Path
    generated: str
    run_name: str
    size: int


def _disk_usage(path: Path) -> tuple[int, int]:
    """(total, used) bytes of the filesystem holding `path`."""
    u = shutil.disk_usage(path)
    return u.total, u.total - u.free


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, _dirnames, filenames in os.walk(path, followlinks=False):
        for n in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_blocks * 512
            except OSError:
                pass
    return total


def is_run_dir(path: Path) -> RunManifest | None:
    """The manifest when `path` is a run directory (real directory, valid run.json of this
    version, with a readable time)."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return None
    try:
        manifest = RunManifest.read(path)
        _parse_time(manifest.generated)
    except (UserError, ValueError):
        return None
    return manifest


def _parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))


def list_runs(runs_root: Path, *, sizes: bool = True) -> list[RunEntry]:
    """Run directories directly under `runs_root`, oldest first (by run.json `generated`)."""
    runs_root = Path(runs_root)
    if not runs_root.is_dir():
        raise UserError("runs root is not a directory", where=runs_root)
    out = []
    for child in sorted(runs_root.iterdir()):
        manifest = is_run_dir(child)
        if manifest is None:
            continue
        out.append(
            RunEntry(
                path=child,
                generated=manifest.generated,
                run_name=manifest.run_name or child.name,
                size=_tree_size(child) if sizes else 0,
            )
        )
    out.sort(key=lambda r: (_parse_time(r.generated), r.path.name))
    return out


@dataclass
class CleanupPlan:
    usage_before: float
    usage_after: float
    limit: float
    delete: list[RunEntry]
    keep: list[RunEntry]
    skipped_active: list[RunEntry]
    done: bool
    in_use: dict[Path, str] = field(default_factory=dict)  # skipped run -> who has it


def cleanup(
    runs_root: Path,
    *,
    keep_at_least: int,
    max_usage: float,
    yes: bool = False,
    usage: Callable[[Path], tuple[int, int]] = _disk_usage,
) -> CleanupPlan:
    """Delete the oldest runs until the filesystem's usage is under `max_usage` percent,
    never leaving fewer than `keep_at_least` runs, never touching anything that is not a run
    directory, never a run another command or a DAGMan job has (model.runlock): those are
    skipped and named, each deleted under the run-directory lock. A dry run (the default) predicts the
    usage from the runs' sizes; with `yes`, usage is measured again after each deletion.
    `usage(path) -> (total_bytes, used_bytes)` is injectable for tests."""
    if keep_at_least < 0:
        raise UserError("--keep-at-least must be >= 0")
    if not 0 < max_usage <= 100:
        raise UserError("--max-usage is a percentage: 0 < PCT <= 100")
    runs_root = Path(runs_root).resolve()
    runs = list_runs(runs_root)
    total, used = usage(runs_root)
    pct = lambda u: 100.0 * u / total if total else 0.0  # noqa: E731
    before = pct(used)
    delete: list[RunEntry] = []
    active: list[RunEntry] = []
    in_use: dict[Path, str] = {}
    remaining = list(runs)
    candidates = list(runs)
    while pct(used) > max_usage and len(remaining) > keep_at_least and candidates:
        r = candidates.pop(0)
        holder = runlock.holder(RunDir(r.path))
        if holder is None and yes:
            try:
                with runlock.locked(RunDir(r.path), "osgtest-dag cleanup"):
                    _delete_run(runs_root, r.path)
            except runlock.RunDirInUse as e:  # taken between the look and the lock
                holder = e.holder
        if holder is not None:
            active.append(r)
            in_use[r.path] = holder.describe()
            continue
        delete.append(r)
        remaining.remove(r)
        if yes:
            total, used = usage(runs_root)
        else:
            used -= r.size
    return CleanupPlan(
        usage_before=before,
        usage_after=pct(used),
        limit=max_usage,
        delete=delete,
        keep=remaining,
        skipped_active=active,
        done=yes,
        in_use=in_use,
    )


def _delete_run(runs_root: Path, path: Path) -> None:
    """rmtree, after checking once more that `path` is a run directory directly under the root."""
    path = Path(path)
    if path.parent.resolve() != runs_root or is_run_dir(path) is None:
        raise UserError("refusing to delete: not a run directory of this runs root", where=path)
    log.info("deleting run %s", path)
    # run.json last: an interrupted deletion leaves a directory cleanup no longer touches
    # but a human can recognise; remove the rest first
    manifest = RunDir(path).manifest
    for child in path.iterdir():
        if child == manifest:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    manifest.unlink()
    path.rmdir()
