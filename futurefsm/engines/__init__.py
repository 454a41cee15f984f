"""Engines: where a ``Client``'s tasks run. One module per engine behind one small seam.

Theory of operation
-------------------
``Client`` (``futurefsm.client``) is engine-agnostic: it keeps the Executor API, the
registry of live futures, bulk cancel, cancel deadlines, the graph facade and the
stats. An ``Engine`` carries tasks and cancels to a scheduler and turns what comes
back into the table's triggers on the futures:

- ``future.recv_result(result, exception)`` for a finished task (any status);
- ``future.recv_cancel_confirm("canceled" | "not_found" | "cancel_failed")``;
- ``client.connection_lost(why)`` when the scheduler is gone.

That mapping happens in the engine module and nowhere else; ``TaskFuture``, the FSM
and the table are the same on every engine. An engine never raises on the thread
that delivers its events: a malformed or stale message is counted and logged.

Engines are named in ``ENGINES`` (and in the ``futurefsm.engines`` entry-point group,
for engines shipped elsewhere); ``get_engine(name)`` imports one on demand, so
``import futurefsm`` imports no engine's heavy dependency.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..client.future import TaskFuture

__all__ = ["ENGINES", "Engine", "EngineClient", "Prepared", "get_engine"]


ENGINES: dict[str, str] = {
    "futurefsm": "futurefsm.engines.futurefsm:FutureFSMEngine",
    "scaler": "futurefsm.engines.scaler:ScalerEngine",
    "dask": "futurefsm.engines.dask:DaskEngine",
}
"""Known engine names -> ``module:Class``."""

_ENTRY_POINT_GROUP = "futurefsm.engines"


class Prepared(Protocol):
    """A task made ready to send by ``Engine.prepare``: engine-specific, with an id."""

    task_id: bytes
    """The id the engine's scheduler knows the task by (the future's ``task_id``)."""


class EngineClient(Protocol):
    """The client, as an engine sees it: the registry, the settings, three reports."""

    futures: dict[bytes, TaskFuture]
    """Live (non-terminal) futures by task id."""
    cancel_timeout: float
    connection_timeout: float
    heartbeat_interval: float

    def stale(self, message: object) -> None:
        """Count and debug-log a message that changed nothing (a stale cell)."""
        ...

    def count(self, stat: str) -> None:
        """Add one to a counter of ``stats()`` (``protocol_errors``, ``io_errors``)."""
        ...

    def connection_lost(self, why: str) -> None:
        """Fire ``connection_lost`` on every live future."""
        ...


class Engine(ABC):
    """One engine: submits tasks and graphs, sends cancels, delivers inbound events.

    Every method but ``prepare*`` may be called from any thread and must not block for
    long. ``start`` is called once by the client before anything else.
    """

    address: str
    """The scheduler's address."""

    @classmethod
    @abstractmethod
    def from_address(cls, address: str | None, **options: Any) -> Engine:
        """The engine for a scheduler at ``address`` (``Client(address, engine=name)``)."""

    @abstractmethod
    def start(self, client: EngineClient) -> None:
        """Connect, start any threads, and deliver inbound events to ``client``."""

    @abstractmethod
    def prepare(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Prepared:
        """In the submitting thread: serialize one call (``TypeError`` naming what
        cannot be serialized) and choose its task id."""

    @abstractmethod
    def prepare_graph(
        self, graph: Mapping[Hashable, Any], order: list[Hashable], group_id: bytes
    ) -> list[Prepared]:
        """One ``Prepared`` per key of ``order`` (dependency order) of a Dask-style graph."""

    @abstractmethod
    def send(self, future: TaskFuture, prepared: Prepared) -> None:
        """Queue the task. When it is handed over, fire ``future.sent()`` first and send
        only if that cell was not ``STALE`` (cancelled before sending)."""

    @abstractmethod
    def send_graph(self, group_id: bytes, members: list[tuple[TaskFuture, Prepared]]) -> None:
        """Queue a graph's tasks: sent whole, or (a member cancelled first) not at all."""

    @abstractmethod
    def send_cancel(self, futures: list[TaskFuture], force: bool = True) -> None:
        """Send one TaskCancel per future (the group's, for a graph member).
        Deadlines are the client's business."""

    def forget(self, future: TaskFuture) -> None:  # noqa: B027 (optional hook)
        """``future`` is terminal: drop any engine-side state kept for it."""

    @abstractmethod
    def close(self) -> None:
        """Disconnect and stop; afterwards nothing is delivered. Idempotent."""

    @abstractmethod
    def on_io_thread(self) -> bool:
        """True on a thread that delivers inbound events (a future never blocks there)."""


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
