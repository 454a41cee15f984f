"""The Dask engine: futurefsm's futures on a ``distributed`` cluster, with confirmed cancel.

Theory of operation
-------------------
The engine rides on a ``distributed.Client`` (its own, or one the user already has)
and talks to the scheduler on that client's ordered stream, but keeps its tasks out
of Dask's ``Future`` bookkeeping:

- ``submit``: ``prepare`` builds and serializes the ``update-graph`` message in the
  user's thread, as ``distributed.Client.submit`` does; the engine's thread (the Dask
  client's event loop) asks ``client.sending(task_id)`` and writes it to the stream.
- inbound: the engine adds its handlers to the client's ``_stream_handlers``.
  ``key-in-memory`` queues the key for a batched ``gather`` (one request in flight at
  a time; when busy, keys arriving meanwhile make the next batch), then
  ``deliver_result``;
  ``task-erred`` becomes ``deliver_result(exception=...)`` with the remote traceback
  attached (``KilledWorker``: ``WorkerDiedError``); Dask's own messages for keys that
  are not the engine's go to Dask's handlers unchanged.
- cancel: Dask's own cancel is not confirmed, so the engine ships a small
  ``SchedulerPlugin`` (``futurefsm.engines.dask_plugin``) when it connects, checks it
  is there, and sends ``futurefsm-cancel`` on the same stream. The plugin answers
  per key, after the scheduler processed the cancel: ``canceled``, ``not_found``,
  ``cancel_failed`` (another client wants it, or ``force=False`` and a worker
  thread runs it), or ``result`` (it was already in memory or erred: the result,
  earlier on the stream, won). A ``result`` answer (or a ``key-in-memory``) for a
  key whose own future asked to cancel (the engine's record: ``_cancelling``)
  delivers that result without fetching it, so the table's ``cancel_requested`` +
  ``recv_result`` cell says ``RESULT_RACED``.
- a terminal future's key is released (``client-releases-keys``) in batches.
- liveness: every ``heartbeat_interval`` the engine pings the plugin on the stream;
  nothing heard for ``connection_timeout``, or the Dask client reconnecting (it then
  cancels its own futures locally; the scheduler has dropped this client's tasks),
  resolves every live future through ``connection_lost``: a ``ConnectionLostError``,
  never a cancel that looks confirmed.

Dask never interrupts a running task: "canceled" means the scheduler released it; a
thread already running it runs to its end and its result is thrown away.

Private parts of ``distributed`` used here (pinned in the ``dask`` extra; checked by
``tests/test_engine_dask.py``, which fails naming the one that moved):
``Client._stream_handlers``, ``Client.scheduler_comm``, ``Client.status``, the
``update-graph`` / ``client-releases-keys`` / ``cancel-keys`` / ``report-key`` stream
messages and the scheduler's ``gather`` RPC; in the plugin,
``Scheduler.stream_handlers`` / ``handlers`` / ``client_comms`` / ``stimulus_cancel``,
``TaskState.who_wants`` / ``processing_on`` and the workers' ``call_stack`` RPC.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cloudpickle
import dask
import distributed
from dask._expr import LLGExpr
from dask._task_spec import Alias, Task, convert_legacy_graph, parse_input
from dask.utils import funcname
from distributed.core import clean_exception
from distributed.protocol import serialize, to_serialize
from distributed.protocol.serialize import Serialized, ToPickle
from distributed.scheduler import KilledWorker

from ..addresses import check_url
from ..errors import DaskPluginError, TaskFailedError, WorkerDiedError
from ..protocol import ProtocolError
from . import Engine, EngineClient, GraphNode, KeyRef
from . import dask_plugin as _plugin
from .shared import (
    NeverRaise,
    WakeQueue,
    attach_remote_traceback,
    connect_within,
    replace_key_refs,
)

__all__ = ["SUPPORTED_DISTRIBUTED", "DaskEngine", "DaskPluginError", "PreparedDask"]

LOGGER = logging.getLogger("futurefsm.engines.dask")

SUPPORTED_DISTRIBUTED = ">=2026.8.0,<2026.9"
"""The ``distributed`` releases whose private attributes this engine was checked on
(the ``dask`` extra pins the same range)."""

_DASK_SCHEMES = ("tcp", "tls", "ws", "wss", "inproc", "ucx")  # distributed.comm's
_SPAN = {"collections": [{"type": "Future"}]}
_FETCH_QUIET = 0.005
"""Seconds without a new result after which a busy engine gathers its batch."""
# The plugin is shipped by value: the scheduler needs only distributed, not futurefsm.
cloudpickle.register_pickle_by_value(_plugin)


def _check_version() -> None:
    from packaging.specifiers import SpecifierSet

    if distributed.__version__ not in SpecifierSet(SUPPORTED_DISTRIBUTED):
        LOGGER.warning(
            "futurefsm's Dask engine was checked on distributed %s, this is %s: if it "
            "fails, run tests/test_engine_dask.py, which names what moved",
            SUPPORTED_DISTRIBUTED,
            distributed.__version__,
        )


_check_version()


@dataclass(frozen=True, slots=True)
class PreparedDask:
    """A task (or a graph, shared by its members) ready to go on the Dask stream."""

    task_id: bytes
    key: str
    message: dict[str, Any]


def _update_graph(dsk: dict[str, Any], keys: list[str], what: str) -> dict[str, Any]:
    """The ``update-graph`` message ``distributed.Client`` sends for ``dsk``,
    serialized now (``TypeError`` naming ``what`` if it cannot be)."""
    try:
        # The keys are unique, so the first one is a unique token (no uuid4 per task:
        # os.urandom costs more than the rest of building the message).
        expr = LLGExpr(dsk, _determ_token=keys[0])
        expr_ser = Serialized(*serialize(to_serialize(expr), on_error="raise"))
    except Exception as error:
        raise TypeError(f"cannot serialize {what} for Dask: {error}") from error
    return {
        "op": "update-graph",
        "expr_ser": expr_ser,
        "keys": set(keys),
        "internal_priority": None if len(keys) > 1 else dict.fromkeys(keys, 0),
        "submitting_task": None,
        "fifo_timeout": 0,
        "actors": None,
        "code": ToPickle(()),
        "annotations": ToPickle(dict(dask.get_annotations())),
        "span_metadata": ToPickle(_SPAN),
    }


def _task_name(fn: Any) -> str:
    if not callable(fn):
        return "constant"
    try:
        return str(funcname(fn))
    except Exception:
        return "task"


def _cancel_keys_message(keys: list[Any]) -> dict[str, Any]:
    """Dask's own ``cancel-keys`` (as ``Client.cancel`` sends it, unforced): every
    field ``Scheduler.stimulus_cancel`` takes, or its handler raises and the
    scheduler stops reading this client's stream."""
    return {"op": "cancel-keys", "keys": keys, "force": False, "reason": None, "msg": None}


def _remote_exception(exception: Any, tb: Any, key: str) -> BaseException:
    """A ``task-erred`` payload as the exception ``result()`` raises (never raises)."""
    try:
        _, exc, tb_object = clean_exception(exception, tb)
    except Exception as error:
        return TaskFailedError(f"task {key} failed, and its error is unreadable: {error!r}")
    if exc is None:
        return TaskFailedError(f"task {key} failed without an exception")
    if isinstance(exc, KilledWorker):
        died = WorkerDiedError(f"the workers running task {key} died: {exc}")
        died.__cause__ = exc
        return died
    return attach_remote_traceback(exc, tb_object)


class DaskEngine(Engine):
    """Runs futurefsm's futures on a Dask cluster, through a ``distributed.Client``.

    ``DaskEngine(dask_client)`` uses a client you already have (it stays yours: the
    engine's ``close()`` does not close it); ``Client(address, engine="dask")`` makes
    one for the scheduler at ``address`` (``tcp://host:8786``) and closes it again.
    ``address=None`` starts a ``distributed.LocalCluster`` (``workers`` workers).

    ``register_plugin``: ship futurefsm's cancel plugin to the scheduler when
    connecting (default); with False it must already be there (``dask scheduler
    --preload futurefsm.engines.dask_plugin``). Without it the engine refuses to
    start (``DaskPluginError``): cancels could not be confirmed.

    ``fetch_interval``: finished values are gathered at once when the engine is idle;
    while results keep coming they share one gather, sent when none came for 5 ms or
    the batch is this many seconds old (one request per result costs the scheduler
    and the workers far more than Dask's own client).

    ``interrupt``: a forced cancel (``cancel()``, ``force=True``) of a task a worker
    thread is running also raises an exception in that thread, so its slot frees
    (a call blocked in C runs on until it returns to Python; docs/engine-dask.md).
    Default False: Dask's own release, the thread runs the task to its end.
    """

    def __init__(
        self,
        dask_client: distributed.Client | None,
        *,
        register_plugin: bool = True,
        fetch_interval: float = 0.1,
        interrupt: bool = False,
        _connect: tuple[str, dict[str, Any]] | None = None,
        _owned: tuple[Any, ...] = (),
    ) -> None:
        if dask_client is None and _connect is not None:
            self.address = _connect[0]  # the client is made by start()
        elif not isinstance(dask_client, distributed.Client):
            raise TypeError(f"DaskEngine: expected a distributed.Client, got {dask_client!r}")
        elif dask_client.asynchronous:
            raise ValueError("DaskEngine: needs a synchronous distributed.Client")
        else:
            self.address = str(dask_client.scheduler.address)
        self._dask: Any = dask_client
        self._connect = _connect
        self._owned = _owned  # what close() closes: our own client (and cluster)
        self._register_plugin = register_plugin
        self._interrupt = interrupt  # force cancels interrupt the running thread (plugin)
        self._client: EngineClient | None = None
        self._guard = NeverRaise(LOGGER, "Dask engine")
        # What this engine sent: the keys of its live tasks, each graph's keys, and
        # the keys whose own future asked to cancel (their result lost the race).
        self._ours: set[str] = set()
        self._groups: dict[bytes, list[str]] = {}
        self._group_of: dict[str, bytes] = {}
        self._cancelling: set[str] = set()
        # Futures as arguments (prepare_dependent), under _close_lock: keys handed to
        # send() and not forgotten, dependents' holds on their upstream keys, the
        # upstream keys whose release waits for their last dependent, and each
        # dependent's upstream keys. Plugin cancels not answered yet: _asked.
        self._known: set[str] = set()
        self._holds: dict[str, int] = {}
        self._deferred: set[str] = set()
        self._upstream_of: dict[str, tuple[str, ...]] = {}
        self._asked: set[str] = set()
        self._key_prefix = uuid.uuid4().hex[:24]
        self._key_counter = itertools.count()
        self._outbox: WakeQueue[tuple[Any, ...] | None] = WakeQueue(self._wake)
        self._releases: collections.deque[str] = collections.deque()
        self._to_fetch: dict[str, None] = {}
        self._fetching = False
        self._fetch_interval = fetch_interval
        self._last_fetch = 0.0
        self._last_arrival = 0.0
        self._closed = False
        self._close_lock = threading.Lock()
        # Set (under _close_lock) when closing took its last look at the keys held:
        # a key forgotten before that is released by closing, one after it was
        # already released with the rest.
        self._unhooked = False
        self._loop_thread: int | None = None
        self._original_handlers: dict[str, Callable[..., Any]] = {}
        self._installed: dict[str, Callable[..., Any]] = {}
        self._comm: Any = None
        self._last_heard = time.monotonic()
        self._plugin_ok = False
        self._plugin_error: str | None = None
        self._held_cancels: list[tuple[bool, str]] = []
        self._watchdog: Any = None

    @classmethod
    def from_address(cls, address: str | None, **options: Any) -> DaskEngine:
        """``Client(address, engine="dask")``: a new ``distributed.Client`` for the
        scheduler at ``address`` (None: a new ``LocalCluster`` with ``workers``
        workers). ``register_plugin`` and ``fetch_interval`` go to the engine; other
        options go to ``distributed.Client``."""
        if options.pop("serializer", None) is not None:
            raise ValueError("serializer: Dask serializes tasks itself; leave it unset")
        engine_options = {
            name: options.pop(name)
            for name in ("register_plugin", "fetch_interval", "interrupt")
            if name in options
        }
        workers = options.pop("workers", None)
        owned: list[Any] = []
        if address is None:
            cluster = distributed.LocalCluster(
                n_workers=workers or 2,
                threads_per_worker=1,
                dashboard_address="127.0.0.1:0",
                worker_dashboard_address="127.0.0.1:0",
            )
            owned.append(cluster)
            address = cluster.scheduler_address
        elif workers is not None:
            raise ValueError("workers: only meaningful without an address (a LocalCluster)")
        else:
            check_url(
                address,
                _DASK_SCHEMES,
                host_schemes=("tcp", "tls", "ws", "wss"),
                example="tcp://127.0.0.1:8786",
                bare="tcp",
            )
        options.setdefault("set_as_default", False)
        return cls(None, **engine_options, _connect=(address, options), _owned=tuple(owned))

    def __repr__(self) -> str:
        return f"<DaskEngine {self.address}>"

    # ------------------------------------------------------------------ the seam

    def start(self, client: EngineClient) -> None:
        """Connect (within ``connection_timeout``), check (and ship) the cancel plugin,
        hook the client's stream, start pinging."""
        self._client = client
        self._guard.count = client.count
        try:
            if self._connect is not None:
                address, options = self._connect
                # Dask's own connect timeout, if given, is the deadline; else ours.
                timeout = float(options.setdefault("timeout", client.connection_timeout))
                self._dask = connect_within(
                    lambda: distributed.Client(address, **options),
                    address,
                    timeout,
                    what="the Dask scheduler",
                    dispose=lambda dask_client: dask_client.close(),
                )
                self._owned = (self._dask, *self._owned)
            self._dask.sync(self._start)
        except BaseException:
            self._close_owned()
            raise

    async def _start(self) -> None:
        self._loop_thread = threading.get_ident()
        await self._ensure_plugin()
        handlers = self._dask._stream_handlers
        ours: dict[str, Callable[..., Any]] = {
            "key-in-memory": self._on_key_in_memory,
            "task-erred": self._on_task_erred,
            "cancelled-keys": self._on_cancelled_keys,
            "restart": self._on_restart,
            _plugin.CANCEL_ANSWER_OP: self._on_cancel_answer,
            _plugin.PONG_OP: self._on_pong,
        }
        # Chained: a message that is not for this engine goes to the handler that was
        # there before (Dask's own, or another engine's on the same Dask client).
        for op, handler in ours.items():
            if op in handlers:
                self._original_handlers[op] = handlers[op]
            handlers[op] = handler
        self._installed = ours
        self._comm = self._dask.scheduler_comm
        self._last_heard = time.monotonic()
        client = self._client
        assert client is not None
        from tornado.ioloop import PeriodicCallback

        self._watchdog = PeriodicCallback(self._watch, client.heartbeat_interval * 1000)
        self._watchdog.start()

    async def _ensure_plugin(self) -> None:
        """Make sure the scheduler runs the cancel plugin; ``DaskPluginError`` if not."""
        if self._register_plugin:
            try:
                await self._dask.scheduler.register_scheduler_plugin(
                    plugin=distributed.protocol.pickle.dumps(_plugin.FutureFSMCancelPlugin()),
                    name=_plugin.PLUGIN_NAME,
                    idempotent=True,
                )
            except Exception as error:
                raise DaskPluginError(
                    f"the Dask scheduler at {self.address} refused futurefsm's cancel "
                    f"plugin ({error!r}); start it with "
                    "`dask scheduler --preload futurefsm.engines.dask_plugin`"
                ) from error
        info = await self._plugin_info()
        if info is None:
            raise DaskPluginError(
                f"the Dask scheduler at {self.address} has no futurefsm cancel plugin, so "
                "cancels cannot be confirmed; start it with "
                "`dask scheduler --preload futurefsm.engines.dask_plugin` or let the "
                "engine register it (register_plugin=True)"
            )
        if info.get("protocol") != _plugin.PROTOCOL:
            raise DaskPluginError(
                f"the Dask scheduler at {self.address} runs futurefsm's cancel plugin "
                f"protocol {info.get('protocol')!r}, this client speaks {_plugin.PROTOCOL}"
            )
        self._plugin_ok = True

    async def _plugin_info(self) -> dict[str, Any] | None:
        # An RPC the scheduler does not know is answered with None (and a warning in
        # its log), unlike a stream op, which would close the connection.
        rpc = getattr(self._dask.scheduler, _plugin.RPC_OP)
        info = await rpc()
        return info if isinstance(info, dict) else None

    def _new_key(self, fn: Any) -> str:
        """A Dask key unique across clients: the function's name (Dask's dashboard
        groups by it), this engine's random prefix and a counter (all hex)."""
        return f"{_task_name(fn)}-{self._key_prefix}{next(self._key_counter):08x}"

    def prepare(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> PreparedDask:
        """Build and serialize the task's ``update-graph`` (in the submitting thread)."""
        if not callable(fn):
            raise TypeError(f"submit() needs a callable, got {fn!r}")
        key = self._new_key(fn)
        task = Task(
            key,
            fn,
            *(parse_input(arg) for arg in args),
            **{name: parse_input(value) for name, value in kwargs.items()},
        )
        message = _update_graph({key: task}, [key], f"{getattr(fn, '__name__', fn)!r} for submit()")
        return PreparedDask(key.encode(), key, message)

    def prepare_graph(self, nodes: Sequence[GraphNode], group_id: bytes) -> list[PreparedDask]:
        """One Dask graph for the whole group: every node gets a unique Dask key, every
        ``KeyRef`` (an argument, in a list, in a nested task) becomes that key, and
        Dask's own ``convert_legacy_graph`` makes the tasks (nested tasks run inside the
        task that holds them, as in Dask)."""
        keys = {node.key: self._new_key(node.function) for node in nodes}

        def rename(item: Any) -> Any:
            if type(item) is KeyRef:
                return keys[item.key]
            if isinstance(item, tuple) and item and callable(item[0]):
                return (item[0], *(rename(arg) for arg in item[1:]))
            if isinstance(item, list):
                return [rename(element) for element in item]
            return item  # a plain tuple or dict is a value, as on every engine

        legacy = {
            keys[node.key]: (node.function, *(rename(arg) for arg in node.args)) for node in nodes
        }
        dask_keys = list(legacy)
        try:
            dsk = convert_legacy_graph(legacy, all_keys=set(dask_keys))
        except Exception as error:
            raise TypeError(f"submit_graph: Dask cannot read the graph: {error}") from error
        message = _update_graph(dsk, dask_keys, "the graph for submit_graph()")
        return [PreparedDask(dask_key.encode(), dask_key, message) for dask_key in dask_keys]

    def prepare_dependent(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        upstream: Sequence[bytes],
    ) -> PreparedDask | None:
        """A task whose arguments alias the upstream keys, as ``distributed.Client``
        submits a future argument: Dask runs it with their values, errs it with an
        upstream's error, and cancels it with an upstream (``stimulus_cancel`` takes
        the dependents along). An upstream key stays held until its last dependent
        is forgotten, so it is on the scheduler when the dependent's graph arrives."""
        if not callable(fn):
            raise TypeError(f"submit() needs a callable, got {fn!r}")
        keys = tuple(task_id.decode() for task_id in upstream)
        with self._close_lock:
            if not all(key in self._known for key in keys):
                return None
            for key in keys:
                self._holds[key] = self._holds.get(key, 0) + 1

        try:
            call = replace_key_refs((args, kwargs), lambda ref: Alias(ref.key.decode()))
            prepared = self.prepare(fn, *call)
        except BaseException:
            with self._close_lock:
                self._drop_holds(keys)
            raise
        with self._close_lock:
            self._upstream_of[prepared.key] = keys
        return prepared

    def _drop_holds(self, keys: Sequence[str]) -> None:
        """One dependent fewer holds each key (``_close_lock`` held); a forgotten one
        whose last dependent this was is released now."""
        for key in keys:
            left = self._holds[key] - 1
            if left:
                self._holds[key] = left
                continue
            del self._holds[key]
            if key in self._deferred:
                self._deferred.discard(key)
                if not self._unhooked:
                    self._releases.append(key)

    def send(self, prepared: PreparedDask) -> None:  # type: ignore[override]
        """Queue the task for the engine's thread."""
        with self._close_lock:
            self._known.add(prepared.key)
        self._outbox.post(("task", prepared))

    def send_graph(self, group_id: bytes, prepared: list[PreparedDask]) -> None:  # type: ignore[override]
        """Queue the graph: sent whole (one ``update-graph``) or not at all."""
        keys = [item.key for item in prepared]
        with self._close_lock:
            self._known.update(keys)
        self._groups[group_id] = keys
        for key in keys:
            self._group_of[key] = group_id
        self._outbox.post(("graph", prepared))

    def send_cancel(self, task_id: bytes, group_id: bytes | None, force: bool = True) -> None:
        """Queue a plugin cancel for the task's key (a graph member: its whole graph's,
        always forced). Without ``force`` a task already on a worker is refused
        (``cancel_failed``); a key another client wants is always refused."""
        if self._closed:
            return  # the client resolves it (connection lost at close, or its deadline)
        if self._plugin_error is not None:
            raise DaskPluginError(
                f"cannot cancel on the Dask scheduler at {self.address}: {self._plugin_error}"
            )
        key = task_id.decode()
        self._cancelling.add(key)
        group = None if group_id is None else self._groups.get(group_id)
        if group is not None:
            self._outbox.post(("cancel", group))  # a graph is always cancelled whole
        else:
            self._outbox.post(("cancel" if force else "cancel_gentle", [key]))

    def forget(self, task_id: bytes) -> None:
        """The future is terminal: release its key on the scheduler (in a batch)."""
        key = task_id.decode()
        self._cancelling.discard(key)
        # Not _closed: close() sets it before _unhook (on the loop) releases what is
        # held, and a key forgotten in between would be released by neither.
        with self._close_lock:
            self._known.discard(key)
            ours = key in self._ours
            self._ours.discard(key)
            waiting = len(self._releases)
            if ours and key in self._holds:
                self._deferred.add(key)  # a dependent still needs it on the scheduler
            elif ours and not self._unhooked:
                self._releases.append(key)
            upstream = self._upstream_of.pop(key, None)
            if upstream is not None:
                self._drop_holds(upstream)
            release = len(self._releases) > waiting
        if ours:
            self._to_fetch.pop(key, None)
        if release:
            self._outbox.wake()
        group_id = self._group_of.pop(key, None)
        if group_id is not None:
            group = self._groups.get(group_id)
            if group is not None and all(k not in self._ours for k in group):
                self._groups.pop(group_id, None)

    def close(self) -> None:
        """Stop delivering, release what is left, and close our own Dask client."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        if self._loop_thread is not None and not self._dask_closed():
            if self.on_io_thread():
                self._unhook()
            else:
                try:
                    self._dask.sync(self._async_unhook)
                except Exception:
                    LOGGER.debug("DaskEngine.close: could not unhook", exc_info=True)
        with self._close_lock:
            self._unhooked = True  # (already, unless the Dask client was gone)
        if self.on_io_thread():
            # Closing the Dask client waits for its own loop: not from that loop.
            threading.Thread(target=self._close_owned, daemon=True).start()
        else:
            self._close_owned()

    def on_io_thread(self) -> bool:
        """True on the Dask client's event loop thread (it delivers every event)."""
        return threading.get_ident() == self._loop_thread

    # ------------------------------------------------------------------ closing

    def _dask_closed(self) -> bool:
        return self._dask.status in ("closing", "closed")

    async def _async_unhook(self) -> None:
        self._unhook()

    def _unhook(self) -> None:
        """Put Dask's own handlers back, stop pinging, release every key still held."""
        if self._watchdog is not None:
            self._watchdog.stop()
        handlers = self._dask._stream_handlers
        for op, handler in self._installed.items():
            if handlers.get(op) != handler:
                # Another engine hooked in after this one and delegates to it: stay
                # in the chain, passing everything on (this engine is closed).
                continue
            original = self._live_original(op)
            if original is not None:
                handlers[op] = original
            else:
                handlers.pop(op, None)
        self._drain()
        with self._close_lock:
            self._unhooked = True
            keys = [*self._ours, *self._deferred]
            while self._releases:  # forgotten since the drain
                keys.append(self._releases.popleft())
        if keys and self._dask.status == "running":
            self._dask_send({"op": "client-releases-keys", "keys": keys, "client": self._dask.id})

    def _live_original(self, op: str) -> Callable[..., Any] | None:
        """The handler this engine replaced, skipping engines closed since."""
        handler = self._original_handlers.get(op)
        while handler is not None:
            owner = getattr(handler, "__self__", None)
            if not (isinstance(owner, DaskEngine) and owner._closed):
                return handler
            handler = owner._original_handlers.get(op)
        return None

    def _close_owned(self) -> None:
        for item in self._owned:
            try:
                item.close()
            except Exception:
                LOGGER.debug("DaskEngine.close: closing %r failed", item, exc_info=True)

    # ------------------------------------------------------------------ engine's thread

    def _wake(self) -> None:
        """Wake the loop thread (``_outbox``'s one wake-up per batch)."""
        self._dask.loop.add_callback(self._drain)

    def _drain(self) -> None:
        """On the loop: send everything queued, cancels of one round in one message."""
        items = self._outbox.take()  # first: a later post wakes us again
        if not self._closed:
            # A reconnect not yet noticed: the old tasks are gone, new ones go out on
            # the new connection.
            self._sync_connection()
        cancel_keys: list[str] = []
        gentle_keys: list[str] = []
        for item in items:
            if item is None:  # a wake-up
                continue
            with self._guard:
                if item[0] == "task":
                    self._send_task(item[1])
                elif item[0] == "graph":
                    self._send_graph(item[1])
                elif item[0] == "cancel":
                    cancel_keys += item[1]
                else:
                    gentle_keys += item[1]
        if not self._plugin_ok:
            # Reconnected, the plugin not yet checked again: an operation the scheduler
            # does not know would close the connection. Hold them until it is.
            self._held_cancels += [(True, key) for key in cancel_keys]
            self._held_cancels += [(False, key) for key in gentle_keys]
            cancel_keys, gentle_keys = [], []
        elif self._held_cancels:
            cancel_keys = [key for force, key in self._held_cancels if force] + cancel_keys
            gentle_keys = [key for force, key in self._held_cancels if not force] + gentle_keys
            self._held_cancels = []
        if not self._closed:
            for keys, force in ((cancel_keys, True), (gentle_keys, False)):
                if keys:
                    message = {"op": _plugin.CANCEL_OP, "keys": list(dict.fromkeys(keys))}
                    self._asked.update(message["keys"])
                    interrupt = force and self._interrupt
                    self._dask_send({**message, "force": force, "interrupt": interrupt})
        if self._releases:
            keys = []
            while self._releases:
                keys.append(self._releases.popleft())
            if self._dask.status == "running":
                self._dask_send(
                    {"op": "client-releases-keys", "keys": keys, "client": self._dask.id}
                )

    def _send_task(self, prepared: PreparedDask) -> None:
        # Ours before "sent": a result cannot come before the message goes, and a
        # forget() racing this (the future lost meanwhile) must find it.
        client = self._client
        assert client is not None
        self._ours.add(prepared.key)
        if not client.sending(prepared.task_id):
            self._ours.discard(prepared.key)
            return
        if not self._connected():
            client.deliver_connection_lost(self._not_connected(), [prepared.task_id])
            return
        self._dask_send(prepared.message)

    def _send_graph(self, members: list[PreparedDask]) -> None:
        """Send the graph whole (one ``update-graph``), or nothing."""
        client = self._client
        assert client is not None
        self._ours.update(prepared.key for prepared in members)
        task_ids = [prepared.task_id for prepared in members]
        if not client.sending_graph(task_ids):
            self._ours.difference_update(prepared.key for prepared in members)
            return
        if not self._connected():
            client.deliver_connection_lost(self._not_connected(), task_ids)
            return
        self._dask_send(members[0].message)

    def _not_connected(self) -> str:
        return f"the Dask client has no connection to the scheduler at {self.address}"

    def _connected(self) -> bool:
        return (
            self._dask.status == "running"
            and self._dask.scheduler_comm is self._comm
            and self._comm is not None
        )

    def _dask_send(self, message: dict[str, Any]) -> None:
        comm = self._dask.scheduler_comm
        if comm is None:
            raise ConnectionError("the Dask client has no scheduler connection")
        comm.send(message)

    # ------------------------------------------------------------------ inbound

    def _is_ours(self, key: Any) -> bool:
        if self._closed or not isinstance(key, str) or key not in self._ours:
            return False
        self._last_heard = time.monotonic()
        return True

    def _on_key_in_memory(self, key: Any = None, **message: Any) -> None:
        if not self._is_ours(key):
            self._delegate("key-in-memory", key=key, **message)
            return
        with self._guard:
            if key in self._cancelling:
                # The cancel lost the race: the value would be thrown away, skip it.
                self._deliver_result(key, None)
            else:
                self._to_fetch[key] = None
                self._last_arrival = time.monotonic()
                if not self._fetching:
                    self._fetching = True
                    self._dask.loop.add_callback(self._fetch)

    def _on_task_erred(
        self, key: Any = None, exception: Any = None, traceback: Any = None, **message: Any
    ) -> None:
        if not self._is_ours(key):
            self._delegate(
                "task-erred", key=key, exception=exception, traceback=traceback, **message
            )
            return
        with self._guard:
            self._to_fetch.pop(key, None)
            self._deliver_result(key, None, _remote_exception(exception, traceback, key))

    def _on_cancelled_keys(self, keys: Any = (), **message: Any) -> None:
        """The scheduler released keys (another client's forced cancel, forgotten,
        lost dependencies): a confirm for a future cancelling, unasked for one
        running. The plugin's own cancels are answered by the plugin, just after."""
        ours_answered = message.get("reason") == _plugin.CANCEL_REASON
        others = []
        for key in keys or ():
            if not self._is_ours(key):
                others.append(key)
                continue
            if ours_answered and key in self._asked:
                continue  # the plugin's answer, just after, is this key's
            # (A dependent Dask cancelled with an upstream we cancelled is unasked.)
            with self._guard:
                self._to_fetch.pop(key, None)
                self._deliver_answer(key, "canceled")
        if others:
            self._delegate("cancelled-keys", keys=others, **message)

    def _on_cancel_answer(self, answers: Any = None, **_: Any) -> None:
        """The plugin's answer to a ``futurefsm-cancel``, per key."""
        if not isinstance(answers, dict):
            self._guard.protocol_error(ProtocolError(f"malformed cancel answer {answers!r}"))
            return
        self._last_heard = time.monotonic()
        others = {}
        for key, kind in answers.items():
            self._asked.discard(key)
            if not self._is_ours(key):
                others[key] = kind
                continue
            with self._guard:
                if kind == "result":
                    if key in self._cancelling:
                        # Its result came first on the stream: deliver it, so the table
                        # decides RESULT_RACED (the value itself is discarded).
                        self._to_fetch.pop(key, None)
                        self._deliver_result(key, None)
                    # A running sibling: its own result (being fetched) finishes it.
                else:
                    self._deliver_answer(key, kind)
        if others:
            if self._live_original(_plugin.CANCEL_ANSWER_OP) is not None:
                self._delegate(_plugin.CANCEL_ANSWER_OP, answers=others)
            elif not self._closed:
                for _key in others:
                    self._count("stale_messages")

    def _on_pong(self, **message: Any) -> None:
        self._last_heard = time.monotonic()
        self._delegate(_plugin.PONG_OP, **message)

    def _on_restart(self, **message: Any) -> None:
        """The scheduler restarted its workers and dropped every task."""
        for key in [] if self._closed else list(self._ours):
            with self._guard:
                self._to_fetch.pop(key, None)
                self._deliver_answer(key, "canceled")
        self._delegate("restart", **message)

    def _deliver_result(self, key: str, value: Any, exception: BaseException | None = None) -> None:
        client = self._client
        assert client is not None
        client.deliver_result(key.encode(), value, exception)

    def _deliver_answer(self, key: str, answer: Any) -> None:
        client = self._client
        assert client is not None
        self._cancelling.discard(key)
        client.deliver_cancel_answer(key.encode(), answer)

    def _delegate(self, op: str, **message: Any) -> None:
        handler = self._live_original(op)
        if handler is not None:
            handler(**message)

    async def _fetch(self) -> None:
        """Gather finished values in batches: one request in flight, the keys that
        finish meanwhile make the next one."""
        try:
            while self._to_fetch and not self._closed:
                # Idle: fetch at once. Busy: wait until results stop coming for a
                # moment (_FETCH_QUIET) or the batch is fetch_interval old, so results
                # finishing meanwhile share one gather (one request per result costs
                # the scheduler and the workers far more than Dask's own client).
                now = time.monotonic()
                if now - self._last_fetch < self._fetch_interval:
                    started = now
                    while True:
                        wait = min(
                            self._last_arrival + _FETCH_QUIET - now,
                            started + self._fetch_interval - now,
                        )
                        if wait <= 0:
                            break
                        await asyncio.sleep(wait)
                        now = time.monotonic()
                self._last_fetch = time.monotonic()
                keys = list(self._to_fetch)
                self._to_fetch.clear()
                response = await self._gather(keys)
                if response is None:
                    return  # disconnected: connection_lost resolves them
                if isinstance(response, BaseException) and len(keys) > 1:
                    # One value that cannot be read fails the whole request: fetch
                    # them one by one, so only that task fails.
                    for key in keys:
                        single = await self._gather([key])
                        if single is None:
                            return
                        self._deliver([key], single)
                else:
                    self._deliver(keys, response)
        finally:
            self._fetching = False
            if self._to_fetch and not self._closed:
                self._fetching = True
                self._dask.loop.add_callback(self._fetch)

    async def _gather(self, keys: list[str]) -> dict[str, Any] | BaseException | None:
        """The scheduler's answer to a gather of ``keys``, the error it raised, or
        None when the connection is gone."""
        keys = [key for key in keys if key in self._ours]
        if not keys:
            return {"status": "OK", "data": {}}
        try:
            response: dict[str, Any] = await self._dask.scheduler.gather(keys=keys)
        except Exception as error:
            return None if not self._connected() else error
        return response

    def _deliver(self, keys: list[str], response: dict[str, Any] | BaseException) -> None:
        """Finish the futures of ``keys`` with what a gather brought back."""
        if isinstance(response, BaseException):
            for key in keys:
                if key in self._ours:
                    failure = TaskFailedError(
                        f"the result of task {key} could not be fetched: {response!r}"
                    )
                    failure.__cause__ = response
                    with self._guard:
                        self._deliver_result(key, None, failure)
            return
        if response.get("status") != "OK":
            # Some keys were lost (a worker died holding them): gather the rest again,
            # and have the scheduler report the lost ones anew (recomputed, erred or
            # forgotten).
            failed = set(response.get("keys", ()))
            for key in keys:
                if key in failed:
                    self._dask_send({"op": "report-key", "key": key})
                elif key in self._ours:
                    self._to_fetch[key] = None
            return
        data = response["data"]
        for key in keys:
            if key not in self._ours:
                continue
            if key not in data:
                self._dask_send({"op": "report-key", "key": key})
                continue
            with self._guard:
                self._deliver_result(key, data[key])

    # ------------------------------------------------------------------ liveness

    def _watch(self) -> None:
        """Every heartbeat: notice a reconnect or a silent scheduler; ping it."""
        client = self._client
        if client is None or self._closed:
            return
        with self._guard:
            now = time.monotonic()
            if not self._sync_connection():
                return
            if now - self._last_heard > client.connection_timeout:
                self._last_heard = now
                keys = list(self._ours)
                self._lose(f"the Dask scheduler answered nothing for {client.connection_timeout} s")
                if keys:  # if it wakes up, none of those tasks may run later
                    self._dask_send(_cancel_keys_message(keys))
            if self._plugin_ok:
                self._dask_send({"op": _plugin.PING_OP})

    def _sync_connection(self) -> bool:
        """On the loop: notice a lost or new connection of the Dask client; True if
        connected. Lost: every live future is connection lost (the scheduler drops a
        client's tasks when it goes). New: the plugin is checked again, and cancels
        wait for that."""
        comm = self._dask.scheduler_comm
        running = self._dask.status == "running" and comm is not None
        if comm is self._comm and running:
            return True
        if self._comm is not None:
            self._comm = None
            self._plugin_ok = False
            self._lose("the Dask client lost its scheduler connection (reconnecting)")
        if running:
            self._comm = comm
            self._last_heard = time.monotonic()
            self._dask.loop.add_callback(self._recheck_plugin)
        return running

    def _lose(self, why: str) -> None:
        self._to_fetch.clear()
        self._held_cancels = []  # for tasks the scheduler no longer has
        lost = list(self._ours)
        if self._client is not None:
            self._client.deliver_connection_lost(why)
        self._ours.difference_update(lost)
        self._releases.clear()

    async def _recheck_plugin(self) -> None:
        try:
            await self._ensure_plugin()
        except Exception as error:
            # Held cancels are never sent: their futures end at their cancel deadline.
            self._plugin_error = str(error)
            self._held_cancels = []
            LOGGER.error("Dask engine: after reconnecting: %s", error)
        else:
            self._plugin_error = None
            self._outbox.wake()  # send the held cancels

    # ------------------------------------------------------------------ small helpers

    def _count(self, stat: str) -> None:
        if self._client is not None:
            self._client.count(stat)
