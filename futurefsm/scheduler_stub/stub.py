"""``SchedulerStub``: a real ZeroMQ scheduler that runs tasks on worker processes
(or threads) (docs/scheduler.md); "stub" for its fault scripting (``Behaviour``).

Theory of operation
-------------------
Threads: one I/O thread owns the ROUTER socket and every piece of task bookkeeping
(``records.ClientBook`` per client identity). Tasks run on a pool (``workers.py``):

- worker processes (the default): the I/O thread hands queued tasks to the processes
  in batches and polls their connections beside the ROUTER, so a task cannot starve
  it (no shared GIL); a task sent but not started can still be taken back (a cancel
  of it is exact), and a running task can be stopped by killing its process. A
  background thread starts processes, one more than ``workers`` so a spare is warm,
  and posts them to the I/O thread.
- worker threads (``threads=True``): they take queued tasks from a queue, run them, and
  post their results to the ``Inbox``. Only the move of a queued task to running (by a
  worker) or to cancelled (by the I/O thread) is shared, under one small claim lock.

Tasks: a task's state moves only through the task table (``task_table.py``). The I/O
code turns what happens (a message, a worker's answer, a process gone, a client gone, a
timer) into a ``TaskEvent`` and fires it (``tasks.py``, ``TaskEvents``): ``_apply``,
the only code that sets a task's state, moves it as ``TASK_TABLE`` says and carries out
the cell's effects, then the events those raised for dependents. Nothing else decides
a task's state. The server's parts, one module each: this one (the ROUTER, its poll
loop, peers, lifecycle), ``tasks.py`` (task handling), ``outbound.py`` (sending and
batching answers), ``workers.py`` (the pool), ``observe.py`` (counters, message log),
``behaviour.py`` (fault scripting).

Other threads reach the I/O thread through the ``Inbox`` (a deque plus an inproc
PUSH/PULL wake-up) that it drains; the public methods that change things
(``disconnect_all``, ``drop_client``, ``stop``) post to it.

The I/O thread polls the ROUTER, the inbox and the worker processes, with a timeout
that is the next due ``result_delay`` timer (a heap), so a delayed result blocks
nothing.

Every message is accounted for: the ROUTER is ``ROUTER_MANDATORY`` with unlimited high
water marks, so a message to a peer that is gone raises ``EHOSTUNREACH``, which is
counted as ``unroutable`` and logged; nothing is dropped silently. Bad input (a frame
that does not decode, a wrong frame count, a message a scheduler should never get, a
reused task id) is counted as ``protocol_errors``, logged, and otherwise ignored.

Lifecycle: the constructor binds the socket and starts every thread, so a stub serves
as soon as it exists (worker processes start in the background; tasks queue until the
first is up); ``stop()`` (or leaving the ``with`` block) tells every client
``Disconnect`` and ends it.

What a client sees
------------------
- Task ids are per client connection (ROUTER identity). A task is *held* from its
  arrival until its result is sent; during ``result_delay`` it still counts as running.
  A forced cancel of a task running on a worker process kills that process (a spare
  takes its slot at once) and confirms ``canceled`` once the process is gone.
  A TaskCancel for an id that is not held (finished, cancelled, never seen) is answered
  ``not_found``; for a held task, as its Behaviour's ``on_cancel`` says (``OnCancel``).
- Graphs (``records.py``): a task waits until every ``depends_on`` task finished, in
  whatever order they arrive. A dependency that failed (or whose worker died) ends its
  dependents, transitively and without running them, with the same status and payload.
  A cancelled dependency cancels its dependents, each confirmed ``canceled`` unasked.
  A TaskCancel naming a known group id cancels every held member as if forced (each
  by its own ``on_cancel``, each confirmed on its own id); finished members get nothing,
  and so does the group id itself.
- A client that goes away (``Disconnect``, or ``_drop_client`` when the transport says
  the peer is gone) has its queued tasks dropped and its running ones stopped (worker
  processes killed); ``disconnect_all()`` sends ``Disconnect`` to every client and
  forgets everything; ``stop()`` sends ``Disconnect`` to every client, then goes away.

The message log (``log``) is off unless ``log_messages=True``: it keeps each message
without its payload bytes (``function``, ``args``, ``payload`` are empty; ``size`` is
the frame's length), bounded by ``log_limit`` records and ``log_bytes``.

Liveness and trust (``peers.py``, ``security.py``)
--------------------------------------------------
libzmq's I/O thread runs ZMTP heartbeats on the ROUTER, whatever the stub's Python
threads are doing, and closes a connection silent for ``client_timeout``. A socket
monitor reports connections accepted, closed and refused: a client whose connection
closed (killed, frozen past the timeout, or reconnecting with a new socket) has its
work dropped as if it had sent ``Disconnect``, and whatever it left unread is ignored.
With keys, the ROUTER is a CurveZMQ server and pyzmq's ZAP authenticator admits only
the listed client keys; without keys, the stub binds only to this host unless told
``insecure=True``.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import zmq

from ..protocol import (
    MAX_BUFFERS,
    MAX_FRAME_BYTES,
    Batch,
    Disconnect,
    Heartbeat,
    HeartbeatEcho,
    Message,
    ProtocolError,
    Status,
    StatusRequest,
    Task,
    TaskCancel,
    decode,
    decode_batch_item,
    plain_task,
    unbatch,
)
from ..serializer import DEFAULT_SERIALIZER, Serializer
from .behaviour import DEFAULT_BEHAVIOUR, Behaviour, BehaviourSource
from .observe import LogRecord, Observations
from .outbound import _Outbox
from .peers import PeerTracker
from .records import ClientBook, TaskRecord
from .security import ClientKeys, CurveServer, SecretKey, check_bind
from .task_table import TaskEvent, TaskState
from .tasks import TaskEvents
from .workers import Inbox, ProcessPool, ThreadPool

__all__ = ["LogRecord", "SchedulerStub"]

logger = logging.getLogger("futurefsm.scheduler_stub")

_LOUD_WARNINGS = 10
"""Protocol errors and unroutable messages are logged at warning level this many
times, then at debug level (a fuzzing client must not flood the log)."""

_ROUTER_BATCH = 1000
"""Messages read from the ROUTER in a row before the inbox gets a look."""

# Enum members as module constants: a member read from its class costs a lookup.
_QUEUED, _READY = TaskState.QUEUED, TaskEvent.READY

_TURNS_PER_FLUSH = 8
_FLUSH_AFTER = 0.0005
"""Answers (results, confirms) wait for at most this many turns of the I/O loop (each
handling what one poll found ready) or about this many seconds (checked between
turns) before they go out; they go out at once when nothing else is ready (so no
answer waits for anything but work already at hand)."""

_CLOSE_LINGER_MS = 50
"""How long ``stop()`` lets queued outgoing messages flush when closing the socket."""

_TERM_GRACE = 0.1
"""How long ``stop()`` waits for the context to terminate even when its time is up
(every socket is closed by then: it takes microseconds unless libzmq is stuck)."""

_MAX_POLL_MS = 60_000
"""Longest single poll: a huge ``result_delay`` must not overflow zmq's timeout."""

_POLLOUT, _POLLIN_OR_ERR = int(zmq.POLLOUT), int(zmq.POLLIN | zmq.POLLERR)
_NOBLOCK = int(zmq.NOBLOCK)  # a plain int: pyzmq's flag enums cost time per call
_RCVMORE = int(zmq.RCVMORE)


def _bind_endpoint(address: str) -> str:
    """The endpoint to bind: a TCP port 0 means any free port (``*`` in ZeroMQ)."""
    match = re.fullmatch(r"(tcp://.+):0", address)
    return f"{match.group(1)}:*" if match else address


def _connectable(endpoint: str) -> str:
    """A bound endpoint as a peer on this host can connect to it (no wildcard host)."""
    endpoint = re.sub(r"^tcp://(0\.0\.0\.0|\*):", "tcp://127.0.0.1:", endpoint)
    return re.sub(r"^tcp://\[::\]:", "tcp://[::1]:", endpoint)


class SchedulerStub(TaskEvents):
    """A ZeroMQ ROUTER scheduler that unpickles and runs tasks on worker processes.

    ``address``: where to bind; ``tcp://HOST:0`` picks a free port. ``workers``: how
    many tasks run at once, each in its own worker process (one more process is kept
    warm as a spare). ``threads=True``: run them on worker threads in this process
    instead (a running task then cannot be stopped). ``behaviour``: one ``Behaviour``
    for every task, a callable from a Task's arrival index (0, 1, 2, ... across the
    stub) to its Behaviour, or None (no faults). ``serializer``: must match the
    clients' (cloudpickle by default). ``log_messages``: keep the message log
    (``log``), at most ``log_limit`` records and about ``log_bytes`` bytes (the oldest
    go first).

    ``secret_key`` (a ``.key_secret`` file or an in-memory ``(public, secret)`` Z85
    pair) and ``client_keys`` (a directory of ``.key`` files or in-memory public keys)
    make it a CurveZMQ server that admits only those clients. Without keys it refuses
    to bind beyond this host (``ValueError``) unless ``insecure=True``.
    ``client_timeout``: a client whose connection carries nothing, not even libzmq's
    heartbeats, for this long is taken as gone and its work dropped.

    Binds and starts serving on construction. Use as a context manager, or call
    ``stop()``.
    """

    def __init__(
        self,
        address: str = "tcp://127.0.0.1:0",
        *,
        workers: int = 4,
        threads: bool = False,
        behaviour: BehaviourSource = None,
        serializer: Serializer | None = None,
        log_messages: bool = False,
        log_limit: int = 100_000,
        log_bytes: int = 64 * 1024 * 1024,
        secret_key: SecretKey | None = None,
        client_keys: ClientKeys | None = None,
        insecure: bool = False,
        client_timeout: float = 5.0,
    ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers: expected an int >= 1, got {workers!r}")
        for name, value in (("log_limit", log_limit), ("log_bytes", log_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        if behaviour is None:
            behaviour = DEFAULT_BEHAVIOUR
        if isinstance(behaviour, Behaviour):
            self._behaviour: Behaviour | None = behaviour
            self._behaviour_fn: Callable[[int], Behaviour] | None = None
        elif callable(behaviour):
            self._behaviour, self._behaviour_fn = None, behaviour
        else:
            raise TypeError(
                f"behaviour: expected a Behaviour, a callable or None, got {behaviour!r}"
            )
        if isinstance(client_timeout, bool) or not (
            isinstance(client_timeout, (int, float)) and client_timeout > 0
        ):
            raise ValueError(f"client_timeout: expected seconds > 0, got {client_timeout!r}")
        if client_keys is not None and secret_key is None:
            raise ValueError("client_keys: only meaningful with secret_key (CurveZMQ)")
        curve = CurveServer.load(secret_key, client_keys) if secret_key is not None else None
        check_bind(address, secured=curve is not None, insecure=insecure)
        self.server_key: bytes | None = curve.public_key if curve is not None else None
        """The stub's CurveZMQ public key (Z85), or None without keys."""
        self._serializer = serializer if serializer is not None else DEFAULT_SERIALIZER
        self._answer_heartbeats = self._behaviour is None or self._behaviour.answer_heartbeats
        self._plain_behaviour = next(
            (b for b in (self._behaviour, DEFAULT_BEHAVIOUR) if b is not None and _plain(b)), None
        )
        """A Behaviour whose tasks' results go out as they come (no delay, drop or
        duplicate): ``SEND_RESULT`` queues their results the short way."""

        # Owned by the I/O thread once it runs.
        self._clients: dict[bytes, ClientBook] = {}
        self._arrivals = 0
        self._running = True
        self._loud_warnings = _LOUD_WARNINGS
        self._arriving: Task | None = None
        self._peers_warned: set[bytes] = set()
        self._arrived: list[TaskRecord] | None = None
        self._outgoing: dict[bytes, _Outbox] = {}
        """Results and confirms per client, sent together once nothing else is ready
        (or after ``_TURNS_PER_FLUSH`` turns of the loop)."""

        self._init_task_events(threads)
        self._observed = Observations(log_messages, log_limit, log_bytes)
        self._log_messages = self._observed.logging
        self._lifecycle_lock = threading.Lock()
        self._stopped = False

        name = f"futurefsm-stub-{id(self):x}"
        self._context: zmq.Context[Any] = zmq.Context()
        self._authenticator = None
        try:
            self._router = self._context.socket(zmq.ROUTER)
            self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self._router.setsockopt(zmq.SNDHWM, 0)
            self._router.setsockopt(zmq.RCVHWM, 0)
            timeout_ms = max(1, round(client_timeout * 1000))
            self._router.setsockopt(zmq.HEARTBEAT_IVL, max(1, min(1000, timeout_ms // 3)))
            self._router.setsockopt(zmq.HEARTBEAT_TIMEOUT, timeout_ms)
            if curve is not None:
                # The ZAP handler must be up before the bind: without one, libzmq
                # admits every client that knows the server's public key.
                self._authenticator = curve.start_authenticator(self._context)
                curve.apply(self._router)
            self._peers = PeerTracker(self._router)
            self._router.bind(_bind_endpoint(address))
            self.bound_address: str = self._router.getsockopt(zmq.LAST_ENDPOINT).decode()
            """The address actually bound (``tcp://0.0.0.0:PORT`` for ``tcp://*:0``)."""
            self.address: str = _connectable(self.bound_address)
            """The bound address, as a client on this host connects to it."""
            self._inbox = Inbox(self._context, name)
            self._pool: ProcessPool | ThreadPool
            if threads:
                self._pool = ThreadPool(workers, self._serializer, self._claim, self._report, name)
            else:
                post = self._inbox.post
                self._pool = ProcessPool(
                    workers,
                    self._serializer,
                    self._claim,
                    self._on_task_done,
                    post,
                    name,
                    self._gave_back,
                )
        except BaseException:
            if self._authenticator is not None:
                self._authenticator.stop()
            self._context.destroy(linger=0)
            raise
        self._io_thread = threading.Thread(target=self._run, name=f"{name}-io", daemon=True)
        self._io_thread.start()

    # ------------------------------------------------------------------ public API

    def __enter__(self) -> SchedulerStub:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "serving"
        return f"<SchedulerStub {self.address} {state}>"

    @property
    def log(self) -> list[LogRecord]:
        """A snapshot of the messages in and out, oldest first (thread-safe); empty
        unless the stub was made with ``log_messages=True``."""
        return self._observed.log_snapshot()

    @property
    def arriving(self) -> Task | None:
        """The Task whose Behaviour a behaviour callable is choosing, while it does (on
        the I/O thread); None at any other time."""
        return self._arriving

    def stats(self) -> dict[str, int]:
        """A snapshot of the counters: tasks_received, results_sent, confirms_sent,
        protocol_errors, unroutable, heartbeats_answered, heartbeats_ignored,
        cancels_received, disconnects_received, disconnects_sent, results_discarded
        (of cancelled, ignored or forgotten tasks), results_dropped (``drop_result``),
        internal_errors, clients_dropped (gone clients whose work was dropped),
        workers_killed (worker processes killed to stop a task), clients (currently
        known), connections (accepted), clients_gone (connections that closed),
        handshakes_refused (a key not listed, a wrong server key) and handshakes_failed
        (ended without detail: the client closed it, or used no keys with a keyed stub)."""
        stats = self._observed.stats_snapshot()
        stats["clients"] = len(self._clients)
        stats["connections"] = self._peers.connections
        stats["handshakes_refused"] = self._peers.handshakes_refused
        stats["handshakes_failed"] = self._peers.handshakes_failed
        return stats

    def wait_for_worker(self, timeout: float) -> bool:
        """Wait until a worker can take a task (processes start in the background);
        False if none is up within ``timeout`` seconds."""
        return self._pool.worker_up.wait(timeout)

    @property
    def answer_heartbeats(self) -> bool:
        """Whether heartbeats are answered now.

        Starts as the single Behaviour's ``answer_heartbeats`` (True for a callable).
        With a callable behaviour, every arriving Task sets it from its Behaviour. Set
        it to make the stub go silent or speak again (a callable's next Task overrides).
        """
        return self._answer_heartbeats

    @answer_heartbeats.setter
    def answer_heartbeats(self, value: bool) -> None:
        # A plain attribute the I/O thread reads per heartbeat: one atomic store.
        self._answer_heartbeats = bool(value)

    def disconnect_all(self, timeout: float = 5.0) -> int:
        """Simulate the scheduler going away: send ``Disconnect`` to every client
        connected or heard from, forget all tasks (results of running ones are
        discarded), keep serving.

        Returns how many clients were sent a Disconnect, once that is done. Raises
        ``RuntimeError`` if the stub is stopped, ``TimeoutError`` if the I/O thread did
        not get to it within ``timeout``.
        """
        return self._on_io_thread(self._disconnect_all_now, "disconnect_all", timeout)

    def drop_client(self, identity: bytes, why: str = "dropped", timeout: float = 5.0) -> bool:
        """Treat the client ``identity`` as gone: drop its queued tasks and stop its
        running ones, without a word to it (``_drop_client`` on the I/O thread).

        Returns whether the client was known. Raises ``RuntimeError`` if the stub is
        stopped, ``TimeoutError`` if the I/O thread did not get to it within ``timeout``.
        """
        return self._on_io_thread(partial(self._drop_client, identity, why), "drop_client", timeout)

    def _on_io_thread(self, action: Callable[[], Any], what: str, timeout: float) -> Any:
        """Run ``action`` on the I/O thread and return what it returned."""
        done = threading.Event()
        answer: list[Any] = []

        def run() -> None:
            answer.append(action())
            done.set()

        if self._stopped or not self._inbox.post(run):
            raise RuntimeError("the scheduler stub is stopped")
        if not done.wait(timeout):
            raise TimeoutError(f"{what} did not complete within {timeout} s")
        return answer[0]

    def stop(self, timeout: float = 5.0, *, notify: bool = True) -> None:
        """Go away: tell every client ``Disconnect`` (unless ``notify=False``, which
        goes silently, as a crashed scheduler would), stop serving, close the socket,
        stop the workers.

        Idempotent. Waits at most about ``timeout`` seconds. Worker processes are killed,
        whatever they run; a worker thread still inside a task that does not return by
        then is left to finish on its own (a daemon thread whose result goes nowhere).
        """
        with self._lifecycle_lock:
            if self._stopped:
                return
            self._stopped = True
        deadline = time.monotonic() + timeout
        self._inbox.post(partial(self._request_exit, notify))
        self._io_thread.join(max(0.0, deadline - time.monotonic()))
        busy = self._pool.stop(deadline)
        if busy:
            logger.warning("scheduler stub stopped with workers still in a task: %s", busy)
        if self._io_thread.is_alive():  # should not happen: its handlers never block
            logger.error("scheduler stub: I/O thread did not exit; leaving its context open")
            return
        self._inbox.close()
        if self._authenticator is not None:
            self._authenticator.stop()
        # Every socket is closed now (the router with a short linger, the others with
        # none), so term() normally returns at once. But libzmq 4.3.5 can leave it
        # blocked forever when the router is closed while a peer's connection is being
        # torn down just after a message was sent to it (stop()'s Disconnect to a client
        # that is leaving). It runs on a helper thread so stop() keeps to its timeout.
        terminator = threading.Thread(
            target=self._context.term, name=f"{self._io_thread.name[:-3]}-term", daemon=True
        )
        terminator.start()
        terminator.join(max(_TERM_GRACE, deadline - time.monotonic()))
        if terminator.is_alive():
            logger.error(
                "scheduler stub: its ZeroMQ context did not terminate within %s s "
                "(every socket is closed); leaving it to libzmq",
                timeout,
            )

    # ------------------------------------------------------------------ I/O thread

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._inbox.reader, zmq.POLLIN)
        poller.register(self._peers.monitor, zmq.POLLIN)
        router, reader, pool = self._router, self._inbox.reader, self._pool
        monitor = self._peers.monitor
        self._guarded(pool.attach, poller)
        turns = 0  # loop turns since answers started to wait in _outgoing
        since = 0.0  # when they were first seen waiting
        try:
            while self._running:
                if self._outgoing:
                    if turns <= 1:
                        since = time.monotonic()
                    elif turns >= _TURNS_PER_FLUSH or time.monotonic() - since >= _FLUSH_AFTER:
                        self._guarded(self._flush_outgoing)
                        turns = 0
                else:
                    turns = 0
                # With answers waiting, only a look: whatever is ready already is
                # handled first and its answers go out with them, in one frame per
                # client; nothing ready, they go out at once.
                events = poller.poll(0 if self._outgoing else self._poll_timeout_ms())
                if not events:
                    self._fire_due_timers()
                    if self._outgoing:
                        self._guarded(self._flush_outgoing)
                    turns = 0
                    continue
                turns += 1
                for item, flags in events:
                    if item is router:
                        self._drain_router()
                    elif item is reader:
                        for action in self._inbox.drain():
                            self._guarded(action)
                    elif item is monitor:
                        self._clients_gone(self._peers.drain())
                    else:  # a worker process's connection
                        if flags & _POLLOUT:
                            self._guarded(pool.on_writable, item)
                        if flags & _POLLIN_OR_ERR:
                            self._guarded(pool.on_readable, item)
                    if not self._running:
                        break
                self._fire_due_timers()
        except Exception:  # only a broken poller gets here; the handlers are guarded
            logger.exception("scheduler stub: I/O thread failed")
        finally:
            self._peers.close()
            self._router.close(linger=_CLOSE_LINGER_MS)
            self._inbox.reader.close(linger=0)

    def _request_exit(self, notify: bool) -> None:
        """Leave the loop, forgetting every task so the workers skip queued ones; tell
        every client ``Disconnect`` first if ``notify``."""
        self._running = False
        clients = list(self._clients.values())
        self._clients.clear()
        self._forget(*clients)
        for book in clients:
            if notify:  # a client that is gone already is expected here: no warning
                self._send(book.identity, Disconnect(), quiet=True)
        self._timers.clear()

    def _poll_timeout_ms(self) -> int | None:
        if not self._timers:
            return None
        wait_ms = math.ceil((self._timers[0][0] - time.monotonic()) * 1000)
        return min(max(0, wait_ms), _MAX_POLL_MS)

    def _guarded(self, handler: Callable[..., None], *args: Any) -> None:
        """Run a handler; whatever it raises is logged and counted, never fatal."""
        try:
            handler(*args)
        except Exception:
            logger.exception("scheduler stub: internal error in %r", handler)
            self._count("internal_errors")

    def _drain_router(self) -> None:
        # Tasks that become runnable while the batch is read start only after it, once
        # their clients are known to be still connected (PeerTracker.closed).
        self._arrived = []
        try:
            self._read_router()
        finally:
            arrived, self._arrived = self._arrived, None
            if arrived:
                self._guarded(self._start_arrived, arrived)

    def _start_arrived(self, arrived: list[TaskRecord]) -> None:
        gone = self._peers.closed({record.client for record in arrived})
        if gone:
            self._clients_gone(gone)
        # Else its client is gone, or it was cancelled. All at once: they go to the
        # workers in batches.
        self._pool.submit_all([r for r in arrived if r.state is _QUEUED])

    def _read_router(self) -> None:
        router, peers = self._router, self._peers
        for _ in range(_ROUTER_BATCH):
            try:
                # The routing id as a Frame: it knows the descriptor it arrived on.
                id_frame = router.recv(_NOBLOCK, copy=False)
            except zmq.Again:
                return
            frames = [id_frame.bytes]
            buffers: list[zmq.Frame] = []
            if id_frame.more:
                frames.append(router.recv(_NOBLOCK))
                if router.getsockopt(_RCVMORE):  # a Task's out-of-band buffers: no copy
                    buffers = router.recv_multipart(_NOBLOCK, copy=False)
            identity = frames[0]
            if not peers.knows(identity):
                gone, admitted = peers.admit(identity, id_frame)
                if gone:
                    self._clients_gone(gone)
                if not admitted:  # its connection closed: nothing it sent runs
                    if peers.tell_once(identity):
                        self._send(identity, Disconnect())
                    continue
                logger.info(
                    "scheduler stub: client %s connected from %s",
                    identity.hex(),
                    id_frame.get("Peer-Address"),
                )
                if len(frames) == 2 and not frames[1] and not buffers:
                    continue  # the probe that opens a client's connection (PROBE_ROUTER)
            self._guarded(self._on_frames, frames, buffers)

    def _clients_gone(self, identities: list[bytes]) -> None:
        """Their connections closed: drop their work as a ``Disconnect`` would."""
        for identity in identities:
            self._peers_warned.discard(identity)
            self._count("clients_gone")
            logger.info("scheduler stub: client %s disconnected", identity.hex())
            self._guarded(self._drop_client, identity, "its connection closed")

    def _on_frames(self, frames: list[bytes], buffers: list[zmq.Frame]) -> None:
        """One message (``frames``: the routing id and the message's frame), with the
        out-of-band buffers that came after it, which only a Task may have."""
        identity = frames[0]
        if len(frames) != 2:
            self._protocol_error(
                identity, f"expected 1 message frame, got a multipart of {len(frames) - 1}"
            )
            return
        try:
            message = decode(frames[1])
        except ProtocolError as exc:
            self._protocol_error(identity, str(exc))
            return
        if buffers:
            self._on_buffers(identity, message, buffers)
            return
        if type(message) is Batch:  # several messages in one frame: each on its own
            if self._behaviour_fn is None and not self._log_messages:
                self._on_batch(identity, message.frames)
                return
            for item, size in unbatch(message):
                if isinstance(item, ProtocolError):
                    self._protocol_error(identity, str(item))
                else:
                    self._guarded(self._on_message, identity, item, size)
            return
        self._on_message(identity, message, len(frames[1]))

    def _on_buffers(self, identity: bytes, message: Message, buffers: list[zmq.Frame]) -> None:
        """A message followed by out-of-band buffers: a Task's (docs/protocol.md)."""
        if type(message) is not Task:
            self._protocol_error(
                identity,
                f"{len(buffers)} frames after a {type(message).__name__}: only a Task "
                "carries out-of-band buffers",
            )
            return
        if len(buffers) > MAX_BUFFERS:
            self._protocol_error(
                identity, f"a Task with {len(buffers)} out-of-band buffers (at most {MAX_BUFFERS})"
            )
            return
        for index, buffer in enumerate(buffers):
            if len(buffer) > MAX_FRAME_BYTES:
                self._protocol_error(
                    identity,
                    f"out-of-band buffer {index} of task {message.task_id.hex()}: "
                    f"{len(buffer)} bytes, over the {MAX_FRAME_BYTES}-byte frame limit",
                )
                return
        self._observed.note("in", identity, message, sum(len(b) for b in buffers))
        self._on_task(identity, message, buffers)

    def _on_batch(self, identity: bytes, frames: tuple[bytes, ...]) -> None:
        """The messages of a Batch, in order, as ``unbatch`` and ``_on_message`` would
        take them, with a short way for the plain Tasks (no group, no dependencies)
        that make up most batches: their records are made straight from the decoded
        arrays, without a ``Task``. Only with one Behaviour for every task and the log
        off (else a Task is needed: ``arriving``, the log)."""
        behaviour = self._behaviour
        assert behaviour is not None
        received, start, count = 0, 0, len(frames)
        apply = self._apply  # READY raises no further events: no need for _fire
        try:
            while start < count:
                position = start
                try:
                    book = self._book(identity)
                    live, settled = book.live, book.settled
                    for position in range(start, count):
                        items = plain_task(frames[position])
                        if items is None:  # anything else: the long way
                            self._on_batch_item(identity, position, frames[position])
                            book = self._book(identity)  # a Disconnect drops it
                            live, settled = book.live, book.settled
                            continue
                        task_id = items[2]
                        received += 1
                        if task_id in live or task_id in settled:
                            self._protocol_error(
                                identity, f"task id {task_id.hex()} is already in use"
                            )
                            continue
                        record = TaskRecord(
                            identity, task_id, items[3], items[4], None, behaviour, self._arrivals
                        )
                        self._arrivals += 1
                        live[task_id] = record
                        if book.waiting_for_unknown:  # dependents that came first
                            waiting = book.waiting_for_unknown.pop(task_id, None)
                            if waiting:
                                record.dependents = waiting
                        apply(record, _READY)
                    start = count
                except Exception:
                    logger.exception("scheduler stub: internal error on a message of a Batch")
                    self._count("internal_errors")
                    start = position + 1
        finally:
            if received:
                self._observed.count("tasks_received", received)

    def _on_batch_item(self, identity: bytes, index: int, frame: bytes) -> None:
        """One message of a Batch that is not a plain Task."""
        message = decode_batch_item(index, frame)
        if type(message) is ProtocolError:
            self._protocol_error(identity, str(message))
            return
        self._guarded(self._on_message, identity, message, len(frame))

    def _on_message(self, identity: bytes, message: Message, size: int) -> None:
        self._observed.note("in", identity, message, size)
        kind = type(message)
        if kind is Task:
            self._on_task(identity, message)
        elif kind is TaskCancel:
            self._on_cancel(identity, message)
        elif kind is Heartbeat:
            self._on_heartbeat(identity, message)
        elif kind is Disconnect:
            self._on_disconnect(identity)
        elif kind is StatusRequest:
            self._send(identity, self._status(message.seq))
        else:
            self._protocol_error(identity, f"a scheduler does not accept {kind.__name__}")

    def _on_heartbeat(self, identity: bytes, heartbeat: Heartbeat) -> None:
        self._book(identity)
        if self._answer_heartbeats:
            self._send(identity, HeartbeatEcho(heartbeat.seq))
        else:
            self._count("heartbeats_ignored")

    def _status(self, seq: int) -> Status:
        """The counters ``futurefsm status`` shows (no task book for the asker)."""
        states = [r.state for book in self._clients.values() for r in book.live.values()]
        waiting = (TaskState.WAITING, TaskState.QUEUED)
        stats = self._observed.stats_snapshot()
        return Status(
            seq,
            clients=len(self._clients),
            queued=sum(state in waiting for state in states),
            running=sum(state in (TaskState.RUNNING, TaskState.DELAYED) for state in states),
            done=stats["results_sent"],
            cancels=stats["cancels_received"],
            protocol_errors=stats["protocol_errors"],
        )

    def _on_disconnect(self, identity: bytes) -> None:
        self._count("disconnects_received")
        self._drop_client(identity, "it sent Disconnect")

    def _drop_client(self, identity: bytes, why: str) -> bool:
        """The client ``identity`` is gone (``why`` says how we know): drop its queued
        tasks and stop its running ones, without a word to it. I/O thread only; called
        on ``Disconnect`` and by the transport when it notices a peer is gone. Returns
        whether the client was known (an unknown one is a no-op)."""
        book = self._clients.pop(identity, None)
        if book is None:
            return False
        logger.info(
            "scheduler stub: client %r is gone (%s); dropping its %d tasks",
            identity,
            why,
            len(book.live),
        )
        self._count("clients_dropped")
        self._forget(book)
        return True

    def _disconnect_all_now(self) -> int:
        clients = list(self._clients.values())
        self._clients.clear()
        self._forget(*clients)
        # Every connected client, also one that has sent nothing but its probe yet.
        identities = {book.identity for book in clients} | self._peers.connected()
        for identity in identities:
            self._send(identity, Disconnect())
        return len(identities)

    # -- helpers

    def _book(self, identity: bytes) -> ClientBook:
        book = self._clients.get(identity)
        if book is None:
            book = self._clients[identity] = ClientBook(identity)
        return book

    def _behaviour_for(self, index: int) -> Behaviour:
        if self._behaviour is not None:
            return self._behaviour
        assert self._behaviour_fn is not None
        try:
            behaviour = self._behaviour_fn(index)
            if not isinstance(behaviour, Behaviour):
                raise TypeError(f"expected a Behaviour, got {behaviour!r}")
        except Exception:
            logger.exception("scheduler stub: behaviour(%d) failed; using no faults", index)
            self._count("internal_errors")
            return DEFAULT_BEHAVIOUR
        return behaviour

    def _count(self, stat: str) -> None:
        self._observed.count(stat)

    def _protocol_error(self, identity: bytes, what: str) -> None:
        self._count("protocol_errors")
        # Logged once per client connection (a fuzzing client must not flood the log);
        # every one is counted in stats()["protocol_errors"].
        if identity in self._peers_warned or len(self._peers_warned) >= 10_000:
            logger.debug("scheduler stub: protocol error from client %r: %s", identity, what)
            return
        self._peers_warned.add(identity)
        logger.warning(
            "scheduler stub: protocol error from client %r: %s (further ones from this "
            "client are counted, logged at debug level)",
            identity,
            what,
        )

    def _warn(self, message: str, *args: Any) -> None:
        if self._loud_warnings > 0:
            self._loud_warnings -= 1
            if self._loud_warnings == 0:
                message += " (further such messages are logged at debug level)"
            logger.warning(message, *args)
        else:
            logger.debug(message, *args)


def _plain(behaviour: Behaviour) -> bool:
    """True if a task of ``behaviour`` sends its result once, as soon as it has it."""
    return (
        behaviour.result_delay <= 0 and not behaviour.drop_result and not behaviour.duplicate_result
    )
