"""The engine for Scaler (``pip install 'futurefsm[scaler]'``): futurefsm's futures on
Scaler's own client.

Theory of operation
-------------------
Scaler's ``Client`` keeps doing everything it does: its agent thread owns the
connection to the scheduler (heartbeats, Scaler's transport), its object buffer
serializes functions and arguments and uploads them to the object storage server,
and its serializer is the one the workers use. This engine only takes the place of
Scaler's futures: a ``TaskFuture`` stands where Scaler puts a ``ScalerFuture``, and
the three calls through which Scaler's agent resolves futures (the
``ClientFutureManager``'s ``on_task_result``, ``on_task_cancel_confirm`` and
``set_all_futures_with_exception``) are redirected here. What arrives becomes the
table's triggers:

==========================================  ==========================================
Scaler (agent thread)                       delivery (delivery thread)
==========================================  ==========================================
TaskResult success                          ``deliver_result(task_id, value)``
TaskResult failed                           ``deliver_result(task_id, exception=e)``:
                                            the task's own, its remote traceback as
                                            ``__cause__``; Scaler's
                                            ``ProcessorDiedError`` (the task's process
                                            died) -> WorkerDiedError
TaskResult failedWorkerDied                 ``deliver_result(exception=WorkerDied...)``
TaskCancelConfirm canceled                  ``deliver_cancel_answer("canceled")``
TaskCancelConfirm cancelNotFound            ``deliver_cancel_answer("not_found")``
TaskCancelConfirm cancelFailed              ``deliver_cancel_answer("cancel_failed")``
the agent stops (scheduler gone, silent     ``deliver_connection_lost(why)``
for ``connection_timeout``, closed, crash)
==========================================  ==========================================

Where the mapping depends on what was asked, the engine keeps its own record of what
it sent (never the future's state): a result for a task whose non-forced cancel is
unanswered first delivers ``cancel_failed`` (Scaler's scheduler absorbs refusals); a
``cancelNotFound`` for a graph member whose own future did not ask to cancel is the
graph's cancel (``canceled``).

Threads. Scaler's agent thread runs an asyncio loop that also answers heartbeats, so
nothing slow may run on it: the hooks only start the fetch of a result's object
(pipelined on the agent's loop, many in flight at once, nothing blocks) and queue
events. One delivery thread per engine drains that queue in batches: it deserializes
values and makes the deliveries, so done-callbacks run there (``on_io_thread``), never on
Scaler's loop; a callback may submit or cancel freely.

Values are fetched as soon as the TaskResult arrives (ScalerFuture fetches on the
first ``result()``), so a gather never waits one object-storage round trip per
future; the fetches are pipelined and never block a user thread.

Graphs go to Scaler's scheduler as one ``GraphTask`` whose id is the futurefsm group
id: the scheduler passes results between members inside the cluster, and a
TaskCancel for the group cancels the whole graph (every member gets its own answer).

Futures as arguments (``prepare_dependent``). Scaler 2.9's scheduler resolves a
task's result as an argument only inside one GraphTask, and a plain Task takes
stored objects, whose ids for a result are random (known when the TaskResult
arrives). So the engine holds a dependent (its future is running) until every
upstream's TaskResult has arrived, and then sends it as a plain Task whose first
arguments are the upstreams' result objects: one message round trip, and the values
stay in the object storage. On the worker ``dependent_call`` (sent by value) fills the
arguments' template. Two records, under ``_deps_lock``, are the tables of this:

==========================================  ==========================================
a task's result (``_ResultPhase``)          what moves it
==========================================  ==========================================
AWAITING (every task sent, until its        a cancel sent: CANCEL_ASKED (forced) or
result or end)                              SOFT_CANCEL_ASKED; refused: AWAITING
its TaskResult, success, named by a         KEPT: the object is not deleted; held
dependent (AWAITING, SOFT_CANCEL_ASKED)     dependents with all results in are sent
                                            (from the delivery thread)
KEPT, its own future forgotten              LENT; the last dependent forgotten:
                                            the object is deleted
a failure (AWAITING, SOFT_CANCEL_ASKED)     no record; held dependents fail with its
                                            error (the delivery thread makes it)
a cancel answer ending it, any result in    no record; held dependents end cancelled
CANCEL_ASKED, forgotten without a result    (an unasked ``canceled``)
success named by nobody                     no record; deleted once fetched (as ever)
==========================================  ==========================================

A dependent (``_DependentPhase``) is PREPARED (holding its upstreams' records), then
at ``send`` HELD or SENT; an upstream ending it before ``send`` makes it DOOMED (it
ends when sent), while HELD makes it ENDED (and what names it in turn). Its own
cancel while HELD is answered here, ``canceled``, without a TaskCancel. Decisions on
results and cancel answers are made on the agent's loop, in the order they arrive
(under the lock only; nothing is sent there), so a dependent never runs on a result
its upstream's future will not keep. ``prepare_dependent`` returns None for an
upstream without a record: its result was fetched and deleted (the client then puts
the value in its place).

Private attributes of Scaler's client are unavoidable here; they are listed in
``PRIVATE_ATTRIBUTES``, checked when the engine starts (an upgrade that moves one
fails at once, naming it), and the supported versions are pinned in the ``scaler``
extra of ``pyproject.toml``.
"""

from __future__ import annotations

import collections
import copy
import enum
import functools
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from scaler.client.client import Client as ScalerClient
from scaler.client.object_reference import ObjectReference
from scaler.protocol.capnp import (
    GraphTask,
    Task,
    TaskCancel,
    TaskCancelConfirm,
    TaskCancelConfirmType,
    TaskResult,
    TaskResultType,
)
from scaler.utility import exceptions as scaler_errors
from scaler.utility.identifiers import ObjectID, TaskID
from scaler.utility.serialization import deserialize_failure

from ..addresses import check_address
from ..errors import TaskFailedError, WorkerDiedError
from ..protocol import ProtocolError
from . import Engine, EngineClient, GraphNode, KeyRef
from .shared import (
    DeliveryThread,
    NeverRaise,
    attach_remote_traceback,
    connect_within,
    flatten_nested,
    replace_key_refs,
)

__all__ = [
    "PRIVATE_ATTRIBUTES",
    "SUPPORTED_VERSIONS",
    "PreparedScalerTask",
    "ScalerEngine",
    "check_private_attributes",
]

LOGGER = logging.getLogger("futurefsm.engines.scaler")

SUPPORTED_VERSIONS = ">=2.9,<2.10"
"""The opengris-scaler versions this engine is tested with (the ``scaler`` extra)."""

PRIVATE_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("_future_manager", "the ClientFutureManager the agent thread resolves futures through"),
    ("_future_manager._task_id_to_future", "Scaler's own futures (still resolved by Scaler)"),
    ("_connector_agent", "the connector to the agent thread (Task, GraphTask, TaskCancel)"),
    ("_object_buffer", "serializes and uploads functions and arguments"),
    ("_bridge", "runs coroutines on the agent's loop; the object storage connector"),
    ("_bridge._agent", "the agent thread"),
    ("_identity", "the client id every Task carries as its source"),
    ("_stop_event", "set by the agent when it stops"),
    ("_serializer", "the serializer the workers use"),
    ("_scheduler_address", "the scheduler's address"),
    ("_Client__get_task_flags", "the Task metadata (priority of nested submits)"),
    ("_bridge._agent._task_manager._task_ids", "the task ids the agent lets answers through for"),
)
"""``(dotted attribute of a scaler Client, what this engine uses it for)``."""

_AGENT_TASK_IDS = "_bridge._agent._task_manager._task_ids"
# The agent forgets a task id on any cancel confirm; a refused cancel (the task runs
# on) and a graph cancel that reached the scheduler before the graph must put it back.

_CONFIRM_KINDS: dict[Any, str] = {
    TaskCancelConfirmType.canceled: "canceled",
    TaskCancelConfirmType.cancelNotFound: "not_found",
    TaskCancelConfirmType.cancelFailed: "cancel_failed",
}
_MAX_GROUP_CANCEL_RESENDS = 20


class _ScalerWorkerDiedError(WorkerDiedError, scaler_errors.WorkerDiedError):
    """The process running the task died (Scaler's ``failedWorkerDied`` or
    ``ProcessorDiedError``). Caught as futurefsm's ``WorkerDiedError`` and as
    Scaler's own ``WorkerDiedError``."""


def _resolve(obj: Any, dotted: str) -> Any:
    for name in dotted.split("."):
        obj = getattr(obj, name)
    return obj


def check_private_attributes(scaler_client: Any) -> None:
    """Raise ``RuntimeError`` naming the first private attribute of ``scaler_client``
    this engine relies on that is missing (an unsupported opengris-scaler)."""
    for dotted, purpose in PRIVATE_ATTRIBUTES:
        try:
            _resolve(scaler_client, dotted)
        except AttributeError:
            raise RuntimeError(
                f"futurefsm's Scaler engine needs the private attribute scaler.Client.{dotted} "
                f"({purpose}), which this opengris-scaler ({_scaler_version()}) does not have; "
                f"supported versions: opengris-scaler{SUPPORTED_VERSIONS}"
            ) from None


def _scaler_version() -> str:
    try:
        from scaler import __version__

        return str(__version__)
    except Exception:  # pragma: no cover - a broken install
        return "unknown version"


# Helpers that run on the workers, which need not have futurefsm installed: they
# live in a module that cannot be imported, so cloudpickle sends them by value.
_HELPER_SOURCE = '''
def as_list(*items):
    return list(items)

def as_tuple(*items):
    return items

class Slot:
    """In a dependent's template: the value of its task argument number index."""

    __slots__ = ("index",)

    def __init__(self, index):
        self.index = index

def fill(item, values):
    kind = type(item)
    if kind is Slot:
        return values[item.index]
    if kind is list:
        return [fill(element, values) for element in item]
    if kind is tuple:
        return tuple(fill(element, values) for element in item)
    if kind is dict:
        return {key: fill(element, values) for key, element in item.items()}
    return item

def dependent_call(fn, template, *values):
    """fn(*args, **kwargs) of the template (args, kwargs), each Slot filled with the
    value of that task argument (an upstream's result, or a plain argument)."""
    args, kwargs = fill(template, values)
    return fn(*args, **kwargs)
'''
_HELPERS: dict[str, Any] = {"__name__": "_futurefsm_scaler_graph_helpers"}
exec(_HELPER_SOURCE, _HELPERS)


@dataclass(frozen=True, slots=True)
class PreparedScalerTask:
    """A Scaler ``Task`` built in the submitting thread (its objects buffered)."""

    task_id: bytes
    task: Any
    """The Task; None for a dependent (``prepare_dependent``): its Task is built
    once its upstream results are in (from its ``_Dependent`` record)."""
    depends_on: tuple[bytes, ...] = ()
    """Graph only: the tasks whose results this one takes (members or helpers)."""
    helpers: tuple[PreparedScalerTask, ...] = ()
    """Graph only: hidden tasks that build list arguments naming other members."""


class _ResultPhase(enum.Enum):
    """Where the result of a task this engine sent stands, for the dependents that
    may name it (``prepare_dependent``). A task whose result the engine does not
    keep, or never will get, has no record: a dependent can no longer name it."""

    AWAITING = "awaiting"
    """Sent; no result yet, and no cancel asked (or the cancel was refused)."""
    CANCEL_ASKED = "cancel_asked"
    """A forced cancel is unanswered: whatever ends the task, a result too, ends its
    future cancelled."""
    SOFT_CANCEL_ASKED = "soft_cancel_asked"
    """A ``force=False`` cancel is unanswered: a result means it was refused."""
    KEPT = "kept"
    """It succeeded and its result object stays in Scaler's object storage for its
    dependents (its own future may still be fetching it)."""
    LENT = "lent"
    """Succeeded, and its own future is forgotten: the object stays until the last
    dependent that names it is forgotten."""


@dataclass(slots=True)
class _Result:
    """The record of a task this engine sent, for the dependents that name it."""

    phase: _ResultPhase
    owned: bool
    """The engine deletes the result object when done with it (a plain task's; a
    graph member's is left to the scheduler, as before)."""
    holders: set[bytes] = field(default_factory=set)
    """The dependents that name this task, until each is forgotten."""
    object_id: ObjectID | None = None
    """KEPT, LENT: the result object."""


class _DependentPhase(enum.Enum):
    """A dependent's way to the scheduler (``prepare_dependent``)."""

    PREPARED = "prepared"
    """Prepared and holding its upstreams; ``send`` not called yet."""
    DOOMED = "doomed"
    """Prepared, and an upstream ended it (failed, cancelled) before ``send``: when
    sent, it ends at once (``ending``) instead of going out."""
    HELD = "held"
    """Its future runs; the engine holds its Task until every upstream result is in."""
    SENT = "sent"
    """Its Task went to the scheduler: an ordinary task from now on."""
    ENDED = "ended"
    """The engine ended it before sending (its own cancel, an upstream's end)."""


@dataclass(slots=True)
class _Dependent:
    """A task that takes results of tasks already sent; kept until forgotten."""

    phase: _DependentPhase
    upstream: tuple[bytes, ...]
    """Its upstream tasks: the result of ``upstream[i]`` is its task argument ``i``."""
    function_id: ObjectID
    """``dependent_call`` bound to the function and the arguments' template."""
    arguments: list[Any]
    """Its plain top-level arguments: task arguments ``len(upstream)`` onwards."""
    missing: set[bytes]
    """The upstreams whose result is not in yet."""
    ending: tuple[Any, ...] | None = None
    """DOOMED: the delivery event that ends it once sent."""


@dataclass(slots=True)
class _Graph:
    """A graph in flight: who depends on whom, and which members are still live."""

    members: frozenset[bytes]
    helpers: frozenset[bytes]
    dependents: dict[bytes, list[bytes]]
    live: set[bytes]
    """Members not yet terminal; the graph is forgotten when none is left."""

    def unreachable(self, task_id: bytes) -> list[bytes]:
        """The members that (transitively) take ``task_id``'s result."""
        found: list[bytes] = []
        seen = {task_id}
        stack = [task_id]
        while stack:
            for dependent in self.dependents.get(stack.pop(), ()):
                if dependent not in seen:
                    seen.add(dependent)
                    stack.append(dependent)
                    if dependent in self.members:
                        found.append(dependent)
        return found


class ScalerEngine(Engine):
    """futurefsm's futures on a Scaler cluster, through Scaler's own client.

    ``ScalerEngine(scaler_client)`` uses an existing ``scaler.Client`` (it keeps
    working for Scaler's own futures; closing the engine leaves it connected);
    ``Client(address, engine="scaler", **options)`` connects a new one to the
    scheduler at ``address`` (``tcp://host:port``), with the client's
    ``connection_timeout`` and ``heartbeat_interval``; ``options`` go to
    ``scaler.Client`` (``serializer`` must be a Scaler ``Serializer``,
    ``object_storage_address``, ``security_config``...).
    """

    def __init__(self, scaler_client: ScalerClient | None = None, **options: Any) -> None:
        self._scaler: Any = scaler_client
        self._owns_scaler = scaler_client is None
        self._options = options
        self.address = "" if scaler_client is None else repr(scaler_client._scheduler_address)
        self._client: EngineClient | None = None
        # The object buffer is not thread-safe: prepare and commit take this lock. It
        # is never taken on a thread Scaler's agent needs to make progress.
        self._buffer_lock = threading.Lock()
        # "sent" and the Task go out together, and a TaskCancel is sent under it too:
        # a cancel never reaches the agent before the Task it cancels.
        self._wire_lock = threading.RLock()
        self._groups: dict[bytes, _Graph] = {}  # graphs in flight, by group id
        self._graph_of: dict[bytes, bytes] = {}  # member or helper -> group id
        self._ended_groups: collections.deque[bytes] = collections.deque(maxlen=4096)
        self._group_cancels: dict[bytes, int] = {}  # group -> TaskCancels sent
        # What this engine sent, where the mapping of an answer depends on it:
        self._soft_cancels: set[bytes] = set()  # tasks with a force=False cancel unanswered
        self._asked: set[bytes] = set()  # graph members whose own future asked to cancel
        # Futures as arguments (prepare_dependent), under _deps_lock (taken inside
        # _wire_lock, never the other way; held briefly, never around a delivery or a
        # send): every sent task's result record until the engine is done with it, and
        # every dependent until it is forgotten.
        self._deps_lock = threading.Lock()
        self._results: dict[bytes, _Result] = {}
        self._dependents: dict[bytes, _Dependent] = {}
        self._guard = NeverRaise(LOGGER, "Scaler engine")
        self._delivery: DeliveryThread[tuple[Any, ...]] = DeliveryThread(
            f"futurefsm-scaler-{id(self):x}-delivery", self._deliver, self._guard
        )
        self._closed = False
        self._close_lock = threading.Lock()
        self._originals: dict[str, Any] = {}

    @classmethod
    def from_address(cls, address: str | None, **options: Any) -> ScalerEngine:
        """``Client(address, engine="scaler", **options)``: connect to the Scaler
        scheduler at ``address`` when the client starts."""
        if address is None:
            raise ValueError(
                "engine='scaler' needs the address of a running Scaler scheduler, "
                "e.g. Client('tcp://127.0.0.1:2345', engine='scaler')"
            )
        serializer = options.get("serializer")
        if serializer is not None and not (
            hasattr(serializer, "serialize") and hasattr(serializer, "deserialize")
        ):
            raise TypeError(
                f"serializer: engine='scaler' takes a scaler Serializer (serialize/deserialize), "
                f"got {serializer!r}"
            )
        check_address(address)  # Scaler's addresses are ZeroMQ's (tcp://HOST:PORT)
        engine = cls(None, **options)
        engine.address = address
        return engine

    def __repr__(self) -> str:
        return f"<ScalerEngine {self.address}>"

    @property
    def scaler_client(self) -> ScalerClient:
        """The ``scaler.Client`` underneath (for ``send_object`` and the like)."""
        return self._scaler

    # ------------------------------------------------------------------ the seam

    def start(self, client: EngineClient) -> None:
        """Connect Scaler's client (unless given one), take over its future manager,
        and start the delivery thread."""
        self._client = client
        self._guard.count = client.count
        if self._scaler is None:
            options = dict(self._options)
            # Scaler's own settings are whole seconds; a float works and is kept.
            options.setdefault("timeout_seconds", client.connection_timeout)
            options.setdefault("heartbeat_interval_seconds", client.heartbeat_interval)
            # Scaler retries an address where nothing answers for about 50 s and then
            # fails with a bare CancelledError: the connection_timeout holds here.
            self._scaler = connect_within(
                lambda: ScalerClient(self.address, **options),
                self.address,
                client.connection_timeout,
                what="the Scaler scheduler",
                dispose=lambda scaler_client: scaler_client.disconnect(),
            )
        scaler_client = self._scaler
        check_private_attributes(scaler_client)
        self._connector = scaler_client._connector_agent
        self._buffer = scaler_client._object_buffer
        self._bridge = scaler_client._bridge
        self._identity = scaler_client._identity
        self._stop_event = scaler_client._stop_event
        self._serializer = scaler_client._serializer
        self._metadata = scaler_client._Client__get_task_flags().serialize()
        self._agent = scaler_client._bridge._agent
        self._delivery.start()
        manager = scaler_client._future_manager
        for name, hook in (
            ("on_task_result", self._on_task_result),
            ("on_task_cancel_confirm", self._on_task_cancel_confirm),
            ("set_all_futures_with_exception", self._on_agent_stopped),
        ):
            self._originals[name] = getattr(manager, name)
            setattr(manager, name, hook)
        self._manager = manager
        # The agent may also stop without telling its future manager (an error it
        # re-raises); nothing may wait forever for it.
        threading.Thread(
            target=self._watch_agent, name=f"futurefsm-scaler-{id(self):x}-watch", daemon=True
        ).start()
        if self._stop_event.is_set():
            self._delivery.post(("lost", "the Scaler client is already stopped"))

    def prepare(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> PreparedScalerTask:
        """Serialize ``fn`` and every argument into Scaler's object buffer (uploaded
        by ``send``) and build the Task. Keyword arguments travel with the function."""
        if not callable(fn):
            raise TypeError(f"submit() needs a callable, got {fn!r}")
        function = functools.partial(fn, **kwargs) if kwargs else fn
        with self._buffer_lock:
            function_id = self._buffer_function(function, fn)
            arguments = [self._buffer_argument(arg, index, fn) for index, arg in enumerate(args)]
        task_id = TaskID.generate_task_id()
        return PreparedScalerTask(task_id, self._task(task_id, function_id, arguments))

    def prepare_graph(
        self, nodes: Sequence[GraphNode], group_id: bytes
    ) -> list[PreparedScalerTask]:
        """One Task per node; a ``KeyRef`` argument becomes a task argument (Scaler
        passes that member's result inside the cluster). An argument that holds
        ``KeyRef`` s inside (a list, a nested task) is built by hidden members of the
        graph; nested tasks run in a ``NestedCall`` (so the workers need futurefsm)."""
        task_ids = {node.key: TaskID.generate_task_id() for node in nodes}
        prepared = []
        with self._buffer_lock:
            for node in nodes:
                fn, args = flatten_nested(node.function, node.args)
                helpers: list[PreparedScalerTask] = []
                arguments = [
                    self._graph_argument(arg, index, fn, task_ids, helpers)
                    for index, arg in enumerate(args)
                ]
                function_id = self._buffer_function(fn, fn)
                task_id = task_ids[node.key]
                task = self._task(task_id, function_id, arguments)
                prepared.append(
                    PreparedScalerTask(task_id, task, _task_arguments(arguments), tuple(helpers))
                )
        return prepared

    def prepare_dependent(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        upstream: Sequence[bytes],
    ) -> PreparedScalerTask | None:
        """A task that takes the upstream tasks' result objects as task arguments.

        Scaler's scheduler resolves a task argument only inside one GraphTask, and a
        result object's id is random (known when the TaskResult arrives). So the
        engine holds the Task until every upstream's TaskResult has reached this
        client, then sends it naming their result objects: the values stay in the
        object storage (which keeps each until its dependents are forgotten). On the
        worker, ``dependent_call`` puts each value in its place (also inside lists,
        tuples and dict values). An upstream that fails or is cancelled ends the
        dependent the same way, unsent; the dependent's own cancel while held is
        answered here and leaves the upstream alone.

        None: an upstream's result is no longer kept (its future ended meanwhile)."""
        if not callable(fn):
            raise TypeError(f"submit() needs a callable, got {fn!r}")
        upstream = tuple(upstream)
        with self._deps_lock:
            if any(task_id not in self._results for task_id in upstream):
                return None
        slot = _HELPERS["Slot"]
        slots = {task_id: slot(index) for index, task_id in enumerate(upstream)}
        plain: list[tuple[int, Any]] = []
        template_args = []
        for index, arg in enumerate(args):
            if _names_a_ref(arg):
                template_args.append(replace_key_refs(arg, lambda ref: slots[ref.key]))
            else:  # a task argument of its own (Scaler's send_object() ones too)
                template_args.append(slot(len(upstream) + len(plain)))
                plain.append((index, arg))
        template = (tuple(template_args), replace_key_refs(kwargs, lambda ref: slots[ref.key]))
        function = functools.partial(_HELPERS["dependent_call"], fn, template)
        with self._buffer_lock:
            function_id = self._buffer_function(function, fn)
            arguments = [self._buffer_argument(arg, index, fn) for index, arg in plain]
        task_id = TaskID.generate_task_id()
        with self._deps_lock:
            records = [self._results.get(upstream_id) for upstream_id in upstream]
            if any(record is None for record in records):
                return None  # (what was buffered goes out unused with the next commit)
            missing = set()
            for upstream_id, record in zip(upstream, records, strict=True):
                assert record is not None
                record.holders.add(task_id)
                if record.object_id is None:
                    missing.add(upstream_id)
            self._dependents[task_id] = _Dependent(
                _DependentPhase.PREPARED, upstream, function_id, arguments, missing
            )
        return PreparedScalerTask(task_id, None)

    def send(self, prepared: PreparedScalerTask) -> None:  # type: ignore[override]
        """Upload the buffered objects, then fire ``sent`` and hand the Task to
        Scaler's agent (in the calling thread: Scaler's connector is synchronous). A
        dependent whose upstream results are not all in is held until they are."""
        task_id = prepared.task_id
        task_ids = [task_id]
        if not self._commit(task_ids):
            return
        with self._wire_lock:
            if self._client is None or not self._client.sending(task_id):
                return
            events: list[tuple[Any, ...]] = []
            with self._deps_lock:
                if prepared.task is None:
                    task = self._hand_over_locked(task_id, events)
                else:
                    task = prepared.task
                    self._results[task_id] = _Result(_ResultPhase.AWAITING, owned=True)
            for event in events:
                self._delivery.post(event)
            if task is not None:
                self._to_agent(task, task_ids)

    def _hand_over_locked(self, task_id: bytes, events: list[tuple[Any, ...]]) -> Any:
        """A dependent's future was just sent (``_deps_lock`` held): its Task if every
        upstream result is in; else None (held; or ended, its ending in ``events``)."""
        dependent = self._dependents.get(task_id)
        if dependent is None:  # forgotten meanwhile (the connection was lost)
            return None
        if dependent.phase is _DependentPhase.DOOMED:
            dependent.phase = _DependentPhase.ENDED
            assert dependent.ending is not None
            events.append(dependent.ending)
            return None
        # A record now, though held: a task submitted next may name it.
        self._results[task_id] = _Result(_ResultPhase.AWAITING, owned=True)
        if dependent.missing:
            dependent.phase = _DependentPhase.HELD
            return None
        dependent.phase = _DependentPhase.SENT
        return self._dependent_task(task_id, dependent)

    def _dependent_task(self, task_id: bytes, dependent: _Dependent) -> Any:
        """The Task of a dependent whose upstream results are all in (``_deps_lock``
        held; each upstream's record is kept while the dependent holds it)."""
        results = [self._results[upstream_id].object_id for upstream_id in dependent.upstream]
        arguments = [
            Task.Argument(type=Task.Argument.ArgumentType.objectID, data=object_id)
            for object_id in results
        ]
        return self._task(TaskID(task_id), dependent.function_id, arguments + dependent.arguments)

    def _release(self, task_ids: list[bytes]) -> None:
        """Delivery thread: send the held dependents whose upstream results are all
        in (unless their own cancel ended them meanwhile: both under ``_wire_lock``)."""
        with self._wire_lock:
            for task_id in task_ids:
                with self._deps_lock:
                    dependent = self._dependents.get(task_id)
                    if (
                        dependent is None
                        or dependent.phase is not _DependentPhase.HELD
                        or dependent.missing
                    ):
                        continue
                    dependent.phase = _DependentPhase.SENT
                    task = self._dependent_task(task_id, dependent)
                self._to_agent(task, [task_id])

    def send_graph(self, group_id: bytes, prepared: list[PreparedScalerTask]) -> None:  # type: ignore[override]
        """One GraphTask (every member a target), sent whole or not at all."""
        task_ids = [node.task_id for node in prepared]
        if not self._commit(task_ids):
            return
        with self._wire_lock:
            if self._client is None or not self._client.sending_graph(task_ids):
                return
            helpers = [helper for node in prepared for helper in node.helpers]
            dependents: dict[bytes, list[bytes]] = {}
            for node in prepared + helpers:
                for dependency in node.depends_on:
                    dependents.setdefault(dependency, []).append(node.task_id)
            member_ids = frozenset(task_ids)
            graph = _Graph(
                member_ids,
                frozenset(helper.task_id for helper in helpers),
                dependents,
                set(member_ids),
            )
            self._groups[group_id] = graph
            for node in prepared + helpers:
                self._graph_of[node.task_id] = group_id
            with self._deps_lock:
                for task_id in task_ids:
                    self._results[task_id] = _Result(_ResultPhase.AWAITING, owned=False)
            # Helpers are targets too, so that their answers reach this engine.
            graph_task = GraphTask(
                taskId=TaskID(group_id),
                source=self._identity,
                targets=[node.task_id for node in prepared + helpers],
                graph=[node.task for node in prepared + helpers],
            )
            self._to_agent(graph_task, task_ids)

    def send_cancel(self, task_id: bytes, group_id: bytes | None, force: bool = True) -> None:
        """One TaskCancel per task, one per graph (a graph member cancels its graph,
        always forced: a graph is cancelled whole).

        ``force=False``: Scaler's worker refuses it for a running task, and Scaler's
        scheduler absorbs that refusal (the client is never told). So a result that
        arrives for a task whose non-forced cancel is unanswered is delivered as what
        it proves, a refusal (the task had started): ``cancel_failed``, then the
        result. A task that runs past the deadline ends ``TIMED_OUT``.

        A dependent still held (never sent) is cancelled here: ``canceled``, with
        no TaskCancel; its upstream runs on.
        """
        with self._wire_lock:
            events: list[tuple[Any, ...]] = []
            with self._deps_lock:
                dependent = self._dependents.get(task_id)
                if dependent is not None and dependent.phase is _DependentPhase.HELD:
                    events = self._end_waiting_locked([task_id], _cancelled)
                elif dependent is not None and dependent.phase is _DependentPhase.ENDED:
                    return  # never sent, and its end is on its way: nothing to cancel
                else:
                    record = self._results.get(task_id)
                    if record is not None and record.phase is _ResultPhase.AWAITING:
                        forced = force or group_id is not None
                        record.phase = (
                            _ResultPhase.CANCEL_ASKED if forced else _ResultPhase.SOFT_CANCEL_ASKED
                        )
            if events:
                for event in events:
                    self._delivery.post(event)
                return
            if group_id is None:
                if not force:
                    self._soft_cancels.add(task_id)
                self._send_cancel_to(task_id, force)
            else:
                self._asked.add(task_id)
                if not self._group_cancels.get(group_id):
                    self._send_cancel_to(group_id, True)

    def forget(self, task_id: bytes) -> None:
        """A graph is forgotten once its last member is terminal. A dependent lets go
        of its upstreams' results, and a result object nobody holds any more is
        deleted; an upstream that ended without a result ends its held dependents
        cancelled (its cancel timed out)."""
        self._soft_cancels.discard(task_id)
        self._asked.discard(task_id)
        events: list[tuple[Any, ...]] = []
        deletes: list[ObjectID] = []
        with self._deps_lock:
            dependent = self._dependents.pop(task_id, None)
            if dependent is not None:
                for upstream_id in dependent.upstream:
                    upstream = self._results.get(upstream_id)
                    if upstream is not None:
                        upstream.holders.discard(task_id)
                        if upstream.phase is _ResultPhase.LENT and not upstream.holders:
                            self._drop_result_locked(upstream_id, deletes)
            record = self._results.get(task_id)
            if record is not None:
                if record.phase is _ResultPhase.KEPT and record.holders:
                    record.phase = _ResultPhase.LENT
                elif record.phase is _ResultPhase.KEPT:
                    self._drop_result_locked(task_id, deletes)
                elif record.phase is not _ResultPhase.LENT:
                    del self._results[task_id]
                    events = self._end_waiting_locked(record.holders, _cancelled)
        for event in events:
            self._delivery.post(event)
        for object_id in deletes:
            self._delete_soon(object_id)
        group_id = self._graph_of.get(task_id)
        if group_id is None:
            return
        graph = self._groups.get(group_id)
        if graph is None:
            return
        graph.live.discard(task_id)
        if not graph.live:
            self._end_group(group_id)

    def _drop_result_locked(self, task_id: bytes, deletes: list[ObjectID]) -> None:
        """Nobody needs ``task_id``'s kept result any more (``_deps_lock`` held)."""
        record = self._results.pop(task_id)
        if record.owned and record.object_id is not None:
            deletes.append(record.object_id)

    def _end_waiting_locked(
        self, task_ids: Iterable[bytes], ending: Callable[[bytes], tuple[Any, ...]]
    ) -> list[tuple[Any, ...]]:
        """End the dependents among ``task_ids`` that were not sent, and theirs in
        turn, as ``ending(task_id)`` (a delivery event) says (``_deps_lock`` held).
        One held returns its event; one not sent yet (``send`` to come) is DOOMED
        and gets it when sent. Sent, ended or gone ones are left alone."""
        events: list[tuple[Any, ...]] = []
        stack = list(task_ids)
        while stack:
            task_id = stack.pop()
            dependent = self._dependents.get(task_id)
            if dependent is None:
                continue
            if dependent.phase is _DependentPhase.PREPARED:
                dependent.phase = _DependentPhase.DOOMED
                dependent.ending = ending(task_id)
            elif dependent.phase is _DependentPhase.HELD:
                dependent.phase = _DependentPhase.ENDED
                events.append(ending(task_id))
                # It will never have a result: what names it ends the same way.
                record = self._results.pop(task_id, None)
                if record is not None:
                    stack.extend(record.holders)
        return events

    def _delete_soon(self, object_id: ObjectID) -> Any:
        """Delete a kept result object on the agent's loop (never waited for here; the
        ``concurrent.futures.Future`` of it, or None if the agent is gone, and with it
        this client's objects)."""
        try:
            return self._bridge.run_in_agent(self._delete(object_id))
        except Exception:
            LOGGER.debug("Scaler client: result object not deleted", exc_info=True)
            return None

    async def _delete(self, object_id: ObjectID) -> None:
        try:
            storage = await self._bridge.object_storage_connector()
            await storage.delete_object(object_id)
        except Exception:
            LOGGER.debug("Scaler client: result object not deleted", exc_info=True)

    def _end_group(self, group_id: bytes) -> None:
        graph = self._groups.pop(group_id, None)
        self._group_cancels.pop(group_id, None)
        if graph is not None:
            self._ended_groups.append(group_id)
            for task_id in graph.members | graph.helpers:
                self._graph_of.pop(task_id, None)

    def close(self) -> None:
        """Disconnect Scaler's client if this engine made it (else hand its future
        manager back), and stop the delivery thread."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        if self._scaler is not None and self._originals:
            if self._owns_scaler:
                try:
                    self._scaler.disconnect()
                except Exception:
                    LOGGER.exception("Scaler client: disconnect failed")
            else:
                for name in self._originals:
                    delattr(self._manager, name)
        self._delivery.stop()

    def on_io_thread(self) -> bool:
        """True on the delivery thread (where triggers fire and callbacks run)."""
        return self._delivery.is_current()

    # ------------------------------------------------------------------ submitting

    def _task(self, task_id: TaskID, function_id: ObjectID, arguments: list[Any]) -> Any:
        return Task(
            taskId=task_id,
            source=self._identity,
            metadata=self._metadata,
            funcObjectId=function_id,
            functionArgs=arguments,
            capabilities=[],
        )

    def _buffer_function(self, function: Any, fn: Any) -> ObjectID:
        try:
            return self._buffer.buffer_send_function(function).object_id
        except Exception as error:
            raise TypeError(
                f"cannot serialize the function {fn!r} for submit(): {error}"
            ) from error

    def _buffer_argument(self, arg: Any, index: int, fn: Any) -> Any:
        if isinstance(arg, ObjectReference):  # Scaler's send_object(): already stored
            object_id = arg.object_id
        else:
            try:
                cache = self._buffer.buffer_send_object(arg, None, reserialize=False, dedup=True)
            except Exception as error:
                raise TypeError(
                    f"cannot serialize argument {index} of {getattr(fn, '__name__', fn)!r} "
                    f"for submit(): {error}"
                ) from error
            object_id = cache.object_id
        return Task.Argument(type=Task.Argument.ArgumentType.objectID, data=object_id)

    def _graph_argument(
        self,
        arg: Any,
        index: int,
        fn: Any,
        task_ids: dict[Any, TaskID],
        helpers: list[PreparedScalerTask],
    ) -> Any:
        if type(arg) is KeyRef:
            return Task.Argument(type=Task.Argument.ArgumentType.task, data=task_ids[arg.key])
        if isinstance(arg, (list, tuple)) and _holds_a_ref(arg):
            # Scaler passes whole arguments only: a hidden task builds the list (tuple).
            items = [
                self._graph_argument(item, position, fn, task_ids, helpers)
                for position, item in enumerate(arg)
            ]
            helper_id = TaskID.generate_task_id()
            build = _HELPERS["as_list" if isinstance(arg, list) else "as_tuple"]
            task = self._task(helper_id, self._buffer_function(build, fn), items)
            helpers.append(PreparedScalerTask(helper_id, task, _task_arguments(items)))
            return Task.Argument(type=Task.Argument.ArgumentType.task, data=helper_id)
        return self._buffer_argument(arg, index, fn)

    def _commit(self, task_ids: list[bytes]) -> bool:
        """Upload what ``prepare`` buffered; False (the tasks lost) if Scaler's client
        is gone."""
        try:
            with self._buffer_lock:
                self._buffer.commit_send_objects()
            return True
        except Exception as error:
            self._lost_before_sending(task_ids, error)
            return False

    def _to_agent(self, message: Any, task_ids: list[bytes]) -> None:
        try:
            self._connector.send(message)
        except Exception as error:
            self._lost_before_sending(task_ids, error)
            return
        if self._stop_event.is_set():
            # The agent stopped while this went out; its own report may have missed
            # these futures (they were registered after it looked).
            self._delivery.post(("lost", "the Scaler client stopped"))

    def _lost_before_sending(self, task_ids: list[bytes], error: BaseException) -> None:
        if self._client is not None:
            self._client.count("io_errors")
            why = f"cannot send to the Scaler scheduler at {self.address}: {error!r}"
            self._client.deliver_connection_lost(why, task_ids)

    def _send_cancel_to(self, target: bytes, force: bool) -> None:
        if target in self._groups:
            self._group_cancels[target] = self._group_cancels.get(target, 0) + 1
        message = TaskCancel(taskId=TaskID(target), flags=TaskCancel.TaskCancelFlags(force=force))
        try:
            self._connector.send(message)
        except Exception:
            # The agent is gone: the connection loss resolves the future (the client's
            # cancel deadline covers the rest).
            LOGGER.debug("Scaler client: TaskCancel not sent", exc_info=True)
            if self._client is not None:
                self._client.count("io_errors")

    # ------------------------------------------------------------------ agent thread

    def _on_task_result(self, result: TaskResult) -> None:
        """Hook (Scaler's agent loop): start fetching the result object; never raises."""
        try:
            task_id = result.taskId
            if task_id in self._manager._task_id_to_future:
                self._originals["on_task_result"](result)
                return
            if self._is_umbrella(task_id):  # the graph is over; its members said so
                return
            if self._is_helper(task_id):  # its result feeds a member, in the cluster
                return
            kind = result.resultType
            single = len(result.results) == 1
            object_id = ObjectID(result.results[0]) if single else None
            success = kind == TaskResultType.success and object_id is not None
            with self._deps_lock:
                keep, dependents, events = self._arrived_locked(
                    task_id, object_id if success else None
                )
            for event in events:
                self._delivery.post(event)
            if kind == TaskResultType.failedWorkerDied:
                self._delivery.post(("exception", task_id, _worker_died(task_id, None), dependents))
                return
            if object_id is None:
                error = TaskFailedError(
                    f"Scaler sent {len(result.results)} result objects for task "
                    f"{task_id.hex()} (expected 1)"
                )
                self._delivery.post(("exception", task_id, error, dependents))
                return
            # Scaler deletes a plain task's result once fetched; a graph member's may
            # still feed another member (the scheduler cleans those up), and one kept
            # for dependents is deleted when the last of them is forgotten.
            delete = task_id not in self._graph_of and not keep
            coroutine = self._fetch(task_id, object_id, not success, delete, dependents)
            self._agent_loop().create_task(coroutine)
        except Exception:
            LOGGER.exception("Scaler engine: failed to handle %r", result)
            self._count_soon("io_errors")

    def _arrived_locked(
        self, task_id: bytes, object_id: ObjectID | None
    ) -> tuple[bool, tuple[bytes, ...], list[tuple[Any, ...]]]:
        """A TaskResult for ``task_id`` (``object_id``: a success's result object;
        ``_deps_lock`` held, agent loop): ``(keep the object, the dependents a failure
        ends, events to post)``. Decided here, in the order the agent receives results
        and cancel confirms, so a dependent never runs on a result its upstream's
        future will not keep."""
        record = self._results.get(task_id)
        if record is None:
            return False, (), []
        phase = record.phase
        if phase in (_ResultPhase.KEPT, _ResultPhase.LENT):
            return False, (), []  # a duplicate: the first one stands
        if phase is _ResultPhase.CANCEL_ASKED:
            # The forced cancel's answer: the future ends cancelled, result or not.
            del self._results[task_id]
            return False, (), self._end_waiting_locked(record.holders, _cancelled)
        if object_id is None:  # failed: the dependents fail with its error (delivery)
            del self._results[task_id]
            return False, tuple(record.holders), []
        if not record.holders:  # nobody named it: delete it once fetched, as ever
            del self._results[task_id]
            return False, (), []
        record.phase = _ResultPhase.KEPT
        record.object_id = object_id
        ready = []
        for dependent_id in record.holders:
            dependent = self._dependents.get(dependent_id)
            if dependent is None:
                continue
            dependent.missing.discard(task_id)
            if dependent.phase is _DependentPhase.HELD and not dependent.missing:
                ready.append(dependent_id)
        # The delivery thread sends them: never a send on the agent's own loop.
        return True, (), [("release", ready)] if ready else []

    async def _fetch(
        self,
        task_id: TaskID,
        object_id: ObjectID,
        failed: bool,
        delete: bool,
        dependents: tuple[bytes, ...],
    ) -> None:
        try:
            storage = await self._bridge.object_storage_connector()
            payload = await storage.get_object(object_id)
            if delete:
                await storage.delete_object(object_id)
        except Exception as error:
            self._delivery.post(
                (
                    "exception",
                    task_id,
                    TaskFailedError(
                        f"the result of task {task_id.hex()} could not be fetched: {error!r}"
                    ),
                    dependents,
                )
            )
            return
        self._delivery.post(("payload", task_id, payload, failed, dependents))

    def _on_task_cancel_confirm(self, confirm: TaskCancelConfirm) -> None:
        """Hook (Scaler's agent loop): queue the answer; never raises."""
        try:
            task_id = confirm.taskId
            if task_id in self._manager._task_id_to_future:
                self._originals["on_task_cancel_confirm"](confirm)
                return
            kind = _CONFIRM_KINDS.get(confirm.cancelConfirmType)
            if kind is None:
                raise ProtocolError(f"unknown cancel confirm type {confirm.cancelConfirmType!r}")
            if self._is_umbrella(task_id):
                if kind == "not_found":
                    self._graph_cancel_not_found(task_id)
                return
            group_id = self._graph_of.get(task_id)
            if group_id is not None and kind != "cancel_failed":
                self._unreachable(group_id, task_id)
            if self._is_helper(task_id):
                return
            if kind == "cancel_failed":
                # The task runs on and its result must still get through the agent.
                _resolve(self._scaler, _AGENT_TASK_IDS).add(task_id)
            with self._deps_lock:
                events = self._confirmed_locked(task_id, kind, group_id is not None)
            self._delivery.post(("confirm", task_id, kind))
            for event in events:
                self._delivery.post(event)
        except Exception:
            LOGGER.exception("Scaler engine: failed to handle %r", confirm)
            self._count_soon("io_errors")

    def _is_umbrella(self, task_id: bytes) -> bool:
        return task_id in self._groups or task_id in self._ended_groups

    def _is_helper(self, task_id: bytes) -> bool:
        group_id = self._graph_of.get(task_id)
        graph = None if group_id is None else self._groups.get(group_id)
        return graph is not None and task_id in graph.helpers

    def _graph_cancel_not_found(self, group_id: TaskID) -> None:
        """The graph's TaskCancel reached the scheduler before the graph (Scaler queues
        a GraphTask before registering it): send it again while the graph has live
        members, a bounded number of times (the client's deadline covers the rest)."""
        graph = self._groups.get(group_id)
        if graph is None or not graph.live:
            return
        if self._group_cancels.get(group_id, 0) > _MAX_GROUP_CANCEL_RESENDS:
            return
        # The agent forgot the graph's id on this answer; it must let the next through.
        _resolve(self._scaler, _AGENT_TASK_IDS).add(group_id)
        with self._wire_lock:
            self._send_cancel_to(group_id, True)

    def _unreachable(self, group_id: bytes, task_id: bytes) -> None:
        """``task_id`` was cancelled inside its graph, so every member that takes its
        result will never run. Scaler's scheduler (2.9) never answers for those (it
        stops dispatching the graph and confirms only what was ready or running):
        answer ``canceled`` for them here."""
        graph = self._groups.get(group_id)
        if graph is None:
            return
        for member in graph.unreachable(task_id):
            if member in graph.live:
                with self._deps_lock:
                    events = self._confirmed_locked(member, "canceled", True)
                self._delivery.post(("confirm", member, "canceled"))
                for event in events:
                    self._delivery.post(event)

    def _confirmed_locked(
        self, task_id: bytes, answer: str, graph_member: bool
    ) -> list[tuple[Any, ...]]:
        """A cancel answer for ``task_id`` (``_deps_lock`` held, agent loop): the
        events that end its waiting dependents cancelled, if the answer ends its
        future cancelled (as ``_deliver`` maps it)."""
        record = self._results.get(task_id)
        if record is None or record.phase in (_ResultPhase.KEPT, _ResultPhase.LENT):
            return []
        if answer == "cancel_failed":  # the task runs on
            record.phase = _ResultPhase.AWAITING
            return []
        asked = record.phase is not _ResultPhase.AWAITING
        if answer == "canceled" or asked or graph_member:
            del self._results[task_id]
            return self._end_waiting_locked(record.holders, _cancelled)
        return []  # not_found, nobody asked: stale for its future too

    def _on_agent_stopped(self, exception: Exception) -> None:
        """Hook (Scaler's agent): the connection is over; every live future is lost."""
        try:
            self._originals["set_all_futures_with_exception"](exception)
        except Exception:
            LOGGER.exception("Scaler engine: Scaler's futures could not be resolved")
        self._delivery.post(("lost", f"{type(exception).__name__}: {exception}"))

    def _watch_agent(self) -> None:
        self._agent.join()
        self._delivery.post(("lost", "the Scaler client agent stopped"))

    def _agent_loop(self) -> Any:
        import asyncio

        return asyncio.get_running_loop()

    def _count_soon(self, stat: str) -> None:
        self._delivery.post(("count", stat))

    # ------------------------------------------------------------------ delivery thread

    def _deliver(self, event: tuple[Any, ...]) -> None:
        """One event as a delivery (on the delivery thread, under the guard)."""
        client = self._client
        assert client is not None
        kind, task_id = event[0], event[1]
        if kind == "lost":
            with self._deps_lock:
                for dependent in self._dependents.values():
                    if dependent.phase is _DependentPhase.HELD:  # lost with the rest
                        dependent.phase = _DependentPhase.ENDED
            client.deliver_connection_lost(task_id)
        elif kind == "count":
            client.count(task_id)
        elif kind == "release":
            self._release(task_id)
        elif kind == "confirm":
            answer = event[2]
            self._soft_cancels.discard(task_id)
            if answer == "not_found" and task_id in self._graph_of and task_id not in self._asked:
                # A sibling of the member whose cancel cancelled the graph: Scaler's
                # scheduler dropped its result while cancelling it (the worker then
                # answers not found). Nobody asked this future to cancel, and it will
                # get nothing else: the scheduler cancelled it.
                answer = "canceled"
            self._asked.discard(task_id)
            client.deliver_cancel_answer(task_id, answer)
        else:
            if task_id in self._soft_cancels:
                # A non-forced cancel that got a result instead: the task had started,
                # so Scaler refused it (and told nobody).
                self._soft_cancels.discard(task_id)
                client.deliver_cancel_answer(task_id, "cancel_failed")
            if kind == "exception":
                client.deliver_result(task_id, exception=event[2])
                self._fail_dependents(event[3], lambda: _copy_error(event[2]))
            elif event[3]:  # "payload", failed
                client.deliver_result(task_id, exception=self._failure(task_id, event[2]))
                self._fail_dependents(event[4], lambda: self._failure(task_id, event[2]))
            else:
                try:
                    value = self._serializer.deserialize(event[2])
                except Exception as error:
                    client.deliver_result(
                        task_id,
                        exception=TaskFailedError(
                            f"the result of task {task_id.hex()} could not be deserialized: "
                            f"{error!r}"
                        ),
                    )
                else:
                    client.deliver_result(task_id, value)

    def _fail_dependents(
        self, dependents: tuple[bytes, ...], error: Callable[[], BaseException]
    ) -> None:
        """An upstream failed: its dependents not sent fail with its error (each its
        own copy), and theirs in turn."""
        if not dependents:
            return
        with self._deps_lock:
            events = self._end_waiting_locked(
                dependents, lambda task_id: ("exception", task_id, error(), ())
            )
        for event in events:
            self._delivery.post(event)

    def _failure(self, task_id: bytes, payload: bytes) -> BaseException:
        """The exception of a failed task, with its remote traceback as ``__cause__``."""
        try:
            exception = deserialize_failure(payload)
        except Exception as error:
            return TaskFailedError(
                f"task {task_id.hex()} failed, and its exception could not be read: {error!r}"
            )
        if not isinstance(exception, BaseException):
            return TaskFailedError(f"task {task_id.hex()} failed with {exception!r}")
        if isinstance(exception, scaler_errors.ProcessorDiedError):
            return _worker_died(task_id, exception)
        return attach_remote_traceback(exception)


def _cancelled(task_id: bytes) -> tuple[Any, ...]:
    """The delivery event of a dependent the engine cancels (an unasked answer for an
    upstream's cancel; the asked one for its own cancel while held)."""
    return ("confirm", task_id, "canceled")


def _copy_error(error: BaseException) -> BaseException:
    """``error`` again, for another future (raising one instance in two threads
    would tangle its traceback)."""
    try:
        copied = copy.copy(error)
    except Exception:
        return error
    copied.__cause__ = error.__cause__
    return copied


def _names_a_ref(value: Any) -> bool:
    """``value`` holds a ``KeyRef`` (walking tuples, lists and dict values)."""
    kind = type(value)
    if kind is KeyRef:
        return True
    if kind is tuple or kind is list:
        return any(_names_a_ref(item) for item in value)
    if kind is dict:
        return any(_names_a_ref(item) for item in value.values())
    return False


def _worker_died(task_id: bytes, cause: BaseException | None) -> _ScalerWorkerDiedError:
    detail = f": {cause}" if cause is not None else ""
    error = _ScalerWorkerDiedError(f"the process running task {task_id.hex()} died{detail}")
    error.__cause__ = cause
    return error


def _holds_a_ref(value: Any) -> bool:
    if type(value) is KeyRef:
        return True
    return isinstance(value, (list, tuple)) and any(_holds_a_ref(item) for item in value)


def _task_arguments(arguments: list[Any]) -> tuple[bytes, ...]:
    """The ids of the tasks whose results ``arguments`` take."""
    return tuple(
        TaskID(argument.data)
        for argument in arguments
        if argument.type == Task.Argument.ArgumentType.task
    )
