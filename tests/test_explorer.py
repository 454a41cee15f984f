"""The exhaustive explorer: every sequence of one future's messages and local events,
run against a real ``TaskFuture`` on the in-memory transport (docs/race-kit.md).

The alphabet is all ten ``Step``s: ``sent``, ``user_cancel`` (``cancel(wait=False)``),
``TaskResult`` success / failed / worker_died, ``TaskCancelConfirm`` canceled /
not_found / cancel_failed, ``cancel_timed_out`` and ``connection_lost``. Run with
``-s`` to see the counts.
"""

from __future__ import annotations

import os
from typing import Any

from futurefsm.client.future import TaskFuture
from futurefsm.fsm import TRANSITION_TABLE, CancelOutcome, Cell, FutureState, Trigger
from futurefsm.testing import (
    EXPLORED_STEPS,
    RESULT_STEPS,
    Step,
    TaskFutureHarness,
    TaskFutureUnderTest,
    explore,
    run_sequence,
)

STEPS = len(EXPLORED_STEPS)
PRUNED_DEPTH = 12
# Without pruning, depth 5 runs 111,110 sequences (about 10 s); the thorough profile
# runs depth 6 (1,111,110 sequences, about 1.5 minutes).
UNPRUNED_DEPTH = 6 if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else 5


def covered(depth: int) -> int:
    """Sequences of length 1..depth over the alphabet."""
    return sum(STEPS**k for k in range(1, depth + 1))


def test_the_alphabet_is_every_step() -> None:
    assert STEPS == 10
    assert set(EXPLORED_STEPS) == set(Step)


def test_every_sequence_up_to_depth_12() -> None:
    report = explore(PRUNED_DEPTH)
    print(report.summary())
    assert report.violations == []
    assert report.sequences_covered == covered(PRUNED_DEPTH) == 1_111_111_111_110
    # Every cell of the table was fired in by some step.
    assert report.cells == set(TRANSITION_TABLE)


def test_every_sequence_without_pruning_reaches_the_same_states() -> None:
    full = explore(UNPRUNED_DEPTH, dedup=False)
    print(full.summary())
    assert full.violations == []
    assert full.sequences_run == full.sequences_covered == covered(UNPRUNED_DEPTH)
    assert full.steps_run == sum(k * STEPS**k for k in range(1, UNPRUNED_DEPTH + 1))
    # The pruning is sound here: it reaches exactly the states the full walk reaches.
    pruned = explore(UNPRUNED_DEPTH)
    assert pruned.keys == full.keys
    assert pruned.states_reached == full.states_reached
    assert pruned.sequences_run < full.sequences_run // 100


class _RecordingHarness(TaskFutureHarness):
    """The default harness, keeping every future it creates."""

    created: list[TaskFutureUnderTest] = []

    def create(self) -> TaskFutureUnderTest:
        fut = super().create()
        self.created.append(fut)
        return fut


def test_run_sequence_the_race_this_project_exists_for() -> None:
    _RecordingHarness.created = []
    run_sequence(
        [Step.SENT, Step.USER_CANCEL, Step.RESULT_SUCCESS, Step.CONFIRM_CANCELED],
        _RecordingHarness,
    )
    (fut,) = _RecordingHarness.created
    assert fut.future.state is FutureState.CANCELLED
    assert fut.future.cancel_outcome is CancelOutcome.RESULT_RACED
    assert [entry.trigger for entry in fut.future.history] == [
        Trigger.SENT,
        Trigger.USER_CANCEL,
        Trigger.RECV_RESULT,
        Trigger.RECV_CONFIRM_CANCELED,
    ]


class _LosesTheRacedResult(TaskFuture):
    """Broken on purpose: a result that races the cancel is silently dropped (it
    claims the cell of the table but never fires it)."""

    __slots__ = ()

    def recv_result(self, result: Any = None, exception: BaseException | None = None) -> Cell:
        if self.state is FutureState.CANCEL_REQUESTED:
            return TRANSITION_TABLE[FutureState.CANCEL_REQUESTED, Trigger.RECV_RESULT]
        return super().recv_result(result, exception)


def test_the_explorer_finds_a_broken_future() -> None:
    report = explore(
        3, harness_factory=lambda: TaskFutureHarness(future_class=_LosesTheRacedResult)
    )
    print(report.summary())
    print(report.violations[0])
    first = report.violations[0]
    assert first.sequence == (Step.SENT, Step.USER_CANCEL, Step.RESULT_SUCCESS)
    assert "is in cancel_requested, the table says cancelled" in first.error
    assert "history:" in first.report
    # Exactly the three races of a result with the cancel fail, whatever the status.
    assert {v.sequence for v in report.violations} == {
        (Step.SENT, Step.USER_CANCEL, step) for step in RESULT_STEPS
    }
