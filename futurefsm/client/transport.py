"""The small interface through which a ``TaskFuture`` talks to the outside.

A future asks its transport for three things only: send one TaskCancel (and make
sure the cancel deadline is enforced), forget me (I am terminal), and "is this the
thread that delivers answers?" (so it never blocks there). ``Client`` implements it
on whichever engine it runs; ``InMemoryTransport`` implements it with lists, for
tests and tools.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Protocol

from ..fsm import Effect

if TYPE_CHECKING:
    from .future import TaskFuture

__all__ = ["FutureTransport", "InMemoryTransport"]


class FutureTransport(Protocol):
    """What a ``TaskFuture`` needs from whoever carries its messages."""

    cancel_timeout: float
    """Default seconds ``cancel()`` waits for the scheduler's answer."""

    def send_cancel(self, future: TaskFuture, deadline: float, force: bool = True) -> None:
        """Send one TaskCancel for ``future`` with ``force`` (False: only if it has not
        started), and fire ``future.cancel_timed_out()`` at ``deadline``
        (``time.monotonic()`` seconds) if it is still unanswered. Called without the
        future's lock held; must not block for long."""
        ...

    def release(self, future: TaskFuture) -> None:
        """``future`` is terminal: drop every reference kept to it."""
        ...

    def on_io_thread(self) -> bool:
        """True when called on the thread that delivers inbound messages."""
        ...


class InMemoryTransport:
    """A ``FutureTransport`` without I/O: it records what futures ask to send.

    A test creates futures with ``create_future()``, "sends" them with
    ``send_task()``, and plays the scheduler by calling the futures' trigger methods
    (``recv_result``, ``recv_cancel_confirm``, ...). Cancel deadlines are kept in
    ``cancel_deadlines`` and enforced only when ``expire_cancels()`` is called, so a
    test decides when time has passed.
    """

    def __init__(self, cancel_timeout: float = 30.0) -> None:
        self.cancel_timeout = cancel_timeout
        self.futures: dict[bytes, TaskFuture] = {}
        """Live futures by task id, as a client's registry holds them."""
        self.tasks_sent: list[bytes] = []
        self.cancels_sent: list[bytes] = []
        self.cancel_forces: list[bool] = []
        """The ``force`` flag of each TaskCancel in ``cancels_sent``."""
        self.cancel_deadlines: dict[bytes, float] = {}
        self.released: list[bytes] = []
        self.io_thread: threading.Thread | None = None
        """The thread that plays the I/O thread, if a test designates one."""
        self._lock = threading.Lock()
        self._cancel_sent = threading.Condition(self._lock)

    def create_future(self, task_id: bytes | None = None) -> TaskFuture:
        """A new pending future, registered here."""
        from .future import TaskFuture

        future = TaskFuture(os.urandom(16) if task_id is None else task_id, self)
        with self._lock:
            self.futures[future.task_id] = future
        return future

    def send_task(self, future: TaskFuture) -> bool:
        """Fire ``sent`` and record the Task as sent; False if it must not go out."""
        if future.sent().effect is Effect.STALE:
            return False
        with self._lock:
            self.tasks_sent.append(future.task_id)
        return True

    def send_cancel(self, future: TaskFuture, deadline: float, force: bool = True) -> None:
        with self._lock:
            self.cancels_sent.append(future.task_id)
            self.cancel_forces.append(force)
            # A result racing the cancel may have released the future already.
            if future.task_id in self.futures:
                self.cancel_deadlines[future.task_id] = deadline
            self._cancel_sent.notify_all()

    def wait_for_cancels(self, count: int, timeout: float) -> bool:
        """Block until at least ``count`` TaskCancels were sent; False on timeout."""
        with self._lock:
            return self._cancel_sent.wait_for(lambda: len(self.cancels_sent) >= count, timeout)

    def release(self, future: TaskFuture) -> None:
        with self._lock:
            self.futures.pop(future.task_id, None)
            self.cancel_deadlines.pop(future.task_id, None)
            self.released.append(future.task_id)

    def on_io_thread(self) -> bool:
        return threading.current_thread() is self.io_thread

    def expire_cancels(self, now: float | None = None) -> int:
        """Fire ``cancel_timed_out`` on every future whose cancel deadline is past.

        Returns how many were fired.
        """
        now = time.monotonic() if now is None else now
        with self._lock:
            due = [
                self.futures[task_id]
                for task_id, deadline in self.cancel_deadlines.items()
                if deadline <= now and task_id in self.futures
            ]
        for future in due:
            future.cancel_timed_out()
        return len(due)
