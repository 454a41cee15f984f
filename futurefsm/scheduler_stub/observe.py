"""What the scheduler lets you see of it: counters (``stats()``, ``futurefsm status``)
and the message log (``log``), both read from any thread.

``Observations`` is owned by the scheduler's I/O thread, which writes to it; readers
take snapshots under its ``lock``. The log is off unless asked for (``log_messages``):
it keeps each message without its payload bytes, bounded by ``limit`` records and about
``max_bytes`` bytes, the oldest going first.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Literal

from ..protocol import Message, ResultStatus, Task, TaskResult

__all__ = ["STAT_NAMES", "LogRecord", "Observations"]

STAT_NAMES = (
    "tasks_received",
    "results_sent",
    "confirms_sent",
    "protocol_errors",
    "unroutable",
    "heartbeats_answered",
    "heartbeats_ignored",
    "cancels_received",
    "disconnects_received",
    "disconnects_sent",
    "results_discarded",
    "results_dropped",
    "internal_errors",
    "clients_dropped",
    "workers_killed",
    "clients_gone",
)
"""The counters the scheduler keeps (``SchedulerStub.stats`` says what each counts)."""

_LOG_RECORD_BYTES = 200
"""What one log record costs, roughly, beside its ids (for the ``log_bytes`` bound)."""


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One message the stub received ("in") or handed to its socket ("out")."""

    direction: Literal["in", "out"]
    client: bytes
    """The client's ROUTER identity."""
    message: Message
    """The message without its payload bytes: a Task's ``function`` and ``args`` and a
    TaskResult's ``payload`` are ``b""``."""
    size: int
    """The length of its frame, in bytes."""
    time: float
    """``time.monotonic()`` when it was received or sent."""

    def cost(self) -> int:
        """Roughly the bytes this record keeps alive."""
        message = self.message
        ids = 16 * len(getattr(message, "depends_on", ()))
        return _LOG_RECORD_BYTES + len(self.client) + ids


def _without_payload(message: Message) -> Message:
    """``message`` with its payload bytes emptied, for the log."""
    kind = type(message)
    if kind is Task:
        assert isinstance(message, Task)
        return Task(message.task_id, b"", b"", message.group_id, message.depends_on)
    if kind is TaskResult:
        assert isinstance(message, TaskResult)
        return TaskResult(message.task_id, message.status, b"")
    return message


class Observations:
    """The scheduler's counters and message log. ``stats`` and the log change only
    under ``lock`` (the I/O thread may also update ``stats`` in place under it, on its
    hot paths)."""

    def __init__(self, log_messages: bool, limit: int, max_bytes: int) -> None:
        self.lock = threading.Lock()
        self.logging = bool(log_messages)
        """Whether the message log is kept."""
        self.stats: dict[str, int] = dict.fromkeys(STAT_NAMES, 0)
        self._log: deque[LogRecord] = deque()
        self._limit, self._max_bytes, self._cost = limit, max_bytes, 0

    def count(self, stat: str, by: int = 1) -> None:
        """Add ``by`` to the counter ``stat``."""
        with self.lock:
            self.stats[stat] += by

    def stats_snapshot(self) -> dict[str, int]:
        """A copy of the counters."""
        with self.lock:
            return dict(self.stats)

    def log_snapshot(self) -> list[LogRecord]:
        """A copy of the log, oldest first."""
        with self.lock:
            return list(self._log)

    def note(
        self,
        direction: Literal["in", "out"],
        identity: bytes,
        what: Message | tuple[bytes, ResultStatus],
        size: int,
    ) -> LogRecord | None:
        """Count an inbound Task; log the message if the log is on (and return its
        record). ``what`` is a message, or a result's id and status."""
        if direction == "in" and type(what) is Task:
            self.count("tasks_received")
        if not self.logging:
            return None
        if isinstance(what, tuple):
            message: Message = TaskResult(what[0], what[1], b"")
        else:
            message = _without_payload(what)
        record = LogRecord(direction, identity, message, size, time.monotonic())
        cost = record.cost()
        with self.lock:
            self._log.append(record)
            self._cost += cost
            while len(self._log) > self._limit or self._cost > self._max_bytes:
                self._cost -= self._log.popleft().cost()
        return record

    def unlog(self, records: list[LogRecord | None]) -> None:
        """Take ``records`` (of messages that could not be sent) out of the log; call
        with ``lock`` held. Those a bounded log dropped already are skipped."""
        log = self._log
        for record in records:
            if record is None:
                continue
            if log and log[-1] is record:  # the usual case: the latest one
                log.pop()
            else:
                try:
                    log.remove(record)
                except ValueError:  # already gone from a bounded log
                    continue
            self._cost -= record.cost()
