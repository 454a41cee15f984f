"""What can happen to one future: the ``Step`` vocabulary and the payloads results carry.

A ``Step`` is one inbound protocol message (a ``TaskResult`` of each status, a
``TaskCancelConfirm`` of each kind) or one local event (the Task was sent, the user
asked to cancel without waiting, a cancel deadline passed, the connection was lost).
Each maps to exactly one FSM ``Trigger``; the three result steps all map to
``recv_result`` and differ only in what the future must finish with.

Payloads are unique per delivery (``payload_for(step, n)``) so a check can tell which
of several racing results a future kept: ``ResultValue(n)`` compares equal by ``n``
(and survives pickling, for end-to-end tests); ``TaskError`` and ``WorkerDiedError``
instances are compared by identity in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..errors import WorkerDiedError
from ..fsm import Trigger
from ..protocol import ConfirmKind, ResultStatus

__all__ = [
    "CONFIRM_STEPS",
    "DELIVERABLE_STEPS",
    "MESSAGE_STEPS",
    "RESULT_STEPS",
    "ResultValue",
    "Step",
    "TaskError",
    "payload_for",
]


class Step(str, Enum):
    """One inbound message or local event for one future (see the module docstring)."""

    SENT = "sent"
    """Local: the Task was handed to the transport (``sent``)."""
    USER_CANCEL = "user_cancel"
    """Local: the user called ``cancel(wait=False)`` (``user_cancel``)."""
    RESULT_SUCCESS = "result_success"
    """Inbound ``TaskResult(success)`` carrying a ``ResultValue``."""
    RESULT_FAILED = "result_failed"
    """Inbound ``TaskResult(failed)`` carrying a ``TaskError``."""
    RESULT_WORKER_DIED = "result_worker_died"
    """Inbound ``TaskResult(worker_died)``: the future fails with ``WorkerDiedError``."""
    CONFIRM_CANCELED = "confirm_canceled"
    """Inbound ``TaskCancelConfirm(canceled)``."""
    CONFIRM_NOT_FOUND = "confirm_not_found"
    """Inbound ``TaskCancelConfirm(not_found)``."""
    CONFIRM_CANCEL_FAILED = "confirm_cancel_failed"
    """Inbound ``TaskCancelConfirm(cancel_failed)``."""
    CANCEL_TIMED_OUT = "cancel_timed_out"
    """Local: the cancel deadline passed unanswered."""
    CONNECTION_LOST = "connection_lost"
    """Local: the scheduler went silent or away."""

    def __str__(self) -> str:
        return self.value

    @property
    def trigger(self) -> Trigger:
        """The FSM trigger this step fires."""
        return _TRIGGERS[self]

    @property
    def status(self) -> ResultStatus | None:
        """The ``TaskResult`` status of a result step, else None."""
        return _STATUSES.get(self)

    @property
    def confirm_kind(self) -> ConfirmKind | None:
        """The ``TaskCancelConfirm`` kind of a confirm step, else None."""
        return _KINDS.get(self)


_TRIGGERS: dict[Step, Trigger] = {
    Step.SENT: Trigger.SENT,
    Step.USER_CANCEL: Trigger.USER_CANCEL,
    Step.RESULT_SUCCESS: Trigger.RECV_RESULT,
    Step.RESULT_FAILED: Trigger.RECV_RESULT,
    Step.RESULT_WORKER_DIED: Trigger.RECV_RESULT,
    Step.CONFIRM_CANCELED: Trigger.RECV_CONFIRM_CANCELED,
    Step.CONFIRM_NOT_FOUND: Trigger.RECV_CONFIRM_NOT_FOUND,
    Step.CONFIRM_CANCEL_FAILED: Trigger.RECV_CONFIRM_CANCEL_FAILED,
    Step.CANCEL_TIMED_OUT: Trigger.CANCEL_TIMED_OUT,
    Step.CONNECTION_LOST: Trigger.CONNECTION_LOST,
}
_STATUSES: dict[Step, ResultStatus] = {
    Step.RESULT_SUCCESS: ResultStatus.SUCCESS,
    Step.RESULT_FAILED: ResultStatus.FAILED,
    Step.RESULT_WORKER_DIED: ResultStatus.WORKER_DIED,
}
_KINDS: dict[Step, ConfirmKind] = {
    Step.CONFIRM_CANCELED: ConfirmKind.CANCELED,
    Step.CONFIRM_NOT_FOUND: ConfirmKind.NOT_FOUND,
    Step.CONFIRM_CANCEL_FAILED: ConfirmKind.CANCEL_FAILED,
}

RESULT_STEPS: tuple[Step, ...] = tuple(_STATUSES)
"""The three ``TaskResult`` steps."""
CONFIRM_STEPS: tuple[Step, ...] = tuple(_KINDS)
"""The three ``TaskCancelConfirm`` steps."""
MESSAGE_STEPS: tuple[Step, ...] = RESULT_STEPS + CONFIRM_STEPS
"""Every inbound protocol message step (what a scheduler can send about a task)."""
DELIVERABLE_STEPS: tuple[Step, ...] = tuple(s for s in Step if s is not Step.USER_CANCEL)
"""Every step a transport delivers (all but ``USER_CANCEL``, which is a user call)."""


@dataclass(frozen=True)
class ResultValue:
    """The value of a successful result number ``n``: equal iff ``n`` is equal."""

    n: int


class TaskError(Exception):
    """The exception a failed task number ``n`` raised."""

    def __init__(self, n: int) -> None:
        super().__init__(f"task error #{n}")
        self.n = n

    def __reduce__(self) -> tuple[Any, ...]:
        return (TaskError, (self.n,))


def payload_for(step: Step, n: int) -> Any:
    """The unique payload of delivery number ``n`` of a result ``step`` (None otherwise):
    a ``ResultValue``, a ``TaskError`` or a ``WorkerDiedError``."""
    if step is Step.RESULT_SUCCESS:
        return ResultValue(n)
    if step is Step.RESULT_FAILED:
        return TaskError(n)
    if step is Step.RESULT_WORKER_DIED:
        return WorkerDiedError(f"the worker running task #{n} died")
    return None
