"""``futurefsm.testing`` works on other implementations and finds real bugs.

- Deliberately broken ``TaskFuture`` subclasses: the race kit must find each bug, and
  report it with the steps and the path diagram.
- ``SimpleFuture``: a second, independent implementation of docs/transitions.md and
  docs/semantics.md (a plain ``concurrent.futures.Future`` subclass over ``TRANSITION_TABLE``, no
  ``transitions`` machine), with its own ``RaceHarness``: the kit runs on it unchanged,
  with every action.
- The strategies draw what they say they draw.
"""

from __future__ import annotations

import concurrent.futures as cf
import inspect
import threading
import time
import typing
from collections.abc import Callable
from concurrent.futures import _base
from typing import Any

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import futurefsm.testing
from futurefsm.client.future import TaskFuture
from futurefsm.errors import ConnectionLostError
from futurefsm.fsm import (
    TERMINAL_STATES,
    TRANSITION_TABLE,
    CancelOutcome,
    Cell,
    Effect,
    FutureState,
    HistoryEntry,
    Trigger,
)
from futurefsm.protocol import ProtocolError, decode, encode
from futurefsm.scheduler_stub import Behaviour, OnCancel
from futurefsm.testing import (
    DEFAULT_ACTIONS,
    WAIT_AND_RACE_ACTIONS,
    Contract,
    RaceHarness,
    TaskFutureRaceHarness,
    Unsupported,
    check_at_rest,
    check_future,
    examples,
)
from futurefsm.testing import strategies as fst

S, T = FutureState, Trigger

# ---------------------------------------------------------------------------
# Deliberately broken futures
# ---------------------------------------------------------------------------


class LosesTheRacedResult(TaskFuture):
    """A result that arrives while a cancel is in flight is silently dropped (the
    future claims the table's cell but never fires it): the user waits for nothing."""

    __slots__ = ()

    def recv_result(self, result: Any = None, exception: BaseException | None = None) -> Cell:
        if self.state is S.CANCEL_REQUESTED:
            return TRANSITION_TABLE[S.CANCEL_REQUESTED, T.RECV_RESULT]
        return super().recv_result(result, exception)


class ResolvesTheRacedResultAsDone(TaskFuture):
    """A result that races the cancel wins: the future ends done, not cancelled."""

    __slots__ = ()

    def recv_result(self, result: Any = None, exception: BaseException | None = None) -> Cell:
        if self.state is S.CANCEL_REQUESTED:
            self._fire(T.RECV_CONFIRM_CANCEL_FAILED)
        return super().recv_result(result, exception)


class RunsCallbacksTwice(TaskFuture):
    """Done-callbacks run twice on entering a terminal state."""

    __slots__ = ()

    def _invoke_callbacks(self) -> None:
        super()._invoke_callbacks()
        super()._invoke_callbacks()


class CancelsAFinishedFutureOnDisconnect(TaskFuture):
    """STYLE.md's trap: a lost connection turns a finished future into a cancelled one."""

    __slots__ = ()

    def connection_lost(self) -> Cell:
        with self._condition:
            if self.state is S.DONE:
                self.state = S.CANCELLED
                self._state = _base.CANCELLED_AND_NOTIFIED
        return super().connection_lost()


@pytest.mark.parametrize(
    ("future_class", "invariant", "symptom"),
    [
        (
            LosesTheRacedResult,
            "contract_state",
            "is in cancel_requested, the contract says cancelled",
        ),
        (ResolvesTheRacedResultAsDone, "contract_state", "the contract says cancelled"),
        (RunsCallbacksTwice, "callbacks_run_once", "done-callbacks ran [2] times"),
        (CancelsAFinishedFutureOnDisconnect, "one_terminal_state", "now cancelled"),
    ],
    ids=["loses-raced-result", "raced-result-done", "callbacks-twice", "cancels-finished"],
)
def test_the_kit_finds_a_broken_future(
    future_class: type[TaskFuture], invariant: str, symptom: str
) -> None:
    report = check_future(
        lambda: TaskFutureRaceHarness(future_class=future_class),
        futures=1,
        depth=3,
        random_runs=0,
        progress=None,
    )
    found = [f for f in report.findings if f.invariant.name == invariant]
    assert found, str(report)
    assert any(symptom in f.message for f in found), str(report)
    # The report: the steps, then the future's path on the diagram.
    assert "minimal steps" in found[0].report
    assert "stateDiagram-v2" in found[0].report


# ---------------------------------------------------------------------------
# A second implementation, and its harness
# ---------------------------------------------------------------------------

_in_callback = threading.local()


class SimpleFuture(_base.Future):
    """docs/transitions.md and docs/semantics.md again, independently: a stdlib Future
    whose state moves only by ``TRANSITION_TABLE`` lookups under its lock. No ``transitions``."""

    def __init__(self, task_id: bytes, transport: SimpleTransport) -> None:
        super().__init__()
        self.task_id = task_id
        self.fsm_state = S.PENDING
        self.cancel_outcome: CancelOutcome | None = None
        self.history: list[HistoryEntry] = []
        self._transport = transport
        self._deadline = 0.0
        self._answered = threading.Condition(self._condition)

    def fire(self, trigger: Trigger, result: Any = None, exc: BaseException | None = None) -> Cell:
        with self._condition:
            source = self.fsm_state
            cell = TRANSITION_TABLE[source, trigger]
            self.history.append(HistoryEntry(time.monotonic(), trigger, source, cell.dest))
            if cell.dest is not source:
                self.fsm_state = cell.dest
                if cell.outcome is not None:
                    self.cancel_outcome = cell.outcome
                self._mirror(cell, result, exc)
                if source is S.CANCEL_REQUESTED:
                    self._answered.notify_all()
        if cell.effect is Effect.SEND_CANCEL:
            self._transport.cancels.append(self.task_id)
        if cell.dest is not source and cell.dest in TERMINAL_STATES:
            self._transport.live.pop(self.task_id, None)
            for callback in self._done_callbacks:
                self._call(callback)
        return cell

    def _mirror(self, cell: Cell, result: Any, exc: BaseException | None) -> None:
        if cell.dest is S.DONE:
            if cell.effect is Effect.FAIL_CONNECTION_LOST:
                exc = ConnectionLostError("connection lost")
            self._result, self._exception, self._state = result, exc, _base.FINISHED
            for waiter in self._waiters:
                (waiter.add_exception if exc is not None else waiter.add_result)(self)
        elif cell.dest is S.CANCELLED:
            self._state = _base.CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
        else:
            self._state = _base.PENDING if cell.dest is S.PENDING else _base.RUNNING
        if cell.dest in TERMINAL_STATES:
            self._condition.notify_all()

    def _call(self, callback: Callable[[Any], object]) -> None:
        _in_callback.depth = getattr(_in_callback, "depth", 0) + 1
        try:
            callback(self)
        except Exception:
            pass  # the stdlib logs it; this sketch drops it
        finally:
            _in_callback.depth -= 1

    def _may_block(self) -> bool:
        return not getattr(_in_callback, "depth", 0) and not self._transport.on_io_thread()

    def cancel(self, timeout: float | None = None, *, wait: bool = True) -> bool:
        deadline = time.monotonic() + (60.0 if timeout is None else timeout)
        with self._condition:
            if self.fsm_state is S.RUNNING:
                self._deadline = deadline
        self.fire(T.USER_CANCEL)
        if wait and self._may_block():
            return self._wait_answer(deadline)
        return self.fsm_state in (S.CANCELLED, S.CANCEL_REQUESTED)

    def _wait_answer(self, deadline: float) -> bool:
        with self._condition:
            while self.fsm_state is S.CANCEL_REQUESTED and time.monotonic() < deadline:
                self._answered.wait(deadline - time.monotonic())
            late = self.fsm_state is S.CANCEL_REQUESTED
        if late:
            self.fire(T.CANCEL_TIMED_OUT)
        return self.fsm_state is S.CANCELLED

    def cancelled(self) -> bool:
        if self.fsm_state is S.CANCEL_REQUESTED and self._may_block():
            return self._wait_answer(self._deadline)
        return self.fsm_state is S.CANCELLED

    def add_done_callback(self, fn: Callable[[Any], object]) -> None:
        with self._condition:
            if self.fsm_state not in TERMINAL_STATES:
                self._done_callbacks.append(fn)
                return
        self._call(fn)


class SimpleTransport:
    """Registry, sent cancels and the I/O thread of ``SimpleFuture``s."""

    def __init__(self) -> None:
        self.live: dict[bytes, SimpleFuture] = {}
        self.cancels: list[bytes] = []
        self.io_thread: threading.Thread | None = None
        self.count = 0

    def on_io_thread(self) -> bool:
        return threading.current_thread() is self.io_thread


class SimpleHarness(RaceHarness):
    """The race kit's harness for ``SimpleFuture``."""

    def __init__(self) -> None:
        self.transport = SimpleTransport()

    def create(self) -> SimpleFuture:
        self.transport.count += 1
        future = SimpleFuture(self.transport.count.to_bytes(16, "big"), self.transport)
        self.transport.live[future.task_id] = future
        return future

    def deliver(self, action: str, future: Any, payload: Any) -> None:
        if action == "result_success":
            future.fire(T.RECV_RESULT, result=payload)
        elif action == "result_failed":
            future.fire(T.RECV_RESULT, exc=payload)
        elif action.startswith("confirm_"):
            future.fire(T("recv_" + action))
        elif action in ("sent", "cancel_timed_out", "connection_lost"):
            future.fire(T(action))
        elif action == "disconnect":
            for live in list(self.transport.live.values()):
                live.fire(T.CONNECTION_LOST)
        elif action == "cancel_all":
            for live in list(self.transport.live.values()):
                live.cancel(wait=False)
        else:
            raise Unsupported(action)

    def state(self, future: SimpleFuture) -> FutureState:
        return future.fsm_state

    def attach_delivering_thread(self, thread: threading.Thread) -> None:
        self.transport.io_thread = thread

    def close(self) -> None:
        for future in list(self.transport.live.values()):
            future.fire(T.CONNECTION_LOST)


def test_the_kit_runs_on_another_implementation() -> None:
    report = check_future(
        SimpleHarness,
        contract=Contract.futurefsm(),
        actions=(*DEFAULT_ACTIONS, *WAIT_AND_RACE_ACTIONS),
        depth=2,
        random_runs=examples(0.5, minimum=20),
        progress=None,
    )
    print(report.summary())
    assert report.findings == [], str(report)
    rest = [check_at_rest(f, contract=Contract.futurefsm()) for f in (SimpleHarness().create(),)]
    assert rest[0].findings == []


# ---------------------------------------------------------------------------
# Long sequences and the strategies
# ---------------------------------------------------------------------------


def test_long_sequences_follow_the_table() -> None:
    """Past the breadth-first depth, and past HISTORY_SELF_LOOP_LIMIT stale entries."""
    report = check_future(
        TaskFutureRaceHarness,
        futures=1,
        depth=0,
        random_runs=examples(1, minimum=20),
        max_steps=45,
        progress=None,
    )
    assert report.findings == [], str(report)


@settings(max_examples=examples(2))
@given(fst.behaviours(max_delay=0.5))
def test_behaviours_are_valid(behaviour: Behaviour) -> None:
    assert Behaviour.from_dict(behaviour.to_dict()) == behaviour
    assert 0 <= behaviour.result_delay <= 0.5


def test_behaviours_reach_every_mode_and_fault() -> None:
    from hypothesis import find

    for mode in OnCancel:
        find(fst.behaviours(), lambda b, mode=mode: b.on_cancel is mode)
    find(fst.behaviours(), lambda b: b.worker_died and b.drop_result and b.duplicate_result)
    find(fst.behaviours(), lambda b: not b.answer_heartbeats and b.result_delay > 0)
    assert all(b.answer_heartbeats for b in _draws(fst.behaviours(silence=False)))


def _draws(strategy: st.SearchStrategy[Any], n: int = 50) -> list[Any]:
    drawn: list[Any] = []

    @settings(max_examples=n, database=None, phases=[Phase.generate])
    @given(strategy)
    def collect(value: Any) -> None:
        drawn.append(value)

    collect()
    return drawn


@settings(max_examples=examples(3))
@given(fst.frames())
def test_frames_decode_to_what_was_encoded(frame: bytes) -> None:
    assert encode(decode(frame)) == frame


@settings(max_examples=examples(3))
@given(fst.garbage_frames())
def test_garbage_frames_never_crash_the_decoder(frame: bytes) -> None:
    try:
        decode(frame)
    except ProtocolError:
        pass


def test_scheduler_messages_are_what_a_scheduler_sends() -> None:
    kinds = {type(m).__name__ for m in _draws(fst.scheduler_messages(), 100)}
    assert kinds == {"TaskResult", "TaskCancelConfirm", "HeartbeatEcho"}
    kinds = {type(m).__name__ for m in _draws(fst.client_messages(), 100)}
    assert kinds == {"Task", "TaskCancel", "Heartbeat", "Disconnect"}


def test_examples_scales_with_the_profile() -> None:
    base = settings.default.max_examples
    assert examples(1) == base
    assert examples(0.001, minimum=3) == 3


def test_every_public_name_is_documented() -> None:
    for name in futurefsm.testing.__all__:
        value = getattr(futurefsm.testing, name)
        if typing.get_origin(value) is not None:
            continue  # a type alias such as HarnessFactory (a class to inspect on 3.10)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), name
    for name in fst.__all__:
        assert inspect.getdoc(getattr(fst, name)), name


def test_a_waiting_cancel_is_answered_in_the_simple_future_too() -> None:
    """A hand-written check that the second implementation behaves (sanity for the
    harness tests above)."""
    harness = SimpleHarness()
    future = harness.create()
    harness.deliver("sent", future, None)
    waiting = cf.ThreadPoolExecutor(1)
    try:
        outcome = waiting.submit(future.cancel, 5.0)
        deadline = time.monotonic() + 5
        while future.fsm_state is not S.CANCEL_REQUESTED and time.monotonic() < deadline:
            time.sleep(0.001)
        harness.deliver("result_success", future, "late")
        assert outcome.result(5) is True
        assert future.cancel_outcome is CancelOutcome.RESULT_RACED
    finally:
        waiting.shutdown()
