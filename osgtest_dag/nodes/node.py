"""What the DAG's nodes do. Each function works in a run directory and is called by
`osgtest-dag node ACTION` from DAGMan (local universe and POST scripts) and by the local
executor alike, so both engines do exactly the same work.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from osgtest_dag.analyze import results, runindex
from osgtest_dag.analyze.extract import ExtractJob, extract_disks
from osgtest_dag.base.atomic import write_json_atomic, write_text_atomic
from osgtest_dag.base.errors import CommandError, UserError
from osgtest_dag.generate import cellconfig
from osgtest_dag.generate.inputs import write_cell_io_disk
from osgtest_dag.generate.workflow import POST_INFRA_FATAL, POST_INFRA_RETRY, POST_OK
from osgtest_dag.guest.iodisk import make_scratch_disk
from osgtest_dag.model import prefetch
from osgtest_dag.model.cell import CellConfig
from osgtest_dag.model.documents import (
    GuestResult,
    PostDecision,
    PostHistory,
    Verdict,
    VmRecord,
    dump_json,
    read_json,
)
from osgtest_dag.model.inputs import RunInputs
from osgtest_dag.model.manifest import RunManifest
from osgtest_dag.model.outcome import Outcome
from osgtest_dag.model.publish import PublishConfig, SmtpConfig, read_credentials
from osgtest_dag.model.results import ResultsDocument
from osgtest_dag.model.rundir import REPORT_FILES, SOURCE_STAMP, TEST_RUN, CellDir, NodeName, RunDir
from osgtest_dag.report import compare
from osgtest_dag.report import history as history_page
from osgtest_dag.report.email import SmtpSettings, build_message, send
from osgtest_dag.report.render import render

log = logging.getLogger(__name__)

# Guest statuses (docs/contracts.md §2) the POST script treats as a finished test run, and
# those that say the infrastructure failed (worth another try).
PRODUCT_STATUSES = {"pass", "test", "install", "update"}
INFRA_RETRY_STATUSES = {"network", "repos", "running"}
INFRA_FATAL_STATUSES = {"payload"}


def cell_dir(run_dir: Path, serial: str) -> CellDir:
    """The cell's working directory; made by its CreateDisk node (which writes cell.json)."""
    cell = RunDir(run_dir).cell(serial)
    if not cell.config.is_file():
        cellconfig.read_cell(run_dir, serial)  # a clear error for a serial not in the run
        raise UserError(
            f"cell {serial} has no working directory yet",
            where=cell.path,
            hint="its CreateDisk node makes it: run the workflow, or `osgtest-dag node create-io-disk`",
        )
    return cell


def create_io_disk(run_dir: Path, serial: str, offset: int | None = None) -> Path:
    """Make the cell's directory and IO disk from its configuration (the CreateDisk node),
    and its scratch disk when its VM profile's disk is larger than its image."""
    cfg = cellconfig.read_cell(run_dir, serial, offset)
    cell = RunDir(run_dir).cell(serial)
    cell.path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cell.config, cfg.to_json())
    if cfg.scratch_mb:
        make_scratch_disk(cell.scratch_disk, cfg.scratch_mb)
    return write_cell_io_disk(run_dir, cfg, cell.io_disk)


def read_guest_result(disk: Path, staging: Path) -> tuple[Path, GuestResult | None, dict]:
    """Pull `output/` off a returned disk into `staging/output` with the hardened extractor
    (the guest wrote the disk: read-only, no backing files, no links, capped). Returns that
    directory, the guest's result.json (None when the payload left none) and the extraction
    report; RuntimeError when the disk was refused or unreadable."""
    out = staging / "output"
    (report,) = extract_disks([ExtractJob(Path(disk), out)])
    if not report["ok"]:
        raise RuntimeError(report["error"] or "extraction failed")
    return out, guest_result_in(out), report


def guest_result_in(out: Path) -> GuestResult | None:
    """The guest's result.json in an extracted output/ (None when the payload left none)."""
    rj = out / "result.json"
    if rj.is_symlink() or not rj.is_file():
        return None
    try:
        return GuestResult.read(rj)
    except UserError:  # a guest that died while writing it
        return GuestResult(status="running")


def take_prefetched(cell: CellDir, disk: Path, staging: Path) -> tuple[Path, GuestResult | None, dict] | None:
    """What read_guest_result gives, from the local executor's read-ahead of `disk` moved into
    `staging/output`, when that read is whole and of the disk as it is now (model/prefetch.py);
    None otherwise. Either way no read-ahead is left behind."""
    if not (cell.prefetch.exists() or cell.prefetch.is_symlink()):
        return None  # always, on HTCondor
    record = prefetch.usable(cell, disk)
    out = staging / "output"
    if record is not None:
        try:
            os.rename(cell.prefetched_output, out)
        except OSError as e:
            log.warning("cell %s: cannot take the read-ahead result (%s); reading the disk", cell.serial, e)
            record = None
    else:
        log.info(
            "cell %s: the read-ahead result is incomplete or not of the disk as it is now; reading the disk",
            cell.serial,
        )
    prefetch.discard(cell)
    if record is None:
        return None
    log.info("cell %s: using the result disk as the local executor read it ahead", cell.serial)
    return out, guest_result_in(out), record.report


def last_local_vm(cell: CellDir) -> VmRecord | None:
    """The local executor's record of the cell's last VM start (local-vm.json), if any."""
    records = VmRecord.read_all(cell.local_vm)
    return records[-1] if records else None


def post_vm(run_dir: Path, node_name: str, returncode: int, retry: int, max_retries: int) -> int:
    """The VM node's POST script: classify from the returned disk. Returns the exit code
    DAGMan acts on: 0 done, 1 infrastructure (RETRY), 2 infrastructure not worth a retry
    (RETRY ... UNLESS-EXIT 2)."""
    name = NodeName.parse(node_name)
    if name.layer != TEST_RUN:
        raise UserError(f"post-vm is the POST script of a {TEST_RUN} node, not of {node_name}")
    serial = name.serial
    cell = cell_dir(run_dir, serial)
    disk = cell.result_disk
    stamp: dict[str, Any] = {
        "attempt": retry,
        "max_retries": max_retries,
        "job_exit": returncode,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if not disk.is_file():
        vm = last_local_vm(cell)
        if vm and vm.timed_out:
            decision = PostDecision(
                **stamp,
                verdict=Verdict.TIMEOUT,
                exit=POST_INFRA_RETRY,
                reason=f"VM killed at its wall-clock limit after {vm.wall_s or 0:.0f} s "
                f"(console: {vm.console})",
            )
        else:
            decision = PostDecision(
                **stamp, verdict=Verdict.INFRA, reason="no result disk came back", exit=POST_INFRA_RETRY
            )
    else:
        decision = _classify_disk(cell, disk, retry, stamp, last_local_vm(cell))
    history = PostHistory.read(cell.post_vm).appended(decision)
    write_json_atomic(cell.post_vm, history.to_json())
    log.info("cell %s attempt %s: %s (%s)", serial, retry, decision.verdict.value, decision.reason)
    return decision.exit


def classify(result: GuestResult | None, vm: VmRecord | None) -> tuple[Verdict, str, int]:
    """The POST decision for a returned disk: its result.json (None when the payload left
    none) and the local executor's record of the VM's last start (None on HTCondor, which
    brings no disk back from a VM held at its limit). Returns the verdict, why, and the exit
    code DAGMan acts on."""
    status = result.status if result else None
    if vm is not None and vm.timed_out and status in (None, "running"):
        killed = f"VM killed at its wall-clock limit after {vm.wall_s or 0:.0f} s (console: {vm.console})"
        if result is None:
            return Verdict.INFRA, f"{killed} before its payload started", POST_INFRA_RETRY
        if result.reached_test:
            # the test ran out of time: a result (its finished phases are kept), not retried
            where = result.current_phase or "test"
            return Verdict.TIMEOUT, f"{killed} during its {where} phase", POST_OK
        where = result.current_phase or "an unknown phase"
        return Verdict.TIMEOUT, f"{killed} during {where}, before its test", POST_INFRA_RETRY
    if result is None:
        return Verdict.INFRA, "the payload left no result (did the VM boot?)", POST_INFRA_RETRY
    if status in PRODUCT_STATUSES:
        return Verdict.DONE, f"guest finished: {status}", POST_OK
    if status in INFRA_FATAL_STATUSES:
        return Verdict.INFRA_FATAL, f"guest reported {status}", POST_INFRA_FATAL
    return Verdict.INFRA, f"guest reported {status or 'nothing'}", POST_INFRA_RETRY


def _classify_disk(cell: CellDir, disk: Path, retry: int, stamp: dict, vm: VmRecord | None) -> PostDecision:
    """Read the returned disk once (a libguestfs launch): into output/ for a result - a
    finished run, or a test stopped at the time limit (ProcessResult then has nothing to do)
    - into attempts/<retry>/ for a failed one (kept for diagnosis, superseded by the retry)."""
    tmp = Path(tempfile.mkdtemp(prefix=".post-output.", dir=cell.path))
    try:
        extracted, result, report = take_prefetched(cell, disk, tmp) or read_guest_result(disk, tmp)
    except (CommandError, RuntimeError, OSError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        return PostDecision(
            **stamp,
            verdict=Verdict.INFRA,
            reason=f"result disk unreadable: {str(e)[:300]}",
            exit=POST_INFRA_RETRY,
        )
    status = result.status if result else None
    verdict, reason, code = classify(result, vm)
    stamp_source(extracted, disk)
    if code == POST_OK:
        dest, report_path = cell.output, cell.extraction
    else:
        dest, report_path = cell.attempt_output(retry), cell.attempt_extraction(retry)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(dest, ignore_errors=True)
    os.rename(extracted, dest)
    write_json_atomic(report_path, report)
    shutil.rmtree(tmp, ignore_errors=True)
    return PostDecision(
        **stamp,
        verdict=verdict,
        reason=reason,
        exit=code,
        guest_status=status,
        guest_exit_code=result.exit_code if result else None,
    )


def disk_stamp(disk: Path) -> dict:
    st = disk.stat()
    return {"disk": disk.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def stamp_source(out: Path, disk: Path) -> None:
    (out / SOURCE_STAMP).write_text(dump_json(disk_stamp(disk)))


def process_result(run_dir: Path, serial: str) -> dict:
    """The ProcessResult node: make sure output/ holds what the returned disk holds (the POST
    script normally extracted it already), then summarize the cell."""
    cell = cell_dir(run_dir, serial)
    disk = cell.result_disk
    out = cell.output
    fresh = (
        disk.is_file() and cell.source_stamp.is_file() and read_json(cell.source_stamp) == disk_stamp(disk)
    )
    if not fresh:
        if not disk.is_file():
            raise UserError("no result disk to process", where=disk)
        tmp = Path(tempfile.mkdtemp(prefix=".output.", dir=cell.path))
        try:
            extracted, _, report = read_guest_result(disk, tmp)
            stamp_source(extracted, disk)
            write_json_atomic(cell.extraction, report)
            shutil.rmtree(out, ignore_errors=True)
            os.rename(extracted, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return cell_summary(run_dir, serial)


def clean_output(run_dir: Path, serial: str) -> list[Path]:
    """Remove what is no longer needed once the result is extracted: the IO disk that went
    in (the result disk is its returned copy), the scratch disk, and the result disk unless
    keep_disks."""
    opts = RunManifest.read(run_dir).options
    removed = []
    cell = cell_dir(run_dir, serial)
    cfg = CellConfig.read(cell.config)
    targets = []
    for d in [cell.vm_dir(vm.name) for vm in cfg.cluster_vms()] or [cell]:
        targets += [d.io_disk, d.scratch_disk]
        if not opts.keep_disks and d.output.is_dir():
            targets.append(d.result_disk)
    for t in targets:
        if t.exists():
            t.unlink()
            removed.append(t)
    return removed


MATRIX_SUMMARY_SCHEMA = "osgtest-dag/matrix-summary"
MATRIX_SUMMARY_VERSION = 2


def _summary_entries(run_dir: Path, serials: list[str] | None = None) -> list[dict]:
    """Each cell's outcome, decided as results.json decides it, and what to show beside it."""
    return [
        {
            "serial": c["serial"],
            "platform": c["platform"]["id"],
            "source": c["source"]["raw"],
            "label": c["label"],
            "outcome": c["outcome"],
            "reason": c["reason"],
            "exit_code": c["exit_code"],
            "attempts": c["attempts"],
        }
        for c in results.analyze_cells(run_dir, serials)
    ]


def cell_summary(run_dir: Path, serial: str) -> dict:
    """What we know of one cell now: its outcome, and why."""
    (entry,) = _summary_entries(Path(run_dir), [serial])
    return entry


def matrix_summary(run_dir: Path) -> dict:
    """The FINAL node's work: every cell's outcome, so the outer workflow has one document."""
    run_dir = Path(run_dir)
    cells = _summary_entries(run_dir)
    counts = dict(
        sorted(Counter(c["outcome"] for c in cells).items(), key=lambda kv: Outcome(kv[0]).severity)
    )
    summary = {
        "schema": MATRIX_SUMMARY_SCHEMA,
        "version": MATRIX_SUMMARY_VERSION,
        "cells": cells,
        "counts": counts,
    }
    write_json_atomic(RunDir(run_dir).matrix_summary, summary)
    return summary


def text_summary(summary: dict) -> str:
    lines = [f"{'SERIAL':<7} {'OUTCOME':<8} {'EXIT':<5} {'PLATFORM':<24} {'PACKAGE SET':<28} SOURCE"]
    for c in summary["cells"]:
        code = "-" if c["exit_code"] is None else str(c["exit_code"])
        lines.append(
            f"{c['serial']:<7} {c['outcome']:<8} {code:<5} {c['platform']:<24} "
            f"{c['label'][:28]:<28} {c['source']}"
        )
    lines.append("totals: " + ", ".join(f"{k} {v}" for k, v in summary["counts"].items()))
    return "\n".join(lines) + "\n"


def analyze(run_dir: Path) -> ResultsDocument:
    """The Analyze node: every cell's outcome into results.json (results.py)."""
    return results.analyze_run(Path(run_dir))


def previous_diff(run_dir: Path, doc: ResultsDocument) -> dict | None:
    """What changed since the run's pinned previous run (report/compare.py); None when the
    run pinned none."""
    layout = RunDir(run_dir)
    pinned = RunInputs.read(layout.path)
    if pinned is None or pinned.previous is None:
        return None
    return compare.compare(ResultsDocument.read(layout.pinned(pinned.previous.results.copy)), doc)


def report(run_dir: Path) -> dict[str, Path]:
    """The Report node: text, HTML and JUnit renderings of results.json; with a pinned
    previous run, the text and HTML open with what changed since, and changes.json has it; a
    nightly's text and HTML carry its flaky and slower cells, and history.html the history of
    its runs root (the run index's) up to this run."""
    layout = RunDir(run_dir)
    doc = ResultsDocument.read(layout.path)
    diff = previous_diff(layout.path, doc)
    history = runindex.nightly_history(layout.path)
    written = {}
    for fmt in REPORT_FILES:
        path = layout.report(fmt)
        shown = diff if fmt in ("text", "html") else None
        write_text_atomic(path, render(doc, fmt, diff=shown, out_path=path, history=history))
        written[fmt] = path
    if diff is not None:
        write_json_atomic(layout.comparison, diff)
        written["changes"] = layout.comparison
    if history is not None:
        write_text_atomic(layout.history_page, history_page.render(history, "html"))
        written["history"] = layout.history_page
    return written


def _smtp_settings(smtp: SmtpConfig) -> SmtpSettings:
    """The mail settings of a run's publish.json, the login read from its credentials file now."""
    user, password = read_credentials(Path(smtp.credentials)) if smtp.credentials else (None, None)
    return SmtpSettings(
        host=smtp.host,
        port=smtp.port,
        starttls=smtp.starttls,
        user=user,
        password=password,
        sender=smtp.sender,
        recipients=smtp.recipients,
        cafile=smtp.cafile,
    )


def publish(run_dir: Path) -> str:
    """The Publish node, configured by the run's inputs/publish.json alone: copy the reports
    (and the history page, when there) to DIR/<run name>/, and mail the summary with what
    changed since the pinned previous run. Says what it did."""
    layout = RunDir(run_dir)
    config = PublishConfig.read(layout.path)
    if config is None or (config.publish_dir is None and config.smtp is None):
        return "nothing to publish to (the run has no inputs/publish.json: generate with --publish-config)"
    said = []
    if config.publish_dir:
        dest = Path(config.publish_dir) / layout.path.resolve().name
        dest.mkdir(parents=True, exist_ok=True)
        extra = (layout.comparison, layout.history_page)
        for path in (layout.results, *(layout.report(fmt) for fmt in REPORT_FILES), *extra):
            if path.is_file():
                shutil.copy2(path, dest / path.name)
        said.append(f"reports copied to {dest}")
    if config.smtp:
        doc = ResultsDocument.read(layout.path)
        settings = _smtp_settings(config.smtp)
        msg = build_message(
            doc,
            settings,
            previous_diff(layout.path, doc),
            subject_prefix=config.smtp.subject_prefix,
            history=runindex.nightly_history(layout.path),
        )
        send(msg, settings)
        said.append(f"summary mailed to {', '.join(settings.recipients)} via {settings.host}:{settings.port}")
    return "; ".join(said)
