"""run.json, typed: the run manifest (RunManifest) and the options the run was generated with
(WorkflowOptions). `generate` writes it; every stage that needs the run's options or
provenance (the nodes, the engines, analysis, rerun, retention) reads it through `RunManifest`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from osgtest_dag.base.errors import UserError
from osgtest_dag.model.documents import Fields, JsonObject, check_document, read_json
from osgtest_dag.model.rundir import RunDir

HINT = "a run directory from an incompatible osgtest-dag version: regenerate it"


@dataclass(frozen=True)
class WorkflowOptions:
    """How `generate` builds a run; kept in run.json so the nodes, a rerun and the engines use
    the same values."""

    tool: str = ""  # absolute path of the osgtest-dag executable for nodes
    vm_type: str = "kvm"
    max_wall: int = 14400  # s a VM may run before it is held (and, locally, killed)
    max_starts: int = 3  # job starts before a held VM job is removed
    max_queue_time: int = 43200  # s in the queue before a VM job is removed
    vm_retries: int = 2  # DAG retries of a VM node after an infrastructure failure
    disk_retries: int = 3
    local_io_maxjobs: int = 10
    extra_requirements: str | None = None
    excluded_hosts: tuple[str, ...] = ()
    template_dir: str | None = None
    node_status_interval: int = 30
    iodisk_size_mb: int = 64
    iodisk_backend: str = "mke2fs"
    batch_name: str = ""
    nightly: bool = False
    keep_disks: bool = False
    environment: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def requirements(self, arch_macro: str = "$(condor_arch)", capability: str = "HasVM") -> str:
        """The execute points a VM job may run on; a cluster cell's job asks for `capability`
        OsgtestDagQemu instead (docs/clusters.md): the machine runs qemu for it."""
        parts = [f'(TARGET.Arch == "{arch_macro}")', f"(TARGET.{capability} =?= True)"]
        if self.extra_requirements:
            parts.append(f"({self.extra_requirements})")
        if self.excluded_hosts:
            hosts = ", ".join(f'"{h}"' for h in self.excluded_hosts)
            parts.append(f"!member(TARGET.Machine, {{{hosts}}})")
        return " && ".join(parts)

    def to_json(self) -> JsonObject:
        out: JsonObject = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        out["environment"] = dict(self.environment)
        return out

    @classmethod
    def from_json(cls, data: Any, where: Path | str) -> WorkflowOptions:
        """The options in `data`; a missing one takes its default (a run.json written before
        the option existed), an unknown one is ignored."""
        f = Fields(data, where, "options.")
        values: dict[str, Any] = {}
        for spec in fields(cls):
            name = spec.name
            if not f.has(name):
                continue
            if name == "environment":
                env = f.obj(name)
                values[name] = tuple(sorted((k, env.text(k)) for k in env.data))
            elif name == "excluded_hosts":
                values[name] = f.texts(name)
            elif spec.type == "bool":
                values[name] = f.flag(name)
            elif spec.type == "int":
                values[name] = f.integer(name)
            elif spec.type == "str":
                values[name] = f.text(name)
            else:  # str | None
                values[name] = f.opt_text(name)
        return cls(**values)


@dataclass(frozen=True)
class RunManifest:
    """run.json: what the run is, how and from what it was generated."""

    SCHEMA = "osgtest-dag/run"
    VERSION = 1
    generated: str  # UTC, ISO 8601 with a Z
    tool_version: str
    run_name: str
    cells: int
    options: WorkflowOptions
    param_files: tuple[str, ...] = ()  # absolute paths of the originals (params/ has copies)
    image_dir: str = ""

    def to_json(self) -> JsonObject:
        return {
            "schema": self.SCHEMA,
            "version": self.VERSION,
            "generated": self.generated,
            "tool_version": self.tool_version,
            "run_name": self.run_name,
            "cells": self.cells,
            "options": self.options.to_json(),
            "param_files": list(self.param_files),
            "image_dir": self.image_dir,
        }

    @classmethod
    def from_json(cls, data: Any, where: Path | str) -> RunManifest:
        f = Fields(check_document(data, cls.SCHEMA, cls.VERSION, where, HINT), where)
        return cls(
            generated=f.text("generated"),
            tool_version=f.text("tool_version"),
            run_name=f.text("run_name"),
            cells=f.integer("cells"),
            options=WorkflowOptions.from_json(f.obj("options").data, where),
            param_files=f.texts("param_files"),
            image_dir=f.text("image_dir"),
        )

    @classmethod
    def read(cls, run_dir: Path) -> RunManifest:
        """The manifest of `run_dir`; UserError when it is not a run directory (of this
        version)."""
        path = RunDir(run_dir).manifest
        if not path.exists():
            raise UserError(
                "not a run directory (no run.json)",
                where=run_dir,
                hint="create one with `osgtest-dag generate PARAMS -o RUN_DIR`",
            )
        return cls.from_json(read_json(path, hint=HINT), path)
