"""Parse the output of osg-test (`osg-test -vad`, unittest verbose format) and classify a run.

The output has two parts. First what the test runner prints:

    test_01_add_user (osgtest.tests.special_user.TestUser) ... ok        <- one line per test
    ...
    ======================================================================
    FAIL: test_03_remove_packages (osgtest.tests.special_cleanup.TestCleanup)
    ----------------------------------------------------------------------
    Traceback ... AssertionError: ... STANDARD OUTPUT: ...                <- one section each
    ======================================================================
    BAD SKIPS: / OK SKIPS:                                                <- `test (id) reason`
    ----------------------------------------------------------------------
    Ran 293 tests in 1418.562s

    FAILED (failures=1, okSkips=220)          or   OK   or   OK(okSkips=30)

then, with -d, the detailed log, starting with a line of 80 dashes and `OSG-TEST LOG`. The
detailed log (and a failure's STANDARD OUTPUT) can hold whole other unittest runs (osg-configure's
own tests: `FAIL: testServiceList (test_condor.TestCondor)`, `Ran 220 tests`): we read results
only from the runner's part, take its last summary, and accept a section header only for a test
the per-test lines reported with that status.

Test ids come as `name (osgtest.tests.module.Class)`, Python 3.12's `name
(osgtest.tests.module.Class.name)`, or newer osg-test's `module.py: name`. When osg-test's
alarm fires (its global timeout), the log has `Caught alarm:` and a stack whose last frame in
osgtest/tests/ is the test that was running, and no summary.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path

from osgtest_dag.analyze.known_failures import ComponentTags, FailureContext, KnownFailures
from osgtest_dag.model.outcome import Outcome

SEP1 = "=" * 70
SEP2 = "-" * 70
DETAIL_SEP = "-" * 80
STATUSES = ("ok", "okskip", "FAIL", "ERROR", "BADSKIP", "TIMEOUT", "excluded")
PROBLEM_KINDS = ("FAIL", "ERROR", "TIMEOUT")
SKIP_BLOCKS = {"BAD SKIPS": "bad", "OK SKIPS": "ok", "EXCLUDED": "excluded"}
YUM_TIMEOUT_MARKER = "AssertionError: Retries terminated after timeout period"
DETAIL_CAP = 8192  # characters of a failure section kept (head and tail)
MESSAGE_CAP = 500

_TEST_LINE = re.compile(r"^(?P<desc>.+?) \.\.\. (?:.*? \.\.\. )?(?P<status>" + "|".join(STATUSES) + r")$")
_TEST_START = re.compile(r"^(?P<desc>\S.*?) \.\.\. ")
_PAREN_ID = re.compile(r"^(?P<name>\w+) \((?P<path>[\w.]+)\)$")
_FILE_ID = re.compile(r"^(?P<module>\w+)\.py: (?P<name>\w+)$")
_SECTION = re.compile(r"^(?P<kind>FAIL|ERROR|TIMEOUT): (?P<desc>.+)$")
_RAN = re.compile(r"^Ran (?P<n>\d+) tests? in (?P<secs>[\d.]+)s$")
_RESULT = re.compile(r"^(?P<ok>OK|FAILED)\s*(?:\((?P<counts>[^)]*)\))?\s*$")
_START_TIME = re.compile(r"^Start time: (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)$")
_MESSAGE_TIME = re.compile(r"^message: (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d): ")
_FRAME = re.compile(r'^\s*File "(?P<file>[^"]*)", line (?P<line>\d+), in (?P<func>\w+)')


@dataclass(frozen=True)
class TestId:
    """A test: function name, osg-test module (short: `test_55_condorce`) and class."""

    __test__ = False  # not a pytest class

    name: str
    module: str | None = None
    cls: str | None = None

    def __str__(self) -> str:
        return ".".join(p for p in (self.module, self.cls, self.name) if p)

    @classmethod
    def parse(cls, desc: str) -> TestId:
        desc = desc.strip()
        m = _PAREN_ID.match(desc)
        if m:
            parts = m["path"].split(".")
            if len(parts) >= 2 and parts[-1] == m["name"]:  # Python 3.12: ...Class.name
                parts = parts[:-1]
            klass = parts[-1] if len(parts) >= 2 else None
            mod_parts = parts[:-1] if klass else parts
            if mod_parts[:2] == ["osgtest", "tests"]:
                mod_parts = mod_parts[2:]
            module = mod_parts[-1] if mod_parts else None
            return cls(m["name"], module, klass)
        m = _FILE_ID.match(desc)
        if m:
            return cls(m["name"], m["module"], None)
        return cls(desc)  # a docstring description: no module to tell

    @property
    def is_osgtest(self) -> bool:
        return self.module is not None


@dataclass(frozen=True)
class TestResult:
    __test__ = False

    test: TestId
    status: str  # one of STATUSES
    line: int  # 1-based


@dataclass(frozen=True)
class Problem:
    """A FAIL/ERROR/TIMEOUT section."""

    kind: str
    test: TestId
    message: str  # the exception line(s), capped
    detail: str  # the section, head and tail kept
    line: int


@dataclass(frozen=True)
class Skip:
    test: TestId
    reason: str
    line: int


@dataclass(frozen=True)
class Summary:
    ran: int
    seconds: float
    ok: bool
    failures: int = 0
    errors: int = 0
    bad_skips: int = 0
    timeouts: int = 0
    ok_skips: int = 0
    line: int = 0


@dataclass(frozen=True)
class Alarm:
    """osg-test's global timeout fired."""

    time: str | None
    test: TestId | None
    line: int


@dataclass(frozen=True)
class OsgTestLog:
    path: str | None
    tests: tuple[TestResult, ...]
    problems: tuple[Problem, ...]
    bad_skips: tuple[Skip, ...]
    ok_skips: tuple[Skip, ...]
    summary: Summary | None
    start_time: str | None
    alarm: Alarm | None
    yum_timeout: bool
    unfinished: TestId | None  # a test line with no result (the run stopped in it)

    @property
    def date(self) -> dt.date | None:
        if not self.start_time:
            return None
        try:
            return dt.datetime.strptime(self.start_time, "%Y-%m-%d %H:%M:%S").date()
        except ValueError:
            return None

    def counts(self) -> dict:
        """Tests run, ok, failed, error, bad skips, ok skips (and timeouts), from the summary
        when there is one (it is what osg-test counted), else from the per-test lines."""
        s = self.summary
        if s is not None:
            bad = s.failures + s.errors + s.bad_skips + s.timeouts + s.ok_skips
            return {
                "run": s.ran,
                "ok": max(s.ran - bad, 0),
                "failed": s.failures,
                "error": s.errors,
                "bad_skips": s.bad_skips,
                "ok_skips": s.ok_skips,
                "timeouts": s.timeouts,
            }
        by = dict.fromkeys(STATUSES, 0)
        for t in self.tests:
            by[t.status] += 1
        return {
            "run": len(self.tests),
            "ok": by["ok"],
            "failed": by["FAIL"],
            "error": by["ERROR"],
            "bad_skips": by["BADSKIP"],
            "ok_skips": by["okskip"],
            "timeouts": by["TIMEOUT"],
        }


def _cap(text: str, limit: int = DETAIL_CAP) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - limit} characters left out ...]\n{text[-half:]}"


def _message(body: list[str]) -> str:
    """The exception of a failure section: the first unindented line after the traceback,
    with its continuation lines, up to osg-test's EXIT STATUS/STANDARD OUTPUT blocks."""
    i = 0
    while i < len(body) and (
        body[i].startswith("Traceback") or body[i].startswith(" ") or not body[i].strip()
    ):
        i += 1
    out = []
    for line in body[i:]:
        if line.startswith(("EXIT STATUS:", "STANDARD OUTPUT:", "STANDARD ERROR:")):
            break
        out.append(line)
        if sum(len(x) for x in out) > MESSAGE_CAP:
            break
    text = "\n".join(out).strip()
    if not text and body:
        text = next((b.strip() for b in reversed(body) if b.strip()), "")
    return text[:MESSAGE_CAP]


def parse(text: str, path: str | None = None) -> OsgTestLog:
    """Parse osg-test output (the whole file: runner part and detailed log)."""
    lines = text.splitlines()
    # The runner's part ends where the detailed log starts.
    top_end = len(lines)
    for i in range(1, len(lines)):
        if lines[i] == "OSG-TEST LOG" and lines[i - 1] == DETAIL_SEP:
            top_end = i - 1
            break
    top = lines[:top_end]

    # Per-test lines: up to the first real section or the summary separator.
    tests: list[TestResult] = []
    pending: tuple[str, int] | None = None
    unfinished: TestId | None = None
    i = 0
    while i < len(top):
        line = top[i]
        if (
            line == SEP1
            and i + 2 < len(top)
            and top[i + 2] == SEP2
            and (_SECTION.match(top[i + 1]) or top[i + 1].rstrip(":") in SKIP_BLOCKS)
        ):
            break
        if line == SEP2 and i + 1 < len(top) and _RAN.match(top[i + 1]):
            break
        m = _TEST_LINE.match(line)
        if m:
            tests.append(TestResult(TestId.parse(m["desc"]), m["status"], i + 1))
            pending = None
        elif pending and line.strip() in STATUSES:
            # the test printed output between its name and its result
            tests.append(TestResult(TestId.parse(pending[0]), line.strip(), pending[1]))
            pending = None
        else:
            s = _TEST_START.match(line)
            if s and (_PAREN_ID.match(s["desc"]) or _FILE_ID.match(s["desc"])):
                pending = (s["desc"], i + 1)
        i += 1
    if pending:
        unfinished = TestId.parse(pending[0])
    sections_start = i

    # The summary: the last `Ran N tests` of the runner's part that a result line follows.
    summary = None
    summary_at = len(top)
    for j in range(len(top) - 1, sections_start - 1, -1):
        m = _RAN.match(top[j])
        if not m:
            continue
        k = j + 1
        while k < len(top) and not top[k].strip():
            k += 1
        r = _RESULT.match(top[k]) if k < len(top) else None
        if r is None:
            continue
        counts = {}
        for part in filter(None, (p.strip() for p in (r["counts"] or "").split(","))):
            key, _, val = part.partition("=")
            if val.strip().isdigit():
                counts[key.strip()] = int(val)
        summary = Summary(
            ran=int(m["n"]),
            seconds=float(m["secs"]),
            ok=r["ok"] == "OK",
            failures=counts.get("failures", 0),
            errors=counts.get("errors", 0),
            bad_skips=counts.get("badSkips", 0),
            timeouts=counts.get("timeouts", 0),
            ok_skips=counts.get("okSkips", 0),
            line=j + 1,
        )
        summary_at = j - 1 if j > 0 and top[j - 1] == SEP2 else j
        break

    # Sections between the test lines and the summary.
    reported = {(str(t.test), t.status) for t in tests}

    def real_header(at: int) -> tuple[str, str] | None:
        """(kind, desc) when a section starts at `at` (a nested run's header is no section)."""
        if at + 2 >= summary_at + 1 or top[at] != SEP1 or top[at + 2] != SEP2:
            return None
        head = top[at + 1]
        if head.rstrip(":") in SKIP_BLOCKS and head.endswith(":"):
            return head.rstrip(":"), ""
        m = _SECTION.match(head)
        if not m:
            return None
        tid = TestId.parse(m["desc"])
        if tests and (str(tid), m["kind"]) not in reported:
            return None
        if not tests and not tid.is_osgtest:
            return None
        return m["kind"], m["desc"]

    problems: list[Problem] = []
    bad_skips: list[Skip] = []
    ok_skips: list[Skip] = []
    j = sections_start
    while j < summary_at:
        h = real_header(j)
        if h is None:
            j += 1
            continue
        kind, desc = h
        start = j + 3
        if kind in SKIP_BLOCKS:
            target = {"bad": bad_skips, "ok": ok_skips, "excluded": None}[SKIP_BLOCKS[kind]]
            k = start
            while k < summary_at and top[k].strip():
                entry = top[k]
                m = re.match(r"^(?P<id>\w+ \([\w.]+\)|\w+\.py: \w+) ?(?P<reason>.*)$", entry)
                if m and target is not None:
                    target.append(Skip(TestId.parse(m["id"]), m["reason"].strip(), k + 1))
                elif target is not None and target:  # a reason spanning lines
                    last = target[-1]
                    target[-1] = Skip(last.test, f"{last.reason}\n{entry}".strip(), last.line)
                k += 1
            j = k
            continue
        k = start
        while k < summary_at and real_header(k) is None:
            k += 1
        body = top[start:k]
        while body and not body[-1].strip():
            body.pop()
        problems.append(Problem(kind, TestId.parse(desc), _message(body), _cap("\n".join(body)), j + 2))
        j = k

    # From the whole file: start time, alarm, yum time-out.
    start_time = None
    for line in lines[top_end : top_end + 10]:
        m = _START_TIME.match(line)
        if m:
            start_time = m[1]
            break
    alarm = None
    for a in range(len(lines) - 1, -1, -1):
        if lines[a].rstrip() == "Caught alarm:":
            when = None
            for b in range(a, max(a - 3, -1), -1):
                m = _MESSAGE_TIME.match(lines[b])
                if m:
                    when = m[1]
                    break
            running = None
            for c in range(a + 1, len(lines)):
                fm = _FRAME.match(lines[c])
                if fm:
                    if "osgtest/tests/" in fm["file"]:
                        running = TestId(fm["func"], Path(fm["file"]).stem, None)
                elif not lines[c].startswith(" "):
                    break
            alarm = Alarm(when, running or unfinished, a + 1)
            break
    return OsgTestLog(
        path=path,
        tests=tuple(tests),
        problems=tuple(problems),
        bad_skips=tuple(bad_skips),
        ok_skips=tuple(ok_skips),
        summary=summary,
        start_time=start_time,
        alarm=alarm,
        yum_timeout=YUM_TIMEOUT_MARKER in text,
        unfinished=unfinished,
    )


def parse_file(path: Path | str) -> OsgTestLog:
    """Read and parse a log; undecodable bytes are replaced (logs are not always UTF-8)."""
    data = Path(path).read_bytes()
    return parse(data.decode("utf-8", errors="replace"), str(path))


def looks_like_osgtest(text: str) -> bool:
    """Whether a phase log holds osg-test output (the payload's test.log holds whatever the
    test command printed)."""
    return bool(
        re.search(r"^\w+ \(osgtest\.tests\.[\w.]+\) \.\.\. ", text, re.M) or "\nOSG-TEST LOG\n" in text
    )


# ------------------------------------------------------------------------------ classify
@dataclass(frozen=True)
class Failure:
    """One problem of a log, classified, with its waiver if one applies."""

    test: TestId
    kind: str  # FAIL / ERROR / TIMEOUT / BADSKIP
    category: Outcome  # what this failure alone would make of the cell
    message: str
    detail: str
    line: int
    tags: tuple[str, ...] = ()
    waived_by: dict | None = None

    def to_json(self) -> dict:
        return {
            "test": self.test.name,
            "module": self.test.module,
            "class": self.test.cls,
            "kind": self.kind,
            "category": self.category.value,
            "message": self.message,
            "detail": self.detail,
            "line": self.line,
            "tags": list(self.tags),
            "waived_by": self.waived_by,
        }


@dataclass(frozen=True)
class Classification:
    outcome: Outcome
    reason: str
    failures: tuple[Failure, ...] = ()
    ok_skips_by_tag: dict = field(default_factory=dict)


def category_of(test: TestId, kind: str) -> Outcome:
    """What a failing test means for the run (the reference tool's rules, by module):
    special_install's package installation -> install, its updates -> update,
    special_cleanup -> cleanup, anything else -> fail."""
    if test.module == "special_install":
        return Outcome.UPDATE if "update" in test.name else Outcome.INSTALL
    if test.module == "special_cleanup":
        return Outcome.CLEANUP
    return Outcome.FAIL


def classify(
    parsed: OsgTestLog,
    *,
    known: KnownFailures | None = None,
    tags: ComponentTags | None = None,
    context: FailureContext | None = None,
) -> Classification:
    """The run's outcome from its log: the worst of its failures' categories (a waived
    failure counts as `waived`), a timeout when osg-test's alarm fired, bad skips with no
    failure behind them as `fail`."""
    tags = tags or ComponentTags()
    ctx = context or FailureContext(test="", module=None)
    date = parsed.date or ctx.date
    failures = []
    for p in parsed.problems:
        category = category_of(p.test, p.kind)
        waived = None
        if known and category is Outcome.FAIL:
            entry = known.match(
                FailureContext(
                    test=p.test.name,
                    module=p.test.module,
                    kind=p.kind,
                    platform=ctx.platform,
                    os=ctx.os,
                    source=ctx.source,
                    label=ctx.label,
                    message=p.detail,
                    date=date,
                )
            )
            if entry is not None:
                category = Outcome.WAIVED
                waived = entry.to_json()
        failures.append(
            Failure(
                p.test, p.kind, category, p.message, p.detail, p.line, tags.for_module(p.test.module), waived
            )
        )
    # A reported FAIL/ERROR with no section (a truncated log) still counts.
    sectioned = {(str(p.test), p.kind) for p in parsed.problems}
    for t in parsed.tests:
        if t.status in PROBLEM_KINDS and (str(t.test), t.status) not in sectioned:
            failures.append(
                Failure(
                    t.test,
                    t.status,
                    category_of(t.test, t.status),
                    "(no failure section in the log)",
                    "",
                    t.line,
                    tags.for_module(t.test.module),
                )
            )
    bad = [
        Failure(s.test, "BADSKIP", Outcome.FAIL, s.reason, "", s.line, tags.for_module(s.test.module))
        for s in parsed.bad_skips
    ]
    okskip_tags: dict[str, int] = {}
    for t in parsed.tests:
        if t.status == "okskip":
            for tag in tags.for_module(t.test.module):
                okskip_tags[tag] = okskip_tags.get(tag, 0) + 1
    counts = parsed.counts()

    notes = []
    if parsed.yum_timeout:
        notes.append("yum timed out (retries terminated after timeout period)")
    if parsed.alarm is not None:
        what = f" in {parsed.alarm.test}" if parsed.alarm.test else ""
        reason = f"osg-test's time-out alarm fired{what}"
        return Classification(
            Outcome.TIMEOUT, "; ".join([reason] + notes), tuple(failures + bad), okskip_tags
        )
    if failures:
        outcome = Outcome.worst(f.category for f in failures)
        assert outcome is not None  # worst of a non-empty list
        worst = [f for f in failures if f.category is outcome]
        names = ", ".join(str(f.test) for f in worst[:3]) + (
            f" and {len(worst) - 3} more" if len(worst) > 3 else ""
        )
        n = len(failures)
        if outcome is Outcome.WAIVED:
            reason = (
                f"{n} failure{'s' if n != 1 else ''}, all known ({names})"
                if n == len(worst)
                else f"{len(worst)} known failure(s) ({names}); the rest in osg-test's clean-up"
            )
        elif outcome is Outcome.CLEANUP:
            reason = f"only osg-test's clean-up failed ({names})"
        elif outcome is Outcome.INSTALL:
            reason = f"installing packages failed ({names})"
        elif outcome is Outcome.UPDATE:
            reason = f"updating packages failed ({names})"
        else:
            reason = f"{len(worst)} test{'s' if len(worst) != 1 else ''} failed: {names}"
        return Classification(outcome, "; ".join([reason] + notes), tuple(failures + bad), okskip_tags)
    if bad:
        names = ", ".join(str(f.test) for f in bad[:3])
        return Classification(
            Outcome.FAIL, "; ".join([f"{len(bad)} bad skip(s): {names}"] + notes), tuple(bad), okskip_tags
        )
    if parsed.summary is None:
        where = f"; it stopped in {parsed.unfinished}" if parsed.unfinished else ""
        return Classification(
            Outcome.FAIL,
            "; ".join([f"osg-test did not finish (no summary line){where}"] + notes),
            (),
            okskip_tags,
        )
    if counts["ok"] == 0:
        return Classification(Outcome.FAIL, "; ".join(["no test passed"] + notes), (), okskip_tags)
    return Classification(
        Outcome.PASS,
        "; ".join([f"{counts['ok']} tests passed, {counts['ok_skips']} skipped"] + notes),
        (),
        okskip_tags,
    )
