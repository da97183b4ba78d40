"""The history of a runs root, computed: per cell its outcomes over the last runs, the flaky
cells, the regressions and fixes between the last two runs, and the cells that got slower.

`compute` is pure: it takes the runs as the run index (analyze/runindex.py) reads them back
from its table of results.json facts and returns one frozen `History`, which the `history`
command and the nightly's report and e-mail render (report/history.py).

A cell is the same cell in two runs when it tests the same thing: the same platform id, raw
source and package-set label (`CellKey`), whatever its serial. "Acceptable" is the one
definition of model/outcome.py (`Outcome.acceptable`: pass, waived); flips, regressions and
fixes are crossings of that line.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from osgtest_dag.model.documents import JsonObject
from osgtest_dag.model.outcome import ORDERED, Outcome

DEFAULT_LAST = 14
# A cell is flaky when its acceptable/not-acceptable state changed at least this often in the
# window (pass, fail, pass, fail is three flips).
FLAKY_FLIPS = 3
# The phases whose time we follow, and how much slower than the median is a slowdown.
TIMED_PHASES = ("install", "test")
SLOWER_RATIO = 1.5
# The median is taken over the cell's earlier runs in the window (the latest one is what is
# compared with it), and only from this many of them: one earlier run is no trend.
SLOWER_MIN_SAMPLES = 3
# Seconds a phase must have grown by as well: 4 s against a median of 2 s is noise, not a loss.
SLOWER_MIN_EXTRA_S = 10.0


@dataclass(frozen=True, order=True)
class CellKey:
    """What a cell tests, the same in every run: platform id, raw source, package-set label."""

    platform: str
    source: str
    label: str

    def to_json(self) -> JsonObject:
        return {"platform": self.platform, "source": self.source, "label": self.label}


@dataclass(frozen=True)
class CellRun:
    """One cell in one run: its outcome and the seconds its timed phases took (None: the phase
    did not run or has no times), with the names to show it by."""

    outcome: Outcome
    install_s: float | None = None
    test_s: float | None = None
    platform_name: str = ""
    source_display: str = ""

    def seconds(self, phase: str) -> float | None:
        return self.install_s if phase == "install" else self.test_s if phase == "test" else None


@dataclass(frozen=True)
class RunCells:
    """One analyzed run as the index holds it: the input of `compute`."""

    name: str
    generated: str | None
    cells: Mapping[CellKey, CellRun]


@dataclass(frozen=True)
class RunSummary:
    name: str
    generated: str | None
    counts: tuple[tuple[str, int], ...]  # every outcome, best first, as results.json's by_outcome

    def to_json(self) -> JsonObject:
        return {"name": self.name, "generated": self.generated, "counts": dict(self.counts)}


@dataclass(frozen=True)
class CellHistory:
    key: CellKey
    outcomes: tuple[Outcome | None, ...]  # one per run of the window; None: not in that run
    flips: int
    platform_name: str
    source_display: str

    def to_json(self) -> JsonObject:
        return {**self.key.to_json(), "outcomes": [o.value if o else None for o in self.outcomes]}


@dataclass(frozen=True)
class Flaky:
    cell: CellHistory

    def to_json(self) -> JsonObject:
        return {
            **self.cell.key.to_json(),
            "flips": self.cell.flips,
            "outcomes": [o.value if o else None for o in self.cell.outcomes],
        }


@dataclass(frozen=True)
class Change:
    """A crossing of the acceptable line between the last two runs."""

    key: CellKey
    before: Outcome
    after: Outcome

    def to_json(self) -> JsonObject:
        return {**self.key.to_json(), "from": self.before.value, "to": self.after.value}


@dataclass(frozen=True)
class Slowdown:
    key: CellKey
    phase: str
    seconds: float
    median: float

    @property
    def ratio(self) -> float:
        return self.seconds / self.median

    def to_json(self) -> JsonObject:
        return {
            **self.key.to_json(),
            "phase": self.phase,
            "seconds": self.seconds,
            "median": self.median,
            "ratio": round(self.ratio, 2),
        }


@dataclass(frozen=True)
class History:
    last: int  # the window asked for (--last)
    runs: tuple[RunSummary, ...]  # the window's runs, oldest first
    cells: tuple[CellHistory, ...]  # every cell of the window, by key
    flaky: tuple[Flaky, ...]
    regressions: tuple[Change, ...]
    fixes: tuple[Change, ...]
    slower: tuple[Slowdown, ...]

    def to_json(self) -> JsonObject:
        return {
            "last": self.last,
            "runs": [r.to_json() for r in self.runs],
            "cells": [c.to_json() for c in self.cells],
            "flaky": [f.to_json() for f in self.flaky],
            "regressions": [c.to_json() for c in self.regressions],
            "fixes": [c.to_json() for c in self.fixes],
            "slower": [s.to_json() for s in self.slower],
        }


def flips(outcomes: Sequence[Outcome | None]) -> int:
    """How often the acceptable state changed from one run the cell was in to the next."""
    states = [o.acceptable for o in outcomes if o is not None]
    return sum(a != b for a, b in zip(states, states[1:], strict=False))


def _counts(run: RunCells) -> tuple[tuple[str, int], ...]:
    found = dict.fromkeys(ORDERED, 0)
    for c in run.cells.values():
        found[c.outcome] += 1
    return tuple((o.value, n) for o, n in found.items())


def _changes(runs: Sequence[RunCells]) -> tuple[tuple[Change, ...], tuple[Change, ...]]:
    if len(runs) < 2:
        return (), ()
    before, after = runs[-2].cells, runs[-1].cells
    regressions, fixes = [], []
    for key in sorted(before.keys() & after.keys()):
        a, b = before[key].outcome, after[key].outcome
        if a.acceptable and not b.acceptable:
            regressions.append(Change(key, a, b))
        elif b.acceptable and not a.acceptable:
            fixes.append(Change(key, a, b))
    return tuple(regressions), tuple(fixes)


def _slower(runs: Sequence[RunCells]) -> tuple[Slowdown, ...]:
    if not runs:
        return ()
    latest, earlier = runs[-1], runs[:-1]
    found = []
    for key in sorted(latest.cells):
        for phase in TIMED_PHASES:
            seconds = latest.cells[key].seconds(phase)
            if seconds is None:
                continue
            samples = [
                s for r in earlier if key in r.cells for s in [r.cells[key].seconds(phase)] if s is not None
            ]
            if len(samples) < SLOWER_MIN_SAMPLES:
                continue
            median = float(statistics.median(samples))
            if median > 0 and seconds >= SLOWER_RATIO * median and seconds - median >= SLOWER_MIN_EXTRA_S:
                found.append(Slowdown(key, phase, seconds, median))
    return tuple(found)


def compute(runs: Sequence[RunCells], last: int = DEFAULT_LAST) -> History:
    """The history of `runs` (oldest first) over the last `last` of them."""
    if last < 1:
        raise ValueError(f"the window must hold at least one run (got {last})")
    window = list(runs)[-last:]
    keys = sorted({k for r in window for k in r.cells})
    cells = []
    for key in keys:
        outcomes = tuple(r.cells[key].outcome if key in r.cells else None for r in window)
        newest = next(r.cells[key] for r in reversed(window) if key in r.cells)
        cells.append(CellHistory(key, outcomes, flips(outcomes), newest.platform_name, newest.source_display))
    regressions, fixes = _changes(window)
    return History(
        last=last,
        runs=tuple(RunSummary(r.name, r.generated, _counts(r)) for r in window),
        cells=tuple(cells),
        flaky=tuple(Flaky(c) for c in cells if c.flips >= FLAKY_FLIPS),
        regressions=regressions,
        fixes=fixes,
        slower=_slower(window),
    )
