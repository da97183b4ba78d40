"""The run-directory lock: one command at a time writes or deletes a run directory.

Who takes it: `run` (the local executor, for the whole run), `generate --force` and `rerun -o`
onto an existing directory (while they replace it), `submit` (while it submits), `cleanup`
(while it deletes). Anyone else finds the directory in use and is refused (UserError, exit 2)
with who holds it.

Two kinds of holder:

- a process on this machine: an exclusive `flock` on `RunDir.lock` for as long as it runs, with
  its pid, command, host and start time written into the file for the refusal message. The
  kernel drops the flock when the process dies, so a killed holder's lock is stale by
  construction: the next command finds the flock free and the old record (pid gone), says so
  and takes the lock over. The record is written into the locked file itself (never replaced
  by a rename, which would make a new, unlocked file).
- DAGMan: a run submitted to a schedd is in use while its DAGMan job is not finished. `submit`
  records the job in submission.json; the DAGMan job's own event log (`workflow.dag.dagman.log`,
  model.joblog) says when it ended. A DAG submitted by hand (`condor_submit_dag`) counts as
  running while DAGMan's own `workflow.dag.lock` is there and its metrics file is not.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from osgtest_dag.base.errors import UserError
from osgtest_dag.model.documents import Fields, check_document, dump_json, parse_json, read_json
from osgtest_dag.model.joblog import read_job_log
from osgtest_dag.model.rundir import OUTER_DAG, RunDir

log = logging.getLogger(__name__)

SCHEMA = "osgtest-dag/run-lock"
VERSION = 1


@dataclass(frozen=True)
class Holder:
    """Who has a run directory: a process (pid on host) or a DAGMan job (cluster on schedd)."""

    command: str
    host: str
    since: str
    pid: int | None = None
    cluster: int | None = None
    schedd: str | None = None

    def describe(self) -> str:
        who = f"pid {self.pid}" if self.pid is not None else f"DAGMan job {self.cluster} ({self.schedd})"
        return f"{who}, `{self.command}`, on {self.host} since {self.since}"

    def to_json(self) -> dict[str, object]:
        return {
            "schema": SCHEMA,
            "version": VERSION,
            "pid": self.pid,
            "command": self.command,
            "host": self.host,
            "since": self.since,
        }

    @classmethod
    def from_text(cls, text: str, where: str) -> Holder | None:
        """The record in a lock file; None when it is empty or unreadable (released, or written
        by a process killed mid-write)."""
        try:
            doc = check_document(parse_json(text, where), SCHEMA, VERSION, where)
            f = Fields(doc, where)
            return cls(
                command=f.text("command"),
                host=f.text("host"),
                since=f.text("since"),
                pid=_opt_integer(f, "pid"),
            )
        except UserError:
            return None

    @classmethod
    def this_process(cls, command: str) -> Holder:
        return cls(command=command, host=socket.gethostname(), since=_now(), pid=os.getpid())


class RunDirInUse(UserError):
    """Another command (or a DAGMan job) has the run directory."""

    def __init__(self, run: RunDir, holder: Holder, command: str) -> None:
        super().__init__(
            f"run directory in use by {holder.describe()}: `{command}` would change it under that run",
            where=run.path,
            hint="wait for it to finish (or stop it: `condor_rm` for a DAGMan job, Ctrl-C for a local run)",
        )
        self.holder = holder


def _opt_integer(f: Fields, key: str) -> int | None:
    return None if f.data.get(key) is None else f.integer(key)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dagman_holder(run: RunDir) -> Holder | None:
    """The DAGMan job running this directory, when there is one not yet finished."""
    since = dt.datetime.fromtimestamp(run.path.stat().st_mtime, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if run.submission.is_file():
        try:
            sub = Fields(read_json(run.submission), run.submission)
            cluster, schedd = _opt_integer(sub, "cluster"), sub.opt_text("schedd") or "the local schedd"
            since = sub.opt_text("submitted") or since
        except UserError:
            cluster, schedd = None, "an unknown schedd"
        jobs = read_job_log(run.dag_file(OUTER_DAG, ".dagman.log"))
        job = next((j for j in jobs if j.cluster == cluster), jobs[-1] if jobs else None)
        finished = job is not None and job.state.final
        if not finished and not run.dag_file(OUTER_DAG, ".metrics").is_file():
            return Holder(
                command="osgtest-dag submit",
                host=socket.gethostname(),
                since=since,
                cluster=cluster,
                schedd=schedd,
            )
        return None
    if run.dag_file(OUTER_DAG, ".lock").is_file() and not run.dag_file(OUTER_DAG, ".metrics").is_file():
        return Holder(
            command=f"condor_submit_dag {OUTER_DAG} (its {OUTER_DAG}.lock is there)",
            host="the schedd's host",
            since=since,
            schedd="unknown schedd",
        )
    return None


def _try_flock(f: IO[str]) -> bool:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


def holder(run: RunDir) -> Holder | None:
    """Who has the run directory now; None when nobody does (a look: takes nothing)."""
    if not run.lock.is_file():
        return dagman_holder(run)
    with open(run.lock) as f:  # read-only is enough for flock: a look needs no write access
        if not _try_flock(f):
            found = Holder.from_text(f.read(), str(run.lock))
            return found or Holder(command="unknown (lock record unreadable)", host="?", since="?")
        fcntl.flock(f, fcntl.LOCK_UN)
    return dagman_holder(run)


@contextlib.contextmanager
def locked(run: RunDir, command: str) -> Iterator[Holder]:
    """Hold the run directory for `command` (e.g. `osgtest-dag run`); RunDirInUse when another
    process or a DAGMan job has it. The directory must exist."""
    if not run.path.is_dir():
        raise UserError("not a directory", where=run.path)
    # Not O_TRUNC: the current holder's record must stay readable until we have the lock.
    try:
        f = open(run.lock, "a+")  # noqa: SIM115 (closed below, after the lock is dropped)
    except FileNotFoundError:
        raise UserError("the run directory was deleted", where=run.path) from None
    with f:
        f.seek(0)
        if not _try_flock(f):
            found = Holder.from_text(f.read(), str(run.lock))
            raise RunDirInUse(
                run, found or Holder(command="unknown (lock record unreadable)", host="?", since="?"), command
            )
        try:
            stale = Holder.from_text(f.read(), str(run.lock))
            if stale is not None:
                gone = (
                    stale.pid is not None and stale.host == socket.gethostname() and not _pid_alive(stale.pid)
                )
                log.warning(
                    "%s: taking over a stale lock of %s (%s)",
                    run.path,
                    stale.describe(),
                    "its process is gone" if gone else "it no longer holds the lock",
                )
            dagman = dagman_holder(run)
            if dagman is not None:
                raise RunDirInUse(run, dagman, command)
            me = Holder.this_process(command)
            f.seek(0)
            f.truncate()
            f.write(dump_json(me.to_json()))
            f.flush()
            try:
                yield me
            finally:
                # released: an empty file (a deleted run directory took the file with it)
                with contextlib.suppress(OSError):
                    f.seek(0)
                    f.truncate()
                    f.flush()
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
