"""``SchedulerStub``: a real ZeroMQ scheduler that runs tasks on worker processes
(or threads) (docs/scheduler.md).

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

import heapq
import itertools
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import msgpack
import zmq

from ..protocol import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Batch,
    ConfirmKind,
    Disconnect,
    Heartbeat,
    HeartbeatEcho,
    Message,
    ProtocolError,
    ResultStatus,
    Status,
    StatusRequest,
    Task,
    TaskCancel,
    TaskCancelConfirm,
    TaskResult,
    decode,
    decode_batch_item,
    encode,
    plain_task,
    unbatch,
)
from ..serializer import DEFAULT_SERIALIZER, Serializer
from .behaviour import DEFAULT_BEHAVIOUR, Behaviour, BehaviourSource, OnCancel
from .peers import PeerTracker
from .records import (
    DEPENDENCY_CANCELLED,
    AfterFinish,
    ClientBook,
    TaskRecord,
    TaskState,
)
from .security import ClientKeys, CurveServer, SecretKey, check_bind
from .workers import STATUSES, Inbox, ProcessPool, ThreadPool

__all__ = ["LogRecord", "SchedulerStub"]

logger = logging.getLogger("futurefsm.scheduler_stub")

_LOUD_WARNINGS = 10
"""Protocol errors and unroutable messages are logged at warning level this many
times, then at debug level (a fuzzing client must not flood the log)."""

_ROUTER_BATCH = 1000
"""Messages read from the ROUTER in a row before the inbox gets a look."""

# Enum members as module constants: a member read from its class costs a lookup.
_QUEUED, _DONE, _CANCELLED = TaskState.QUEUED, TaskState.DONE, TaskState.CANCELLED
_SEND_RESULT = AfterFinish.SEND_RESULT

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
_NOBLOCK = int(zmq.NOBLOCK)  # plain ints: pyzmq's flag enums cost time per call
_NOBLOCK_SNDMORE = int(zmq.NOBLOCK | zmq.SNDMORE)

_STAT_NAMES = (
    "tasks_received",
    "results_sent",
    "confirms_sent",
    "protocol_errors",
    "unroutable",
    "heartbeats_answered",
    "heartbeats_ignored",
    "cancels_received",
    "disconnects_received",
    "disconnects_sent",
    "results_discarded",
    "results_dropped",
    "internal_errors",
    "clients_dropped",
    "workers_killed",
    "clients_gone",
)

_LOG_RECORD_BYTES = 200
"""What one log record costs, roughly, beside its ids (for the ``log_bytes`` bound)."""


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One message the stub received ("in") or handed to its socket ("out")."""

    direction: Literal["in", "out"]
    client: bytes
    """The client's ROUTER identity."""
    message: Message
    """The message without its payload bytes: a Task's ``function`` and ``args`` and a
    TaskResult's ``payload`` are ``b""``."""
    size: int
    """The length of its frame, in bytes."""
    time: float
    """``time.monotonic()`` when it was received or sent."""

    def cost(self) -> int:
        """Roughly the bytes this record keeps alive."""
        message = self.message
        ids = 16 * len(getattr(message, "depends_on", ()))
        return _LOG_RECORD_BYTES + len(self.client) + ids


def _without_payload(message: Message) -> Message:
    """``message`` with its payload bytes emptied, for the log."""
    kind = type(message)
    if kind is Task:
        assert isinstance(message, Task)
        return Task(message.task_id, b"", b"", message.group_id, message.depends_on)
    if kind is TaskResult:
        assert isinstance(message, TaskResult)
        return TaskResult(message.task_id, message.status, b"")
    return message


def _bind_endpoint(address: str) -> str:
    """The endpoint to bind: a TCP port 0 means any free port (``*`` in ZeroMQ)."""
    match = re.fullmatch(r"(tcp://.+):0", address)
    return f"{match.group(1)}:*" if match else address


def _connectable(endpoint: str) -> str:
    """A bound endpoint as a peer on this host can connect to it (no wildcard host)."""
    endpoint = re.sub(r"^tcp://(0\.0\.0\.0|\*):", "tcp://127.0.0.1:", endpoint)
    return re.sub(r"^tcp://\[::\]:", "tcp://[::1]:", endpoint)


class SchedulerStub:
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
        duplicate): their records take the short way in ``_on_task_done``."""

        # Owned by the I/O thread once it runs.
        self._clients: dict[bytes, ClientBook] = {}
        self._arrivals = 0
        self._timers: list[tuple[float, int, TaskRecord]] = []
        self._timer_seq = itertools.count()
        self._running = True
        self._loud_warnings = _LOUD_WARNINGS
        self._arriving: Task | None = None
        self._peers_warned: set[bytes] = set()
        self._arrived: list[TaskRecord] | None = None
        self._outgoing: dict[bytes, _Outbox] = {}
        """Results and confirms per client, sent together once nothing else is ready
        (or after ``_TURNS_PER_FLUSH`` turns of the loop)."""

        # Shared: the claim lock (see records.py); log and stats under the records lock.
        self._claim_lock = threading.Lock()
        self._records_lock = threading.Lock()
        self._log_messages = bool(log_messages)
        self._log: deque[LogRecord] = deque()
        self._log_limit, self._log_bytes, self._log_cost = log_limit, log_bytes, 0
        self._stats = dict.fromkeys(_STAT_NAMES, 0)
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
                    workers, self._serializer, self._claim, self._on_task_done, post, name
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
        with self._records_lock:
            return list(self._log)

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
        with self._records_lock:
            stats = dict(self._stats)
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
        for book in clients:
            self._forget(book)
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
            if id_frame.more:
                frames += router.recv_multipart(_NOBLOCK)
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
                if len(frames) == 2 and not frames[1]:
                    continue  # the probe that opens a client's connection (PROBE_ROUTER)
            self._guarded(self._on_frames, frames)

    def _clients_gone(self, identities: list[bytes]) -> None:
        """Their connections closed: drop their work as a ``Disconnect`` would."""
        for identity in identities:
            self._peers_warned.discard(identity)
            self._count("clients_gone")
            logger.info("scheduler stub: client %s disconnected", identity.hex())
            self._guarded(self._drop_client, identity, "its connection closed")

    def _on_frames(self, frames: list[bytes]) -> None:
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

    def _on_batch(self, identity: bytes, frames: tuple[bytes, ...]) -> None:
        """The messages of a Batch, in order, as ``unbatch`` and ``_on_message`` would
        take them, with a short way for the plain Tasks (no group, no dependencies)
        that make up most batches: their records are made straight from the decoded
        arrays, without a ``Task``. Only with one Behaviour for every task and the log
        off (else a Task is needed: ``arriving``, the log)."""
        behaviour = self._behaviour
        assert behaviour is not None
        received, start, count = 0, 0, len(frames)
        arrived = self._arrived  # reading the ROUTER: tasks start after the batch
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
                        record.state = _QUEUED  # _enqueue, inline
                        if arrived is None:
                            self._pool.submit(record)
                        else:
                            arrived.append(record)
                    start = count
                except Exception:
                    logger.exception("scheduler stub: internal error on a message of a Batch")
                    self._count("internal_errors")
                    start = position + 1
        finally:
            if received:
                with self._records_lock:
                    self._stats["tasks_received"] += received

    def _on_batch_item(self, identity: bytes, index: int, frame: bytes) -> None:
        """One message of a Batch that is not a plain Task."""
        message = decode_batch_item(index, frame)
        if type(message) is ProtocolError:
            self._protocol_error(identity, str(message))
            return
        self._guarded(self._on_message, identity, message, len(frame))

    def _on_message(self, identity: bytes, message: Message, size: int) -> None:
        self._note("in", identity, message, size)
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

    # -- inbound messages

    def _on_task(self, identity: bytes, task: Task) -> None:
        index = self._arrivals
        self._arrivals += 1
        self._arriving = task
        try:
            behaviour = self._behaviour_for(index)
        finally:
            self._arriving = None
        if self._behaviour_fn is not None:
            self._answer_heartbeats = behaviour.answer_heartbeats
        book = self._book(identity)
        if book.knows(task.task_id):
            self._protocol_error(identity, f"task id {task.task_id.hex()} is already in use")
            return
        record = TaskRecord.of(identity, task, behaviour, index)
        blocked_by = book.register(record, task.depends_on)
        if blocked_by is DEPENDENCY_CANCELLED:
            self._cancel_record(record, confirms=1)
        elif blocked_by is not None:
            failed = TaskResult(record.task_id, blocked_by.status, blocked_by.payload)
            self._finish(record, failed.status, encode(failed))
        elif record.pending_deps is None:
            self._enqueue(record)

    def _on_cancel(self, identity: bytes, cancel: TaskCancel) -> None:
        self._count("cancels_received")
        if logger.isEnabledFor(logging.INFO):  # `futurefsm scheduler -v`
            force = " (force)" if cancel.force else ""
            logger.info("cancel%s of %s from %s", force, cancel.task_id.hex(), identity.hex())
        book = self._book(identity)
        record = book.live.get(cancel.task_id)
        if record is not None:
            self._cancel_held(record, cancel.force)
            return
        members = book.group_members(cancel.task_id)
        if members is None:
            self._send_confirm(identity, cancel.task_id, ConfirmKind.NOT_FOUND)
            return
        # A group cancel: each held member is cancelled as if forced, and confirmed on
        # its own id. Members that finished get nothing; cancelling one member may have
        # cancelled its dependents already, hence the state check.
        for member in members:
            if member.state not in (TaskState.DONE, TaskState.CANCELLED):
                self._cancel_held(member, force=True)

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
        with self._records_lock:
            stats = dict(self._stats)
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

    # -- cancellation

    def _cancel_held(self, record: TaskRecord, force: bool) -> None:
        """Answer a TaskCancel for a held task, as its Behaviour's ``on_cancel`` says."""
        mode = record.behaviour.on_cancel
        if mode is OnCancel.CONFIRM or mode is OnCancel.DUPLICATE:
            times = 2 if mode is OnCancel.DUPLICATE else 1
            if self._unqueue(record):
                self._cancel_record(record, confirms=times)
            elif force:
                confirm = partial(
                    self._send_confirm, record.client, record.task_id, ConfirmKind.CANCELED, times
                )
                if self._stop_running(record, confirm):
                    self._cancel_record(record, confirms=0)  # confirmed once it is gone
                else:  # a thread, or a result being delayed: the result is discarded
                    self._cancel_record(record, confirms=times)
            else:
                self._send_confirm(record.client, record.task_id, ConfirmKind.CANCEL_FAILED, times)
        elif mode is OnCancel.RESULT_THEN_CONFIRM:
            record.after_finish = AfterFinish.SEND_RESULT_THEN_CONFIRM
            record.confirms_after_result += 1
        elif mode is OnCancel.CONFIRM_THEN_RESULT:
            self._send_confirm(record.client, record.task_id, ConfirmKind.CANCELED)
        elif mode is OnCancel.CANCEL_FAILED:
            self._send_confirm(record.client, record.task_id, ConfirmKind.CANCEL_FAILED)
        elif mode is OnCancel.NOT_FOUND:
            self._send_confirm(record.client, record.task_id, ConfirmKind.NOT_FOUND)
        else:  # OnCancel.IGNORE
            record.after_finish = AfterFinish.SUPPRESS_RESULT

    def _unqueue(self, record: TaskRecord) -> bool:
        """Take a task that has not started out of the way; False if it has started."""
        if record.state is TaskState.WAITING:
            return True
        if record.state is TaskState.RUNNING:  # sent to a worker process, maybe not started
            if self._pool.take_back(record):
                record.state = TaskState.CANCELLED
                return True
            return False
        if record.state is TaskState.QUEUED:
            with self._claim_lock:
                if record.state is TaskState.QUEUED:  # else a worker just claimed it
                    record.state = TaskState.CANCELLED
                    return True
        return False

    def _cancel_record(self, record: TaskRecord, confirms: int) -> None:
        """Cancel a held task (its result, if it is running, is discarded) and confirm
        ``canceled``; then its waiting dependents, transitively, each confirmed once
        (they cannot run without it, whatever their own ``on_cancel``)."""
        book = self._clients[record.client]
        pending = [(record, confirms)]
        while pending:
            record, times = pending.pop()
            # A worker may claim a queued task first: then it is running, and it is
            # cancelled as running (its result discarded).
            self._unqueue(record)
            record.state = TaskState.CANCELLED
            book.release(record)
            self._send_confirm(record.client, record.task_id, ConfirmKind.CANCELED, times)
            pending.extend((d, 1) for d in book.settle(record, DEPENDENCY_CANCELLED))

    def _stop_running(self, record: TaskRecord, on_gone: Callable[[], None]) -> bool:
        """Kill the worker process running ``record``; ``on_gone`` runs once it is gone.
        False if it is not running on a process (a thread cannot be stopped)."""
        if record.state is not TaskState.RUNNING or not self._pool.kill(record, on_gone):
            return False
        self._count("workers_killed")
        return True

    def _forget(self, book: ClientBook) -> None:
        """Drop every held task of a client without a word: queued ones never run,
        running ones are stopped (worker processes) or their results discarded."""
        with self._claim_lock:
            running = [
                r
                for r in book.live.values()
                if r.state is TaskState.RUNNING and not self._pool.take_back(r)
            ]
            for record in book.live.values():
                record.state = TaskState.CANCELLED
        for record in running:
            if self._pool.kill(record, _nothing):
                self._count("workers_killed")
        book.live.clear()

    def _disconnect_all_now(self) -> int:
        clients = list(self._clients.values())
        self._clients.clear()
        for book in clients:
            self._forget(book)
        # Every connected client, also one that has sent nothing but its probe yet.
        identities = {book.identity for book in clients} | self._peers.connected()
        for identity in identities:
            self._send(identity, Disconnect())
        return len(identities)

    # -- running and finishing

    def _enqueue(self, record: TaskRecord) -> None:
        record.state = _QUEUED
        if self._arrived is not None:  # reading the ROUTER: start after the batch
            self._arrived.append(record)
        else:
            self._pool.submit(record)

    def _claim(self, record: TaskRecord) -> bool:
        """Called by a worker before it runs ``record``."""
        with self._claim_lock:
            if record.state is not TaskState.QUEUED:
                return False
            record.state = TaskState.RUNNING
            return True

    def _report(self, record: TaskRecord, status: int, frame: bytes | memoryview) -> None:
        """Called by a worker thread with a task's outcome: hand it to the I/O thread."""
        self._inbox.post(partial(self._on_task_done, record, status, frame))

    def _on_task_done(self, record: TaskRecord, status: int, frame: bytes | memoryview) -> None:
        """A worker finished ``record``: ``status`` (a ``STATUS_CODES`` byte) and the
        encoded ``TaskResult``."""
        if record.state is _CANCELLED:
            self._count("results_discarded")
            return
        if (
            record.behaviour is self._plain_behaviour
            and record.dependents is None
            and record.group_id is None
            and record.after_finish is _SEND_RESULT
            and not self._log_messages
        ):  # what most tasks are: _finish and _deliver, the short way
            record.state = _DONE
            identity = record.client
            live = self._clients[identity].live
            if live.get(record.task_id) is record:
                del live[record.task_id]
            box = self._outgoing.get(identity)
            if box is None:
                box = self._outgoing[identity] = _Outbox(False)
            box.frames.append(frame)
            return
        self._finish(record, STATUSES[status], frame)

    def _finish(self, record: TaskRecord, status: ResultStatus, frame: bytes | memoryview) -> None:
        """A held task ended with ``status`` (``frame`` is its encoded result): release
        its dependents (or fail them with the same status and payload, transitively),
        then send or delay the result."""
        book = self._clients[record.client]
        pending = [(record, status, frame)]
        while pending:
            record, status, frame = pending.pop()
            outcome = None
            if record.group_id is not None or record.dependents is not None:  # a graph
                outcome = decode(bytes(frame))
                assert isinstance(outcome, TaskResult)
            for dependent in book.settle(record, outcome):
                assert outcome is not None
                if status is ResultStatus.SUCCESS:
                    last = dependent.dependency_done(record.task_id, outcome.payload)
                    if last and dependent.state is TaskState.WAITING:
                        self._enqueue(dependent)
                else:
                    failed = TaskResult(dependent.task_id, status, outcome.payload)
                    pending.append((dependent, status, encode(failed)))
            record.status, record.frame = status, frame
            delay = record.behaviour.result_delay
            if delay > 0:
                record.state = TaskState.DELAYED
                due = time.monotonic() + delay
                heapq.heappush(self._timers, (due, next(self._timer_seq), record))
            else:
                self._deliver(record)

    def _fire_due_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            record = heapq.heappop(self._timers)[2]
            if record.state is TaskState.DELAYED:
                self._guarded(self._deliver, record)
            else:  # cancelled (or forgotten) during its delay
                self._count("results_discarded")

    def _deliver(self, record: TaskRecord) -> None:
        """Send a finished task's result as its Behaviour and any TaskCancel say."""
        record.state = TaskState.DONE
        book = self._clients[record.client]
        book.release(record)
        frame, status = record.frame, record.status
        record.frame = None
        assert frame is not None and status is not None
        if record.after_finish is AfterFinish.SUPPRESS_RESULT:
            self._count("results_discarded")
            return
        behaviour = record.behaviour
        if behaviour.drop_result:
            self._count("results_dropped")
        else:
            for _ in range(2 if behaviour.duplicate_result else 1):
                self._send_result(record.client, record.task_id, status, frame)
        if record.after_finish is AfterFinish.SEND_RESULT_THEN_CONFIRM:
            confirms = record.confirms_after_result
            self._send_confirm(record.client, record.task_id, ConfirmKind.CANCELED, confirms)

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

    def _send_confirm(
        self, identity: bytes, task_id: bytes, kind: ConfirmKind, times: int = 1
    ) -> None:
        """Queue ``times`` TaskCancelConfirms (``_queue_out``)."""
        confirm = TaskCancelConfirm(task_id, kind)
        if logger.isEnabledFor(logging.INFO):
            logger.info("cancel of %s: %s, to client %s", task_id.hex(), kind.value, identity.hex())
        frame = encode(confirm)
        for _ in range(times):
            self._queue_out(identity, frame, confirm)

    def _send_result(
        self, identity: bytes, task_id: bytes, status: ResultStatus, frame: bytes | memoryview
    ) -> None:
        """Queue an encoded TaskResult (no message object is built unless it is logged)."""
        self._queue_out(identity, frame, (task_id, status))

    def _queue_out(
        self,
        identity: bytes,
        frame: bytes | memoryview,
        what: TaskCancelConfirm | tuple[bytes, ResultStatus],
    ) -> None:
        """Results and confirms wait until nothing else is ready (``_run``) and go out
        together (``_flush_outgoing``: one Batch frame for a client's lot), counted then."""
        box = self._outgoing.get(identity)
        if box is None:
            box = self._outgoing[identity] = _Outbox(self._log_messages)
        if type(what) is TaskCancelConfirm:
            box.confirms.append(len(box.frames))
        box.frames.append(frame)
        if box.logged is not None:
            # Logged now, in the order they were produced; taken back if unsent.
            box.logged.append(self._note("out", identity, what, len(frame)))

    def _send(
        self,
        identity: bytes,
        message: Message,
        *,
        quiet: bool = False,
    ) -> None:
        """Send ``message`` at once, after what waits for the same client, so a client
        gets every message in the order it was sent here (no warning if ``quiet``)."""
        frame = encode(message)
        stat = _OUT_STATS.get(type(message))
        # Logged and counted before the send: a peer that has the reply must find it in
        # the log and the stats already. Taken back if the send fails.
        logged = self._note("out", identity, message, len(frame)) if self._log_messages else None
        if stat is not None:
            with self._records_lock:
                self._stats[stat] += 1
        box = self._outgoing.pop(identity, None)
        if box is not None:
            self._flush_to(identity, box)
        try:
            # Two sends with plain int flags: cheaper than send_multipart, and with
            # ROUTER_MANDATORY an unroutable identity fails on the first, sending nothing.
            self._router.send(identity, _NOBLOCK_SNDMORE)
            self._router.send(frame, _NOBLOCK)
        except zmq.ZMQError as exc:
            with self._records_lock:
                if stat is not None:
                    self._stats[stat] -= 1
                if logged is not None and self._log and self._log[-1] is logged:
                    self._log.pop()
                    self._log_cost -= logged.cost()
            # EHOSTUNREACH: the peer is gone (ROUTER_MANDATORY). EAGAIN cannot happen with
            # no high water mark, but is accounted for the same way if it does.
            self._count("unroutable")
            if quiet:
                return
            self._warn(
                "scheduler stub: could not send %s to client %r: %s",
                type(message).__name__,
                identity,
                exc.strerror,
            )

    def _flush_outgoing(self) -> None:
        """Send the results and confirms that wait, each client's in as few frames as
        it takes (``Batch``es under ``MAX_FRAME_BYTES``), in order."""
        outgoing, self._outgoing = self._outgoing, {}
        for identity, box in outgoing.items():
            self._flush_to(identity, box)

    def _flush_to(self, identity: bytes, box: _Outbox) -> None:
        frames, confirms = box.frames, len(box.confirms)
        # Counted before the send: a peer that has them must find them in the stats.
        with self._records_lock:
            self._stats["results_sent"] += len(frames) - confirms
            if confirms:
                self._stats["confirms_sent"] += confirms
        router = self._router
        start, count = 0, len(frames)
        while start < count:
            end, size = start, _BATCH_OVERHEAD
            while end < count and (
                end == start or size + len(frames[end]) + _BATCH_OVERHEAD <= MAX_FRAME_BYTES
            ):
                size += len(frames[end]) + _BATCH_OVERHEAD
                end += 1
            if end - start == 1:
                frame = frames[start]
            elif end - start == count:
                frame = msgpack.packb((PROTOCOL_VERSION, Batch.TYPE_CODE, frames))
            else:
                frame = msgpack.packb((PROTOCOL_VERSION, Batch.TYPE_CODE, frames[start:end]))
            try:
                router.send(identity, _NOBLOCK_SNDMORE)
                router.send(frame, _NOBLOCK)
            except zmq.ZMQError as exc:
                self._unsent(identity, box, start, exc)
                return
            start = end

    def _unsent(self, identity: bytes, box: _Outbox, start: int, exc: zmq.ZMQError) -> None:
        """``box``'s messages from ``start`` on could not be sent: take back their
        counts and log records."""
        unsent = len(box.frames) - start
        confirms = sum(1 for position in box.confirms if position >= start)
        with self._records_lock:
            self._stats["results_sent"] -= unsent - confirms
            self._stats["confirms_sent"] -= confirms
            for logged in (box.logged or [])[start:]:
                if logged is None:
                    continue
                try:
                    self._log.remove(logged)
                except ValueError:  # already gone from a bounded log
                    continue
                self._log_cost -= logged.cost()
            # EHOSTUNREACH: the peer is gone (ROUTER_MANDATORY).
            self._stats["unroutable"] += unsent
        first = "TaskCancelConfirm" if start in box.confirms else "TaskResult"
        self._warn(
            "scheduler stub: could not send %d messages (the first a %s) to client %r: %s",
            unsent,
            first,
            identity,
            exc.strerror,
        )

    def _note(
        self,
        direction: Literal["in", "out"],
        identity: bytes,
        what: Message | tuple[bytes, ResultStatus],
        size: int,
    ) -> LogRecord | None:
        """Count an inbound Task; log the message if the log is on (and return its
        record). ``what`` is a message, or a result's id and status."""
        if direction == "in" and type(what) is Task:
            with self._records_lock:
                self._stats["tasks_received"] += 1
        if not self._log_messages:
            return None
        if isinstance(what, tuple):
            message: Message = TaskResult(what[0], what[1], b"")
        else:
            message = _without_payload(what)
        record = LogRecord(direction, identity, message, size, time.monotonic())
        cost = record.cost()
        with self._records_lock:
            self._log.append(record)
            self._log_cost += cost
            while len(self._log) > self._log_limit or self._log_cost > self._log_bytes:
                self._log_cost -= self._log.popleft().cost()
        return record

    def _count(self, stat: str) -> None:
        with self._records_lock:
            self._stats[stat] += 1

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


class _Outbox:
    """The results and confirms waiting to go to one client, in order."""

    __slots__ = ("confirms", "frames", "logged")

    def __init__(self, log: bool) -> None:
        self.frames: list[bytes | memoryview] = []
        """Their encoded frames."""
        self.confirms: list[int] = []
        """Where in ``frames`` the TaskCancelConfirms are (the others are results)."""
        self.logged: list[LogRecord | None] | None = [] if log else None
        """With the log on: their log records, as ``frames``."""


_BATCH_OVERHEAD = 16
"""A Batch's envelope, and a bin header per frame (at most 5 bytes): for its size."""


def _plain(behaviour: Behaviour) -> bool:
    """True if a task of ``behaviour`` sends its result once, as soon as it has it."""
    return (
        behaviour.result_delay <= 0 and not behaviour.drop_result and not behaviour.duplicate_result
    )


def _nothing() -> None:
    """A callback with nothing to do."""


_OUT_STATS: dict[type[Any], str] = {
    TaskResult: "results_sent",
    TaskCancelConfirm: "confirms_sent",
    HeartbeatEcho: "heartbeats_answered",
    Disconnect: "disconnects_sent",
}
