"""HTCondor job event logs, read once: htcondor2.JobEventLog's events folded into one frozen
record per job (cluster.proc), with each execution of the job as an `Attempt`.

Every reader of a job log uses this: `status`/`watch` (the node jobs' states and holds, the
DAGMan job's exit), the analysis (a cell's execute host, attempts, holds, a VM held at its
wall-clock limit) and the host-health report (how each execution on a host ended).

Times are the events' Unix timestamps (htcondor2's `JobEvent.timestamp`: whole seconds, the
log's local time).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import htcondor2

log = logging.getLogger(__name__)

# The VM job's periodic_hold at its wall-clock limit (submit_templates/test-run.sub.j2):
# HoldReasonCode 3 is HTCondor's "JobPolicy" (a periodic_hold expression became true), and
# the subcode is the template's periodic_hold_subcode.
WALL_CLOCK_HOLD_CODE = 3
WALL_CLOCK_HOLD_SUBCODE = 1

_EV = htcondor2.JobEventType


class JobState(enum.Enum):
    """Where a job is after its last event."""

    IDLE = "idle"
    RUNNING = "running"
    HELD = "held"
    DONE = "done"  # terminated normally with exit code 0
    FAILED = "failed"  # terminated with another exit code, or by a signal
    REMOVED = "removed"  # aborted (condor_rm, periodic_remove, DAGMan's removal)

    @property
    def final(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.REMOVED)


class AttemptEnd(enum.Enum):
    """How one execution (from its EXECUTE event) ended."""

    RUNNING = "running"  # no end in the log (yet)
    LOST = "lost"  # the job started again with no end logged for this one
    EXITED = "exited"  # terminated normally (any exit code)
    SIGNALED = "signaled"  # terminated by a signal
    SHADOW_EXCEPTION = "shadow_exception"
    HELD = "held"
    EVICTED = "evicted"
    RECONNECT_FAILED = "reconnect_failed"
    REMOTE_ERROR = "remote_error"  # an error the starter reported (then an eviction)
    REMOVED = "removed"  # aborted while running


@dataclass(frozen=True)
class Hold:
    time: int
    reason: str
    code: int | None
    subcode: int | None
    host: str | None  # where the job was running when held (None: held while idle)

    @property
    def at_wall_clock_limit(self) -> bool:
        return self.code == WALL_CLOCK_HOLD_CODE and self.subcode == WALL_CLOCK_HOLD_SUBCODE


@dataclass(frozen=True)
class Attempt:
    """One execution of a job on an execute host."""

    host: str | None  # None: a termination with no EXECUTE event before it
    start: int | None
    end: int | None
    ending: AttemptEnd
    reason: str = ""  # the message of the event that ended it
    exit_code: int | None = None
    exit_signal: int | None = None
    hold: Hold | None = None


@dataclass(frozen=True)
class JobRecord:
    """One job (cluster.proc) as its events tell it."""

    cluster: int
    proc: int
    node: str | None  # the DAG node that submitted it (DAGMan's note)
    state: JobState
    submitted: int | None
    ended: int | None  # terminated or removed
    exit_code: int | None  # on a normal termination
    exit_signal: int | None  # on a termination by a signal
    attempts: tuple[Attempt, ...]
    holds: tuple[Hold, ...]
    released: int
    evicted: int
    aborted: bool
    removed_reason: str
    shadow_exceptions: tuple[str, ...]
    events: int

    @property
    def id(self) -> str:
        return f"{self.cluster}.{self.proc}"

    @property
    def executed(self) -> tuple[int, ...]:
        """The times of its EXECUTE events."""
        return tuple(a.start for a in self.attempts if a.start is not None)

    @property
    def host(self) -> str | None:
        """The execute host of its last execution."""
        return next((a.host for a in reversed(self.attempts) if a.host), None)

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(a.host for a in self.attempts if a.host)

    @property
    def last_hold(self) -> Hold | None:
        return self.holds[-1] if self.holds else None

    @property
    def held_at_wall_clock_limit(self) -> bool:
        return any(h.at_wall_clock_limit for h in self.holds)


def _execute_host(slot_name: object, execute_host: object) -> str | None:
    """The execute host an EXECUTE event names: SlotName's machine, else the sinful string's
    alias, else its address."""
    slot = str(slot_name or "")
    if "@" in slot:
        return slot.split("@", 1)[1]
    sinful = str(execute_host or "")
    m = re.search(r"alias=([^&>]+)", sinful)
    if m:
        return m.group(1)
    m = re.match(r"<([^:>?]+)", sinful)
    return m.group(1) if m else (sinful or None)


def _int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _text(value: object) -> str:
    return str(value or "").strip()


def _node_name(event: Any) -> str | None:
    """The DAG node of a SUBMIT event: the reader parses DAGMan's "DAG Node: NAME" note into
    StructuredNotes.DAGNodeName."""
    notes = event.get("StructuredNotes")
    name = notes.get("DAGNodeName") if notes is not None else None
    return str(name) if name else None


@dataclass
class _Fold:
    """A job's record while its events are read."""

    cluster: int
    proc: int
    node: str | None = None
    state: JobState = JobState.IDLE
    submitted: int | None = None
    ended: int | None = None
    exit_code: int | None = None
    exit_signal: int | None = None
    attempts: list[Attempt] = field(default_factory=list)
    open: Attempt | None = None
    holds: list[Hold] = field(default_factory=list)
    released: int = 0
    evicted: int = 0
    aborted: bool = False
    removed_reason: str = ""
    shadow_exceptions: list[str] = field(default_factory=list)
    events: int = 0
    just_evicted: bool = False  # the job's previous event ended an execution by eviction

    def close(
        self,
        t: int,
        ending: AttemptEnd,
        reason: str = "",
        *,
        exit_code: int | None = None,
        exit_signal: int | None = None,
        hold: Hold | None = None,
    ) -> None:
        if self.open is not None:
            self.attempts.append(
                Attempt(
                    host=self.open.host,
                    start=self.open.start,
                    end=t,
                    ending=ending,
                    reason=reason,
                    exit_code=exit_code,
                    exit_signal=exit_signal,
                    hold=hold,
                )
            )
            self.open = None

    def add(self, ev: Any) -> None:
        self.events += 1
        t = int(ev.timestamp)
        kind = ev.type
        after_eviction, self.just_evicted = self.just_evicted, False
        if kind == _EV.SUBMIT:
            self.submitted = t
            self.node = _node_name(ev) or self.node
        elif kind == _EV.EXECUTE:
            if self.open is not None:
                self.attempts.append(
                    Attempt(host=self.open.host, start=self.open.start, end=None, ending=AttemptEnd.LOST)
                )
            self.open = Attempt(
                host=_execute_host(ev.get("SlotName"), ev.get("ExecuteHost")),
                start=t,
                end=None,
                ending=AttemptEnd.RUNNING,
            )
            self.state = JobState.RUNNING
        elif kind == _EV.JOB_TERMINATED:
            self.ended = t
            normal = ev.get("TerminatedNormally")
            if normal is None or normal:
                self.exit_code = _int(ev.get("ReturnValue"))
                ending, reason = AttemptEnd.EXITED, ""
                self.state = JobState.DONE if self.exit_code == 0 else JobState.FAILED
            else:
                self.exit_signal = _int(ev.get("TerminatedBySignal"))
                ending, reason = AttemptEnd.SIGNALED, f"signal {self.exit_signal}"
                self.state = JobState.FAILED
            if self.open is None:  # no EXECUTE event before it in this log
                self.open = Attempt(host=None, start=None, end=None, ending=AttemptEnd.RUNNING)
            self.close(t, ending, reason, exit_code=self.exit_code, exit_signal=self.exit_signal)
        elif kind == _EV.JOB_ABORTED:
            self.ended = t
            self.aborted = True
            self.removed_reason = _text(ev.get("Reason"))
            self.state = JobState.REMOVED
            self.close(t, AttemptEnd.REMOVED, self.removed_reason)
        elif kind == _EV.JOB_HELD:
            if after_eviction:
                # Holding a running job: the shadow logs the job's eviction, then the schedd the
                # hold. The hold, not an eviction, ended that execution.
                self.open = self.attempts.pop()
            hold = Hold(
                time=t,
                reason=_text(ev.get("HoldReason")),
                code=_int(ev.get("HoldReasonCode")),
                subcode=_int(ev.get("HoldReasonSubCode")),
                host=self.open.host if self.open is not None else None,
            )
            self.holds.append(hold)
            self.state = JobState.HELD
            self.close(t, AttemptEnd.HELD, hold.reason, hold=hold)
        elif kind == _EV.JOB_RELEASED:
            self.released += 1
            self.state = JobState.IDLE
        elif kind == _EV.SHADOW_EXCEPTION:
            message = _text(ev.get("Message"))
            self.shadow_exceptions.append(message)
            self.close(t, AttemptEnd.SHADOW_EXCEPTION, message)
            if self.state == JobState.RUNNING:
                self.state = JobState.IDLE
        elif kind in (_EV.JOB_EVICTED, _EV.JOB_RECONNECT_FAILED, _EV.REMOTE_ERROR):
            if kind == _EV.JOB_EVICTED:
                self.evicted += 1
                self.just_evicted = self.open is not None
            ending = {
                _EV.JOB_EVICTED: AttemptEnd.EVICTED,
                _EV.JOB_RECONNECT_FAILED: AttemptEnd.RECONNECT_FAILED,
                _EV.REMOTE_ERROR: AttemptEnd.REMOTE_ERROR,
            }[kind]
            self.close(t, ending, _text(ev.get("ErrorMsg") or ev.get("Reason")))
            if kind != _EV.REMOTE_ERROR and self.state == JobState.RUNNING:
                self.state = JobState.IDLE

    def freeze(self) -> JobRecord:
        attempts = (*self.attempts, self.open) if self.open is not None else tuple(self.attempts)
        return JobRecord(
            cluster=self.cluster,
            proc=self.proc,
            node=self.node,
            state=self.state,
            submitted=self.submitted,
            ended=self.ended,
            exit_code=self.exit_code,
            exit_signal=self.exit_signal,
            attempts=attempts,
            holds=tuple(self.holds),
            released=self.released,
            evicted=self.evicted,
            aborted=self.aborted,
            removed_reason=self.removed_reason,
            shadow_exceptions=tuple(self.shadow_exceptions),
            events=self.events,
        )


def fold_events(events: Iterable[Any]) -> tuple[JobRecord, ...]:
    """htcondor2 JobEvents -> one record per job, by cluster and proc."""
    jobs: dict[tuple[int, int], _Fold] = {}
    for ev in events:
        key = (int(ev.cluster), int(ev.proc))
        job = jobs.get(key)
        if job is None:
            job = jobs[key] = _Fold(cluster=key[0], proc=key[1])
        job.add(ev)
    return tuple(jobs[k].freeze() for k in sorted(jobs))


def read_job_log(path: Path) -> tuple[JobRecord, ...]:
    """Every job of a job event log, without waiting for more events; () when there is no
    log (yet). A damaged log gives the jobs of the events before the damage."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return ()
    events: list[Any] = []
    try:
        jel = htcondor2.JobEventLog(str(path))
    except Exception as e:  # HTCondor's own exceptions: an unreadable log must not stop the caller
        log.warning("%s: cannot read the job log: %s", path, e)
        return ()
    try:
        for ev in jel.events(stop_after=0):
            events.append(ev)
    except Exception as e:
        log.warning("%s: cannot read all events (%d read): %s", path, len(events), e)
    finally:
        with contextlib.suppress(Exception):
            jel.close()
    return fold_events(events)


def jobs_by_node(jobs: Iterable[JobRecord]) -> dict[str, tuple[JobRecord, ...]]:
    """DAG node name -> its jobs, oldest first (a node's retries are new jobs)."""
    out: dict[str, list[JobRecord]] = {}
    for j in sorted(jobs, key=lambda j: (j.cluster, j.proc)):
        if j.node:
            out.setdefault(j.node, []).append(j)
    return {node: tuple(js) for node, js in out.items()}
