"""What the executor runs, behind one protocol: a `Job` runs to its end and can be killed.

Three kinds: `ProcessJob` (a local/vanilla/scheduler-universe job, or a PRE/POST script),
`ForkedJob` (one of those that runs `osgtest-dag node ...`, forked by the run's fork server) and
`vmjob.VmJob` (a VM-universe job under qemu). `RunningJobs` holds the ones running now, so
that Ctrl-C stops each with its own `kill()`.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Protocol

from osgtest_dag.base import command
from osgtest_dag.base.errors import CommandError
from osgtest_dag.base.forkserver import ForkedCall, ForkServer
from osgtest_dag.engine.local.reaper import ChildRecord

log = logging.getLogger(__name__)

RETURN_REMOVED = -1004  # DAGMan's $RETURN for a job that was removed (aborted)
RETURN_SUBMIT_FAILED = -1002  # the job could not be started at all


class Job(Protocol):
    def run(self) -> int:
        """Run to the end; DAGMan's $RETURN (a signal's death: the negative signal number)."""
        ...

    def kill(self) -> None:
        """Stop the job from another thread; called before `run`, `run` starts nothing."""
        ...


class RunningJobs:
    """The jobs running now. `kill_all` (Ctrl-C) stops them and every job run after it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: set[Job] = set()
        self._stopped = False

    def run(self, job: Job) -> int:
        with self._lock:
            self._jobs.add(job)
            stopped = self._stopped
        if stopped:
            job.kill()
        try:
            return job.run()
        finally:
            with self._lock:
                self._jobs.discard(job)

    def kill_all(self) -> None:
        with self._lock:
            self._stopped = True
            jobs = list(self._jobs)
        for job in jobs:
            job.kill()


Output = IO[bytes] | int | None  # an open file, subprocess.DEVNULL, or inherited


class ProcessJob:
    """A program in its own process group; killing it sends SIGTERM to the group."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        stdout: Output,
        stderr: Output,
        env: Mapping[str, str],
        children: ChildRecord,
        die_with_parent: bool = False,
    ):
        self.argv, self.cwd, self.stdout, self.stderr = list(argv), cwd, stdout, stderr
        self.env, self.children = env, children
        self.die_with_parent = die_with_parent  # command.spawn's: the node thread waits on it
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._killed = False

    def run(self) -> int:
        with self._lock:
            if self._killed:
                return RETURN_SUBMIT_FAILED
            try:
                self._proc = command.spawn(
                    self.argv,
                    stdout=self.stdout,
                    stderr=self.stderr,
                    cwd=self.cwd,
                    env=self.env or None,
                    die_with_parent=self.die_with_parent,
                )
            except CommandError as e:
                log.error("%s", e)
                return RETURN_SUBMIT_FAILED
        self.children.add(self._proc.pid, self.argv, self.cwd)
        return self._proc.wait()

    def kill(self) -> None:
        with self._lock:
            self._killed = True
            proc = self._proc
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except OSError:
                pass


class ForkedJob:
    """A ProcessJob's program run as a child of a fork server (base/forkserver.py): the same
    argv, directory, environment and output files, without the interpreter's start-up. When the
    server cannot take it, the ProcessJob runs instead."""

    def __init__(self, server: ForkServer, process: ProcessJob):
        self.server, self.process = server, process
        self._lock = threading.Lock()
        self._call: ForkedCall | None = None
        self._killed = False

    def run(self) -> int:
        p = self.process
        with self._lock:
            if self._killed:
                return RETURN_SUBMIT_FAILED
            with open(os.devnull, "wb") as devnull:
                out, err = _descriptor(p.stdout, 1, devnull), _descriptor(p.stderr, 2, devnull)
                call = self._call = self.server.call(
                    p.argv, cwd=p.cwd, stdout=out, stderr=err, env=p.env or None
                )
        pid = call.wait_forked() if call else None
        if call is None or pid is None:
            return p.run()  # the server could not start, or went before forking it
        p.children.add(pid, [self.server.process_name], p.cwd)
        with self._lock:
            killed = self._killed
        if killed:
            call.kill()
        code = call.wait()
        return -signal.SIGKILL if code is None else code  # None: it went with its server

    def kill(self) -> None:
        with self._lock:
            self._killed = True
            call = self._call
        if call is not None:
            call.kill()
        self.process.kill()


def _descriptor(output: Output, inherited: int, devnull: IO[bytes]) -> int:
    """The file descriptor a ProcessJob's child would get for `output`."""
    if output is None:
        return inherited
    if output == subprocess.DEVNULL:
        return devnull.fileno()
    assert not isinstance(output, int)
    return output.fileno()
