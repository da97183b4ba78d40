"""The DAG's nodes for a cluster cell (docs/clusters.md), and the entry points that take any
cell: CreateDisk makes one IO disk per VM, the POST script reads every VM's returned disk (the
local executor's read-ahead of them, else in one libguestfs appliance) and decides for the
cell, ProcessResult re-reads what is stale.

A cluster cell's POST decision is the worst of its VMs' (each classified as a one-VM cell's
disk is, with the runner's record of that VM as its local VM record): a VM worth another
attempt makes the whole cluster run again, since its VMs only mean something together.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from osgtest_dag.analyze.extract import ExtractJob, extract_disks
from osgtest_dag.base.atomic import write_json_atomic
from osgtest_dag.base.errors import UserError
from osgtest_dag.generate import cellconfig
from osgtest_dag.generate.inputs import write_cell_io_disk
from osgtest_dag.generate.workflow import POST_INFRA_RETRY
from osgtest_dag.guest.iodisk import make_scratch_disk
from osgtest_dag.model.cell import CellConfig
from osgtest_dag.model.cluster import ClusterRunRecord
from osgtest_dag.model.documents import PostDecision, PostHistory, Verdict, read_json
from osgtest_dag.model.rundir import TEST_RUN, CellDir, NodeName, RunDir
from osgtest_dag.nodes import node

log = logging.getLogger(__name__)

# Worst first: what the cell's decision is when its VMs' differ.
_VERDICT_ORDER = (Verdict.INFRA_FATAL, Verdict.INFRA, Verdict.TIMEOUT, Verdict.DONE)


def create_io_disk(run_dir: Path, serial: str, offset: int | None = None) -> list[Path]:
    """The CreateDisk node of any cell: its directory, cell.json and IO disk, or one IO disk
    per VM of a cluster cell (in vms/<vm>/); and scratch disks where the VMs' disks are larger
    than their image."""
    cfg = cellconfig.read_cell(run_dir, serial, offset)
    if cfg.cluster is None:
        return [node.create_io_disk(run_dir, serial, offset)]
    cell = RunDir(run_dir).cell(serial)
    cell.path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cell.config, cfg.to_json())
    disks = []
    for vm in cfg.cluster_vms():
        vm_dir = cell.vm_dir(vm.name)
        vm_dir.path.mkdir(parents=True, exist_ok=True)
        if cfg.vm_scratch_mb(vm):
            make_scratch_disk(vm_dir.scratch_disk, cfg.vm_scratch_mb(vm))
        if not vm.network_boot:
            disks.append(write_cell_io_disk(run_dir, cfg, vm_dir.io_disk, vm=vm))
    return disks


def post_vm(run_dir: Path, node_name: str, returncode: int, retry: int, max_retries: int) -> int:
    """The TestRun node's POST script for any cell (node.post_vm for a one-VM cell)."""
    name = NodeName.parse(node_name)
    if name.layer != TEST_RUN:
        raise UserError(f"post-vm is the POST script of a {TEST_RUN} node, not of {node_name}")
    cell = node.cell_dir(run_dir, name.serial)
    cfg = CellConfig.read(cell.config)
    if cfg.cluster is None:
        return node.post_vm(run_dir, node_name, returncode, retry, max_retries)
    stamp: dict[str, Any] = {
        "attempt": retry,
        "max_retries": max_retries,
        "job_exit": returncode,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    decision = _post_cluster(cell, cfg, retry, stamp)
    history = PostHistory.read(cell.post_vm).appended(decision)
    write_json_atomic(cell.post_vm, history.to_json())
    log.info(
        "cluster cell %s attempt %s: %s (%s)", cell.serial, retry, decision.verdict.value, decision.reason
    )
    return decision.exit


def _post_cluster(cell: CellDir, cfg: CellConfig, retry: int, stamp: dict) -> PostDecision:
    try:
        record = ClusterRunRecord.read(cell.cluster_record)
    except UserError as e:
        record = None
        log.warning("cell %s: %s", cell.serial, e)
    vms = [vm for vm in cfg.cluster_vms() if not vm.network_boot]
    staging: dict[str, Path] = {}
    reports: dict[str, dict] = {}
    jobs: list[tuple[str, ExtractJob]] = []
    for vm in vms:
        vm_dir = cell.vm_dir(vm.name)
        if vm_dir.result_disk.is_file():
            staging[vm.name] = Path(tempfile.mkdtemp(prefix=".post-output.", dir=vm_dir.path))
            # the local executor's read-ahead of the disk, when whole and of the disk as it is
            ahead = node.take_prefetched(vm_dir, vm_dir.result_disk, staging[vm.name])
            if ahead is not None:
                reports[vm.name] = ahead[2]
            else:
                jobs.append((vm.name, ExtractJob(vm_dir.result_disk, staging[vm.name] / "output")))
    if jobs:  # the rest in one appliance
        reports.update(zip([n for n, _ in jobs], extract_disks([j for _, j in jobs]), strict=True))
    decisions: list[tuple[str, Verdict, str, int]] = []
    first_result = None
    try:
        for vm in vms:
            vm_dir = cell.vm_dir(vm.name)
            vm_record = record.vm(vm.name) if record else None
            report = reports.get(vm.name)
            if report is None:
                verdict, reason, code = Verdict.INFRA, "no result disk came back", POST_INFRA_RETRY
                if vm_record and vm_record.timed_out:
                    verdict = Verdict.TIMEOUT
                    reason = f"VM killed at its wall-clock limit after {vm_record.wall_s or 0:.0f} s"
                decisions.append((vm.name, verdict, reason, code))
                continue
            if not report["ok"]:
                reason = f"result disk unreadable: {str(report['error'])[:300]}"
                decisions.append((vm.name, Verdict.INFRA, reason, POST_INFRA_RETRY))
                continue
            out = staging[vm.name] / "output"
            result = node.guest_result_in(out)
            verdict, reason, code = node.classify(result, vm_record)
            first_result = first_result or result
            node.stamp_source(out, vm_dir.result_disk)
            keep = vm_dir.output if code == 0 else vm_dir.attempt_output(retry)
            keep_report = vm_dir.extraction if code == 0 else vm_dir.attempt_extraction(retry)
            keep.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(keep, ignore_errors=True)
            os.rename(out, keep)
            write_json_atomic(keep_report, report)
            decisions.append((vm.name, verdict, reason, code))
    finally:
        for tmp in staging.values():
            shutil.rmtree(tmp, ignore_errors=True)
    worst = min(decisions, key=lambda d: (_VERDICT_ORDER.index(d[1]), -d[3]))
    failing = [d for d in decisions if d[3] != 0 or d[1] is not Verdict.DONE]
    reason = "; ".join(f"{name}: {why}" for name, _, why, _ in (failing or decisions))
    return PostDecision(
        **stamp,
        verdict=worst[1],
        reason=reason[:1000],
        exit=max(d[3] for d in decisions),
        guest_status=first_result.status if first_result else None,
        guest_exit_code=first_result.exit_code if first_result else None,
    )


def process_result(run_dir: Path, serial: str) -> dict:
    """The ProcessResult node of any cell. A cluster cell's VMs were read by the POST script;
    a VM whose output/ is not of its disk as it is now is read again."""
    cell = node.cell_dir(run_dir, serial)
    cfg = CellConfig.read(cell.config)
    if cfg.cluster is None:
        return node.process_result(run_dir, serial)
    for vm in cfg.cluster_vms():
        vm_dir = cell.vm_dir(vm.name)
        disk = vm_dir.result_disk
        if not disk.is_file():
            continue
        stamp = vm_dir.source_stamp
        if stamp.is_file() and read_json(stamp) == node.disk_stamp(disk):
            continue
        tmp = Path(tempfile.mkdtemp(prefix=".output.", dir=vm_dir.path))
        try:
            extracted, _, report = node.read_guest_result(disk, tmp)
            node.stamp_source(extracted, disk)
            write_json_atomic(vm_dir.extraction, report)
            shutil.rmtree(vm_dir.output, ignore_errors=True)
            os.rename(extracted, vm_dir.output)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return node.cell_summary(run_dir, serial)
