"""The cell latency benchmark's console reader: kernel timestamps of the payload's landmarks."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "bench_cell", Path(__file__).resolve().parent.parent / "benchmarks" / "bench_cell.py"
)
assert _spec and _spec.loader
bench_cell = importlib.util.module_from_spec(_spec)
sys.modules["bench_cell"] = bench_cell  # its dataclasses look their module up
_spec.loader.exec_module(bench_cell)

CONSOLE = b"""\
[    1.000000] Linux version 6.1.0
[  OK  ] Started some.service
[   33.500000] osgtest-boot[281]: osgtest-boot: starting at 2026-11-30T18:00:30Z
[   37.800000] osgtest-boot[305]: [osgtest 18:00:33] phase environment: start
[   37.900000] powernow_k8: Power state transitions not supported
[   39.250000] osgtest-boot[305]: [osgtest 18:00:34] phase environment: ok
[   99.900000] osgtest-boot[305]: [osgtest 18:01:35] phase test: start
[  100.500000] osgtest-boot[305]: [osgtest 18:01:36] phase test: FAILED (exit 1); last lines of test.log:
[  101.000000] osgtest-boot[305]: [osgtest 18:01:36] phase collect: start
[  104.600000] osgtest-boot[283]: osgtest-boot: powering off
[  109.000000] reboot: Power down
"""


def test_console_times_finds_each_landmark_and_phase():
    t = bench_cell.console_times(CONSOLE)
    assert (t.payload_start, t.payload_end, t.power_down) == (33.5, 104.6, 109.0)
    assert [(p.name, p.status) for p in t.phases] == [
        ("environment", "ok"),
        ("test", "failed"),
        ("collect", None),
    ]
    assert round(t.phases[0].seconds, 3) == 1.45
    assert t.phases[2].seconds is None  # started, never said how it ended


def test_console_times_of_an_unstamped_console_is_empty():
    t = bench_cell.console_times(b"osgtest-boot: starting\nphase environment: start\n")
    assert t == bench_cell.ConsoleTimes(None, (), None, None)
