"""Threads for race tests: an I/O thread that delivers messages, and user calls that
may block, each on its own thread, with every wait bounded by a deadline.

A blocking user call is started and then waited for until it is either finished or
parked in ``threading.Condition.wait`` (how every future, ``concurrent.futures.wait``
and ``as_completed`` block). From then on it can only be woken by something the test
does next, so what it returns does not depend on thread scheduling.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .invariants import InvariantViolation, Outcome, capture

__all__ = ["DEADLINE", "IOThread", "UserCall", "is_parked"]

DEADLINE = 10.0
"""Seconds any test waits for something that must happen at once, when no timeout is
passed. Read at call time (not bound as a default at import), so a test can change it;
the race machine takes its own (``make_race_machine(deadline=...)``) and the race kit
its ``block_timeout``."""


def _deadline(timeout: float | None) -> float:
    return DEADLINE if timeout is None else timeout


_PARKED_CODE = threading.Condition.wait.__code__
_names = itertools.count()


def is_parked(thread: threading.Thread) -> bool:
    """True if ``thread`` is inside ``threading.Condition.wait`` (waiting to be woken)."""
    frame = sys._current_frames().get(thread.ident or -1)
    return frame is not None and frame.f_code is _PARKED_CODE


class IOThread:
    """One daemon thread that runs what it is given in order, as a client's I/O thread
    runs deliveries. ``run`` waits for the result with a deadline: an I/O thread that
    blocks (a deadlock) is reported as an ``InvariantViolation``, not a hang."""

    def __init__(self, name: str = "race-io") -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], cf.Future[Any]] | None]
        self._queue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, outcome = item
            try:
                outcome.set_result(fn())
            except BaseException as error:
                outcome.set_exception(error)

    def submit(self, fn: Callable[[], Any]) -> cf.Future[Any]:
        """Queue ``fn``; return a future of what it returns."""
        outcome: cf.Future[Any] = cf.Future()
        self._queue.put((fn, outcome))
        return outcome

    def run(self, fn: Callable[[], Any], what: str, timeout: float | None = None) -> Any:
        """Run ``fn`` on the I/O thread and return its result (or raise its exception)."""
        timeout = _deadline(timeout)
        outcome = self.submit(fn)
        try:
            return outcome.result(timeout)
        except cf.TimeoutError:
            if outcome.done():
                raise
            raise InvariantViolation(
                f"the I/O thread did not finish {what} within {timeout} s: it is blocked"
            ) from None

    def close(self) -> None:
        """Let the thread exit once the queue is drained (it is a daemon either way)."""
        self._queue.put(None)


class UserCall:
    """One user call (``cancel``, ``result``, ``wait``...) on its own daemon thread."""

    def __init__(self, label: str, fn: Callable[[], Any]) -> None:
        self.label = label
        self.outcome: Outcome | None = None
        self.finished = threading.Event()
        self.started_at = 0.0
        self._fn = fn
        self.thread = threading.Thread(
            target=self._run, name=f"race-user-{next(_names)}", daemon=True
        )

    def __repr__(self) -> str:
        state = "finished" if self.finished.is_set() else "waiting"
        return f"<{self.label} {state} {self.outcome!r}>"

    def _run(self) -> None:
        self.outcome = capture(self._fn)
        self.finished.set()

    def start(self) -> UserCall:
        """Start the thread; return self."""
        self.started_at = time.monotonic()
        self.thread.start()
        return self

    def settle(self, timeout: float | None = None) -> None:
        """Wait until the call has finished or is parked waiting to be woken."""
        timeout = _deadline(timeout)
        end = time.monotonic() + timeout
        while not self.finished.is_set() and not is_parked(self.thread):
            if time.monotonic() > end:
                raise InvariantViolation(
                    f"{self.label} neither finished nor started waiting within {timeout} s"
                )
            time.sleep(0.00005)

    def join(self, timeout: float | None = None) -> Outcome:
        """Wait for the call to finish; an ``InvariantViolation`` if it does not."""
        timeout = _deadline(timeout)
        if not self.finished.wait(timeout):
            raise InvariantViolation(f"{self.label} did not return within {timeout} s")
        assert self.outcome is not None
        return self.outcome

    @classmethod
    def run(cls, label: str, fn: Callable[[], Any], timeout: float | None = None) -> Outcome:
        """Run ``fn`` on a new thread and wait for it to finish."""
        return cls(label, fn).start().join(timeout)
