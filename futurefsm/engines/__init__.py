"""Engines: where a ``Client``'s tasks run. One module per engine behind one small seam.

Theory of operation
-------------------
``Client`` (``futurefsm.client``) is engine-agnostic: it keeps the Executor API, the
registry of live futures, bulk cancel, cancel deadlines, graph parsing, the
all-or-nothing rule for graphs, and the stats. An ``Engine`` is a pure mapper: it
carries tasks and cancels to its scheduler and turns what comes back into
*deliveries by task id* on the ``EngineClient``:

==================================  =================================================
the engine's scheduler says         the engine calls
==================================  =================================================
a task finished (value)             ``client.deliver_result(task_id, value=v)``
a task failed / its worker died     ``client.deliver_result(task_id, exception=e)``
a cancel was answered               ``client.deliver_cancel_answer(task_id, answer)``
                                    (``"canceled" | "not_found" | "cancel_failed"``)
the scheduler is gone               ``client.deliver_connection_lost(why)``
==================================  =================================================

The client looks the future up, fires the table's trigger, and counts a message that
changed nothing (unknown task id, or a stale cell of the table) in
``stats()["stale_messages"]``. An engine never sees a ``TaskFuture``: it reads no
future's state and calls nothing private of a future or of the client. Where its
mapping depends on what was asked (a cancel it sent, with or without ``force``), it
keeps its own record of what it sent.

Sending is two-step so that a future cancelled before its task left is never sent:
right before handing a task over, the engine calls ``client.sending(task_id)`` (or
``client.sending_graph(task_ids)`` for a graph) and sends only if that returned True.

Graphs are parsed once, by the client, into ``GraphNode`` s (dependency order, keys
referenced by ``KeyRef``); an engine maps the nodes to its own graph form in
``prepare_graph``.

Threads. The client calls ``prepare``/``prepare_graph`` in the submitting thread,
``send``/``send_graph``/``send_cancel`` from any thread (the first two under the
client's submit lock: never block there), and the engine delivers from threads of its
own (``on_io_thread`` says which). An engine never raises on a thread that delivers:
a malformed message is counted (``count("protocol_errors")``), a failure to handle one
is logged and counted (``count("io_errors")``); ``futurefsm.engines.shared`` has the
guard, the inbound queue and the remote-traceback shaping every engine needs.

Writing a new engine: subclass ``Engine`` in a module of its own (import the
engine's heavy dependency there only), add it to ``ENGINES`` (or to the
``futurefsm.engines`` entry-point group from another package), and add one entry to
``CLUSTERS`` in ``tests/test_conformance.py`` (how to start its local cluster): that
suite is what every engine owes. ``tests/test_engines.py`` checks that an engine
module imports neither the client nor the FSM and touches no future.

Engines are named in ``ENGINES``; ``get_engine(name)`` imports one on demand, so
``import futurefsm`` imports no engine's heavy dependency.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

__all__ = [
    "ENGINES",
    "CancelAnswer",
    "Engine",
    "EngineClient",
    "GraphNode",
    "KeyRef",
    "Prepared",
    "get_engine",
]


ENGINES: dict[str, str] = {
    "futurefsm": "futurefsm.engines.futurefsm:FutureFSMEngine",
    "scaler": "futurefsm.engines.scaler:ScalerEngine",
    "dask": "futurefsm.engines.dask:DaskEngine",
    "ray": "futurefsm.engines.ray:RayEngine",
}
"""Known engine names -> ``module:Class``."""

_ENTRY_POINT_GROUP = "futurefsm.engines"

CancelAnswer = Literal["canceled", "not_found", "cancel_failed"]
"""A scheduler's answer to a TaskCancel: it cancelled the task, did not know it (it
finished or never arrived), or refused (the task runs on)."""


# ---------------------------------------------------------------------- graphs


@dataclass(frozen=True, slots=True)
class KeyRef:
    """In a ``GraphNode``'s arguments: "the result of the node with this key"."""

    key: Hashable


@dataclass(frozen=True, slots=True)
class GraphNode:
    """One task of a graph, as the client parsed it (engine-neutral).

    The call is ``function(*args)``. In ``args``, a ``KeyRef(k)`` stands for the
    result of node ``k``: at the top level, inside lists, and inside nested tasks. A
    nested task is a plain tuple ``(callable, *args)`` (Dask's form), evaluated on the
    worker, depth first, before ``function`` is called; ``shared.flatten_nested``
    turns a node with nested tasks into one plain call, for an engine whose scheduler
    cannot evaluate them. Any other tuple, list or dict is a value.
    """

    key: Hashable
    """The graph's key for this task (the user's; not a task id)."""
    function: Callable[..., Any]
    args: tuple[Any, ...]
    dependencies: tuple[Hashable, ...]
    """The keys whose ``KeyRef`` appear in ``args`` (each once, in order of appearance);
    every one of them comes earlier in the list the client passes to ``prepare_graph``."""


# ---------------------------------------------------------------------- the seam


class Prepared(Protocol):
    """A task made ready to send by ``Engine.prepare`` (engine-specific), with its id."""

    task_id: bytes
    """The id the engine's scheduler knows the task by; the future's ``task_id``,
    unique among the client's live futures, and the id of every delivery for it."""


class EngineClient(Protocol):
    """The client, as an engine sees it: the settings, two send gates, deliveries.

    Every method may be called from any thread and never raises for a stale or
    unknown task id (that is counted as a stale message). Deliveries fire the
    future's done-callbacks in the calling thread, so call them from the engine's
    delivery thread (``Engine.on_io_thread``), never holding a lock of the engine's
    that a callback's ``submit``/``cancel`` would need.
    """

    cancel_timeout: float
    """Default seconds a cancel waits for its answer (the client enforces it)."""
    connection_timeout: float
    """Seconds within which ``start`` must reach the scheduler, and after which a
    silent scheduler is taken as lost."""
    heartbeat_interval: float
    """Seconds between the engine's liveness checks (its transport's heartbeats)."""

    def sending(self, task_id: bytes) -> bool:
        """The task is being handed over now: True means send it; False means its
        future was cancelled before sending (or is gone) and nothing may be sent."""
        ...

    def sending_graph(self, task_ids: Sequence[bytes]) -> bool:
        """The graph of these members is being handed over now: True means send all of
        it; False means a member was cancelled before sending, every member is now
        cancelled, and nothing may be sent (all or nothing)."""
        ...

    def deliver_result(
        self, task_id: bytes, value: Any = None, exception: BaseException | None = None
    ) -> None:
        """The task finished: with ``value``, or failed with ``exception`` (the task's
        own, with its remote traceback as ``__cause__`` — see
        ``shared.attach_remote_traceback`` — or a ``WorkerDiedError`` /
        ``TaskFailedError``). For a future still cancelling, this is the result that
        raced the cancel: the value is discarded, so ``value`` may then be None."""
        ...

    def deliver_cancel_answer(self, task_id: bytes, answer: CancelAnswer) -> None:
        """The scheduler answered a cancel of the task. An answer nobody asked for
        (``"canceled"`` for a graph member cancelled with its graph, or by another
        client) is delivered as it is: the table knows what it means. Any other
        ``answer`` raises ``ProtocolError`` (the ``NeverRaise`` guard counts it)."""
        ...

    def deliver_connection_lost(self, why: str, task_ids: Sequence[bytes] | None = None) -> None:
        """The scheduler is gone (``why`` ends each ``ConnectionLostError``): every live
        future (or only those of ``task_ids``: tasks that could not be sent) ends."""
        ...

    def count(self, stat: str) -> None:
        """Add one to a counter of ``stats()``: ``"protocol_errors"`` (a malformed
        message), ``"io_errors"`` (a failure handling or sending one),
        ``"stale_messages"`` (a message for an engine-side record that is gone)."""
        ...


class Engine(ABC):
    """One engine: submits tasks and graphs, sends cancels, delivers what comes back.

    Lifecycle: ``from_address`` (or the constructor) configures, ``start`` connects,
    ``close`` ends. ``prepare*`` run in the submitting thread and may block
    (serializing); every other method may be called from any thread and must not
    block for long.
    """

    address: str
    """The scheduler's address (shown in errors and ``repr(client)``)."""

    @classmethod
    @abstractmethod
    def from_address(cls, address: str | None, **options: Any) -> Engine:
        """The engine for a scheduler at ``address`` (``Client(address, engine=name,
        **options)``); ``ValueError`` / ``TypeError`` naming a bad option."""

    @abstractmethod
    def start(self, client: EngineClient) -> None:
        """Connect and start delivering to ``client``.

        An address where nothing answers is a ``ConnectionError`` naming the address
        within ``client.connection_timeout`` + 1 s: raised here (nothing left
        running), or, by an engine that connects lazily and keeps reconnecting, by
        every future submitted meanwhile (``deliver_connection_lost(why, task_ids)``
        with ``why`` naming the address: a ``ConnectionLostError``)."""

    @abstractmethod
    def prepare(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Prepared:
        """Serialize one call (``TypeError`` naming what cannot be serialized) and
        choose its task id. Nothing is sent yet."""

    @abstractmethod
    def prepare_graph(self, nodes: Sequence[GraphNode], group_id: bytes) -> list[Prepared]:
        """One ``Prepared`` per node, in the same order (dependencies first). The graph
        is one group: a cancel of any member (``send_cancel`` with this ``group_id``)
        cancels all of it. ``TypeError`` naming what cannot be serialized."""

    @abstractmethod
    def send(self, prepared: Prepared) -> None:
        """Queue the task. When it is handed over, call ``client.sending(task_id)``
        first and send only if it returned True. Must not block."""

    @abstractmethod
    def send_graph(self, group_id: bytes, prepared: list[Prepared]) -> None:
        """Queue the graph (``prepare_graph``'s list). When it is handed over, call
        ``client.sending_graph(task_ids)`` first: True, send it whole; False, send
        nothing. Must not block."""

    @abstractmethod
    def send_cancel(self, task_id: bytes, group_id: bytes | None, force: bool = True) -> None:
        """Send a cancel for the task (a graph member, ``group_id`` set: its whole
        graph, forced). ``force=False``: only if it has not started (a running task is
        refused: ``cancel_failed``). Queued behind anything sent before; its answer is
        ``deliver_cancel_answer`` (or ``deliver_result`` if the result won); the
        deadline is the client's. Must not block."""

    def forget(self, task_id: bytes) -> None:  # noqa: B027 (optional hook)
        """The task's future is terminal: drop what the engine kept for it."""

    @abstractmethod
    def close(self) -> None:
        """Disconnect and stop (the engine's scheduler too, if it started one);
        afterwards nothing is delivered. Idempotent; callable from ``on_io_thread``."""

    @abstractmethod
    def on_io_thread(self) -> bool:
        """True on a thread that delivers (a future never blocks waiting there)."""


def get_engine(name: str) -> type[Engine]:
    """The engine class called ``name``; ``ValueError`` listing the known names."""
    target = ENGINES.get(name)
    if target is None:
        target = _from_entry_points(name)
    if target is None:
        known = sorted(set(ENGINES) | set(_entry_point_names()))
        raise ValueError(f"unknown engine {name!r}; known engines: {', '.join(known)}")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError(
            f"engine {name!r} needs an optional dependency: "
            f"pip install 'futurefsm[{name}]' ({error})"
        ) from error
    engine_class: type[Engine] = getattr(module, class_name)
    return engine_class


def _entry_points() -> list[Any]:
    from importlib.metadata import entry_points

    return list(entry_points(group=_ENTRY_POINT_GROUP))


def _entry_point_names() -> list[str]:
    return [entry_point.name for entry_point in _entry_points()]


def _from_entry_points(name: str) -> str | None:
    for entry_point in _entry_points():
        if entry_point.name == name:
            return str(entry_point.value)
    return None
