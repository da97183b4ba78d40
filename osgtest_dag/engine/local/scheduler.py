"""One DAG's run: each node starts when its parents are done and its slots are free, highest
PRIORITY first (then file order); a node whose parent failed never runs; ABORT-DAG-ON stops
the DAG; the FINAL node runs at the end whatever happened, and its result is the DAG's."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from osgtest_dag.engine.local.context import Context, Interrupted
from osgtest_dag.engine.local.decide import DagOutcome, Parent, Readiness, dag_outcome, readiness
from osgtest_dag.engine.local.noderun import NodeRunner
from osgtest_dag.engine.local.state import NodeStatus, StateFile
from osgtest_dag.engine.local.submit import quick_vm_count
from osgtest_dag.model import dagfile

if TYPE_CHECKING:  # the graph comes from dagfile, which imports networkx when it builds one
    import networkx as nx

log = logging.getLogger(__name__)


class DagScheduler:
    def __init__(self, ctx: Context, dag_path: Path):
        self.ctx = ctx
        self.dag_path = dag_path
        self.dag = dagfile.parse(dag_path)
        dagfile.check(self.dag)
        self.state = StateFile.for_dag(dag_path)
        self.nodes = NodeRunner(ctx, self.dag, self.state, run_subdag=self._run_subdag)
        self.running: dict[str, threading.Thread] = {}
        # Told by node threads (under _finished_lock): who finished, and ABORT-DAG-ON's value.
        self._finished_lock = threading.Lock()
        self._finished: list[str] = []
        self._aborted: int | None = None

    def _run_subdag(self, dag_path: Path) -> bool:
        return DagScheduler(self.ctx, dag_path).run()

    def run(self) -> bool:
        """Run the DAG to its end; True when it succeeded. Raises Interrupted on Ctrl-C."""
        graph = self.dag.graph()
        excluded = {n for n in self.ctx.opts.exclude_nodes if n in graph}
        pending = self._prepare(graph, excluded)
        self._schedule(graph, excluded, pending)
        for t in list(self.running.values()):
            t.join()
        self.state.save()
        if self.ctx.stop.is_set():
            raise Interrupted()
        outcome = dag_outcome((self.state.node(n).status for n in graph), self._aborted)
        if not self.dag.final:
            return outcome.ok
        return self._run_final(self.dag.final, outcome)

    def _prepare(self, graph: nx.DiGraph, excluded: set[str]) -> list[str]:
        """The nodes to run, in the DAG's order."""
        for st in self.state.nodes.values():  # a resumed run: redo what did not finish
            st.reset_for_resume()
        for name, node in self.dag.nodes.items():
            if node.done:
                self.state.node(name).status = NodeStatus.DONE
        progress = self.ctx.opts.progress
        if progress:
            progress.add_dag(
                self.dag_path, {n: self.state.node(n).status.value for n in graph if n not in excluded}
            )
        pending = [n for n in graph if n not in excluded and self.state.node(n).status is not NodeStatus.DONE]
        if pending and self.dag.final:
            self.state.node(self.dag.final).status = NodeStatus.PENDING  # runs after any new work
        return pending

    def _node_finished(self, name: str, abort: int | None) -> None:
        with self._finished_lock:
            self._finished.append(name)
            if abort is not None and self._aborted is None:
                self._aborted = abort
        with self.ctx.slots.cond:
            self.ctx.slots.cond.notify_all()

    def _parent(self, name: str, excluded: set[str]) -> Parent:
        st = self.state.node(name)
        return Parent(st.status, st.stopped_by_unless_exit, excluded=name in excluded)

    def _schedule(self, graph: nx.DiGraph, excluded: set[str], pending: list[str]) -> None:
        """Start nodes until every one is done, failed or futile (or Ctrl-C, or ABORT-DAG-ON)."""
        parents = {n: set(graph.predecessors(n)) for n in graph}
        order = {n: i for i, n in enumerate(self.dag.nodes)}
        slots = self.ctx.slots
        while not self.ctx.stop.is_set():
            with self._finished_lock:
                for name in self._finished:
                    self.running.pop(name, None)
                self._finished.clear()
                if self._aborted is not None:
                    break
            ready, futile = [], []
            for n in pending:
                r = readiness(self._parent(p, excluded) for p in parents[n])
                if r is Readiness.FUTILE:
                    futile.append(n)
                elif r is Readiness.READY:
                    ready.append(n)
            for n in futile:
                pending.remove(n)
                self.state.node(n).status = NodeStatus.FUTILE
                self.ctx.progress_update(self.dag_path, n, NodeStatus.FUTILE.value)
            ready.sort(key=lambda n: (-self.dag.nodes[n].priority, order[n]))
            for n in ready:
                keys = self._slot_keys(n)
                if not slots.try_take(keys):
                    continue
                pending.remove(n)
                self.state.node(n).status = NodeStatus.RUNNING
                t = threading.Thread(
                    target=self.nodes.run, args=(n, keys, self._node_finished), daemon=True, name=f"node-{n}"
                )
                self.running[n] = t
                t.start()
            if futile:
                continue  # descendants of what just became futile are futile too: look again
            if not self.running and not ready:
                break  # every node is done, failed or futile (or left out)
            with slots.cond:
                if not self._finished and not self.ctx.stop.is_set():
                    slots.cond.wait(timeout=1.0)

    def _run_final(self, name: str, outcome: DagOutcome) -> bool:
        final = self.state.node(name)
        if final.status is not NodeStatus.DONE:
            final.status, final.retries = NodeStatus.PENDING, 0
            keys = self._slot_keys(name)
            slots = self.ctx.slots
            while not slots.try_take(keys):
                with slots.cond:
                    slots.cond.wait(timeout=1.0)
            self.nodes.run(
                name,
                keys,
                lambda name, abort: None,
                dag_status=outcome.dag_status,
                failed_count=outcome.failed_count,
            )
            if self.ctx.stop.is_set():
                raise Interrupted()
        return final.status is NodeStatus.DONE

    def _slot_keys(self, name: str) -> list[str]:
        """The slots a node's job holds: its MAXJOBS category, and one VM slot per VM it runs
        (a cluster cell's job: several) or a local one."""
        node = self.dag.nodes[name]
        keys = []
        if node.category and node.category in self.dag.maxjobs:
            key = f"cat:{self.dag.path}:{node.category}"
            keys.append(key)
            self.ctx.slots.add_limit(key, self.dag.maxjobs[node.category])
        if node.kind == "subdag" or node.noop:
            return keys
        vms = quick_vm_count(self.dag.path.parent, node)
        keys += ["vm"] * vms if vms else ["local"]
        return keys
