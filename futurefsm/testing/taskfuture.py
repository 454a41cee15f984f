"""``TaskFutureRaceHarness``: the race kit's harness for futurefsm's own ``TaskFuture``
(or a subclass) on an ``InMemoryTransport``."""

from __future__ import annotations

import threading
from typing import Any

from ..client.future import TaskFuture
from ..client.transport import InMemoryTransport
from ..fsm import FutureState
from .actions import Unsupported

__all__ = ["TaskFutureRaceHarness"]


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
