"""One node of a DAG, as DAGMan runs it: PRE script, job, POST script, retried as its RETRY
says, with $JOB $RETURN $RETRY $MAX_RETRIES $JOBID $DAG_STATUS $FAILED_COUNT in the scripts'
arguments. PRE_SKIP skips the job and the POST script; SUBDAG EXTERNAL runs a whole DAG."""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path

from osgtest_dag.base.errors import UserError
from osgtest_dag.engine.local.context import Context, Interrupted
from osgtest_dag.engine.local.decide import Next, RetryRule, after_attempt
from osgtest_dag.engine.local.jobs import ForkedJob, Job, Output, ProcessJob
from osgtest_dag.engine.local.slots import JobSlot
from osgtest_dag.engine.local.state import Attempt, NodeStatus, StateFile
from osgtest_dag.engine.local.submit import read_job
from osgtest_dag.engine.local.transfer import TransferJob, transfers_files
from osgtest_dag.engine.local.vmjob import VmJob
from osgtest_dag.model import dagfile
from osgtest_dag.model.rundir import TEST_RUN, NodeName, RunDir

log = logging.getLogger(__name__)

# Told when a node's thread has finished: the node's name and, if its ABORT-DAG-ON matched,
# the DAG's return value.
NodeFinished = Callable[[str, int | None], None]


def substitute_macros(arg: str, macros: Mapping[str, str]) -> str:
    """DAGMan's $NAME macros in a script argument; unknown ones stay as they are."""
    return re.sub(r"\$(\w+)", lambda m: macros.get(m.group(1), m.group(0)), arg)


class NodeRunner:
    """Runs the nodes of one DAG, each in the thread the scheduler gives it."""

    def __init__(self, ctx: Context, dag: dagfile.Dag, state: StateFile, run_subdag: Callable[[Path], bool]):
        self.ctx, self.dag, self.state = ctx, dag, state
        self.dag_dir = dag.path.parent
        self.run_subdag = run_subdag

    def run(
        self,
        name: str,
        keys: list[str],
        on_finished: NodeFinished,
        dag_status: int = 0,
        failed_count: int = 0,
    ) -> None:
        """The node to its end, its state saved; `keys` are the slots the scheduler took for it."""
        abort = None
        st = self.state.node(name)
        slot = JobSlot(self.ctx.slots, keys)  # taken by the scheduler; the job gives it back
        try:
            abort = self._attempts(name, dag_status, failed_count, slot)
        except Interrupted:
            pass  # a sub-DAG stopped by Ctrl-C: the node stays to be run again
        except Exception as e:  # a bug or an environment problem: the node fails, the run goes on
            log.exception("node %s failed", name)
            st.status = NodeStatus.FAILED
            st.attempts.append(Attempt(retry=st.retries, started=time.time(), error=str(e)[:500]))
        finally:
            slot.release()
            if self.ctx.stop.is_set() and st.status is NodeStatus.RUNNING:
                st.status = NodeStatus.PENDING
            self.state.save()
            self.ctx.progress_update(self.dag.path, name, st.status.value)
            on_finished(name, abort)

    def _attempts(self, name: str, dag_status: int, failed_count: int, slot: JobSlot) -> int | None:
        """Attempts until the node is done or failed; ABORT-DAG-ON's return value, if it matched."""
        node = self.dag.nodes[name]
        st = self.state.node(name)
        rule = RetryRule.of(node)
        stop = self.ctx.stop
        self.ctx.progress_update(self.dag.path, name, NodeStatus.RUNNING.value)
        while True:
            attempt = Attempt(retry=st.retries, started=time.time())
            st.attempts.append(attempt)
            macros = {
                "JOB": name,
                "RETRY": str(st.retries),
                "MAX_RETRIES": str(node.retries),
                "DAG_STATUS": str(dag_status),
                "FAILED_COUNT": str(failed_count),
            }
            result: int | None = None
            skip_job = False
            if node.pre:
                pre_rc = self._script(node.pre, macros, f"{name}.pre")
                attempt.pre = pre_rc
                if node.pre_skip is not None and pre_rc == node.pre_skip:
                    skip_job, result = True, 0
                elif pre_rc != 0:
                    result = pre_rc
                    macros["PRE_SCRIPT_RETURN"] = str(pre_rc)
            if stop.is_set():
                return None
            job_rc = None
            if result is None and not skip_job:
                if not slot.take(stop):  # a retry waits for a slot again
                    return None
                if node.post and self._is_matrix_cell(name):
                    self.ctx.extractor.warm_up()  # its appliance starts while this VM boots
                try:
                    job_rc = self._job(node, macros, attempt)
                finally:
                    # As in DAGMan, MAXJOBS and -j count jobs, not POST scripts: the next VM
                    # boots while this one's POST script reads its disk.
                    slot.release()
                attempt.job = job_rc
                result = job_rc
            if job_rc is not None and node.post and not stop.is_set():
                self._read_result_ahead(name)
            if stop.is_set():
                return None
            if node.post and not skip_job:
                macros["RETURN"] = str(job_rc if job_rc is not None else result)
                result = self._script(node.post, macros, f"{name}.post")
                attempt.post = result
            assert result is not None  # from the POST script, the job or the PRE script
            attempt.ended = time.time()
            attempt.result = result
            verdict = after_attempt(rule, st.retries, result)
            if verdict.next is Next.RETRY:
                st.retries += 1
                self.state.save()
                log.info("node %s failed (%s): retry %d of %d", name, result, st.retries, node.retries)
                continue
            if verdict.next is Next.DONE:
                st.status = NodeStatus.DONE
            else:
                st.status = NodeStatus.FAILED
                st.stopped_by_unless_exit = verdict.stopped_by_unless_exit
            return verdict.abort_dag

    @staticmethod
    def _is_matrix_cell(name: str) -> bool:
        cell_node = NodeName.parse_or_none(name)
        return cell_node is not None and cell_node.layer == TEST_RUN

    def _read_result_ahead(self, name: str) -> None:
        """A matrix cell's VM ended with its result disk back: have it read, with the disks of
        VMs that end close to it, in one appliance, before its POST script reads it (which
        then uses that read: model/prefetch.py)."""
        if not self._is_matrix_cell(name):
            return
        cell = RunDir(self.dag_dir).cell(NodeName.parse(name).serial)
        if cell.result_disk.is_file():
            self.ctx.extractor.read_ahead(cell, self.ctx.stop)
        elif cell.vms_dir.is_dir():  # a cluster cell: its VMs' disks in one batch
            vms = [cell.vm_dir(d.name) for d in sorted(cell.vms_dir.iterdir()) if d.is_dir()]
            returned = [vm for vm in vms if vm.result_disk.is_file()]
            if returned:
                self.ctx.extractor.read_ahead_all(returned, self.ctx.stop)

    def _script(self, script: dagfile.Script, macros: dict, label: str) -> int:
        dag_dir = self.dag_dir
        args = [substitute_macros(a, macros) for a in script.arguments]
        exe = script.executable
        if not os.path.isabs(exe) and (dag_dir / exe).exists():
            exe = str(dag_dir / exe)  # DAGMan runs scripts from the DAG's directory
        argv = [exe, *args]
        logf = dag_dir / "logs" / f"{label}.log" if (dag_dir / "logs").is_dir() else dag_dir / f"{label}.log"
        with open(logf, "ab") as out:
            out.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {shlex.join(argv)}\n".encode())
            out.flush()
            return self._process(argv, dag_dir, out, out, {})

    def _process(
        self, argv: list[str], cwd: Path, stdout: Output, stderr: Output, env: Mapping[str, str]
    ) -> int:
        process = ProcessJob(argv, cwd=cwd, stdout=stdout, stderr=stderr, env=env, children=self.ctx.children)
        server = self.ctx.fork_server(argv)  # `osgtest-dag node ...`: forked, not started again
        job: Job = process if server is None else ForkedJob(server, process)
        return self.ctx.jobs.run(job)

    def _job(self, node: dagfile.Node, macros: dict, attempt: Attempt) -> int:
        if node.noop:
            return 0
        if node.kind == "subdag":
            assert node.dag_file is not None  # dagfile.parse sets it on every SUBDAG
            ok = self.run_subdag((self.dag_dir / node.dag_file).resolve())
            return 0 if ok else 1
        base = self.dag_dir / (node.dir or ".")
        assert node.submit_file is not None  # every JOB and FINAL has one
        spec = read_job(base / node.submit_file, node.vars, base, node_name=node.name)
        macros["JOBID"] = self.ctx.next_job_id()
        if spec.universe == "vm":
            vm_job = VmJob(
                spec,
                node,
                attempt,
                accel=self.ctx.accel,
                children=self.ctx.children,
                silent_limit_s=self.ctx.opts.silent_limit_s,
                on_phase=lambda phase: self.ctx.progress_phase(node.name, phase),
            )
            return self.ctx.jobs.run(vm_job)
        if spec.universe not in ("local", "vanilla", "scheduler"):
            raise UserError(f"node {node.name}: universe {spec.universe!r} cannot run locally")
        spec.initialdir.mkdir(parents=True, exist_ok=True)
        with ExitStack() as files:
            out = files.enter_context(open(spec.output, "ab")) if spec.output else subprocess.DEVNULL
            err = files.enter_context(open(spec.error, "ab")) if spec.error else subprocess.DEVNULL
            exe = spec.executable
            if exe and not os.path.isabs(exe) and (spec.initialdir / exe).exists():
                exe = str(spec.initialdir / exe)
            if transfers_files(spec):
                # the run's accelerator (KVM given up by a watchdog stays given up)
                env = {**spec.environment, "OSGTEST_DAG_ACCEL": self.ctx.accel.current()}
                job = TransferJob(
                    spec,
                    node.name,
                    [exe, *spec.arguments],
                    stdout=out,
                    stderr=err,
                    env=env,
                    children=self.ctx.children,
                )
                return self.ctx.jobs.run(job)
            return self._process([exe, *spec.arguments], spec.initialdir, out, err, spec.environment)
