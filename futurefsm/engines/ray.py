"""The Ray engine: futurefsm's futures on a Ray cluster, with a cancel Ray never confirms.

Theory of operation
-------------------
Ray's ``ray.cancel(ref, force=..., recursive=True)`` returns ``None``: nothing says
whether the task was dropped, interrupted, killed, or had already finished. The only
answer Ray ever gives is the final state of the task's ``ObjectRef``, as
``ray.wait`` / ``ray.get`` see it. So this engine sends cancels with ``ray.cancel``
and derives every answer from the ref:

==========================================  =========================================
Ray's view of the ref                       delivered
==========================================  =========================================
its value                                   ``deliver_result(value=...)`` (after a
                                            cancel request: the result raced it)
``TaskCancelledError`` (also as the cause   ``deliver_cancel_answer("canceled")``
of a ``RayTaskError``: a task that Ray
dropped, interrupted or killed, or whose
input was cancelled)
``WorkerCrashedError`` after our forced     ``deliver_cancel_answer("canceled")``
cancel (we killed the worker)
``WorkerCrashedError`` otherwise            ``deliver_result(exception=WorkerDiedError)``
``RayTaskError`` (the task raised)          ``deliver_result(exception=<its cause>)``,
                                            with the remote traceback
``NodeDiedError`` and the like              the cluster is probed: gone ->
                                            ``deliver_connection_lost``; there ->
                                            ``WorkerDiedError``
nothing before the client's deadline        (the client's ``TIMED_OUT``)
==========================================  =========================================

Ray never says ``not_found`` or ``cancel_failed``: a cancel of a task whose result
was already fetched is answered ``not_found`` here (the result, delivered before,
won), and a cancel Ray ignores (``force=False`` on a task that catches the interrupt
and returns) ends with the task's value: ``RESULT_RACED``.

- submit: ``prepare`` picks the task's Ray function (one ``ray.remote`` per Python
  function, cached; builtins and other callables through ``_call``, since
  ``ray.remote`` refuses them) and checks that the call pickles; ``send`` calls
  ``client.sending`` and ``.remote()`` under the engine's send lock, so a cancel never
  finds a sent task without its ref. Tasks run with ``max_retries=1`` (the engine's
  option): Ray re-runs once a task whose worker died, since Ray's own forced cancel
  can kill the worker's *next* task; a second death is a ``WorkerDiedError``.
- results: one fetcher thread ``ray.wait`` s on the outstanding refs and fetches
  whatever is ready with one ``ray.get`` per batch; refs submitted during a wait
  join the next one (at most ``WAIT_SLICE`` later). While results stream in, a wait
  watches only the oldest refs (twice the last batch, at least ``WINDOW``) and
  returns once as many as the last batch, and at least a quarter of the outstanding
  refs (at most the window), are ready, or after ``GATHER`` (30 ms), so that one
  wait serves many; the refs beyond the window are looked at every ``SWEEP``
  (``_fetch``). With fewer than 8 outstanding, a result is taken at once.
  Deliveries run on a ``DeliveryThread``, in order: a ``not_found`` answer queued
  after a result is delivered after it. A node's death is told apart from the
  cluster's there, by probing the GCS.
- cancel: ``force=True`` (the client's default) kills the worker process of a
  running task (Ray: ``TaskCancelledError`` some 10-20 ms later); ``force=False``
  raises ``KeyboardInterrupt`` in the task, which a task in a C call (``time.sleep``)
  does not see until the call returns. A pending task is dropped either way. A graph
  member's cancel cancels every member of the graph, forced.
- graphs: each node is one Ray task; a node's dependencies are the ``ObjectRef`` s of
  earlier nodes, passed as top-level arguments (Ray resolves only those) and put back
  in place on the worker (``_graph_call``): values pass member to member, never
  through the client.
- liveness: every ``heartbeat_interval`` the engine opens a TCP connection to the
  cluster's GCS and reads its HTTP/2 greeting (a frozen GCS sends none). Nothing for
  ``connection_timeout``: every live future ends with ``ConnectionLostError`` and, if
  the engine made the connection, ``ray.shutdown()`` (Ray ends a driver whose GCS
  stays unreachable for 60 s).

One Ray connection per process: ``ray.init`` is global. The engine uses the one that
is there (``ray.is_initialized()``; it is left open at close) or makes one (closed
when the last engine using it closes). Private parts of Ray: none.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import signal
import socket
import threading
import time
import types
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import ray
import ray.cloudpickle
from ray.exceptions import (
    NodeDiedError,
    RayError,
    RayTaskError,
    TaskCancelledError,
    WorkerCrashedError,
)

from ..addresses import check_host_port
from ..errors import TaskFailedError, WorkerDiedError
from . import Engine, EngineClient, GraphNode, KeyRef
from .shared import DeliveryThread, NeverRaise, attach_remote_traceback, flatten_nested

__all__ = ["SUPPORTED_RAY", "PreparedRay", "RayEngine"]

LOGGER = logging.getLogger("futurefsm.engines.ray")

SUPPORTED_RAY = ">=2.60.0,<2.61"
"""The Ray releases this engine was checked on (the ``ray`` extra pins the same)."""

WAIT_SLICE = 0.01
"""Longest ``ray.wait`` (seconds): a ref submitted meanwhile joins the next wait."""

GATHER = 0.03
"""Longest hold (seconds) of a streamed result: once a wait found results, the next
returns when ``_gathered`` refs of its window are ready, or after this."""

GATHER_SHARE = 4

WINDOW = 16
"""Fewest refs a streaming wait watches: the oldest ``max(WINDOW, 2 * last batch)``."""

SWEEP = 0.1
"""While results stream, how often (seconds) the refs outside the window are looked
at too (a wait with timeout 0): the longest a result that overtook older tasks is
held, beyond ``GATHER``."""


def _gathered(outstanding: int, last_batch: int) -> int:
    """How many ready refs end a streaming wait on ``outstanding`` refs: as many as
    the last batch, and at least a quarter of them; 1 with fewer than 8 outstanding
    (a lone result, or one of a few, is not held). (A stream's last refs so come in
    one batch, not in ever smaller ones.)"""
    if outstanding < 2 * GATHER_SHARE:
        return 1
    return max(outstanding // GATHER_SHARE, last_batch)


def _window(last_batch: int) -> int:
    """How many of the oldest outstanding refs a streaming wait watches."""
    return max(WINDOW, 2 * last_batch)


_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the task's name in its traceback
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _check_version() -> None:
    from packaging.specifiers import SpecifierSet

    if ray.__version__ not in SpecifierSet(SUPPORTED_RAY):
        LOGGER.warning(
            "futurefsm's Ray engine was checked on ray %s, this is %s: if it fails, "
            "run tests/test_engine_ray.py",
            SUPPORTED_RAY,
            ray.__version__,
        )


_check_version()


# ---------------------------------------------------------------------- worker side


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """On the worker: ``fn(*args, **kwargs)`` for a callable ``ray.remote`` refuses."""
    return fn(*args, **kwargs)


@dataclass(frozen=True, slots=True)
class _Dependency:
    """In a graph task's argument template: the ``index``-th dependency's value."""

    index: int


def _fill(item: Any, values: tuple[Any, ...]) -> Any:
    if isinstance(item, _Dependency):
        return values[item.index]
    if isinstance(item, list):
        return [_fill(element, values) for element in item]
    if isinstance(item, tuple):
        return tuple(_fill(element, values) for element in item)
    if type(item) is dict:
        return {key: _fill(element, values) for key, element in item.items()}
    return item


def _graph_call(fn: Callable[..., Any], template: tuple[Any, ...], *values: Any) -> Any:
    """On the worker: ``fn(*template)`` with each ``_Dependency`` replaced by the value
    of that dependency (Ray resolved the refs, passed at the top level, before)."""
    return fn(*_fill(template, values))


def _dependent_call(fn: Callable[..., Any], template: tuple[Any, ...], refs: list[Any]) -> Any:
    """On the worker: ``fn(*args, **kwargs)`` of the template ``(args, kwargs)`` with
    each ``_Dependency`` replaced by the value of that upstream task.

    The refs come nested in a list, so Ray does not resolve them before the task is
    scheduled: ``ray.cancel`` of a task whose arguments Ray is still resolving aborts
    the driver (Ray 2.60: "Check failed: submitted_task_ref_count > 0" in
    ReferenceCounter). The task waits in ``ray.get`` instead (Ray lends its CPU out
    meanwhile); an upstream's error is raised as it is (its cause), so the dependent
    fails with it, or ends cancelled with a cancelled upstream."""
    try:
        values = tuple(ray.get(refs))
    except RayTaskError as error:
        cause = error.cause
        raise (cause if isinstance(cause, BaseException) else error) from None
    args, kwargs = _fill(template, values)
    return fn(*args, **kwargs)


_remote_call = ray.remote(_call)
_remote_graph_call = ray.remote(_graph_call)
_remote_dependent_call = ray.remote(_dependent_call)


# ---------------------------------------------------------------------- prepared


class PreparedRay(NamedTuple):
    """One call ready for ``.remote()``: the Ray function and its arguments. (A named
    tuple: immutable, and built in a third of a frozen dataclass's time, once a task.)"""

    task_id: bytes
    remote: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    dependencies: tuple[int, ...] = ()
    """For a graph node: the positions (in the graph's list) of the nodes whose refs
    are appended to ``args``."""
    upstream: tuple[Any, ...] = ()
    """For a dependent (``prepare_dependent``): ``(refs,)``, the upstream tasks' refs
    in a list (unresolved by Ray: ``_dependent_call``), appended to ``args``."""


# ---------------------------------------------------------------------- connection


def _split_address(address: str) -> tuple[str, int]:
    if address.startswith("tcp://"):  # the form the other engines take
        address = address[len("tcp://") :]
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not host or not port.isdigit():
        raise ValueError(
            f"Ray address {address!r}: expected host:port, the GCS address that "
            "`ray start --head` prints (a ray:// Ray Client address is not supported)"
        )
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _gcs_answers(host: str, port: int, timeout: float) -> bool:
    """True if the GCS at ``host:port`` accepts a connection and greets an HTTP/2
    client (gRPC's server preface) within ``timeout``: a killed GCS refuses, a frozen
    one says nothing."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as connection:
            connection.settimeout(timeout)
            connection.sendall(_HTTP2_PREFACE)
            return len(connection.recv(9)) > 0
    except OSError:
        return False


def _warn_if_sigint_ignored() -> bool:
    """Warn (and return True) if this process ignores SIGINT: a local Ray it starts
    passes that on to its workers, where Python then installs no
    ``KeyboardInterrupt`` handler, so ``cancel(force=False)`` interrupts nothing (the
    cancel ends ``TIMED_OUT``, the task runs on; a forced cancel still works)."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        return False
    LOGGER.warning(
        "this process ignores SIGINT (a shell's background job?): the local Ray it "
        "starts passes that on to its workers, and cancel(force=False) cannot interrupt "
        "their tasks; run it in the foreground, or reset SIGINT "
        "(signal.signal(signal.SIGINT, signal.default_int_handler)) before the Client"
    )
    return True


class _Connection:
    """The process's Ray connection, shared by every engine: made by the first engine
    that needs it (``ray.init``), shut down when the last one that made it closes."""

    lock = threading.Lock()
    users = 0
    owned = False

    @classmethod
    def acquire(cls, address: str | None, workers: int | None, init: dict[str, Any]) -> str:
        """Connect (or join the connection there is); return the GCS address."""
        with cls.lock:
            if ray.is_initialized():
                there = ray.get_runtime_context().gcs_address
                if address is not None and _split_address(address) != _split_address(there):
                    raise ValueError(
                        f"this process is connected to the Ray cluster at {there}, not "
                        f"{address}: Ray allows one cluster per process (ray.shutdown() first)"
                    )
                if cls.users == 0:
                    cls.owned = False
            else:
                options = dict(init)
                options.setdefault("include_dashboard", False)
                if address is None:
                    # A new local Ray, as ray.init() starts one (ray.init() alone would
                    # join a cluster that `ray start` left running instead).
                    if workers is not None:
                        options["num_cpus"] = workers
                    _warn_if_sigint_ignored()
                    ray.init(address="local", **options)
                else:
                    ray.init(address=address, **options)
                cls.owned = True
            cls.users += 1
            return str(ray.get_runtime_context().gcs_address)

    @classmethod
    def release(cls) -> None:
        """One engine is done with the connection."""
        with cls.lock:
            cls.users = max(0, cls.users - 1)
            if cls.users == 0 and cls.owned and ray.is_initialized():
                cls.owned = False
                ray.shutdown()


# ---------------------------------------------------------------------- the engine


def _ref_outcome(ref: Any) -> tuple[Any, BaseException | None]:
    """What Ray says of a ready ref: (its value, None) or (None, the exception)."""
    try:
        return ray.get(ref, timeout=0), None
    except Exception as error:  # (GetTimeoutError: ready, then not: the cluster is going)
        return None, error


class RayEngine(Engine):
    """Runs futurefsm's futures on a Ray cluster.

    ``Client("host:port", engine="ray")`` connects this process to the cluster whose
    GCS is at ``host:port`` (``ray start --head --port P``), with ``ray.init``;
    ``Client(engine="ray")`` starts a new local Ray as ``ray.init()`` does (``workers``
    CPUs; on 127.0.0.1 only if ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` was set before
    ``ray`` was imported, else on the machine's interfaces) and stops it at close.
    If this process is already connected (``ray.init`` called before), the engine
    uses that connection and leaves it open.

    ``max_retries``: how often Ray re-runs a task whose worker died before the future
    fails with ``WorkerDiedError`` (default 1: a forced cancel in Ray can kill the
    worker's next task; Ray's own default is 3; 0: never run twice). Other keyword
    options go to ``ray.init`` (``runtime_env``, ``namespace``, ...).

    A loopback address needs ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` in the
    environment of ``ray start`` and of this process (before ``ray`` is imported):
    otherwise Ray replaces 127.0.0.1 by the machine's own address.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        workers: int | None = None,
        max_retries: int = 1,
        **init: Any,
    ) -> None:
        if address is not None:
            host, _ = _split_address(address)
            if _is_loopback(host) and os.environ.get(_LOOPBACK_ENV) != "0":
                raise ValueError(
                    f"Ray address {address!r} is on loopback: set {_LOOPBACK_ENV}=0 in the "
                    "environment of `ray start` and of this process (before ray is "
                    "imported), or give the address `ray start` printed; otherwise Ray "
                    "swaps 127.0.0.1 for this machine's interface address"
                )
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries: expected a count >= 0, got {max_retries!r}")
        if "serializer" in init:
            raise ValueError("the Ray engine serializes with Ray's own serializer: no serializer")
        self._wanted = address
        self._workers = workers
        self._init = init
        self.address = address or "local Ray"
        self._client: EngineClient | None = None
        self._guard = NeverRaise(LOGGER, "Ray engine")
        self._delivery = DeliveryThread("futurefsm-ray-delivery", self._deliver, self._guard)
        # _lock guards the engine's records, briefly; never held while delivering,
        # nor across a call into Ray. _send_lock is held across a send, from the
        # client's gate to the ref recorded (a .remote() takes some 100 us), so a
        # cancel finds the ref of every task sent; the fetcher never waits for it.
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._refs: dict[bytes, Any] = {}  # task id -> ObjectRef, until it is ready
        self._incoming: list[tuple[Any, bytes]] = []  # (ref, task id) not yet waited on
        self._wake = threading.Condition(self._lock)
        # task id -> ObjectRef until forget(): what a dependent submitted later names.
        self._upstream_refs: dict[bytes, Any] = {}
        self._forced: dict[bytes, bool] = {}  # task id -> force of the cancel we sent
        self._groups: dict[bytes, list[bytes]] = {}  # group id -> member task ids
        self._group_of: dict[bytes, bytes] = {}
        self._group_left: dict[bytes, int] = {}  # group id -> members not yet forgotten
        self._lost: str | None = None
        self._closed = False
        self._connected = False
        self._prefix = os.urandom(8)
        self._counter = itertools.count()
        self._remotes: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._remotes_lock = threading.Lock()
        self._last_remote: tuple[Any, Any] = (None, None)  # (function, its Ray function)
        self._options = {"max_retries": max_retries}
        self._call = _remote_call.options(**self._options)
        self._graph_call = _remote_graph_call.options(**self._options)
        self._dependent_call = _remote_dependent_call.options(**self._options)
        self._fetcher = threading.Thread(
            target=self._fetch, name="futurefsm-ray-fetch", daemon=True
        )
        self._stop_liveness = threading.Event()
        self._liveness = threading.Thread(
            target=self._watch, name="futurefsm-ray-liveness", daemon=True
        )

    @classmethod
    def from_address(cls, address: str | None, **options: Any) -> RayEngine:
        """The engine for the Ray cluster at ``address`` (``host:port``), or a local Ray."""
        if address is not None:
            host, port = _split_address(address)
            endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            check_host_port(address, endpoint, example="127.0.0.1:6379")
        return cls(address, **options)

    # ------------------------------------------------------------------ lifecycle

    def start(self, client: EngineClient) -> None:
        """Connect (``ray.init``, or the connection there is) and start the threads."""
        self._client = client
        self._guard.count = client.count
        if self._wanted is not None:
            host, port = _split_address(self._wanted)
            deadline = time.monotonic() + client.connection_timeout
            while not _gcs_answers(host, port, max(0.05, deadline - time.monotonic())):
                if time.monotonic() >= deadline:
                    raise ConnectionError(
                        f"no Ray cluster answers at {self._wanted} "
                        f"(within {client.connection_timeout} s)"
                    )
                time.sleep(0.05)
        try:
            self.address = _Connection.acquire(self._wanted, self._workers, self._init)
        except (ValueError, TypeError):
            raise
        except Exception as error:
            raise ConnectionError(
                f"cannot connect to Ray at {self._wanted or 'a new local Ray'}: {error}"
            ) from error
        self._connected = True
        self._gcs = _split_address(self.address)
        self._delivery.start()
        self._fetcher.start()
        self._liveness.start()

    def close(self) -> None:
        """Stop fetching and watching, deliver what was queued, release Ray."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wake.notify()
        self._stop_liveness.set()  # (not joined: a probe in progress ends on its own)
        if self._fetcher.ident is not None and self._fetcher is not threading.current_thread():
            self._fetcher.join()  # (its wait ends within GATHER)
        self._delivery.stop()
        self._release()

    def _release(self) -> None:
        """Let go of the Ray connection, once (close, or the cluster lost)."""
        with self._lock:
            connected, self._connected = self._connected, False
        if connected:
            _Connection.release()

    def on_io_thread(self) -> bool:
        """True on the thread that delivers."""
        return self._delivery.is_current()

    # ------------------------------------------------------------------ submitting

    def _task_id(self) -> bytes:
        return self._prefix + next(self._counter).to_bytes(8, "big")

    def _remote(self, fn: Callable[..., Any]) -> tuple[Any, bool]:
        """The Ray function for ``fn`` and whether ``fn`` must go as an argument."""
        last_fn, last_remote = self._last_remote
        if fn is last_fn:  # (a stream of one function's calls: no weakref made)
            return last_remote, False
        if not isinstance(fn, types.FunctionType):
            return self._call, True
        remote = self._remotes.get(fn)  # (a lookup is safe unlocked; a store is not)
        if remote is None:
            with self._remotes_lock:
                remote = self._remotes.get(fn)
                if remote is None:
                    remote = self._remotes[fn] = ray.remote(**self._options)(fn)
        self._last_remote = (fn, remote)
        return remote, False

    @staticmethod
    def _check_pickles(what: Callable[[], str], value: Any) -> None:
        """``TypeError`` naming ``what()`` if ``value`` does not pickle. Large buffers
        (NumPy arrays...) go out of band, uncopied, as Ray's own serializer sends them."""
        try:
            ray.cloudpickle.dumps(value, protocol=5, buffer_callback=lambda _: None)
        except Exception as error:
            raise TypeError(f"cannot serialize {what()} for Ray: {error}") from error

    def prepare(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> PreparedRay:
        """The call's Ray function and arguments; ``TypeError`` if they do not pickle."""
        if not callable(fn):
            raise TypeError(f"expected a callable, got {fn!r}")
        remote, by_argument = self._remote(fn)
        if not _plain(args, kwargs):
            self._check_pickles(lambda: f"the arguments of {_name(fn)}", (args, kwargs))
        if by_argument:
            self._check_pickles(lambda: _name(fn), fn)
            args = (fn, *args)
        return PreparedRay(self._task_id(), remote, args, kwargs)

    def prepare_graph(self, nodes: Sequence[GraphNode], group_id: bytes) -> list[PreparedRay]:
        """One Ray task per node; dependencies travel as refs of earlier nodes."""
        positions = {node.key: number for number, node in enumerate(nodes)}
        prepared = []
        for node in nodes:
            function, args = flatten_nested(node.function, node.args)
            slots = {key: index for index, key in enumerate(node.dependencies)}
            template = _template(args, slots)
            self._check_pickles(lambda key=node.key: f"graph task {key!r}", (function, template))
            dependencies = tuple(positions[key] for key in node.dependencies)
            prepared.append(
                PreparedRay(
                    self._task_id(), self._graph_call, (function, template), {}, dependencies
                )
            )
        return prepared

    def prepare_dependent(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        upstream: Sequence[bytes],
    ) -> PreparedRay | None:
        """A task taking the upstream tasks' ``ObjectRef`` s, which it gets on the
        worker (``_dependent_call``): it fails with an upstream's error, ends cancelled
        with a cancelled upstream (``TaskCancelledError``), and ``ray.cancel`` of it
        leaves its inputs alone."""
        if not callable(fn):
            raise TypeError(f"expected a callable, got {fn!r}")
        with self._lock:
            refs = [self._upstream_refs.get(task_id) for task_id in upstream]
        if any(ref is None for ref in refs):
            return None  # an upstream's future ended: the client puts its value in
        slots = {task_id: index for index, task_id in enumerate(upstream)}
        template = _template((args, kwargs), slots)
        self._check_pickles(lambda: f"the arguments of {_name(fn)}", (fn, template))
        return PreparedRay(
            self._task_id(), self._dependent_call, (fn, template), {}, upstream=(refs,)
        )

    def send(self, prepared: PreparedRay) -> None:
        """Submit the task to Ray (``.remote()``), once the client says it may go."""
        client = self._client
        assert client is not None
        with self._send_lock:
            if self._lost is not None:
                self._delivery.post(("lost", self._lost, [prepared.task_id]))
                return
            if not client.sending(prepared.task_id):
                return
            try:
                ref = prepared.remote.remote(*prepared.args, *prepared.upstream, **prepared.kwargs)
            except Exception as error:
                self._delivery.post(("error", prepared.task_id, _submit_failed(error)))
                return
            self._track(prepared.task_id, ref)

    def send_graph(self, group_id: bytes, prepared: list[PreparedRay]) -> None:
        """Submit every node, dependencies first, each taking its dependencies' refs."""
        client = self._client
        assert client is not None
        task_ids = [item.task_id for item in prepared]
        with self._send_lock:
            if self._lost is not None:
                self._delivery.post(("lost", self._lost, task_ids))
                return
            if not client.sending_graph(task_ids):
                return
            with self._lock:
                self._groups[group_id] = task_ids
                self._group_left[group_id] = len(task_ids)
                for task_id in task_ids:
                    self._group_of[task_id] = group_id
            refs: list[Any] = []
            for item in prepared:
                inputs = [refs[position] for position in item.dependencies]
                ref = None
                if any(input_ref is None for input_ref in inputs):  # an input Ray refused
                    failed = TaskFailedError("an input of this graph task was refused by Ray")
                    self._delivery.post(("error", item.task_id, failed))
                else:
                    try:
                        ref = item.remote.remote(*item.args, *inputs)
                    except Exception as error:
                        self._delivery.post(("error", item.task_id, _submit_failed(error)))
                refs.append(ref)
                if ref is not None:
                    self._track(item.task_id, ref)

    def _track(self, task_id: bytes, ref: Any) -> None:
        """Record a submitted task's ref and hand it to the fetcher."""
        with self._lock:
            self._refs[task_id] = ref
            self._upstream_refs[task_id] = ref
            self._incoming.append((ref, task_id))
            if len(self._incoming) == 1:
                self._wake.notify()

    # ------------------------------------------------------------------ cancelling

    def send_cancel(self, task_id: bytes, group_id: bytes | None, force: bool = True) -> None:
        """``ray.cancel`` the task (the whole graph, forced, for a member); the answer
        comes from Ray's view of its ref."""
        # _send_lock: a task being sent has its ref once the send is over.
        with self._send_lock, self._lock:
            members = self._groups.get(group_id, [task_id]) if group_id else [task_id]
            if group_id:
                force = True
            refs = []
            for member in members:
                ref = self._refs.get(member)
                if ref is None:
                    if member == task_id:
                        # Its result was fetched (and is queued before this answer).
                        self._delivery.post(("answer", task_id, "not_found"))
                    continue
                if member not in self._forced:
                    self._forced[member] = force
                    refs.append(ref)
        for ref in refs:
            try:
                ray.cancel(ref, force=force, recursive=True)
            except Exception as error:  # a ref Ray no longer knows: its answer still comes
                LOGGER.debug("ray.cancel(%s) failed: %r", ref, error)

    def forget(self, task_id: bytes) -> None:
        """The task's future is terminal: drop its records."""
        with self._lock:
            self._refs.pop(task_id, None)
            self._upstream_refs.pop(task_id, None)
            self._forced.pop(task_id, None)
            group_id = self._group_of.pop(task_id, None)
            if group_id is not None:
                self._group_left[group_id] -= 1
                if not self._group_left[group_id]:  # its last member
                    del self._group_left[group_id], self._groups[group_id]

    # ------------------------------------------------------------------ fetching

    def _fetch(self) -> None:
        """The fetcher thread: wait on the outstanding refs, fetch the ready ones.

        Every wait, every fetch and every batch of deliveries costs the machine the
        same whatever the batch's size (wake-ups of this thread, the delivery thread
        and the waiters, on the cores Ray's workers need), and a wait also costs
        about 0.5 us for every ref it is given, ready or not. So under a stream of
        results the fetcher neither takes them one by one nor looks at every
        outstanding ref each time.

        - Idle (the last wait found nothing): it waits up to ``WAIT_SLICE`` for the
          first ready ref among all of them, then takes whatever else is ready.
        - Streaming (the last wait found some): tasks mostly end in the order they
          were sent, so it waits on a window, the oldest ``_window(last batch)``
          refs, until ``_gathered(len(waiting), last batch)`` of them are ready
          (as many as the last batch and at least a quarter of all outstanding, at
          most the window), or for ``GATHER``. The refs outside the window are
          looked at (timeout 0) every ``SWEEP``: a result that overtook older tasks
          is held at most that long, plus ``GATHER``. A wait that found nothing in
          the window ends the stream: the next, idle, looks at every ref."""
        waiting: list[Any] = []
        owner: dict[Any, bytes] = {}
        last_batch = 0  # ready refs the last wait found: 0 = idle
        sweep_at = 0.0
        while True:
            with self._lock:
                if self._closed or self._lost is not None:
                    return
                if not waiting and not self._incoming:
                    last_batch = 0
                    self._wake.wait()
                    continue
                incoming, self._incoming = self._incoming, []
            waiting += self._take(incoming, owner)
            with self._guard:
                if last_batch:
                    width = _window(last_batch)
                    window, rest = waiting[:width], waiting[width:]
                    wanted = min(len(window), _gathered(len(waiting), last_batch))
                    ready, window = ray.wait(window, num_returns=wanted, timeout=GATHER)
                    if rest and ready and time.monotonic() >= sweep_at:
                        more, rest = ray.wait(rest, num_returns=len(rest), timeout=0)
                        ready += more
                        sweep_at = time.monotonic() + SWEEP
                    waiting = window + rest
                else:
                    ready, waiting = ray.wait(waiting, num_returns=1, timeout=WAIT_SLICE)
                    if ready:  # and whatever else is ready by now, sent meanwhile too
                        with self._lock:
                            incoming, self._incoming = self._incoming, []
                        waiting += self._take(incoming, owner)
                        if waiting:
                            more, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=0)
                            ready += more
                        sweep_at = time.monotonic() + SWEEP
                last_batch = len(ready)
                if ready:
                    self._fetched([(owner.pop(ref), ref) for ref in ready])

    @staticmethod
    def _take(incoming: list[tuple[Any, bytes]], owner: dict[Any, bytes]) -> list[Any]:
        """The refs of ``incoming``, their owners recorded in ``owner``."""
        for ref, task_id in incoming:
            owner[ref] = task_id
        return [ref for ref, _ in incoming]

    def _fetched(self, ready: list[tuple[bytes, Any]]) -> None:
        """Queue the deliveries of ready refs (one ``ray.get`` for the batch when it can)."""
        try:
            values = ray.get([ref for _, ref in ready], timeout=0)
            outcomes: list[tuple[Any, BaseException | None]] = [(v, None) for v in values]
        except Exception:  # one of them failed: each on its own
            outcomes = [_ref_outcome(ref) for _, ref in ready]
        # Posted under the lock that send_cancel reads _refs under: a cancel that
        # finds the ref gone queues its not_found after this result, never before.
        # (The batch goes in one post: one wake-up of the delivery thread, and the
        # lock, which the submitting thread's _track takes too, is held briefly.)
        items: list[tuple[Any, ...]] = []
        with self._lock:
            for (task_id, _), (value, error) in zip(ready, outcomes, strict=True):
                self._refs.pop(task_id, None)
                if error is None:
                    items.append(("value", task_id, value))
                    continue
                try:
                    items.append(_error_item(task_id, error, self._forced.get(task_id)))
                except Exception as failure:  # never leave the future without an answer
                    LOGGER.exception("Ray engine: cannot map %r", error)
                    items.append(("error", task_id, _failed(failure)))
            self._delivery.post_many(items)

    # ------------------------------------------------------------------ delivering

    def _deliver(self, item: tuple[Any, ...]) -> None:
        client = self._client
        assert client is not None
        kind = item[0]
        if kind == "value":
            client.deliver_result(item[1], value=item[2])
        elif kind == "error":
            client.deliver_result(item[1], exception=item[2])
        elif kind == "node":  # a node died: the task's, or the whole cluster?
            if self._lost is not None:
                return  # every live future was (or is being) ended with the connection
            if not _gcs_answers(*self._gcs, timeout=1.0):
                self._connection_lost("the Ray cluster is gone (its node died, its GCS is silent)")
                return
            client.deliver_result(item[1], exception=item[2])
        elif kind == "answer":
            client.deliver_cancel_answer(item[1], item[2])
        elif kind == "lost":
            client.deliver_connection_lost(item[1], item[2])

    # ------------------------------------------------------------------ liveness

    def _watch(self) -> None:
        """The liveness thread: probe the GCS every ``heartbeat_interval``."""
        client = self._client
        assert client is not None
        last_heard = time.monotonic()
        while not self._stop_liveness.wait(client.heartbeat_interval):
            probe = min(client.heartbeat_interval, client.connection_timeout)
            if _gcs_answers(*self._gcs, timeout=probe):
                last_heard = time.monotonic()
            elif time.monotonic() - last_heard >= client.connection_timeout:
                self._connection_lost(
                    f"the Ray cluster at {self.address} did not answer for "
                    f"{client.connection_timeout} s"
                )
                return

    def _connection_lost(self, why: str) -> None:
        """The cluster is gone: end every live future, stop, and let Ray go (a driver
        whose GCS stays away is ended by Ray itself after 60 s)."""
        with self._lock:
            if self._lost is not None or self._closed:
                return
            self._lost = why
            self._wake.notify()
        LOGGER.warning("Ray engine: %s", why)
        self._delivery.post(("lost", why, None))
        self._stop_liveness.set()
        threading.Thread(target=self._let_go, name="futurefsm-ray-let-go", daemon=True).start()

    def _let_go(self) -> None:
        if self._fetcher.ident is not None and self._fetcher is not threading.current_thread():
            self._fetcher.join()
        self._release()


# ---------------------------------------------------------------------- mapping


_PLAIN = frozenset({int, float, str, bytes, bool, type(None)})


def _plain(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """True if every argument is of a type that always pickles: no check needed."""
    for value in args:
        if type(value) not in _PLAIN:
            return False
    for value in kwargs.values():
        if type(value) not in _PLAIN:
            return False
    return True


def _name(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn))


def _template(args: Any, slots: dict[Any, int]) -> Any:
    """``args`` with every ``KeyRef`` replaced by its dependency's ``_Dependency``."""
    if isinstance(args, KeyRef):
        return _Dependency(slots[args.key])
    if isinstance(args, list):
        return [_template(element, slots) for element in args]
    if isinstance(args, tuple):
        return tuple(_template(element, slots) for element in args)
    if type(args) is dict:
        return {key: _template(element, slots) for key, element in args.items()}
    return args


def _submit_failed(error: Exception) -> BaseException:
    if isinstance(error, TypeError):
        return error
    failed = TaskFailedError(f"Ray refused the task: {error!r}")
    failed.__cause__ = error
    return failed


def _is_cancelled(error: BaseException) -> bool:
    if isinstance(error, TaskCancelledError):
        return True
    return isinstance(error, RayTaskError) and isinstance(error.cause, TaskCancelledError)


def _error_item(task_id: bytes, error: BaseException, forced: bool | None) -> tuple[Any, ...]:
    """The delivery for a ref that ended with ``error`` (``forced``: the force of the
    cancel we sent for it, None if none)."""
    if _is_cancelled(error):
        return ("answer", task_id, "canceled")
    if isinstance(error, WorkerCrashedError):
        if forced:  # the worker we had Ray kill
            return ("answer", task_id, "canceled")
        died = WorkerDiedError(f"the Ray worker running the task died: {error}")
        died.__cause__ = error
        return ("error", task_id, died)
    if isinstance(error, NodeDiedError):
        died = WorkerDiedError(f"the Ray node running the task died: {error}")
        died.__cause__ = error
        return ("node", task_id, died)
    if isinstance(error, RayTaskError):
        cause = error.cause
        if isinstance(cause, BaseException) and not isinstance(cause, RayError):
            # The instance ray.get raises is a "RayTaskError(<cause type>)" whose text
            # is the remote traceback (its traceback_str is the plain class's only).
            text = _ANSI.sub("", vars(error).get("traceback_str") or str(error))
            return ("error", task_id, attach_remote_traceback(cause, text))
        return ("error", task_id, _failed(error))
    return ("error", task_id, _failed(error))


def _failed(error: BaseException) -> BaseException:
    failed = TaskFailedError(f"the Ray task failed: {type(error).__name__}: {error}")
    failed.__cause__ = error
    return failed
