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

Liveness
--------
Judged at the transport level, never by how fast a Python loop answers: the DEALER
runs ZMTP heartbeats (``HEARTBEAT_IVL/TIMEOUT/TTL``), which libzmq's own I/O thread
sends and answers on both sides, so a scheduler whose Python threads are busy or hold
the GIL is alive. A socket monitor reports the handshake and the connection's end;
libzmq closes a connection whose heartbeats go unanswered for ``connection_timeout``.

- Tasks go out only over a connection whose handshake succeeded; until then they wait
  here, in the I/O thread's ``_held`` queue (``IMMEDIATE`` keeps libzmq from queueing
  anything for a connection that is not up, and drops what a closed connection did
  not send). So a task can never reach a scheduler that appears later.
- The connection closes (killed, frozen past the timeout, stopped): every unfinished
  future gets ``connection_lost`` at once; the scheduler drops that connection's work
  (each connection has its own routing id there), so nothing sent over it runs later.
- No task waits for a connection longer than ``connection_timeout``: then its future
  gets ``connection_lost`` ("no scheduler answered at ADDRESS"), and its Task is
  forgotten. libzmq keeps reconnecting: the same client works again when a scheduler
  comes back.
- The scheduler refuses this client's key (CurveZMQ): every future fails with
  "authentication failed at ADDRESS", and so does every later submit; the socket is
  closed, so it does not retry forever.

The protocol's Heartbeat/HeartbeatEcho messages stay decodable, but this client
sends none and judges nothing by them. A ``Disconnect`` from the scheduler resolves
every unfinished future at once.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import zmq
from zmq.utils.monitor import recv_monitor_message

from ..addresses import check_address
from ..errors import DependencyGone, TaskFailedError, WorkerDiedError
from ..keys import load_public_key, load_secret_key
from ..protocol import (
    MAX_BUFFERS,
    MAX_FRAME_BYTES,
    Batch,
    Disconnect,
    HeartbeatEcho,
    ProtocolError,
    ResultStatus,
    Task,
    TaskCancel,
    TaskCancelConfirm,
    TaskResult,
    batch_frames,
    decode,
    decode_batch_item,
    encode,
    encode_task,
    new_task_id,
    plain_result,
)
from ..serializer import (
    DEFAULT_SERIALIZER,
    OUT_OF_BAND_BYTES,
    DependencyRef,
    DumpedFunctions,
    Serializer,
    decode_failure,
    dumps_buffers,
    substitute_dependencies,
)
from . import Engine, EngineClient, GraphNode, KeyRef
from .shared import NeverRaise, WakeQueue, flatten_nested, in_event_loop, replace_key_refs

__all__ = ["FutureFSMEngine", "PreparedDependent", "PreparedTask"]

LOGGER = logging.getLogger("futurefsm.client")

_NOBLOCK = int(zmq.NOBLOCK)  # a plain int: pyzmq's flag enums cost time per call
_OUTBOX_HANDOFF = 512  # queued items at which a submitter lets the I/O thread in
_HAND_OFF_WAIT = 0.005  # seconds a submitter waits for that, at most
_FIRST_HAND_OVER_WAIT = 0.5  # seconds the next submit waits for an idle client's first
_MAX_INBOUND_BATCH = 1000  # messages handled per poll before the outbox gets a turn
_CLOSE_LINGER_MS = 50  # how long a closing client lets its Disconnect go out
_MONITOR_EVENTS = int(
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_DISCONNECTED
)
_HANDSHAKE_FAILURES = {
    int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL): "a protocol error in the handshake",
    int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL): "the scheduler closed the handshake",
}
_KEY_HINT = (
    "a wrong server_key, a key the scheduler does not list, or one side using CurveZMQ "
    "and the other not"
)


class PreparedTask(NamedTuple):
    """A Task encoded in the submitting thread, ready for the I/O thread to send."""

    task_id: bytes
    frame: bytes
    buffers: Sequence[bytes] = ()
    """The out-of-band buffers of its arguments (large ``bytes``): frames of their own
    after the Task's, sent without a copy (docs/protocol.md)."""


class PreparedDependent(NamedTuple):
    """A dependent's Task (``prepare_dependent``), with what ``_resolve`` needs to
    send it again with upstream results in place."""

    task_id: bytes
    frame: bytes
    function: bytes
    arguments: bytes
    upstream: tuple[bytes, ...]


_CANCELLED = "cancelled"
"""The kept outcome of an upstream that ended without a result."""

_Outcome = tuple[ResultStatus, bytes] | str
"""What a dependent needs of an ended upstream: its TaskResult's fields, or cancelled."""


class FutureFSMEngine(Engine):
    """Talks futurefsm's protocol (``futurefsm.protocol``) over a ZeroMQ DEALER.

    ``address=None`` starts an embedded ``SchedulerStub`` in-process on a loopback
    port (with ``workers`` workers), stopped again by ``close()``; it is a CurveZMQ
    server that admits only this client (a keypair made in memory for each), so no
    other local process can run code through its port. ``serializer``: how
    functions, arguments and results become bytes (the scheduler must use the same).

    ``secret_key`` (this client's ``NAME.key_secret`` file, or an in-memory
    ``(public, secret)`` Z85 pair) and ``server_key`` (the scheduler's public
    ``.key`` file, or its Z85 bytes): connect with CurveZMQ to a scheduler started
    with ``--secret-key`` and ``--client-keys``.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        workers: int | None = None,
        serializer: Serializer | None = None,
        secret_key: str | os.PathLike[str] | tuple[bytes, bytes] | None = None,
        server_key: str | os.PathLike[str] | bytes | None = None,
    ) -> None:
        if workers is not None and address is not None:
            raise ValueError("workers: only meaningful for the embedded scheduler (address=None)")
        if (secret_key is None) != (server_key is None):
            raise ValueError("secret_key and server_key: give both (CurveZMQ) or neither")
        if address is None and secret_key is not None:
            raise ValueError("secret_key, server_key: the embedded scheduler makes its own keys")
        self._serializer = serializer if serializer is not None else DEFAULT_SERIALIZER
        self._curve: tuple[bytes, bytes, bytes] | None = None  # public, secret, server's
        if secret_key is not None:
            assert server_key is not None
            self._curve = (*load_secret_key(secret_key), load_public_key(server_key))
        # A module-level function is pickled once, not once per task.
        self._functions = DumpedFunctions(self._serializer)
        self._stub: Any = None
        if address is None:
            from ..scheduler_stub import SchedulerStub

            public, secret = zmq.curve_keypair()
            server_public, server_secret = zmq.curve_keypair()
            self._stub = SchedulerStub(
                workers=workers or 4,
                serializer=self._serializer,
                secret_key=(server_public, server_secret),
                client_keys=[public],
            )
            self._curve = (public, secret, server_public)
            address = self._stub.address
        self.address = address
        self._client: EngineClient | None = None
        self._outbox: WakeQueue[tuple[Any, ...]] = WakeQueue(self._wake)
        self._outbox_drained = threading.Event()  # see _hand_off
        self._outbox_drained.set()
        self._guard = NeverRaise(LOGGER, "client I/O thread")
        self._all_sent = threading.Event()  # see send(); set by the I/O thread
        self._all_sent.set()
        self._handshake = threading.Event()  # a connection came up (once is enough)
        # Under _live_lock: tasks sent and not yet forgotten (forget(); none: the
        # client is idle), and what dependents need (see prepare_dependent).
        self._live: set[bytes] = set()
        self._live_lock = threading.Lock()
        self._holds: dict[bytes, int] = {}  # upstream id -> dependents not forgotten
        self._kept: dict[bytes, _Outcome] = {}  # forgotten upstreams' outcomes, held
        self._dependents: dict[bytes, PreparedDependent] = {}
        self._closed = False
        self._close_lock = threading.Lock()
        self._io_thread: threading.Thread | None = None
        # Owned by the I/O thread (see "Liveness" above).
        # (queued at, outbox item): what waits for a connection, oldest first.
        self._held: collections.deque[tuple[float, tuple[Any, ...]]] = collections.deque()
        self._up = False
        self._writable = False  # the up connection's pipe is attached (POLLOUT seen)
        self._down_since = 0.0
        self._handshake_failure = ""
        self._refused = ""

    @property
    def connected(self) -> bool:
        """True while a connection to the scheduler is up (its handshake succeeded)."""
        return self._up

    @classmethod
    def from_address(cls, address: str | None, **options: Any) -> FutureFSMEngine:
        """``Client(address)``: our own scheduler at ``address`` (None: embedded)."""
        return cls(None if address is None else check_address(address), **options)

    def __repr__(self) -> str:
        return f"<FutureFSMEngine {self.address}>"

    # ------------------------------------------------------------------ the seam

    def start(self, client: EngineClient) -> None:
        """Connect the DEALER and start the I/O thread."""
        self._client = client
        self._guard.count = client.count
        self._context: zmq.Context[Any] = zmq.Context()
        self._socket = socket = self._context.socket(zmq.DEALER)
        socket.setsockopt(zmq.SNDHWM, 0)
        socket.setsockopt(zmq.RCVHWM, 0)
        socket.setsockopt(zmq.LINGER, 0)
        # Queue messages only for a connection whose handshake is done, and drop what
        # a closed connection did not send (never hand it to the next connection).
        socket.setsockopt(zmq.IMMEDIATE, 1)
        # An empty message as each connection opens: the scheduler learns which
        # connection carries this routing id before any Task (see scheduler_stub/peers.py).
        socket.setsockopt(zmq.PROBE_ROUTER, 1)
        timeout_ms = max(1, round(client.connection_timeout * 1000))
        interval_ms = max(1, min(round(client.heartbeat_interval * 1000), timeout_ms))
        socket.setsockopt(zmq.HEARTBEAT_IVL, interval_ms)
        socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, timeout_ms)
        # How long the scheduler waits for our traffic (a deciseconds field on the wire).
        socket.setsockopt(zmq.HEARTBEAT_TTL, min(timeout_ms, 6_553_500))
        if self._curve is not None:
            socket.curve_publickey, socket.curve_secretkey, socket.curve_serverkey = self._curve
        self._monitor = socket.get_monitor_socket(_MONITOR_EVENTS)
        self._down_since = time.monotonic()
        socket.connect(self.address)
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
        if self._stub is not None:
            # The embedded scheduler is in this process: be connected to it, and have
            # a worker of it up, before Client() returns, as a stdlib executor has its
            # workers when it is made (the first submit is handed over: send()).
            self._handshake.wait(client.connection_timeout)
            self._stub.wait_for_worker(client.connection_timeout)

    def prepare(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> PreparedTask:
        """Serialize the call and encode its Task (in the submitting thread)."""
        if not self._all_sent.is_set():
            self._hand_over_first()
        if len(self._outbox) >= _OUTBOX_HANDOFF:
            self._hand_off()
        function, arguments, buffers = self._serialize_call(fn, args, kwargs, out_of_band=True)
        task_id = new_task_id()
        frame = encode_task(task_id, function, arguments)
        if buffers:
            _check_buffers(buffers)
            return PreparedTask(task_id, frame, buffers)
        return PreparedTask(task_id, frame)

    def _hand_over_first(self) -> None:
        """Wait until the task that found the client idle has been sent (see send()).

        Here, before the client takes its submit lock, not in send() under it: a
        done-callback that submits on the I/O thread needs that lock, and the I/O
        thread is what sends. Waited for once: a busy I/O thread (a slow callback)
        must not slow every submit down."""
        if self.on_io_thread() or in_event_loop():
            return
        self._all_sent.wait(_FIRST_HAND_OVER_WAIT)
        self._all_sent.set()

    def _hand_off(self) -> None:
        """Let the I/O thread take the outbox before queueing more.

        A thread that submits in a tight loop holds the GIL; the I/O thread then gets
        it back only every switch interval (5 ms), and again after each ZeroMQ call,
        so Tasks go out in rare large bursts and the scheduler idles in between.
        Waiting here, on an event the I/O thread sets once it has drained the outbox,
        hands it the GIL at once. Bounded, and never on the I/O thread itself (it is
        the one that would set the event) or in an event loop (which must not block).
        If a wait runs out (the I/O thread is busy, say in a slow done-callback),
        submitters do not wait again until it has drained the outbox: a busy I/O
        thread must not slow every submit down."""
        if self.on_io_thread() or in_event_loop():
            return
        drained = self._outbox_drained
        if not drained.is_set():  # a wait ran out and no drain came since
            return
        # The outbox is not empty, so the I/O thread has been woken already. Checked
        # again after the clear: a drain that finished just before it set the event
        # for nothing, and the next one comes only after more submits.
        drained.clear()
        if len(self._outbox) >= _OUTBOX_HANDOFF:
            drained.wait(_HAND_OFF_WAIT)

    def prepare_graph(self, nodes: Sequence[GraphNode], group_id: bytes) -> list[PreparedTask]:
        """Encode every node's Task; a ``KeyRef`` becomes a ``DependencyRef`` that the
        scheduler replaces with that task's result; nested tasks travel as a
        ``NestedCall``."""
        task_ids = {node.key: new_task_id() for node in nodes}

        def refs(item: Any) -> Any:
            if type(item) is KeyRef:
                return DependencyRef(task_ids[item.key])
            if isinstance(item, (tuple, list)):
                return type(item)(refs(element) for element in item)
            return item

        prepared = []
        for node in nodes:
            fn, args = flatten_nested(node.function, node.args)
            depends_on = tuple(task_ids[key] for key in node.dependencies)
            function, arguments, _ = self._serialize_call(fn, refs(args), {})
            task_id = task_ids[node.key]
            frame = encode(Task(task_id, function, arguments, group_id, depends_on))
            prepared.append(PreparedTask(task_id, frame))
        return prepared

    def prepare_dependent(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        upstream: Sequence[bytes],
    ) -> PreparedDependent | None:
        """A Task whose ``depends_on`` names the upstream tasks: the scheduler runs it
        once they succeeded, with their results in place of the ``DependencyRef`` s
        (on the worker), fails it with an upstream's failure and cancels it with an
        upstream (an unasked ``canceled``); its own cancel leaves them alone.

        An upstream whose result the scheduler sent before this Task reached it is no
        longer there: the scheduler fails the Task with ``DependencyGone`` and the
        I/O thread sends it again with that result, which it kept for it
        (``_resolve``). None if an upstream is already forgotten (its future ended)."""
        ids = tuple(upstream)
        with self._live_lock:
            if not all(task_id in self._live for task_id in ids):
                return None
            for task_id in ids:  # keep their outcomes while this one needs them
                self._holds[task_id] = self._holds.get(task_id, 0) + 1
        try:
            call = replace_key_refs((args, kwargs), lambda ref: DependencyRef(ref.key))
            function, arguments, _ = self._serialize_call(fn, *call)
        except BaseException:
            self._release_holds(ids)
            raise
        task_id = new_task_id()
        frame = encode(Task(task_id, function, arguments, None, ids))
        dependent = PreparedDependent(task_id, frame, function, arguments, ids)
        with self._live_lock:
            self._dependents[task_id] = dependent
        return dependent

    def _release_holds(self, ids: Sequence[bytes]) -> None:
        with self._live_lock:
            self._drop_holds(ids)

    def _drop_holds(self, ids: Sequence[bytes]) -> None:
        """One dependent fewer needs each of ``ids`` (``_live_lock`` held)."""
        holds = self._holds
        for upstream in ids:
            left = holds[upstream] - 1
            if left:
                holds[upstream] = left
            else:
                del holds[upstream]
                self._kept.pop(upstream, None)

    def send(self, prepared: PreparedTask) -> None:  # type: ignore[override]
        """Queue the Task for the I/O thread.

        The first task of an idle client (no task of this engine live) over an up
        connection is handed over before the next submit goes on
        (``_hand_over_first``), as a stdlib executor hands it to a worker: without
        that, a thread submitting in a loop keeps the GIL from the I/O thread for a
        switch interval (5 ms), and a ``shutdown(cancel_futures=True)`` in that time
        cancelled every task unsent. Only when idle: waiting on every submit would
        make the submitter and the I/O thread take turns per task."""
        with self._live_lock:
            idle = not self._live
            self._live.add(prepared.task_id)
        if idle and self._up:
            self._all_sent.clear()  # the I/O thread sets it once the task is out
        if type(prepared) is PreparedDependent:
            self._outbox.post(("dependent", prepared))
        else:
            self._outbox.post(("task", prepared))

    def send_graph(self, group_id: bytes, prepared: list[PreparedTask]) -> None:  # type: ignore[override]
        """One outbox item: the I/O thread sends the graph whole or not at all."""
        with self._live_lock:
            self._live.update(item.task_id for item in prepared)
        self._outbox.post(("graph", group_id, prepared))

    def send_cancel(self, task_id: bytes, group_id: bytes | None, force: bool = True) -> None:
        """Queue one TaskCancel (the group's id for a graph member)."""
        target = task_id if group_id is None else group_id
        self._outbox.post(("cancel", encode(TaskCancel(target, force))))

    def forget(self, task_id: bytes) -> None:
        """The task's future is terminal: one task fewer live (see send())."""
        with self._live_lock:
            if task_id in self._live:
                self._live.discard(task_id)
                if task_id in self._holds:  # ended without a result: it was cancelled
                    self._kept.setdefault(task_id, _CANCELLED)
            dependent = self._dependents.pop(task_id, None)
            if dependent is not None:
                self._drop_holds(dependent.upstream)

    def close(self) -> None:
        """Say Disconnect, stop the I/O thread, and stop the embedded scheduler."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            if self._io_thread is not None:
                self._outbox.post(("close",))
                if not self.on_io_thread():
                    self._io_thread.join()
        if self._stub is not None:
            self._stub.stop()

    def on_io_thread(self) -> bool:
        """True on this engine's I/O thread."""
        return threading.current_thread() is self._io_thread

    # ------------------------------------------------------------------ serializing

    def _serialize_call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        out_of_band: bool = False,
    ) -> tuple[bytes, bytes, Sequence[bytes]]:
        """(function, arguments, buffers) serialized; with ``out_of_band``, large
        ``bytes`` in the arguments are the buffers instead of pickled in band (no
        object is made for them when there are none: the garbage collector counts
        every container a submit allocates)."""
        if not callable(fn):
            raise TypeError(f"submit() needs a callable, got {fn!r}")
        try:
            function = self._functions.dumps(fn)
        except Exception as error:
            raise TypeError(
                f"cannot serialize the function {fn!r} for submit(): {error}"
            ) from error
        try:
            if out_of_band:
                arguments, buffers = dumps_buffers(self._serializer, (args, kwargs))
            else:
                arguments, buffers = self._serializer.dumps((args, kwargs)), ()
        except Exception as error:
            raise TypeError(
                f"cannot serialize the arguments of {getattr(fn, '__name__', fn)!r} "
                f"for submit(): {error}"
            ) from error
        return function, arguments, buffers

    # ------------------------------------------------------------------ I/O thread

    def _wake(self) -> None:
        """Wake the I/O thread (``_outbox``'s one wake-up per batch): a pipe byte."""
        with self._wake_lock:
            if not self._wake_closed:  # else the I/O thread has exited; nothing reads it
                os.write(self._wake_write, b"\0")

    def _run(self) -> None:
        client = self._client
        assert client is not None
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._wake_read, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        running = True
        try:
            while running:
                events = dict(poller.poll(self._poll_timeout_ms()))
                if self._monitor in events:
                    self._drain_monitor(poller)
                if self._wake_read in events:
                    self._drain_wake_pipe()
                running = self._drain_outbox()
                if self._held:
                    self._flush_held(poller)
                if not self._held and not self._all_sent.is_set():
                    self._all_sent.set()  # wakes the submit after an idle one (send())
                if self._socket in events and events[self._socket] & zmq.POLLIN:
                    self._drain_socket()
                self._check_no_connection()
        except Exception:  # the loop itself failed: nothing may wait forever for it
            LOGGER.exception("client I/O thread failed")
            client.count("io_errors")
        finally:
            client.deliver_connection_lost("client closed")
            self._close_socket(linger=_CLOSE_LINGER_MS)
            self._context.term()
            with self._wake_lock:
                self._wake_closed = True
                os.close(self._wake_read)
                os.close(self._wake_write)

    # -- the connection's state

    def _poll_timeout_ms(self) -> int | None:
        """Sleep until woken, or until the no-connection deadline if one is running."""
        client = self._client
        assert client is not None
        if self._up or self._refused or not self._held:
            return None
        since = max(self._down_since, self._held[0][0])
        wait = since + client.connection_timeout - time.monotonic()
        return max(0, int(wait * 1000) + 1)

    def _drain_monitor(self, poller: zmq.Poller) -> None:
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:  # closed after a refusal
                return
            kind = int(event["event"])
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._up = True
                self._handshake.set()
                self._writable = False
                self._handshake_failure = ""
                LOGGER.info("connected to the scheduler at %s", self.address)
            elif kind == zmq.EVENT_DISCONNECTED:
                if self._up:
                    self._up = self._writable = False
                    self._down_since = time.monotonic()
                    self._lost(
                        f"lost the connection to the scheduler at {self.address} (it closed, "
                        f"or did not answer ZMTP heartbeats for "
                        f"{self._timeout():g} s)"
                    )
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._refuse(
                    f"authentication failed at {self.address}: the scheduler refused this "
                    f"client's key (status {int(event['value'])}; {_KEY_HINT})",
                    poller,
                )
                return
            elif kind in _HANDSHAKE_FAILURES:
                self._handshake_failure = _HANDSHAKE_FAILURES[kind]

    def _timeout(self) -> float:
        client = self._client
        assert client is not None
        return client.connection_timeout

    def _check_no_connection(self) -> None:
        """Fail the futures whose tasks waited ``connection_timeout`` for a connection."""
        client = self._client
        assert client is not None
        held = self._held
        if self._up or not held:
            return
        now = time.monotonic()
        timeout = client.connection_timeout
        if now - max(self._down_since, held[0][0]) < timeout:
            return
        if self._handshake_failure:
            why = (
                f"authentication failed at {self.address}: no handshake succeeded within "
                f"{timeout:g} s (last: {self._handshake_failure}; {_KEY_HINT})"
            )
        else:
            why = f"no scheduler answered at {self.address} within {timeout:g} s"
        expired: list[bytes] = []
        while held and now - max(self._down_since, held[0][0]) >= timeout:
            item = held.popleft()[1]
            if item[0] == "task":
                expired.append(item[1].task_id)
            elif item[0] == "graph":
                expired.extend(prepared.task_id for prepared in item[2])
        if expired:
            client.deliver_connection_lost(why, expired)

    def _lost(self, why: str) -> None:
        """Every unfinished future ends with connection_lost; nothing held goes out."""
        self._held.clear()
        client = self._client
        assert client is not None
        client.deliver_connection_lost(why)

    def _refuse(self, why: str, poller: zmq.Poller) -> None:
        """The scheduler refused our key: fail everything, now and later; stop retrying."""
        LOGGER.error("%s", why)
        self._refused = why
        self._up = False
        poller.unregister(self._socket)
        poller.unregister(self._monitor)
        self._close_socket(linger=0)
        self._lost(why)

    def _close_socket(self, linger: int) -> None:
        if self._socket.closed:
            return
        try:
            self._socket.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(linger=0)
        self._socket.close(linger=linger)

    # -- sending

    def _flush_held(self, poller: zmq.Poller) -> None:
        """Send what waits for the connection, if one is up and ready to take it."""
        if self._refused:
            self._lost(self._refused)
            return
        if not self._up:
            return
        if not self._writable:
            # Processes libzmq's pending commands: the new connection's pipe may be
            # attached only now. If it is not yet, poll for POLLOUT and come back.
            if not self._socket.getsockopt(zmq.EVENTS) & zmq.POLLOUT:
                poller.modify(self._socket, zmq.POLLIN | zmq.POLLOUT)
                return
            poller.modify(self._socket, zmq.POLLIN)
            self._writable = True
        held, guard = self._held, self._guard
        sending = self._client.sending  # type: ignore[union-attr]
        tasks: list[bytes] = []  # consecutive Tasks go out together, as Batches
        while held and self._up:
            item = held.popleft()[1]
            kind = item[0]
            with guard:
                if kind == "task":
                    prepared = item[1]
                    # "sent" before the bytes go: a cancel after this point finds the
                    # future running and queues its TaskCancel behind this Task.
                    if sending(prepared.task_id):
                        if not prepared.buffers:
                            tasks.append(prepared.frame)
                            continue
                        if tasks:  # in order, and alone: its buffers follow its frame
                            self._send_batched(tasks)
                        self._send_with_buffers(prepared.frame, prepared.buffers)
                    continue
                if tasks:  # in order: whatever follows goes after these Tasks
                    self._send_batched(tasks)
                if kind == "graph":
                    self._send_graph(item[2])
                elif kind == "dependent":
                    self._send_dependent(item[1])
                elif kind == "cancel":
                    self._send(item[1])
        if tasks:
            with guard:
                self._send_batched(tasks)

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass
        # The outbox's pending flag is cleared by its take(), after this read: a byte
        # written after the take stays in the pipe for the next poll. Cleared before
        # the read, the read could swallow a byte whose post then left it set for good.

    def _drain_outbox(self) -> bool:
        """Move everything queued behind what waits for the connection (sent by
        ``_flush_held``); False once a close was requested."""
        held = self._held
        now = time.monotonic()
        for item in self._outbox.take():
            if item[0] == "close":
                if self._up:
                    self._flush_held_best_effort()
                    try:
                        self._send(encode(Disconnect()))
                    except zmq.ZMQError:
                        pass
                self._outbox_drained.set()
                return False
            held.append((now, item))
        self._outbox_drained.set()
        return True

    def _flush_held_best_effort(self) -> None:
        """At close: what is left are TaskCancels for the futures close() cancels."""
        for _, item in self._held:
            if item[0] == "cancel":
                try:
                    self._send(item[1])
                except zmq.ZMQError:
                    break
        self._held.clear()

    def _send_batched(self, frames: list[bytes]) -> None:
        """Send ``frames`` (then empties it) in as few frames as possible."""
        for frame in batch_frames(frames):
            self._send(frame)
        frames.clear()

    def _send_graph(self, members: list[PreparedTask]) -> None:
        """Send a graph's Tasks together, or none (the client decides: a member was
        cancelled before sending)."""
        client = self._client
        assert client is not None
        if client.sending_graph([prepared.task_id for prepared in members]):
            for prepared in members:
                self._send(prepared.frame)

    def _send_dependent(self, prepared: PreparedDependent) -> None:
        """Send a dependent's Task, with the result of any upstream that ended
        meanwhile in its place (``_resolve``)."""
        client = self._client
        assert client is not None
        if client.sending(prepared.task_id):
            frame = self._resolve(prepared)
            if frame is not None:
                self._send(frame)

    def _resolve(self, prepared: PreparedDependent) -> bytes | None:
        """The dependent's Task, with the kept outcome of each upstream that ended
        in place of its ``DependencyRef`` (and out of ``depends_on``); None if an
        upstream failed or was cancelled: then this one is delivered so, here."""
        client = self._client
        assert client is not None
        task_id = prepared.task_id
        with self._live_lock:
            ended = {u: self._kept[u] for u in prepared.upstream if u in self._kept}
        if not ended:
            return prepared.frame
        values = {}
        for upstream, outcome in ended.items():
            if outcome is _CANCELLED:
                client.deliver_cancel_answer(task_id, "canceled")
                return None
            status, payload = outcome
            value, error = self._unpack_result(upstream, status, payload)
            if error is not None:
                client.deliver_result(task_id, exception=error)
                return None
            values[upstream] = value
        serializer = self._serializer
        try:
            call = substitute_dependencies(serializer.loads(prepared.arguments), values)
            arguments = serializer.dumps(call)
        except Exception as error:  # the upstream's value does not serialize back
            failed = TaskFailedError(f"cannot pass an upstream's result on: {error!r}")
            client.deliver_result(task_id, exception=failed)
            return None
        depends_on = tuple(u for u in prepared.upstream if u not in ended)
        return encode(Task(task_id, prepared.function, arguments, None, depends_on))

    def _on_result(self, task_id: bytes, status: ResultStatus, payload: bytes) -> None:
        """One TaskResult: kept for the dependents that hold it, then delivered; a
        dependent's ``DependencyGone`` is not delivered but sent again (``_resolve``)."""
        client = self._client
        assert client is not None
        with self._live_lock:
            if task_id in self._live:
                self._live.discard(task_id)
                if task_id in self._holds:
                    self._kept[task_id] = (status, payload)
            dependent = self._dependents.get(task_id)
        value, error = self._unpack_result(task_id, status, payload)
        if dependent is not None and type(error) is DependencyGone:
            # An upstream's result left the scheduler before this Task reached it; that
            # result came first on this connection, and is kept: send it again.
            with self._live_lock:
                self._live.add(task_id)
            frame = self._resolve(dependent)
            if frame is not None:
                self._send(frame)
            return
        client.deliver_result(task_id, value, error)

    def _send_with_buffers(self, frame: bytes, buffers: Sequence[bytes]) -> None:
        """A Task's frame and its out-of-band buffers, as one multipart message; the
        buffers without a copy (libzmq holds them until they are on the wire)."""
        try:
            self._socket.send_multipart([frame, *buffers], _NOBLOCK, copy=False)
        except zmq.Again:  # as in _send
            pass

    def _send(self, frame: bytes) -> None:
        # Only over a connection that is up (IMMEDIATE), with no high water mark: this
        # never blocks. If the connection closed a moment ago the frame is dropped
        # (EAGAIN, or with the closed pipe), and the monitor's DISCONNECTED, already on
        # its way, resolves the future.
        try:
            self._socket.send(frame, _NOBLOCK)
        except zmq.Again:
            pass

    def _drain_socket(self) -> None:
        socket, guard = self._socket, self._guard
        on_result = self._on_result
        for _ in range(_MAX_INBOUND_BATCH):
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            try:
                if len(frames) != 1:
                    raise ProtocolError(f"expected 1 frame per message, got {len(frames)}")
                message = decode(frames[0])
            except ProtocolError as error:
                guard.protocol_error(error)
                continue
            if type(message) is Batch:
                # Each message of a batch in order; a bad one is counted alone. Results,
                # most of what comes, are handled from their fields (no TaskResult).
                for index, frame in enumerate(message.frames):
                    fields = plain_result(frame)
                    with guard:
                        if fields is not None:
                            on_result(*fields)
                        else:
                            self._on_message(decode_batch_item(index, frame))
            else:
                with guard:
                    self._on_message(message)

    def _on_message(self, message: Any) -> None:
        """One decoded message from the scheduler, as a delivery (may raise)."""
        client = self._client
        assert client is not None
        if type(message) is TaskResult:
            self._on_result(message.task_id, message.status, message.payload)
        elif isinstance(message, TaskCancelConfirm):
            client.deliver_cancel_answer(message.task_id, message.kind.value)
        elif isinstance(message, Disconnect):
            client.deliver_connection_lost("the scheduler disconnected")
        elif isinstance(message, ProtocolError):
            raise message
        elif not isinstance(message, HeartbeatEcho):
            raise ProtocolError(f"{type(message).__name__} is not a scheduler-to-client message")

    def _unpack_result(
        self, task_id: bytes, status: ResultStatus, payload: bytes
    ) -> tuple[Any, BaseException | None]:
        """Deserialize a TaskResult's payload (never raises: a bad payload becomes the
        exception)."""
        if status is ResultStatus.SUCCESS:
            try:
                return self._serializer.loads(payload), None
            except Exception as error:
                return None, TaskFailedError(
                    f"the result of task {task_id.hex()} could not be deserialized: {error!r}"
                )
        if status is ResultStatus.FAILED:
            return None, decode_failure(payload, self._serializer)
        try:
            reason = self._serializer.loads(payload)
        except Exception:
            reason = "no reason given"
        return None, WorkerDiedError(f"the worker running task {task_id.hex()} died: {reason}")


def _check_buffers(buffers: Sequence[bytes]) -> None:
    """Refuse, naming why, out-of-band buffers the scheduler would refuse."""
    if len(buffers) > MAX_BUFFERS:
        raise ProtocolError(
            f"the arguments hold {len(buffers)} bytes objects of "
            f"{OUT_OF_BAND_BYTES} bytes or more (at most {MAX_BUFFERS} per task): "
            "join them, or send them in several tasks"
        )
    for buffer in buffers:
        if len(buffer) > MAX_FRAME_BYTES:
            raise ProtocolError(
                f"a bytes argument of {len(buffer)} bytes exceeds the "
                f"{MAX_FRAME_BYTES}-byte limit of a frame: split it across tasks"
            )
