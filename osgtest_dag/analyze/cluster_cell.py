"""A cluster cell's entry of results.json (docs/clusters.md, docs/results.md): one cell, whose
outcome is the worst over its VMs (model.outcome.derive), with `vms`, each VM's outcome and
its record of every stage. Its other fields read over the VMs: phases and durations merged
(the barrier makes the slowest VM the cell's time), the VMs' osg-test failures with the VM's
name, package lists united."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import PurePosixPath

from osgtest_dag.analyze.cell_logs import (
    ZERO_COUNTS,
    AnalysisOptions,
    LogFindings,
    failure_context,
    read_logs,
)
from osgtest_dag.analyze.guest_output import durations, image_stamp, package_summary, parse_time, read_text
from osgtest_dag.model.cluster import ClusterStage, ClusterVm
from osgtest_dag.model.documents import GuestResult, Phase
from osgtest_dag.model.outcome import Evidence, Outcome, derive, derive_members
from osgtest_dag.model.rundir import OUTPUT_DIR, CellDir

NETWORK_BOOT_REASON = "booted over the network: no result of its own (its console log is its evidence)"
# Which VM's record of a phase stands for the cell's: a failure anywhere, else a VM that ran it.
_PHASE_RANK = {"failed": 3, "ok": 2, "skipped": 1}


def member_names(cd: CellDir, vms: Sequence[ClusterVm]) -> tuple[str, ...]:
    """The VMs whose directories decide the cell: every disk-booted VM, and a network-booted
    one only when it left a result (it runs no stages; the serving role's stages check it)."""
    return tuple(
        v.name
        for v in vms
        if not v.network_boot
        or cd.vm_dir(v.name).guest_result.exists()
        or cd.vm_dir(v.name).extraction.exists()
    )


def analyze(
    cell: dict,
    cd: CellDir,
    vms: Sequence[ClusterVm],
    stages: Sequence[ClusterStage],
    evidence: Evidence,
    opts: AnalysisOptions,
    passing: dict | None,
) -> None:
    """Fill the cluster cell's entry from its VMs' directories and the cell's job facts
    (`evidence`, gathered with the member VMs)."""
    found: dict[str, LogFindings] = {}
    members = []
    for name, m in evidence.members:
        vd = cd.vm_dir(name)
        f = LogFindings()
        if vd.output.is_dir():
            ctx = failure_context(cell, m.guest, opts.run_date)
            f = read_logs(vd.output, vd.rel / OUTPUT_DIR, ctx, opts.known, opts.tags, passing)
        found[name] = f
        members.append((name, replace(m, log_outcome=f.outcome, log_reason=f.reason)))
    evidence = replace(evidence, members=tuple(members))
    outcome, reason = derive(evidence)
    cell["outcome"], cell["reason"] = outcome.value, reason
    per_vm = {name: (o, r) for name, o, r in derive_members(evidence)}
    guests = {name: m.guest for name, m in evidence.members if m.guest is not None}

    cell["vms"] = [
        _vm_entry(cd.vm_dir(v.name), v, stages, guests.get(v.name), per_vm.get(v.name)) for v in vms
    ]
    _merge_logs(cell, found)
    _merge_guests(cell, [guests[n] for n, _ in evidence.members if n in guests], len(evidence.members))
    for name in per_vm:
        out_dir = cd.vm_dir(name).output
        if out_dir.is_dir():
            _merge_packages(cell, package_summary(out_dir, cell["packages"]))
            if cell["image"] is None:
                try:
                    stamp = image_stamp(read_text(out_dir / "environment.log", 1 << 20))
                except OSError:
                    stamp = {}
                if stamp:
                    cell["image"], cell["image_digest"] = stamp, stamp.get("inputs_hash")

    # The VM the reason names (the first with the cell's outcome) stands for the cell.
    lead = next((n for n, (o, _) in per_vm.items() if o is outcome), None)
    if lead in guests:
        cell["guest_status"], cell["exit_code"] = guests[lead].status, guests[lead].exit_code
    failed_logs = [
        s["log"] for v in cell["vms"] if v["name"] == lead for s in v["stages"] if s["status"] == "failed"
    ]
    mains = [found[lead].main] if lead in found else []
    mains += [f.main for f in found.values()]
    cell["logs"] = {
        "dir": str(cd.rel),
        "main": next((p for p in (*failed_logs, *mains) if p), None),
        "files": [],
    }


def _vm_entry(
    vd: CellDir,
    vm: ClusterVm,
    stages: Sequence[ClusterStage],
    guest: GuestResult | None,
    derived: tuple[Outcome, str] | None,
) -> dict:
    if derived is None:  # a network-booted VM without a result of its own
        return {
            "name": vm.name,
            "role": vm.role,
            "outcome": None,
            "reason": NETWORK_BOOT_REASON,
            "stages": [],
        }
    recorded = {s.name: s for s in guest.stages} if guest is not None else {}
    names = [s.name for s in stages]
    names += [n for n in recorded if n not in names]
    return {
        "name": vm.name,
        "role": vm.role,
        "outcome": derived[0].value,
        "reason": derived[1],
        "stages": [_stage_entry(vd, n, recorded.get(n)) for n in names],
    }


def _stage_entry(vd: CellDir, name: str, stage: Phase | None) -> dict:
    """A stage as the VM recorded it; all null when the VM left no record of it."""
    if stage is None:
        return {"name": name, "status": None, "exit_code": None, "start": None, "end": None, "log": None}
    return {
        "name": name,
        "status": stage.status,
        "exit_code": stage.exit_code,
        "start": stage.start,
        "end": stage.end,
        "log": _stage_log(vd, stage.log),
    }


def _stage_log(vd: CellDir, log: str | None) -> str | None:
    """The stage's log relative to the run directory, when the guest named a file of its
    output that is there (the guest wrote the name: nothing outside output/ is linked)."""
    if not log:
        return None
    rel = PurePosixPath(log)
    if rel.is_absolute() or ".." in rel.parts:
        return None
    path = vd.output / rel
    if path.is_symlink() or not path.is_file():
        return None
    return str(vd.rel / OUTPUT_DIR / rel)


def _merge_logs(cell: dict, found: dict[str, LogFindings]) -> None:
    """The VMs' osg-test findings, each failure with its VM's name; counts summed."""
    counts: dict[str, int] | None = None
    for name, f in found.items():
        cell["failures"] += [{**x, "vm": name} for x in f.failures]
        cell["bad_skips"] += [{**x, "vm": name} for x in f.bad_skips]
        cell["tests"] += f.tests
        for tag, n in f.ok_skips_by_tag.items():
            cell["ok_skips_by_tag"][tag] = cell["ok_skips_by_tag"].get(tag, 0) + n
        if f.counts is not None:
            counts = counts or dict(ZERO_COUNTS)
            for k, n in f.counts.items():
                counts[k] = counts.get(k, 0) + n
        cell["yum_timeout"] = cell["yum_timeout"] or f.yum_timeout
        cell["timeout"] = cell["timeout"] or f.timeout
    cell["counts"] = counts or dict(ZERO_COUNTS)


def _merge_guests(cell: dict, guests: list[GuestResult], members: int) -> None:
    """Phases: per phase the record of the VM that failed it, else of one that ran it.
    Durations: per phase the slowest VM. Started: the first VM's start; finished: the last
    VM's end, when every VM finished."""
    phases: dict[str, Phase] = {}
    took: dict[str, float] = {}
    for g in guests:
        for ph in g.phases:
            held = phases.get(ph.name)
            if held is None or _PHASE_RANK.get(ph.status or "", 0) > _PHASE_RANK.get(held.status or "", 0):
                phases[ph.name] = ph
        for name, seconds in durations(g).items():
            if name != "total":
                took[name] = max(took.get(name, seconds), seconds)
    cell["phases"] = [{"name": p.name, "status": p.status, "exit_code": p.exit_code} for p in phases.values()]
    started = [(t, g.started) for g in guests if (t := parse_time(g.started))]
    finished = [(t, g.finished) for g in guests if (t := parse_time(g.finished))]
    if started:
        cell["started"] = min(started)[1]
    if finished and len(finished) == members:
        cell["finished"] = max(finished)[1]
        if started:
            took["total"] = round((max(finished)[0] - min(started)[0]).total_seconds(), 1)
    cell["durations"] = took


def _merge_packages(cell: dict, summary: dict) -> None:
    for key in ("package_versions", "packages_installed"):
        cell[key].update({k: v for k, v in summary[key].items() if k not in cell[key]})
