"""A package set's `cluster:` (docs/clusters.md) -> model.cluster.CellCluster, validated: every
bad definition is a UserError at its place in the file, as every other mistake in a parameter
file is.
"""

from __future__ import annotations

import re

from osgtest_dag.base import yamlsrc
from osgtest_dag.base.errors import UserError
from osgtest_dag.model.cluster import (
    BOOT_DISK,
    BOOT_KINDS,
    BOOT_NETWORK,
    MAX_VMS,
    CellCluster,
    ClusterRole,
    ClusterStage,
)
from osgtest_dag.plan.catalog import did_you_mean
from osgtest_dag.plan.vmsettings import vm_overrides

CLUSTER_KEYS = ("roles", "stages")
ROLE_KEYS = ("count", "packages", "vm", "boot")
STAGE_KEYS = ("name", "all", "always", "timeout")  # the other keys of a stage are role names
ROLE_NAME = re.compile(r"^[a-z][a-z0-9]{0,19}$")  # VMs are <role>-<n>: host names
STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")  # names the stage's log file
EXAMPLE = "e.g. 'stages: [{name: run, all: ./test.sh}]'"
ROLES_EXAMPLE = "e.g. 'roles: {server: {count: 1}, client: {count: 2}}'"


def parse_cluster(doc: yamlsrc.Document, key: tuple, value, what: str) -> CellCluster:
    """The cluster at `key` in `doc`; `what` names its package set in messages."""
    if not isinstance(value, dict):
        raise UserError(
            f"{what}: 'cluster' must be a mapping with 'roles' and 'stages'",
            where=doc.where(*key),
            hint="see docs/clusters.md",
        )
    for k in value:
        if k not in CLUSTER_KEYS:
            raise UserError(
                f"{what}: unknown cluster key {k!r}",
                where=doc.key_where(*key, k),
                hint=did_you_mean(str(k), CLUSTER_KEYS) or f"known keys: {', '.join(CLUSTER_KEYS)}",
            )
        if value[k] is None or value[k] == [] or value[k] == {}:
            kind = "mapping of role names" if k == "roles" else "list of stages"
            raise UserError(
                f"{what}: cluster {k!r} must be a non-empty {kind}",
                where=doc.key_where(*key, k),
                hint=ROLES_EXAMPLE if k == "roles" else EXAMPLE,
            )
    for k in CLUSTER_KEYS:
        if k not in value:
            raise UserError(
                f"{what}: a cluster needs {k!r}",
                where=doc.key_where(*key),
                hint=ROLES_EXAMPLE if k == "roles" else EXAMPLE,
            )
    roles = _roles(doc, key + ("roles",), value["roles"], what)
    stages = _stages(doc, key + ("stages",), value["stages"], roles, what)
    return CellCluster(roles=roles, stages=stages)


def _roles(doc: yamlsrc.Document, key: tuple, value, what: str) -> tuple[ClusterRole, ...]:
    if not isinstance(value, dict):
        raise UserError(
            f"{what}: cluster 'roles' must map role names to their settings",
            where=doc.where(*key),
            hint=ROLES_EXAMPLE,
        )
    roles = tuple(_role(doc, key, name, spec, what) for name, spec in value.items())
    if not any(r.boot == BOOT_DISK for r in roles):
        raise UserError(
            f"{what}: every role of the cluster boots from the network",
            where=doc.key_where(*key),
            hint="network-booted VMs boot from a role that boots from its disk and serves them",
        )
    total = sum(r.count for r in roles)
    if total > MAX_VMS:
        raise UserError(
            f"{what}: the cluster has {total} VMs, more than {MAX_VMS}",
            where=doc.key_where(*key),
            hint=f"lower the roles' counts to {MAX_VMS} VMs in all",
        )
    return roles


def _role(doc: yamlsrc.Document, key: tuple, name, spec, what: str) -> ClusterRole:
    if not isinstance(name, str) or not ROLE_NAME.match(name) or name in STAGE_KEYS:
        why = f"is a stage key ({', '.join(STAGE_KEYS)})" if name in STAGE_KEYS else "is not a host name"
        raise UserError(
            f"{what}: role name {name!r} {why}",
            where=doc.key_where(*key, name),
            hint="a role name is 1-20 lower-case letters and digits, starting with a letter, and not "
            f"one of {', '.join(STAGE_KEYS)} (its VMs are named <role>-<n>)",
        )
    key = key + (name,)
    spec = {} if spec is None else spec
    if not isinstance(spec, dict):
        raise UserError(
            f"{what}: role {name!r} must be a mapping of {', '.join(ROLE_KEYS)}",
            where=doc.where(*key),
            hint="e.g. '{count: 2, packages: [curl]}'",
        )
    for k in spec:
        if k not in ROLE_KEYS:
            raise UserError(
                f"{what}: unknown key {k!r} in role {name!r}",
                where=doc.key_where(*key, k),
                hint=did_you_mean(str(k), ROLE_KEYS) or f"known keys: {', '.join(ROLE_KEYS)}",
            )
    count = spec.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise UserError(
            f"{what}: role {name!r}: 'count' must be a whole number of at least 1, not {count!r}",
            where=doc.where(*key, "count"),
            hint=f"the number of {name} VMs (default 1)",
        )
    packages = spec.get("packages", [])
    if not isinstance(packages, list):
        raise UserError(
            f"{what}: role {name!r}: 'packages' must be a list",
            where=doc.where(*key, "packages"),
            hint="e.g. 'packages: [nginx-light]'",
        )
    for j, p in enumerate(packages):
        if not isinstance(p, str) or not p.strip() or any(c.isspace() for c in p.strip()):
            raise UserError(
                f"{what}: role {name!r}: bad package name {p!r}",
                where=doc.where(*key, "packages", j),
                hint="one package name per list item",
            )
    boot = spec.get("boot", BOOT_DISK)
    if boot not in BOOT_KINDS:
        raise UserError(
            f"{what}: role {name!r}: 'boot' must be {' or '.join(BOOT_KINDS)}, not {boot!r}",
            where=doc.where(*key, "boot"),
            hint=did_you_mean(str(boot), BOOT_KINDS) or f"{BOOT_DISK} (the default) or {BOOT_NETWORK}",
        )
    if boot == BOOT_NETWORK and packages:
        raise UserError(
            f"{what}: role {name!r} boots from the network and cannot install packages",
            where=doc.where(*key, "packages"),
            hint="a network-booted VM has no base image: install what it needs on the role that serves it",
        )
    vm = vm_overrides(doc, key + ("vm",), spec["vm"]) if "vm" in spec else {}
    return ClusterRole(
        name=name,
        count=count,
        packages=tuple(p.strip() for p in packages),
        memory=vm.get("memory"),
        vcpus=vm.get("vcpus"),
        disk=vm.get("disk"),
        boot=boot,
    )


def _stages(
    doc: yamlsrc.Document, key: tuple, value, roles: tuple[ClusterRole, ...], what: str
) -> tuple[ClusterStage, ...]:
    if not isinstance(value, list):
        raise UserError(f"{what}: cluster 'stages' must be a list", where=doc.where(*key), hint=EXAMPLE)
    by_role = {r.name: r for r in roles}
    first_at: dict[str, int | None] = {}
    stages = []
    for i, spec in enumerate(value):
        stage = _stage(doc, key + (i,), spec, by_role, what)
        where = doc.where(*key, i, "name")
        if stage.name in first_at:
            raise UserError(
                f"{what}: duplicate stage name {stage.name!r} (first at line {first_at[stage.name]})",
                where=where,
                hint="stage names are unique: they name the stages in results and logs",
            )
        first_at[stage.name] = where.line
        stages.append(stage)
    return tuple(stages)


def _stage(
    doc: yamlsrc.Document, key: tuple, spec, by_role: dict[str, ClusterRole], what: str
) -> ClusterStage:
    if not isinstance(spec, dict):
        raise UserError(
            f"{what}: a stage must be a mapping with 'name' and commands",
            where=doc.where(*key),
            hint="e.g. '- {name: run, client: curl -fsS http://server-1/}'",
        )
    name = spec.get("name")
    if "name" not in spec:
        raise UserError(f"{what}: a stage needs a 'name'", where=doc.where(*key), hint=EXAMPLE)
    if not isinstance(name, str) or not STAGE_NAME.match(name):
        raise UserError(
            f"{what}: bad stage name {name!r}",
            where=doc.where(*key, "name"),
            hint="letters, digits, '.', '_' and '-', starting with a letter or digit, at most 40 (it names "
            "the stage's log file)",
        )
    always = spec.get("always", False)
    if not isinstance(always, bool):
        raise UserError(
            f"{what}: stage {name!r}: 'always' must be true or false",
            where=doc.where(*key, "always"),
            hint="true: the stage runs after a failed stage too",
        )
    timeout = spec.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0):
        raise UserError(
            f"{what}: stage {name!r}: 'timeout' must be a positive number of seconds",
            where=doc.where(*key, "timeout"),
            hint="leave it out for the package set's test timeout",
        )
    commands = []
    for k, command in spec.items():
        if k in ("name", "always", "timeout"):
            continue
        if k != "all":
            role = by_role.get(k) if isinstance(k, str) else None
            if role is None:
                raise UserError(
                    f"{what}: stage {name!r} names unknown role {k!r}",
                    where=doc.key_where(*key, k),
                    hint=did_you_mean(str(k), by_role)
                    or f"the roles are {', '.join(by_role)}; a stage's other keys are {', '.join(STAGE_KEYS)}",
                )
            if role.boot == BOOT_NETWORK:
                raise UserError(
                    f"{what}: stage {name!r} gives a command to role {k!r}, which boots from the network",
                    where=doc.key_where(*key, k),
                    hint="network-booted VMs run no stages: check them from the role that serves them",
                )
        if not isinstance(command, str) or not command.strip():
            raise UserError(
                f"{what}: stage {name!r}: the command for {k!r} must be a non-empty string",
                where=doc.where(*key, k),
                hint="a shell command; quote it when it contains ': ' or starts with a special character",
            )
        if k != "all":
            commands.append((k, command))
    all_command = spec.get("all")
    return ClusterStage(name=name, commands=tuple(commands), all=all_command, always=always, timeout=timeout)


def describe(cluster: CellCluster) -> str:
    """`server x1, client x2 (3 VMs); stages: init, run, finalize` for `plan`."""
    roles = ", ".join(
        f"{r.name} x{r.count}" + (" (network boot)" if r.boot == BOOT_NETWORK else "") for r in cluster.roles
    )
    vms = f"{cluster.size} VM" + ("s" if cluster.size != 1 else "")
    return f"{roles} ({vms}); stages: {', '.join(s.name for s in cluster.stages)}"
