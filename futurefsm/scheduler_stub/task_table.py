"""The transition table of a task in the scheduler: the single source of truth.

Theory of operation
-------------------
A task the scheduler received is always in exactly one of seven states. It moves only
when an *event* fires: something the scheduler reacts to (its dependencies are ready,
a worker took it, a worker gave it back unstarted, its result is in hand, a TaskCancel
with or without ``force``, the worker killed to stop it is gone, its client is gone).
``TASK_TABLE`` below says, for every (state, event) pair, where the task goes and which
``TaskEffect``s the scheduler then carries out, in order (dispatch it, send its result,
answer a cancel, kill its worker, drop it, ...). The table is total: an event that
comes late or twice (a second dependency id naming the same task, a result of a task
cancelled meanwhile) is an explicit self-loop, and an event the scheduler's own code
never produces in a state is one too, with ``IMPOSSIBLE`` (logged and counted as an
internal error, never fatal). Nothing leaves ``done`` or ``cancelled``.

This module is sans-I/O, like ``futurefsm/fsm/table.py``, and modelled on Dask's
``distributed/worker_state_machine.py``: a transition is pure data, it says what must
happen, and the scheduler does it. One method applies transitions,
``SchedulerStub._apply`` (``tasks.py``): it is the only code that changes a task's state
(beside ``INITIAL_STATE``, given at construction), and it carries out the effects. The
diagrams (``diagrams/task.*``) and the table in docs/scheduler.md are generated from
``TASK_TABLE``.

*Held* tasks (``HELD_STATES``) are the ones a ``TaskCancel`` can still reach: from
arrival until the result is sent. A ``TaskCancel`` for any other id is answered
``not_found`` by the scheduler without a task to fire on; the cells of the other states
say the same.

What ``Behaviour`` scripts (docs/scheduler.md) is not a state: ``result_delay`` picks
``RESULT_HELD`` over ``RESULT``, an ``on_cancel`` other than confirm/duplicate makes a
TaskCancel ``CANCEL_SCRIPTED``, and ``drop_result``/``duplicate_result`` only change
what ``SEND_RESULT`` puts on the wire.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

__all__ = [
    "HELD_STATES",
    "INITIAL_STATE",
    "TASK_TABLE",
    "TERMINAL_STATES",
    "TaskCell",
    "TaskEffect",
    "TaskEvent",
    "TaskState",
]


class TaskState(str, Enum):
    """Where a task is in the scheduler (a ``str`` mix-in: hashed at C speed)."""

    WAITING = "waiting"
    """Arrived; waits for its graph dependencies (the state every task starts in)."""
    QUEUED = "queued"
    """Ready; waits for a worker."""
    RUNNING = "running"
    """A worker took it. On a worker process it may not have started yet (then the
    process can give it back); a running one can be stopped by killing the process."""
    STOPPING = "stopping"
    """Force-cancelled while running: its worker process is being killed, and
    ``canceled`` is confirmed once the process is gone. No longer held."""
    DELAYED = "delayed"
    """Finished; its result is held for its Behaviour's ``result_delay``. Still held:
    to a client it is running until the result is sent."""
    DONE = "done"
    """Terminal: its result was sent (or dropped or suppressed, as scripted)."""
    CANCELLED = "cancelled"
    """Terminal: removed, stopped or forgotten; a result that still comes is discarded."""

    def __str__(self) -> str:
        return self.value


class TaskEvent(str, Enum):
    """Everything the scheduler reacts to about one task."""

    READY = "ready"
    """It arrived with no dependency left to wait for, or its last one succeeded."""
    DEPENDENCY_CANCELLED = "dependency_cancelled"
    """A dependency was cancelled (before or after it arrived)."""
    WORKER_TOOK = "worker_took"
    """A worker takes it from the queue to run it."""
    WORKER_GAVE_BACK = "worker_gave_back"
    """The worker process it was sent to gave it back unstarted (taken back for a
    cancel, stolen for an idle worker, or its process ended before starting it)."""
    RESULT = "result"
    """Its result is in hand: the worker's answer, a ``worker_died`` result (its worker
    died, or ``Behaviour.worker_died``), or the failure of a dependency."""
    RESULT_HELD = "result_held"
    """As ``RESULT``, for a task whose Behaviour holds results (``result_delay`` > 0)."""
    HOLD_OVER = "hold_over"
    """The ``result_delay`` of a held result elapsed."""
    CANCEL = "cancel"
    """A TaskCancel without ``force``, answered the default way (``on_cancel`` confirm
    or duplicate)."""
    CANCEL_FORCE = "cancel_force"
    """A TaskCancel with ``force``, or a cancel of its group, answered the default way."""
    CANCEL_SCRIPTED = "cancel_scripted"
    """A TaskCancel its Behaviour's ``on_cancel`` answers its own way (result_then_confirm,
    confirm_then_result, cancel_failed, not_found, ignore): fault scripting."""
    KILL_REFUSED = "kill_refused"
    """Its worker could not be killed (a thread, or it finished meanwhile)."""
    WORKER_GONE = "worker_gone"
    """The worker process killed to stop it is gone."""
    CLIENT_GONE = "client_gone"
    """Its client is gone (Disconnect, connection closed, ``drop_client``), or the
    scheduler forgets everything (``disconnect_all``, ``stop``)."""

    def __str__(self) -> str:
        return self.value


class TaskEffect(str, Enum):
    """What the scheduler does after a transition, in the cell's order."""

    DISPATCH = "dispatch"
    """Hand it to the worker pool."""
    RUN = "run"
    """The worker that took it runs it."""
    SKIP = "skip"
    """The worker that took it must not run it."""
    PASS_ON = "pass_on"
    """Its dependents get its outcome: the last dependency that succeeded makes them
    ``READY``; a failure ends them the same way (``RESULT``), without running them."""
    SEND_RESULT = "send_result"
    """No longer held; its result goes to its client (as its Behaviour scripts)."""
    HOLD_RESULT = "hold_result"
    """Hold its result for ``result_delay`` (a timer fires ``HOLD_OVER``)."""
    DROP = "drop"
    """No longer held; its waiting dependents get ``DEPENDENCY_CANCELLED``."""
    CONFIRM_CANCELED = "confirm_canceled"
    """Send ``TaskCancelConfirm(canceled)`` (twice for ``on_cancel`` duplicate)."""
    REFUSE_CANCEL = "refuse_cancel"
    """Send ``TaskCancelConfirm(cancel_failed)``: it runs on, its result will be sent."""
    ANSWER_NOT_FOUND = "answer_not_found"
    """Send ``TaskCancelConfirm(not_found)``: it is not held."""
    ANSWER_AS_SCRIPTED = "answer_as_scripted"
    """Its Behaviour's ``on_cancel`` answers (fault scripting, ``behaviour.py``)."""
    KILL_WORKER = "kill_worker"
    """Kill the worker process running it: ``WORKER_GONE`` once the process is gone,
    ``KILL_REFUSED`` at once if it cannot be killed."""
    STOP_WORKER = "stop_worker"
    """Take it back from its worker, or kill the worker, without a word to anyone."""
    DISCARD = "discard"
    """A result of a task that ended already is thrown away (``results_discarded``)."""
    IMPOSSIBLE = "impossible"
    """The scheduler's own code never fires this here: logged, counted as an
    ``internal_errors``, and otherwise nothing."""

    def __str__(self) -> str:
        return self.value


class TaskCell(NamedTuple):
    """One cell of the table: where the task goes, and what the scheduler then does."""

    state: TaskState
    effects: tuple[TaskEffect, ...]


INITIAL_STATE = TaskState.WAITING
"""The state of a task that just arrived."""

TERMINAL_STATES: frozenset[TaskState] = frozenset({TaskState.DONE, TaskState.CANCELLED})

HELD_STATES: frozenset[TaskState] = frozenset(
    {TaskState.WAITING, TaskState.QUEUED, TaskState.RUNNING, TaskState.DELAYED}
)
"""States in which a TaskCancel for the task reaches it (the client's book holds it)."""

_S, _V, _E = TaskState, TaskEvent, TaskEffect
_C = TaskCell

_NOTHING: tuple[TaskEffect, ...] = ()
_IMPOSSIBLE = (_E.IMPOSSIBLE,)
_DISCARD = (_E.DISCARD,)
_NOT_FOUND = (_E.ANSWER_NOT_FOUND,)
_SCRIPTED = (_E.ANSWER_AS_SCRIPTED,)
_CANCELLED = (_E.DROP, _E.CONFIRM_CANCELED)

# (state, event) -> TaskCell(next state, effects). Every one of the 7 x 13 cells is
# spelled out; docs/scheduler.md shows it row by row.
TASK_TABLE: dict[tuple[TaskState, TaskEvent], TaskCell] = {
    # waiting: arrived, its dependencies not all done.
    (_S.WAITING, _V.READY): _C(_S.QUEUED, (_E.DISPATCH,)),
    (_S.WAITING, _V.DEPENDENCY_CANCELLED): _C(_S.CANCELLED, _CANCELLED),
    (_S.WAITING, _V.WORKER_TOOK): _C(_S.WAITING, _IMPOSSIBLE),
    (_S.WAITING, _V.WORKER_GAVE_BACK): _C(_S.WAITING, _IMPOSSIBLE),
    (_S.WAITING, _V.RESULT): _C(_S.DONE, (_E.PASS_ON, _E.SEND_RESULT)),  # a dependency failed
    (_S.WAITING, _V.RESULT_HELD): _C(_S.DELAYED, (_E.PASS_ON, _E.HOLD_RESULT)),
    (_S.WAITING, _V.HOLD_OVER): _C(_S.WAITING, _IMPOSSIBLE),
    (_S.WAITING, _V.CANCEL): _C(_S.CANCELLED, _CANCELLED),
    (_S.WAITING, _V.CANCEL_FORCE): _C(_S.CANCELLED, _CANCELLED),
    (_S.WAITING, _V.CANCEL_SCRIPTED): _C(_S.WAITING, _SCRIPTED),
    (_S.WAITING, _V.KILL_REFUSED): _C(_S.WAITING, _IMPOSSIBLE),
    (_S.WAITING, _V.WORKER_GONE): _C(_S.WAITING, _IMPOSSIBLE),
    (_S.WAITING, _V.CLIENT_GONE): _C(_S.CANCELLED, _NOTHING),
    # queued: ready, no worker has it yet.
    (_S.QUEUED, _V.READY): _C(_S.QUEUED, _NOTHING),  # a dependency named twice
    (_S.QUEUED, _V.DEPENDENCY_CANCELLED): _C(_S.QUEUED, _NOTHING),
    (_S.QUEUED, _V.WORKER_TOOK): _C(_S.RUNNING, (_E.RUN,)),
    (_S.QUEUED, _V.WORKER_GAVE_BACK): _C(_S.QUEUED, _IMPOSSIBLE),
    (_S.QUEUED, _V.RESULT): _C(_S.QUEUED, _IMPOSSIBLE),
    (_S.QUEUED, _V.RESULT_HELD): _C(_S.QUEUED, _IMPOSSIBLE),
    (_S.QUEUED, _V.HOLD_OVER): _C(_S.QUEUED, _IMPOSSIBLE),
    (_S.QUEUED, _V.CANCEL): _C(_S.CANCELLED, _CANCELLED),
    (_S.QUEUED, _V.CANCEL_FORCE): _C(_S.CANCELLED, _CANCELLED),
    (_S.QUEUED, _V.CANCEL_SCRIPTED): _C(_S.QUEUED, _SCRIPTED),
    (_S.QUEUED, _V.KILL_REFUSED): _C(_S.QUEUED, _IMPOSSIBLE),
    (_S.QUEUED, _V.WORKER_GONE): _C(_S.QUEUED, _IMPOSSIBLE),
    (_S.QUEUED, _V.CLIENT_GONE): _C(_S.CANCELLED, _NOTHING),
    # running: a worker has it (a process may give it back while it has not started).
    (_S.RUNNING, _V.READY): _C(_S.RUNNING, _NOTHING),
    (_S.RUNNING, _V.DEPENDENCY_CANCELLED): _C(_S.RUNNING, _NOTHING),
    (_S.RUNNING, _V.WORKER_TOOK): _C(_S.RUNNING, _IMPOSSIBLE),
    (_S.RUNNING, _V.WORKER_GAVE_BACK): _C(_S.QUEUED, _NOTHING),
    (_S.RUNNING, _V.RESULT): _C(_S.DONE, (_E.PASS_ON, _E.SEND_RESULT)),
    (_S.RUNNING, _V.RESULT_HELD): _C(_S.DELAYED, (_E.PASS_ON, _E.HOLD_RESULT)),
    (_S.RUNNING, _V.HOLD_OVER): _C(_S.RUNNING, _IMPOSSIBLE),
    (_S.RUNNING, _V.CANCEL): _C(_S.RUNNING, (_E.REFUSE_CANCEL,)),
    (_S.RUNNING, _V.CANCEL_FORCE): _C(_S.STOPPING, (_E.KILL_WORKER, _E.DROP)),
    (_S.RUNNING, _V.CANCEL_SCRIPTED): _C(_S.RUNNING, _SCRIPTED),
    (_S.RUNNING, _V.KILL_REFUSED): _C(_S.RUNNING, _IMPOSSIBLE),
    (_S.RUNNING, _V.WORKER_GONE): _C(_S.RUNNING, _IMPOSSIBLE),
    (_S.RUNNING, _V.CLIENT_GONE): _C(_S.CANCELLED, (_E.STOP_WORKER,)),
    # stopping: force-cancelled, its worker process being killed; not held.
    (_S.STOPPING, _V.READY): _C(_S.STOPPING, _NOTHING),
    (_S.STOPPING, _V.DEPENDENCY_CANCELLED): _C(_S.STOPPING, _NOTHING),
    (_S.STOPPING, _V.WORKER_TOOK): _C(_S.STOPPING, _IMPOSSIBLE),
    (_S.STOPPING, _V.WORKER_GAVE_BACK): _C(_S.STOPPING, _IMPOSSIBLE),
    (_S.STOPPING, _V.RESULT): _C(_S.STOPPING, _DISCARD),
    (_S.STOPPING, _V.RESULT_HELD): _C(_S.STOPPING, _DISCARD),
    (_S.STOPPING, _V.HOLD_OVER): _C(_S.STOPPING, _IMPOSSIBLE),
    (_S.STOPPING, _V.CANCEL): _C(_S.STOPPING, _NOT_FOUND),
    (_S.STOPPING, _V.CANCEL_FORCE): _C(_S.STOPPING, _NOT_FOUND),
    (_S.STOPPING, _V.CANCEL_SCRIPTED): _C(_S.STOPPING, _NOT_FOUND),
    (_S.STOPPING, _V.KILL_REFUSED): _C(_S.CANCELLED, (_E.CONFIRM_CANCELED,)),
    (_S.STOPPING, _V.WORKER_GONE): _C(_S.CANCELLED, (_E.CONFIRM_CANCELED,)),
    (_S.STOPPING, _V.CLIENT_GONE): _C(_S.STOPPING, _NOTHING),  # ends when its worker is gone
    # delayed: finished, its result held for result_delay; still held.
    (_S.DELAYED, _V.READY): _C(_S.DELAYED, _NOTHING),
    (_S.DELAYED, _V.DEPENDENCY_CANCELLED): _C(_S.DELAYED, _NOTHING),
    (_S.DELAYED, _V.WORKER_TOOK): _C(_S.DELAYED, _IMPOSSIBLE),
    (_S.DELAYED, _V.WORKER_GAVE_BACK): _C(_S.DELAYED, _IMPOSSIBLE),
    (_S.DELAYED, _V.RESULT): _C(_S.DELAYED, _DISCARD),  # a failed dependency named twice
    (_S.DELAYED, _V.RESULT_HELD): _C(_S.DELAYED, _DISCARD),
    (_S.DELAYED, _V.HOLD_OVER): _C(_S.DONE, (_E.SEND_RESULT,)),
    (_S.DELAYED, _V.CANCEL): _C(_S.DELAYED, (_E.REFUSE_CANCEL,)),
    (_S.DELAYED, _V.CANCEL_FORCE): _C(_S.CANCELLED, _CANCELLED),
    (_S.DELAYED, _V.CANCEL_SCRIPTED): _C(_S.DELAYED, _SCRIPTED),
    (_S.DELAYED, _V.KILL_REFUSED): _C(_S.DELAYED, _IMPOSSIBLE),
    (_S.DELAYED, _V.WORKER_GONE): _C(_S.DELAYED, _IMPOSSIBLE),
    (_S.DELAYED, _V.CLIENT_GONE): _C(_S.CANCELLED, _NOTHING),
    # done: terminal. Nothing leaves it; its result went out once.
    (_S.DONE, _V.READY): _C(_S.DONE, _NOTHING),
    (_S.DONE, _V.DEPENDENCY_CANCELLED): _C(_S.DONE, _NOTHING),
    (_S.DONE, _V.WORKER_TOOK): _C(_S.DONE, (_E.SKIP,)),
    (_S.DONE, _V.WORKER_GAVE_BACK): _C(_S.DONE, _IMPOSSIBLE),
    (_S.DONE, _V.RESULT): _C(_S.DONE, _DISCARD),  # a failed dependency named twice
    (_S.DONE, _V.RESULT_HELD): _C(_S.DONE, _DISCARD),
    (_S.DONE, _V.HOLD_OVER): _C(_S.DONE, _IMPOSSIBLE),
    (_S.DONE, _V.CANCEL): _C(_S.DONE, _NOT_FOUND),
    (_S.DONE, _V.CANCEL_FORCE): _C(_S.DONE, _NOT_FOUND),
    (_S.DONE, _V.CANCEL_SCRIPTED): _C(_S.DONE, _NOT_FOUND),
    (_S.DONE, _V.KILL_REFUSED): _C(_S.DONE, _IMPOSSIBLE),
    (_S.DONE, _V.WORKER_GONE): _C(_S.DONE, _IMPOSSIBLE),
    (_S.DONE, _V.CLIENT_GONE): _C(_S.DONE, _NOTHING),
    # cancelled: terminal. Nothing leaves it; whatever still comes is thrown away.
    (_S.CANCELLED, _V.READY): _C(_S.CANCELLED, _NOTHING),
    (_S.CANCELLED, _V.DEPENDENCY_CANCELLED): _C(_S.CANCELLED, _NOTHING),
    (_S.CANCELLED, _V.WORKER_TOOK): _C(_S.CANCELLED, (_E.SKIP,)),
    (_S.CANCELLED, _V.WORKER_GAVE_BACK): _C(_S.CANCELLED, _NOTHING),
    (_S.CANCELLED, _V.RESULT): _C(_S.CANCELLED, _DISCARD),
    (_S.CANCELLED, _V.RESULT_HELD): _C(_S.CANCELLED, _DISCARD),
    (_S.CANCELLED, _V.HOLD_OVER): _C(_S.CANCELLED, _DISCARD),
    (_S.CANCELLED, _V.CANCEL): _C(_S.CANCELLED, _NOT_FOUND),
    (_S.CANCELLED, _V.CANCEL_FORCE): _C(_S.CANCELLED, _NOT_FOUND),
    (_S.CANCELLED, _V.CANCEL_SCRIPTED): _C(_S.CANCELLED, _NOT_FOUND),
    (_S.CANCELLED, _V.KILL_REFUSED): _C(_S.CANCELLED, _IMPOSSIBLE),
    (_S.CANCELLED, _V.WORKER_GONE): _C(_S.CANCELLED, _IMPOSSIBLE),
    (_S.CANCELLED, _V.CLIENT_GONE): _C(_S.CANCELLED, _NOTHING),
}
