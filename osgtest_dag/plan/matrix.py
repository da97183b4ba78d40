"""The test matrix: every platform x source x package set of every parameter file is a cell.

Reference semantics (vm-test-runs' generate-dag): files in reverse-sorted name order;
per file `product(platforms, sources, package_sets)` with platform outermost; a combination seen
before is dropped (first wins); serials count from 0 in that order, formatted '%03d' (000 ... 999, 1000 ...).
De-duplication is a hash lookup, so the whole expansion is linear in the number of cells.

A file's include/exclude rules (our extension) apply to that file's combinations before
de-duplication across files: a combination one file excludes is still a cell when another
file asks for it. Every file's part is recorded (`FileExpansion`) so `plan` can show it.
"""

from __future__ import annotations

import fnmatch
import itertools
from dataclasses import dataclass
from pathlib import Path

from osgtest_dag.base.errors import Location, UserError
from osgtest_dag.model.cell import scratch_size
from osgtest_dag.model.cluster import CellCluster
from osgtest_dag.model.documents import JsonObject
from osgtest_dag.plan.catalog import OSG_TEST_FAMILIES, Catalog, Platform, did_you_mean
from osgtest_dag.plan.params import (
    PackageSet,
    ParamFile,
    PlanWarning,
    PlatformEntry,
    Rule,
    VMProfile,
    find_param_files,
    load_param_file,
)
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
    priority: int = 0  # DAG priority of the cell's nodes (cell_priority)

    @property
    def cluster(self) -> CellCluster | None:
        """The package set's cluster: this cell is several VMs (docs/clusters.md)."""
        return self.package_set.cluster

    @property
    def scratch_mb(self) -> int:
        """The scratch disk of the cell's VM (MiB; 0: none): its profile's disk beyond the
        image's (model.cell.scratch_size). A cluster cell's VMs have theirs in their cell.json."""
        return 0 if self.cluster is not None else scratch_size(self.vm.disk, self.platform.image_size)

    @property
    def test_kind(self) -> str:
        """What the cell's test is (model.cell.TEST_KINDS): a cluster's stages, the test
        command, else osg-test where it is packaged and install-only elsewhere."""
        if self.cluster is not None:
            return "stages"
        if self.test_command is not None:
            return "command"
        return "osg-test" if self.platform.family in OSG_TEST_FAMILIES else "install-only"

    def fields(self) -> dict:
        """The values `--only`, `include` and `exclude` globs match against."""
        return {"serial": self.serial, **_rule_fields(self.platform, self.source, self.package_set)}

    def to_json(self) -> dict:
        """The plan's view of a cell (`plan --format json`)."""
        s = self.source
        doc: JsonObject = {
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
            "priority": self.priority,
            "param_file": str(self.origin),
            "test": {"kind": self.test_kind, "command": self.test_command, "timeout": self.test_timeout},
        }
        if self.cluster is not None:  # one-VM cells keep the form they always had
            vms = self.cluster.vms(self.vm.memory, self.vm.vcpus, self.vm.disk)
            doc["cluster"] = {
                **self.cluster.to_json(),
                "vms": [
                    {"name": v.name, "role": v.role, "memory": v.memory, "vcpus": v.vcpus, "disk": v.disk}
                    for v in vms
                ],
            }
        return doc


def _check_package_sets(files: list[ParamFile]) -> None:
    """A label means one package list, and a package list has one label — across all files.
    (With a per-set test_command, another selinux setting or a cluster, the same packages are
    another set.) A label names one cluster, or none."""
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
            if first.cluster != ps.cluster:
                raise UserError(
                    f"package set label {ps.label!r} names another cluster here than at {first.where}",
                    where=ps.where,
                    hint="labels identify package sets in reports: rename one",
                )
            # (the reference's package list gains /usr/sbin/semanage when selinux is on, so the
            # same packages with and without SELinux are two sets there too)
            first = by_packages.setdefault((ps.packages, ps.selinux, ps.test_command, ps.cluster), ps)
            if first.label != ps.label:
                raise UserError(
                    f"the same packages are labelled {ps.label!r} here and {first.label!r} at {first.where}",
                    where=ps.where,
                    hint="use one label for one package list",
                )


# The default DAG priority of a cell with an update step: it installs, tests, updates and tests
# again, about twice as long as a cell without one (generate gives it twice the wall-clock
# allowance), and a nightly finishes sooner when its longest cells start first.
UPDATE_PRIORITY = 1


def cell_priority(entry: PlatformEntry, source: Source, package_set: PackageSet) -> int:
    """DAG priority of a cell (every node of the cell carries it; higher runs first):
    UPDATE_PRIORITY for a source with an update step, plus the platform's and the package
    set's `priority` from the parameter file (0 unless given)."""
    base = UPDATE_PRIORITY if source.has_update else 0
    return base + entry.priority + package_set.priority


@dataclass(frozen=True)
class RuleEffect:
    """How many of its file's combinations a rule removed. Each exclude rule counts the
    combinations it is the first to match; the include rules count, together, the combinations
    none of them matches."""

    kind: str  # "exclude" | "include"
    where: Location  # the (first) rule
    text: str  # the rule as written
    removed: int


@dataclass(frozen=True)
class FileExpansion:
    """One parameter file's part of the matrix."""

    path: Path
    combinations: int  # platforms x sources x package sets
    rules: tuple[RuleEffect, ...]
    duplicates: int  # kept by the rules, but already a cell (from an earlier file or this one)
    serials: tuple[str, ...]  # the cells this file contributed

    @property
    def cells(self) -> int:
        return len(self.serials)


@dataclass(frozen=True)
class Matrix:
    cells: tuple[Cell, ...]
    files: tuple[Path, ...]
    expansions: tuple[FileExpansion, ...] = ()
    warnings: tuple[PlanWarning, ...] = ()


def _rule_text(rule: Rule) -> str:
    return ", ".join(f"{k}={v}" for k, v in rule.globs)


def _rule_fields(plat: Platform, src: Source, ps: PackageSet) -> dict:
    """The values include/exclude rules (and, with the serial, `--only`) match."""
    return {
        "platform": plat.id,
        "os": plat.os,
        "arch": plat.arch,
        "family": plat.family,
        "source": src.raw,
        "series": src.series,
        "label": ps.label,
        "package": ps.packages,
    }


def _kept_by_rules(pf: ParamFile) -> tuple[list[tuple], tuple[RuleEffect, ...]]:
    """The file's combinations its own include/exclude rules keep, and what each rule removed."""
    kept = []
    not_included = 0
    excluded = [0] * len(pf.exclude)
    for combo in itertools.product(pf.platforms, pf.sources, pf.package_sets):
        entry, (src, _), ps = combo
        if pf.include or pf.exclude:
            fields = _rule_fields(entry.platform, src, ps)
            if pf.include and not any(r.matches(fields) for r in pf.include):
                not_included += 1
                continue
            hit = next((i for i, r in enumerate(pf.exclude) if r.matches(fields)), None)
            if hit is not None:
                excluded[hit] += 1
                continue
        kept.append(combo)
    effects = [
        RuleEffect("exclude", r.where, _rule_text(r), n) for r, n in zip(pf.exclude, excluded, strict=True)
    ]
    if pf.include:
        text = " | ".join(_rule_text(r) for r in pf.include)
        if len(pf.include) > 1:
            text += f" (rules at lines {', '.join(str(r.where.line) for r in pf.include)})"
        effects.insert(0, RuleEffect("include", pf.include[0].where, text, not_included))
    return kept, tuple(effects)


def expand(files: list[ParamFile]) -> tuple[list[Cell], list[FileExpansion]]:
    """The cells of `files` in serial order, and each file's part."""
    _check_package_sets(files)
    seen: set = set()
    cells: list[Cell] = []
    parts = []
    for pf in files:
        kept, effects = _kept_by_rules(pf)
        duplicates = 0
        serials = []
        for entry, (src, _), ps in kept:
            plat = entry.platform
            key = (plat.id, src.raw, *ps.key())
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            serial = f"{len(cells):03d}"
            serials.append(serial)
            cells.append(
                Cell(
                    serial=serial,
                    platform=plat,
                    source=src,
                    package_set=ps,
                    vm=pf.vm_for(plat.id),
                    # a cluster's stages are its test: the file's test_command is the other sets'
                    test_command=None if ps.cluster else ps.test_command or pf.test_command,
                    test_timeout=pf.test_timeout,
                    origin=pf.path,
                    priority=cell_priority(entry, src, ps),
                )
            )
        combinations = len(pf.platforms) * len(pf.sources) * len(pf.package_sets)
        parts.append(FileExpansion(pf.path, combinations, effects, duplicates, tuple(serials)))
    return cells, parts


def build(paths, catalog: Catalog) -> Matrix:
    """Load parameter files (directories or files) and expand them into the matrix."""
    files = [load_param_file(p, catalog) for p in find_param_files(paths)]
    cells, parts = expand(files)
    return Matrix(
        cells=tuple(cells),
        files=tuple(pf.path for pf in files),
        expansions=tuple(parts),
        warnings=tuple(w for pf in files for w in pf.warnings),
    )


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


def select_some(cells, only: tuple[tuple[str, str], ...]) -> list[Cell]:
    """`select`, refusing an `only` that matches no cell (a typo must not plan or generate an
    empty run). The hint names each key whose globs alone match nothing, with values it has."""
    chosen = select(cells, only)
    if chosen or not only:
        return chosen
    given = " ".join(f"--only {k}={g}" for k, g in only)
    hints = []
    for key in dict.fromkeys(k for k, _ in only):
        alone = tuple((k, g) for k, g in only if k == key)
        if not any(matches(c.fields(), alone) for c in cells):
            values: dict[str, None] = {}
            for c in cells:
                v = c.fields()[key]
                values.update(dict.fromkeys(map(str, v if isinstance(v, tuple) else (v,))))
            shown = sorted(values)
            more = f" ... ({len(shown)} in all)" if len(shown) > 12 else ""
            hints.append(f"no cell has a {key} matching it; {key}s here: {', '.join(shown[:12])}{more}")
    hint = "; ".join(hints) or "each key matches some cells, but no cell matches all of them together"
    raise UserError(f"{given} matches none of the {len(cells)} cells", hint=hint)
