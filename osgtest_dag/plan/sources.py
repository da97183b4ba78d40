"""The `sources` grammar of parameter files.

    [ACCOUNT:BRANCH ;] SERIES ; REPO[, REPO...] [> [UPDATE_SERIES /] UPDATE_REPO[, ...]]

e.g. ``opensciencegrid:master; 23; osg-upcoming > 24/osg``. The reference tool split these with
regular expressions and never noticed a malformed string; we parse into a typed value and point
at the column of the first problem.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ACCOUNT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_BRANCH = re.compile(r"[A-Za-z0-9_./-]+\Z")
_SERIES = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*\Z")
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*\Z")


class SourceSyntaxError(ValueError):
    """A malformed sources string; `column` is 1-based within the string."""

    def __init__(self, message: str, column: int, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.column = column
        self.hint = hint


@dataclass(frozen=True)
class TestSource:
    """Where the test suite comes from: a GitHub account and branch of osg-test."""

    __test__ = False  # not a pytest test class

    account: str
    branch: str

    def __str__(self) -> str:
        return f"{self.account}:{self.branch}"


@dataclass(frozen=True)
class Source:
    raw: str
    test_source: TestSource | None
    series: str
    repos: tuple[str, ...]
    update_series: str | None = None
    update_repos: tuple[str, ...] = ()

    @property
    def has_update(self) -> bool:
        return bool(self.update_repos)

    @property
    def effective_update_series(self) -> str:
        return self.update_series or self.series

    def display(self) -> str:
        """Readable form for reports: ``24: osg + osg-testing -> 24: osg-testing``."""
        s = f"{self.series}: {' + '.join(self.repos)}"
        if self.has_update:
            s += f" -> {self.effective_update_series}: {' + '.join(self.update_repos)}"
        if self.test_source:
            s += f" ({self.test_source})"
        return s

    def to_json(self) -> dict:
        return {
            "raw": self.raw,
            "test_source": str(self.test_source) if self.test_source else None,
            "series": self.series,
            "repos": list(self.repos),
            "update_series": self.update_series,
            "update_repos": list(self.update_repos),
        }


def _fields(text: str, sep: str, start: int) -> list[tuple[str, int]]:
    """Split on `sep`, returning each stripped piece with its 1-based column in the whole string."""
    out = []
    pos = 0
    for piece in text.split(sep):
        lead = len(piece) - len(piece.lstrip())
        out.append((piece.strip(), start + pos + lead))
        pos += len(piece) + len(sep)
    return out


def _repo_list(text: str, col: int, what: str) -> tuple[str, ...]:
    repos = []
    for name, c in _fields(text, ",", col):
        if not name:
            raise SourceSyntaxError(f"empty repository name in the {what} list", c, "remove the extra comma")
        if not _REPO.match(name):
            raise SourceSyntaxError(
                f"invalid repository name {name!r} in the {what} list",
                c,
                "repository names are letters, digits, '.', '_', '+', '-'; separate them with commas",
            )
        if name in repos:
            raise SourceSyntaxError(f"repository {name!r} listed twice in the {what} list", c)
        repos.append(name)
    return tuple(repos)


def parse_source(raw: str) -> Source:
    """Parse one sources string; raise SourceSyntaxError with the column of the problem."""
    if not isinstance(raw, str):
        raise SourceSyntaxError(f"expected a string, got {type(raw).__name__} {raw!r}", 1, "quote the value")
    if not raw.strip():
        raise SourceSyntaxError("empty sources string", 1)
    if raw.count(">") > 1:
        second = raw.index(">", raw.index(">") + 1) + 1
        raise SourceSyntaxError("more than one '>' (only one update step is allowed)", second)
    gt = raw.find(">")
    head = raw if gt < 0 else raw[:gt]
    parts = _fields(head, ";", 1)
    test_source = None
    if len(parts) == 3:
        (ts, ts_col), (series, s_col), (repos, r_col) = parts
        account, colon, branch = ts.partition(":")
        if not colon:
            raise SourceSyntaxError(
                f"test source {ts!r} must be ACCOUNT:BRANCH", ts_col, "e.g. 'opensciencegrid:master; 24; osg'"
            )
        if not _ACCOUNT.match(account):
            raise SourceSyntaxError(f"invalid account {account!r} in the test source", ts_col)
        if not _BRANCH.match(branch):
            raise SourceSyntaxError(
                f"invalid branch {branch!r} in the test source", ts_col + len(account) + 1
            )
        test_source = TestSource(account, branch)
    elif len(parts) == 2:
        (series, s_col), (repos, r_col) = parts
    elif len(parts) == 1:
        raise SourceSyntaxError(
            "missing ';' between the series and the repositories",
            1,
            "write SERIES; REPO[, REPO...], e.g. '24; osg, osg-testing'",
        )
    else:
        raise SourceSyntaxError(
            "too many ';'-separated fields (at most 3)",
            parts[3][1],
            "format: [ACCOUNT:BRANCH;] SERIES; REPO[, ...] [> [SERIES/]REPO[, ...]]",
        )
    if not series:
        raise SourceSyntaxError("missing series before ';'", s_col, "e.g. '24; osg'")
    if not _SERIES.match(series):
        raise SourceSyntaxError(
            f"invalid series {series!r}", s_col, "a series is a release name such as 24, 3.6 or stable"
        )
    if not repos:
        raise SourceSyntaxError("no repositories after the series", r_col, "e.g. '24; osg'")
    initial = _repo_list(repos, r_col, "repository")
    update_series = None
    update: tuple[str, ...] = ()
    if gt >= 0:
        tail = raw[gt + 1 :]
        tail_col = gt + 2
        if not tail.strip():
            raise SourceSyntaxError(
                "nothing after '>'", gt + 1, "name the update repositories, e.g. '24; osg > osg-testing'"
            )
        if tail.count("/") > 1:
            raise SourceSyntaxError("more than one '/' in the update part", tail_col + tail.rindex("/"))
        if "/" in tail:
            (useries, us_col), (urepos, ur_col) = _fields(tail, "/", tail_col)
            if not useries:
                raise SourceSyntaxError("missing update series before '/'", us_col)
            if not _SERIES.match(useries):
                raise SourceSyntaxError(f"invalid update series {useries!r}", us_col)
            if not urepos:
                raise SourceSyntaxError("no update repositories after '/'", ur_col)
            update_series = useries
        else:
            urepos, ur_col = tail.strip(), tail_col + len(tail) - len(tail.lstrip())
        update = _repo_list(urepos, ur_col, "update repository")
    return Source(
        raw=raw,
        test_source=test_source,
        series=series,
        repos=initial,
        update_series=update_series,
        update_repos=update,
    )
