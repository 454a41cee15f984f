"""``TaskFuture``: the ``concurrent.futures.Future`` adapter over the FSM.

Every change of a TaskFuture's state is one trigger of the shared machine
(``futurefsm.fsm.fire``), run under the future's own lock, which is also the stdlib's
``_condition``: what ``concurrent.futures.wait`` and ``as_completed`` take to install
their waiters. Under that lock the adapter keeps the stdlib's ``_state``, ``_result``
and ``_exception`` in step with the FSM and notifies waiters once, on entering a
terminal state. Outside it, it carries out the cell's I/O effect (send a TaskCancel
through the transport) and runs done-callbacks.

Why the future is built lazily
------------------------------
A client may hold 100,000 live futures, and the garbage collector walks every object
it tracks again and again while they live (with 100,000 alive, each full collection
takes tens of milliseconds, and one comes every 25% of growth). A stdlib ``Future``
allocates about eleven such objects (a ``threading.Condition`` with its dict, deque
and bound methods, two lists); a live TaskFuture one: itself. Its lock is not a
second object: a TaskFuture *is* its lock (it subclasses the C ``_thread.RLock``, so
``acquire``, ``release`` and ``with future:`` are that lock; they are there for
``concurrent.futures.wait`` and ``threading.Condition``, not for users). Its history is
``bytes``, which the collector never walks (``futurefsm.fsm.machine``).

``_condition`` and ``_waiters`` are properties, so ``concurrent.futures.wait``,
``as_completed`` and anything else written against the stdlib's private fields find
what they expect: ``_condition`` is the future itself (they only take and release
it), and the waiters list is created on first use, as is the callbacks list.
``result()``, ``exception()``, ``done()`` and ``running()`` read a terminal state
without taking the lock (terminal states are final, and ``_result`` / ``_exception``
are stored before ``_state`` announces them). Only a caller that really has to wait
creates a ``threading.Condition`` over the lock (``_cond``), and a future that enters
a terminal state notifies and drops it.
"""

from __future__ import annotations

import _thread
import asyncio
import logging
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import _base
from typing import Any

from ..engines.shared import in_event_loop as _in_event_loop
from ..errors import ConnectionLostError
from ..fsm import (
    TERMINAL_STATES,
    CancelOutcome,
    Cell,
    Effect,
    FutureState,
    HistoryEntry,
    Trigger,
    fire,
    history_of,
)
from .transport import FutureTransport

__all__ = ["TaskFuture"]

LOGGER = logging.getLogger("futurefsm.future")

# The state concurrent.futures sees for each FSM state (docs/transitions.md, States).
_STDLIB_STATE: dict[FutureState, str] = {
    FutureState.PENDING: _base.PENDING,
    FutureState.RUNNING: _base.RUNNING,
    FutureState.CANCEL_REQUESTED: _base.RUNNING,
    FutureState.CANCELLED: _base.CANCELLED_AND_NOTIFIED,
    FutureState.DONE: _base.FINISHED,
}
_TERMINAL_STDLIB_STATES = (_base.CANCELLED, _base.CANCELLED_AND_NOTIFIED, _base.FINISHED)

_CONFIRM_TRIGGERS: dict[str, Trigger] = {
    "canceled": Trigger.RECV_CONFIRM_CANCELED,
    "not_found": Trigger.RECV_CONFIRM_NOT_FOUND,
    "cancel_failed": Trigger.RECV_CONFIRM_CANCEL_FAILED,
}

# How many done-callbacks this thread is running right now. Code running inside one
# must never block waiting for an answer: it may be the thread that delivers it.
_callback_depth = threading.local()
_monotonic = time.monotonic
_FINISHED = _base.FINISHED
_CANCELLED_AND_NOTIFIED = _base.CANCELLED_AND_NOTIFIED

# Held only while a future's condition is created, so that two threads asking for it
# at once get the same one (a waiter on a condition nobody notifies would sleep on).
_create_lock = threading.Lock()


def _in_done_callback() -> bool:
    return getattr(_callback_depth, "value", 0) > 0


class TaskFuture(_base.Future, _thread.RLock):
    """The future of one remote task: a ``concurrent.futures.Future`` driven by the FSM.

    Created by a client (or any ``FutureTransport``) in state ``pending``. The
    transport moves it with the trigger methods (``sent``, ``recv_result``,
    ``recv_cancel_confirm``, ``cancel_timed_out``, ``connection_lost``); the user
    sees the stdlib API plus ``task_id``, ``state``, ``cancel_outcome`` and
    ``history``.

    It is also its own lock (a ``_thread.RLock`` subclass: one object for the garbage
    collector to walk instead of two; see the module docstring). Taking it from
    outside is taking the future's ``_condition``, as ``concurrent.futures.wait``
    does; nothing else should.
    """

    # The stdlib's fields (_state, _result, _exception, _done_callbacks) are slots
    # here too: with every attribute in a slot, no instance dict is ever created. The
    # lock needs no slot: it is the object itself.
    __slots__ = (
        "_cancel_answered",
        "_cancel_deadline",
        "_cond",
        "_done_callbacks",
        "_exception",
        "_result",
        "_state",
        "_transport",
        "_waiter_list",
        "cancel_outcome",
        "fsm_history",
        "group_id",
        "state",
        "task_id",
    )

    _on_fire: Callable[[Cell], object] | None = None
    """Called with every cell a trigger takes, under the future's lock: a class
    attribute, None here. The live view (futurefsm.dashboard) counts its client's
    futures in a subclass that sets it; a future without one pays one lookup."""

    def __init__(
        self, task_id: bytes, transport: FutureTransport, group_id: bytes | None = None
    ) -> None:
        # Not super().__init__(): it would build the full Condition and lists eagerly.
        self._cond: threading.Condition | None = None
        self._state = _base.PENDING
        self._result: Any = None
        self._exception: BaseException | None = None
        self._waiter_list: list[Any] | None = None
        self._done_callbacks: list[Callable[[TaskFuture], object]] | None = None
        self.task_id = task_id
        self.group_id = group_id
        """The graph this task belongs to (cancelled as a whole), or None."""
        self.state = FutureState.PENDING
        self.fsm_history = b""  # packed: futurefsm.fsm.history_of reads it
        self.cancel_outcome: CancelOutcome | None = None
        self._transport = transport
        # Monotonic deadline of the cancel request in flight (cancel_requested only).
        self._cancel_deadline = 0.0
        # Where cancel()/cancelled() wait for the answer to leave cancel_requested; it
        # shares the future's lock and is created by the first such waiter only.
        self._cancel_answered: threading.Condition | None = None

    @property
    def _condition(self) -> TaskFuture:
        """The stdlib's ``_condition``, as ``concurrent.futures.wait`` and
        ``as_completed`` use it: only taken and released, around a look at the state
        and at ``_waiters``. That is the future's lock, which the future is: no
        ``threading.Condition`` is built for them. (``result()`` and ``exception()``,
        the stdlib's only waiters on it, are this class's own and wait on ``_cond``.)
        """
        return self

    @property
    def _waiters(self) -> list[Any]:
        """The stdlib's ``_waiters`` (``wait``/``as_completed`` add theirs under
        ``_condition``), created on first use."""
        waiters = self._waiter_list
        if waiters is None:
            with _create_lock:
                waiters = self._waiter_list
                if waiters is None:
                    waiters = self._waiter_list = []
        return waiters

    def __repr__(self) -> str:
        return (
            f"<TaskFuture at {id(self):#x} task={self.task_id.hex()[:12]} state={self.state.value}>"
        )

    # ------------------------------------------------------------------ FSM core

    def _fire(
        self,
        trigger: Trigger,
        result: Any = None,
        exception: BaseException | None = None,
        *,
        deadline: float = 0.0,
        force: bool = True,
    ) -> Cell:
        """Run one trigger under the lock, then its I/O effect and callbacks outside it."""
        with self:
            source = self.state
            cell = fire(self, trigger)
            if self._on_fire is not None:
                self._on_fire(cell)
            dest = cell.dest
            if dest is not source:
                if cell.outcome is not None:
                    self.cancel_outcome = cell.outcome
                if cell.effect is Effect.SEND_CANCEL:
                    self._cancel_deadline = deadline
                self._enter_stdlib_state(dest, cell, result, exception)
                if dest in TERMINAL_STATES:
                    # The stdlib's result()/exception() take any wake-up on _condition
                    # to mean "terminal", so it is notified on entering one only. Then
                    # it is dropped: nobody waits on a terminal future again.
                    condition = self._cond
                    if condition is not None:
                        condition.notify_all()
                        self._cond = None
                if source is FutureState.CANCEL_REQUESTED:
                    answered = self._cancel_answered
                    if answered is not None:
                        answered.notify_all()
                        self._cancel_answered = None
        if cell.effect is Effect.SEND_CANCEL:
            self._transport.send_cancel(self, deadline, force=force)
        elif cell.effect is Effect.STALE:
            LOGGER.debug("stale %s on %r", trigger.value, self)
        if dest is not source and dest in TERMINAL_STATES:
            if self._done_callbacks:
                self._invoke_callbacks()
            self._transport.release(self)
        return cell

    def _enter_stdlib_state(
        self, dest: FutureState, cell: Cell, result: Any, exception: BaseException | None
    ) -> None:
        """Mirror ``dest`` into the stdlib fields and notify waiters (lock held)."""
        if dest is FutureState.DONE:
            if cell.effect is Effect.FAIL_CONNECTION_LOST:
                why = f": {result}" if result else ""
                exception = ConnectionLostError(
                    f"connection to the scheduler lost before task {self.task_id.hex()} "
                    f"finished{why}"
                )
            # The value before the state: result() reads a terminal state unlocked.
            if exception is not None:
                self._exception = exception
                self._state = _FINISHED
                for waiter in self._waiter_list or ():
                    waiter.add_exception(self)
            else:
                self._result = result
                self._state = _FINISHED
                for waiter in self._waiter_list or ():
                    waiter.add_result(self)
        elif dest is FutureState.CANCELLED:
            self._state = _CANCELLED_AND_NOTIFIED
            for waiter in self._waiter_list or ():
                waiter.add_cancelled(self)
        else:
            self._state = _STDLIB_STATE[dest]

    # ------------------------------------------------------- triggers (transport side)

    def sent(self) -> Cell:
        """Trigger ``sent``: the Task is being handed to the transport.

        The caller sends the Task only if this did not return a ``STALE`` cell (a
        future cancelled before sending must not go out).
        """
        return self._fire(Trigger.SENT)

    def recv_result(self, result: Any = None, exception: BaseException | None = None) -> Cell:
        """Trigger ``recv_result``: a ``TaskResult`` arrived (already deserialized).

        ``exception`` set means the task failed (or its worker died) with it.
        """
        return self._fire(Trigger.RECV_RESULT, result, exception)

    def recv_cancel_confirm(self, kind: str) -> Cell:
        """Trigger the ``recv_confirm_*`` matching ``kind`` (a ``ConfirmKind`` value)."""
        try:
            trigger = _CONFIRM_TRIGGERS[kind]
        except KeyError:
            expected = ", ".join(_CONFIRM_TRIGGERS)
            raise ValueError(
                f"unknown cancel confirm kind {kind!r} (expected one of {expected})"
            ) from None
        return self._fire(trigger)

    def cancel_timed_out(self) -> Cell:
        """Trigger ``cancel_timed_out``: the cancel deadline passed unanswered."""
        return self._fire(Trigger.CANCEL_TIMED_OUT)

    def connection_lost(self, why: str | None = None) -> Cell:
        """Trigger ``connection_lost``: the scheduler went silent or away. ``why``, if
        given, ends the ``ConnectionLostError``'s message (e.g. "no scheduler answered
        at ADDRESS")."""
        return self._fire(Trigger.CONNECTION_LOST, result=why)

    # ------------------------------------------------------------------ user API

    @property
    def history(self) -> list[HistoryEntry]:
        """Every trigger fired on this future: (monotonic time, trigger, from, to)."""
        return history_of(self)

    @property
    def cancel_deadline(self) -> float | None:
        """Monotonic deadline of the cancel request in flight, or None if there is none."""
        return self._cancel_deadline if self.state is FutureState.CANCEL_REQUESTED else None

    def _must_not_block(self) -> bool:
        """True where waiting for an answer could deadlock or stall an event loop."""
        return _in_done_callback() or self._transport.on_io_thread() or _in_event_loop()

    def cancel(
        self, timeout: float | None = None, *, wait: bool = True, force: bool = True
    ) -> bool:
        """Cancel the task, confirmed by the scheduler.

        pending: cancelled at once, nothing sent. running: one TaskCancel is sent and
        the call waits up to ``timeout`` seconds (default: the transport's
        ``cancel_timeout``) for the answer; True if the future ended cancelled
        (confirmed, not found, result raced, or timed out), False if the scheduler
        refused. A cancel already in flight is waited for, never sent twice.
        cancelled: True; done: False.

        ``force=False`` asks the scheduler to cancel the task only if it has not
        started, as ``concurrent.futures.Future.cancel`` does: a running task is
        refused (``cancel_failed``: False) and runs on to its result.

        ``wait=False`` sends the request and returns at once: True if the future is
        cancelled or the request is in flight, False if it is done. Called from the
        client's I/O thread, from a done-callback or from a thread running an asyncio
        event loop, ``cancel()`` never waits, as if ``wait=False`` had been passed.
        """
        if timeout is None:
            timeout = self._transport.cancel_timeout
        deadline = _monotonic() + timeout
        self._request_cancel(deadline, force)
        if wait and not self._must_not_block():
            return self._wait_for_cancel_answer(deadline)
        state = self.state
        return state is FutureState.CANCELLED or state is FutureState.CANCEL_REQUESTED

    def _request_cancel(self, deadline: float, force: bool = True) -> None:
        """Fire ``user_cancel``; a TaskCancel goes out (once) with ``deadline`` and
        ``force``."""
        self._fire(Trigger.USER_CANCEL, deadline=deadline, force=force)

    def _wait_for_cancel_answer(self, deadline: float) -> bool:
        """Wait until the cancel in flight is answered or ``deadline`` passes.

        At the deadline the waiter itself fires ``cancel_timed_out``: a future never
        waits past its cancel deadline, whether or not the transport enforces it.
        """
        with self:
            while self.state is FutureState.CANCEL_REQUESTED:
                remaining = deadline - _monotonic()
                if remaining <= 0:
                    break
                answered = self._cancel_answered
                if answered is None:  # (the lock is held: no other thread creates one)
                    answered = self._cancel_answered = threading.Condition(self)
                answered.wait(remaining)
            unanswered = self.state is FutureState.CANCEL_REQUESTED
        if unanswered:
            self._fire(Trigger.CANCEL_TIMED_OUT)
        return self.state is FutureState.CANCELLED

    def cancelled(self) -> bool:
        """True if the future ended cancelled.

        While a cancel is in flight this waits for its answer, bounded by that
        cancel's deadline, except on the I/O thread, in a done-callback or in an
        event loop, where it reports at once (False: not cancelled yet).
        """
        state = self.state
        if state is FutureState.CANCEL_REQUESTED and not self._must_not_block():
            return self._wait_for_cancel_answer(self._cancel_deadline)
        return state is FutureState.CANCELLED

    def result(self, timeout: float | None = None) -> Any:
        """The task's return value, as ``concurrent.futures.Future.result``.

        Raises ``RuntimeError`` instead of waiting where waiting would deadlock: on the
        client's I/O thread (e.g. in a done-callback) for a future that is not finished,
        unless ``timeout`` is 0 or less. That thread is the one that would deliver it.
        """
        state = self._state
        if state is _FINISHED:
            if self._exception is None:
                return self._result
            try:
                raise self._exception
            finally:
                # As the stdlib does: break the cycle exception -> traceback -> frame.
                self = None
        if state is _CANCELLED_AND_NOTIFIED:
            raise _base.CancelledError()
        if timeout is None or timeout > 0:
            self._refuse_to_deadlock("result")
        try:
            self._wait_terminal(timeout)
            return self.result(0)
        finally:
            self = None  # the task's exception, raised through this frame, must not hold it

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The task's exception or None, as ``concurrent.futures.Future.exception``;
        refuses to wait on the client's I/O thread as ``result()`` does."""
        state = self._state
        if state is _FINISHED:
            return self._exception
        if state is _CANCELLED_AND_NOTIFIED:
            raise _base.CancelledError()
        if timeout is None or timeout > 0:
            self._refuse_to_deadlock("exception")
        self._wait_terminal(timeout)
        return self.exception(0)

    def _wait_terminal(self, timeout: float | None) -> None:
        """Wait until the future is terminal, at most ``timeout`` seconds (None: no
        limit); raise ``TimeoutError`` if it is not by then (0 or less: do not wait).

        The condition (over the future's lock) is created by the first waiter, under
        that lock, and notified and dropped on entering a terminal state, in ``_fire``.
        """
        end = None if timeout is None else _monotonic() + timeout
        with self:
            while self._state not in _TERMINAL_STDLIB_STATES:
                remaining = None if end is None else end - _monotonic()
                if remaining is not None and remaining <= 0:
                    raise _base.TimeoutError()
                condition = self._cond
                if condition is None:
                    condition = self._cond = threading.Condition(self)
                condition.wait(remaining)

    def done(self) -> bool:
        """True if the future is terminal (cancelled or finished); never blocks."""
        return self._state in _TERMINAL_STDLIB_STATES

    def running(self) -> bool:
        """True while the task is with the scheduler (``running`` or
        ``cancel_requested``)."""
        return self._state is _base.RUNNING

    def _refuse_to_deadlock(self, method: str) -> None:
        if self.state not in TERMINAL_STATES and self._transport.on_io_thread():
            raise RuntimeError(
                f"{method}() would wait forever: it was called on the client's I/O thread "
                f"(for instance in a done-callback) for {self!r}, which only that thread "
                f"can finish. Call it from another thread, or pass timeout=0 to poll."
            )

    def add_done_callback(self, fn: Callable[[TaskFuture], object]) -> None:
        """Run ``fn(future)`` once the future is terminal (at once if it is already).

        It runs exactly once, outside the future's lock, on the thread that finished
        the future: for a message from the scheduler, the client's I/O thread, so a
        slow callback delays every other future's messages. An exception it raises is
        logged, not raised.
        """
        with self:
            if self._state not in _TERMINAL_STDLIB_STATES:
                if self._done_callbacks is None:
                    self._done_callbacks = [fn]
                else:
                    self._done_callbacks.append(fn)
                return
        self._run_callback(fn)

    def _invoke_callbacks(self) -> None:
        # Terminal: nothing is added any more (add_done_callback checks under the lock).
        for callback in self._done_callbacks or ():
            self._run_callback(callback)

    def _run_callback(self, fn: Callable[[TaskFuture], object]) -> None:
        _callback_depth.value = getattr(_callback_depth, "value", 0) + 1
        try:
            fn(self)
        except Exception:
            LOGGER.exception("exception calling callback for %r", self)
        finally:
            _callback_depth.value -= 1

    def __await__(self) -> Generator[Any, None, Any]:
        """``await future`` in asyncio. Cancelling the awaiting task cancels the
        remote task with ``wait=False``: the event loop is never blocked."""
        return asyncio.wrap_future(self).__await__()

    # The executor-side setters of the stdlib would bypass the FSM: protocol messages,
    # delivered through the trigger methods above, are the only way to finish.

    def set_running_or_notify_cancel(self) -> bool:
        """Not supported: a TaskFuture is driven by protocol messages."""
        raise RuntimeError("TaskFuture is driven by its transport; use sent()")

    def set_result(self, result: Any) -> None:
        """Not supported: a TaskFuture is driven by protocol messages."""
        raise RuntimeError("TaskFuture is driven by its transport; use recv_result()")

    def set_exception(self, exception: BaseException | None) -> None:
        """Not supported: a TaskFuture is driven by protocol messages."""
        raise RuntimeError("TaskFuture is driven by its transport; use recv_result()")
