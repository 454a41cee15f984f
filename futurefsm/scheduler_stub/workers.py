"""The stub's workers, and the inbox through which other threads reach the I/O thread.

Two pools run tasks, both with the same small interface to the stub (``attach``,
``submit``, ``submit_all``, ``take_back``, ``kill``, ``on_readable``, ``on_writable``,
``stop``):

- ``ProcessPool`` (the default): tasks sent in batches to worker processes by the I/O
  thread itself; one not started yet can be taken back, a running one stopped by
  killing its process. Tasks run in parallel and none can starve the I/O thread (no
  shared GIL).
- ``ThreadPool`` (``threads=True``): worker threads in the stub's process, which take a
  ``TaskRecord`` from a queue, claim it (a cancelled one is skipped), run it, and post
  its result -- already encoded, to keep that work off the I/O thread -- to the
  ``Inbox``, which wakes the I/O thread through an inproc socket. For tests that want
  everything in one process.

Workers never touch the ROUTER socket (zmq sockets are not thread-safe).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from multiprocessing.connection import Connection, wait
from typing import Any

import cloudpickle
import msgpack
import zmq

from ..protocol import ResultStatus, TaskResult, encode
from ..serializer import Serializer
from .processes import (
    FRAME_HEADER,
    QUEUED,
    READ_SIZE,
    SKIPPED,
    SLOTS,
    STARTED,
    TAKEN,
    WorkerSlots,
    fork_worker,
    kill_worker,
)
from .records import TaskRecord
from .running import (
    STATUS_CODES,
    STATUSES,
    WORKER_DIED_REASON,
    FunctionCache,
    run_call,
    worker_died_result,
)

__all__ = [
    "STATUSES",
    "STATUS_CODES",
    "WORKER_DIED_REASON",
    "Inbox",
    "ProcessPool",
    "ThreadPool",
    "run_call",
    "worker_died_result",
]

logger = logging.getLogger("futurefsm.scheduler_stub")

_NOBLOCK = int(zmq.NOBLOCK)  # a plain int: pyzmq's flag enums cost time per call


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


Report = Callable[[TaskRecord, int, "bytes | memoryview"], None]
"""How a pool hands back a task's outcome: (record, status code, encoded result)."""


# ----------------------------------------------------------------------- thread workers


class ThreadPool:
    """``count`` daemon threads running queued ``TaskRecord``s (``threads=True``).

    ``claim(record)`` is called before running a record and must return False if the
    record was cancelled meanwhile; ``report(record, status, frame)`` is called on the
    worker thread with each outcome. A running task cannot be stopped: ``kill`` says so.
    """

    def __init__(
        self,
        count: int,
        serializer: Serializer,
        claim: Callable[[TaskRecord], bool],
        report: Report,
        name: str,
    ) -> None:
        self._serializer = serializer
        self._functions = FunctionCache(serializer.loads)
        self._claim = claim
        self._report = report
        self._queue: queue.SimpleQueue[TaskRecord | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-worker-{n}", daemon=True)
            for n in range(count)
        ]
        for thread in self._threads:
            thread.start()
        self.worker_up = threading.Event()
        """Set once a worker can take a task (at once for threads)."""
        self.worker_up.set()

    def attach(self, poller: zmq.Poller) -> None:
        """Nothing to poll: threads report through the inbox."""

    def on_readable(self, fd: int) -> None:
        """Never called: nothing was registered."""

    def on_writable(self, fd: int) -> None:
        """Never called: nothing was registered."""

    def submit(self, record: TaskRecord) -> None:
        """Queue ``record`` to run (called by the I/O thread)."""
        self._queue.put(record)

    def submit_all(self, records: list[TaskRecord]) -> None:
        """Queue ``records`` to run, in order."""
        for record in records:
            self._queue.put(record)

    def take_back(self, record: TaskRecord, *, next_to_run: bool = True) -> bool:
        """A claimed record is running: False (a queued one is the stub's to cancel)."""
        return False

    def kill(self, record: TaskRecord, on_gone: Callable[[], None]) -> bool:
        """A thread cannot be stopped: False, ``on_gone`` is not called."""
        return False

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
        serializer = self._serializer
        while True:
            record = self._queue.get()
            if record is None:
                return
            if not self._claim(record):
                continue  # cancelled or forgotten while queued
            try:
                if record.behaviour.worker_died:
                    status, frame = worker_died_result(
                        record.task_id, WORKER_DIED_REASON, serializer
                    )
                else:
                    status, frame = run_call(
                        record.task_id,
                        record.function,
                        record.args,
                        record.dep_payloads,
                        serializer,
                        self._functions,
                        record.buffers,
                    )
            except Exception:  # only a broken serializer gets here
                logger.exception("scheduler stub: could not run or report task %r", record)
                status, frame = (
                    STATUS_CODES[ResultStatus.WORKER_DIED],
                    encode(TaskResult(record.task_id, ResultStatus.WORKER_DIED, b"")),
                )
            self._report(record, status, frame)


# ---------------------------------------------------------------------- process workers

_START_TIMEOUT = 60.0
"""How long a worker process may take to start before the attempt counts as failed."""


class _Entry:
    """A task sent to a worker process and not yet answered."""

    __slots__ = ("record", "slot", "worker")

    def __init__(self, worker: _Worker, slot: int, record: TaskRecord) -> None:
        self.worker = worker
        self.slot = slot
        self.record: TaskRecord | None = record
        """None once the stub no longer wants its answer (taken back, or killed)."""


class _Worker:
    """One worker process, as the I/O thread sees it."""

    __slots__ = (
        "buffer",
        "connection",
        "entries",
        "fd",
        "next_slot",
        "on_gone",
        "out",
        "pid",
        "slots",
        "watched_out",
    )

    def __init__(self, pid: int, connection: Connection, slots: WorkerSlots) -> None:
        self.pid = pid
        self.connection = connection
        self.fd = connection.fileno()
        self.slots = slots
        self.entries: deque[_Entry] = deque()
        """The tasks sent to it and not yet answered, in the order it runs them."""
        self.next_slot = 0
        self.buffer = bytearray()
        """Bytes read from its connection, not yet a whole message."""
        self.out: deque[memoryview] = deque()
        """Bytes for it that its connection did not take yet (written when writable:
        the I/O thread never blocks on a worker, which may be writing a large result
        itself, or running a long task); views of what was given, not copies (a
        task's out-of-band buffers are written from the frames they came in)."""
        self.watched_out = False
        """Whether the poller watches its connection for being writable."""
        self.on_gone: list[Callable[[], None]] | None = None
        """Not None once it was killed: what to call when it is gone."""

    def __repr__(self) -> str:
        return f"<worker process {self.pid}>"


def _write_some(fd: int, data: bytes | memoryview) -> int:
    """Write what the (non-blocking) descriptor takes now; how many bytes. All of them
    if it failed: the peer is gone, and nothing written to it matters any more."""
    if not data:
        return 0
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0
    except OSError:
        return len(data)


_SKIPPED = SKIPPED[0]

_BATCH = 64
"""At most this many tasks are sent to a worker process in one write."""
_BATCH_BYTES = 1024 * 1024
"""... and no more (after the first) once their function and arguments pass this size."""
_REFILL = 16
"""A busy worker process is sent more tasks once fewer than this many are unanswered."""


class ProcessPool:
    """``count`` tasks at a time, each on a worker process; one more process is kept
    warm, so a killed worker's slot is filled at once (the default).

    Everything but process start-up happens on the stub's I/O thread: ``attach`` gives
    it the poller on which the workers' connections are registered, ``on_readable``
    reads results (or a death), ``submit`` queues a record, ``take_back`` takes one
    that a worker has not started, and ``kill`` stops the one running a record.
    Processes are started by a background thread (``fork_worker``), so constructing
    the pool returns at once, and handed to the I/O thread through ``post``.

    Tasks go to the workers in batches (one write for many tasks, so a worker is not
    woken per task); each worker runs its batch in order and answers each task at
    once. A task sent but not started can still be taken back exactly (``take_back``,
    through the slots it shares with its worker: ``processes.WorkerSlots``), so a
    cancel of it is confirmed ``canceled`` and it never runs. A worker that runs out
    of tasks while others still have unstarted ones takes some of theirs. A sent task
    counts as running for the stub (``TaskState.RUNNING``), taken back or not started.

    The pool never sets a task's state: it asks ``claim(record)`` before sending a
    record (the table's ``WORKER_TOOK``: False for a record cancelled while queued) and
    tells ``gave_back(record)`` of each record it takes back to queue it again
    (``WORKER_GAVE_BACK``).
    """

    def __init__(
        self,
        count: int,
        serializer: Serializer,
        claim: Callable[[TaskRecord], bool],
        report: Report,
        post: Callable[[Callable[[], None]], bool],
        name: str,
        gave_back: Callable[[TaskRecord], None],
    ) -> None:
        try:  # first: nothing is started if this fails
            self._serializer_bytes = cloudpickle.dumps(serializer)
        except Exception as error:
            raise TypeError(
                f"serializer: {serializer!r} cannot be sent to worker processes ({error}); "
                "make it picklable, or use threads=True"
            ) from error
        self._count = count
        self._serializer = serializer
        self._claim = claim
        self._gave_back = gave_back
        self._report = report
        self._post = post
        self._name = name
        self._poller: zmq.Poller | None = None
        # Owned by the I/O thread.
        self._queue: deque[TaskRecord] = deque()
        self._idle: list[_Worker] = []
        self._busy: list[_Worker] = []
        """Workers with unanswered tasks, not killed: at most ``count``."""
        self._by_fd: dict[int, _Worker] = {}
        self._starting = 0
        self.worker_up = threading.Event()
        """Set once a worker process can take a task (or none could start)."""
        # Shared with the starter thread, under the lock.
        self._lock = threading.Lock()
        self._arrived: list[_Worker | BaseException] = []
        self._stopped = False
        self._starts: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._starter = threading.Thread(target=self._start_loop, name=f"{name}-starter")
        self._starter.daemon = True
        self._starter.start()

    # -- I/O thread

    def attach(self, poller: zmq.Poller) -> None:
        """Register workers on ``poller`` from now on; start the first ones."""
        self._poller = poller
        self._replenish()

    def submit(self, record: TaskRecord) -> None:
        """Queue ``record``; it runs when a worker is free."""
        self.submit_all([record])

    def submit_all(self, records: list[TaskRecord]) -> None:
        """Queue ``records`` in order, then share them out (in batches)."""
        self._queue.extend(records)
        if not self._by_fd and not self._starting:  # every start failed: try again
            self._replenish()
        self._pump()

    def take_back(self, record: TaskRecord, *, next_to_run: bool = True) -> bool:
        """Take ``record`` back from the worker it was sent to, if that worker has not
        started it (it will skip it); False if it started (or was never sent).

        ``next_to_run=False``: also False if the worker runs nothing and ``record`` is
        the next task it starts: a worker with nothing ahead of it is starting it (only
        waking up takes time), as a stdlib executor counts a call handed to its call
        queue as running. So whether a non-forced cancel finds it started depends on
        what the scheduler did, not on how soon the OS ran the worker's process."""
        entry = record.worker
        if not isinstance(entry, _Entry) or entry.record is not record:
            return False
        slots = entry.worker.slots
        slots.lock()
        try:
            memory = slots.memory
            if memory[entry.slot] != QUEUED:
                return False
            if not next_to_run:
                head = next(
                    (e for e in entry.worker.entries if memory[e.slot] in (QUEUED, STARTED)),
                    None,
                )
                if head is entry:
                    return False
            memory[entry.slot] = TAKEN
        finally:
            slots.unlock()
        entry.record = record.worker = None
        return True

    def kill(self, record: TaskRecord, on_gone: Callable[[], None]) -> bool:
        """Stop the process running ``record``; ``on_gone()`` runs (on the I/O thread)
        once that process is gone. False if no process runs ``record`` (not sent, not
        started, or finished: then its answer is on the way).

        The worker's other tasks that it has not started go back to the queue, first."""
        entry = record.worker
        if not isinstance(entry, _Entry) or entry.record is not record:
            return False
        worker = entry.worker
        if worker.on_gone is not None:
            return False
        slots = worker.slots
        slots.lock()  # the worker cannot start another task meanwhile
        try:
            if slots.memory[entry.slot] != STARTED:
                return False
            unstarted = self._take_unstarted(worker)
            kill_worker(worker.pid)
        finally:
            slots.unlock()
        entry.record = record.worker = None
        worker.on_gone = [on_gone]
        self._busy.remove(worker)
        self._requeue(unstarted)
        # The spare takes the slot now. Its replacement is started once this process
        # is gone, so the two do not compete for the CPU meanwhile.
        self._pump()
        return True

    def on_readable(self, fd: int) -> None:
        """A worker's connection is readable: answers, or its end."""
        worker = self._by_fd.get(fd)
        if worker is None:
            return
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:  # nothing after all
            return
        except OSError:
            data = b""
        if not data:
            self._gone(worker)
            return
        buffer = worker.buffer
        buffer += data
        # Each answer: its length, then its status byte and its frame (or SKIPPED).
        records: list[TaskRecord] = []
        statuses: list[int] = []
        frames: list[bytes] = []
        entries = worker.entries
        position, end = 0, len(buffer)
        unpack = FRAME_HEADER.unpack_from
        with memoryview(buffer) as view:
            while end - position >= 4:
                (size,) = unpack(buffer, position)
                start = position + 4
                if size < 1:  # not what a worker writes: it is broken
                    logger.error("scheduler stub: %r wrote a bad answer; killing it", worker)
                    kill_worker(worker.pid)
                    position = end
                    break
                if end - start < size:
                    break
                position = start + size
                if not entries:
                    logger.error("scheduler stub: %r answered a task it was not sent", worker)
                    position = end
                    break
                record = entries.popleft().record
                if record is None:  # taken back, or its worker was killed to stop it
                    continue
                record.worker = None
                status = buffer[start]
                if status == _SKIPPED:  # cannot happen: only a taken-back task is skipped
                    logger.error("scheduler stub: %r skipped %r", worker, record)
                    reason = "the worker process skipped the task"
                    status, frame = worker_died_result(record.task_id, reason, self._serializer)
                else:
                    frame = view[start + 1 : position].tobytes()
                records.append(record)
                statuses.append(status)
                frames.append(frame)
        del buffer[:position]
        if worker.on_gone is None:
            if not entries:
                self._busy.remove(worker)
                self._idle.append(worker)
            elif len(entries) < _REFILL and self._queue:
                self._send_batch(worker, self._share())
        self._pump()  # first give the workers their next tasks, then handle the results
        report = self._report
        for record, status, frame in zip(records, statuses, frames, strict=True):
            report(record, status, frame)

    def on_writable(self, fd: int) -> None:
        """A worker's connection takes more of what waits for it."""
        worker = self._by_fd.get(fd)
        if worker is not None:
            self._write(worker, ())

    def stop(self, deadline: float) -> list[str]:
        """Kill every worker process and wait (until ``deadline``) until they are gone.

        Called after the I/O thread exited. Returns the workers not gone in time.
        """
        with self._lock:
            self._stopped = True
            arrived, self._arrived = self._arrived, []
        self._starts.put(False)
        workers = list(self._by_fd.values())
        workers.extend(w for w in arrived if isinstance(w, _Worker))
        for worker in workers:
            if worker.on_gone is None:  # not killed already
                kill_worker(worker.pid)
        for worker in workers:
            try:
                os.set_blocking(worker.fd, True)  # recv_bytes below reads whole messages
            except OSError:
                pass
        left = {worker.connection: worker for worker in workers}
        while left:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                break
            for connection in wait(list(left), timeout):
                try:
                    connection.recv_bytes()
                except (EOFError, OSError):
                    worker = left.pop(connection)
                    worker.connection.close()
                    worker.slots.close()
        self._starter.join(max(0.0, deadline - time.monotonic()))
        return [repr(worker) for worker in left.values()]

    def _share(self) -> int:
        """How many queued tasks one worker gets now: a fair share of the queue."""
        return max(1, min(_BATCH, len(self._queue) // self._count))

    def _pump(self) -> None:
        """Hand queued tasks to idle workers, up to ``count`` busy at once; when the
        queue is empty, an idle worker takes unstarted tasks from a busy one."""
        idle, busy, queue_ = self._idle, self._busy, self._queue
        # Ends: a steal is followed by a send to an idle worker, which makes it busy.
        while idle and len(busy) < self._count:
            if not queue_ and not self._steal():
                return
            share = max(1, len(queue_) // min(len(idle), self._count - len(busy)))
            self._send_batch(idle.pop(), min(_BATCH, share))

    def _send_batch(self, worker: _Worker, size: int) -> None:
        """Send ``worker`` (idle, or busy with few tasks left) up to ``size`` queued tasks."""
        queue_, entries = self._queue, worker.entries
        size = min(size, SLOTS - len(entries))
        batch: list[list[Any]] = []
        sent: list[TaskRecord] = []
        raw: list[bytes | memoryview] = []
        nbytes = 0
        memory, claim = worker.slots.memory, self._claim
        while queue_ and len(sent) < size and nbytes < _BATCH_BYTES:
            record = queue_.popleft()
            if not claim(record):
                continue  # cancelled or forgotten while queued
            if record.behaviour.worker_died:  # scripted: no process needed
                status, frame = worker_died_result(
                    record.task_id, WORKER_DIED_REASON, self._serializer
                )
                self._post(partial(self._report, record, status, frame))
                continue
            slot = worker.next_slot
            worker.next_slot = (slot + 1) % SLOTS
            memory[slot] = QUEUED  # free: its last task was answered (or it is new)
            item = [slot, record.task_id, record.function, record.args, record.dep_payloads]
            if record.buffers:  # their sizes; their bytes follow the batch (processes.py)
                sizes = [len(buffer) for buffer in record.buffers]
                item.append(sizes)
                raw.extend(record.buffers)
                nbytes += sum(sizes)
            batch.append(item)
            sent.append(record)
            nbytes += len(record.function) + len(record.args)
        if not sent:
            if not entries:
                self._idle.append(worker)
            return
        payload = msgpack.packb(batch)
        # If the worker died, what it never read stays QUEUED in its slots, and _gone
        # (at its EOF) puts those tasks back in the queue.
        self._write(worker, [FRAME_HEADER.pack(len(payload)) + payload, *raw])
        for record, item in zip(sent, batch, strict=True):
            entry = _Entry(worker, item[0], record)  # type: ignore[arg-type]
            entries.append(entry)
            record.worker = entry
        if worker not in self._busy:
            self._busy.append(worker)

    def _write(self, worker: _Worker, chunks: Sequence[bytes | memoryview]) -> None:
        """Write ``chunks`` to ``worker`` after what waits for it, as much as its
        connection takes now; the rest waits, not copied (and the poller watches for
        it to be writable). A dead worker's EOF comes through ``on_readable``."""
        if self._by_fd.get(worker.fd) is not worker:
            return  # gone (and its descriptor closed)
        out, fd = worker.out, worker.fd
        for chunk in chunks:
            if len(chunk):
                out.append(memoryview(chunk))
        while out:
            head = out[0]
            written = _write_some(fd, head)
            if written < len(head):
                out[0] = head[written:]
                break
            out.popleft()
        waiting = bool(out)
        if waiting != worker.watched_out:
            worker.watched_out = waiting
            assert self._poller is not None
            self._poller.register(worker.fd, zmq.POLLIN | zmq.POLLOUT if waiting else zmq.POLLIN)

    def _take_unstarted(self, worker: _Worker) -> list[TaskRecord]:
        """Under ``worker``'s lock: take back every task it has not started."""
        memory = worker.slots.memory
        taken = []
        for entry in worker.entries:
            record = entry.record
            if record is not None and memory[entry.slot] == QUEUED:
                memory[entry.slot] = TAKEN
                entry.record = record.worker = None
                taken.append(record)
        return taken

    def _requeue(self, records: list[TaskRecord]) -> None:
        """Put records taken back from a worker at the front of the queue, in order."""
        for record in records:
            self._gave_back(record)
        self._queue.extendleft(reversed(records))

    def _steal(self) -> bool:
        """The queue is empty and a worker idle: take half of the unstarted tasks of a
        busy worker (back to the queue; the one with most tasks first), so no task
        waits behind a long one while a worker has nothing to do. False if no busy
        worker had any."""
        for victim in sorted(self._busy, key=lambda w: len(w.entries), reverse=True):
            if len(victim.entries) < 2:
                return False
            memory = victim.slots.memory
            victim.slots.lock()
            try:
                unstarted = [
                    e for e in victim.entries if e.record is not None and memory[e.slot] == QUEUED
                ]
                taken = []
                for entry in unstarted[len(unstarted) // 2 :]:
                    memory[entry.slot] = TAKEN
                    record = entry.record
                    assert record is not None
                    entry.record = record.worker = None
                    taken.append(record)
            finally:
                victim.slots.unlock()
            if taken:
                self._requeue(taken)
                return True
        return False

    def _gone(self, worker: _Worker) -> None:
        """``worker``'s connection closed: its process is gone."""
        assert self._poller is not None
        self._poller.unregister(worker.fd)
        del self._by_fd[worker.fd]
        worker.connection.close()
        if worker in self._idle:
            self._idle.remove(worker)
        if worker in self._busy:
            self._busy.remove(worker)
        callbacks = worker.on_gone
        # What it left unanswered: tasks it never started run elsewhere; the one it
        # was running (and one it finished without a word) died with it.
        memory = worker.slots.memory
        unstarted, died = [], []
        for entry in worker.entries:
            record = entry.record
            if record is None:
                continue
            entry.record = record.worker = None
            (unstarted if memory[entry.slot] == QUEUED else died).append(record)
        worker.entries.clear()
        worker.out.clear()
        worker.slots.close()
        self._requeue(unstarted)
        if callbacks is None:  # nobody killed it
            logger.warning("scheduler stub: %r exited on its own", worker)
            reason = f"the worker process running the task exited (pid {worker.pid})"
            for record in died:
                self._report(record, *worker_died_result(record.task_id, reason, self._serializer))
        else:
            for record in died:  # cannot happen: a kill takes back all but its target
                reason = f"the worker process was killed (pid {worker.pid})"
                self._report(record, *worker_died_result(record.task_id, reason, self._serializer))
            for callback in callbacks:
                callback()
        self._replenish()
        self._pump()

    def _replenish(self) -> None:
        """Start processes until ``count`` + 1 are alive or starting."""
        if self._poller is None:
            return
        alive = sum(1 for w in self._by_fd.values() if w.on_gone is None) + self._starting
        for _ in range(self._count + 1 - alive):
            self._starting += 1
            self._starts.put(True)

    def _adopt_arrivals(self) -> None:
        """Take the processes the starter thread started (posted to the I/O thread)."""
        with self._lock:
            arrived, self._arrived = self._arrived, []
        assert self._poller is not None
        for item in arrived:
            self._starting -= 1
            if isinstance(item, BaseException):
                self._start_failed(item)
                continue
            os.set_blocking(item.fd, False)  # see _write
            self._by_fd[item.fd] = item
            self._poller.register(item.fd, zmq.POLLIN)
            self._idle.append(item)
            self.worker_up.set()
        self._pump()

    def _start_failed(self, error: BaseException) -> None:
        """No worker could start: fail what waits for one, rather than wait forever."""
        logger.error("scheduler stub: could not start a worker process: %s", error)
        self.worker_up.set()  # nobody waits for a worker that will not come
        if self._by_fd or self._starting:
            return  # others may serve the queue
        reason = f"no worker process could be started: {error}"
        while self._queue:
            record = self._queue.popleft()
            if self._claim(record):
                self._report(record, *worker_died_result(record.task_id, reason, self._serializer))

    # -- starter thread

    def _start_loop(self) -> None:
        while self._starts.get():
            with self._lock:
                if self._stopped:
                    return
            try:
                pid, connection, slots = fork_worker(self._serializer_bytes, _START_TIMEOUT)
                item: _Worker | BaseException = _Worker(pid, connection, slots)
            except Exception as error:
                item = error
            with self._lock:
                if self._stopped:
                    if isinstance(item, _Worker):
                        kill_worker(item.pid)
                        item.connection.close()
                        item.slots.close()
                    return
                self._arrived.append(item)
            self._post(self._adopt_arrivals)
