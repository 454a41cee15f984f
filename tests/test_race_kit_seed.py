"""The race kit on the style of future this project exists for, with bugs planted.

``SeedFuture`` follows futurefsm's table (``Contract.futurefsm()``) but is written here
from scratch, as a user of the kit would write theirs: ``cancel()`` and
``cancelled()`` wait for the scheduler's answer, except on the client's I/O thread
and in a done-callback. Two harnesses: one tells the client that the kit's
delivering thread is its I/O thread (``attach_delivering_thread``), one does not
(the client's I/O thread is its own; the kit's deliveries come from elsewhere).

The correct future gets no finding from either: the kit's own reads never block it,
a call waiting for an answer is parked and resumed by later deliveries, and a
callback that cancels another future is watched until that one is answered. Each
planted bug is found; planted together, each is reported separately, with its own
shortest sequence, two of them with the same symptom on different paths.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from concurrent.futures import _base
from typing import Any

import pytest

from futurefsm.errors import ConnectionLostError
from futurefsm.testing import (
    DEFAULT_ACTIONS,
    Contract,
    Move,
    RaceHarness,
    RaceReport,
    Unsupported,
    check_future,
    run_moves,
)

TABLE = Contract.futurefsm()
ACTIONS = {a.name: a for a in DEFAULT_ACTIONS}
_in_callback = threading.local()


def _depth() -> int:
    return getattr(_in_callback, "depth", 0)


class SeedClient:
    """The client: its futures, the TaskCancels it sent, and its I/O thread."""

    def __init__(self) -> None:
        self.futures: list[SeedFuture] = []
        self.cancels: list[SeedFuture] = []
        self.io_thread: threading.Thread | None = None
        self.closed = False

    def on_io_thread(self) -> bool:
        return threading.current_thread() is self.io_thread


class SeedFuture(cf.Future):  # type: ignore[type-arg]
    """futurefsm's table, one state, the stdlib's view mirrored on every move."""

    def __init__(self, client: SeedClient) -> None:
        super().__init__()
        self.client = client
        self.state = TABLE.initial
        # cancel()/cancelled() wait here for a cancel's answer, not on _condition:
        # the stdlib's result() takes any notify of _condition for the end.
        self.answered = threading.Condition(self._condition)

    # ---------------------------------------------------------------- the machine

    def fire(self, trigger: str, result: Any = None, exception: Any = None) -> None:
        with self._condition:
            source = self.state
            dest = self.dest(source, trigger)
            if dest == source:
                return
            self.state = dest
            if dest == "cancel_requested" and trigger == "user_cancel":
                self.client.cancels.append(self)
            self.enter(source, dest, trigger, result, exception)
        if dest in TABLE.terminal:
            self.run_callbacks(trigger)

    def dest(self, source: str, trigger: str) -> str:
        return TABLE.fire(source, trigger)

    def enter(self, source: str, dest: str, trigger: str, result: Any, exception: Any) -> None:
        """Mirror the stdlib's state and wake whoever waits (the lock is held)."""
        if source == "cancel_requested":
            self.answered.notify_all()
        if dest in ("running", "cancel_requested"):
            self._state = _base.RUNNING
        elif dest == "cancelled":
            self._state = _base.CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
        elif dest == "done":
            if trigger == "connection_lost":
                exception = ConnectionLostError("the connection is lost")
            self._result, self._exception = result, exception
            self._state = _base.FINISHED
            for waiter in self._waiters:
                (waiter.add_exception if exception is not None else waiter.add_result)(self)
        if dest in TABLE.terminal:
            self._condition.notify_all()

    def run_callbacks(self, trigger: str) -> None:
        _in_callback.depth = _depth() + 1
        try:
            self._invoke_callbacks()
        finally:
            _in_callback.depth -= 1

    def add_done_callback(self, fn: Any) -> None:
        _in_callback.depth = _depth() + 1
        try:
            super().add_done_callback(fn)
        finally:
            _in_callback.depth -= 1

    # ---------------------------------------------------------------- the user API

    def must_not_block(self) -> bool:
        return self.client.on_io_thread() or _depth() > 0

    def cancel(self) -> bool:
        if self.state == "done":
            return False
        self.fire("user_cancel")
        if self.must_not_block():
            return self.state in ("cancelled", "cancel_requested")
        return self.wait_for_answer()

    def cancelled(self) -> bool:
        if self.state == "cancel_requested" and not self.must_not_block():
            return self.wait_for_answer()
        return self.state == "cancelled"

    def wait_for_answer(self) -> bool:
        with self._condition:
            while self.state == "cancel_requested" and not self.client.closed:
                self.answered.wait()
            return self.state == "cancelled"


class SeedHarness(RaceHarness):
    """The client's I/O thread is its own: the kit's delivering thread is not it."""

    future_class: type[SeedFuture] = SeedFuture

    def __init__(self) -> None:
        self.client = SeedClient()

    def create(self) -> SeedFuture:
        future = self.future_class(self.client)
        self.client.futures.append(future)
        return future

    def deliver(self, action: str, future: Any, payload: Any) -> None:
        if action == "result_success":
            future.fire("recv_result", result=payload)
        elif action == "result_failed":
            future.fire("recv_result", exception=payload)
        elif action.startswith("confirm_"):
            future.fire("recv_" + action)
        elif action in ("sent", "cancel_timed_out", "connection_lost"):
            future.fire(action)
        elif action == "disconnect":
            for live in self.client.futures:
                live.fire("connection_lost")
        elif action == "cancel_all":
            for live in self.client.futures:
                live.fire("user_cancel")
        else:
            raise Unsupported(action)

    def state(self, future: SeedFuture) -> str:
        return future.state

    def close(self) -> None:
        self.client.closed = True
        for future in self.client.futures:
            future.fire("connection_lost")
            with future._condition:
                future.answered.notify_all()


class AttachedSeedHarness(SeedHarness):
    """The kit's delivering thread is the client's I/O thread."""

    def attach_delivering_thread(self, thread: threading.Thread) -> None:
        self.client.io_thread = thread


# ---------------------------------------------------------------------------
# Planted bugs
# ---------------------------------------------------------------------------


class ForgetsTheIOThread(SeedFuture):
    """cancelled() waits for the answer on the I/O thread too: the thread that would
    deliver it."""

    def must_not_block(self) -> bool:
        return _depth() > 0


class RefusalWakesNobody(SeedFuture):
    """A refused cancel (cancel_failed) puts the future back to running without
    waking the cancel() waiting for that answer."""

    def enter(self, source: str, dest: str, trigger: str, result: Any, exception: Any) -> None:
        if trigger == "recv_confirm_cancel_failed":
            return  # (and the stdlib's _state is RUNNING already)
        super().enter(source, dest, trigger, result, exception)


class RacedResultWins(SeedFuture):
    """A result that arrives while a cancel is in flight finishes the future (the
    table says the cancel wins: cancelled, result raced)."""

    def dest(self, source: str, trigger: str) -> str:
        if (source, trigger) == ("cancel_requested", "recv_result"):
            return "done"
        return super().dest(source, trigger)


class CallbacksTwiceOnResult(SeedFuture):
    """Done-callbacks run twice when a result finishes the future."""

    def run_callbacks(self, trigger: str) -> None:
        super().run_callbacks(trigger)
        if trigger == "recv_result":
            super().run_callbacks(trigger)


class CallbacksTwiceOnConfirm(SeedFuture):
    """Done-callbacks run twice when a confirmed cancel ends the future."""

    def run_callbacks(self, trigger: str) -> None:
        super().run_callbacks(trigger)
        if trigger == "recv_confirm_canceled":
            super().run_callbacks(trigger)


class WaitsInCallbacks(SeedFuture):
    """cancel() waits for the answer in a done-callback too (not a bug on a user
    thread: it is resumed once the other future is answered)."""

    def must_not_block(self) -> bool:
        return self.client.on_io_thread()


def _harness(future_class: type[SeedFuture], base: type[SeedHarness] = SeedHarness) -> Any:
    return type(
        f"{base.__name__}Of{future_class.__name__}", (base,), {"future_class": future_class}
    )


def _check(harness: Any, **options: Any) -> RaceReport:
    options = {"contract": TABLE, "futures": 2, "depth": 3, "random_runs": 0, **options}
    report = check_future(harness, progress=None, **options)
    print(report.summary())
    return report


def _moves(*steps: tuple[str, int] | tuple[str, int, int]) -> list[Move]:
    return [Move(ACTIONS[step[0]], *step[1:]) for step in steps]


# ---------------------------------------------------------------------------
# No false finding
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("harness", [SeedHarness, AttachedSeedHarness])
def test_the_seed_future_gets_no_finding(harness: Any) -> None:
    report = _check(harness, futures=1, depth=4)
    assert report.findings == [], str(report)
    report = _check(harness, depth=2, random_runs=60, max_steps=8)
    assert report.findings == [], str(report)


def test_the_kits_reads_do_not_block_it_on_a_cancel_in_flight() -> None:
    # The case: cancelled() waits off the client's I/O thread; the kit read
    # it on its delivering thread and reported no_call_blocks_forever.
    moves = _moves(("sent", 0), ("cancel", 0))
    assert run_moves(SeedHarness, moves, contract=TABLE, futures=1) == []
    # The parked read is resumed by the answer and judged.
    answered = _moves(("sent", 0), ("cancel", 0), ("confirm_cancel_failed", 0), ("cancel", 0))
    assert (
        run_moves(SeedHarness, [*answered, *_moves(("confirm_canceled", 0))], contract=TABLE) == []
    )


def test_a_callback_waiting_for_another_futures_answer_is_watched_until_it_comes() -> None:
    # add_done_callback on a done f0 runs the callback at once, on the user's thread:
    # it cancels f1 and waits for f1's answer, not for f0.
    moves = _moves(
        ("sent", 0),
        ("sent", 1),
        ("result_success", 0),
        ("callback_cancels", 0, 1),
        ("confirm_canceled", 1),
    )
    assert run_moves(_harness(WaitsInCallbacks), moves, contract=TABLE) == []


# ---------------------------------------------------------------------------
# Each planted bug found
# ---------------------------------------------------------------------------


def _only(report: RaceReport, invariant: str) -> list[list[str]]:
    return [[str(m) for m in f.moves] for f in report.findings if f.invariant.name == invariant]


def test_a_cancelled_that_waits_on_the_io_thread_is_found() -> None:
    report = _check(_harness(ForgetsTheIOThread, AttachedSeedHarness), futures=1, depth=2)
    (found,) = _only(report, "no_call_blocks_forever")
    assert found[0] == "sent(f0)" and found[1] in ("cancel(f0)", "cancel_all")
    assert "reading the futures" in report.findings[0].report


def test_a_refusal_that_wakes_nobody_is_found() -> None:
    report = _check(_harness(RefusalWakesNobody), futures=1)
    (found,) = _only(report, "no_call_blocks_forever")
    assert found[0] == "sent(f0)" and found[-1] == "confirm_cancel_failed(f0)"
    assert "left cancel_requested (now running)" in str(report)


def test_a_raced_result_that_wins_is_found() -> None:
    report = _check(_harness(RacedResultWins), futures=1)
    assert report.invariants == {"contract_state"}
    assert "f0 is in done, the contract says cancelled" in str(report)


class EveryBug(
    RefusalWakesNobody, RacedResultWins, CallbacksTwiceOnResult, CallbacksTwiceOnConfirm
):
    """Four of the bugs at once."""


def test_bugs_planted_together_are_each_reported_with_their_own_sequence() -> None:
    report = _check(_harness(EveryBug), futures=1, depth=3)
    # Two bugs with the same symptom: each found on its own shortest path (and on
    # each other path shape it shows on: running -> cancelled as well as through
    # cancel_requested), never merged into one.
    twice = _only(report, "callbacks_run_once")
    assert ["sent(f0)", "result_success(f0)"] in twice
    assert ["sent(f0)", "confirm_canceled(f0)"] in twice
    assert {path[-1] for path in twice} == {"result_success(f0)", "confirm_canceled(f0)"}
    (blocked,) = _only(report, "no_call_blocks_forever")
    assert blocked[-1] == "confirm_cancel_failed(f0)" and len(blocked) == 3
    (raced,) = _only(report, "contract_state")
    assert raced[-1] == "result_success(f0)" and len(raced) == 3
    assert report.invariants == {"callbacks_run_once", "no_call_blocks_forever", "contract_state"}
