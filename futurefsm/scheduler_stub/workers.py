"""The stub's worker threads, and the inbox through which they report to the I/O thread.

Workers never touch the ROUTER socket (zmq sockets are not thread-safe). A worker
takes a ``TaskRecord`` from the work queue, claims it (a cancelled one is skipped),
runs it, and posts its ``TaskResult`` -- already encoded, to keep that work off the
I/O thread -- to the ``Inbox``, which wakes the I/O thread through an inproc socket.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

from ..protocol import ResultStatus, TaskResult, encode
from ..serializer import Serializer, encode_failure, substitute_dependencies
from .records import TaskRecord

__all__ = ["WORKER_DIED_REASON", "Inbox", "WorkerPool", "run_task"]

logger = logging.getLogger("futurefsm.scheduler_stub")

_NOBLOCK = int(zmq.NOBLOCK)  # a plain int: pyzmq's flag enums cost time per call

WORKER_DIED_REASON = "worker died (scripted by Behaviour.worker_died)"
"""The reason text sent, pickled, in a scripted ``worker_died`` result."""


class Inbox:
    """A thread-safe mailbox of callables for the I/O thread to run.

    ``post`` may be called from any thread. The I/O thread polls ``reader`` and, when it
    is readable, calls ``drain``. Wake-ups are coalesced: only the post that finds the
    inbox empty (since the last drain) sends a wake-up frame, so a burst of results
    costs one wake-up.
    """

    def __init__(self, context: zmq.Context[Any], name: str) -> None:
        endpoint = f"inproc://futurefsm-stub-inbox-{name}"
        self.reader: zmq.Socket[Any] = context.socket(zmq.PULL)
        """Owned by the I/O thread, which closes it."""
        self.reader.bind(endpoint)
        self._writer: zmq.Socket[Any] = context.socket(zmq.PUSH)
        self._writer.connect(endpoint)
        self._writer_lock = threading.Lock()  # the writer is shared by the posting threads
        self._items: deque[Callable[[], None]] = deque()
        self._wake_pending = False
        self._closed = False

    # No lock is taken around ``_items`` and ``_wake_pending``: a lock held by a worker
    # while the GIL passes to another thread convoys every worker behind it. deque
    # appends and pops are atomic, and the order of the steps makes it safe: ``post``
    # appends *then* reads the flag; ``drain`` clears the flag *then* pops. A post that
    # still sees the flag set appended before the drain pops, so its item is taken; a
    # post that sees it clear sends a wake-up. At worst a wake-up finds nothing to do.

    def post(self, item: Callable[[], None]) -> bool:
        """Queue ``item`` to run on the I/O thread; False (dropped) once closed."""
        if self._closed:
            return False
        self._items.append(item)
        if not self._wake_pending:
            self._wake_pending = True
            with self._writer_lock:
                if not self._closed:
                    try:
                        self._writer.send(b"", _NOBLOCK)
                    except zmq.Again:  # a wake-up is already queued: the reader will look
                        pass
        return True

    def drain(self) -> list[Callable[[], None]]:
        """Called by the I/O thread: consume the wake-up frames and take every item."""
        while True:
            try:
                self.reader.recv(_NOBLOCK)
            except zmq.Again:
                break
        self._wake_pending = False
        items = []
        take = self._items.popleft
        while True:
            try:
                items.append(take())
            except IndexError:
                return items

    def close(self) -> None:
        """Stop accepting posts and close the writer (after the I/O thread has exited)."""
        with self._writer_lock:
            if self._closed:
                return
            self._closed = True
            self._items.clear()
            self._writer.close(linger=0)


def run_task(record: TaskRecord, serializer: Serializer) -> tuple[TaskResult, bytes]:
    """Run one task; return its result and the result encoded as a frame.

    Never raises for anything the task does: an exception while unpickling the
    function or arguments, in the call (even ``SystemExit``), while pickling the value,
    or while encoding a too-large result becomes a ``failed`` result.
    """
    task_id = record.task_id
    if record.behaviour.worker_died:
        result = TaskResult(task_id, ResultStatus.WORKER_DIED, serializer.dumps(WORKER_DIED_REASON))
        return result, encode(result)
    try:
        function = serializer.loads(record.function)
        args, kwargs = serializer.loads(record.args)
        if record.dep_payloads:
            values = {dep: serializer.loads(p) for dep, p in record.dep_payloads.items()}
            args = substitute_dependencies(args, values)
            kwargs = substitute_dependencies(kwargs, values)
        value = function(*args, **kwargs)
        result = TaskResult(task_id, ResultStatus.SUCCESS, serializer.dumps(value))
        return result, encode(result)
    except BaseException as exc:  # a remote task's failure, whatever it is, is its result
        return _failure(task_id, exc, serializer)


def _failure(
    task_id: bytes, exc: BaseException, serializer: Serializer
) -> tuple[TaskResult, bytes]:
    """The ``failed`` result carrying ``exc`` and its traceback text."""
    tb_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        result = TaskResult(task_id, ResultStatus.FAILED, encode_failure(exc, tb_text, serializer))
        return result, encode(result)
    except Exception as error:  # e.g. an exception too large to fit in a frame
        summary = RuntimeError(
            f"task failed with {type(exc).__name__}, and that failure could not be sent "
            f"back: {error!r}"
        )
        result = TaskResult(
            task_id, ResultStatus.FAILED, encode_failure(summary, tb_text[-20_000:], serializer)
        )
        return result, encode(result)


class WorkerPool:
    """``count`` daemon threads running queued ``TaskRecord``s.

    ``claim(record)`` is called before running a record and must return False if the
    record was cancelled meanwhile; ``report(record, result, frame)`` is called (on the
    worker thread) with each outcome.
    """

    def __init__(
        self,
        count: int,
        serializer: Serializer,
        claim: Callable[[TaskRecord], bool],
        report: Callable[[TaskRecord, TaskResult, bytes], None],
        name: str,
    ) -> None:
        self._serializer = serializer
        self._claim = claim
        self._report = report
        self._queue: queue.SimpleQueue[TaskRecord | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-worker-{n}", daemon=True)
            for n in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, record: TaskRecord) -> None:
        """Queue ``record`` to run (called by the I/O thread)."""
        self._queue.put(record)

    def stop(self, deadline: float) -> list[str]:
        """Ask every worker to exit once idle; wait until ``deadline`` (monotonic time).

        Returns the names of workers still busy (running a task that has not returned);
        they are daemon threads and exit when their task does.
        """
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [thread.name for thread in self._threads if thread.is_alive()]

    def _run(self) -> None:
        while True:
            record = self._queue.get()
            if record is None:
                return
            if not self._claim(record):
                continue  # cancelled or forgotten while queued
            try:
                result, frame = run_task(record, self._serializer)
            except Exception:  # only a broken serializer gets here
                logger.exception("scheduler stub: could not run or report task %r", record)
                result = TaskResult(record.task_id, ResultStatus.WORKER_DIED, b"")
                frame = encode(result)
            self._report(record, result, frame)
