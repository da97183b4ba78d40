"""The JSON documents of a run directory, typed: each a frozen dataclass with to_json/from_json,
and the one JSON reader of the package, which checks a document's schema and version and names
the file when it refuses one (base.errors.UserError).

    post-vm.json    PostHistory     the POST script's decisions, one per attempt
    local-vm.json   VmRecord        the local executor's record of each VM start (one a line)
    output/result.json  GuestResult the guest's own result (docs/contracts.md §2)
"""

from __future__ import annotations

import enum
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from osgtest_dag.base.errors import UserError

JsonObject = dict[str, Any]

DOCUMENT_CAP = 16 << 20  # bytes of a JSON document we read (guest-written ones included)


# ------------------------------------------------------------------------------ the reader
def read_bytes_nofollow(path: Path, cap: int) -> bytes:
    """A regular file's first `cap` bytes, never through a symlink: a cell's output came from
    a guest, and an output extracted by other means may hold links to host files."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{Path(path).name} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(cap)
    finally:
        os.close(fd)


def parse_json(text: str | bytes, where: Path | str) -> Any:
    """JSON text -> its value; UserError naming `where` when it is not JSON."""
    try:
        return json.loads(text)
    except ValueError as e:
        raise UserError(f"not valid JSON: {e}", where=where) from None


def read_json(
    path: Path, *, missing: str | None = None, hint: str | None = None, nofollow: bool = False
) -> Any:
    """A JSON file's value. UserError naming the file when it is missing (`missing` says what
    that means), unreadable or not JSON. `nofollow`: refuse symlinks (files a guest wrote)."""
    path = Path(path)
    try:
        raw = read_bytes_nofollow(path, DOCUMENT_CAP) if nofollow else path.read_bytes()
    except FileNotFoundError:
        raise UserError(missing or "file not found", where=path, hint=hint) from None
    except OSError as e:
        raise UserError(f"cannot read: {e}", where=path, hint=hint) from None
    return parse_json(raw.decode("utf-8", errors="replace"), path)


def check_document(
    data: Any, schema: str, version: int, where: Path | str, hint: str | None = None
) -> JsonObject:
    """`data` when it is a `schema` document of `version`; else UserError naming `where`."""
    if not isinstance(data, dict) or data.get("schema") != schema:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise UserError(f"not an {schema} document (found {found!r})", where=where, hint=hint)
    if data.get("version") != version:
        raise UserError(
            f"{schema} version {data.get('version')!r}; this tool reads version {version}",
            where=where,
            hint=hint,
        )
    return data


def read_document(
    path: Path,
    schema: str,
    version: int,
    *,
    missing: str | None = None,
    hint: str | None = None,
    nofollow: bool = False,
) -> JsonObject:
    return check_document(
        read_json(path, missing=missing, hint=hint, nofollow=nofollow), schema, version, path, hint
    )


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


class Fields:
    """Typed reads of one JSON object's fields, for the documents' from_json: a missing or
    mistyped field is a UserError naming the file and the field (`repositories.initial.enable`)."""

    def __init__(self, data: Any, where: Path | str, prefix: str = "") -> None:
        if not isinstance(data, dict):
            raise UserError(f"`{prefix.rstrip('.') or 'document'}` is not an object", where=where)
        self.data: Mapping[str, Any] = data
        self.where = where
        self.prefix = prefix

    def _bad(self, key: str, want: str) -> UserError:
        if key not in self.data:
            return UserError(f"`{self.prefix}{key}` is missing", where=self.where)
        return UserError(f"`{self.prefix}{key}` is not {want} (found {self.data[key]!r})", where=self.where)

    def text(self, key: str) -> str:
        value = self.data.get(key)
        if not isinstance(value, str):
            raise self._bad(key, "a string")
        return value

    def opt_text(self, key: str) -> str | None:
        return None if self.data.get(key) is None else self.text(key)

    def integer(self, key: str) -> int:
        value = self.data.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._bad(key, "an integer")
        return value

    def flag(self, key: str) -> bool:
        value = self.data.get(key)
        if not isinstance(value, bool):
            raise self._bad(key, "true or false")
        return value

    def texts(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._bad(key, "a list of strings")
        return tuple(value)

    def obj(self, key: str) -> Fields:
        if not isinstance(self.data.get(key), dict):
            raise self._bad(key, "an object")
        return Fields(self.data[key], self.where, f"{self.prefix}{key}.")

    def opt_obj(self, key: str) -> Fields | None:
        return None if self.data.get(key) is None else self.obj(key)

    def has(self, key: str) -> bool:
        return key in self.data

    def opt_integer(self, key: str) -> int | None:
        return None if self.data.get(key) is None else self.integer(key)

    def choice(self, key: str, allowed: tuple[str, ...]) -> str:
        value = self.text(key)
        if value not in allowed:
            raise self._bad(key, "one of " + ", ".join(allowed))
        return value

    def text_map(self, key: str) -> dict[str, str]:
        value = self.data.get(key)
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise self._bad(key, "an object of strings")
        return dict(value)

    def objs(self, key: str) -> tuple[Fields, ...]:
        value = self.data.get(key)
        if not isinstance(value, list):
            raise self._bad(key, "a list of objects")
        return tuple(Fields(v, self.where, f"{self.prefix}{key}[{i}].") for i, v in enumerate(value))


def _opt_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _opt_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    return float(value) if isinstance(value, (int, float)) else None


# ------------------------------------------------------------------------------ POST decisions
class Verdict(enum.Enum):
    """What the POST script made of a VM attempt."""

    DONE = "done"  # the guest finished its payload: a product result
    INFRA = "infra"  # infrastructure trouble, worth another attempt
    INFRA_FATAL = "infra-fatal"  # infrastructure trouble a retry cannot fix
    TIMEOUT = "timeout"  # the VM was killed at its wall-clock limit


@dataclass(frozen=True)
class PostDecision:
    attempt: int
    verdict: Verdict
    reason: str
    exit: int  # what the POST script returned to DAGMan
    max_retries: int = 0
    job_exit: int | None = None  # $RETURN
    time: str | None = None
    guest_status: str | None = None
    guest_exit_code: int | None = None

    def to_json(self) -> JsonObject:
        return {
            "attempt": self.attempt,
            "verdict": self.verdict.value,
            "reason": self.reason,
            "exit": self.exit,
            "max_retries": self.max_retries,
            "job_exit": self.job_exit,
            "time": self.time,
            "guest_status": self.guest_status,
            "guest_exit_code": self.guest_exit_code,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: Path | str) -> PostDecision:
        try:
            return cls(
                attempt=int(data["attempt"]),
                verdict=Verdict(data["verdict"]),
                reason=str(data["reason"]),
                exit=int(data["exit"]),
                max_retries=int(data.get("max_retries") or 0),
                job_exit=_opt_int(data.get("job_exit")),
                time=_opt_str(data.get("time")),
                guest_status=_opt_str(data.get("guest_status")),
                guest_exit_code=_opt_int(data.get("guest_exit_code")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"bad POST decision: {e!r}", where=where) from None


@dataclass(frozen=True)
class PostHistory:
    """post-vm.json: every decision of the cell's POST script, oldest first."""

    SCHEMA = "osgtest-dag/post-vm"
    VERSION = 1
    decisions: tuple[PostDecision, ...] = ()

    def appended(self, decision: PostDecision) -> PostHistory:
        return PostHistory((*self.decisions, decision))

    def to_json(self) -> JsonObject:
        return {
            "schema": self.SCHEMA,
            "version": self.VERSION,
            "decisions": [d.to_json() for d in self.decisions],
        }

    @classmethod
    def from_json(cls, data: Any, where: Path | str) -> PostHistory:
        doc = check_document(data, cls.SCHEMA, cls.VERSION, where)
        items = doc.get("decisions")
        if not isinstance(items, list) or not all(isinstance(d, dict) for d in items):
            raise UserError("`decisions` is not a list of objects", where=where)
        return cls(tuple(PostDecision.from_json(d, where) for d in items))

    @classmethod
    def read(cls, path: Path) -> PostHistory:
        """The history in `path`; an empty one when there is no file yet."""
        if not Path(path).is_file():
            return cls()
        return cls.from_json(read_json(path), path)


# ------------------------------------------------------------------------------ local VM starts
@dataclass(frozen=True)
class VmRecord:
    """One VM start by the local executor; local-vm.json holds one a line, appended."""

    SCHEMA = "osgtest-dag/local-vm"
    VERSION = 1
    node: str
    starts: int  # which start of the job this was (1, 2, ...)
    timed_out: bool  # killed at its wall-clock limit
    wall_s: float | None = None
    returncode: int | None = None
    accel: str | None = None
    console: str | None = None  # relative to the cell directory

    def to_json(self) -> JsonObject:
        return {
            "schema": self.SCHEMA,
            "version": self.VERSION,
            "node": self.node,
            "starts": self.starts,
            "timed_out": self.timed_out,
            "wall_s": self.wall_s,
            "returncode": self.returncode,
            "accel": self.accel,
            "console": self.console,
        }

    @classmethod
    def from_json(cls, data: Any, where: Path | str) -> VmRecord:
        doc = check_document(data, cls.SCHEMA, cls.VERSION, where)
        try:
            return cls(
                node=str(doc["node"]),
                starts=int(doc["starts"]),
                timed_out=bool(doc["timed_out"]),
                wall_s=_opt_float(doc.get("wall_s")),
                returncode=_opt_int(doc.get("returncode")),
                accel=_opt_str(doc.get("accel")),
                console=_opt_str(doc.get("console")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"bad local VM record: {e!r}", where=where) from None

    @classmethod
    def append(cls, path: Path, record: VmRecord) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record.to_json()) + "\n")

    @classmethod
    def read_all(cls, path: Path) -> tuple[VmRecord, ...]:
        """Every record of a local-vm.json; none when there is no file. A line cut short by a
        killed executor is skipped; a record of another schema or version is refused."""
        try:
            lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return ()
        except OSError as e:
            raise UserError(f"cannot read: {e}", where=path) from None
        out = []
        for n, line in enumerate(lines, 1):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            out.append(cls.from_json(data, f"{path}:{n}"))
        return tuple(out)


# ------------------------------------------------------------------------------ the guest's result
GUEST_STATUSES = ("pass", "test", "install", "update", "repos", "network", "payload", "running")


@dataclass(frozen=True)
class Phase:
    name: str
    status: str | None = None  # ok | failed | skipped
    exit_code: int | None = None
    start: str | None = None
    end: str | None = None
    log: str | None = None

    def to_json(self) -> JsonObject:
        return {
            "name": self.name,
            "start": self.start,
            "end": self.end,
            "exit_code": self.exit_code,
            "status": self.status,
            "log": self.log,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Phase:
        return cls(
            name=str(data.get("name")),
            status=_opt_str(data.get("status")),
            exit_code=_opt_int(data.get("exit_code")),
            start=_opt_str(data.get("start")),
            end=_opt_str(data.get("end")),
            log=_opt_str(data.get("log")),
        )


@dataclass(frozen=True)
class GuestResult:
    """output/result.json, as the payload writes it (docs/contracts.md §2). The guest wrote it:
    every field but the schema may be missing or odd, and reads as None then."""

    SCHEMA = "osgtest-dag/guest-result"
    VERSION = 1
    status: str | None
    exit_code: int | None = None
    serial: str | None = None
    started: str | None = None
    finished: str | None = None
    current_phase: str | None = None
    message: str | None = None
    phases: tuple[Phase, ...] = ()
    # A cluster VM's (docs/clusters.md): its name, role and the cluster's stages as it ran them.
    vm: str | None = None
    role: str | None = None
    stages: tuple[Phase, ...] = ()

    def phase(self, name: str) -> Phase | None:
        return next((p for p in self.phases if p.name == name), None)

    @property
    def reached_test(self) -> bool:
        """The payload started its test phase: it is in it or in a later one (the update phase
        runs the tests again), or the test phase finished. Stopped there, the guest ran its
        test out of time; before it, it never got to test anything."""
        test = self.phase("test")
        return self.current_phase in ("test", "update") or bool(test and test.start)

    def to_json(self) -> JsonObject:
        return {
            "schema": self.SCHEMA,
            "version": self.VERSION,
            "serial": self.serial,
            "started": self.started,
            "finished": self.finished,
            "current_phase": self.current_phase,
            "phases": [p.to_json() for p in self.phases],
            "status": self.status,
            "exit_code": self.exit_code,
            "message": self.message,
            **(
                {"vm": self.vm, "role": self.role, "stages": [s.to_json() for s in self.stages]}
                if self.vm is not None
                else {}
            ),
        }

    @classmethod
    def from_json(cls, data: Any, where: Path | str) -> GuestResult:
        doc = check_document(data, cls.SCHEMA, cls.VERSION, where)
        phases, stages = doc.get("phases"), doc.get("stages")
        return cls(
            status=_opt_str(doc.get("status")),
            exit_code=_opt_int(doc.get("exit_code")),
            serial=_opt_str(doc.get("serial")),
            started=_opt_str(doc.get("started")),
            finished=_opt_str(doc.get("finished")),
            current_phase=_opt_str(doc.get("current_phase")),
            message=_opt_str(doc.get("message")),
            phases=tuple(Phase.from_json(p) for p in phases if isinstance(p, dict))
            if isinstance(phases, list)
            else (),
            vm=_opt_str(doc.get("vm")),
            role=_opt_str(doc.get("role")),
            stages=tuple(Phase.from_json(s) for s in stages if isinstance(s, dict))
            if isinstance(stages, list)
            else (),
        )

    @classmethod
    def read(cls, path: Path) -> GuestResult:
        """The result in `path` (never through a symlink); UserError naming it when it is
        unreadable or not a guest result."""
        return cls.from_json(read_json(path, nofollow=True), path)
