"""A virtual cluster: a cell of several VMs on a private network, running stages in lock step
(docs/clusters.md). The parameter file's `cluster:` (plan.params) becomes a `CellCluster` in
the cell's configuration; `vms()` expands it into the VMs the runner starts, each with its
name (`<role>-<n>`), private address and MAC; a VM's record of each stage is
`documents.StageResult`, in its result.json.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from osgtest_dag.base.errors import UserError
from osgtest_dag.model.documents import Fields, JsonObject, VmRecord, check_document, read_json

BOOT_DISK = "disk"  # from the platform's base image and its own bootloader
BOOT_NETWORK = "network"  # no disk: PXE from another role of the cluster
BOOT_KINDS = (BOOT_DISK, BOOT_NETWORK)
FINALIZE = "finalize"  # a stage of this name always runs, as `always: true` does

# Every cluster cell has a network of its own (the runner's switch joins only its VMs), so all
# of them can use the same addresses: VM i (0-based, roles in file order) is .11+i.
PRIVATE_NETWORK = "10.77.0.0/24"
FIRST_HOST = 11
MAX_VMS = 32


@dataclass(frozen=True)
class ClusterRole:
    name: str
    count: int
    packages: tuple[str, ...] = ()  # installed on this role's VMs, after the set's own
    memory: int | None = None  # MB; None: the cell's VM profile
    vcpus: int | None = None
    disk: int | None = None  # MB
    boot: str = BOOT_DISK

    def to_json(self) -> JsonObject:
        return {
            "name": self.name,
            "count": self.count,
            "packages": list(self.packages),
            "memory": self.memory,
            "vcpus": self.vcpus,
            "disk": self.disk,
            "boot": self.boot,
        }

    @classmethod
    def from_fields(cls, f: Fields) -> ClusterRole:
        return cls(
            name=f.text("name"),
            count=f.integer("count"),
            packages=f.texts("packages"),
            memory=f.opt_integer("memory"),
            vcpus=f.opt_integer("vcpus"),
            disk=f.opt_integer("disk"),
            boot=f.choice("boot", BOOT_KINDS),
        )


@dataclass(frozen=True)
class ClusterStage:
    name: str
    commands: tuple[tuple[str, str], ...] = ()  # (role, shell command), in file order
    all: str | None = None  # the command of every role without its own
    always: bool = False  # runs even after a failed stage (finalize always does)
    timeout: int | None = None  # s; None: the cell's test timeout

    def command_for(self, role: str) -> str | None:
        """What a VM of `role` runs in this stage: its role's command, else `all`, else nothing
        (it still waits at the barrier)."""
        return dict(self.commands).get(role, self.all)

    @property
    def runs_always(self) -> bool:
        return self.always or self.name == FINALIZE

    def to_json(self) -> JsonObject:
        return {
            "name": self.name,
            "commands": dict(self.commands),
            "all": self.all,
            "always": self.always,
            "timeout": self.timeout,
        }

    @classmethod
    def from_fields(cls, f: Fields) -> ClusterStage:
        commands = f.text_map("commands")
        return cls(
            name=f.text("name"),
            commands=tuple(commands.items()),
            all=f.opt_text("all"),
            always=f.flag("always"),
            timeout=f.opt_integer("timeout"),
        )


@dataclass(frozen=True)
class ClusterVm:
    """One VM of a cluster cell, as the runner starts it and the payload knows itself."""

    name: str  # <role>-<n>
    role: str
    index: int  # 0-based over the whole cluster
    address: str  # on the private network
    mac: str  # of the private NIC
    memory: int  # MB
    vcpus: int
    disk: int  # MB
    boot: str

    @property
    def network_boot(self) -> bool:
        return self.boot == BOOT_NETWORK


@dataclass(frozen=True)
class CellCluster:
    roles: tuple[ClusterRole, ...]
    stages: tuple[ClusterStage, ...]

    def vms(self, memory: int, vcpus: int, disk: int) -> tuple[ClusterVm, ...]:
        """The VMs, roles in file order, `<role>-1..count` each; `memory`, `vcpus` and `disk`
        are the cell's VM profile, which a role's own values override."""
        net = ipaddress.ip_network(PRIVATE_NETWORK)
        out: list[ClusterVm] = []
        for role in self.roles:
            for n in range(1, role.count + 1):
                i = len(out)
                host = FIRST_HOST + i
                out.append(
                    ClusterVm(
                        name=f"{role.name}-{n}",
                        role=role.name,
                        index=i,
                        address=str(net.network_address + host),
                        mac=f"52:54:00:77:00:{host:02x}",
                        memory=role.memory or memory,
                        vcpus=role.vcpus or vcpus,
                        disk=role.disk or disk,
                        boot=role.boot,
                    )
                )
        return tuple(out)

    @property
    def size(self) -> int:
        return sum(r.count for r in self.roles)

    def role(self, name: str) -> ClusterRole:
        return next(r for r in self.roles if r.name == name)

    def to_json(self) -> JsonObject:
        return {
            "network": PRIVATE_NETWORK,
            "roles": [r.to_json() for r in self.roles],
            "stages": [s.to_json() for s in self.stages],
        }

    @classmethod
    def from_fields(cls, f: Fields) -> CellCluster:
        return cls(
            roles=tuple(ClusterRole.from_fields(r) for r in f.objs("roles")),
            stages=tuple(ClusterStage.from_fields(s) for s in f.objs("stages")),
        )


@dataclass(frozen=True)
class ClusterRunRecord:
    """cluster.json: what the cluster runner did (engine/cluster/runner.py) - each VM's start
    as a `VmRecord` (`node` is the VM's name), the barrier of each stage in host time (who
    arrived when with which status, when it was released, run or skip), the frames each VM sent
    on the private network. The POST script reads it as a one-VM cell's local-vm.json."""

    SCHEMA = "osgtest-dag/cluster-run"
    VERSION = 1
    vms: tuple[VmRecord, ...]
    barriers: tuple[JsonObject, ...] = ()
    frames: tuple[tuple[str, int], ...] = ()  # vm -> frames it sent on the private network
    error: str | None = None  # why the runner stopped early (a signal, a VM that did not start)

    def vm(self, name: str) -> VmRecord | None:
        return next((r for r in reversed(self.vms) if r.node == name), None)

    def to_json(self) -> JsonObject:
        return {
            "schema": self.SCHEMA,
            "version": self.VERSION,
            "vms": [r.to_json() for r in self.vms],
            "barriers": list(self.barriers),
            "frames": dict(self.frames),
            "error": self.error,
        }

    @classmethod
    def from_json(cls, data: Any, where: Path | str) -> ClusterRunRecord:
        doc = check_document(data, cls.SCHEMA, cls.VERSION, where)
        vms, barriers, frames = doc.get("vms"), doc.get("barriers"), doc.get("frames")
        if not isinstance(vms, list) or not isinstance(barriers, list) or not isinstance(frames, dict):
            raise UserError("`vms`, `barriers` or `frames` is not of its type", where=where)
        return cls(
            vms=tuple(VmRecord.from_json(v, where) for v in vms),
            barriers=tuple(b for b in barriers if isinstance(b, dict)),
            frames=tuple((str(k), int(v)) for k, v in frames.items() if isinstance(v, int)),
            error=doc.get("error") if isinstance(doc.get("error"), str) else None,
        )

    @classmethod
    def read(cls, path: Path) -> ClusterRunRecord | None:
        """The record in `path`; None when there is none (the runner never got to write it)."""
        if not Path(path).is_file():
            return None
        return cls.from_json(read_json(path), path)
