"""The kit defects K1-K6 of docs/race-kit-findings.md, each on a minimal fake future.

Each fake behaves like one of the libraries the kit met (pebble, Dask, anyio) in the
one way that made the old kit report something false or report it badly; each test
failed on the kit before the fix (checked by running it against the old kit.py).
"""

from __future__ import annotations

import concurrent.futures as cf
import queue
import threading
import time
from concurrent.futures import _base
from typing import Any

import pytest

from futurefsm.testing import (
    DEFAULT_ACTIONS,
    Contract,
    HarnessError,
    Move,
    RaceHarness,
    Unsupported,
    check_future,
    run_moves,
)

ACTIONS = {a.name: a for a in DEFAULT_ACTIONS}
NOT_HERE = ("confirm_canceled", "confirm_not_found", "confirm_cancel_failed", "cancel_timed_out")
NOT_HERE += ("connection_lost", "disconnect", "cancel_all")
LOOP_LATENCY = 0.05
"""Seconds the fake library's own thread takes to run a cancel (its event loop)."""

TABLE = Contract.from_table(
    {
        ("pending", "user_cancel"): "cancelled",
        ("pending", "recv_result"): "finished",
    },
    initial="pending",
    terminal=["finished", "cancelled"],
    cancelled=["cancelled"],
    name="pending until cancelled or finished",
)


def _moves(*names: str) -> list[Move]:
    moves = []
    for name in names:
        action, _, rest = name.partition("(")
        target, _, other = rest.rstrip(")").partition(", ")
        moves.append(Move(ACTIONS[action], int(target[1:]), int(other[1:]) if other else None))
    return moves


class ExecutorHarness(RaceHarness):
    """A stdlib ``Future`` as an executor makes it: ``cancel()`` is the stdlib's
    (waiters are not notified), ``sent`` is the worker reaching the task
    (``set_running_or_notify_cancel``: a cancelled one's waiters are notified then)."""

    unsupported = NOT_HERE

    def create(self) -> cf.Future[Any]:
        return cf.Future()

    def deliver(self, action: str, future: Any, payload: Any) -> None:
        if action == "sent":
            if future._state in (_base.PENDING, _base.CANCELLED):
                future.set_running_or_notify_cancel()
        elif action in ("result_success", "result_failed") and future._state == _base.RUNNING:
            if action == "result_success":
                future.set_result(payload)
            else:
                future.set_exception(payload)
        else:  # (a result before the worker reached the task cannot happen)
            raise Unsupported(action)

    def state(self, future: cf.Future[Any]) -> str:
        return str(future._state)


def test_k1_a_cancelled_future_not_yet_reached_owes_its_waiters_nothing() -> None:
    """pebble, anyio: cancel() leaves the stdlib's CANCELLED; the executor notifies."""
    report = check_future(ExecutorHarness, contract=None, depth=2, random_runs=0, progress=None)
    assert report.findings == [], str(report)
    assert report.sequences_run > 50


class LoopFuture(cf.Future):  # type: ignore[type-arg]
    """A future whose ``cancel()`` is done by its library's own thread (as Dask's
    ``sync()`` does): the caller waits on an ``Event`` for it. Its done-callbacks run
    on a thread of the library's too."""

    def __init__(self, loop: queue.SimpleQueue[Any]) -> None:
        super().__init__()
        self.loop = loop

    def cancel(self) -> bool:
        answered, answer = threading.Event(), []

        def job() -> None:
            time.sleep(LOOP_LATENCY)  # the library's loop is busy for a while
            answer.append(cf.Future.cancel(self) and self.set_running_or_notify_cancel() is False)
            answered.set()

        self.loop.put(job)
        answered.wait()
        return answer[0]

    def _invoke_callbacks(self) -> None:
        threading.Thread(target=super()._invoke_callbacks, name="library-callbacks").start()


class LoopHarness(RaceHarness):
    """``LoopFuture``s; ``result_success`` sets one (no table of its own but
    ``TABLE``)."""

    unsupported = (*NOT_HERE, "sent", "result_failed")

    def __init__(self) -> None:
        self.loop: queue.SimpleQueue[Any] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="library-loop", daemon=True).start()

    def _run(self) -> None:
        while (job := self.loop.get()) is not None:
            job()

    def create(self) -> LoopFuture:
        return LoopFuture(self.loop)

    def deliver(self, action: str, future: Any, payload: Any) -> None:
        if action != "result_success":
            raise Unsupported(action)
        if future.set_running_or_notify_cancel():
            future.set_result(payload)

    def state(self, future: LoopFuture) -> str:
        return "cancelled" if future.cancelled() else "finished" if future.done() else "pending"

    def close(self) -> None:
        self.loop.put(None)


def test_k2_a_call_waiting_for_the_librarys_own_thread_is_not_parked() -> None:
    """Dask: the kit read the future while its cancel() was half done."""
    moves = _moves("cancel(f0)")
    assert run_moves(LoopHarness, moves, contract=TABLE, futures=1, block_timeout=1.0) == []


def test_k3_the_kit_reads_once_a_callbacks_cancel_has_returned() -> None:
    """Dask: a done-callback of f1 cancelling f0 was still at it when f0 was read."""
    moves = _moves("callback_cancels(f1, f0)", "result_success(f1)")
    assert run_moves(LoopHarness, moves, contract=TABLE, futures=2, block_timeout=1.0) == []


class TimingOutFuture(cf.Future):  # type: ignore[type-arg]
    """Dask's ``result(timeout=0)``: it times out even on a done future."""

    def result(self, timeout: float | None = None) -> Any:
        if timeout == 0:
            raise TimeoutError("timed out after 0 s.")
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if timeout == 0:
            raise TimeoutError("timed out after 0 s.")
        return super().exception(timeout)


class TimingOutHarness(ExecutorHarness):
    """``TimingOutFuture``s; the stdlib's cancel, notifying as an executor does."""

    timeout_future = True

    def create(self) -> cf.Future[Any]:
        return TimingOutFuture() if self.timeout_future else cf.Future()

    def cancel(self, future: cf.Future[Any]) -> bool:
        if future.cancel():
            future.set_running_or_notify_cancel()
            return True
        return False


def test_k4_a_done_futures_timing_out_read_is_one_finding() -> None:
    """Dask: the TimeoutError was taken for the ending, and one bug became several."""
    report = check_future(
        TimingOutHarness, contract=None, futures=1, depth=3, random_runs=0, progress=None
    )
    (finding,) = report.findings
    assert finding.invariant.name == "result_raises_cancelled_iff_cancelled"
    assert "done() is True" in finding.message and "TimeoutError" in finding.message
    assert finding.steps == 1, str(report)


def test_k4_a_task_that_raised_timeout_error_ended_so() -> None:
    """A TimeoutError the task raised (exception(timeout=0) returns it) is its ending."""

    class TaskTimesOut(TimingOutHarness):
        timeout_future = False

        def deliver(self, action: str, future: Any, payload: Any) -> None:
            if action == "result_failed":
                payload = TimeoutError("the task's own")
            super().deliver(action, future, payload)

    moves = _moves("sent(f0)", "result_failed(f0)", "result(f0)")
    assert run_moves(TaskTimesOut, moves, contract=None, futures=1) == []


def test_k5_an_action_refused_only_in_some_states_is_not_unsupported() -> None:
    """pebble: result_success is refused until a worker took the task."""
    report = check_future(ExecutorHarness, contract=None, depth=2, random_runs=0, progress=None)
    assert "result_success" not in report.unsupported
    assert "result_success" in report.refused_sometimes
    assert "refused in some states: ['result_failed', 'result_success']" in report.summary()
    assert "confirm_canceled" in report.unsupported


def test_k6_an_exception_in_state_names_the_harness_and_the_steps() -> None:
    """pebble: a state() bug surfaced as a raw traceback from inside kit.py."""

    class BadState(ExecutorHarness):
        def state(self, future: cf.Future[Any]) -> str:
            return future._state.value if future._state == _base.RUNNING else future._state

    with pytest.raises(HarnessError, match=r"BadState\.state\(f0\) raised AttributeError") as error:
        run_moves(BadState, _moves("sent(f0)"), contract=None, futures=1)
    assert "after the steps [sent(f0)]" in str(error.value)
