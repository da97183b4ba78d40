"""The osg-test logs of one output directory (a cell's, or a cluster VM's), read and classified
with the known failures in force: what results.json records of them and the verdict they give
the outcome derivation."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from osgtest_dag.analyze import osgtest_log
from osgtest_dag.analyze.guest_output import LOG_READ_CAP, parse_time, read_text
from osgtest_dag.analyze.known_failures import ComponentTags, FailureContext, KnownFailures
from osgtest_dag.model.documents import GuestResult
from osgtest_dag.model.outcome import Outcome

log = logging.getLogger(__name__)

ZERO_COUNTS = {"run": 0, "ok": 0, "failed": 0, "error": 0, "bad_skips": 0, "ok_skips": 0, "timeouts": 0}

# The main log of an output without an osg-test log: the first of these that is there.
FALLBACK_MAIN = ("test.log", "update.log", "install.log", "console-hook.log")


@dataclass(frozen=True)
class AnalysisOptions:
    known: KnownFailures = field(default_factory=KnownFailures)
    tags: ComponentTags = field(default_factory=ComponentTags)
    run_date: dt.date | None = None


@dataclass
class LogFindings:
    """What the logs of one output directory say; the defaults are a cell's without a log."""

    outcome: Outcome | None = None  # the test phase's run decides; the update run adds
    reason: str | None = None
    failures: list[dict] = field(default_factory=list)
    bad_skips: list[dict] = field(default_factory=list)
    counts: dict | None = None
    tests: list[list] = field(default_factory=list)
    ok_skips_by_tag: dict[str, int] = field(default_factory=dict)
    main: str | None = None  # relative to the run directory
    yum_timeout: bool = False
    timeout: dict | None = None  # osg-test's alarm: {test, at}


def failure_context(cell: dict, guest: GuestResult | None, run_date: dt.date | None) -> FailureContext:
    """Where a cell's (or a cluster VM's) logs ran, for the known failures: the date of the
    guest's start when it has one, else the run's."""
    if guest is not None:
        started = parse_time(guest.started)
        run_date = started.date() if started else run_date
    plat = cell["platform"]
    return FailureContext(
        test="",
        module=None,
        platform=plat["id"] or "",
        os=plat["os"] or "",
        source=cell["source"]["raw"],
        label=cell["label"],
        date=run_date,
    )


def apply_logs(cell: dict, found: LogFindings) -> None:
    """The logs' findings into the cell's entry."""
    cell["failures"], cell["bad_skips"] = found.failures, found.bad_skips
    cell["counts"], cell["tests"] = found.counts, found.tests
    cell["ok_skips_by_tag"] = found.ok_skips_by_tag
    cell["logs"]["main"] = found.main
    cell["yum_timeout"], cell["timeout"] = found.yum_timeout, found.timeout


def osgtest_logs(out_dir: Path) -> list[tuple[str, Path]]:
    """(phase, path) of the osg-test logs of an output, test phase first."""
    found = []
    for name in sorted(p.name for p in out_dir.glob("osg-test*.log")):
        found.append(("test", out_dir / name))
    for phase in ("test", "update"):
        p = out_dir / f"{phase}.log"
        if p.is_file() and not p.is_symlink():
            try:
                head = read_text(p, LOG_READ_CAP)
            except OSError:
                continue
            if osgtest_log.looks_like_osgtest(head):
                found.append((phase, p))
    return found


def read_logs(
    out_dir: Path,
    rel_dir: PurePosixPath,
    ctx: FailureContext,
    known: KnownFailures,
    tags: ComponentTags,
    passing: dict | None = None,
) -> LogFindings:
    """The osg-test logs of `out_dir` (`rel_dir` relative to the run directory), classified
    in `ctx`; `passing` collects the passing runs of known-failure tests (known_failures.review)."""
    found = LogFindings()
    for phase, path in osgtest_logs(out_dir):
        try:
            parsed = osgtest_log.parse(read_text(path, LOG_READ_CAP), str(path))
        except OSError as e:
            log.warning("%s: cannot read %s: %s", rel_dir, path, e)
            continue
        cls = osgtest_log.classify(parsed, known=known, tags=tags, context=ctx)
        rel = str(rel_dir / path.name)
        for f in cls.failures:
            entry = f.to_json()
            entry.update(phase=phase, log=rel)
            (found.bad_skips if f.kind == "BADSKIP" else found.failures).append(entry)
        if found.outcome is None:  # the test phase's run decides; the update run adds
            found.outcome, found.reason = cls.outcome, cls.reason
            found.counts = parsed.counts()
            found.tests = _tests(parsed)
            found.ok_skips_by_tag = cls.ok_skips_by_tag
            found.main = rel
            found.yum_timeout = parsed.yum_timeout
            if parsed.alarm is not None:
                found.timeout = {
                    "test": str(parsed.alarm.test) if parsed.alarm.test else None,
                    "at": parsed.alarm.time,
                }
        elif cls.outcome > Outcome.PASS and phase == "update":
            found.reason = f"{found.reason}; after the update: {cls.reason}"
        if passing is not None:
            _collect_passing(parsed, ctx, passing)
    if found.main is None:
        for name in FALLBACK_MAIN:
            if (out_dir / name).is_file():
                found.main = str(rel_dir / name)
                break
    return found


def _tests(parsed: Any) -> list[list]:
    """Every test of the run, compact: [module, class, name, status] (+ the reason of a skip)."""
    reasons = {str(s.test): s.reason for s in (*parsed.ok_skips, *parsed.bad_skips)}
    out = []
    for t in parsed.tests:
        row = [t.test.module, t.test.cls, t.test.name, t.status]
        if t.status in ("okskip", "BADSKIP") and str(t.test) in reasons:
            row.append(reasons[str(t.test)])
        out.append(row)
    return out


def _collect_passing(parsed: Any, ctx: FailureContext, passing: dict) -> None:
    pattern = passing.get("__pattern__")
    if pattern is None:
        return
    for t in parsed.tests:
        if t.status == "ok" and pattern.match(t.test.name):
            passing.setdefault((t.test.name, t.test.module), []).append(
                FailureContext(
                    test=t.test.name,
                    module=t.test.module,
                    platform=ctx.platform,
                    os=ctx.os,
                    source=ctx.source,
                    label=ctx.label,
                    date=parsed.date or ctx.date,
                )
            )
