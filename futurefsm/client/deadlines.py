"""``CancelDeadlines``: fires ``cancel_timed_out`` on futures whose cancel went unanswered.

A waiting ``cancel()`` enforces its own deadline; this thread covers the rest
(``cancel(wait=False)``, bulk cancels, cancels asked from a done-callback), on every
engine alike. One daemon thread per client, started by the first deadline, sleeping
on a heap until the earliest one is due.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .future import TaskFuture

__all__ = ["CancelDeadlines"]


class CancelDeadlines:
    """A heap of (deadline, task id) and the thread that expires them."""

    def __init__(self, lookup: Callable[[bytes], TaskFuture | None], name: str) -> None:
        self._lookup = lookup
        self._name = name
        self._heap: list[tuple[float, int, bytes]] = []
        self._seq = itertools.count()
        self._condition = threading.Condition(threading.Lock())
        self._closed = False
        self.thread: threading.Thread | None = None
        """The thread that fires ``cancel_timed_out`` (None until the first deadline)."""

    def schedule(self, deadline: float, task_id: bytes) -> None:
        """Fire ``cancel_timed_out`` on the future of ``task_id`` at ``deadline``
        (``time.monotonic()`` seconds) if its cancel is still unanswered then."""
        with self._condition:
            if self._closed:
                return
            heapq.heappush(self._heap, (deadline, next(self._seq), task_id))
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self.thread.start()
            elif self._heap[0][2] is task_id:  # a new earliest deadline: re-arm the sleep
                self._condition.notify()

    def close(self) -> None:
        """Stop the thread; pending deadlines are dropped."""
        with self._condition:
            self._closed = True
            self._condition.notify()
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        heap = self._heap
        while True:
            with self._condition:
                while not self._closed:
                    now = time.monotonic()
                    if heap and heap[0][0] <= now:
                        break
                    self._condition.wait(None if not heap else heap[0][0] - now)
                if self._closed:
                    return
                due = []
                while heap and heap[0][0] <= now:
                    due.append(heapq.heappop(heap)[2])
            for task_id in due:
                future = self._lookup(task_id)
                # The deadline may belong to an earlier request that was refused; only
                # the deadline of the request in flight counts.
                deadline = None if future is None else future.cancel_deadline
                if future is not None and deadline is not None and deadline <= now:
                    future.cancel_timed_out()
