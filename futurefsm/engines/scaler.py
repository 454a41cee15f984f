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

Private attributes of Scaler's client are unavoidable here; they are listed in
``PRIVATE_ATTRIBUTES``, checked when the engine starts (an upgrade that moves one
fails at once, naming it), and the supported versions are pinned in the ``scaler``
extra of ``pyproject.toml``.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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

from ..errors import TaskFailedError, WorkerDiedError
from ..protocol import ProtocolError
from . import Engine, EngineClient, GraphNode, KeyRef
from .shared import (
    DeliveryThread,
    NeverRaise,
    attach_remote_traceback,
    connect_within,
    flatten_nested,
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


# Graph helpers run on the workers, which need not have futurefsm installed: they
# live in a module that cannot be imported, so cloudpickle sends them by value.
_HELPERS: dict[str, Any] = {"__name__": "_futurefsm_scaler_graph_helpers"}
exec(
    "def as_list(*items):\n    return list(items)\n\ndef as_tuple(*items):\n    return items\n",
    _HELPERS,
)


@dataclass(frozen=True, slots=True)
class PreparedScalerTask:
    """A Scaler ``Task`` built in the submitting thread (its objects buffered)."""

    task_id: bytes
    task: Any
    depends_on: tuple[bytes, ...] = ()
    """Graph only: the tasks whose results this one takes (members or helpers)."""
    helpers: tuple[PreparedScalerTask, ...] = ()
    """Graph only: hidden tasks that build list arguments naming other members."""


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

    def send(self, prepared: PreparedScalerTask) -> None:  # type: ignore[override]
        """Upload the buffered objects, then fire ``sent`` and hand the Task to
        Scaler's agent (in the calling thread: Scaler's connector is synchronous)."""
        task_ids = [prepared.task_id]
        if not self._commit(task_ids):
            return
        with self._wire_lock:
            if self._client is not None and self._client.sending(prepared.task_id):
                self._to_agent(prepared.task, task_ids)

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
        """
        with self._wire_lock:
            if group_id is None:
                if not force:
                    self._soft_cancels.add(task_id)
                self._send_cancel_to(task_id, force)
            else:
                self._asked.add(task_id)
                if not self._group_cancels.get(group_id):
                    self._send_cancel_to(group_id, True)

    def forget(self, task_id: bytes) -> None:
        """A graph is forgotten once its last member is terminal."""
        self._soft_cancels.discard(task_id)
        self._asked.discard(task_id)
        group_id = self._graph_of.get(task_id)
        if group_id is None:
            return
        graph = self._groups.get(group_id)
        if graph is None:
            return
        graph.live.discard(task_id)
        if not graph.live:
            self._end_group(group_id)

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
            if kind == TaskResultType.failedWorkerDied:
                self._delivery.post(("exception", task_id, _worker_died(task_id, None)))
                return
            if len(result.results) != 1:
                self._delivery.post(
                    (
                        "exception",
                        task_id,
                        TaskFailedError(
                            f"Scaler sent {len(result.results)} result objects for task "
                            f"{task_id.hex()} (expected 1)"
                        ),
                    )
                )
                return
            object_id = ObjectID(result.results[0])
            # Scaler deletes a plain task's result once fetched; a graph member's may
            # still feed another member (the scheduler cleans those up).
            delete = task_id not in self._graph_of
            coroutine = self._fetch(task_id, object_id, kind != TaskResultType.success, delete)
            self._agent_loop().create_task(coroutine)
        except Exception:
            LOGGER.exception("Scaler engine: failed to handle %r", result)
            self._count_soon("io_errors")

    async def _fetch(
        self, task_id: TaskID, object_id: ObjectID, failed: bool, delete: bool
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
                )
            )
            return
        self._delivery.post(("payload", task_id, payload, failed))

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
            self._delivery.post(("confirm", task_id, kind))
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
                self._delivery.post(("confirm", member, "canceled"))

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
            client.deliver_connection_lost(task_id)
        elif kind == "count":
            client.count(task_id)
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
            elif event[3]:  # "payload", failed
                client.deliver_result(task_id, exception=self._failure(task_id, event[2]))
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
