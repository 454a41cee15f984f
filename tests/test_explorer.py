"""Every sequence of one future's messages and local events, through the race kit, on
a real ``TaskFuture`` on the in-memory transport (docs/race-kit.md).

The alphabet is every delivery of one future (``sent``, a result of each kind, a
confirm of each kind, ``cancel_timed_out``, ``connection_lost``) and ``cancel_all``
(the user's ``cancel(wait=False)``), judged by both layers with futurefsm's table.
Run with ``-s`` to see the counts.
"""

from __future__ import annotations

from typing import Any

from futurefsm.client.future import TaskFuture
from futurefsm.fsm import TRANSITION_TABLE, CancelOutcome, Cell, FutureState, Trigger
from futurefsm.testing import DEFAULT_ACTIONS, Move, TaskFutureRaceHarness, check_future, run_moves

ONE_FUTURE = tuple(a for a in DEFAULT_ACTIONS if a.kind == "deliver" and a.name != "disconnect")
BY_NAME = {a.name: a for a in DEFAULT_ACTIONS}


def test_the_alphabet_is_every_delivery_and_the_users_cancel() -> None:
    triggers = {a.trigger for a in ONE_FUTURE}
    assert triggers == {t.value for t in Trigger}


def test_every_sequence_of_one_future_keeps_the_table() -> None:
    report = check_future(
        TaskFutureRaceHarness,
        actions=ONE_FUTURE,
        futures=1,
        depth=5,
        random_runs=0,
        progress=None,
    )
    print(report.summary())
    assert report.findings == [], str(report)
    assert report.states_reached > 10 and report.sequences_run > 100


class _Recording(TaskFutureRaceHarness):
    """The harness, keeping every future it creates."""

    created: list[TaskFuture] = []

    def create(self) -> TaskFuture:
        future = super().create()
        self.created.append(future)
        return future


def test_the_race_this_project_exists_for() -> None:
    _Recording.created = []
    moves = [
        Move(BY_NAME["sent"], 0),
        Move(BY_NAME["cancel_all"]),
        Move(BY_NAME["result_success"], 0),
        Move(BY_NAME["confirm_canceled"], 0),
    ]
    assert run_moves(_Recording, moves, actions=ONE_FUTURE, futures=1) == []
    future = _Recording.created[-1]
    assert future.state is FutureState.CANCELLED
    assert future.cancel_outcome is CancelOutcome.RESULT_RACED
    assert [entry.trigger for entry in future.history] == [
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


def test_the_kit_finds_a_broken_future() -> None:
    report = check_future(
        lambda: TaskFutureRaceHarness(future_class=_LosesTheRacedResult),
        actions=ONE_FUTURE,
        futures=1,
        depth=3,
        random_runs=0,
        progress=None,
    )
    print(report)
    (finding,) = [f for f in report.findings if f.invariant.name == "contract_state"]
    assert [str(m) for m in finding.moves] == ["sent(f0)", "cancel_all", "result_success(f0)"]
    assert "is in cancel_requested, the contract says cancelled" in finding.message
    assert "path of f0 on the diagram" in finding.report
