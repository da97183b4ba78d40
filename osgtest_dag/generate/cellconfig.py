"""The per-cell configuration: what the payload in the VM needs to know (docs/contracts.md §1).

`generate` writes every cell's configuration as one line of the run's `cells.jsonl` (one file,
not one per cell: at 100k cells, creating 100k directories and files costs more than all the
rest of generation). The DAG gives each CreateDisk node its line's byte offset, so the node
reads its cell in O(1); it then writes `cells/<serial>/cell.json` and derives `cell.env` (for
the shell payload) and `osg-test.conf` for the IO disk.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
from collections.abc import Iterable, Iterator
from pathlib import Path

from osgtest_dag.base.errors import UserError
from osgtest_dag.guest import image
from osgtest_dag.model.cell import (
    CellConfig,
    CellPlatform,
    CellSource,
    CellTest,
    NetworkCheck,
    RepoRetries,
    RepoSetup,
    Repositories,
    VmSize,
)
from osgtest_dag.model.cluster import PRIVATE_NETWORK, ClusterVm
from osgtest_dag.model.documents import parse_json
from osgtest_dag.model.rundir import RunDir
from osgtest_dag.plan.catalog import Catalog, Platform
from osgtest_dag.plan.matrix import Cell

# osg-test's base configuration; each cell's keys are appended as the reference tool does.
OSG_TEST_BASE = """[Config]
adduser = True
dumpout = True
verbose = True
timeout = 14400
hostcert = True
"""
# The keys osg_test_conf appends per cell: a base configuration (--osg-test-config) leaves them out.
PER_CELL_OSG_TEST_KEYS = frozenset(
    ("testsource", "extrarepos", "updaterelease", "updaterepos", "packages", "series", "sources")
    + ("selinux", "nightly")
)
# The reference adds this path to an SELinux package set's packages (by path: its package's
# name differs between EL releases); only on EL, where SELinux is.
SEMANAGE = "/usr/sbin/semanage"


def cell_packages(cell: Cell) -> tuple[str, ...]:
    """The package set's packages, with semanage for an EL set with SELinux, as the reference."""
    packages = tuple(cell.package_set.packages)
    if cell.platform.family == "el" and cell.package_set.selinux and SEMANAGE not in packages:
        packages += (SEMANAGE,)
    return packages


def cell_platform(p: Platform) -> CellPlatform:
    """What a cell's configuration says of its catalog platform."""
    return CellPlatform(
        id=p.id,
        os=p.os,
        family=p.family,
        distro=p.distro,
        major=p.major,
        arch=p.arch,
        name=p.name,
        codename=p.codename,
        image=p.image,
        image_format=p.image_format,
        hook=p.hook,
        image_size=p.image_size,
    )


def cell_config(cell: Cell, catalog: Catalog, *, nightly: bool = False) -> CellConfig:
    p, s = cell.platform, cell.source
    initial = catalog.resolve(p, s.series, s.repos)
    update = catalog.resolve(p, s.effective_update_series, s.update_repos) if s.has_update else None
    return CellConfig(
        serial=cell.serial,
        platform=cell_platform(p),
        source=CellSource(
            raw=s.raw,
            test_source=str(s.test_source) if s.test_source else None,
            series=s.series,
            repos=s.repos,
            update_series=s.update_series,
            update_repos=s.update_repos,
        ),
        label=cell.package_set.label,
        packages=cell_packages(cell),
        selinux=cell.package_set.selinux,
        repositories=Repositories(initial=initial, update=update),
        test=CellTest(command=cell.test_command, timeout=cell.test_timeout, kind=cell.test_kind),
        vm=VmSize(memory=cell.vm.memory, vcpus=cell.vm.vcpus, disk=cell.vm.disk),
        network=NetworkCheck(check_host=catalog.network_check_host(p.family), retries=5),
        retries=RepoRetries(count=3, backoff=10),
        nightly=nightly,
        param_file=cell.origin.name,
        cluster=cell.cluster,
    )


def write_store(path: Path, configs: Iterable[CellConfig]) -> list[int]:
    """Write configurations one per line; return each line's byte offset."""
    offsets = []
    pos = 0
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    with open(path, "wb") as f:
        for cfg in configs:
            line = (dumps(cfg.to_json()) + "\n").encode()
            offsets.append(pos)
            f.write(line)
            pos += len(line)
    return offsets


def read_cell(run_dir: Path, serial: str, offset: int | None = None) -> CellConfig:
    """One cell's configuration from the run's store: at `offset` if given, else by scanning."""
    path = RunDir(run_dir).cell_store
    try:
        with open(path, "rb") as f:
            if offset is not None:
                f.seek(offset)
                cfg = _check(f.readline(), path)
                if cfg.serial == serial:
                    return cfg
                f.seek(0)
            key = f'"serial":"{serial}"'.encode()
            for line in f:
                if key in line:
                    cfg = _check(line, path)
                    if cfg.serial == serial:
                        return cfg
    except FileNotFoundError:
        raise UserError(
            "not a run directory (no cells.jsonl)",
            where=run_dir,
            hint="create one with `osgtest-dag generate PARAMS -o RUN_DIR`",
        ) from None
    raise UserError(
        f"no cell {serial!r} in this run",
        where=run_dir,
        hint="`osgtest-dag plan` or cells.jsonl list the serials",
    )


def iter_cells(run_dir: Path) -> Iterator[CellConfig]:
    path = RunDir(run_dir).cell_store
    with open(path, "rb") as f:
        for line in f:
            yield _check(line, path)


def _check(line: bytes, path: Path) -> CellConfig:
    return CellConfig.from_json(parse_json(line, path), path)


def stage_log(index: int, name: str) -> str:
    """A stage's log in the VM's output/: numbered, its name made safe for a file name."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "stage"
    return f"stages/{index}-{slug}.log"


def cluster_env(cfg: CellConfig, vm: ClusterVm) -> dict[str, str]:
    """What a cluster VM knows of itself and its cluster (docs/clusters.md); its stages'
    commands are files of input/stages/ (`stage_files`)."""
    assert cfg.cluster is not None
    vms = cfg.cluster_vms()
    values = {
        "CLUSTER_VM": vm.name,
        "CLUSTER_ROLE": vm.role,
        "CLUSTER_ADDRESS": vm.address,
        "CLUSTER_PREFIX": str(ipaddress.ip_network(PRIVATE_NETWORK).prefixlen),
        "CLUSTER_MAC": vm.mac,
        "CLUSTER_HOSTS": "\n".join(f"{v.address} {v.name}" for v in vms if not v.network_boot),
        # the VMs that boot from the network, for the role that serves them (e.g. dnsmasq's
        # dhcp-host lines): name, MAC, address
        "CLUSTER_NETBOOT": "\n".join(f"{v.name} {v.mac} {v.address}" for v in vms if v.network_boot),
        "CLUSTER_STAGE_COUNT": str(len(cfg.cluster.stages)),
    }
    for i, stage in enumerate(cfg.cluster.stages, 1):
        values[f"CLUSTER_STAGE_{i}_NAME"] = stage.name
        values[f"CLUSTER_STAGE_{i}_ALWAYS"] = "true" if stage.runs_always else "false"
        values[f"CLUSTER_STAGE_{i}_TIMEOUT"] = str(stage.timeout or cfg.test.timeout)
        values[f"CLUSTER_STAGE_{i}_LOG"] = stage_log(i, stage.name)
    return values


def stage_files(cfg: CellConfig, vm: ClusterVm) -> dict[str, str]:
    """input/stages/<k>.sh for each stage this VM's role runs a command in."""
    assert cfg.cluster is not None
    out = {}
    for i, stage in enumerate(cfg.cluster.stages, 1):
        command = stage.command_for(vm.role)
        if command is not None:
            out[f"{i}.sh"] = f"# osgtest-dag: stage {stage.name} of {vm.name} ({vm.role})\n{command}\n"
    return out


def cell_env(cfg: CellConfig, vm: ClusterVm | None = None) -> str:
    """The shell view of cell.json: `KEY='value'` lines, every value quoted; for a cluster VM,
    its role's packages added and its place in the cluster."""
    p, s = cfg.platform, cfg.source
    init = cfg.repositories.initial
    upd = cfg.repositories.update or RepoSetup()
    values = {
        "CELL_SERIAL": cfg.serial,
        "CELL_PLATFORM": p.id,
        "CELL_FAMILY": p.family,
        "CELL_MAJOR": str(p.major),
        "CELL_ARCH": p.arch,
        "CELL_CODENAME": p.codename or "",
        "CELL_LABEL": cfg.label,
        "CELL_PACKAGES": " ".join(
            cfg.packages + (cfg.cluster.role(vm.role).packages if cfg.cluster and vm else ())
        ),
        "CELL_SELINUX": "true" if cfg.selinux else "false",
        "CELL_SERIES": s.series,
        "CELL_TEST_SOURCE": s.test_source or "",
        "INITIAL_SETUP_PACKAGES": " ".join(init.setup_packages),
        "INITIAL_ENABLE": " ".join(init.enable),
        "INITIAL_APT_SOURCES": "\n".join(init.apt_sources),
        "HAS_UPDATE": "true" if cfg.repositories.update else "false",
        "UPDATE_SERIES": s.update_series or s.series,
        "UPDATE_SETUP_PACKAGES": " ".join(upd.setup_packages),
        "UPDATE_ENABLE": " ".join(upd.enable),
        "UPDATE_APT_SOURCES": "\n".join(upd.apt_sources),
        "TEST_COMMAND": cfg.test.command or "",
        "TEST_TIMEOUT": str(cfg.test.timeout),
        "TEST_KIND": cfg.test.kind,
        "OSG_TEST": "true" if cfg.test.osg_test else "false",  # TEST_KIND is osg-test
        "NETWORK_CHECK_HOST": cfg.network.check_host,
        "NETWORK_RETRIES": str(cfg.network.retries),
        "REPO_RETRIES": str(cfg.retries.count),
        "REPO_BACKOFF": str(cfg.retries.backoff),
        "APT_LISTS_MAX_AGE": str(cfg.repositories.lists_max_age),
        # the scratch disk (OSGTEST-SCRATCH) the payload puts under the writable trees; 0: none
        "SCRATCH_MB": str(cfg.vm_scratch_mb(vm) if vm is not None else cfg.scratch_mb),
    }
    if vm is not None:
        values.update(cluster_env(cfg, vm))
    lines = [f"# osgtest-dag cell {cfg.serial}: generated from cell.json, do not edit"]
    lines += [f"{k}={shlex.quote(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def osg_test_conf(cfg: CellConfig, base: str = OSG_TEST_BASE) -> str:
    """osg-test's configuration for the cell, composed as vm-test-runs' generate-dag does."""
    s = cfg.source
    out = base.rstrip("\n") + "\n"
    if s.test_source:
        out += f"testsource = {s.test_source}\n"
    extra = [r for r in s.repos if r != "osg"]  # the release repository is on by default
    if extra:
        out += f"extrarepos = {', '.join(extra)}\n"
    if s.update_repos:
        if s.update_series:
            out += f"updaterelease = {s.update_series}\n"
            if s.update_repos != ("osg",):
                out += f"updaterepos = {', '.join(s.update_repos)}\n"
        else:
            out += f"updaterepos = {', '.join(s.update_repos)}\n"
    out += f"packages = {', '.join(cfg.packages)}\n"
    out += f"series = {s.series}\n"
    out += f"sources = {s.raw}\n"
    out += f"selinux = {cfg.selinux}\n"
    out += f"nightly = {cfg.nightly}\n"
    return out


def write_input_dir(
    cfg: CellConfig, dest: Path, osg_test_base: str = OSG_TEST_BASE, vm: ClusterVm | None = None
) -> Path:
    """Write the IO disk's `input/` tree for one cell (or one VM of a cluster cell): cell.json,
    cell.env, osg-test.conf (the cell's keys appended to `osg_test_base`, the run's pinned
    configuration), a cluster VM's stages/."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "cell.json").write_text(json.dumps(cfg.to_json(), indent=1) + "\n")
    (dest / "cell.env").write_text(cell_env(cfg, vm))
    if vm is not None:
        (dest / "stages").mkdir(exist_ok=True)
        for name, text in stage_files(cfg, vm).items():
            (dest / "stages" / name).write_text(text)
    if cfg.test.osg_test:
        (dest / "osg-test.conf").write_text(osg_test_conf(cfg, osg_test_base))
    return dest


def missing_images(
    run_dir: Path, serials: Iterable[str] | None = None, *, only_present_dirs: bool = False
) -> list[image.MissingImage]:
    """The base images the run's cells (or those of `serials`) need that are not on this
    machine, each with the command that builds it."""
    return image.missing_images(image_platforms(run_dir, serials), only_present_dirs=only_present_dirs)


def image_platforms(run_dir: Path, serials: Iterable[str] | None = None) -> list[tuple[str, str]]:
    """The distinct `(platform id, base image)` pairs of the run's cells (or those of `serials`)."""
    wanted = None if serials is None else set(serials)
    pairs = (
        (c.platform.id, c.platform.image) for c in iter_cells(run_dir) if wanted is None or c.serial in wanted
    )
    return list(dict.fromkeys(pairs))
