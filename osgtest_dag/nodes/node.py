"""What the DAG's nodes do. Each function works in a run directory and is called by
`osgtest-dag node ACTION` from DAGMan (local universe and POST scripts) and by the local
executor alike, so both engines do exactly the same work.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from osgtest_dag.generate import cellconfig
from osgtest_dag.base.atomic import write_json_atomic, write_text_atomic
from osgtest_dag.base.errors import CommandError, UserError
from osgtest_dag.analyze.extract import result_disk
from osgtest_dag.generate.workflow import POST_INFRA_FATAL, POST_INFRA_RETRY, POST_OK, load_manifest

log = logging.getLogger(__name__)

# Guest statuses (docs/contracts.md §2) the POST script treats as a finished test run, and
# those that say the infrastructure failed (worth another try).
PRODUCT_STATUSES = {"pass", "test", "install", "update"}
INFRA_RETRY_STATUSES = {"network", "repos", "running"}
INFRA_FATAL_STATUSES = {"payload"}


def cell_dir(run_dir: Path, serial: str) -> Path:
    """The cell's working directory; made by its CreateDisk node (which writes cell.json)."""
    d = Path(run_dir) / "cells" / serial
    if not (d / "cell.json").is_file():
        cellconfig.read_cell(run_dir, serial)  # a clear error for a serial not in the run
        raise UserError(f"cell {serial} has no working directory yet", where=d,
                        hint="its CreateDisk node makes it: run the workflow, or `osgtest-dag node create-io-disk`")
    return d


def io_disk(run_dir: Path, serial: str) -> Path:
    return Path(run_dir) / "cells" / serial / f"io-{serial}.qcow2"


def create_io_disk(run_dir: Path, serial: str, offset: int | None = None) -> Path:
    """Make the cell's directory and IO disk from its configuration (the CreateDisk node)."""
    from osgtest_dag.guest.iodisk import make_iodisk
    manifest = load_manifest(run_dir)
    cfg = cellconfig.read_cell(run_dir, serial, offset)
    d = Path(run_dir) / "cells" / serial
    d.mkdir(parents=True, exist_ok=True)
    write_json_atomic(d / "cell.json", cfg)
    opts = manifest["options"]
    with tempfile.TemporaryDirectory(prefix="osgtest-input-") as tmp:
        cellconfig.write_input_dir(cfg, Path(tmp) / "input")
        make_iodisk(Path(tmp) / "input", io_disk(run_dir, serial),
                    size_mb=opts.get("iodisk_size_mb", 64), backend=opts.get("iodisk_backend", "mke2fs"))
    return io_disk(run_dir, serial)


def read_guest_result(disk: Path, staging: Path) -> tuple[Path, dict | None, dict]:
    """Pull `output/` off a returned disk into `staging/output` with the hardened extractor
    (the guest wrote the disk: read-only, no backing files, no links, capped). Returns that
    directory, the guest's result.json (None when the payload left none) and the extraction
    report; RuntimeError when the disk was refused or unreadable."""
    from osgtest_dag.analyze.extract import ExtractJob, extract_disks
    out = staging / "output"
    (report,) = extract_disks([ExtractJob(Path(disk), out)])
    if not report["ok"]:
        raise RuntimeError(report["error"] or "extraction failed")
    rj = out / "result.json"
    if rj.is_symlink() or not rj.is_file():
        return out, None, report
    try:
        return out, json.loads(rj.read_text()), report
    except ValueError:
        return out, {"status": "running", "exit_code": None, "corrupt": True}, report


def last_local_vm(d: Path) -> dict | None:
    """The local executor's record of the cell's last VM start (local-vm.json), if any."""
    from osgtest_dag.engine.local.executor import VM_RECORDS, read_vm_records
    records = read_vm_records(d / VM_RECORDS)
    return records[-1] if records else None


def post_vm(run_dir: Path, node_name: str, returncode: int, retry: int, max_retries: int) -> int:
    """The VM node's POST script: classify from the returned disk. Returns the exit code
    DAGMan acts on: 0 done, 1 infrastructure (RETRY), 2 infrastructure not worth a retry
    (RETRY ... UNLESS-EXIT 2)."""
    serial = node_name[len("TestRun"):] if node_name.startswith("TestRun") else node_name
    d = cell_dir(run_dir, serial)
    disk = result_disk(run_dir, serial)
    decision: dict = {"attempt": retry, "max_retries": max_retries, "job_exit": returncode,
                      "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if not disk.is_file():
        vm = last_local_vm(d)
        if vm and vm.get("timed_out"):
            decision.update(verdict="timeout", exit=POST_INFRA_RETRY,
                            reason=f"VM killed at its wall-clock limit after {vm['wall_s']:.0f} s "
                                   f"(console: {vm['console']})")
        else:
            decision.update(verdict="infra", reason="no result disk came back", exit=POST_INFRA_RETRY)
    else:
        # Reading the disk costs a libguestfs launch, so the POST script extracts the whole
        # output once: into output/ for a finished run (ProcessResult then analyzes it), into
        # attempts/<retry>/ for a failed one (kept for diagnosis, superseded by the retry).
        tmp = Path(tempfile.mkdtemp(prefix=".post-output.", dir=d))
        try:
            extracted, result, report = read_guest_result(disk, tmp)
        except (CommandError, RuntimeError, OSError) as e:
            result = None
            shutil.rmtree(tmp, ignore_errors=True)
            decision.update(verdict="infra", reason=f"result disk unreadable: {str(e)[:300]}",
                            exit=POST_INFRA_RETRY)
        else:
            status = (result or {}).get("status")
            if result is None:
                decision.update(verdict="infra", reason="the payload left no result (did the VM boot?)",
                                exit=POST_INFRA_RETRY)
            elif status in PRODUCT_STATUSES:
                decision.update(verdict="done", reason=f"guest finished: {status}", exit=POST_OK)
            elif status in INFRA_FATAL_STATUSES:
                decision.update(verdict="infra-fatal", reason=f"guest reported {status}", exit=POST_INFRA_FATAL)
            else:
                decision.update(verdict="infra", reason=f"guest reported {status or 'nothing'}",
                                exit=POST_INFRA_RETRY)
            decision["guest_status"] = status
            decision["guest_exit_code"] = (result or {}).get("exit_code")
            _stamp_source(extracted, disk)
            dest = d / "output" if decision["verdict"] == "done" else d / "attempts" / str(retry)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(dest, ignore_errors=True)
            os.rename(extracted, dest)
            write_json_atomic(dest.parent / ("extraction.json" if dest.name == "output"
                                       else f"{dest.name}.extraction.json"), report)
            shutil.rmtree(tmp, ignore_errors=True)
    history_path = d / "post-vm.json"
    history = []
    if history_path.is_file():
        try:
            history = json.loads(history_path.read_text())
        except ValueError:
            history = []
    history.append(decision)
    write_json_atomic(history_path, history)
    log.info("cell %s attempt %s: %s (%s)", serial, retry, decision["verdict"], decision["reason"])
    return decision["exit"]


SOURCE_STAMP = ".extracted-from.json"


def _disk_stamp(disk: Path) -> dict:
    st = disk.stat()
    return {"disk": disk.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _stamp_source(out: Path, disk: Path) -> None:
    (out / SOURCE_STAMP).write_text(json.dumps(_disk_stamp(disk)) + "\n")


def process_result(run_dir: Path, serial: str) -> dict:
    """The ProcessResult node: make sure output/ holds what the returned disk holds (the POST
    script normally extracted it already), then summarize the cell."""
    d = cell_dir(run_dir, serial)
    disk = result_disk(run_dir, serial)
    out = d / "output"
    stamp = out / SOURCE_STAMP
    fresh = disk.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == _disk_stamp(disk)
    if not fresh:
        if not disk.is_file():
            raise UserError("no result disk to process", where=disk)
        tmp = Path(tempfile.mkdtemp(prefix=".output.", dir=d))
        try:
            extracted, _, report = read_guest_result(disk, tmp)
            _stamp_source(extracted, disk)
            write_json_atomic(d / "extraction.json", report)
            shutil.rmtree(out, ignore_errors=True)
            os.rename(extracted, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    summary = cell_summary(run_dir, serial)
    write_json_atomic(d / "cell-result.json", summary)
    return summary


def clean_output(run_dir: Path, serial: str) -> list[Path]:
    """Remove what is no longer needed once the result is extracted: the IO disk that went
    in (the result disk is its returned copy), and the result disk unless keep_disks."""
    manifest = load_manifest(run_dir)
    removed = []
    targets = [io_disk(run_dir, serial)]
    if not manifest["options"].get("keep_disks") and (cell_dir(run_dir, serial) / "output").is_dir():
        targets.append(result_disk(run_dir, serial))
    for t in targets:
        if t.exists():
            t.unlink()
            removed.append(t)
    return removed


def cell_summary(run_dir: Path, serial: str) -> dict:
    """What we know of one cell now: the guest's status and exit code, else why not."""
    d = Path(run_dir) / "cells" / serial
    cfg = cellconfig.load(d / "cell.json") if (d / "cell.json").is_file() else cellconfig.read_cell(run_dir, serial)
    return _summary_from(Path(run_dir), cfg)


def _summary_from(run_dir: Path, cfg: dict) -> dict:
    serial = cfg["serial"]
    d = run_dir / "cells" / serial
    out = {"serial": serial, "platform": cfg["platform"]["id"], "source": cfg["source"]["raw"],
           "label": cfg["label"], "status": "missing", "exit_code": None, "attempts": 0,
           "reason": "no result came back"}
    post = d / "post-vm.json"
    if post.is_file():
        history = json.loads(post.read_text())
        out["attempts"] = len(history)
        last = history[-1]
        if last["verdict"] == "timeout":
            out.update(status="timeout", reason=last["reason"])
        elif last["verdict"] != "done":
            out.update(status="infra", reason=last["reason"])
    rj = d / "output" / "result.json"
    if rj.is_file():
        try:
            guest = json.loads(rj.read_text())
            out.update(status=guest.get("status", "missing"), exit_code=guest.get("exit_code"),
                       reason="from the guest's result.json")
        except ValueError:
            out.update(status="infra", reason="result.json is not valid JSON")
    return out


def matrix_summary(run_dir: Path) -> dict:
    """The FINAL node's work: every cell's status, so the outer workflow has one document."""
    run_dir = Path(run_dir)
    cells = [_summary_from(run_dir, cfg) for cfg in cellconfig.iter_cells(run_dir)]
    counts: dict[str, int] = {}
    for c in cells:
        counts[c["status"]] = counts.get(c["status"], 0) + 1
    summary = {"schema": "osgtest-dag/matrix-summary", "version": 1, "cells": cells, "counts": counts}
    write_json_atomic(run_dir / "matrix-summary.json", summary)
    return summary


def text_summary(summary: dict) -> str:
    lines = [f"{'SERIAL':<7} {'STATUS':<8} {'EXIT':<5} {'PLATFORM':<24} {'PACKAGE SET':<28} SOURCE"]
    for c in summary["cells"]:
        code = "-" if c["exit_code"] is None else str(c["exit_code"])
        lines.append(f"{c['serial']:<7} {c['status']:<8} {code:<5} {c['platform']:<24} "
                     f"{c['label'][:28]:<28} {c['source']}")
    lines.append("totals: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["counts"].items())))
    return "\n".join(lines) + "\n"


def analyze(run_dir: Path) -> dict:
    """The Analyze node: every cell's outcome into results.json (results.py)."""
    from osgtest_dag.analyze.results import analyze_run
    return analyze_run(Path(run_dir))


REPORT_FILES = {"text": "report.txt", "html": "report.html", "junit": "junit.xml"}


def report(run_dir: Path) -> dict[str, Path]:
    """The Report node: text, HTML and JUnit renderings of results.json."""
    from osgtest_dag.report.render import render
    from osgtest_dag.analyze.results import load_results
    run_dir = Path(run_dir)
    doc = load_results(run_dir)
    written = {}
    for fmt, name in REPORT_FILES.items():
        path = run_dir / name
        write_text_atomic(path, render(doc, fmt, out_path=path))
        written[fmt] = path
    return written


def publish(run_dir: Path) -> str:
    """The Publish node: mail the summary when SMTP is configured (OSGTEST_DAG_SMTP_* in the
    environment), copy the reports to publish_dir when the run names one; else say so."""
    from osgtest_dag.report.email import SmtpSettings, build_message, send
    from osgtest_dag.analyze.results import load_results
    run_dir = Path(run_dir)
    said = []
    opts = load_manifest(run_dir)["options"]
    if opts.get("publish_dir"):
        dest = Path(opts["publish_dir"]) / run_dir.resolve().name
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("results.json", *REPORT_FILES.values()):
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, dest / name)
        said.append(f"reports copied to {dest}")
    if os.environ.get("OSGTEST_DAG_SMTP_HOST"):
        settings = SmtpSettings.from_env()
        send(build_message(load_results(run_dir), settings), settings)
        said.append(f"summary mailed to {', '.join(settings.recipients)}")
    return "; ".join(said) or "nothing to publish to (no publish_dir, no OSGTEST_DAG_SMTP_HOST)"
