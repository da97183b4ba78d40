"""DAGMan's decisions, as pure functions: what follows a node's attempt (RETRY, UNLESS-EXIT,
ABORT-DAG-ON), whether a node can run (futility), and how the DAG ended (the FINAL node's
$DAG_STATUS). No threads, no files: tests/test_executor_decide.py tabulates them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from osgtest_dag.engine.local.state import NodeStatus
from osgtest_dag.model import dagfile


@dataclass(frozen=True)
class RetryRule:
    """A node's RETRY n [UNLESS-EXIT v] and ABORT-DAG-ON v [RETURN r]."""

    max_retries: int = 0
    unless_exit: int | None = None
    abort_on: tuple[int, int | None] | None = None  # (exit value, DAG's return value or None)

    @classmethod
    def of(cls, node: dagfile.Node) -> RetryRule:
        return cls(max_retries=node.retries, unless_exit=node.retry_unless_exit, abort_on=node.abort_on)


class Next(Enum):
    DONE = "done"
    RETRY = "retry"
    FAILED = "failed"


@dataclass(frozen=True)
class Verdict:
    next: Next
    abort_dag: int | None = None  # ABORT-DAG-ON matched: the DAG's return value
    stopped_by_unless_exit: bool | None = None  # for a failure: UNLESS-EXIT stopped the retries


def after_attempt(rule: RetryRule, retries_done: int, result: int) -> Verdict:
    """What follows an attempt that ended with `result` (the POST script's exit, else the
    job's, else the PRE script's), after `retries_done` retries."""
    if rule.abort_on is not None and result == rule.abort_on[0]:
        dag_return = rule.abort_on[1]
        return Verdict(
            Next.DONE if result == 0 else Next.FAILED,
            abort_dag=dag_return if dag_return is not None else result,
        )
    if result == 0:
        return Verdict(Next.DONE)
    stopped = rule.unless_exit is not None and result == rule.unless_exit
    if retries_done < rule.max_retries and not stopped:
        return Verdict(Next.RETRY)
    return Verdict(Next.FAILED, stopped_by_unless_exit=stopped)


@dataclass(frozen=True)
class Parent:
    """What readiness needs to know of one parent node."""

    status: NodeStatus
    stopped_by_unless_exit: bool | None = None
    excluded: bool = False  # left out of this run (--only): counts as done


class Readiness(Enum):
    READY = "ready"
    WAITING = "waiting"
    FUTILE = "futile"


def readiness(parents: Iterable[Parent]) -> Readiness:
    """A node is ready when every parent is done; futile when a parent failed for good.

    DAGMan (measured on 23.9): descendants of a node that ran out of retries become futile;
    those of a node stopped by UNLESS-EXIT stay "not ready" (WAITING) for ever."""
    parents = list(parents)
    failed = [p for p in parents if p.status in (NodeStatus.FAILED, NodeStatus.FUTILE)]
    if any(not p.stopped_by_unless_exit for p in failed):
        return Readiness.FUTILE
    if failed:
        return Readiness.WAITING
    if all(p.excluded or p.status is NodeStatus.DONE for p in parents):
        return Readiness.READY
    return Readiness.WAITING


@dataclass(frozen=True)
class DagOutcome:
    ok: bool  # without a FINAL node, the DAG's result
    dag_status: int  # the FINAL node's $DAG_STATUS: 0 ok, 1 a node failed, 2 aborted
    failed_count: int  # the FINAL node's $FAILED_COUNT


def dag_outcome(statuses: Iterable[NodeStatus], aborted: int | None) -> DagOutcome:
    """How the DAG's nodes (the FINAL node apart) ended, and `aborted` by ABORT-DAG-ON."""
    statuses = list(statuses)
    failed = statuses.count(NodeStatus.FAILED)
    ok = not failed and NodeStatus.FUTILE not in statuses and aborted is None
    return DagOutcome(ok=ok, dag_status=0 if ok else (2 if aborted is not None else 1), failed_count=failed)
