"""The one shared ``transitions`` machine that drives every future.

Why one machine, and why these two small subclasses
---------------------------------------------------
A ``transitions.Machine`` per future costs about 17x a stdlib future's lifecycle, and
a shared machine's ``add_model``/``remove_model`` scan a Python list (O(n) per future).
So, as the transitions FAQ suggests for many models, a single class-level machine is
built once from ``TRANSITION_TABLE`` with ``model=None`` and ``auto_transitions=False``,
and each future is a model whose events are fired directly through
``MACHINE.events[trigger].trigger(model)``. No model is ever added to the machine's
list, so nothing is O(n) and nothing keeps a finished future alive.

The table's transitions carry no conditions or callbacks: the side effects of a cell
(send a TaskCancel, resolve the future) are returned to the caller as an ``Effect``,
because they are I/O and must run outside the future's lock. ``_TableEvent`` and
``_TableTransition`` are the machine's ``event_cls`` and ``transition_cls`` and use that:
they skip the empty callback chains and the per-step logging of the generic path
(measured: a lifecycle of two triggers fell from about 6x to about 1.7x a stdlib
future). They refuse callbacks, so nothing can be added that they would skip.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple, Protocol

from transitions import Machine
from transitions.core import Event, EventData, MachineError, Transition

from .table import TRANSITION_TABLE, Cell, FutureState, Trigger

__all__ = [
    "HISTORY_SELF_LOOP_LIMIT",
    "MACHINE",
    "FSMModel",
    "FutureMachine",
    "HistoryEntry",
    "Model",
    "fire",
    "history_of",
]

HISTORY_SELF_LOOP_LIMIT = 32
"""Self-loops (stale messages, cancels that change nothing) are recorded in a history
only while it is shorter than this, so a flood of duplicate messages or repeated
``cancel()`` calls cannot grow a future without bound. Real transitions are always
recorded, and there are at most a few of them per cancel request."""


class Model(Protocol):
    """What the machine needs of a model: its state and a list to record history in."""

    state: FutureState
    fsm_history: list[tuple[float, Trigger, FutureState, FutureState]]


class HistoryEntry(NamedTuple):
    """One fired trigger: when (``time.monotonic()``), what, and from where to where."""

    time: float
    trigger: Trigger
    source: FutureState
    dest: FutureState


class _TableTransition(Transition):
    """A transition without conditions or callbacks; a self-loop is internal (dest None)."""

    def __init__(self, source: str, dest: str | None, *callbacks: Any, **named: Any) -> None:
        # transitions passes conditions, unless, before, after, prepare (positionally).
        if any(callbacks) or any(named.values()):
            raise ValueError("futurefsm table transitions take no callbacks or conditions")
        super().__init__(source, dest)
        self.dest_state = FutureState[dest] if dest is not None else None

    def execute(self, event_data: EventData) -> bool:
        if self.dest_state is not None:
            event_data.model.state = self.dest_state
        return True

    def add_callback(self, trigger: str, func: Any) -> None:
        raise ValueError("futurefsm table transitions take no callbacks")


class _TableEvent(Event):
    """An event whose (state -> transition) lookup is one dict access: the table is total."""

    def trigger(self, model: Any, *args: Any, **kwargs: Any) -> bool:
        source = model.state
        candidates = self.transitions.get(source.name)
        if not candidates:
            raise MachineError(f"trigger {self.name!r} is not defined in state {source.value!r}")
        state = self.machine.states[source.name]
        return candidates[0].execute(EventData(state, self, self.machine, model, args, kwargs))


class FutureMachine(Machine):
    """``transitions.Machine`` with the lean table event and transition classes."""

    event_cls = _TableEvent
    transition_cls = _TableTransition


def _machine_transitions() -> list[dict[str, Any]]:
    transitions = []
    for (source, trigger), cell in TRANSITION_TABLE.items():
        # A cell that keeps the state is an internal transition: no exit/enter.
        dest = None if cell.dest is source else cell.dest
        transitions.append({"trigger": trigger.value, "source": source, "dest": dest})
    return transitions


MACHINE = FutureMachine(
    model=None,
    states=FutureState,
    initial=FutureState.PENDING,
    transitions=_machine_transitions(),
    auto_transitions=False,
    ignore_invalid_triggers=False,
    name="TaskFuture",
)
"""The shared machine. Models are never added to it; see the module docstring."""

_EVENTS: dict[Trigger, Event] = {trigger: MACHINE.events[trigger.value] for trigger in Trigger}
_monotonic = time.monotonic


def fire(model: Model, trigger: Trigger) -> Cell:
    """Fire ``trigger`` on ``model`` through the shared machine and return the table cell.

    The caller holds whatever lock protects the model and carries out ``cell.effect``
    afterwards (outside the lock when it is I/O). Every pair is defined, so this never
    raises for a valid state and trigger.
    """
    source = model.state
    cell = TRANSITION_TABLE[source, trigger]
    _EVENTS[trigger].trigger(model)
    history = model.fsm_history
    if cell.dest is not source or len(history) < HISTORY_SELF_LOOP_LIMIT:
        history.append((_monotonic(), trigger, source, model.state))
    return cell


def history_of(model: Model) -> list[HistoryEntry]:
    """The model's history as ``HistoryEntry`` tuples, oldest first."""
    return [HistoryEntry(*entry) for entry in model.fsm_history]


class FSMModel:
    """A bare model of the machine: a state and a history, nothing else.

    ``TaskFuture`` is the real model; this one serves tests and tools that want the
    table's behaviour without a future around it.
    """

    __slots__ = ("fsm_history", "state")

    def __init__(self, state: FutureState = FutureState.PENDING) -> None:
        self.state = state
        self.fsm_history: list[tuple[float, Trigger, FutureState, FutureState]] = []

    def fire(self, trigger: Trigger) -> Cell:
        """Fire ``trigger`` on this model; see ``futurefsm.fsm.fire``."""
        return fire(self, trigger)

    @property
    def history(self) -> list[HistoryEntry]:
        """Every trigger fired on this model, oldest first."""
        return history_of(self)
