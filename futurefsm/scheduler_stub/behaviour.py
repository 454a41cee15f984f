"""``Behaviour``: the faults a ``SchedulerStub`` scripts for a task (docs/scheduler.md).

A ``Behaviour`` is plain data, validated on construction, so a test or a hypothesis
strategy can build one and the stub can trust it. What each field does, precisely:

- ``result_delay`` (seconds, >= 0): once the task has finished, its result is held that
  long before it is sent. Nothing blocks meanwhile: the stub keeps serving other tasks
  and heartbeats. During the delay the task still counts as running for cancellation
  (its result has not reached the client yet).
- ``worker_died``: when a worker picks the task up it does not run it, and answers
  ``TaskResult(worker_died, dumps(reason_text))`` instead.
- ``on_cancel``: how a ``TaskCancel`` for this task is answered; see ``OnCancel``.
- ``drop_result``: the result is never sent (the task still runs, and a graph
  dependent still gets its value). Wins over ``duplicate_result``.
- ``duplicate_result``: the result is sent twice.
- ``answer_heartbeats``: False makes the stub stop echoing the protocol's
  ``Heartbeat`` messages once this task has arrived. futurefsm's client judges liveness
  by ZMTP heartbeats (answered by libzmq, whatever the stub's Python does), so this no
  longer makes it give up; ``stop()``, ``disconnect_all()`` or a frozen process do.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import Any, TypeAlias

__all__ = ["DEFAULT_BEHAVIOUR", "Behaviour", "BehaviourSource", "OnCancel"]


class OnCancel(str, Enum):
    """How the stub answers a ``TaskCancel`` for a task it still holds.

    A task counts as held from its arrival until its result was sent (or dropped or
    discarded); a cancel for any other id is answered ``not_found`` whatever the mode.
    """

    CONFIRM = "confirm"
    """The default handling: a queued task (or one waiting for its graph dependencies)
    is removed and confirmed ``canceled``; a running one with ``force`` is confirmed
    ``canceled`` at once and its result discarded; without ``force`` the answer is
    ``cancel_failed`` and the task runs on and its result is sent."""

    RESULT_THEN_CONFIRM = "result_then_confirm"
    """Nothing at once; the task runs to its end, its result is sent, then a
    ``canceled`` confirm. The race this project exists for."""

    CONFIRM_THEN_RESULT = "confirm_then_result"
    """``canceled`` at once; the task still runs and its result is sent afterwards."""

    CANCEL_FAILED = "cancel_failed"
    """``cancel_failed`` at once; the task runs on and its result is sent."""

    NOT_FOUND = "not_found"
    """``not_found`` at once; the task runs on and its result is still sent."""

    IGNORE = "ignore"
    """No answer ever, and the task's result is never sent: the client must time out.
    The task itself still runs (graph dependents still get its value)."""

    DUPLICATE = "duplicate"
    """The default handling (``CONFIRM``), with its answer sent twice."""


@dataclass(frozen=True, slots=True)
class Behaviour:
    """The faults scripted for one task (or all of them). See the module docstring."""

    result_delay: float = 0.0
    worker_died: bool = False
    on_cancel: OnCancel = OnCancel.CONFIRM
    drop_result: bool = False
    duplicate_result: bool = False
    answer_heartbeats: bool = True

    def __post_init__(self) -> None:
        """Check every field; a bad value raises ``ValueError`` naming the field.

        ``on_cancel`` may be given as its string value ("confirm", "ignore", ...).
        """
        delay = self.result_delay
        if isinstance(delay, bool) or not isinstance(delay, (int, float)):
            raise ValueError(f"Behaviour.result_delay: expected a number of seconds, got {delay!r}")
        try:
            seconds = float(delay)
        except OverflowError:
            seconds = math.inf
        if not 0 <= seconds < math.inf:  # also rejects NaN
            raise ValueError(f"Behaviour.result_delay: expected a finite value >= 0, got {delay!r}")
        object.__setattr__(self, "result_delay", seconds)
        try:
            object.__setattr__(self, "on_cancel", OnCancel(self.on_cancel))
        except ValueError:
            choices = ", ".join(mode.value for mode in OnCancel)
            raise ValueError(
                f"Behaviour.on_cancel: expected one of {choices}, got {self.on_cancel!r}"
            ) from None
        for name in ("worker_died", "drop_result", "duplicate_result", "answer_heartbeats"):
            value = getattr(self, name)
            if type(value) is not bool:
                raise ValueError(f"Behaviour.{name}: expected a bool, got {value!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Behaviour:
        """Build a Behaviour from a mapping of field names (as in a JSON file).

        Unknown keys raise ``ValueError`` naming them; missing keys take their default.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"Behaviour: expected a mapping of fields, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            raise ValueError(
                f"Behaviour: unknown field(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        return cls(**data)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike[str]) -> Behaviour:
        """Read a Behaviour from a JSON file holding one object, e.g.
        ``{"result_delay": 0.5, "on_cancel": "ignore"}``.

        Raises ``ValueError`` for a file that is not JSON or holds a bad Behaviour,
        ``OSError`` if the file cannot be read.
        """
        with open(path, encoding="utf-8") as file:
            try:
                data = json.load(file)
            except json.JSONDecodeError as exc:
                raise ValueError(f"Behaviour file {os.fspath(path)!r}: not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(
                f"Behaviour file {os.fspath(path)!r}: expected a JSON object, "
                f"got {type(data).__name__}"
            )
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (``on_cancel`` as its string value)."""
        data = asdict(self)
        data["on_cancel"] = self.on_cancel.value
        return data


DEFAULT_BEHAVIOUR = Behaviour()
"""No faults: what a stub without a ``behaviour`` does for every task."""

BehaviourSource: TypeAlias = Behaviour | Callable[[int], Behaviour] | None
"""What ``SchedulerStub(behaviour=...)`` takes: one Behaviour for every task, a callable
from a Task's arrival index (0, 1, 2, ... across the stub) to its Behaviour, or None
(``DEFAULT_BEHAVIOUR``)."""
