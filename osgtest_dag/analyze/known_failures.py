"""Known failures (waivers) and component tags.

Known failures come in the reference tool's `test-exceptions.yaml` format, one list per entry:

    - [test_04_trace, test_55_condorce, 2014-12-01, 2015-01-14]   # function, module, start, end

and an extended form, a mapping, which the same file may mix in:

    - test: test_0[45]_*trace        # glob on the test function (required)
      module: test_55_condorce       # glob on the osg-test module (default: any)
      platform: 'rocky_9*'           # glob on the platform id or OS (default: any)
      source: '*upcoming*'           # glob on the raw source string (default: any)
      label: 'HTCondor*'             # glob on the package set label (default: any)
      message: 'collector'           # regular expression searched in the failure text
      ticket: https://opensciencegrid.atlassian.net/browse/SOFTWARE-1234
      start: 2014-12-01              # in force from (default: always)
      expires: 2015-01-14            # in force until, inclusive (default: never; `end` works too)
      reason: free text

A failure is waived by an entry in force on the log's date (the reference tool used "today",
which makes last month's report change when someone edits the file). Like the reference
tool, entries waive FAIL results only; `kinds: [FAIL, ERROR]` extends that.

Component tags (`component-tags.yaml`: `module: [tag, ...]`) group ok-skips and failures by
component in the reports.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import functools
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from osgtest_dag.base import yamlsrc
from osgtest_dag.base.errors import Location, UserError

log = logging.getLogger(__name__)

EXTENDED_KEYS = {
    "test",
    "module",
    "platform",
    "source",
    "label",
    "message",
    "ticket",
    "start",
    "expires",
    "end",
    "reason",
    "kinds",
}
KINDS = ("FAIL", "ERROR", "TIMEOUT")


@dataclass(frozen=True)
class FailureContext:
    """One failure to match: the test, where it ran, its text and the date of the run."""

    test: str
    module: str | None
    kind: str = "FAIL"
    platform: str = ""
    os: str = ""
    source: str = ""
    label: str = ""
    message: str = ""
    date: dt.date | None = None


@dataclass(frozen=True)
class KnownFailure:
    test: str
    module: str = "*"
    platform: str = "*"
    source: str = "*"
    label: str = "*"
    message: str | None = None
    ticket: str | None = None
    start: dt.date | None = None
    expires: dt.date | None = None
    reason: str | None = None
    kinds: tuple[str, ...] = ("FAIL",)
    where: str = ""  # file:line of the entry, for messages

    @property
    def key(self) -> str:
        return f"{self.test} ({self.module})"

    def in_force(self, date: dt.date) -> bool:
        return (self.start is None or self.start <= date) and (self.expires is None or date <= self.expires)

    def applies(self, ctx: FailureContext) -> bool:
        """Everything but the date and the kind: the test and the place it ran."""
        if not fnmatch.fnmatchcase(ctx.test, self.test):
            return False
        if self.module != "*" and not fnmatch.fnmatchcase(ctx.module or "", self.module):
            return False
        if self.platform != "*" and not (
            fnmatch.fnmatchcase(ctx.platform, self.platform) or fnmatch.fnmatchcase(ctx.os, self.platform)
        ):
            return False
        if not fnmatch.fnmatchcase(ctx.source, self.source):
            return False
        if not fnmatch.fnmatchcase(ctx.label, self.label):
            return False
        return True

    def matches(self, ctx: FailureContext) -> bool:
        if ctx.kind not in self.kinds or not self.applies(ctx):
            return False
        if ctx.date is not None and not self.in_force(ctx.date):
            return False
        if self.message and not re.search(self.message, ctx.message or ""):
            return False
        return True

    def to_json(self) -> dict:
        return {
            "test": self.test,
            "module": self.module,
            "ticket": self.ticket,
            "reason": self.reason,
            "expires": self.expires.isoformat() if self.expires else None,
            "where": self.where,
        }


@dataclass(frozen=True)
class KnownFailures:
    entries: tuple[KnownFailure, ...] = ()
    files: tuple[str, ...] = ()

    def match(self, ctx: FailureContext) -> KnownFailure | None:
        for e in self.entries:
            if e.matches(ctx):
                return e
        return None

    def expired(self, today: dt.date) -> list[KnownFailure]:
        return [e for e in self.entries if e.expires is not None and e.expires < today]

    def __bool__(self) -> bool:
        return bool(self.entries)


def _date(value, where: Location, what: str) -> dt.date | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise UserError(f"{what} must be a date (YYYY-MM-DD), not {value!r}", where=where)


def _glob(value, where: Location, what: str) -> str:
    if value is None:
        return "*"
    if not isinstance(value, (str, int)) or str(value).strip() == "":
        raise UserError(f"{what} must be a non-empty name or glob, not {value!r}", where=where)
    return str(value).strip()


def load_known_failures(paths: Iterable[Path | str]) -> KnownFailures:
    """Read known-failure files (reference or extended format); UserError with file:line."""
    entries: list[KnownFailure] = []
    files = []
    for p in paths:
        path = Path(p)
        doc = yamlsrc.load(path)
        files.append(str(path))
        data = doc.data
        if data is None:  # only comments, as the reference file ships
            continue
        if not isinstance(data, list):
            raise UserError(
                "a known-failures file is a list of entries",
                where=doc.where(),
                hint="- [test_function, test_module, start_date, end_date]",
            )
        for i, item in enumerate(data):
            where = doc.where(i)
            if isinstance(item, list):
                entries.append(_reference_entry(item, where, doc, i))
            elif isinstance(item, dict):
                entries.append(_extended_entry(item, where, doc, i))
            else:
                raise UserError(
                    f"entry {i + 1} is neither a list nor a mapping",
                    where=where,
                    hint="- [test_function, test_module, start_date, end_date]",
                )
    return KnownFailures(tuple(entries), tuple(files))


def _reference_entry(item: list, where: Location, doc, i: int) -> KnownFailure:
    if len(item) != 4:
        raise UserError(
            f"a reference entry has 4 items, this one has {len(item)}",
            where=where,
            hint="- [test_function, test_module, start_date, end_date]",
        )
    test, module, start, end = item
    start_d = _date(start, doc.where(i, 2), "the start")
    end_d = _date(end, doc.where(i, 3), "the end")
    if start_d and end_d and end_d < start_d:
        raise UserError(f"the end {end_d} is before the start {start_d}", where=doc.where(i, 3))
    return KnownFailure(
        test=_glob(test, doc.where(i, 0), "the test function"),
        module=_glob(module, doc.where(i, 1), "the test module"),
        start=start_d,
        expires=end_d,
        where=str(where),
    )


def _extended_entry(item: dict, where: Location, doc, i: int) -> KnownFailure:
    unknown = sorted(set(item) - EXTENDED_KEYS)
    if unknown:
        raise UserError(
            f"unknown key {unknown[0]!r} in a known-failure entry",
            where=doc.key_where(i, unknown[0]),
            hint=f"known keys: {', '.join(sorted(EXTENDED_KEYS))}",
        )
    if "test" not in item:
        raise UserError("a known-failure entry needs `test`", where=where)
    if "end" in item and "expires" in item:
        raise UserError("give `expires` or `end`, not both", where=doc.key_where(i, "end"))
    message = item.get("message")
    if message is not None:
        try:
            re.compile(str(message))
        except re.error as e:
            raise UserError(
                f"`message` is not a valid regular expression: {e}", where=doc.where(i, "message")
            ) from None
    kinds = item.get("kinds", ["FAIL"])
    if isinstance(kinds, str):
        kinds = [kinds]
    if not isinstance(kinds, list) or not kinds or any(k not in KINDS for k in kinds):
        raise UserError(f"`kinds` is a list of {', '.join(KINDS)}", where=doc.where(i, "kinds"))
    exp_key = "expires" if "expires" in item else "end"
    start_d = _date(item.get("start"), doc.where(i, "start"), "`start`")
    exp_d = _date(item.get(exp_key), doc.where(i, exp_key), f"`{exp_key}`")
    if start_d and exp_d and exp_d < start_d:
        raise UserError(f"`{exp_key}` {exp_d} is before `start` {start_d}", where=doc.where(i, exp_key))
    ticket = item.get("ticket")
    if ticket is not None and not re.match(r"[a-z][a-z0-9+.-]*://\S+\Z", str(ticket)):
        raise UserError(f"`ticket` must be a URL, not {ticket!r}", where=doc.where(i, "ticket"))
    return KnownFailure(
        test=_glob(item["test"], doc.where(i, "test"), "`test`"),
        module=_glob(item.get("module"), doc.where(i, "module"), "`module`"),
        platform=_glob(item.get("platform"), doc.where(i, "platform"), "`platform`"),
        source=_glob(item.get("source"), doc.where(i, "source"), "`source`"),
        label=_glob(item.get("label"), doc.where(i, "label"), "`label`"),
        message=str(message) if message is not None else None,
        ticket=str(ticket) if ticket is not None else None,
        start=start_d,
        expires=exp_d,
        reason=str(item["reason"]) if item.get("reason") is not None else None,
        kinds=tuple(kinds),
        where=str(where),
    )


@dataclass(frozen=True)
class ComponentTags:
    tags: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    file: str | None = None

    def for_module(self, module: str | None) -> tuple[str, ...]:
        """The tags of an osg-test module. osg-test renumbered its modules by ten
        (test_45_xrootd became test_450_xrootd) and component-tags.yaml has the new names
        while older logs have the old ones: try the exact name, then the renumbered one, then
        every module of the same name (test_48_myproxy -> test_220/403/770_myproxy's tags)."""
        if not module:
            return ()
        if module in self.tags:
            return self.tags[module]
        m = _NUMBERED_MODULE.match(module)
        if not m:
            return ()
        number, name = m.groups()
        if len(number) == 2 and f"test_{number}0_{name}" in self.tags:
            return self.tags[f"test_{number}0_{name}"]
        return self._by_name.get(name, ())

    @functools.cached_property
    def _by_name(self) -> dict[str, tuple[str, ...]]:
        index: dict[str, tuple[str, ...]] = {}
        for module, tags in self.tags.items():
            m = _NUMBERED_MODULE.match(module)
            if m:
                known = index.get(m.group(2), ())
                index[m.group(2)] = known + tuple(t for t in tags if t not in known)
        return index


_NUMBERED_MODULE = re.compile(r"test_(\d+)_(\w+)\Z")


def load_component_tags(path: Path | str | None) -> ComponentTags:
    """`module: [tag, ...]` per line (the reference's component-tags.yaml)."""
    if path is None:
        return ComponentTags()
    doc = yamlsrc.load(Path(path))
    if doc.data is None:
        return ComponentTags(file=str(path))
    if not isinstance(doc.data, dict):
        raise UserError("component tags are a mapping `module: [tag, ...]`", where=doc.where())
    tags = {}
    for module, value in doc.data.items():
        if value is None:
            value = []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
            raise UserError(f"the tags of {module!r} must be a list of names", where=doc.where(module))
        tags[str(module)] = tuple(value)
    return ComponentTags(tags, str(path))


def review(
    known: KnownFailures, today: dt.date, passing: Mapping[tuple[str, str], list[FailureContext]]
) -> list[str]:
    """Warnings about the known-failures file: entries that expired, and entries whose test
    now passes somewhere they apply (`passing`: (test, module) -> contexts where it passed)."""
    warnings = []
    for e in known.expired(today):
        warnings.append(f"{e.where}: known failure {e.key} expired on {e.expires}; remove it or extend it")
    for e in known.entries:
        if e.expires is not None and e.expires < today:
            continue
        where_ok = []
        for ctxs in passing.values():
            for ctx in ctxs:
                if e.applies(ctx) and (ctx.date is None or e.in_force(ctx.date)):
                    where_ok.append(ctx.platform or "?")
        if where_ok:
            where_ok = sorted(set(where_ok))
            shown = ", ".join(where_ok[:5]) + (f" and {len(where_ok) - 5} more" if len(where_ok) > 5 else "")
            warnings.append(f"{e.where}: known failure {e.key} now passes on {shown}; is it fixed?")
    for w in warnings:
        log.warning("%s", w)
    return warnings
