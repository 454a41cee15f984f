"""The engine for futurefsm's own ZeroMQ scheduler (``SchedulerStub`` or ``futurefsm scheduler``).

Threads
-------
One I/O thread owns the DEALER socket; nothing else touches it. User threads hand it
work through ``_outbox`` (a deque) and wake it by writing one byte to a pipe that the
I/O thread polls beside the socket; a byte is written only when no wake-up is already
pending, so a burst of submits costs one system call. Every frame is encoded before
it is queued (``prepare`` runs in the submitting thread), so the I/O thread only sends
bytes, and decodes and deserializes inbound messages before it fires a future's
trigger (no lock held while doing so).

A scheduler that is silent for ``connection_timeout`` (heartbeats unanswered) or says
``Disconnect`` resolves every unfinished future through the client's
``connection_lost``.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zmq

from ..client.graph import as_task, dependencies, dependency_refs
from ..errors import TaskFailedError, WorkerDiedError
from ..fsm import Effect, FutureState
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
from . import Engine, EngineClient

if TYPE_CHECKING:
    from ..client.future import TaskFuture

__all__ = ["FutureFSMEngine", "PreparedTask"]

LOGGER = logging.getLogger("futurefsm.client")

_MAX_INBOUND_BATCH = 1000  # messages handled per poll before the outbox gets a turn
_LOUD_PROTOCOL_ERRORS = 10  # warnings before protocol errors drop to debug level


@dataclass(frozen=True, slots=True)
class PreparedTask:
    """A Task encoded in the submitting thread, ready for the I/O thread to send."""

    task_id: bytes
    frame: bytes


class FutureFSMEngine(Engine):
    """Talks futurefsm's protocol (``futurefsm.protocol``) over a ZeroMQ DEALER.

    ``address=None`` starts an embedded ``SchedulerStub`` in-process on a loopback
    port (with ``workers`` workers), stopped again by ``close()``. ``serializer``: how
    functions, arguments and results become bytes (the scheduler must use the same).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        workers: int | None = None,
        serializer: Serializer | None = None,
    ) -> None:
        if workers is not None and address is not None:
            raise ValueError("workers: only meaningful for the embedded scheduler (address=None)")
        self._serializer = serializer if serializer is not None else DEFAULT_SERIALIZER
        self._stub: Any = None
        if address is None:
            from ..scheduler_stub import SchedulerStub

            self._stub = SchedulerStub(workers=workers or 4, serializer=self._serializer)
            address = self._stub.address
        self.address = address
        self._client: EngineClient | None = None
        self._outbox: collections.deque[tuple[Any, ...]] = collections.deque()
        self._wake_pending = False
        self._closed = False
        self._close_lock = threading.Lock()
        self._heartbeat_seq = itertools.count()
        self._loud_errors = _LOUD_PROTOCOL_ERRORS
        self._io_thread: threading.Thread | None = None

    @classmethod
    def from_address(cls, address: str | None, **options: Any) -> FutureFSMEngine:
        """``Client(address)``: our own scheduler at ``address`` (None: embedded)."""
        return cls(address, **options)

    def __repr__(self) -> str:
        return f"<FutureFSMEngine {self.address}>"

    # ------------------------------------------------------------------ the seam

    def start(self, client: EngineClient) -> None:
        """Connect the DEALER and start the I/O thread."""
        self._client = client
        self._context: zmq.Context[Any] = zmq.Context()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.SNDHWM, 0)
        self._socket.setsockopt(zmq.RCVHWM, 0)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(self.address)
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

    def prepare(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> PreparedTask:
        """Serialize the call and encode its Task (in the submitting thread)."""
        function, arguments = self._serialize_call(fn, args, kwargs)
        task_id = new_task_id()
        return PreparedTask(task_id, encode(Task(task_id, function, arguments, None, ())))

    def prepare_graph(
        self, graph: Mapping[Hashable, Any], order: list[Hashable], group_id: bytes
    ) -> list[PreparedTask]:
        """Encode every task of the graph; a key in an argument becomes a
        ``DependencyRef`` that the scheduler replaces with that task's result."""
        task_ids = {key: new_task_id() for key in order}
        prepared = []
        for key in order:
            fn, args = as_task(graph[key])
            refs = dependency_refs(args, graph, task_ids)
            depends_on = tuple(
                dict.fromkeys(task_ids[dep] for dep in dependencies(graph[key], graph))
            )
            function, arguments = self._serialize_call(fn, refs, {})
            task_id = task_ids[key]
            frame = encode(Task(task_id, function, arguments, group_id, depends_on))
            prepared.append(PreparedTask(task_id, frame))
        return prepared

    def send(self, future: TaskFuture, prepared: PreparedTask) -> None:  # type: ignore[override]
        """Queue the Task for the I/O thread."""
        self._post(("task", future, prepared.frame))

    def send_graph(self, group_id: bytes, members: list[tuple[TaskFuture, PreparedTask]]) -> None:  # type: ignore[override]
        """One outbox item: the I/O thread sends the graph whole or not at all."""
        self._post(("graph", group_id, members))

    def send_cancel(self, futures: list[TaskFuture], force: bool = True) -> None:
        """Queue one TaskCancel per future (the group's id for a graph member)."""
        for future in futures:
            target = future.task_id if future.group_id is None else future.group_id
            self._post(("cancel", encode(TaskCancel(target, force))))

    def close(self) -> None:
        """Say Disconnect, stop the I/O thread, and stop the embedded scheduler."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            if self._io_thread is not None:
                self._post(("close",))
                if not self.on_io_thread():
                    self._io_thread.join()
        if self._stub is not None:
            self._stub.stop()

    def on_io_thread(self) -> bool:
        """True on this engine's I/O thread."""
        return threading.current_thread() is self._io_thread

    # ------------------------------------------------------------------ serializing

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
        client = self._client
        assert client is not None
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
                    next_heartbeat = now + client.heartbeat_interval
                    if now - self._last_heard > client.connection_timeout:
                        client.connection_lost("no answer to heartbeats")
                        self._last_heard = now
                timeout_ms = max(0, int((next_heartbeat - now) * 1000) + 1)
                events = dict(poller.poll(timeout_ms))
                if self._wake_read in events:
                    self._drain_wake_pipe()
                running = self._drain_outbox()
                if self._socket in events:
                    self._drain_socket()
        except Exception:  # the loop itself failed: nothing may wait forever for it
            LOGGER.exception("client I/O thread failed")
            client.count("io_errors")
        finally:
            client.connection_lost("client closed")
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
                    self._send(item[1])
                elif kind == "close":
                    self._send(encode(Disconnect()))
                    return False
            except Exception:
                LOGGER.exception("client I/O thread: failed to send %s", kind)
                self._client_count("io_errors")
        return True

    def _send_graph(self, group_id: bytes, members: list[tuple[TaskFuture, PreparedTask]]) -> None:
        """Send a graph's Tasks together; a member cancelled before sending takes the
        whole graph with it, as a cancel of any member does later."""
        if any(future.state is not FutureState.PENDING for future, _ in members):
            for future, _ in members:
                # Pending: cancelled at once, nothing sent (the deadline is unused).
                future._request_cancel(time.monotonic())
            return
        # "sent" for every member before any frame goes: once the scheduler runs one
        # member, none of them is still pending.
        frames = [
            prepared.frame
            for future, prepared in members
            if future.sent().effect is not Effect.STALE
        ]
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
                self._client_count("protocol_errors")
                self._warn("protocol error from the scheduler: %s", error)
            except Exception:
                LOGGER.exception("client I/O thread: failed to handle a message")
                self._client_count("io_errors")

    def _on_message(self, message: Any) -> None:
        client = self._client
        assert client is not None
        if isinstance(message, TaskResult):
            future = client.futures.get(message.task_id)
            if future is None:
                client.stale(message)
                return
            result, exception = self._unpack_result(message)
            cell = future.recv_result(result, exception)
        elif isinstance(message, TaskCancelConfirm):
            future = client.futures.get(message.task_id)
            if future is None:
                client.stale(message)
                return
            cell = future.recv_cancel_confirm(message.kind.value)
        elif isinstance(message, HeartbeatEcho):
            return
        elif isinstance(message, Disconnect):
            client.connection_lost("the scheduler disconnected")
            return
        else:
            raise ProtocolError(f"{type(message).__name__} is not a scheduler-to-client message")
        if cell.effect is Effect.STALE:
            client.stale(message)

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

    def _client_count(self, stat: str) -> None:
        if self._client is not None:
            self._client.count(stat)

    def _warn(self, message: str, *args: Any) -> None:
        if self._loud_errors > 0:
            self._loud_errors -= 1
            LOGGER.warning(message, *args)
        else:
            LOGGER.debug(message, *args)
