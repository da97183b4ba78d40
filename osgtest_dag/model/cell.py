"""A cell's configuration, typed (docs/contracts.md §1): one line of the run's cells.jsonl, and
the cell.json its CreateDisk node writes into the cell directory and the IO disk. `generate`
builds it from the plan; the nodes, the engines, analysis and rerun read it back through
`CellConfig.from_json`. `to_json` writes the keys in the order the documents have always had.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from osgtest_dag.base.errors import UserError
from osgtest_dag.model.cluster import CellCluster, ClusterVm
from osgtest_dag.model.documents import Fields, JsonObject, check_document, read_json

HINT = "regenerate the run with this version of osgtest-dag"


MIN_SCRATCH_MB = 64  # less is not worth a disk


def scratch_size(disk_mb: int, image_mb: int | None) -> int:
    """The scratch disk a VM gets (MiB, docs/contracts.md §1, "Scratch disk"): what its profile's
    `disk` has beyond its base image's root, which a VM-universe job cannot grow; 0 (no scratch
    disk) when that is less than MIN_SCRATCH_MB, or the image's size is not known (a run
    generated before the catalog said it)."""
    if image_mb is None or disk_mb - image_mb < MIN_SCRATCH_MB:
        return 0
    return disk_mb - image_mb


def x86_64_level(family: str, major: int) -> int:
    """The x86-64 microarchitecture level a platform's userland is built for: RHEL 10 and its
    rebuilds need x86-64-v3 (AVX2, FMA and the rest); the others run on x86-64-v2."""
    return 3 if family == "el" and major >= 10 else 2


@dataclass(frozen=True)
class CellPlatform:
    id: str  # rocky_9.x86_64
    os: str  # rocky_9
    family: str  # el | debian
    distro: str
    major: int
    arch: str
    name: str  # Rocky 9 (x86_64)
    codename: str | None
    image: str  # path or URL of the base image
    image_format: str  # qcow2 | raw
    hook: str = "osgtest"  # the image's boot hook: ours, or `own` (plan.catalog.HOOKS)
    image_size: int | None = None  # MiB: the image's root (the catalog's); None in older documents

    @property
    def x86_64_level(self) -> int:
        return x86_64_level(self.family, self.major)

    def to_json(self) -> JsonObject:
        doc: JsonObject = {
            "id": self.id,
            "os": self.os,
            "family": self.family,
            "distro": self.distro,
            "major": self.major,
            "arch": self.arch,
            "name": self.name,
            "codename": self.codename,
            "image": self.image,
            "image_format": self.image_format,
        }
        if self.hook != "osgtest":  # written only when it is not ours: older documents stay as they were
            doc["hook"] = self.hook
        if self.image_size is not None:
            doc["image_size"] = self.image_size
        return doc

    @classmethod
    def from_fields(cls, f: Fields) -> CellPlatform:
        return cls(
            id=f.text("id"),
            os=f.text("os"),
            family=f.text("family"),
            distro=f.text("distro"),
            major=f.integer("major"),
            arch=f.text("arch"),
            name=f.text("name"),
            codename=f.opt_text("codename"),
            image=f.text("image"),
            image_format=f.text("image_format"),
            hook=f.opt_text("hook") or "osgtest",
            image_size=f.opt_integer("image_size"),
        )


@dataclass(frozen=True)
class CellSource:
    raw: str  # as the parameter file wrote it
    test_source: str | None  # account:branch of osg-test, when not the release's
    series: str
    repos: tuple[str, ...]
    update_series: str | None = None
    update_repos: tuple[str, ...] = ()

    def to_json(self) -> JsonObject:
        return {
            "raw": self.raw,
            "test_source": self.test_source,
            "series": self.series,
            "repos": list(self.repos),
            "update_series": self.update_series,
            "update_repos": list(self.update_repos),
        }

    @classmethod
    def from_fields(cls, f: Fields) -> CellSource:
        return cls(
            raw=f.text("raw"),
            test_source=f.opt_text("test_source"),
            series=f.text("series"),
            repos=f.texts("repos"),
            update_series=f.opt_text("update_series"),
            update_repos=f.texts("update_repos"),
        )


@dataclass(frozen=True)
class RepoSetup:
    """What the payload does to reach a set of repositories."""

    setup_packages: tuple[str, ...] = ()
    enable: tuple[str, ...] = ()
    apt_sources: tuple[str, ...] = ()

    def to_json(self) -> JsonObject:
        return {
            "setup_packages": list(self.setup_packages),
            "enable": list(self.enable),
            "apt_sources": list(self.apt_sources),
        }

    @classmethod
    def from_fields(cls, f: Fields) -> RepoSetup:
        return cls(
            setup_packages=f.texts("setup_packages"),
            enable=f.texts("enable"),
            apt_sources=f.texts("apt_sources"),
        )


# A week: Debian keeps superseded versions in the pool until the next point release, and a
# cell whose install fails on the image's lists fetches them and tries once more.
PACKAGE_LISTS_MAX_AGE_S = 7 * 86400


@dataclass(frozen=True)
class Repositories:
    initial: RepoSetup
    update: RepoSetup | None = None  # None when the source has no update part
    # The base image's package lists serve the cell's sources they cover while younger than
    # this (s); 0: every cell fetches them (run-job, phase repositories).
    lists_max_age: int = PACKAGE_LISTS_MAX_AGE_S

    def to_json(self) -> JsonObject:
        return {
            "initial": self.initial.to_json(),
            "update": self.update.to_json() if self.update else None,
            "lists_max_age": self.lists_max_age,
        }

    @classmethod
    def from_fields(cls, f: Fields) -> Repositories:
        update = f.opt_obj("update")
        return cls(
            initial=RepoSetup.from_fields(f.obj("initial")),
            update=RepoSetup.from_fields(update) if update else None,
            lists_max_age=f.integer("lists_max_age") if f.has("lists_max_age") else PACKAGE_LISTS_MAX_AGE_S,
        )


# What a cell's test is (docs/contracts.md §1): osg-test (a family where it is packaged, no
# test command: the reference's test), its test command, install-only (no test command where
# osg-test is not packaged: it passes when its packages install and the package manager's own
# check is clean) or a cluster's stages.
TEST_KINDS = ("osg-test", "command", "install-only", "stages")


@dataclass(frozen=True)
class CellTest:
    command: str | None  # the kind "command"'s shell command, else None
    timeout: int  # s
    kind: str  # one of TEST_KINDS

    def __post_init__(self) -> None:
        if self.kind not in TEST_KINDS:
            raise ValueError(f"test kind {self.kind!r} is not one of {', '.join(TEST_KINDS)}")
        if (self.command is not None) != (self.kind == "command"):
            raise ValueError(
                f"a test of kind {self.kind!r} {'has no' if self.command is None else 'has a'} command"
            )

    @property
    def osg_test(self) -> bool:
        return self.kind == "osg-test"

    def to_json(self) -> JsonObject:
        # `osg_test` stays for the readers that came before `kind`
        return {
            "command": self.command,
            "timeout": self.timeout,
            "osg_test": self.osg_test,
            "kind": self.kind,
        }

    @classmethod
    def from_fields(cls, f: Fields) -> CellTest:
        command = f.opt_text("command")
        if f.has("kind"):
            kind = f.choice("kind", TEST_KINDS)
            if (command is not None) != (kind == "command"):
                raise UserError(
                    f"`{f.prefix}command` and `{f.prefix}kind` ({kind}) disagree", where=f.where, hint=HINT
                )
        elif command is not None:
            kind = "command"
        elif f.flag("osg_test"):
            kind = "osg-test"
        else:  # before kinds, only a cluster cell had neither a command nor osg-test
            kind = "stages"
        return cls(command=command, timeout=f.integer("timeout"), kind=kind)


@dataclass(frozen=True)
class VmSize:
    memory: int  # MB
    vcpus: int
    disk: int  # MB

    def to_json(self) -> JsonObject:
        return {"memory": self.memory, "vcpus": self.vcpus, "disk": self.disk}

    @classmethod
    def from_fields(cls, f: Fields) -> VmSize:
        return cls(memory=f.integer("memory"), vcpus=f.integer("vcpus"), disk=f.integer("disk"))


@dataclass(frozen=True)
class NetworkCheck:
    check_host: str
    retries: int

    def to_json(self) -> JsonObject:
        return {"check_host": self.check_host, "retries": self.retries}

    @classmethod
    def from_fields(cls, f: Fields) -> NetworkCheck:
        return cls(check_host=f.text("check_host"), retries=f.integer("retries"))


@dataclass(frozen=True)
class RepoRetries:
    count: int
    backoff: int  # s

    def to_json(self) -> JsonObject:
        return {"count": self.count, "backoff": self.backoff}

    @classmethod
    def from_fields(cls, f: Fields) -> RepoRetries:
        return cls(count=f.integer("count"), backoff=f.integer("backoff"))


@dataclass(frozen=True)
class CellConfig:
    SCHEMA = "osgtest-dag/cell"
    VERSION = 1
    serial: str
    platform: CellPlatform
    source: CellSource
    label: str
    packages: tuple[str, ...]
    selinux: bool
    repositories: Repositories
    test: CellTest
    vm: VmSize
    network: NetworkCheck
    retries: RepoRetries
    nightly: bool = False
    param_file: str = ""  # the parameter file's name
    cluster: CellCluster | None = None  # several VMs on a private network (docs/clusters.md)

    def cluster_vms(self) -> tuple[ClusterVm, ...]:
        """The cluster's VMs with this cell's VM profile; () for a one-VM cell."""
        if self.cluster is None:
            return ()
        return self.cluster.vms(self.vm.memory, self.vm.vcpus, self.vm.disk)

    @property
    def scratch_mb(self) -> int:
        """The one-VM cell's scratch disk (MiB; 0: none): see scratch_size."""
        return scratch_size(self.vm.disk, self.platform.image_size)

    def vm_scratch_mb(self, vm: ClusterVm) -> int:
        """A cluster VM's scratch disk (MiB; 0: none, and always for a VM booted from the network)."""
        return 0 if vm.network_boot else scratch_size(vm.disk, self.platform.image_size)

    def fields(self) -> dict[str, Any]:
        """The values `--only` globs match, as plan.matrix.Cell.fields() gives them."""
        return {
            "serial": self.serial,
            "platform": self.platform.id,
            "os": self.platform.os,
            "arch": self.platform.arch,
            "family": self.platform.family,
            "source": self.source.raw,
            "series": self.source.series,
            "label": self.label,
            "package": self.packages,
        }

    def to_json(self) -> JsonObject:
        doc: JsonObject = {
            "schema": self.SCHEMA,
            "version": self.VERSION,
            "serial": self.serial,
            "platform": self.platform.to_json(),
            "source": self.source.to_json(),
            "label": self.label,
            "packages": list(self.packages),
            "selinux": self.selinux,
            "repositories": self.repositories.to_json(),
            "test": self.test.to_json(),
            "vm": self.vm.to_json(),
            "network": self.network.to_json(),
            "retries": self.retries.to_json(),
            "nightly": self.nightly,
            "param_file": self.param_file,
        }
        if self.cluster is not None:  # one-VM cells keep the documents they always had
            doc["cluster"] = self.cluster.to_json()
        return doc

    @classmethod
    def from_json(cls, data: Any, where: Path | str) -> CellConfig:
        f = Fields(check_document(data, cls.SCHEMA, cls.VERSION, where, HINT), where)
        return cls(
            serial=f.text("serial"),
            platform=CellPlatform.from_fields(f.obj("platform")),
            source=CellSource.from_fields(f.obj("source")),
            label=f.text("label"),
            packages=f.texts("packages"),
            selinux=f.flag("selinux"),
            repositories=Repositories.from_fields(f.obj("repositories")),
            test=CellTest.from_fields(f.obj("test")),
            vm=VmSize.from_fields(f.obj("vm")),
            network=NetworkCheck.from_fields(f.obj("network")),
            retries=RepoRetries.from_fields(f.obj("retries")),
            nightly=f.flag("nightly"),
            param_file=f.text("param_file"),
            cluster=CellCluster.from_fields(cluster) if (cluster := f.opt_obj("cluster")) else None,
        )

    @classmethod
    def read(cls, path: Path) -> CellConfig:
        """A cell.json; UserError naming it when it is missing or not a cell configuration."""
        return cls.from_json(
            read_json(
                path,
                missing="cell configuration not found",
                hint="is this a run directory written by `osgtest-dag generate`?",
            ),
            path,
        )
