"""Operations on run directories as a collection: rerun some cells of a run, keep a runs root
within a disk budget, and the nightly (dated run directory, generate, submit).

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
from osgtest_dag.engine.condor.condor import SubmitOptions, submit_run
from osgtest_dag.generate.cellconfig import iter_cells
from osgtest_dag.generate.workflow import wall_clock_limit, write_run
from osgtest_dag.model import runlock
from osgtest_dag.model.documents import read_json
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
) -> RerunPlan:
    """A new run of the chosen cells of `source`, from the same pinned inputs: the run's
    params/ copies (under their original names, in the original order), its options, its
    image directory. Cells keep their serials. Writes rerun.json into the new run."""
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
    catalog = Catalog.load(list(catalogs), image_dir=manifest.image_dir or None)
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
        opts = _rerun_options(manifest)
        write_run(
            new_run, cells, catalog, opts, param_files=files, force=force, command="osgtest-dag rerun --force"
        )
    images = _image_digests(catalog, {c.platform.id for c in cells})
    doc = {
        "schema": "osgtest-dag/rerun",
        "version": 1,
        "source": str(source),
        "source_run": manifest.run_name,
        "source_generated": manifest.generated,
        "selection": {"failed_only": failed_only, "only": list(only), "outcomes": list(outcomes or [])},
        "cells": {c.serial: outs[c.serial].value for c in cells if c.serial in outs},
        "images": images,
    }
    write_json_atomic(RunDir(new_run).rerun, doc)
    return RerunPlan(
        source=str(source),
        selected=tuple(c.serial for c in cells),
        outcomes={s: outs[s] for s in sorted(chosen)},
        new_run=str(new_run),
    )


def _count(outs: dict[str, Outcome]) -> dict[Outcome, int]:
    c: dict[Outcome, int] = {}
    for o in sorted(outs.values()):
        c[o] = c.get(o, 0) + 1
    return c


def _image_digests(catalog, platform_ids) -> dict[str, str]:
    """sha256 of each platform's base image from the image store's metadata, where known."""
    out = {}
    for pid in sorted(platform_ids):
        try:
            image = Path(catalog.platform(pid).image)
            meta = read_json(image.with_suffix(".json"))
            if isinstance(meta, dict) and meta.get("sha256"):
                out[pid] = meta["sha256"]
        except Exception:
            continue
    return out


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


# ============================================================================================
# nightly
# ============================================================================================


def dated_run_dir(runs_root: Path, now: dt.datetime | None = None) -> Path:
    """RUNS_ROOT/YYYY-MM-DD, or YYYY-MM-DD-HHMM(SS) if that exists already."""
    now = now or dt.datetime.now()
    runs_root = Path(runs_root)
    for name in (now.strftime("%Y-%m-%d"), now.strftime("%Y-%m-%d-%H%M"), now.strftime("%Y-%m-%d-%H%M%S")):
        if not (runs_root / name).exists():
            return runs_root / name
    raise UserError("a run directory for this second exists already", where=runs_root / name)


def nightly(
    params: Sequence[Path],
    runs_root: Path,
    *,
    catalogs: Sequence[Path] = (),
    image_dir: Path | None = None,
    excluded_hosts: Sequence[str] = (),
    submit_opts=None,
    submit: bool = True,
    now: dt.datetime | None = None,
) -> dict:
    """The nightly: a dated run directory under `runs_root`, generated from `params` (VM jobs
    avoiding `excluded_hosts`), then submitted. Returns what it did."""
    runs_root = Path(runs_root)
    runs_root.mkdir(parents=True, exist_ok=True)
    run_dir = dated_run_dir(runs_root, now)
    catalog = Catalog.load(list(catalogs), image_dir=image_dir)
    m = matrix.build(list(params), catalog)
    excluded = tuple(excluded_hosts)
    cells = list(m.cells)
    opts = WorkflowOptions(nightly=True, excluded_hosts=excluded, max_wall=wall_clock_limit(cells, None))
    write_run(run_dir, cells, catalog, opts, param_files=list(m.files))
    result = {"run_dir": str(run_dir), "cells": len(m.cells), "excluded_hosts": list(excluded)}
    if submit:
        rep = submit_run(run_dir, submit_opts or SubmitOptions())
        result["cluster"] = rep.cluster
    return result
