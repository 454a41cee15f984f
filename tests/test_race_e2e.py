"""End to end race machine: a ``Client`` against a ``SchedulerStub`` over real loopback
sockets, with a generated ``Behaviour`` per task (docs/scheduler.md, docs/race-kit.md).

Kept small and fast: a few steps per case, short timeouts. Tasks echo a value, fail,
or wait on a gate the machine opens. Cancels (single, bulk, waiting or not), results,
waits and callbacks race the stub's scripted faults; the stub can also disconnect
every client or go silent. After every step: nothing raised in either I/O thread,
every future is consistent (stdlib view, history with at most one terminal transition,
callbacks at most once) and its outcome is one its task's Behaviour allows. Teardown
cancels what is left and then disconnects the stub: every future must be terminal within
``cancel_timeout + connection_timeout`` (plus one heartbeat and scheduling slack),
every callback must have run exactly once and every call must have returned.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from futurefsm import Client, ConnectionLostError, TaskFuture
from futurefsm.errors import WorkerDiedError
from futurefsm.fsm import TERMINAL_STATES, CancelOutcome, FutureState
from futurefsm.protocol import Task, TaskCancel
from futurefsm.scheduler_stub import Behaviour, OnCancel, SchedulerStub
from futurefsm.scheduler_stub.sample_tasks import (
    add,
    echo,
    fail,
    gate_wait,
    open_gate,
    reset_gates,
    wait_started,
)
from futurefsm.serializer import DEFAULT_SERIALIZER
from futurefsm.testing import check_at_rest
from futurefsm.testing.budget import examples
from futurefsm.testing.strategies import behaviours

CANCEL_TIMEOUT = 0.3
CONNECTION_TIMEOUT = 0.5
HEARTBEAT_INTERVAL = 0.05
SLACK = 2.0
"""Scheduling slack on a loaded 2-core CI runner, added to every time bound."""
LONG = 10.0
"""Timeout of result() and wait() calls: teardown ends every future well before."""
TERMINAL_WITHIN = CANCEL_TIMEOUT + CONNECTION_TIMEOUT + HEARTBEAT_INTERVAL + SLACK

_case = itertools.count()

# Which cancel outcomes a task's on_cancel mode allows (the client always forces).
# Any mode allows NOT_FOUND (the task finished first), RESULT_RACED (its result was in
# flight), TIMED_OUT (a slow runner), CONNECTION_LOST and BEFORE_SEND.
_ANY_MODE = {
    CancelOutcome.NOT_FOUND,
    CancelOutcome.RESULT_RACED,
    CancelOutcome.TIMED_OUT,
    CancelOutcome.CONNECTION_LOST,
    CancelOutcome.BEFORE_SEND,
}
_ALLOWED_OUTCOMES: dict[OnCancel, set[CancelOutcome]] = {
    OnCancel.CONFIRM: _ANY_MODE | {CancelOutcome.CONFIRMED},
    OnCancel.DUPLICATE: _ANY_MODE | {CancelOutcome.CONFIRMED},
    OnCancel.CONFIRM_THEN_RESULT: _ANY_MODE | {CancelOutcome.CONFIRMED},
    OnCancel.RESULT_THEN_CONFIRM: _ANY_MODE | {CancelOutcome.CONFIRMED},
    OnCancel.CANCEL_FAILED: _ANY_MODE | {CancelOutcome.FAILED},
    OnCancel.NOT_FOUND: set(_ANY_MODE),
    OnCancel.IGNORE: set(_ANY_MODE),
}


@dataclass(eq=False)
class Submitted:
    """One submitted task, what it should produce, and its callback count."""

    index: int
    future: TaskFuture
    kind: str
    value: Any
    behaviour: Behaviour
    gate: str | None
    callbacks: list[int]
    upstream: Submitted | None = None
    """The graph member this one depends on."""
    in_graph: bool = False

    def __repr__(self) -> str:
        return f"t{self.index}"


@dataclass(eq=False)
class Call:
    """A user call on its own thread, with the time it must have returned by."""

    label: str
    outcome: cf.Future[Any]
    must_return_by: float | None
    verify: Callable[[Outcome], None]


Outcome = tuple[str, Any]
"""What a call gave: ``("value", v)`` or ``("raised", exception)``."""


def capture(call: Callable[[], Any]) -> Outcome:
    """Run ``call`` and return what it gave as an ``Outcome``."""
    try:
        return ("value", call())
    except BaseException as error:  # every outcome is checked by the caller
        return ("raised", error)


_KINDS = st.sampled_from(["echo", "fail", "gate"])
# One in three tasks may silence the stub (answer_heartbeats=False) once it arrives.
_BEHAVIOURS = st.one_of(behaviours(silence=False), behaviours(silence=False), behaviours())


class ClientStubMachine(RuleBasedStateMachine):
    """A Client and a SchedulerStub; see the module docstring."""

    tasks = Bundle("tasks")

    def __init__(self) -> None:
        super().__init__()
        reset_gates()
        self.case = next(_case)
        self.behaviours: dict[str, Behaviour] = {}
        self.stub = SchedulerStub(workers=2, behaviour=self._behaviour_for)
        self.client = Client(
            self.stub.address,
            cancel_timeout=CANCEL_TIMEOUT,
            heartbeat_interval=HEARTBEAT_INTERVAL,
            connection_timeout=CONNECTION_TIMEOUT,
        )
        self.submitted: list[Submitted] = []
        self.calls: list[Call] = []
        self.closed = False
        self._failed = False

    def _behaviour_for(self, index: int) -> Behaviour:
        # The arrival index is not the submission index: a task cancelled before it was
        # sent never arrives. So take the Task being handled (``stub.arriving``) and look
        # its Behaviour up by the value among its arguments.
        task = self.stub.arriving
        if task is not None:
            args, _ = DEFAULT_SERIALIZER.loads(task.args)
            for arg in args:
                if isinstance(arg, str) and arg in self.behaviours:
                    return self.behaviours[arg]
        raise AssertionError(f"no Behaviour for task #{index}")

    def _start(
        self,
        label: str,
        fn: Callable[[], Any],
        bound: float | None,
        verify: Callable[[Outcome], None],
    ) -> None:
        outcome: cf.Future[Any] = cf.Future()

        def run() -> None:
            outcome.set_result(capture(fn))

        threading.Thread(target=run, name=f"e2e-{label}", daemon=True).start()
        deadline = None if bound is None else time.monotonic() + bound
        self.calls.append(Call(label, outcome, deadline, verify))

    # ------------------------------------------------------------------ rules

    @initialize(target=tasks, kind=_KINDS, behaviour=_BEHAVIOURS)
    def first_task(self, kind: str, behaviour: Behaviour) -> Submitted:
        return self.submit(kind, behaviour)

    @precondition(lambda self: len(self.submitted) < 6 and not self.closed)
    @rule(target=tasks, kind=_KINDS, behaviour=_BEHAVIOURS)
    def another_task(self, kind: str, behaviour: Behaviour) -> Submitted:
        return self.submit(kind, behaviour)

    def submit(self, kind: str, behaviour: Behaviour) -> Submitted:
        index = len(self.submitted)
        value = f"value-{self.case}-{index}"
        gate = f"gate-{self.case}-{index}" if kind == "gate" else None
        self.behaviours[value] = behaviour
        if kind == "echo":
            future = self.client.submit(echo, value)
        elif kind == "fail":
            future = self.client.submit(fail, value)
        else:
            future = self.client.submit(gate_wait, gate, value, LONG)
        record = Submitted(index, future, kind, value, behaviour, gate, [])
        self.submitted.append(record)
        return record

    @precondition(lambda self: len(self.submitted) < 5 and not self.closed)
    @rule(target=tasks, behaviour=_BEHAVIOURS, dependent=_BEHAVIOURS)
    def submit_a_graph(self, behaviour: Behaviour, dependent: Behaviour) -> MultipleResults[Any]:
        """``{"root": gate_wait(...), "dep": add("root", suffix)}``: one group."""
        index = len(self.submitted)
        value, gate = f"value-{self.case}-{index}", f"gate-{self.case}-{index}"
        suffix = f"-then-{self.case}-{index + 1}"
        self.behaviours[value], self.behaviours[suffix] = behaviour, dependent
        futures = self.client.submit_graph(
            {"root": (gate_wait, gate, value, LONG), "dep": (add, "root", suffix)}
        )
        root = Submitted(index, futures["root"], "gate", value, behaviour, gate, [], None, True)
        dep = Submitted(
            index + 1, futures["dep"], "dependent", value + suffix, dependent, None, [], root, True
        )
        self.submitted += [root, dep]
        return multiple(root, dep)

    @rule(task=tasks)
    def open_its_gate(self, task: Submitted) -> None:
        if task.gate is not None:
            open_gate(task.gate)

    @rule(task=tasks)
    def cancel_without_waiting(self, task: Submitted) -> None:
        result = task.future.cancel(wait=False)
        assert isinstance(result, bool)
        if not result:
            assert task.future.state is not FutureState.CANCELLED

    @rule(task=tasks)
    def start_cancel(self, task: Submitted) -> None:
        future = task.future

        def verify(outcome: Outcome) -> None:
            kind, value = outcome
            assert kind == "value" and isinstance(value, bool), outcome
            if value:
                assert future.state is FutureState.CANCELLED

        self._start(f"{task}.cancel()", future.cancel, CANCEL_TIMEOUT + SLACK, verify)

    @rule(tasks_=st.lists(tasks, min_size=1, max_size=3, unique_by=id))
    def start_bulk_cancel(self, tasks_: Sequence[Submitted]) -> None:
        futures = [t.future for t in tasks_]

        def verify(outcome: Outcome) -> None:
            kind, value = outcome
            assert kind == "value" and len(value) == len(futures), outcome
            for future, cancelled in zip(futures, value, strict=True):
                if cancelled:
                    assert future.state is FutureState.CANCELLED

        self._start(
            f"client.cancel({list(tasks_)})",
            lambda: self.client.cancel(futures),
            CANCEL_TIMEOUT + SLACK,
            verify,
        )

    @rule(task=tasks)
    def start_result(self, task: Submitted) -> None:
        self._start(
            f"{task}.result()",
            lambda: task.future.result(LONG),
            None,
            lambda outcome: self._check_result(task, outcome),
        )

    @rule(
        tasks_=st.lists(tasks, min_size=1, max_size=3, unique_by=id),
        return_when=st.sampled_from([cf.FIRST_COMPLETED, cf.FIRST_EXCEPTION, cf.ALL_COMPLETED]),
    )
    def start_wait(self, tasks_: Sequence[Submitted], return_when: str) -> None:
        futures = [t.future for t in tasks_]

        def verify(outcome: Outcome) -> None:
            kind, value = outcome
            assert kind == "value", outcome
            done = value.done
            assert all(f.done() for f in done)
            if return_when == cf.ALL_COMPLETED:
                assert done == set(futures)
            elif return_when == cf.FIRST_COMPLETED:
                assert done
            else:
                assert len(done) == len(futures) or any(
                    not f.cancelled() and f.exception() is not None for f in done
                )

        self._start(
            f"wait({list(tasks_)}, {return_when})",
            lambda: cf.wait(futures, LONG, return_when),
            None,
            verify,
        )

    @rule(task=tasks)
    def add_done_callback(self, task: Submitted) -> None:
        task.callbacks.append(0)
        slot = len(task.callbacks) - 1

        def callback(future: Any) -> None:
            task.callbacks[slot] += 1
            assert future.done()

        task.future.add_done_callback(callback)

    @rule()
    def disconnect_all(self) -> None:
        """The scheduler says Disconnect: every live future gets connection lost.

        (The stub sends it to every connected client: the client's connection opens
        with a probe, so the stub knows it before any task.)"""
        live = [t.future for t in self.submitted if not t.future.done()]
        if self.stub.disconnect_all():
            _, not_done = cf.wait(live, timeout=SLACK)
            assert not not_done, f"not ended by a Disconnect: {not_done}"

    @precondition(lambda self: not self.closed)
    @rule()
    def close_client(self) -> None:
        """``close()`` with work outstanding: it cancels everything in bulk (bounded by
        cancel_timeout) and stops; every future is terminal when it returns."""
        started = time.monotonic()
        self.client.close()
        self.closed = True
        elapsed = time.monotonic() - started
        assert elapsed <= CANCEL_TIMEOUT + SLACK, f"close() took {elapsed:.2f} s"
        live = [t for t in self.submitted if not t.future.done()]
        assert not live, f"not terminal after close(): {live}"

    @rule()
    def let_something_happen(self) -> None:
        """Wait (bounded) for the next future to finish, if any is live."""
        live = [t.future for t in self.submitted if not t.future.done()]
        if live:
            cf.wait(live, timeout=CANCEL_TIMEOUT, return_when=cf.FIRST_COMPLETED)

    # ------------------------------------------------------------------ checks

    def _check_result(self, task: Submitted, outcome: Outcome) -> None:
        kind, value = outcome
        state = task.future.state
        assert state in TERMINAL_STATES, f"{task}.result() returned in {state}"
        if state is FutureState.CANCELLED:
            assert kind == "raised" and isinstance(value, cf.CancelledError), outcome
            return
        died = task.behaviour.worker_died or (
            task.upstream is not None and task.upstream.behaviour.worker_died
        )
        if kind == "value":
            assert not died and task.kind != "fail", outcome
            assert value == task.value
            return
        allowed: tuple[type[BaseException], ...] = (ConnectionLostError,)
        if died:
            allowed += (WorkerDiedError,)
        elif task.kind == "fail":
            allowed += (ValueError,)
        assert isinstance(value, allowed), f"{task}: {value!r}"

    @invariant()
    def check_everything(self) -> None:
        """After every step; on failure, note every future's history and path."""
        try:
            self.nothing_raised_in_an_io_thread()
            self.every_future_is_consistent()
            self.calls_return_in_time()
        except BaseException:
            self._failed = True
            self._note_futures()
            raise

    def _note_futures(self) -> None:
        for task in self.submitted:
            note(f"{task}: {task.kind} {task.behaviour}")
            note(check_at_rest(task.future, name=repr(task)).report)

    def nothing_raised_in_an_io_thread(self) -> None:
        assert self.client.stats()["io_errors"] == 0
        assert self.stub.stats()["internal_errors"] == 0

    def every_future_is_consistent(self) -> None:
        for task in self.submitted:
            with task.future._condition:  # state and outcome read together
                state, outcome = task.future.state, task.future.cancel_outcome
            check_at_rest(task.future, name=repr(task)).assert_clean()
            assert all(calls <= 1 for calls in task.callbacks), task.callbacks
            if state in TERMINAL_STATES:
                assert task.future.cancelled() is (state is FutureState.CANCELLED)
                self._check_result(task, capture(lambda t=task: t.future.result(timeout=0)))
            if outcome is not None:
                allowed = _ALLOWED_OUTCOMES[task.behaviour.on_cancel]
                if task.in_graph:
                    # A sibling's cancel reaches it as an unasked confirm; cancelling a
                    # member confirms its dependents whatever their own mode.
                    allowed = allowed | {CancelOutcome.CONFIRMED, CancelOutcome.BY_SCHEDULER}
                assert outcome in allowed, f"{task}: {outcome} with {task.behaviour}"

    def calls_return_in_time(self) -> None:
        now = time.monotonic()
        remaining = []
        for call in self.calls:
            if call.outcome.done():
                call.verify(call.outcome.result())
            elif call.must_return_by is not None and now > call.must_return_by:
                raise AssertionError(f"{call.label} did not return in time")
            else:
                remaining.append(call)
        self.calls = remaining

    # ------------------------------------------------------------------ teardown

    def teardown(self) -> None:
        try:
            if not self._failed:  # after a failure, only clean up
                self._end_everything()
        except BaseException:
            self._note_futures()
            raise
        finally:
            reset_gates()
            self.client.close()
            self.stub.stop()

    def _end_everything(self) -> None:
        started = time.monotonic()
        futures = [t.future for t in self.submitted]
        for future in futures:
            future.cancel(wait=False)
        # Whatever a cancel can end ends within cancel_timeout (a little margin, not the
        # whole SLACK: examples where a cancel is refused would all wait for it).
        _, not_done = cf.wait(futures, timeout=CANCEL_TIMEOUT + 0.2)
        if not_done:
            # Refused cancels of tasks that will never answer: a scheduler that goes
            # away ends them at once. (Liveness is ZMTP's: a stub that answers no
            # protocol Heartbeat is alive, so going silent would end nothing.)
            self.stub.disconnect_all()
            _, not_done = cf.wait(futures, timeout=CONNECTION_TIMEOUT + HEARTBEAT_INTERVAL + SLACK)
        elapsed = time.monotonic() - started
        assert not not_done, f"not terminal after {elapsed:.2f} s: {not_done}"
        assert elapsed <= TERMINAL_WITHIN, f"took {elapsed:.2f} s to end every future"
        for call in self.calls:
            call.verify(call.outcome.result(SLACK))
        self.calls = []
        end = time.monotonic() + SLACK
        for task in self.submitted:
            # Callbacks run on the I/O thread just after the future turned terminal.
            while any(c != 1 for c in task.callbacks) and time.monotonic() < end:
                time.sleep(0.001)
            assert all(c == 1 for c in task.callbacks), f"{task}: callbacks {task.callbacks}"
            self._check_result(task, capture(lambda t=task: t.future.result(timeout=0)))
        self.nothing_raised_in_an_io_thread()
        self.every_future_is_consistent()
        self._stats_add_up()

    def _stats_add_up(self) -> None:
        """Every future is accounted for once in ``stats()``, by how it ended."""
        end = time.monotonic() + SLACK
        while self.client.stats()["in_flight"] and time.monotonic() < end:
            time.sleep(0.001)  # released just after its callbacks ran
        stats = self.client.stats()
        futures = [t.future for t in self.submitted]
        cancelled: dict[str, int] = {}
        for future in futures:
            if future.cancelled():
                key = future.cancel_outcome.value if future.cancel_outcome else "unknown"
                cancelled[key] = cancelled.get(key, 0) + 1
        failed = sum(1 for f in futures if not f.cancelled() and f.exception() is not None)
        assert stats["in_flight"] == 0
        assert stats["submitted"] == len(futures)
        assert stats["failed"] == failed
        assert stats["completed"] == len(futures) - failed - sum(cancelled.values())
        assert {k: v for k, v in stats["cancelled"].items() if v} == cancelled


ClientStubMachine.TestCase.settings = settings(
    max_examples=examples(0.5, minimum=5), stateful_step_count=8, deadline=None
)
TestClientStubMachine = ClientStubMachine.TestCase


# ---------------------------------------------------------------------------
# Races found while writing the machine above, forced deterministically by holding
# a thread where a preemption could stop it
# ---------------------------------------------------------------------------


def test_a_member_result_racing_its_cancel_request_still_cancels_the_graph() -> None:
    """Regression (found by this suite, fixed in f09ae4d): a graph member's result
    arriving between its user_cancel (under the future's lock) and send_cancel (outside
    it) released the future, and the TaskCancel then named the member, not its group,
    so the rest of the graph kept running."""
    reset_gates()
    with SchedulerStub(workers=2, log_messages=True) as stub:
        client = Client(stub.address, cancel_timeout=CANCEL_TIMEOUT)
        try:
            futures = client.submit_graph(
                {"a": (gate_wait, "race-a", 1, LONG), "b": (gate_wait, "race-b", 2, LONG)}
            )
            a, b = futures["a"], futures["b"]
            assert wait_started("race-a", SLACK) and wait_started("race-b", SLACK)
            # Hold the cancelling thread just before send_cancel, as a preemption would.
            send_cancel, reached, resume = client.send_cancel, threading.Event(), threading.Event()

            def preempted(future: TaskFuture, deadline: float, force: bool = True) -> None:
                reached.set()
                resume.wait(SLACK)
                send_cancel(future, deadline, force=force)

            client.send_cancel = preempted  # type: ignore[method-assign]
            canceller = threading.Thread(target=b.cancel, kwargs={"wait": False})
            canceller.start()
            assert reached.wait(SLACK) and b.state is FutureState.CANCEL_REQUESTED
            open_gate("race-b")  # b's result now races the cancel request
            cf.wait([b], timeout=SLACK)
            assert b.cancel_outcome is CancelOutcome.RESULT_RACED
            resume.set()
            canceller.join(SLACK)
            (group,) = {r.message.group_id for r in stub.log if isinstance(r.message, Task)}
            cf.wait([a], timeout=SLACK)
            cancels = [r.message.task_id for r in stub.log if isinstance(r.message, TaskCancel)]
            assert group in cancels, "the TaskCancel named the member, not its group"
            assert a.cancelled(), f"the rest of the graph was not cancelled: a is {a.state}"
        finally:
            reset_gates()
            client.close()


def test_a_submit_racing_close_is_refused_or_resolved() -> None:
    """Regression (found by this suite, fixed in f09ae4d): submit() registering its
    future after a concurrent close() had taken its snapshot and stopped the I/O thread
    left that future pending forever."""
    with SchedulerStub(workers=1) as stub:
        client = Client(stub.address, cancel_timeout=CANCEL_TIMEOUT)
        # Hold the submitting thread after its shutdown check, as a preemption would.
        register, reached, resume = client._register, threading.Event(), threading.Event()

        def preempted(*args: Any) -> Any:
            reached.set()
            resume.wait(SLACK)
            return register(*args)

        client._register = preempted  # type: ignore[method-assign]
        submitted: cf.Future[Any] = cf.Future()

        def submit() -> None:
            try:
                submitted.set_result(client.submit(echo, 1))
            except BaseException as error:
                submitted.set_exception(error)

        threading.Thread(target=submit, daemon=True).start()
        assert reached.wait(SLACK)
        closer = threading.Thread(target=client.close, daemon=True)
        closer.start()
        # close() now waits for the submit (it holds the submit lock); before the fix it
        # returned at once, and the submit then registered into a closed client.
        closer.join(1.0)
        resume.set()
        try:
            future = submitted.result(SLACK)
        except RuntimeError:
            return  # refused: fine
        finally:
            closer.join(SLACK)
        _, not_done = cf.wait([future], timeout=CANCEL_TIMEOUT + SLACK)
        assert not not_done, f"a future submitted during close() hangs in {future.state}"


def test_a_post_after_close_never_writes_to_a_reused_descriptor() -> None:
    """Regression (found by this suite, fixed in f09ae4d): a post that raced close()
    (a TaskCancel from a preempted cancel(wait=False), a racing submit) wrote its
    wake-up byte to the closed wake pipe's descriptor number, which the process may
    have reused for another file, pipe or socket."""
    reset_gates()
    pipes: list[tuple[int, int]] = []
    with SchedulerStub(workers=1) as stub:
        client = Client(stub.address, cancel_timeout=0.2)
        try:
            future = client.submit(gate_wait, "fd-reuse", 1, LONG)
            assert wait_started("fd-reuse", SLACK)
            send_cancel, reached, resume = client.send_cancel, threading.Event(), threading.Event()

            def preempted(future: TaskFuture, deadline: float, force: bool = True) -> None:
                reached.set()
                resume.wait(SLACK)
                send_cancel(future, deadline, force=force)

            client.send_cancel = preempted  # type: ignore[method-assign]
            canceller = threading.Thread(target=future.cancel, kwargs={"wait": False})
            canceller.start()
            assert reached.wait(SLACK)
            wake_fd = client.engine._wake_write
            client.close()  # times the cancel out (its TaskCancel never went) and stops
            # Something else in the process opens files: the lowest free numbers first.
            while len(pipes) < 256 and not any(wake_fd in pipe for pipe in pipes):
                pipes.append(os.pipe())
            if not any(wake_fd in pipe for pipe in pipes):
                resume.set()
                pytest.skip(f"fd {wake_fd} was reused by something else in the process")
            resume.set()
            canceller.join(SLACK)
            for read_fd, _ in pipes:
                os.set_blocking(read_fd, False)
                with contextlib.suppress(BlockingIOError):
                    data = os.read(read_fd, 16)
                    assert not data, f"a closed client wrote {data!r} into fd {wake_fd}"
        finally:
            for pipe in pipes:
                for fd in pipe:
                    os.close(fd)
            reset_gates()
            client.close()
