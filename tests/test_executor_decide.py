"""The local executor's DAGMan decisions, as tables: what follows an attempt (RETRY,
UNLESS-EXIT, ABORT-DAG-ON), when a node is ready or futile, and the FINAL node's $DAG_STATUS.
The DAG-level tests (test_executor.py, and the recorded real-DAGMan states) check the same
rules end to end; these pin each rule down on its own."""

from __future__ import annotations

import pytest

from osgtest_dag.engine.local.decide import (
    Next,
    Parent,
    Readiness,
    RetryRule,
    Verdict,
    after_attempt,
    dag_outcome,
    readiness,
)
from osgtest_dag.engine.local.state import NodeStatus
from osgtest_dag.model import dagfile

DONE, RETRY, FAILED = Next.DONE, Next.RETRY, Next.FAILED
S = NodeStatus

# (rule, retries done, result) -> verdict
AFTER_ATTEMPT = [
    (RetryRule(), 0, 0, Verdict(DONE)),
    (RetryRule(), 0, 1, Verdict(FAILED, stopped_by_unless_exit=False)),
    (RetryRule(max_retries=2), 0, 1, Verdict(RETRY)),
    (RetryRule(max_retries=2), 1, 1, Verdict(RETRY)),
    (RetryRule(max_retries=2), 2, 1, Verdict(FAILED, stopped_by_unless_exit=False)),
    (RetryRule(max_retries=2), 1, 0, Verdict(DONE)),
    (RetryRule(max_retries=2), 0, -1004, Verdict(RETRY)),  # removed (timed out): retried
    (RetryRule(max_retries=2), 0, -9, Verdict(RETRY)),  # killed by a signal
    # UNLESS-EXIT: that exit value stops the retries, others are retried
    (RetryRule(max_retries=2, unless_exit=2), 0, 2, Verdict(FAILED, stopped_by_unless_exit=True)),
    (RetryRule(max_retries=2, unless_exit=2), 2, 2, Verdict(FAILED, stopped_by_unless_exit=True)),
    (RetryRule(max_retries=2, unless_exit=2), 0, 1, Verdict(RETRY)),
    (RetryRule(max_retries=2, unless_exit=2), 2, 1, Verdict(FAILED, stopped_by_unless_exit=False)),
    (RetryRule(max_retries=2, unless_exit=0), 0, 0, Verdict(DONE)),  # success is success
    # ABORT-DAG-ON: that value ends the DAG, retries left or not, with RETURN's value or its own
    (RetryRule(max_retries=2, abort_on=(3, None)), 0, 3, Verdict(FAILED, abort_dag=3)),
    (RetryRule(max_retries=2, abort_on=(3, 7)), 0, 3, Verdict(FAILED, abort_dag=7)),
    (RetryRule(abort_on=(0, 5)), 0, 0, Verdict(DONE, abort_dag=5)),  # even on success
    (RetryRule(abort_on=(3, 0)), 0, 3, Verdict(FAILED, abort_dag=0)),  # RETURN 0 is a value
    (RetryRule(max_retries=2, abort_on=(3, None)), 0, 1, Verdict(RETRY)),
    (RetryRule(max_retries=2, unless_exit=3, abort_on=(3, None)), 0, 3, Verdict(FAILED, abort_dag=3)),
]


@pytest.mark.parametrize("rule, retries_done, result, verdict", AFTER_ATTEMPT)
def test_after_attempt(rule, retries_done, result, verdict):
    assert after_attempt(rule, retries_done, result) == verdict


def P(status: NodeStatus, stopped: bool | None = None, excluded: bool = False) -> Parent:
    return Parent(status, stopped, excluded)


READINESS = [
    ([], Readiness.READY),
    ([P(S.DONE), P(S.DONE)], Readiness.READY),
    ([P(S.DONE), P(S.PENDING)], Readiness.WAITING),
    ([P(S.RUNNING)], Readiness.WAITING),
    ([P(S.PENDING, excluded=True), P(S.DONE)], Readiness.READY),  # left out by --only
    ([P(S.FAILED, stopped=False)], Readiness.FUTILE),  # out of retries
    ([P(S.FAILED, stopped=None)], Readiness.FUTILE),  # failed by an exception
    ([P(S.FUTILE)], Readiness.FUTILE),  # futility spreads down
    ([P(S.FAILED, stopped=True)], Readiness.WAITING),  # UNLESS-EXIT: never ready
    ([P(S.FAILED, stopped=True), P(S.DONE)], Readiness.WAITING),
    ([P(S.FAILED, stopped=True), P(S.FAILED, stopped=False)], Readiness.FUTILE),
    ([P(S.FAILED, stopped=True), P(S.FUTILE)], Readiness.FUTILE),
    ([P(S.FAILED, stopped=False), P(S.RUNNING)], Readiness.FUTILE),  # no need to wait
]


@pytest.mark.parametrize("parents, expected", READINESS)
def test_readiness(parents, expected):
    assert readiness(iter(parents)) is expected


# (node statuses, aborted) -> (ok, $DAG_STATUS, $FAILED_COUNT)
DAG_OUTCOME = [
    ([], None, (True, 0, 0)),
    ([S.DONE, S.DONE], None, (True, 0, 0)),
    ([S.DONE, S.FAILED], None, (False, 1, 1)),
    ([S.DONE, S.FUTILE], None, (False, 1, 0)),
    ([S.FAILED, S.PENDING], None, (False, 1, 1)),  # UNLESS-EXIT: its children stay pending
    ([S.DONE, S.DONE], 0, (False, 2, 0)),  # ABORT-DAG-ON, even with RETURN 0
    ([S.FAILED, S.FAILED, S.FUTILE, S.PENDING], 3, (False, 2, 2)),
]


@pytest.mark.parametrize("statuses, aborted, expected", DAG_OUTCOME)
def test_dag_outcome(statuses, aborted, expected):
    out = dag_outcome(iter(statuses), aborted)
    assert (out.ok, out.dag_status, out.failed_count) == expected


def test_retry_rule_from_the_dag_file(tmp_path):
    (tmp_path / "d.dag").write_text(
        "JOB A a.sub\nRETRY A 3 UNLESS-EXIT 2\nABORT-DAG-ON A 4 RETURN 9\n"
        "JOB B b.sub\nABORT-DAG-ON B 5\nJOB C c.sub\n"
    )
    nodes = dagfile.parse(tmp_path / "d.dag").nodes
    assert RetryRule.of(nodes["A"]) == RetryRule(max_retries=3, unless_exit=2, abort_on=(4, 9))
    assert RetryRule.of(nodes["B"]) == RetryRule(abort_on=(5, None))
    assert RetryRule.of(nodes["C"]) == RetryRule()
