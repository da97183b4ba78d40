"""A node's job as HTCondor describes it: the submit file read with HTCondor's own parser
(`htcondor2.Submit`, with the node's VARS applied), into a frozen `JobSpec`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import classad2
import htcondor2

from osgtest_dag.base.errors import UserError
from osgtest_dag.model import dagfile
from osgtest_dag.plan.catalog import CONDOR_ARCH

DEFAULT_MAX_WALL = 14400
DEFAULT_MAX_STARTS = 3


@dataclass(frozen=True)
class JobSpec:
    """A node's job as HTCondor's parser reads it, with the node's VARS applied."""

    universe: str
    executable: str
    arguments: tuple[str, ...]
    initialdir: Path
    output: Path | None
    error: Path | None
    environment: dict
    vm_memory: int = 0
    vm_vcpus: int = 1
    vm_networking: bool = False
    vm_disks: tuple[tuple[str, str, str, str], ...] = ()  # (file, device, permission, format)
    transfer_input_files: tuple[str, ...] = ()
    transfer_output_files: tuple[str, ...] = ()
    transfer_output_remaps: dict = field(default_factory=dict)
    max_wall: int = DEFAULT_MAX_WALL
    max_starts: int = DEFAULT_MAX_STARTS
    arch: str = "x86_64"  # the execute point's architecture `requirements` asks for
    platform: str = ""  # the cell's platform (+OsgtestDagPlatform), when the job names one


def split_arguments(text: str) -> list[str]:
    """HTCondor's `arguments`: the new syntax (double-quoted, whitespace-separated, single
    quotes group, '' is a literal quote) or the old one (plain whitespace split)."""
    text = text.strip()
    if not (text.startswith('"') and text.endswith('"') and len(text) >= 2):
        return text.split()
    body = text[1:-1].replace('""', '"')
    out, cur, i, quoted, have = [], [], 0, False, False
    while i < len(body):
        c = body[i]
        if c == "'":
            if quoted and body[i + 1 : i + 2] == "'":
                cur.append("'")
                i += 2
                continue
            quoted, have = not quoted, True
        elif c.isspace() and not quoted:
            if cur or have:
                out.append("".join(cur))
            cur, have = [], False
        else:
            cur.append(c)
        i += 1
    if cur or have:
        out.append("".join(cur))
    return out


def _split_environment(text: str) -> dict:
    return dict(a.split("=", 1) for a in split_arguments(text) if "=" in a)


def _split_list(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _max_wall(periodic_hold: str, fallback: int) -> int:
    m = re.search(r"JobCurrentStartDate\s*\)?\s*>\s*(\d+)", periodic_hold or "")
    return int(m.group(1)) if m else fallback


def _max_starts(periodic_release: str, fallback: int) -> int:
    m = re.search(r"NumJobStarts\s*<\s*(\d+)", periodic_release or "")
    return int(m.group(1)) if m else fallback


# `TARGET.Arch == "aarch64"` in `requirements` (ClassAd string comparison ignores case).
_ARCH_REQUIREMENT = re.compile(r'(?:TARGET\.)?\bArch\s*==\s*"([^"]*)"', re.IGNORECASE)
_ARCH_BY_CONDOR_NAME = {condor.lower(): arch for arch, condor in CONDOR_ARCH.items()}


def _arch(requirements: str, node_name: str, where: Path) -> str:
    """The architecture the job's requirements ask for: the local executor plays an execute
    point of that architecture (x86_64 when they name none)."""
    m = _ARCH_REQUIREMENT.search(requirements or "")
    if m is None:
        return "x86_64"
    arch = _ARCH_BY_CONDOR_NAME.get(m.group(1).lower())
    if arch is None:
        raise UserError(
            f"node {node_name}: requirements ask for Arch {m.group(1)!r}, which the local executor "
            "cannot run",
            where=where,
            hint=f"known: {', '.join(CONDOR_ARCH.values())}",
        )
    return arch


def _string_attribute(value: str) -> str:
    """A custom attribute's value (a ClassAd expression) when it is a string literal, else ""."""
    if not value:
        return ""
    try:
        got = classad2.ExprTree(value).eval()
    except Exception:  # noqa: BLE001 - HTCondor's parser raises plain exceptions
        return ""
    return got if isinstance(got, str) else ""


def read_job(submit_file: Path, node_vars: dict, dag_dir: Path, *, node_name: str) -> JobSpec:
    """Parse a node's submit description with htcondor2.Submit and the node's VARS."""
    try:
        sub = htcondor2.Submit(submit_file.read_text())
    except OSError as e:
        raise UserError(
            f"node {node_name}: cannot read submit file: {e.strerror}", where=submit_file
        ) from None
    except Exception as e:  # noqa: BLE001 - HTCondor's parser raises plain exceptions
        raise UserError(f"node {node_name}: submit file does not parse: {e}", where=submit_file) from None
    for k, v in node_vars.items():
        sub[k] = v

    def get(key: str, default: str = "") -> str:
        if key not in sub:
            return default
        return sub.expand(key).strip()

    universe = get("universe", "vanilla").lower()
    initialdir = dag_dir / get("initialdir", ".")

    def at(p: str) -> Path | None:
        return (initialdir / p) if p else None

    remaps = {}
    for pair in get("transfer_output_remaps").strip('"').split(";"):
        if "=" in pair:
            a, b = pair.split("=", 1)
            remaps[a.strip()] = b.strip()
    disks = []
    for entry in _split_list(get("vm_disk")):
        parts = entry.split(":")
        if len(parts) < 3:
            raise UserError(
                f"node {node_name}: bad vm_disk entry {entry!r}",
                where=submit_file,
                hint="file:device:permission[:format]",
            )
        disks.append((parts[0], parts[1], parts[2], parts[3] if len(parts) > 3 else ""))
    return JobSpec(
        universe=universe,
        executable=get("executable"),
        arguments=tuple(split_arguments(get("arguments"))),
        initialdir=initialdir,
        output=at(get("output")),
        error=at(get("error")),
        environment=_split_environment(get("environment").strip()),
        vm_memory=int(get("vm_memory", "0") or 0),
        vm_vcpus=int(get("vm_vcpus", "1") or 1),
        vm_networking=get("vm_networking", "false").lower() in ("true", "1", "yes"),
        vm_disks=tuple(disks),
        transfer_input_files=_split_list(get("transfer_input_files")),
        transfer_output_files=_split_list(get("transfer_output_files")),
        transfer_output_remaps=remaps,
        max_wall=_max_wall(get("periodic_hold"), DEFAULT_MAX_WALL),
        max_starts=_max_starts(get("periodic_release"), DEFAULT_MAX_STARTS),
        arch=_arch(get("requirements"), node_name, submit_file),
        platform=_string_attribute(get("MY.OsgtestDagPlatform")),
    )


def quick_vm_count(dag_dir: Path, node: dagfile.Node) -> int:
    """How many VMs a node's job runs at once, for the executor's -j: 1 for a VM-universe job,
    a cluster cell's VM count (`+OsgtestDagVms = $(vms)`, the node's `vms` VAR), else 0."""
    try:
        text = (dag_dir / (node.dir or ".") / (node.submit_file or "")).read_text()
    except OSError:
        return 0
    m = re.search(r"^\s*universe\s*=\s*(\w+)", text, re.MULTILINE | re.IGNORECASE)
    if m and m.group(1).lower() == "vm":
        return 1
    if re.search(r"^\s*\+OsgtestDagVms\s*=", text, re.MULTILINE):
        try:
            return max(1, int(node.vars.get("vms", "1")))
        except ValueError:
            return 1
    return 0
