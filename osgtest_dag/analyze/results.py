"""A run directory -> `results.json` (schema `osgtest-dag/results`, version 1; docs/results.md).

Per cell we read, strongest evidence first: the guest's `output/result.json`, the osg-test log
(`output/test.log` when the test command was osg-test, or `output/osg-test*.log`), then the
node and job events (`post-vm.json`, `local-vm.json`, the run's HTCondor job log), and the
extraction report of its result disk. Every cell of `cells.jsonl` gets an entry: a cell with
no result is `missing`, never blank. The renderers read only this document.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from osgtest_dag import __version__
from osgtest_dag.analyze import cluster_cell
from osgtest_dag.analyze.cell_logs import (
    ZERO_COUNTS,
    AnalysisOptions,
    LogFindings,
    apply_logs,
    failure_context,
    read_logs,
)
from osgtest_dag.analyze.guest_output import (
    durations,
    image_stamp,
    package_summary,
    parse_time,
    read_text,
)
from osgtest_dag.analyze.known_failures import (
    load_component_tags,
    load_known_failures,
    review,
)
from osgtest_dag.base.atomic import write_json_atomic
from osgtest_dag.base.errors import UserError
from osgtest_dag.generate import cellconfig
from osgtest_dag.model.cell import CellConfig, CellPlatform, CellSource
from osgtest_dag.model.evidence import gather, read_extraction
from osgtest_dag.model.inputs import RunInputs
from osgtest_dag.model.joblog import JobRecord, jobs_by_node, read_job_log
from osgtest_dag.model.manifest import RunManifest
from osgtest_dag.model.outcome import ORDERED, JobFacts, Outcome, derive
from osgtest_dag.model.results import KnownFailuresInfo, ResultsDocument, RunInfo
from osgtest_dag.model.rundir import OUTPUT_DIR, RunDir, vm_node
from osgtest_dag.plan.sources import Source, TestSource

log = logging.getLogger(__name__)

# Files a run directory may carry to be picked up without options, when it pinned none
# (inputs/, generate --known-failures/--component-tags).
DEFAULT_KNOWN_FAILURES = ("known-failures.yaml", "test-exceptions.yaml")
DEFAULT_COMPONENT_TAGS = ("component-tags.yaml",)


# ------------------------------------------------------------------------------ one cell
def platform_json(p: CellPlatform) -> dict:
    return {
        "id": p.id,
        "name": p.name or p.id,
        "os": p.os,
        "family": p.family,
        "distro": p.distro,
        "major": p.major,
        "arch": p.arch,
    }


def source_display(s: CellSource) -> str:
    """The readable source, as sources.Source.display() writes it."""
    ts = s.test_source
    test_source = TestSource(*ts.split(":", 1)) if ts and ":" in ts else None
    return Source(
        raw=s.raw,
        test_source=test_source,
        series=s.series,
        repos=s.repos,
        update_series=s.update_series,
        update_repos=s.update_repos,
    ).display()


def job_facts(vm_jobs: Sequence[JobRecord]) -> JobFacts | None:
    """The job log's records of a VM node (a retry is a new job) as the evidence builder takes
    them."""
    if not vm_jobs:
        return None
    holds = [h for j in vm_jobs for h in j.holds]
    reason = None
    if holds:
        reason = f"VM job held: {holds[-1].reason or 'no reason given'}"
    elif any(j.aborted for j in vm_jobs):
        reason = "VM job removed"
    return JobFacts(
        starts=sum(len(j.executed) for j in vm_jobs),
        hosts=tuple(h for j in vm_jobs for h in j.hosts),
        timed_out=any(j.held_at_wall_clock_limit for j in vm_jobs),
        reason=reason,
    )


def analyze_cell(
    run_dir: Path,
    cfg: CellConfig,
    opts: AnalysisOptions,
    node_jobs: dict[str, tuple[JobRecord, ...]] | None = None,
    passing: dict | None = None,
) -> dict:
    """One cell's entry of results.json (a cluster cell's: analyze/cluster_cell.py)."""
    serial = cfg.serial
    cd = RunDir(run_dir).cell(serial)
    d = cd.path
    out_dir = cd.output
    plat = platform_json(cfg.platform)
    cell: dict = {
        "serial": serial,
        "platform": plat,
        "source": {"raw": cfg.source.raw, "display": source_display(cfg.source)},
        "label": cfg.label,
        "packages": list(cfg.packages),
        "outcome": Outcome.MISSING.value,
        "reason": "",
        "guest_status": None,
        "exit_code": None,
        "counts": None,
        "failures": [],
        "bad_skips": [],
        "ok_skips_by_tag": {},
        "durations": {},
        "started": None,
        "finished": None,
        "host": None,
        "image": None,
        "image_digest": None,
        "package_versions": {},
        "packages_installed": {},
        "attempts": 0,
        "attempt_history": [],
        "timeout": None,
        "yum_timeout": False,
        "extraction": None,
        "logs": {"dir": None, "main": None, "files": []},
        "tests": [],
        "phases": [],
    }

    facts = job_facts((node_jobs or {}).get(vm_node(serial), ()))
    cluster_vms = cfg.cluster_vms()
    evidence = gather(cd, job=facts, vms=cluster_cell.member_names(cd, cluster_vms))
    cell["attempt_history"] = [
        {
            "attempt": p.attempt,
            "verdict": p.verdict.value,
            "reason": p.reason,
            "job_exit": p.job_exit,
            "time": p.time,
        }
        for p in evidence.post_vm
    ]
    cell["attempts"] = evidence.attempts
    if facts and facts.hosts:
        cell["host"] = facts.hosts[-1]
    try:
        extraction = read_extraction(cd)
    except UserError:
        extraction = None
    if extraction is not None:
        cell["extraction"] = _extraction_summary(extraction)

    if cfg.cluster is not None:  # its VMs' directories hold what a cell's output holds
        cluster_cell.analyze(cell, cd, cluster_vms, cfg.cluster.stages, evidence, opts, passing)
        return cell

    guest = evidence.guest
    if out_dir.is_dir():
        cell["logs"]["dir"] = str(cd.rel / OUTPUT_DIR)
        files = sorted(p.name for p in out_dir.iterdir() if p.is_file() and not p.is_symlink())
        cell["logs"]["files"] = files[:200]
    if guest is not None:
        cell["guest_status"] = guest.status
        cell["exit_code"] = guest.exit_code
        cell["durations"] = durations(guest)
        cell["phases"] = [
            {"name": ph.name, "status": ph.status, "exit_code": ph.exit_code} for ph in guest.phases
        ]
        cell["started"], cell["finished"] = guest.started, guest.finished

    # The osg-test log(s).
    found = LogFindings()
    if out_dir.is_dir():
        ctx = failure_context(cell, guest, opts.run_date)
        found = read_logs(out_dir, cd.rel / OUTPUT_DIR, ctx, opts.known, opts.tags, passing)
        apply_logs(cell, found)
        cell.update(package_summary(out_dir, cell["packages"]))
        try:
            stamp = image_stamp(read_text(out_dir / "environment.log", 1 << 20))
        except OSError:
            stamp = {}
        if stamp:
            cell["image"] = stamp
            cell["image_digest"] = stamp.get("inputs_hash")

    outcome, reason = derive(replace(evidence, log_outcome=found.outcome, log_reason=found.reason))
    cell["outcome"], cell["reason"] = outcome.value, reason
    if cell["counts"] is None:
        cell["counts"] = dict(ZERO_COUNTS)
    if cell["logs"]["main"] is None and d.is_dir():
        cell["logs"]["dir"] = cell["logs"]["dir"] or str(cd.rel)
    return cell


def _extraction_summary(rep: dict) -> dict:
    keep = (
        "ok",
        "error",
        "files",
        "bytes",
        "dirs",
        "skipped_count",
        "skipped_by_kind",
        "renamed_count",
        "seconds",
    )
    out = {k: rep.get(k) for k in keep if k in rep}
    out["skipped"] = (rep.get("skipped") or [])[:20]
    return out


# ------------------------------------------------------------------------------ the run
def _group_key(cell: dict, by: str) -> str:
    if by == "os":
        return cell["platform"]["os"] or "?"
    if by == "platform":
        return cell["platform"]["id"] or "?"
    if by == "package_set":
        return cell["label"] or "?"
    if by == "source":
        return cell["source"]["raw"] or "?"
    raise ValueError(by)


def platform_sort_key(p: dict) -> list:
    """Family, then version numerically (EL 8 before EL 10), then distro and arch."""
    major = p.get("major")
    try:
        major_n = int(str(major))  # an int or a numeric string; None is not a version
    except (TypeError, ValueError):
        major_n = 1 << 30
    return [p.get("family") or "", major_n, p.get("distro") or "", p.get("arch") or "", p.get("id") or ""]


def _os_name(p: dict) -> str:
    name = p.get("name") or p.get("os") or "?"
    return re.sub(r"\s*\([^)]*\)$", "", name)  # "Rocky 9 (x86_64)" -> "Rocky 9"


def summarize(cells: list[dict]) -> dict:
    """Counts by outcome, and per OS / package set / source / platform, each by outcome."""
    zero = {o.value: 0 for o in ORDERED}
    counts: dict[str, Any] = {"by_outcome": dict(zero)}
    for c in cells:
        counts["by_outcome"][c["outcome"]] += 1
    for by in ("os", "package_set", "source", "platform"):
        groups: dict[str, dict] = {}
        for c in cells:
            key = _group_key(c, by)
            g = groups.setdefault(key, {"key": key, "counts": dict(zero), "cells": 0})
            g["counts"][c["outcome"]] += 1
            g["cells"] += 1
            if by in ("os", "platform"):
                g["name"] = _os_name(c["platform"]) if by == "os" else c["platform"]["name"]
                g["sort"] = platform_sort_key(c["platform"])
            elif by == "source":
                g["name"] = c["source"]["display"]
            else:
                g["name"] = key
        for g in groups.values():
            g["worst"] = Outcome.worst((Outcome(o) for o, n in g["counts"].items() if n), Outcome.PASS).value
        ordered = sorted(groups.values(), key=lambda g: g.get("sort") or [g["key"]])
        counts[f"by_{by}"] = ordered
    return counts


def default_inputs(run_dir: Path) -> tuple[list[Path], Path | None]:
    """The known failures and component tags the run pinned at generate time (inputs/); of a
    kind it pinned none of, the files copied into the run directory by hand, if any."""
    layout, pinned = RunDir(run_dir), RunInputs.read(run_dir)
    kf = [layout.pinned(p.copy) for p in pinned.known_failures] if pinned else []
    if not kf:
        kf = [run_dir / n for n in DEFAULT_KNOWN_FAILURES if (run_dir / n).is_file()]
    tags = layout.pinned(pinned.component_tags.copy) if pinned and pinned.component_tags else None
    if tags is None:
        tags = next((run_dir / n for n in DEFAULT_COMPONENT_TAGS if (run_dir / n).is_file()), None)
    return kf, tags


def analysis_options(
    run_dir: Path,
    manifest: RunManifest,
    known_failures: Iterable[Path | str] | None = None,
    component_tags: Path | str | None = None,
) -> AnalysisOptions:
    """The known failures and component tags given (default: those the run directory
    carries), and the run's date."""
    d_kf, d_tags = default_inputs(run_dir)
    known = load_known_failures(list(known_failures) if known_failures is not None else d_kf)
    tags = load_component_tags(component_tags if component_tags is not None else d_tags)
    generated = parse_time(manifest.generated)
    return AnalysisOptions(known=known, tags=tags, run_date=generated.date() if generated else None)


def analyze_cells(run_dir: Path | str, serials: Iterable[str] | None = None) -> list[dict]:
    """The results.json entries of the run's cells (all, or `serials`), made now from the
    cells' evidence with the run's own known failures: what status, rerun and the FINAL node
    see before the run is analyzed."""
    run_dir = Path(run_dir)
    manifest = RunManifest.read(run_dir)
    opts = analysis_options(run_dir, manifest)
    wanted = None if serials is None else set(serials)
    configs = [c for c in cellconfig.iter_cells(run_dir) if wanted is None or c.serial in wanted]
    if not configs:
        return []
    node_jobs = jobs_by_node(read_job_log(RunDir(run_dir).job_log))
    return [analyze_cell(run_dir, cfg, opts, node_jobs) for cfg in configs]


def cell_outcomes(
    run_dir: Path | str, serials: Iterable[str] | None = None
) -> dict[str, tuple[Outcome, str]]:
    """serial -> (outcome, reason), decided as results.json decides it (analyze_cells)."""
    return {c["serial"]: (Outcome(c["outcome"]), c["reason"]) for c in analyze_cells(run_dir, serials)}


def run_outcomes(run_dir: Path | str) -> dict[str, Outcome]:
    """serial -> outcome of every cell: results.json's when the run has been analyzed (what
    the report says), else decided now from the evidence (cell_outcomes)."""
    run_dir = Path(run_dir)
    if RunDir(run_dir).results.is_file():
        found = ResultsDocument.read(run_dir).outcomes()
        return {cfg.serial: found.get(cfg.serial, Outcome.MISSING) for cfg in cellconfig.iter_cells(run_dir)}
    return {s: o for s, (o, _) in cell_outcomes(run_dir).items()}


def analyze_run(
    run_dir: Path | str,
    *,
    known_failures: Iterable[Path | str] | None = None,
    component_tags: Path | str | None = None,
    write: bool = True,
    today: dt.date | None = None,
) -> ResultsDocument:
    """Build (and by default write, atomically) RUN_DIR/results.json; return the document.

    `known_failures`: files in the reference or extended format (default: known-failures.yaml
    or test-exceptions.yaml in the run directory, if there). `component_tags`: the tags file
    (default: component-tags.yaml in the run directory, if there).
    """
    t0 = time.monotonic()
    run_dir = Path(run_dir)
    manifest = RunManifest.read(run_dir)
    opts = analysis_options(run_dir, manifest, known_failures, component_tags)
    known, tags = opts.known, opts.tags
    node_jobs = jobs_by_node(read_job_log(RunDir(run_dir).job_log))
    passing: dict = {}
    if known.entries:
        passing["__pattern__"] = re.compile(
            "|".join(f"(?:{fnmatch.translate(e.test)})" for e in known.entries)
        )
    try:
        configs = list(cellconfig.iter_cells(run_dir))
    except FileNotFoundError:
        raise UserError("not a run directory (no cells.jsonl)", where=run_dir) from None
    cells = [analyze_cell(run_dir, cfg, opts, node_jobs, passing) for cfg in configs]
    cells.sort(key=lambda c: c["serial"])
    passing.pop("__pattern__", None)
    today = today or dt.date.today()
    warnings = review(known, today, passing) if known.entries else []
    counts = summarize(cells)
    worst = Outcome.worst((Outcome(c["outcome"]) for c in cells), Outcome.PASS)
    doc = ResultsDocument(
        generated=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        tool_version=__version__,
        run=RunInfo(
            name=manifest.run_name or run_dir.resolve().name,
            dir=str(run_dir.resolve()),
            generated=manifest.generated,
            cells=len(cells),
            param_files=manifest.param_files,
        ),
        worst=worst,
        counts=counts,
        known_failures=KnownFailuresInfo(
            files=tuple(known.files), entries=len(known.entries), warnings=tuple(warnings)
        ),
        component_tags=tags.file,
        cells=tuple(cells),
    )
    if write:
        write_json_atomic(RunDir(run_dir).results, doc.to_json())
    log.info(
        "analyzed %d cells of %s in %.2f s: %s",
        len(cells),
        run_dir,
        time.monotonic() - t0,
        ", ".join(f"{k} {v}" for k, v in counts["by_outcome"].items() if v),
    )
    return doc
