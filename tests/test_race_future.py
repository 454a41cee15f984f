"""The race machine over ``TaskFuture`` on the in-memory transport (docs/race-kit.md).

User calls from several threads race inbound messages and local events; see
``futurefsm.testing.race`` for the rules and the invariants checked after every step.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from futurefsm import CancelOutcome, FutureState, TaskFuture
from futurefsm.fsm import Cell
from futurefsm.testing import FutureRaceMachine, Step, TaskFutureHarness, make_race_machine
from futurefsm.testing.budget import examples
from futurefsm.testing.invariants import InvariantViolation

# Up to three futures: concurrent.futures.wait/as_completed over several, callbacks
# that cancel a sibling, bulk expiry and connection loss.
FutureRaceMachine.TestCase.settings = settings(
    max_examples=examples(7), stateful_step_count=30, deadline=None
)
TestFutureRaceMachine = FutureRaceMachine.TestCase

# One future and longer runs: deeper histories of a single future (cancel, refusal,
# cancel again, duplicates) with more calls waiting on it at once.
SingleFutureRaceMachine = make_race_machine(max_futures=1, name="SingleFutureRaceMachine")
SingleFutureRaceMachine.TestCase.settings = settings(
    max_examples=examples(3), stateful_step_count=50, deadline=None
)
TestSingleFutureRaceMachine = SingleFutureRaceMachine.TestCase


# ---------------------------------------------------------------------------
# The burst rule judges a racing cancel(wait=False) by what it could have seen
# ---------------------------------------------------------------------------


class _SlowWindows(TaskFuture):
    """A correct TaskFuture whose races are made wide by sleeps: a cancel(wait=False)
    looks at the state 30 ms after its request, a cancel_failed confirm arrives 10 ms
    late, and a cancel(0) asks 100 ms late."""

    __slots__ = ()

    def _request_cancel(self, deadline: float, force: bool = True) -> None:
        if deadline <= time.monotonic():  # cancel(0): comes last
            time.sleep(0.1)
            super()._request_cancel(deadline, force)
        else:
            super()._request_cancel(deadline, force)
            time.sleep(0.03)  # then it reads the state the others left

    def recv_cancel_confirm(self, kind: str) -> Cell:
        time.sleep(0.01)
        return super().recv_cancel_confirm(kind)


@settings(max_examples=1, database=None, phases=[Phase.generate])
@given(st.none())
def test_a_cancel_that_saw_its_request_refused_may_return_false_in_a_burst(_: None) -> None:
    # cancel(wait=False) asks (cancel_requested); the refusal arrives (running); it looks
    # and returns False; cancel(0) asks again and times out (cancelled). A correct
    # future, so the burst must pass (it used to say "gave False in cancelled").
    machine = make_race_machine(
        lambda: TaskFutureHarness(future_class=_SlowWindows), max_futures=1, name="Slow"
    )()
    try:
        future = machine.first_future(sent=True)
        machine.burst(future, Step.CONFIRM_CANCEL_FAILED, cancellers=1, timing_out=True)
        snapshot = future.fut.snapshot()
        assert snapshot.state is FutureState.CANCELLED
        assert snapshot.cancel_outcome is CancelOutcome.TIMED_OUT
        assert future.fut.cancels_sent() == 2  # the refused request and cancel(0)'s
    finally:
        machine.teardown()


class _SaysTrueWhenDone(TaskFuture):
    """Broken: cancel(wait=False) on a finished future says True."""

    __slots__ = ()

    def cancel(
        self, timeout: float | None = None, *, wait: bool = True, force: bool = True
    ) -> bool:
        answer = super().cancel(timeout, wait=wait, force=force)
        return True if not wait else answer


@settings(max_examples=1, database=None, phases=[Phase.generate])
@given(st.none())
def test_a_racing_cancel_that_says_true_on_a_finished_future_is_caught(_: None) -> None:
    machine = make_race_machine(
        lambda: TaskFutureHarness(future_class=_SaysTrueWhenDone), max_futures=1, name="Liar"
    )()
    try:
        future = machine.first_future(sent=True)
        machine.deliver(future, Step.RESULT_SUCCESS, routed=False)
        with pytest.raises(InvariantViolation, match=r"racing cancel\(wait=False\) gave"):
            machine.burst(future, Step.CONFIRM_CANCELED, cancellers=2, timing_out=False)
    finally:
        machine.teardown()
