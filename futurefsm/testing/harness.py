"""The adapter between the race tools and a future implementation.

The race machine and the explorer never touch a future's internals: they go through
a ``FutureHarness`` (one transport and the futures it carries) and a
``FutureUnderTest`` per future. To check another implementation against
docs/transitions.md, implement these two small protocols for it (about 60 lines; see
``TaskFutureHarness``) and hand the harness factory to ``make_race_machine`` or
``explore``.

What a harness promises:

- ``create()`` makes a new future in state ``pending``, registered with the transport.
- ``FutureUnderTest.deliver(step, payload)`` delivers one step (any ``Step`` but
  ``USER_CANCEL``, which the tools do themselves with ``future.cancel(wait=False)``)
  straight to that future, as the I/O thread would after looking it up; it returns
  True if the implementation treated it as stale, False if not, None if it cannot tell.
- ``deliver_to_id(task_id, step, payload)`` routes the step by task id the way a
  client's registry does: an id with no live future is stale (True).
- ``expire_cancels()`` fires ``cancel_timed_out`` through the transport on every
  future that is not terminal and had a TaskCancel sent, in the order of their first
  TaskCancel (the order matters when a done-callback cancels another future).
- ``lose_connection()`` fires ``connection_lost`` on every future live when it is
  called, in creation order.
- ``attach_io_thread(thread)`` tells the implementation which thread delivers
  messages (user calls made there, or in done-callbacks, must never block).
- ``snapshot()`` reads a future's observable state consistently (under its lock if it
  has one).

The user API is exercised on ``FutureUnderTest.future`` directly: it must be a
``concurrent.futures.Future`` whose ``cancel`` takes ``(timeout=None, *, wait=True)``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, _base
from dataclasses import dataclass
from typing import Any, Protocol

from ..client.future import TaskFuture
from ..client.transport import InMemoryTransport
from ..fsm import CancelOutcome, Effect, FutureState, HistoryEntry
from .steps import Step

__all__ = [
    "STDLIB_STATE",
    "CountingWaiter",
    "FutureHarness",
    "FutureSnapshot",
    "FutureUnderTest",
    "HarnessFactory",
    "TaskFutureHarness",
    "TaskFutureRaceHarness",
    "TaskFutureUnderTest",
]

STDLIB_STATE: dict[FutureState, str] = {
    FutureState.PENDING: _base.PENDING,
    FutureState.RUNNING: _base.RUNNING,
    FutureState.CANCEL_REQUESTED: _base.RUNNING,
    FutureState.CANCELLED: _base.CANCELLED_AND_NOTIFIED,
    FutureState.DONE: _base.FINISHED,
}
"""docs/transitions.md, States: the ``_state`` concurrent.futures must see in each FSM state."""


@dataclass(frozen=True)
class FutureSnapshot:
    """A future's observable state, read at one instant."""

    state: FutureState
    """The FSM state the implementation reports."""
    stdlib_state: str
    """``future._state`` as concurrent.futures sees it."""
    running: bool
    """``future.running()``."""
    done: bool
    """``future.done()``."""
    cancel_outcome: CancelOutcome | None
    """The recorded ``CancelOutcome``, or None."""
    history: Sequence[HistoryEntry] | None
    """(time, trigger, source, dest) of every trigger, or None if not kept."""
    registered: bool | None
    """Whether the transport still holds the future (None: cannot tell)."""

    @classmethod
    def of_task_future(cls, future: Any, registered: bool | None = None) -> FutureSnapshot:
        """The snapshot of a ``TaskFuture`` (or any future with its ``state``,
        ``cancel_outcome`` and ``history``), read under its lock."""
        with future._condition:
            return cls(
                state=future.state,
                stdlib_state=future._state,
                running=future.running(),
                done=future.done(),
                cancel_outcome=future.cancel_outcome,
                history=future.history,
                registered=registered,
            )


class FutureUnderTest(Protocol):
    """One future of the implementation under test, with hooks to drive and observe it."""

    future: Future[Any]
    """The object user calls go to (``cancel``, ``result``, ``add_done_callback``...)."""
    task_id: bytes
    """The task id the transport routes messages by."""

    def deliver(self, step: Step, payload: Any = None) -> bool | None:
        """Deliver ``step`` (not ``USER_CANCEL``) to this future; True if stale."""
        ...

    def snapshot(self) -> FutureSnapshot:
        """Read the future's observable state consistently."""
        ...

    def cancels_sent(self) -> int:
        """How many TaskCancel messages the transport was asked to send for it."""
        ...


class FutureHarness(Protocol):
    """A transport and its futures, as the race machine and the explorer drive them."""

    def create(self) -> FutureUnderTest:
        """A new future in state ``pending``, registered with the transport."""
        ...

    def deliver_to_id(self, task_id: bytes, step: Step, payload: Any = None) -> bool | None:
        """Route ``step`` by task id like a client registry; True if stale."""
        ...

    def expire_cancels(self) -> None:
        """Fire ``cancel_timed_out`` on every live future that had a TaskCancel sent,
        in the order of their first TaskCancel."""
        ...

    def lose_connection(self) -> None:
        """Fire ``connection_lost`` on every future live now, in creation order."""
        ...

    def attach_io_thread(self, thread: threading.Thread) -> None:
        """Deliveries come from ``thread`` from now on: treat it as the I/O thread."""
        ...

    def close(self) -> None:
        """Release whatever the harness holds."""
        ...


HarnessFactory = Callable[[], FutureHarness]
"""What the race machine and the explorer take: a fresh harness per test case."""


class CountingWaiter(_base._Waiter):
    """A concurrent.futures waiter (what ``wait``/``as_completed`` install) that counts
    every notification, to check that waiters are notified exactly once."""

    def __init__(self) -> None:
        super().__init__()
        self.results = 0
        self.exceptions = 0
        self.cancellations = 0
        self._lock = threading.Lock()

    def add_result(self, future: Future[Any]) -> None:
        """Count a result notification."""
        with self._lock:
            self.results += 1
        super().add_result(future)

    def add_exception(self, future: Future[Any]) -> None:
        """Count an exception notification."""
        with self._lock:
            self.exceptions += 1
        super().add_exception(future)

    def add_cancelled(self, future: Future[Any]) -> None:
        """Count a cancellation notification."""
        with self._lock:
            self.cancellations += 1
        super().add_cancelled(future)

    @property
    def total(self) -> int:
        """Notifications of any kind so far."""
        return self.results + self.exceptions + self.cancellations

    @classmethod
    def install(cls, future: Future[Any]) -> CountingWaiter:
        """Install a new counting waiter on ``future`` as ``concurrent.futures.wait`` does
        (under the future's condition), and return it."""
        waiter = cls()
        with future._condition:
            future._waiters.append(waiter)
        return waiter


# ---------------------------------------------------------------------------
# The default harness: TaskFuture over the in-memory transport.
# ---------------------------------------------------------------------------


class _Transport(InMemoryTransport):
    """``InMemoryTransport`` that builds futures of a chosen ``TaskFuture`` subclass."""

    def __init__(self, cancel_timeout: float, future_class: type[TaskFuture]) -> None:
        super().__init__(cancel_timeout=cancel_timeout)
        self.future_class = future_class
        self._next_id = 0

    def create_future(self, task_id: bytes | None = None) -> TaskFuture:
        if task_id is None:
            self._next_id += 1
            task_id = self._next_id.to_bytes(16, "big")
        future = self.future_class(task_id, self)
        with self._lock:
            self.futures[future.task_id] = future
        return future


class TaskFutureUnderTest:
    """``FutureUnderTest`` for a ``TaskFuture`` on the in-memory transport."""

    def __init__(self, future: TaskFuture, transport: _Transport) -> None:
        self.future: TaskFuture = future
        self.task_id = future.task_id
        self._transport = transport

    def __repr__(self) -> str:
        return f"<future {int.from_bytes(self.task_id, 'big')} {self.future.state.value}>"

    def deliver(self, step: Step, payload: Any = None) -> bool:
        """Fire ``step``'s trigger method on the future; True if the cell was stale."""
        future = self.future
        if step is Step.SENT:
            return not self._transport.send_task(future)
        if step.status is not None:
            if step is Step.RESULT_SUCCESS:
                cell = future.recv_result(payload)
            else:
                cell = future.recv_result(exception=payload)
        elif step.confirm_kind is not None:
            cell = future.recv_cancel_confirm(step.confirm_kind.value)
        elif step is Step.CANCEL_TIMED_OUT:
            cell = future.cancel_timed_out()
        elif step is Step.CONNECTION_LOST:
            cell = future.connection_lost()
        else:
            raise ValueError(f"{step} is a user call, not something a transport delivers")
        return cell.effect is Effect.STALE

    def snapshot(self) -> FutureSnapshot:
        """Everything observable, read under the future's lock."""
        future = self.future
        return FutureSnapshot.of_task_future(
            future, registered=future.task_id in self._transport.futures
        )

    def cancels_sent(self) -> int:
        """TaskCancels the future asked its transport to send."""
        return self._transport.cancels_sent.count(self.task_id)


class TaskFutureHarness:
    """``FutureHarness`` for ``TaskFuture`` (or a subclass) on an ``InMemoryTransport``.

    ``cancel_timeout`` is the transport's default cancel wait; the tools pass explicit
    timeouts, so it matters only for ``cancel()`` without one. ``future_class`` lets a
    test plug in a (deliberately broken) subclass.
    """

    def __init__(
        self, cancel_timeout: float = 60.0, future_class: type[TaskFuture] = TaskFuture
    ) -> None:
        self.transport = _Transport(cancel_timeout, future_class)

    def create(self) -> TaskFutureUnderTest:
        """A pending future registered with the transport."""
        return TaskFutureUnderTest(self.transport.create_future(), self.transport)

    def deliver_to_id(self, task_id: bytes, step: Step, payload: Any = None) -> bool:
        """Look the future up as ``Client`` does; an unknown id is stale."""
        future = self.transport.futures.get(task_id)
        if future is None:
            return True
        return TaskFutureUnderTest(future, self.transport).deliver(step, payload)

    def expire_cancels(self) -> None:
        """Every cancel deadline is in the past: ``InMemoryTransport.expire_cancels``."""
        self.transport.expire_cancels(now=math.inf)

    def lose_connection(self) -> None:
        """``connection_lost`` on every future the transport still holds."""
        for future in list(self.transport.futures.values()):
            future.connection_lost()

    def attach_io_thread(self, thread: threading.Thread) -> None:
        """The in-memory transport's designated I/O thread."""
        self.transport.io_thread = thread

    def close(self) -> None:
        """Nothing to release: the in-memory transport holds no resources."""


class TaskFutureRaceHarness:
    """The race kit's harness (``futurefsm.testing.actions.RaceHarness``) for
    ``TaskFuture`` (or a subclass) on an ``InMemoryTransport``: every default action,
    states reported as the table's."""

    unsupported: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        born: str = "pending",
        future_class: type[TaskFuture] = TaskFuture,
        cancel_timeout: float = 60.0,
    ) -> None:
        self.transport = _Transport(cancel_timeout, future_class)
        self.born = born

    def create(self) -> TaskFuture:
        """A future registered with the transport; sent if ``born="sent"``."""
        future = self.transport.create_future()
        if self.born == "sent":
            self.transport.send_task(future)
        return future

    def deliver(self, action: str, future: Any, payload: Any) -> None:
        """Fire the trigger method ``action`` names."""
        from .actions import Unsupported

        if action == "sent":
            self.transport.send_task(future)
        elif action == "result_success":
            future.recv_result(payload)
        elif action == "result_failed":
            future.recv_result(exception=payload)
        elif action.startswith("confirm_"):
            future.recv_cancel_confirm(action.removeprefix("confirm_"))
        elif action == "cancel_timed_out":
            future.cancel_timed_out()
        elif action == "connection_lost":
            future.connection_lost()
        elif action == "disconnect":
            for live in list(self.transport.futures.values()):
                live.connection_lost()
        elif action == "cancel_all":
            for live in list(self.transport.futures.values()):
                live.cancel(wait=False)
        else:
            raise Unsupported(action)

    def cancel(self, future: TaskFuture) -> bool:
        """``future.cancel()``: waits for the answer (up to ``cancel_timeout``)."""
        return future.cancel()

    def state(self, future: TaskFuture) -> FutureState:
        """The FSM state."""
        return future.state

    def same_result(self, expected: Any, got: Any) -> bool:
        """Values by equality, exceptions by identity (nothing is copied in memory)."""
        return got is expected or (
            not isinstance(expected, BaseException) and bool(got == expected)
        )

    def attach_delivering_thread(self, thread: threading.Thread) -> None:
        """The in-memory transport's I/O thread."""
        self.transport.io_thread = thread

    def close(self) -> None:
        """Lose the connection: every future ends, every parked call returns."""
        for live in list(self.transport.futures.values()):
            live.connection_lost()
