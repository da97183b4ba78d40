"""A cell's outcome: one enum, one severity order, used for every aggregate and every sort.

Severity, least to most severe (worst-of aggregation picks the last one present):

    pass < cleanup < waived < fail < update < install < timeout < infra < missing

- pass     every test passed.
- cleanup  every test of the product passed; only osg-test's own clean-up (special_cleanup:
           removing packages, restoring files) failed. Mostly test-framework trouble, so the
           least severe failure (the reference tool reports runs with only ignored and cleanup
           failures as ignored, which this order gives by itself: worst(waived, cleanup) = waived).
- waived   tests failed, and every one of those failures is a known failure in force
           (known_failures.py); someone already owns it.
- fail     tests failed (or badly skipped) with no known failure covering them.
- update   the packages installed but updating them to the update repositories failed (or the
           tests after the update did): an upgrade path for users is broken.
- install  the package set did not install: nothing of it could be tested at all.
- timeout  the run did not finish in its time (osg-test's alarm, the test command's timeout,
           or the VM killed at its wall-clock limit): no verdict on the product.
- infra    the infrastructure failed (network, repositories, VM, payload, unreadable disk):
           no verdict on the product, and worth another run.
- missing  no result came back at all (the cell never ran, or the run is unfinished): we know
           nothing, which is the worst place to be for a report that must not look green.

Product outcomes (pass .. install) say something about the packages; the last three say the
test did not produce a verdict. `rerun --failed` takes the product failures (fail .. timeout:
a test that never ends is most often a hang of the product); `rerun` by default every outcome
worse than waived.

`derive` is the only place an outcome is decided: from an `Evidence` (evidence.gather builds
it from a cell's directory), for status, watch, rerun, the FINAL node's summary and results.json.
A cluster cell (docs/clusters.md) is one cell: its outcome is the worst over its VMs, each VM's
derived from its own directory's evidence with the cell's job facts.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import overload

from osgtest_dag.model.documents import GuestResult, Phase, PostDecision, Verdict, VmRecord


class Outcome(enum.Enum):
    PASS = "pass"
    CLEANUP = "cleanup"
    WAIVED = "waived"
    FAIL = "fail"
    UPDATE = "update"
    INSTALL = "install"
    TIMEOUT = "timeout"
    INFRA = "infra"
    MISSING = "missing"

    # Enum members are ordered by definition, which is the severity order above.
    @property
    def severity(self) -> int:
        return _ORDER[self]

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Outcome):
            return NotImplemented
        return self.severity < other.severity

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Outcome):
            return NotImplemented
        return self.severity <= other.severity

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Outcome):
            return NotImplemented
        return self.severity > other.severity

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Outcome):
            return NotImplemented
        return self.severity >= other.severity

    @property
    def acceptable(self) -> bool:
        """Counts as passing for regressions and fixes: pass, or failures all waived."""
        return self in (Outcome.PASS, Outcome.WAIVED)

    @property
    def product_failure(self) -> bool:
        """A failure to put before the packages' owners: fail, update, install, and timeout (a
        test that never ends is most often the product's hang). What `rerun --failed` reruns."""
        return Outcome.FAIL <= self <= Outcome.TIMEOUT

    @property
    def needs_rerun(self) -> bool:
        """Worse than the failures someone already owns (waived) or that are only osg-test's
        clean-up: what `rerun` reruns by default."""
        return self > Outcome.WAIVED

    @property
    def description(self) -> str:
        return DESCRIPTIONS[self]

    @classmethod
    def parse(cls, value: str) -> Outcome:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(
                f"unknown outcome {value!r} (one of {', '.join(o.value for o in cls)})"
            ) from None

    @overload
    @classmethod
    def worst(cls, outcomes: Iterable[Outcome], default: Outcome) -> Outcome: ...

    @overload
    @classmethod
    def worst(cls, outcomes: Iterable[Outcome], default: None = None) -> Outcome | None: ...

    @classmethod
    def worst(cls, outcomes: Iterable[Outcome], default: Outcome | None = None) -> Outcome | None:
        """The most severe of `outcomes`; `default` when there are none."""
        found = default
        for o in outcomes:
            if found is None or o > found:
                found = o
        return found


_ORDER = {o: i for i, o in enumerate(Outcome)}

DESCRIPTIONS = {
    Outcome.PASS: "all tests passed",
    Outcome.CLEANUP: "tests passed; only osg-test's clean-up failed",
    Outcome.WAIVED: "failures, all of them known failures in force",
    Outcome.FAIL: "tests failed",
    Outcome.UPDATE: "updating the packages (or testing after the update) failed",
    Outcome.INSTALL: "installing the package set failed",
    Outcome.TIMEOUT: "did not finish in time",
    Outcome.INFRA: "infrastructure failure (no verdict on the packages)",
    Outcome.MISSING: "no result came back",
}

ORDERED = tuple(Outcome)
VALUES = tuple(o.value for o in Outcome)


# ------------------------------------------------------------------------------ derivation
@dataclass(frozen=True)
class JobFacts:
    """What the VM job's HTCondor events say of a cell (read by the caller from the job log)."""

    starts: int = 0
    hosts: tuple[str, ...] = ()
    timed_out: bool = False  # held at its wall-clock limit (WALL_CLOCK_HOLD)
    reason: str | None = None  # why the job last stopped: the hold or removal


# periodic_hold's HoldReasonCode (3) with the periodic_hold_subcode test-run.sub sets (1): the
# VM ran longer than max_wall.
WALL_CLOCK_HOLD = (3, 1)


def is_wall_clock_hold(code: object, subcode: object) -> bool:
    return (code, subcode) == WALL_CLOCK_HOLD


@dataclass(frozen=True)
class Evidence:
    """What we know of one cell, strongest source first: the guest's own result.json, then
    the osg-test log, then the job and node events (post-vm.json, local-vm.json, the job log)."""

    guest: GuestResult | None = None
    guest_error: str | None = None  # result.json exists but cannot be read
    log_outcome: Outcome | None = None  # from the osg-test log (osgtest_log.classify)
    log_reason: str | None = None
    post_vm: tuple[PostDecision, ...] = ()
    vm_records: tuple[VmRecord, ...] = ()
    job: JobFacts | None = None
    extraction_error: str | None = None  # the result disk could not be read (extract.py)
    record_error: str | None = None  # post-vm.json or local-vm.json cannot be read
    # A cluster cell's VMs (docs/clusters.md), in the cluster's order: each VM's name and what
    # its own directory says (guest, guest_error, extraction_error, the log verdict). The job
    # facts above are the cell's: one job runs all its VMs.
    members: tuple[tuple[str, Evidence], ...] = ()

    @property
    def has_own_result(self) -> bool:
        """The directory holds something of its own: a result, an osg-test log, an extraction
        report that failed."""
        return bool(self.guest or self.guest_error or self.log_outcome or self.extraction_error)

    @property
    def vm_timed_out(self) -> bool:
        """The VM was killed, or held, at its wall-clock limit."""
        return (
            any(r.timed_out for r in self.vm_records)
            or any(d.verdict is Verdict.TIMEOUT for d in self.post_vm)
            or bool(self.job and self.job.timed_out)
        )

    @property
    def job_reason(self) -> str | None:
        if self.job and self.job.reason:
            return self.job.reason
        if self.vm_records and self.vm_records[-1].timed_out:
            return f"the VM was killed at its time limit (start {self.vm_records[-1].starts})"
        return None

    @property
    def attempts(self) -> int:
        return max(len(self.post_vm), len(self.vm_records), self.job.starts if self.job else 0)


# A test phase killed by `timeout` exits 124 (TERM) or 137 (KILL after -k).
TIMEOUT_EXIT_CODES = (124, 137)

_GUEST_INFRA = {
    "repos": "setting up the repositories failed",
    "network": "the guest had no usable network",
    "payload": "the payload broke (bad cell configuration)",
}


def _exit_code(guest: GuestResult, phase: str) -> int | None:
    p = guest.phase(phase)
    return p.exit_code if p else None


def _failed_stage(guest: GuestResult) -> Phase | None:
    """The cluster stage the VM itself failed (docs/clusters.md), if any."""
    return next((s for s in guest.stages if s.status == "failed"), None)


def _stage_failure(stage: Phase) -> tuple[Outcome, str]:
    if stage.exit_code in TIMEOUT_EXIT_CODES:
        return Outcome.TIMEOUT, "timed out"
    return Outcome.FAIL, "failed"


def derive(e: Evidence) -> tuple[Outcome, str]:
    """The cell's outcome and a one-line reason, from the strongest evidence there is. A
    cluster cell's is the worst of its VMs' (derive_members)."""
    if e.members:
        return _derive_cluster(e)
    g = e.guest
    if e.guest_error and g is None:
        return Outcome.INFRA, f"result.json unreadable: {e.guest_error}"
    if g is not None:
        status = g.status
        if status == "pass":
            if e.log_outcome is not None and e.log_outcome is not Outcome.PASS:
                return e.log_outcome, e.log_reason or "the osg-test log disagrees with the guest"
            return Outcome.PASS, e.log_reason or "all phases passed"
        if status == "test":
            code = _exit_code(g, "test")
            stage = _failed_stage(g)  # a cluster VM's test phase is its stages
            if stage is not None and stage.exit_code in TIMEOUT_EXIT_CODES:
                return Outcome.TIMEOUT, f"stage {stage.name} timed out (exit {stage.exit_code})"
            if code in TIMEOUT_EXIT_CODES:
                return Outcome.TIMEOUT, f"the test command timed out (exit {code})"
            if e.log_outcome is not None and e.log_outcome is not Outcome.PASS:
                return e.log_outcome, e.log_reason or "tests failed"
            if stage is not None:
                return Outcome.FAIL, f"stage {stage.name} failed (exit {stage.exit_code})"
            if e.log_outcome is Outcome.PASS:
                return Outcome.FAIL, (
                    f"the test command failed (exit {code}) although the osg-test log shows no failure"
                )
            return Outcome.FAIL, f"the test command failed (exit {code})"
        if status == "install":
            return Outcome.INSTALL, f"installing the package set failed (exit {_exit_code(g, 'install')})"
        if status == "update":
            code = _exit_code(g, "update")
            if code in TIMEOUT_EXIT_CODES:
                return Outcome.TIMEOUT, f"the tests after the update timed out (exit {code})"
            return Outcome.UPDATE, f"the update phase failed (exit {code})"
        if status in _GUEST_INFRA:
            return Outcome.INFRA, _GUEST_INFRA[status] + (f" ({g.message})" if g.message else "")
        if status == "running":
            where = g.current_phase or "an unknown phase"
            if e.vm_timed_out:
                return Outcome.TIMEOUT, f"the VM was stopped at its time limit during {where}"
            if e.log_outcome is Outcome.TIMEOUT:
                return Outcome.TIMEOUT, e.log_reason or "osg-test timed out"
            return Outcome.INFRA, f"the guest stopped during {where} (crash or power-off)"
        return Outcome.INFRA, f"the guest reported an unknown status {status!r}"
    if e.log_outcome is not None:  # an output with an osg-test log but no result.json
        return e.log_outcome, e.log_reason or e.log_outcome.description
    if e.extraction_error:
        return Outcome.INFRA, f"result disk unreadable: {e.extraction_error}"
    if e.record_error:
        return Outcome.INFRA, e.record_error
    if e.job and e.job.timed_out:  # held at its limit: HTCondor brings no disk back from it
        return Outcome.TIMEOUT, e.job.reason or "the VM was stopped at its time limit"
    if e.post_vm:  # the POST script read what the last attempt brought back
        last = e.post_vm[-1]
        n = len(e.post_vm)
        if last.verdict is Verdict.TIMEOUT:
            return Outcome.TIMEOUT, last.reason or e.job_reason or "the VM was stopped at its time limit"
        why = last.reason or e.job_reason or "no result"
        if last.verdict is Verdict.INFRA_FATAL:
            return Outcome.INFRA, f"{why} (not retried)"
        return Outcome.INFRA, f"{why} (after {n} attempt{'s' if n != 1 else ''})"
    if e.vm_timed_out:
        return Outcome.TIMEOUT, e.job_reason or "the VM was stopped at its time limit"
    if e.job_reason:
        return Outcome.INFRA, e.job_reason
    return Outcome.MISSING, "no result came back (the cell has not run, or its run was lost)"


def member_evidence(e: Evidence) -> tuple[tuple[str, Evidence], ...]:
    """A cluster cell's VMs, each with its own evidence and the cell's job facts."""
    return tuple(
        (
            name,
            replace(
                m,
                post_vm=e.post_vm,
                vm_records=e.vm_records,
                job=e.job,
                record_error=e.record_error,
                members=(),
            ),
        )
        for name, m in e.members
    )


def derive_members(e: Evidence) -> tuple[tuple[str, Outcome, str], ...]:
    """(VM, outcome, reason) of each VM of a cluster cell, derived as a one-VM cell's with the
    cell's job facts; a VM that left nothing of its own gets what a cell without a result
    gets (missing, infra, timeout)."""
    out = []
    for name, m in member_evidence(e):
        outcome, reason = derive(m)
        if not m.has_own_result and outcome is Outcome.INFRA:
            reason = f"no result came back from the VM ({reason})"
        out.append((name, outcome, reason))
    return tuple(out)


def _derive_cluster(e: Evidence) -> tuple[Outcome, str]:
    """The worst outcome over the VMs; the reason names the first VM that has it (and the
    stage it failed), and the others that share it."""
    vms = derive_members(e)
    worst = Outcome.worst((o for _, o, _ in vms), Outcome.PASS)
    if worst is Outcome.PASS:
        return worst, f"all {len(vms)} VMs passed"
    (name, reason), *others = [(n, r) for n, o, r in vms if o is worst]
    own = dict(e.members)[name]
    stage = _failed_stage(own.guest) if own.guest is not None and own.log_outcome is None else None
    if stage is not None and _stage_failure(stage)[0] is worst:
        line = f"{stage.name} {_stage_failure(stage)[1]} on {name} (exit {stage.exit_code})"
    else:
        line = f"{name}: {reason}"
    if others:
        line += f"; {worst.value} on {', '.join(n for n, _ in others)} too"
    return worst, line


# ------------------------------------------------------------------------------ exit codes
class RunExit(enum.IntEnum):
    """What `run` and `watch` exit with, from the outcomes of the run's cells."""

    ACCEPTABLE = 0  # every cell pass, waived or cleanup
    PRODUCT_FAILURE = 1  # product failures (fail, update, install), and every other cell acceptable
    USAGE = 2  # bad input, missing base image, run directory in use: nothing ran (UserError)
    NO_VERDICT = 3  # a cell timed out, hit an infrastructure failure or has no result


# cleanup exits 0: the product's tests all passed and only osg-test's own clean-up failed, which
# says nothing against the packages (the report still shows it). timeout exits 3 although
# `rerun --failed` counts it a product failure: the run did not reach a verdict on that cell.
_NO_VERDICT = (Outcome.TIMEOUT, Outcome.INFRA, Outcome.MISSING)


def run_exit(outcomes: Iterable[Outcome], *, workflow_ok: bool = True) -> RunExit:
    """The exit code of a run whose cells have `outcomes`. `workflow_ok` false (the DAG failed
    after its cells: analysis, report) is NO_VERDICT whatever the cells did, and so is a run
    with no cell at all."""
    found = set(outcomes)
    if not workflow_ok or not found or found & set(_NO_VERDICT):
        return RunExit.NO_VERDICT
    if any(o.product_failure for o in found):
        return RunExit.PRODUCT_FAILURE
    return RunExit.ACCEPTABLE
