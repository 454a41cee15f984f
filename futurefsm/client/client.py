"""``Client``: a ``concurrent.futures.Executor`` whose futures run on a remote scheduler.

Threads
-------
One I/O thread owns the DEALER socket; nothing else touches it. User threads hand it
work through ``_outbox`` (a deque) and wake it by writing one byte to a pipe that the
I/O thread polls beside the socket; a byte is written only when no wake-up is already
pending, so a burst of submits costs one system call. Every frame is encoded before
it is queued, so the I/O thread only sends bytes, and decodes and deserializes
inbound messages before it fires a future's trigger (no lock held while doing so).

A future is registered (``_futures``) before its Task is queued, and unregistered by
``release()`` when it reaches a terminal state: the client holds no reference to a
finished future.

Nothing hangs: cancel deadlines are enforced by the I/O thread's timer heap, and a
scheduler that is silent for ``connection_timeout`` (heartbeats unanswered) or says
``Disconnect`` resolves every unfinished future through the ``connection_lost``
trigger.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from concurrent import futures as cf
from typing import Any

import zmq

from ..errors import TaskFailedError, WorkerDiedError
from ..fsm import CancelOutcome, Effect, FutureState
from ..protocol import (
    Disconnect,
    Heartbeat,
    HeartbeatEcho,
    ProtocolError,
    ResultStatus,
    Task,
    TaskCancel,
    TaskCancelConfirm,
    TaskResult,
    decode,
    encode,
    new_task_id,
)
from ..serializer import DEFAULT_SERIALIZER, Serializer, decode_failure
from .future import TaskFuture
from .graph import as_task, dependencies, dependency_refs, topological_order

__all__ = ["Client"]

LOGGER = logging.getLogger("futurefsm.client")

_MAX_INBOUND_BATCH = 1000  # messages handled per poll before timers get a turn
_LOUD_PROTOCOL_ERRORS = 10  # warnings before protocol errors drop to debug level


class Client(cf.Executor):
    """Submit work to a scheduler over ZeroMQ; every future is a ``TaskFuture``.

    ``address=None`` starts an embedded ``SchedulerStub`` in-process on a loopback
    port (with ``workers`` threads), so the default needs no setup. Otherwise
    ``address`` is a ZeroMQ endpoint such as ``tcp://127.0.0.1:5555``.

    ``cancel_timeout``: default seconds a cancel waits for the scheduler's answer
    before the future ends cancelled with ``TIMED_OUT``. ``heartbeat_interval`` and
    ``connection_timeout``: a scheduler that answers nothing for
    ``connection_timeout`` seconds is taken as lost and every unfinished future is
    resolved. ``serializer``: how functions, arguments and results become bytes
    (stdlib pickle by default; the scheduler must use the same).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        workers: int | None = None,
        cancel_timeout: float = 30.0,
        heartbeat_interval: float = 1.0,
        connection_timeout: float = 5.0,
        serializer: Serializer | None = None,
    ) -> None:
        for name, value in (
            ("cancel_timeout", cancel_timeout),
            ("heartbeat_interval", heartbeat_interval),
            ("connection_timeout", connection_timeout),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name}: expected a positive number of seconds, got {value!r}")
        if workers is not None and address is not None:
            raise ValueError("workers: only meaningful for the embedded scheduler (address=None)")
        self.cancel_timeout = float(cancel_timeout)
        self.heartbeat_interval = float(heartbeat_interval)
        self.connection_timeout = float(connection_timeout)
        self._serializer = serializer if serializer is not None else DEFAULT_SERIALIZER

        self._stub: Any = None
        if address is None:
            from ..scheduler_stub import SchedulerStub

            self._stub = SchedulerStub(workers=workers or 4, serializer=self._serializer)
            address = self._stub.address
        self.address: str = address
        """The scheduler's address."""

        # Shared between user threads and the I/O thread.
        self._futures: dict[bytes, TaskFuture] = {}
        self._outbox: collections.deque[tuple[Any, ...]] = collections.deque()
        self._wake_pending = False
        self._shutdown = False
        # Held while checking _shutdown and registering a future, and while setting
        # _shutdown: no future can be registered after close() took its snapshot.
        self._submit_lock = threading.Lock()
        self._closed = False
        self._lifecycle_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._stats: dict[str, Any] = {
            "submitted": 0,
            "completed": 0,
            "failed": 0,
            "cancelled": dict.fromkeys((outcome.value for outcome in CancelOutcome), 0),
            "stale_messages": 0,
            "protocol_errors": 0,
            "io_errors": 0,
            "connection_lost": 0,
        }
        del self._stats["cancelled"][CancelOutcome.FAILED.value]  # a refusal is not a cancel

        # Owned by the I/O thread.
        self._cancel_timers: list[tuple[float, int, bytes]] = []
        self._timer_seq = itertools.count()
        self._heartbeat_seq = itertools.count()
        self._loud_errors = _LOUD_PROTOCOL_ERRORS

        self._context: zmq.Context[Any] = zmq.Context()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.SNDHWM, 0)
        self._socket.setsockopt(zmq.RCVHWM, 0)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(address)
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        # Guards writing to and closing the wake pipe: a post racing the I/O thread's
        # exit must not write to a closed (and maybe reused) descriptor number.
        self._wake_lock = threading.Lock()
        self._wake_closed = False
        self._io_thread = threading.Thread(
            target=self._run, name=f"futurefsm-client-{id(self):x}-io", daemon=True
        )
        self._io_thread.start()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Client {self.address} {state} in_flight={len(self._futures)}>"

    # ------------------------------------------------------------------ submitting

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> TaskFuture:
        """Run ``fn(*args, **kwargs)`` on the scheduler; return its ``TaskFuture``.

        The function and its arguments are serialized here, at once: something that
        cannot be pickled raises ``TypeError`` naming it, and nothing is sent.
        """
        function, arguments = self._serialize_call(fn, args, kwargs)
        return self._submit_task(function, arguments, None, ())

    def _serialize_call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[bytes, bytes]:
        if not callable(fn):
            raise TypeError(f"submit() needs a callable, got {fn!r}")
        try:
            function = self._serializer.dumps(fn)
        except Exception as error:
            raise TypeError(
                f"cannot serialize the function {fn!r} for submit(): {error}"
            ) from error
        try:
            arguments = self._serializer.dumps((args, kwargs))
        except Exception as error:
            raise TypeError(
                f"cannot serialize the arguments of {getattr(fn, '__name__', fn)!r} "
                f"for submit(): {error}"
            ) from error
        return function, arguments

    def _submit_task(
        self,
        function: bytes,
        arguments: bytes,
        group_id: bytes | None,
        depends_on: tuple[bytes, ...],
        task_id: bytes | None = None,
    ) -> TaskFuture:
        future, frame = self._new_task(function, arguments, group_id, depends_on, task_id)
        with self._submit_lock:
            self._check_open()
            self._register(future)
            self._post(("task", future, frame))
        return future

    def _check_open(self) -> None:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def _new_task(
        self,
        function: bytes,
        arguments: bytes,
        group_id: bytes | None,
        depends_on: tuple[bytes, ...],
        task_id: bytes | None = None,
    ) -> tuple[TaskFuture, bytes]:
        """A new (unregistered) future and its encoded Task."""
        task_id = new_task_id() if task_id is None else task_id
        frame = encode(Task(task_id, function, arguments, group_id, depends_on))
        return TaskFuture(task_id, self, group_id), frame

    def _register(self, future: TaskFuture) -> None:
        """Register ``future`` (``_submit_lock`` held), before its Task is queued."""
        self._futures[future.task_id] = future
        with self._stats_lock:
            self._stats["submitted"] += 1

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """``Executor.map``: results in order; leftover futures are cancelled in bulk
        (without waiting) if the iterator is closed early or a call raises."""
        end_time = None if timeout is None else timeout + time.monotonic()
        submitted = [self.submit(fn, *args) for args in zip(*iterables, strict=False)]

        def result_iterator() -> Iterator[Any]:
            try:
                submitted.reverse()
                while submitted:
                    # The future stays in the list while awaited, so a timeout or
                    # an early close cancels it too (as the stdlib does since 3.12).
                    future = submitted[-1]
                    if end_time is None:
                        value = future.result()
                    else:
                        value = future.result(end_time - time.monotonic())
                    submitted.pop()
                    yield value
            finally:
                if submitted:
                    self.cancel(submitted, wait=False)

        return result_iterator()

    def submit_graph(
        self, graph: Mapping[Hashable, Any], keys: Iterable[Hashable] | None = None
    ) -> dict[Hashable, TaskFuture]:
        """Submit a Dask-style task graph; return the futures of ``keys`` (default: all).

        ``graph`` maps keys to tasks ``(callable, *args)``; an argument (also inside a
        list) that is a key of the graph stands for that key's result. A value that is
        not a task is a constant. All the graph's tasks share one group id: cancelling
        any of their futures cancels the whole graph, and every member future ends
        cancelled promptly.
        """
        order = topological_order(graph)
        wanted = list(graph) if keys is None else list(keys)
        for key in wanted:
            if key not in graph:
                raise KeyError(f"submit_graph: key {key!r} is not in the graph")
        task_ids = {key: new_task_id() for key in order}
        group_id = new_task_id()
        payloads = []
        for key in order:
            fn, args = as_task(graph[key])
            refs = dependency_refs(args, graph, task_ids)
            depends_on = tuple(
                dict.fromkeys(task_ids[dep] for dep in dependencies(graph[key], graph))
            )
            function, arguments = self._serialize_call(fn, refs, {})
            payloads.append((key, function, arguments, depends_on))
        members = [
            self._new_task(function, arguments, group_id, depends_on, task_ids[key])
            for key, function, arguments, depends_on in payloads
        ]
        with self._submit_lock:
            self._check_open()
            for future, _ in members:
                self._register(future)
            # One outbox item: the I/O thread sends the graph whole or not at all.
            self._post(("graph", group_id, members))
        futures = {key: future for key, (future, _) in zip(order, members, strict=True)}
        return {key: futures[key] for key in wanted}

    # ------------------------------------------------------------------ cancelling

    def cancel(
        self,
        futures: Iterable[TaskFuture],
        *,
        timeout: float | None = None,
        wait: bool = True,
    ) -> list[bool]:
        """Cancel many futures at once: every TaskCancel goes out together, and one
        deadline (``timeout``, default ``cancel_timeout``) bounds them all.

        Returns, per future, what ``future.cancel()`` would: True if it ended
        cancelled, False if it finished or the scheduler refused. With
        ``wait=False``, True means cancelled or the request is in flight.
        """
        futures = list(futures)
        for future in futures:
            if future._transport is not self:
                raise ValueError(f"{future!r} does not belong to this client")
        deadline = time.monotonic() + (self.cancel_timeout if timeout is None else timeout)
        for future in futures:
            future._request_cancel(deadline)
        if wait and futures and not futures[0]._must_not_block():
            return [future._wait_for_cancel_answer(deadline) for future in futures]
        return [
            future.state is FutureState.CANCELLED or future.state is FutureState.CANCEL_REQUESTED
            for future in futures
        ]

    # ------------------------------------------------------------------ FutureTransport

    def send_cancel(self, future: TaskFuture, deadline: float) -> None:
        """FutureTransport: queue one TaskCancel (the group's, for a graph member)."""
        target = future.task_id if future.group_id is None else future.group_id
        frame = encode(TaskCancel(target, True))
        self._post(("cancel", future.task_id, frame, deadline))

    def release(self, future: TaskFuture) -> None:
        """FutureTransport: ``future`` is terminal; forget it and count how it ended."""
        self._futures.pop(future.task_id, None)
        outcome = future.cancel_outcome
        if future.state is FutureState.CANCELLED and outcome is not None:
            # (Every cell that enters cancelled records an outcome.)
            counter, key = self._stats["cancelled"], outcome.value
        else:
            failed = future.exception(timeout=0) is not None
            counter, key = self._stats, "failed" if failed else "completed"
        with self._stats_lock:
            counter[key] += 1

    def on_io_thread(self) -> bool:
        """FutureTransport: True on this client's I/O thread."""
        return threading.current_thread() is self._io_thread

    # ------------------------------------------------------------------ lifecycle

    def stats(self) -> dict[str, Any]:
        """Counters: submitted, completed, failed, cancelled (by outcome), stale
        messages, protocol errors, I/O errors, connection losses, and in flight."""
        with self._stats_lock:
            snapshot = dict(self._stats)
            snapshot["cancelled"] = dict(self._stats["cancelled"])
        snapshot["in_flight"] = len(self._futures)
        return snapshot

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """``Executor.shutdown``: refuse new work; with ``cancel_futures``, cancel every
        unfinished future (in bulk, confirmed); with ``wait``, wait for all of them to
        finish and close the connection. Without ``wait`` the connection closes in
        the background once they have."""
        with self._submit_lock:
            self._shutdown = True
        if cancel_futures:
            outstanding = list(self._futures.values())
            if outstanding:
                self.cancel(outstanding, wait=wait)
        if wait:
            self._close_when_idle()
        else:
            threading.Thread(
                target=self._close_when_idle, name="futurefsm-client-shutdown", daemon=True
            ).start()

    def _close_when_idle(self) -> None:
        outstanding = list(self._futures.values())
        if outstanding:
            cf.wait(outstanding)
        self.close()

    def close(self) -> None:
        """Cancel everything outstanding in bulk (within ``cancel_timeout``), tell the
        scheduler, stop the I/O thread, and stop the embedded scheduler if any.
        Futures that were already terminal stay as they were. Idempotent."""
        with self._lifecycle_lock:
            if self._closed:
                return
            with self._submit_lock:
                self._shutdown = True
            outstanding = list(self._futures.values())
            if outstanding and self._io_thread.is_alive() and not self.on_io_thread():
                self.cancel(outstanding)
            self._post(("close",))
            if not self.on_io_thread():
                self._io_thread.join()
            self._closed = True
        if self._stub is not None:
            self._stub.stop()

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown(wait=True)

    # ------------------------------------------------------------------ I/O thread

    def _post(self, item: tuple[Any, ...]) -> None:
        """Queue ``item`` for the I/O thread and wake it if it may be asleep."""
        self._outbox.append(item)
        if not self._wake_pending:
            with self._wake_lock:
                if self._wake_closed:  # the I/O thread has exited; nothing reads it
                    return
                self._wake_pending = True
                os.write(self._wake_write, b"\0")

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._wake_read, zmq.POLLIN)
        now = time.monotonic()
        self._last_heard = now
        next_heartbeat = now
        running = True
        try:
            while running:
                now = time.monotonic()
                if now >= next_heartbeat:
                    self._send(encode(Heartbeat(next(self._heartbeat_seq))))
                    next_heartbeat = now + self.heartbeat_interval
                    if now - self._last_heard > self.connection_timeout:
                        self._connection_lost("no answer to heartbeats")
                        self._last_heard = now
                wake_at = next_heartbeat
                if self._cancel_timers:
                    wake_at = min(wake_at, self._cancel_timers[0][0])
                timeout_ms = max(0, int((wake_at - now) * 1000) + 1)
                events = dict(poller.poll(timeout_ms))
                if self._wake_read in events:
                    self._drain_wake_pipe()
                running = self._drain_outbox()
                if self._socket in events:
                    self._drain_socket()
                self._expire_cancels()
        except Exception:  # the loop itself failed: nothing may wait forever for it
            LOGGER.exception("client I/O thread failed")
            self._count("io_errors")
        finally:
            self._connection_lost("client closed")
            self._socket.close(linger=0)
            self._context.term()
            with self._wake_lock:
                self._wake_closed = True
                os.close(self._wake_read)
                os.close(self._wake_write)

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass
        # After emptying the pipe and before draining the outbox: a post that saw
        # the flag still set is drained below; one that sees it clear writes a byte
        # that stays in the pipe for the next poll. Cleared before the read, the
        # read could swallow a byte whose post then left the flag set for good.
        self._wake_pending = False

    def _drain_outbox(self) -> bool:
        """Send everything queued; False once a close was requested."""
        outbox = self._outbox
        while outbox:
            item = outbox.popleft()
            kind = item[0]
            try:
                if kind == "task":
                    _, future, frame = item
                    # "sent" before the bytes go: a cancel after this point finds the
                    # future running and queues its TaskCancel behind this Task.
                    if future.sent().effect is not Effect.STALE:
                        self._send(frame)
                elif kind == "graph":
                    _, group_id, members = item
                    self._send_graph(group_id, members)
                elif kind == "cancel":
                    _, task_id, frame, deadline = item
                    self._send(frame)
                    heapq.heappush(self._cancel_timers, (deadline, next(self._timer_seq), task_id))
                elif kind == "close":
                    self._send(encode(Disconnect()))
                    return False
            except Exception:
                LOGGER.exception("client I/O thread: failed to send %s", kind)
                self._count("io_errors")
        return True

    def _send_graph(self, group_id: bytes, members: list[tuple[TaskFuture, bytes]]) -> None:
        """Send a graph's Tasks together; a member cancelled before sending takes the
        whole graph with it, as a cancel of any member does later."""
        if any(future.state is not FutureState.PENDING for future, _ in members):
            for future, _ in members:
                # Pending: cancelled at once, nothing sent (the deadline is unused).
                future._request_cancel(time.monotonic())
            return
        # "sent" for every member before any frame goes: once the scheduler runs one
        # member, none of them is still pending.
        frames = [frame for future, frame in members if future.sent().effect is not Effect.STALE]
        for frame in frames:
            self._send(frame)
        if frames and len(frames) < len(members):
            # A member was cancelled between the check above and its "sent": cancel
            # the members that went out, as a cancel of any member would.
            self._send(encode(TaskCancel(group_id, True)))

    def _send(self, frame: bytes) -> None:
        # SNDHWM is 0 (no limit): a DEALER queues the frame even before it connects,
        # so this never blocks and never drops.
        self._socket.send(frame)

    def _drain_socket(self) -> None:
        socket = self._socket
        for _ in range(_MAX_INBOUND_BATCH):
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            self._last_heard = time.monotonic()
            try:
                if len(frames) != 1:
                    raise ProtocolError(f"expected 1 frame per message, got {len(frames)}")
                self._on_message(decode(frames[0]))
            except ProtocolError as error:
                self._count("protocol_errors")
                self._warn("protocol error from the scheduler: %s", error)
            except Exception:
                LOGGER.exception("client I/O thread: failed to handle a message")
                self._count("io_errors")

    def _on_message(self, message: Any) -> None:
        if isinstance(message, TaskResult):
            future = self._futures.get(message.task_id)
            if future is None:
                self._stale(message)
                return
            result, exception = self._unpack_result(message)
            cell = future.recv_result(result, exception)
        elif isinstance(message, TaskCancelConfirm):
            future = self._futures.get(message.task_id)
            if future is None:
                self._stale(message)
                return
            cell = future.recv_cancel_confirm(message.kind.value)
        elif isinstance(message, HeartbeatEcho):
            return
        elif isinstance(message, Disconnect):
            self._connection_lost("the scheduler disconnected")
            return
        else:
            raise ProtocolError(f"{type(message).__name__} is not a scheduler-to-client message")
        if cell.effect is Effect.STALE:
            self._stale(message)

    def _unpack_result(self, message: TaskResult) -> tuple[Any, BaseException | None]:
        """Deserialize a TaskResult (never raises: a bad payload becomes the exception)."""
        if message.status is ResultStatus.SUCCESS:
            try:
                return self._serializer.loads(message.payload), None
            except Exception as error:
                return None, TaskFailedError(
                    f"the result of task {message.task_id.hex()} could not be deserialized: "
                    f"{error!r}"
                )
        if message.status is ResultStatus.FAILED:
            return None, decode_failure(message.payload, self._serializer)
        try:
            reason = self._serializer.loads(message.payload)
        except Exception:
            reason = "no reason given"
        return None, WorkerDiedError(
            f"the worker running task {message.task_id.hex()} died: {reason}"
        )

    def _stale(self, message: Any) -> None:
        self._count("stale_messages")
        LOGGER.debug("stale message %r", message)

    def _expire_cancels(self) -> None:
        timers = self._cancel_timers
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            _, _, task_id = heapq.heappop(timers)
            future = self._futures.get(task_id)
            # The timer may belong to an earlier request that was refused; only the
            # deadline of the request in flight counts.
            deadline = None if future is None else future.cancel_deadline
            if deadline is not None and deadline <= now:
                future.cancel_timed_out()

    def _connection_lost(self, why: str) -> None:
        futures = list(self._futures.values())
        if futures:
            self._count("connection_lost")
            LOGGER.warning(
                "connection to %s lost (%s): %d futures resolved", self.address, why, len(futures)
            )
        for future in futures:
            future.connection_lost()

    def _count(self, stat: str) -> None:
        with self._stats_lock:
            self._stats[stat] += 1

    def _warn(self, message: str, *args: Any) -> None:
        if self._loud_errors > 0:
            self._loud_errors -= 1
            LOGGER.warning(message, *args)
        else:
            LOGGER.debug(message, *args)
