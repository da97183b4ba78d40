"""What one executor's DAG, its sub-DAGs and all their node threads share."""

from __future__ import annotations

import itertools
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from osgtest_dag.base.errors import OsgtestDagError
from osgtest_dag.engine.local.accel import RunAccel
from osgtest_dag.engine.local.extraction import BatchExtractor
from osgtest_dag.engine.local.jobs import RunningJobs
from osgtest_dag.engine.local.progress import Progress
from osgtest_dag.engine.local.reaper import ChildRecord
from osgtest_dag.engine.local.slots import Slots, default_jobs
from osgtest_dag.engine.local.vmjob import DEFAULT_SILENT_LIMIT_S


class Interrupted(OsgtestDagError):
    exit_code = 130

    def __init__(self):
        super().__init__("interrupted: running jobs were stopped; run again to finish the rest")


@dataclass
class Options:
    jobs: int = 0  # VMs at once; 0 = default_jobs()
    local_jobs: int = 0  # local processes at once; 0 = 2 x cores
    accel: str | None = None  # None: the KVM probe decides
    silent_limit_s: float = DEFAULT_SILENT_LIMIT_S  # a VM silent this long after its start hung
    exclude_nodes: frozenset = frozenset()  # nodes (and their descendants) left out (--only)
    progress: Progress | None = None


class Context:
    def __init__(self, opts: Options, children: ChildRecord):
        self.opts = opts
        self.slots = Slots(opts.jobs or default_jobs(), opts.local_jobs or 2 * (os.cpu_count() or 1))
        self.stop = threading.Event()  # Ctrl-C: start nothing more
        self.jobs = RunningJobs()  # ... and kill what runs
        self.children = children  # ... and what a `kill -9` would leave running
        self._job_ids = itertools.count(1)
        self.accel = RunAccel(opts.accel, on_change=opts.progress.note_accel if opts.progress else None)
        # result disks of VMs that end close together, read in one appliance for their POST scripts
        self.extractor = BatchExtractor(
            others_running=self.vms_running, standing_slots=self.slots.limits["vm"]
        )

    def vms_running(self) -> bool:
        with self.slots.cond:
            return self.slots.used.get("vm", 0) > 0

    def next_job_id(self) -> str:
        """$JOBID of the next job, as HTCondor numbers them (cluster.proc.subproc)."""
        return f"{next(self._job_ids)}.0.0"

    def progress_update(self, dag_path: Path, node: str, status: str) -> None:
        if self.opts.progress:
            self.opts.progress.update(dag_path, node, status)

    def progress_phase(self, node: str, phase: str | None) -> None:
        if self.opts.progress:
            self.opts.progress.phase(node, phase)
