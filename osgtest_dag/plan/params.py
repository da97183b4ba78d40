"""Parameter files: YAML -> ParamFile, validated, with a source location for every value.

The reference format (platforms, sources, package_sets) loads unchanged; the optional keys
(vm, vm_per_platform, exclude, include, test_command, test_timeout) extend it, and so do
`priority: N` and `cluster:` (plan.cluster) on a package set and a platform written as
`{platform: ID, priority: N}`.
Unknown keys are errors with a "did you mean" hint, never a silently skipped file.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

from osgtest_dag.base import yamlsrc
from osgtest_dag.base.errors import Location, UserError
from osgtest_dag.model.cluster import CellCluster
from osgtest_dag.plan.catalog import PASS_THROUGH_FAMILIES, Catalog, Platform, did_you_mean
from osgtest_dag.plan.cluster import parse_cluster
from osgtest_dag.plan.sources import Source, SourceSyntaxError, parse_source
from osgtest_dag.plan.vmsettings import vm_overrides

REQUIRED_KEYS = ("platforms", "sources", "package_sets")
OPTIONAL_KEYS = ("vm", "vm_per_platform", "exclude", "include", "test_command", "test_timeout")
PACKAGE_SET_KEYS = ("label", "packages", "selinux", "test_command", "priority", "cluster")
PLATFORM_KEYS = ("platform", "priority")
MAX_PRIORITY = 1000000  # DAGMan's PRIORITY is an int; this keeps sums far from its limits
RULE_KEYS = ("platform", "os", "arch", "family", "source", "series", "label", "package")


@dataclass(frozen=True)
class PackageSet:
    label: str
    packages: tuple[str, ...]
    selinux: bool = True
    where: Location | None = None
    test_command: str | None = None  # overrides the file's test_command for this set
    priority: int = 0  # added to the DAG priority of this set's cells (matrix.cell_priority)
    cluster: CellCluster | None = None  # its cells are several VMs (docs/clusters.md)

    def key(self) -> tuple:
        """What makes two package sets the same set (a cell of each is one cell)."""
        return (self.label, self.packages, self.selinux, self.test_command, self.cluster)


@dataclass(frozen=True)
class PlatformEntry:
    platform: Platform
    where: Location
    priority: int = 0  # added to the DAG priority of this platform's cells


@dataclass(frozen=True)
class PlanWarning:
    """Accepted input worth a look, e.g. a repository id the catalog does not know."""

    where: Location
    message: str

    def __str__(self) -> str:
        return f"{self.where}: warning: {self.message}"


@dataclass(frozen=True)
class VMProfile:
    """Resources of one VM: memory in MiB, vcpus, request_disk in MiB."""

    memory: int = 2048
    vcpus: int = 2
    disk: int = 8192

    def merged(self, overrides: dict) -> VMProfile:
        return VMProfile(**{**self.__dict__, **overrides})


@dataclass(frozen=True)
class Rule:
    """An include/exclude rule: every given key's glob must match the cell."""

    globs: tuple[tuple[str, str], ...]
    where: Location

    def matches(self, fields: dict) -> bool:
        for key, pattern in self.globs:
            values = fields[key]
            values = values if isinstance(values, (list, tuple)) else (values,)
            if not any(fnmatch.fnmatchcase(str(v), pattern) for v in values):
                return False
        return True


@dataclass(frozen=True)
class ParamFile:
    path: Path
    platforms: tuple[PlatformEntry, ...]
    sources: tuple[tuple[Source, Location], ...]
    package_sets: tuple[PackageSet, ...]
    vm: VMProfile
    vm_per_platform: tuple[tuple[str, dict], ...]
    exclude: tuple[Rule, ...]
    include: tuple[Rule, ...]
    test_command: str | None
    test_timeout: int
    warnings: tuple[PlanWarning, ...] = ()

    def vm_for(self, platform_id: str) -> VMProfile:
        vm = self.vm
        for pattern, overrides in self.vm_per_platform:
            if fnmatch.fnmatchcase(platform_id, pattern):
                vm = vm.merged(overrides)
        return vm


def find_param_files(paths: list[Path] | tuple) -> list[Path]:
    """Expand directories to their `*.yaml`/`*.yml` files in reverse-sorted name order.

    Reverse order is the reference tool's: newer series (osg25-*) sort last and so come first.
    Files named explicitly are taken in the order given.
    """
    files: list[Path] = []
    if not paths:
        raise UserError(
            "no parameter files given", hint="pass a directory such as parameters.d/ or some *.yaml files"
        )
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(
                (f for f in p.iterdir() if f.suffix in (".yaml", ".yml") and f.is_file()), reverse=True
            )
            if not found:
                raise UserError("no *.yaml parameter files in this directory", where=p)
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(
                "no such file or directory",
                where=p,
                hint="give a directory of *.yaml parameter files, or the files themselves",
            )
    seen = set()
    unique = []
    for f in files:
        r = f.resolve()
        if r not in seen:
            seen.add(r)
            unique.append(f)
    return unique


def load_param_file(path: Path, catalog: Catalog) -> ParamFile:
    doc = yamlsrc.load(path)
    data = doc.data
    if data is None:
        raise UserError(
            "empty parameter file",
            where=Location(path, 1),
            hint=f"a parameter file needs {', '.join(REQUIRED_KEYS)}",
        )
    if not isinstance(data, dict):
        raise UserError(
            "a parameter file must be a mapping",
            where=doc.where(),
            hint=f"top-level keys: {', '.join(REQUIRED_KEYS)}",
        )
    for key in data:
        if key not in REQUIRED_KEYS + OPTIONAL_KEYS:
            hint = (
                did_you_mean(str(key), REQUIRED_KEYS + OPTIONAL_KEYS)
                or f"known keys: {', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)}"
            )
            raise UserError(f"unknown key {key!r}", where=doc.key_where(key), hint=hint)
    for key in REQUIRED_KEYS:
        if key not in data:
            raise UserError(
                f"missing required key {key!r}",
                where=Location(path, 1),
                hint="every parameter file has platforms, sources and package_sets",
            )
        if not isinstance(data[key], list) or not data[key]:
            raise UserError(
                f"{key!r} must be a non-empty list",
                where=doc.where(key),
                hint=f"write it as a YAML list: '{key}:' then lines starting with '- '",
            )

    platforms = [_platform_entry(doc, i, entry, catalog) for i, entry in enumerate(data["platforms"])]
    sources = []
    warnings: list[PlanWarning] = []
    for i, raw in enumerate(data["sources"]):
        where = doc.where("sources", i)
        try:
            src = parse_source(raw)
        except SourceSyntaxError as e:
            col = (where.column or 1) + e.column - 1
            raise UserError(
                f"bad source {raw!r}: {e.message}", where=Location(path, where.line, col), hint=e.hint
            ) from None
        warnings += _repository_warnings(catalog, platforms, src, where)
        sources.append((src, where))

    package_sets = [_package_set(doc, i, ps) for i, ps in enumerate(data["package_sets"])]

    vm = VMProfile()
    if "vm" in data:
        vm = vm.merged(vm_overrides(doc, ("vm",), data["vm"]))
    per_platform = []
    if "vm_per_platform" in data:
        vpp = data["vm_per_platform"]
        if not isinstance(vpp, dict):
            raise UserError(
                "'vm_per_platform' must map platform globs to VM settings",
                where=doc.where("vm_per_platform"),
                hint="e.g. 'rocky_*.x86_64: {memory: 4096}'",
            )
        for pattern, settings in vpp.items():
            per_platform.append((str(pattern), vm_overrides(doc, ("vm_per_platform", pattern), settings)))

    test_command = data.get("test_command")
    if test_command is not None and (not isinstance(test_command, str) or not test_command.strip()):
        raise UserError("'test_command' must be a non-empty string", where=doc.where("test_command"))
    test_timeout = data.get("test_timeout", 14400)
    if isinstance(test_timeout, bool) or not isinstance(test_timeout, int) or test_timeout <= 0:
        raise UserError(
            "'test_timeout' must be a positive number of seconds", where=doc.where("test_timeout")
        )

    return ParamFile(
        path=path,
        platforms=tuple(platforms),
        sources=tuple(sources),
        package_sets=tuple(package_sets),
        vm=vm,
        vm_per_platform=tuple(per_platform),
        exclude=_rules(doc, "exclude", data),
        include=_rules(doc, "include", data),
        test_command=test_command,
        test_timeout=test_timeout,
        warnings=tuple(warnings),
    )


def _repository_warnings(
    catalog: Catalog, platforms: list[PlatformEntry], src: Source, where: Location
) -> list[PlanWarning]:
    """Each repository of `src` the catalog does not know for a family of the file's platforms:
    a warning where the family passes names through (EL: dnf enables the id as written), an
    error where it does not (Debian: a name must map to apt lines)."""
    warnings = []
    families = dict.fromkeys(e.platform.family for e in platforms)
    for name in dict.fromkeys(src.repos + src.update_repos):
        m = re.search(rf"(?<![\w.+-]){re.escape(name)}(?![\w.+-])", src.raw)
        name_where = Location(where.path, where.line, (where.column or 1) + (m.start() if m else 0))
        for family in families:
            if catalog.knows_repo(family, name):
                continue
            if family not in PASS_THROUGH_FAMILIES:
                plat = next(e.platform for e in platforms if e.platform.family == family)
                raise UserError(
                    f"unknown repository {name!r} for {family} platform {plat.id}",
                    where=name_where,
                    hint=f"{catalog.repo_hint(family, name)} (a {family} repository needs its "
                    f"apt lines: add it under '{family}: repos:' in a --catalog file)",
                )
            warnings.append(
                PlanWarning(
                    name_where,
                    f"repository {name!r} is not in the catalog: the {family} cells enable the "
                    f"dnf repository id {name!r} ({catalog.repo_hint(family, name)})",
                )
            )
    return warnings


def _priority(doc: yamlsrc.Document, key: tuple, value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > MAX_PRIORITY:
        raise UserError(
            f"{what}: 'priority' must be a whole number from {-MAX_PRIORITY} to {MAX_PRIORITY}",
            where=doc.where(*key),
            hint="higher runs first; the default is 0",
        )
    return value


def _platform_entry(doc: yamlsrc.Document, i: int, entry, catalog: Catalog) -> PlatformEntry:
    """`rocky_9.x86_64` (the reference form) or `{platform: rocky_9.x86_64, priority: 5}`."""
    where = doc.where("platforms", i)
    priority = 0
    if isinstance(entry, dict):
        for key in entry:
            if key not in PLATFORM_KEYS:
                raise UserError(
                    f"unknown platform key {key!r}",
                    where=doc.key_where("platforms", i, key),
                    hint=did_you_mean(str(key), PLATFORM_KEYS) or f"known keys: {', '.join(PLATFORM_KEYS)}",
                )
        if "platform" not in entry:
            raise UserError(
                "a platform written as a mapping needs 'platform'",
                where=where,
                hint="e.g. '- {platform: rocky_9.x86_64, priority: 5}'",
            )
        pid = entry["platform"]
        where = doc.where("platforms", i, "platform")
        if "priority" in entry:
            priority = _priority(doc, ("platforms", i, "priority"), entry["priority"], f"platform {pid!r}")
    else:
        pid = entry
    if not isinstance(pid, str):
        raise UserError(f"platform must be a string, not {pid!r}", where=where)
    try:
        return PlatformEntry(catalog.platform(pid), where, priority)
    except UserError as e:
        raise UserError(e.message, where=where, hint=e.hint) from None


def _package_set(doc: yamlsrc.Document, i: int, ps) -> PackageSet:
    where = doc.where("package_sets", i)
    if not isinstance(ps, dict):
        raise UserError("a package set must be a mapping with 'label' and 'packages'", where=where)
    for key in ps:
        if key not in PACKAGE_SET_KEYS:
            hint = did_you_mean(str(key), PACKAGE_SET_KEYS) or f"known keys: {', '.join(PACKAGE_SET_KEYS)}"
            raise UserError(
                f"unknown package set key {key!r}", where=doc.key_where("package_sets", i, key), hint=hint
            )
    label = ps.get("label")
    if not isinstance(label, str) or not label.strip():
        raise UserError(
            "package set needs a non-empty 'label'",
            where=doc.where("package_sets", i, "label"),
            hint="the label names the package set in reports",
        )
    pkgs = ps.get("packages")
    if not isinstance(pkgs, list) or not pkgs:
        raise UserError(
            f"package set {label!r}: 'packages' must be a non-empty list",
            where=doc.where("package_sets", i, "packages"),
        )
    for j, p in enumerate(pkgs):
        if not isinstance(p, str) or not p.strip() or any(c.isspace() for c in p.strip()):
            raise UserError(
                f"package set {label!r}: bad package name {p!r}",
                where=doc.where("package_sets", i, "packages", j),
                hint="one package name per list item",
            )
    selinux = ps.get("selinux", True)
    if not isinstance(selinux, bool):
        raise UserError(
            f"package set {label!r}: 'selinux' must be true or false",
            where=doc.where("package_sets", i, "selinux"),
        )
    test_command = ps.get("test_command")
    if test_command is not None and (not isinstance(test_command, str) or not test_command.strip()):
        raise UserError(
            f"package set {label!r}: 'test_command' must be a non-empty string",
            where=doc.where("package_sets", i, "test_command"),
        )
    priority = 0
    if "priority" in ps:
        priority = _priority(doc, ("package_sets", i, "priority"), ps["priority"], f"package set {label!r}")
    cluster = None
    if "cluster" in ps:
        if test_command is not None:
            raise UserError(
                f"package set {label!r}: a cluster's stages are its test, it has no 'test_command'",
                where=doc.key_where("package_sets", i, "test_command"),
                hint="move the command into a stage: e.g. '- {name: test, all: COMMAND}' under 'stages:'",
            )
        cluster = parse_cluster(doc, ("package_sets", i, "cluster"), ps["cluster"], f"package set {label!r}")
    return PackageSet(
        label=label.strip(),
        packages=tuple(p.strip() for p in pkgs),
        selinux=selinux,
        where=where,
        test_command=test_command,
        priority=priority,
        cluster=cluster,
    )


def _rules(doc: yamlsrc.Document, key: str, data: dict) -> tuple[Rule, ...]:
    if key not in data:
        return ()
    value = data[key]
    if not isinstance(value, list):
        raise UserError(
            f"{key!r} must be a list of rules",
            where=doc.where(key),
            hint=f'e.g. \'{key}: [{{platform: "rocky_8.*", label: "XRootD"}}]\'',
        )
    rules = []
    for i, rule in enumerate(value):
        if not isinstance(rule, dict) or not rule:
            raise UserError(
                f"each {key} rule is a mapping of {', '.join(RULE_KEYS)} to globs", where=doc.where(key, i)
            )
        for k, v in rule.items():
            if k not in RULE_KEYS:
                raise UserError(
                    f"unknown {key} rule key {k!r}",
                    where=doc.key_where(key, i, k),
                    hint=did_you_mean(str(k), RULE_KEYS) or f"known: {', '.join(RULE_KEYS)}",
                )
            if not isinstance(v, (str, int, float)) or isinstance(v, bool):
                raise UserError(
                    f"{key} rule value for {k!r} must be a glob string", where=doc.where(key, i, k)
                )
        rules.append(Rule(tuple((k, str(v)) for k, v in rule.items()), doc.where(key, i)))
    return tuple(rules)
