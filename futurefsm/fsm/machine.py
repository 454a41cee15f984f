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

Why the history is bytes
------------------------
A client may hold 100,000 live futures, and CPython's garbage collector walks every
object it tracks, and every object those point to, again and again while they live.
A history kept as a list of ``(time, Trigger, FutureState, FutureState)`` tuples is two
or three such objects per future (the list and an entry per transition: enum members
keep a tuple tracked). So a model's ``fsm_history`` is ``bytes``, 11 per entry
(``time.monotonic()`` as a double, then the trigger's, the source's and the
destination's index in ``Trigger`` / ``FutureState``), which the collector never
walks; ``history_of`` turns it into ``HistoryEntry`` tuples for whoever reads it.
"""

from __future__ import annotations

import struct
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
    """What the machine needs of a model: its state and its packed history
    (``b""`` to begin with; see the module docstring)."""

    state: FutureState
    fsm_history: bytes


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
        return self.apply(event_data.model)

    def apply(self, model: Any) -> bool:
        """Move ``model`` to this transition's destination (a self-loop leaves it)."""
        if self.dest_state is not None:
            model.state = self.dest_state
        return True

    def add_callback(self, trigger: str, func: Any) -> None:
        raise ValueError("futurefsm table transitions take no callbacks")


class _TableEvent(Event):
    """An event whose (state -> transition) lookup is one dict access: the table is total.

    Its transitions carry no callbacks or conditions, so firing one needs no
    ``EventData``: the transition found for the model's state applies itself.
    ``by_state`` maps each ``FutureState`` to it (filled in once the machine is built).
    """

    def __init__(self, name: str, machine: Machine) -> None:
        super().__init__(name, machine)
        self.by_state: dict[FutureState, _TableTransition] = {}

    def trigger(self, model: Any, *args: Any, **kwargs: Any) -> bool:
        transition = self.by_state.get(model.state)
        if transition is None:
            raise MachineError(
                f"trigger {self.name!r} is not defined in state {model.state.value!r}"
            )
        return transition.apply(model)


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

_EVENTS: dict[Trigger, _TableEvent] = {
    trigger: MACHINE.events[trigger.value] for trigger in Trigger
}
for _event in _EVENTS.values():
    _event.by_state.update(
        (FutureState[name], candidates[0]) for name, candidates in _event.transitions.items()
    )
_monotonic = time.monotonic

# The packed history (module docstring): 8 bytes of time, then three one-byte codes.
_TRIGGERS = tuple(Trigger)
_STATES = tuple(FutureState)
_ENTRY = struct.Struct("=dBBB")
_pack_time = struct.Struct("=d").pack
# Per (state, trigger): the table's cell and the codes its history entry ends with.
_CELLS: dict[tuple[FutureState, Trigger], tuple[Cell, bytes]] = {
    (source, trigger): (
        cell,
        bytes((_TRIGGERS.index(trigger), _STATES.index(source), _STATES.index(cell.dest))),
    )
    for (source, trigger), cell in TRANSITION_TABLE.items()
}
_SELF_LOOP_LIMIT_BYTES = HISTORY_SELF_LOOP_LIMIT * _ENTRY.size


def fire(model: Model, trigger: Trigger) -> Cell:
    """Fire ``trigger`` on ``model`` through the shared machine and return the table cell.

    The caller holds whatever lock protects the model and carries out ``cell.effect``
    afterwards (outside the lock when it is I/O). Every pair is defined, so this never
    raises for a valid state and trigger.
    """
    source = model.state
    cell, codes = _CELLS[source, trigger]
    _EVENTS[trigger].trigger(model)
    history = model.fsm_history
    if cell.dest is not source or len(history) < _SELF_LOOP_LIMIT_BYTES:
        model.fsm_history = history + _pack_time(_monotonic()) + codes
    return cell


def history_of(model: Model) -> list[HistoryEntry]:
    """The model's history as ``HistoryEntry`` tuples, oldest first."""
    return [
        HistoryEntry(time, _TRIGGERS[trigger], _STATES[source], _STATES[dest])
        for time, trigger, source, dest in _ENTRY.iter_unpack(model.fsm_history)
    ]


class FSMModel:
    """A bare model of the machine: a state and a history, nothing else.

    ``TaskFuture`` is the real model; this one serves tests and tools that want the
    table's behaviour without a future around it.
    """

    __slots__ = ("fsm_history", "state")

    def __init__(self, state: FutureState = FutureState.PENDING) -> None:
        self.state = state
        self.fsm_history = b""

    def fire(self, trigger: Trigger) -> Cell:
        """Fire ``trigger`` on this model; see ``futurefsm.fsm.fire``."""
        return fire(self, trigger)

    @property
    def history(self) -> list[HistoryEntry]:
        """Every trigger fired on this model, oldest first."""
        return history_of(self)
