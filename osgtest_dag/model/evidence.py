"""The one evidence builder: what a cell's directory holds about its outcome, read through the
typed documents, as an `outcome.Evidence` for `outcome.derive`.

What the files cannot say is passed in by the caller: the VM job's HTCondor events (JobFacts,
from the run's job log) and the verdict of the osg-test log (analyze classifies it, with the
known failures in force).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from osgtest_dag.base.errors import UserError
from osgtest_dag.model.documents import (
    GuestResult,
    JsonObject,
    PostHistory,
    VmRecord,
    check_document,
    read_json,
)
from osgtest_dag.model.outcome import Evidence, JobFacts, Outcome
from osgtest_dag.model.rundir import CellDir

EXTRACTION_SCHEMA = "osgtest-dag/extraction"
EXTRACTION_VERSION = 1


@dataclass(frozen=True)
class LogVerdict:
    """What the cell's osg-test log says (analyze.osgtest_log.classify)."""

    outcome: Outcome
    reason: str


def read_extraction(cell: CellDir) -> JsonObject | None:
    """The extraction report of the cell's output/ (analyze.extract), None when there is none;
    UserError naming the file when it is not one."""
    if not cell.extraction.is_file():
        return None
    return check_document(read_json(cell.extraction), EXTRACTION_SCHEMA, EXTRACTION_VERSION, cell.extraction)


def own_evidence(cell: CellDir, log: LogVerdict | None = None) -> Evidence:
    """What a directory's output says of itself: its guest result and its extraction report
    (a cluster VM's directory holds nothing else); no job facts."""
    guest = guest_error = None
    if cell.guest_result.exists() or cell.guest_result.is_symlink():
        try:
            guest = GuestResult.read(cell.guest_result)
        except UserError as e:
            guest_error = e.message[:200]
    extraction_error = None
    try:
        rep = read_extraction(cell)
    except UserError as e:
        extraction_error = e.message[:200]
    else:
        if rep is not None and not rep.get("ok", True):
            extraction_error = str(rep.get("error") or "extraction failed")
    return Evidence(
        guest=guest,
        guest_error=guest_error,
        log_outcome=log.outcome if log else None,
        log_reason=log.reason if log else None,
        extraction_error=extraction_error,
    )


def gather(
    cell: CellDir,
    *,
    job: JobFacts | None = None,
    log: LogVerdict | None = None,
    vms: Sequence[str] = (),
) -> Evidence:
    """Everything the cell's directory says, and what the caller knows besides. `vms`: a
    cluster cell's VMs (the names CellConfig.cluster_vms() gives), whose directories become
    the evidence's members."""
    own = own_evidence(cell, log)
    record_error = None
    try:
        post = PostHistory.read(cell.post_vm).decisions
    except UserError as e:
        post, record_error = (), f"{cell.post_vm.name} unreadable: {e.message[:200]}"
    try:
        records = VmRecord.read_all(cell.local_vm)
    except UserError as e:
        records, record_error = (), record_error or f"{cell.local_vm.name} unreadable: {e.message[:200]}"
    return replace(
        own,
        post_vm=post,
        vm_records=records,
        job=job,
        record_error=record_error,
        members=tuple((name, own_evidence(cell.vm_dir(name))) for name in vms),
    )
