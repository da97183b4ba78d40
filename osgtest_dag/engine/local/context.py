"""What one executor's DAG, its sub-DAGs and all their node threads share."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from osgtest_dag.base.errors import OsgtestDagError
from osgtest_dag.base.forkserver import ForkServer
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

        self._fork_servers: dict[str, ForkServer] = {}
        self._fork_lock = threading.Lock()

    def fork_server(self, argv: Sequence[str]) -> ForkServer | None:
        """The fork server (base/forkserver.py) for a job that runs `osgtest-dag node ...`: one
        per program, started at its first job; None for other programs, or with
        OSGTEST_DAG_FORK_SERVER=0 (every node a new process, as HTCondor starts them)."""
        if os.environ.get("OSGTEST_DAG_FORK_SERVER", "1") == "0":
            return None
        if len(argv) < 2 or argv[1] != "node" or os.path.basename(argv[0]) != "osgtest-dag":
            return None
        program = os.path.abspath(argv[0])
        with self._fork_lock:
            if program not in self._fork_servers:
                self._fork_servers[program] = ForkServer(
                    [program, "node", "fork-server"],
                    on_start=lambda server: self.children.add(
                        server.pid or 0, [server.process_name], Path.cwd()
                    ),
                )
            return self._fork_servers[program]

    def close(self) -> None:
        """End what the run started for itself: the read-ahead appliance, the fork servers."""
        self.extractor.close()
        with self._fork_lock:
            servers = list(self._fork_servers.values())
        for server in servers:
            server.close()

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
