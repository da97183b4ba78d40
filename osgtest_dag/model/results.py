"""results.json, typed: the analysis of a run (docs/results.md). `analyze` writes it; the
reports, compare, email, status and rerun read it through `ResultsDocument`.

The envelope is typed; each cell's entry and the count tables stay JSON objects (their shape is
docs/results.md's, and the renderers walk them as such).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from osgtest_dag.base.errors import UserError
from osgtest_dag.model.documents import Fields, JsonObject, check_document, read_json
from osgtest_dag.model.outcome import ORDERED, Outcome
from osgtest_dag.model.rundir import RunDir

HINT = "run `osgtest-dag analyze RUN_DIR` (again, with this version) first"


@dataclass(frozen=True)
class RunInfo:
    """The analyzed run, as its manifest describes it."""

    name: str
    dir: str
    generated: str | None
    cells: int
    param_files: tuple[str, ...] = ()

    def to_json(self) -> JsonObject:
        return {
            "name": self.name,
            "dir": self.dir,
            "generated": self.generated,
            "cells": self.cells,
            "param_files": list(self.param_files),
        }

    @classmethod
    def from_fields(cls, f: Fields) -> RunInfo:
        return cls(
            name=f.text("name"),
            dir=f.text("dir"),
            generated=f.opt_text("generated"),
            cells=f.integer("cells"),
            param_files=f.texts("param_files"),
        )


@dataclass(frozen=True)
class KnownFailuresInfo:
    """Which known-failure files the analysis applied, and what it found wrong with them."""

    files: tuple[str, ...] = ()
    entries: int = 0
    warnings: tuple[str, ...] = ()

    def to_json(self) -> JsonObject:
        return {"files": list(self.files), "entries": self.entries, "warnings": list(self.warnings)}

    @classmethod
    def from_fields(cls, f: Fields) -> KnownFailuresInfo:
        return cls(files=f.texts("files"), entries=f.integer("entries"), warnings=f.texts("warnings"))


def outcome_table() -> list[JsonObject]:
    """The outcomes, best first, as results.json lists them for its readers."""
    return [
        {"name": o.value, "severity": o.severity, "description": o.description, "acceptable": o.acceptable}
        for o in ORDERED
    ]


@dataclass(frozen=True, eq=True)
class ResultsDocument:
    SCHEMA = "osgtest-dag/results"
    VERSION = 1
    generated: str
    tool_version: str
    run: RunInfo
    worst: Outcome
    counts: JsonObject  # by_outcome and the by_* group tables
    known_failures: KnownFailuresInfo
    component_tags: str | None
    cells: tuple[JsonObject, ...]  # one entry per cell, by serial

    def cell(self, serial: str) -> JsonObject | None:
        return next((c for c in self.cells if c.get("serial") == serial), None)

    def outcomes(self) -> dict[str, Outcome]:
        """serial -> outcome of every cell the document has."""
        return {str(c["serial"]): Outcome.parse(str(c["outcome"])) for c in self.cells}

    def to_json(self) -> JsonObject:
        return {
            "schema": self.SCHEMA,
            "version": self.VERSION,
            "generated": self.generated,
            "tool_version": self.tool_version,
            "run": self.run.to_json(),
            "outcomes": outcome_table(),
            "worst": self.worst.value,
            "counts": self.counts,
            "known_failures": self.known_failures.to_json(),
            "component_tags": self.component_tags,
            "cells": list(self.cells),
        }

    @classmethod
    def from_json(cls, data: Any, where: Path | str) -> ResultsDocument:
        f = Fields(check_document(data, cls.SCHEMA, cls.VERSION, where, HINT), where)
        cells = f.data.get("cells")
        if not isinstance(cells, list) or not all(
            isinstance(c, dict) and "serial" in c and "outcome" in c for c in cells
        ):
            raise UserError("`cells` is not a list of cell entries", where=where, hint=HINT)
        try:
            worst = Outcome(f.text("worst"))
        except ValueError:
            raise UserError(f"`worst` is not an outcome (found {f.data['worst']!r})", where=where) from None
        return cls(
            generated=f.text("generated"),
            tool_version=f.text("tool_version"),
            run=RunInfo.from_fields(f.obj("run")),
            worst=worst,
            counts=dict(f.obj("counts").data),
            known_failures=KnownFailuresInfo.from_fields(f.obj("known_failures")),
            component_tags=f.opt_text("component_tags"),
            cells=tuple(cells),
        )

    @classmethod
    def read(cls, path: Path | str) -> ResultsDocument:
        """A results.json, or the one of a run directory."""
        path = Path(path)
        if path.is_dir():
            path = RunDir(path).results
        return cls.from_json(read_json(path, missing="no results.json", hint=HINT), path)
