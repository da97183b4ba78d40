"""The test matrix: every platform x source x package set of every parameter file is a cell.

Reference semantics (vm-test-runs' generate-dag): files in reverse-sorted name order;
per file `product(platforms, sources, package_sets)` with platform outermost; a combination seen
before is dropped (first wins); serials count from 0 in that order, formatted '%03d' (000 ... 999, 1000 ...).
De-duplication is a hash lookup, so the whole expansion is linear in the number of cells.
"""

from __future__ import annotations

import fnmatch
import itertools
from dataclasses import dataclass
from pathlib import Path

from osgtest_dag.base.errors import UserError
from osgtest_dag.plan.catalog import Catalog, Platform, did_you_mean
from osgtest_dag.plan.params import PackageSet, ParamFile, VMProfile, find_param_files, load_param_file
from osgtest_dag.plan.sources import Source

ONLY_KEYS = ("serial", "platform", "os", "arch", "family", "source", "series", "label", "package")


@dataclass(frozen=True)
class Cell:
    serial: str
    platform: Platform
    source: Source
    package_set: PackageSet
    vm: VMProfile
    test_command: str | None
    test_timeout: int
    origin: Path

    def fields(self) -> dict:
        """The values `--only`, `include` and `exclude` globs match against."""
        return {
            "serial": self.serial,
            "platform": self.platform.id,
            "os": self.platform.os,
            "arch": self.platform.arch,
            "family": self.platform.family,
            "source": self.source.raw,
            "series": self.source.series,
            "label": self.package_set.label,
            "package": self.package_set.packages,
        }

    def to_json(self) -> dict:
        """The plan's view of a cell (`plan --format json`)."""
        s = self.source
        return {
            "serial": self.serial,
            "platform": self.platform.id,
            "platform_name": self.platform.name,
            "source": s.raw,
            "test_source": str(s.test_source) if s.test_source else None,
            "series": s.series,
            "repos": list(s.repos),
            "update_series": s.update_series,
            "update_repos": list(s.update_repos),
            "label": self.package_set.label,
            "packages": list(self.package_set.packages),
            "selinux": self.package_set.selinux,
            "vm": {"memory": self.vm.memory, "vcpus": self.vm.vcpus, "disk": self.vm.disk},
            "param_file": str(self.origin),
        }


@dataclass(frozen=True)
class Matrix:
    cells: tuple[Cell, ...]
    files: tuple[Path, ...]


def _check_package_sets(files: list[ParamFile]) -> None:
    """A label means one package list, and a package list has one label — across all files.
    (With a per-set test_command, the same packages under another test are another set.)"""
    by_label: dict[str, PackageSet] = {}
    by_packages: dict[tuple, PackageSet] = {}
    for pf in files:
        for ps in pf.package_sets:
            first = by_label.setdefault(ps.label, ps)
            if first.packages != ps.packages:
                raise UserError(
                    f"package set label {ps.label!r} names different packages here and at {first.where}",
                    where=ps.where,
                    hint="labels identify package sets in reports: use one package list per label, or rename one",
                )
            first = by_packages.setdefault((ps.packages, ps.test_command), ps)
            if first.label != ps.label:
                raise UserError(
                    f"the same packages are labelled {ps.label!r} here and {first.label!r} at {first.where}",
                    where=ps.where,
                    hint="use one label for one package list",
                )


def expand(files: list[ParamFile]) -> list[Cell]:
    _check_package_sets(files)
    seen: set = set()
    cells: list[tuple] = []
    for pf in files:
        for (plat, _), (src, _), ps in itertools.product(pf.platforms, pf.sources, pf.package_sets):
            key = (plat.id, src.raw, ps.label, ps.packages, ps.selinux, ps.test_command)
            if key in seen:
                continue
            seen.add(key)
            cells.append((pf, plat, src, ps))
    out = []
    for n, (pf, plat, src, ps) in enumerate(cells):
        out.append(
            Cell(
                serial=f"{n:03d}",
                platform=plat,
                source=src,
                package_set=ps,
                vm=pf.vm_for(plat.id),
                test_command=ps.test_command or pf.test_command,
                test_timeout=pf.test_timeout,
                origin=pf.path,
            )
        )
    return out


def _apply_rules(cells: list[Cell], files: list[ParamFile]) -> list[Cell]:
    by_file = {pf.path: pf for pf in files}
    kept = []
    for c in cells:
        pf = by_file[c.origin]
        f = c.fields()
        if pf.include and not any(r.matches(f) for r in pf.include):
            continue
        if any(r.matches(f) for r in pf.exclude):
            continue
        kept.append(c)
    return kept


def build(paths, catalog: Catalog) -> Matrix:
    """Load parameter files (directories or files) and expand them into the matrix."""
    files = [load_param_file(p, catalog) for p in find_param_files(paths)]
    # include/exclude shape the matrix itself, so they apply before serials are assigned;
    # renumber after filtering by expanding only the kept combinations.
    cells = expand(files)
    if any(pf.include or pf.exclude for pf in files):
        kept = _apply_rules(cells, files)
        cells = [Cell(**{**c.__dict__, "serial": f"{n:03d}"}) for n, c in enumerate(kept)]
    return Matrix(cells=tuple(cells), files=tuple(pf.path for pf in files))


def parse_only(specs) -> tuple[tuple[str, str], ...]:
    """`--only KEY=GLOB` options -> pairs; several for one key are alternatives (OR)."""
    out = []
    for spec in specs or ():
        key, eq, glob = spec.partition("=")
        key = key.strip()
        if not eq or not glob:
            raise UserError(
                f"--only {spec!r}: expected KEY=GLOB",
                hint=f"keys: {', '.join(ONLY_KEYS)}; e.g. --only platform='debian_*'",
            )
        if key not in ONLY_KEYS:
            raise UserError(
                f"--only: unknown key {key!r}",
                hint=did_you_mean(key, ONLY_KEYS) or f"keys: {', '.join(ONLY_KEYS)}",
            )
        out.append((key, glob))
    return tuple(out)


def matches(fields: dict, only: tuple[tuple[str, str], ...]) -> bool:
    """Every key of `only` matches (OR among globs given for the same key)."""
    by_key: dict[str, list[str]] = {}
    for k, g in only:
        by_key.setdefault(k, []).append(g)
    for k, globs in by_key.items():
        vals = fields[k] if isinstance(fields[k], (list, tuple)) else (fields[k],)
        if not any(fnmatch.fnmatchcase(str(v), g) for v in vals for g in globs):
            return False
    return True


def select(cells, only: tuple[tuple[str, str], ...]) -> list[Cell]:
    """Cells matching `only`. Serials are not renumbered: a cell keeps its serial."""
    if not only:
        return list(cells)
    return [c for c in cells if matches(c.fields(), only)]
