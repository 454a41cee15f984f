"""Sans-I/O state machine of a remote-task future: states, triggers, the table, the machine.

Imports nothing from ``futurefsm.client`` or ``futurefsm.scheduler_stub``, and no
sockets, threads or pickle.
"""

from .machine import (
    HISTORY_SELF_LOOP_LIMIT,
    MACHINE,
    FSMModel,
    FutureMachine,
    HistoryEntry,
    Model,
    fire,
    history_of,
)
from .table import (
    TERMINAL_STATES,
    TRANSITION_TABLE,
    CancelOutcome,
    Cell,
    Effect,
    FutureState,
    Trigger,
)

__all__ = [
    "HISTORY_SELF_LOOP_LIMIT",
    "MACHINE",
    "TERMINAL_STATES",
    "TRANSITION_TABLE",
    "CancelOutcome",
    "Cell",
    "Effect",
    "FSMModel",
    "FutureMachine",
    "FutureState",
    "HistoryEntry",
    "Model",
    "Trigger",
    "fire",
    "history_of",
]
