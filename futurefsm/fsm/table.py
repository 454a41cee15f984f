"""The transition table of a remote-task future: the single source of truth.

Theory of operation
-------------------
A future for a remote task is always in exactly one of five states. It moves only
when a *trigger* fires: an inbound protocol message (``recv_*``) or a local event
(the Task was handed to the transport, the user asked to cancel, a cancel deadline
passed, the connection was lost). ``TRANSITION_TABLE`` below says, for every
(state, trigger) pair, where the future goes, what the caller must do about it
(the ``Effect``) and which ``CancelOutcome`` is recorded. The table is total: a
late or duplicate message is an explicit ``STALE`` self-loop, never an error, and
nothing leaves ``cancelled`` or ``done``.

The runtime machine (``machine.py``), the generated diagrams and the documentation
table are all built from this one literal. Nothing else decides a future's state.
This module is sans-I/O: no sockets, threads or pickle.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

__all__ = [
    "TERMINAL_STATES",
    "TRANSITION_TABLE",
    "CancelOutcome",
    "Cell",
    "Effect",
    "FutureState",
    "Trigger",
]


class FutureState(str, Enum):
    """The five states of a remote-task future."""

    PENDING = "pending"
    """Created; the Task message has not been handed to the transport yet."""
    RUNNING = "running"
    """The Task was sent; the scheduler owns it."""
    CANCEL_REQUESTED = "cancel_requested"
    """A TaskCancel was sent and not answered yet."""
    CANCELLED = "cancelled"
    """Terminal: the future was cancelled (see ``CancelOutcome`` for how)."""
    DONE = "done"
    """Terminal: the task produced a result or an exception."""

    def __str__(self) -> str:
        return self.value


class Trigger(str, Enum):
    """Everything that can move a future: inbound messages and local events."""

    SENT = "sent"
    """Local: the Task message was handed to the transport."""
    USER_CANCEL = "user_cancel"
    """Local: the user called ``cancel()``."""
    RECV_RESULT = "recv_result"
    """Inbound ``TaskResult`` of any status (success, failed, worker_died)."""
    RECV_CONFIRM_CANCELED = "recv_confirm_canceled"
    """Inbound ``TaskCancelConfirm(kind=canceled)``."""
    RECV_CONFIRM_NOT_FOUND = "recv_confirm_not_found"
    """Inbound ``TaskCancelConfirm(kind=not_found)``."""
    RECV_CONFIRM_CANCEL_FAILED = "recv_confirm_cancel_failed"
    """Inbound ``TaskCancelConfirm(kind=cancel_failed)``: the scheduler refused."""
    CANCEL_TIMED_OUT = "cancel_timed_out"
    """Local: the cancel deadline passed without an answer."""
    CONNECTION_LOST = "connection_lost"
    """Local: the scheduler went silent or away."""

    def __str__(self) -> str:
        return self.value


class CancelOutcome(str, Enum):
    """How a cancellation ended, recorded on the future as ``cancel_outcome``."""

    BEFORE_SEND = "before_send"
    """Cancelled before the Task was sent; nothing went over the wire."""
    CONFIRMED = "confirmed"
    """The scheduler confirmed the cancel we asked for."""
    NOT_FOUND = "not_found"
    """The scheduler did not know the task (finished or never arrived)."""
    RESULT_RACED = "result_raced"
    """A result arrived after the cancel request; the future is cancelled anyway."""
    TIMED_OUT = "timed_out"
    """No answer before the cancel deadline."""
    BY_SCHEDULER = "by_scheduler"
    """A confirm nobody asked for (e.g. a graph sibling was cancelled)."""
    CONNECTION_LOST = "connection_lost"
    """The connection was lost while the cancel was in flight."""
    FAILED = "failed"
    """The scheduler refused to cancel; the future runs on."""

    def __str__(self) -> str:
        return self.value


class Effect(Enum):
    """What the caller of a trigger must do after the state change."""

    NONE = "none"
    """Nothing beyond the state change (which may be no change at all)."""
    STALE = "stale"
    """A late or duplicate message: nothing changed; count and log it."""
    SEND_CANCEL = "send_cancel"
    """Send exactly one TaskCancel for this task."""
    RESOLVE = "resolve"
    """Finish with the result or exception carried by the message."""
    FAIL_CONNECTION_LOST = "fail_connection_lost"
    """Finish with ``ConnectionLostError``."""


class Cell(NamedTuple):
    """One cell of the table: where the future goes, what to do, which outcome."""

    dest: FutureState
    effect: Effect
    outcome: CancelOutcome | None


TERMINAL_STATES: frozenset[FutureState] = frozenset({FutureState.CANCELLED, FutureState.DONE})

_S = FutureState
_T = Trigger
_E = Effect
_O = CancelOutcome

# (state, trigger) -> Cell(dest, effect, outcome). Every one of the 5 x 8 cells is
# spelled out, including the stale self-loops: docs/transitions.md, row by row.
TRANSITION_TABLE: dict[tuple[FutureState, Trigger], Cell] = {
    # pending: the Task is not on the wire yet.
    (_S.PENDING, _T.SENT): Cell(_S.RUNNING, _E.NONE, None),
    (_S.PENDING, _T.USER_CANCEL): Cell(_S.CANCELLED, _E.NONE, _O.BEFORE_SEND),
    (_S.PENDING, _T.RECV_RESULT): Cell(_S.PENDING, _E.STALE, None),
    (_S.PENDING, _T.RECV_CONFIRM_CANCELED): Cell(_S.PENDING, _E.STALE, None),
    (_S.PENDING, _T.RECV_CONFIRM_NOT_FOUND): Cell(_S.PENDING, _E.STALE, None),
    (_S.PENDING, _T.RECV_CONFIRM_CANCEL_FAILED): Cell(_S.PENDING, _E.STALE, None),
    (_S.PENDING, _T.CANCEL_TIMED_OUT): Cell(_S.PENDING, _E.STALE, None),
    (_S.PENDING, _T.CONNECTION_LOST): Cell(_S.DONE, _E.FAIL_CONNECTION_LOST, None),
    # running: the scheduler owns the task.
    (_S.RUNNING, _T.SENT): Cell(_S.RUNNING, _E.STALE, None),
    (_S.RUNNING, _T.USER_CANCEL): Cell(_S.CANCEL_REQUESTED, _E.SEND_CANCEL, None),
    (_S.RUNNING, _T.RECV_RESULT): Cell(_S.DONE, _E.RESOLVE, None),
    (_S.RUNNING, _T.RECV_CONFIRM_CANCELED): Cell(_S.CANCELLED, _E.NONE, _O.BY_SCHEDULER),
    (_S.RUNNING, _T.RECV_CONFIRM_NOT_FOUND): Cell(_S.RUNNING, _E.STALE, None),
    (_S.RUNNING, _T.RECV_CONFIRM_CANCEL_FAILED): Cell(_S.RUNNING, _E.STALE, None),
    (_S.RUNNING, _T.CANCEL_TIMED_OUT): Cell(_S.RUNNING, _E.STALE, None),
    (_S.RUNNING, _T.CONNECTION_LOST): Cell(_S.DONE, _E.FAIL_CONNECTION_LOST, None),
    # cancel_requested: one TaskCancel is in flight; every answer ends the wait.
    (_S.CANCEL_REQUESTED, _T.SENT): Cell(_S.CANCEL_REQUESTED, _E.STALE, None),
    (_S.CANCEL_REQUESTED, _T.USER_CANCEL): Cell(_S.CANCEL_REQUESTED, _E.NONE, None),
    (_S.CANCEL_REQUESTED, _T.RECV_RESULT): Cell(_S.CANCELLED, _E.NONE, _O.RESULT_RACED),
    (_S.CANCEL_REQUESTED, _T.RECV_CONFIRM_CANCELED): Cell(_S.CANCELLED, _E.NONE, _O.CONFIRMED),
    (_S.CANCEL_REQUESTED, _T.RECV_CONFIRM_NOT_FOUND): Cell(_S.CANCELLED, _E.NONE, _O.NOT_FOUND),
    (_S.CANCEL_REQUESTED, _T.RECV_CONFIRM_CANCEL_FAILED): Cell(_S.RUNNING, _E.NONE, _O.FAILED),
    (_S.CANCEL_REQUESTED, _T.CANCEL_TIMED_OUT): Cell(_S.CANCELLED, _E.NONE, _O.TIMED_OUT),
    (_S.CANCEL_REQUESTED, _T.CONNECTION_LOST): Cell(_S.CANCELLED, _E.NONE, _O.CONNECTION_LOST),
    # cancelled: terminal. Nothing leaves it.
    (_S.CANCELLED, _T.SENT): Cell(_S.CANCELLED, _E.STALE, None),
    (_S.CANCELLED, _T.USER_CANCEL): Cell(_S.CANCELLED, _E.NONE, None),
    (_S.CANCELLED, _T.RECV_RESULT): Cell(_S.CANCELLED, _E.STALE, None),
    (_S.CANCELLED, _T.RECV_CONFIRM_CANCELED): Cell(_S.CANCELLED, _E.STALE, None),
    (_S.CANCELLED, _T.RECV_CONFIRM_NOT_FOUND): Cell(_S.CANCELLED, _E.STALE, None),
    (_S.CANCELLED, _T.RECV_CONFIRM_CANCEL_FAILED): Cell(_S.CANCELLED, _E.STALE, None),
    (_S.CANCELLED, _T.CANCEL_TIMED_OUT): Cell(_S.CANCELLED, _E.STALE, None),
    (_S.CANCELLED, _T.CONNECTION_LOST): Cell(_S.CANCELLED, _E.STALE, None),
    # done: terminal. Nothing leaves it.
    (_S.DONE, _T.SENT): Cell(_S.DONE, _E.STALE, None),
    (_S.DONE, _T.USER_CANCEL): Cell(_S.DONE, _E.NONE, None),
    (_S.DONE, _T.RECV_RESULT): Cell(_S.DONE, _E.STALE, None),
    (_S.DONE, _T.RECV_CONFIRM_CANCELED): Cell(_S.DONE, _E.STALE, None),
    (_S.DONE, _T.RECV_CONFIRM_NOT_FOUND): Cell(_S.DONE, _E.STALE, None),
    (_S.DONE, _T.RECV_CONFIRM_CANCEL_FAILED): Cell(_S.DONE, _E.STALE, None),
    (_S.DONE, _T.CANCEL_TIMED_OUT): Cell(_S.DONE, _E.STALE, None),
    (_S.DONE, _T.CONNECTION_LOST): Cell(_S.DONE, _E.STALE, None),
}
