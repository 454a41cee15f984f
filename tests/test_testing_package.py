"""``futurefsm.testing`` works on other implementations and finds real bugs.

- Deliberately broken ``TaskFuture`` subclasses: the race machine must find each bug
  (``run_state_machine_as_test`` inside ``pytest.raises``), and report it with the
  steps, the history table and the path diagram.
- ``SimpleFuture``: a second, independent implementation of docs/transitions.md and
  docs/semantics.md (a plain ``concurrent.futures.Future`` subclass over ``TRANSITION_TABLE``, no
  ``transitions`` machine), with its own ``FutureHarness``: the race machine and the
  explorer run on it unchanged.
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
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

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
    FutureSnapshot,
    InvariantViolation,
    Step,
    TaskFutureHarness,
    examples,
    explore,
    make_race_machine,
    run_sequence,
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


HUNT = settings(
    max_examples=2000,
    stateful_step_count=15,
    deadline=None,
    database=None,
    report_multiple_bugs=False,
    phases=[Phase.generate, Phase.shrink],
    suppress_health_check=list(HealthCheck),
)


@pytest.mark.parametrize(
    ("future_class", "symptom"),
    [
        (LosesTheRacedResult, "is in cancel_requested, the table says cancelled"),
        (ResolvesTheRacedResultAsDone, "the table says cancelled"),
        (RunsCallbacksTwice, r"done-callbacks ran \[.*2.*\] times"),
        (CancelsAFinishedFutureOnDisconnect, "starts in cancelled|future is in cancelled"),
    ],
    ids=["loses-raced-result", "raced-result-done", "callbacks-twice", "cancels-finished"],
)
def test_the_race_machine_finds_a_broken_future(
    future_class: type[TaskFuture], symptom: str
) -> None:
    machine = make_race_machine(
        lambda: TaskFutureHarness(future_class=future_class),
        max_futures=1,
        bursts=False,
        name=future_class.__name__,
    )
    with pytest.raises(InvariantViolation, match=symptom) as caught:
        run_state_machine_as_test(machine, settings=HUNT)
    # The report: the steps, then each future's history table and path diagram.
    report = "\n".join(getattr(caught.value, "__notes__", []))
    assert f"state = {future_class.__name__}()" in report
    assert "history:" in report and "trigger" in report
    assert "stateDiagram-v2" in report


def test_the_explorer_finds_a_callback_run_twice() -> None:
    report = explore(2, harness_factory=lambda: TaskFutureHarness(future_class=RunsCallbacksTwice))
    assert report.violations
    assert "done-callbacks ran [2] times" in report.violations[0].error


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


class SimpleFutureUnderTest:
    """``FutureUnderTest`` for ``SimpleFuture``."""

    def __init__(self, future: SimpleFuture, transport: SimpleTransport) -> None:
        self.future = future
        self.task_id = future.task_id
        self._transport = transport

    def deliver(self, step: Step, payload: Any = None) -> bool:
        if step is Step.RESULT_SUCCESS:
            cell = self.future.fire(step.trigger, result=payload)
        else:
            cell = self.future.fire(step.trigger, exc=payload)
        return cell.effect is Effect.STALE

    def snapshot(self) -> FutureSnapshot:
        future = self.future
        with future._condition:
            return FutureSnapshot(
                state=future.fsm_state,
                stdlib_state=future._state,
                running=future.running(),
                done=future.done(),
                cancel_outcome=future.cancel_outcome,
                history=list(future.history),
                registered=future.task_id in self._transport.live,
            )

    def cancels_sent(self) -> int:
        return self._transport.cancels.count(self.task_id)


class SimpleHarness:
    """``FutureHarness`` for ``SimpleFuture``."""

    def __init__(self) -> None:
        self.transport = SimpleTransport()
        self.order: list[SimpleFuture] = []

    def create(self) -> SimpleFutureUnderTest:
        self.transport.count += 1
        future = SimpleFuture(self.transport.count.to_bytes(16, "big"), self.transport)
        self.transport.live[future.task_id] = future
        return SimpleFutureUnderTest(future, self.transport)

    def deliver_to_id(self, task_id: bytes, step: Step, payload: Any = None) -> bool:
        future = self.transport.live.get(task_id)
        if future is None:
            return True
        return SimpleFutureUnderTest(future, self.transport).deliver(step, payload)

    def expire_cancels(self) -> None:
        firsts = dict.fromkeys(self.transport.cancels)  # first TaskCancel order
        for task_id in firsts:
            future = self.transport.live.get(task_id)
            if future is not None:
                future.fire(T.CANCEL_TIMED_OUT)

    def lose_connection(self) -> None:
        for future in list(self.transport.live.values()):
            future.fire(T.CONNECTION_LOST)

    def attach_io_thread(self, thread: threading.Thread) -> None:
        self.transport.io_thread = thread

    def close(self) -> None:
        pass


SimpleRaceMachine = make_race_machine(SimpleHarness, name="SimpleRaceMachine")
SimpleRaceMachine.TestCase.settings = settings(
    max_examples=examples(2), stateful_step_count=30, deadline=None
)
TestSimpleFutureRaceMachine = SimpleRaceMachine.TestCase


def test_the_explorer_runs_on_another_implementation() -> None:
    report = explore(8, harness_factory=SimpleHarness)
    print(report.summary())
    assert report.violations == []
    assert report.cells == set(TRANSITION_TABLE)


# ---------------------------------------------------------------------------
# Long sequences and the strategies
# ---------------------------------------------------------------------------


@settings(max_examples=examples(10))
@given(fst.step_sequences(max_size=45))
def test_long_step_sequences_follow_the_table(sequence: list[Step]) -> None:
    """Past the explorer's depth, and past HISTORY_SELF_LOOP_LIMIT stale entries."""
    run_sequence(sequence)


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


def test_steps_map_to_triggers() -> None:
    assert {step.trigger for step in Step} == set(Trigger)
    assert [s for s in Step if s.status is not None] == list(futurefsm.testing.RESULT_STEPS)
    assert all(s.confirm_kind is not None for s in futurefsm.testing.CONFIRM_STEPS)


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
    fut = harness.create()
    fut.deliver(Step.SENT)
    waiting = cf.ThreadPoolExecutor(1)
    try:
        outcome = waiting.submit(fut.future.cancel, 5.0)
        deadline = time.monotonic() + 5
        while fut.future.fsm_state is not S.CANCEL_REQUESTED and time.monotonic() < deadline:
            time.sleep(0.001)
        fut.deliver(Step.RESULT_SUCCESS, "late")
        assert outcome.result(5) is True
        assert fut.future.cancel_outcome is CancelOutcome.RESULT_RACED
    finally:
        waiting.shutdown()
