"""What the live view counts, from the client's own records only.

Why the counting costs the submit path nothing measurable
---------------------------------------------------------
``submit()`` is the hot path (``bench e2e``: its cost with 100,000 live futures), and
a scan of the live futures per snapshot is not cheap enough: about 20 ms at 100,000
live futures, which raised the submit cost by 15-20% with the page open. So every
cell a future takes is counted as it is taken, for nothing more than a ``deque``
append: the client's futures are a subclass of ``TaskFuture`` (``future_class``)
whose ``_on_fire`` hook is that deque's ``append``, called with the table's ``Cell``
(one object per (state, trigger) pair: its ``id`` names the pair). The server thread
folds the deque into counters twice a second. A client without a dashboard makes
plain ``TaskFuture`` objects, whose hook is None.

The other figures are the client's own: ``stats()`` (done = completed + failed,
cancelled by outcome, stale messages), ``client.futures`` (the latest live ones), and
each ended future's record (state, outcome, history: never its result), handed over
by the client's ``release()`` for the future's page. The live states follow from the
cells: a state holds the futures that entered it and did not leave it (``pending``:
the submitted ones that did not leave it).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from itertools import islice
from typing import Any

from ..client.future import TaskFuture
from ..fsm import (
    TERMINAL_STATES,
    TRANSITION_TABLE,
    CancelOutcome,
    Effect,
    FutureState,
    HistoryEntry,
    Trigger,
    history_of,
)

__all__ = ["LATEST", "RECENT", "SNAPSHOT_EVERY", "Counts", "FutureRecord"]

SNAPSHOT_EVERY = 0.4
"""Seconds a snapshot is reused: a page polls twice a second, many pages share it."""
RECENT = 1000
"""Ended futures whose page stays available (their records, not the futures)."""
LATEST = 12
"""Futures listed on the main page: the latest live, and the latest ended."""

_STATES = tuple(FutureState)
# id of each table cell -> its (state, trigger): what the _on_fire hook hands over.
_CELL_KEYS = {id(cell): key for key, cell in TRANSITION_TABLE.items()}


@dataclass(frozen=True)
class FutureRecord:
    """What the view keeps of a future: enough for its page, never its result.

    It has ``state`` and ``fsm_history``, so ``futurefsm.fsm.history_of`` reads it.
    """

    task_id: bytes
    state: FutureState
    cancel_outcome: CancelOutcome | None
    fsm_history: bytes
    error: str | None
    """The exception's type name for a future that ended with one."""
    live: bool

    @property
    def history(self) -> list[HistoryEntry]:
        """The history as ``HistoryEntry`` tuples, oldest first."""
        return history_of(self)

    def as_json(self) -> dict[str, Any]:
        """The record for ``/api`` answers: plain JSON types."""
        return {
            "task_id": self.task_id.hex(),
            "state": self.state.value,
            "cancel_outcome": self.cancel_outcome.value if self.cancel_outcome else None,
            "error": self.error,
            "live": self.live,
            "history": [
                {
                    "time": entry.time,
                    "trigger": entry.trigger.value,
                    "source": entry.source.value,
                    "dest": entry.dest.value,
                }
                for entry in self.history
            ],
        }


def _fields(future: Any) -> tuple[Any, ...]:
    """A future's fields for its record (its exception, if any; never its result)."""
    state = future.state
    # exception(timeout=0) of a done future never waits.
    exception = future.exception(timeout=0) if state is FutureState.DONE else None
    return future.task_id, state, future.cancel_outcome, future.fsm_history, exception


def _record(fields: tuple[Any, ...], *, live: bool) -> FutureRecord:
    task_id, state, outcome, history, exception = fields
    error = type(exception).__name__ if exception is not None else None
    return FutureRecord(task_id, state, outcome, history, error, live)


def _drain(queue: deque[Any]) -> list[Any]:
    """What is in ``queue`` now, oldest first; appends may go on meanwhile."""
    return list(islice(iter(queue.popleft, None), len(queue)))


class Counts:
    """The live view's figures for one client; thread-safe.

    ``future_class`` is the ``TaskFuture`` subclass the client makes its futures of
    (it counts the cells they take); ``ended(future)`` is the client's hook for a
    future that reached a terminal state; ``fold()`` moves both into the counters (the
    server calls it twice a second); ``snapshot()`` is what a page shows.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._fired: deque[Any] = deque()  # table cells, as the futures take them
        self._ended: deque[tuple[Any, ...]] = deque()  # _fields of futures that ended
        self.future_class: type[TaskFuture] = type(
            "TaskFuture",
            (TaskFuture,),
            {
                "__slots__": (),
                "__module__": TaskFuture.__module__,
                "__doc__": TaskFuture.__doc__,
                "_on_fire": staticmethod(self._fired.append),
            },
        )
        """``TaskFuture`` whose every trigger is counted here (``TaskFuture._on_fire``)."""
        self._lock = threading.Lock()  # the counters below, fold() and snapshot()
        self._cells: Counter[int] = Counter()  # id(cell) -> times taken
        self._recent: OrderedDict[bytes, FutureRecord] = OrderedDict()
        self._rate: deque[tuple[float, int]] = deque(maxlen=16)
        self._snapshot: dict[str, Any] | None = None
        self._snapshot_at = 0.0

    def ended(self, future: Any) -> None:
        """The client's ``release()`` hook: ``future`` is terminal. O(1), no lock: the
        record is made later, by ``fold``, and only for the ``RECENT`` latest."""
        self._ended.append(_fields(future))

    def fold(self) -> None:
        """Fold the cells taken and the futures ended since the last call."""
        with self._lock:
            self._fold()

    def _fold(self) -> None:
        self._cells.update(map(id, _drain(self._fired)))
        recent = self._recent
        for fields in _drain(self._ended)[-RECENT:]:
            recent[fields[0]] = _record(fields, live=False)
        while len(recent) > RECENT:
            recent.popitem(last=False)

    def cell_counts(self) -> dict[tuple[FutureState, Trigger], int]:
        """How many times the client's futures took each cell of the table so far."""
        with self._lock:
            self._fold()
            return {key: self._cells.get(id(cell), 0) for key, cell in TRANSITION_TABLE.items()}

    def find(self, task_id: bytes) -> FutureRecord | None:
        """The record of a live future or of one of the ``RECENT`` latest ended."""
        future = self._client.futures.get(task_id)
        if future is not None:
            return _record(_fields(future), live=future.state not in TERMINAL_STATES)
        with self._lock:
            self._fold()
            return self._recent.get(task_id)

    def snapshot(self) -> dict[str, Any]:
        """Every figure the page shows, as plain JSON types (reused for
        ``SNAPSHOT_EVERY`` seconds)."""
        with self._lock:
            now = time.monotonic()
            if self._snapshot is not None and now - self._snapshot_at < SNAPSHOT_EVERY:
                return self._snapshot
            self._fold()
            self._snapshot = self._take(now)
            self._snapshot_at = now
            return self._snapshot

    def _latest_live(self) -> list[Any]:
        futures = self._client.futures
        for _ in range(3):
            try:  # the I/O thread may change the registry while it is read
                return list(islice(reversed(futures.values()), LATEST))
            except RuntimeError:
                continue
        return []

    def _take(self, now: float) -> dict[str, Any]:
        client = self._client
        stats = client.stats()
        taken = {key: self._cells.get(id(cell), 0) for key, cell in TRANSITION_TABLE.items()}

        # A state holds the futures that entered it and have not left it.
        held = dict.fromkeys(_STATES, 0)
        held[FutureState.PENDING] = stats["submitted"]
        transitions = []
        stale = dict.fromkeys((s.value for s in _STATES), 0)
        stale_messages = 0
        for (source, trigger), cell in TRANSITION_TABLE.items():
            count = taken[source, trigger]
            if cell.effect is Effect.STALE:
                stale[source.value] += count
                stale_messages += count if trigger.value.startswith("recv_") else 0
                continue
            held[source] -= count if cell.dest is not source else 0
            held[cell.dest] += count if cell.dest is not source else 0
            transitions.append(
                {
                    "source": source.value,
                    "trigger": trigger.value,
                    "dest": cell.dest.value,
                    "outcome": cell.outcome.name if cell.outcome else None,
                    "count": count,
                }
            )
        states = {state.value: max(0, held[state]) for state in _STATES}
        # The ended futures as stats() counts them (the futures' own count of how they
        # ended; the cells into done and cancelled say the same, which a test checks).
        states[FutureState.DONE.value] = stats["completed"] + stats["failed"]
        states[FutureState.CANCELLED.value] = sum(stats["cancelled"].values())
        # A stale message for a task the client no longer holds (ended and released,
        # or unknown) reaches no future: it is in stats() only.
        stale["released"] = max(0, stats["stale_messages"] - stale_messages)

        outcomes = {o.value: stats["cancelled"].get(o.value, 0) for o in CancelOutcome}
        outcomes[CancelOutcome.FAILED.value] = sum(
            count
            for (source, trigger), count in taken.items()
            if TRANSITION_TABLE[source, trigger].outcome is CancelOutcome.FAILED
        )

        ended = states[FutureState.DONE.value] + states[FutureState.CANCELLED.value]
        self._rate.append((now, ended))
        first_time, first_ended = self._rate[0]
        rate = (ended - first_ended) / (now - first_time) if now > first_time else 0.0

        latest_ended = [r.as_json() for r in islice(reversed(self._recent.values()), LATEST)]
        return {
            "engine": type(client.engine).__name__,
            "address": client.address,
            "states": states,
            "transitions": transitions,
            "outcomes": outcomes,
            "stale": stale,
            "stats": stats,
            "tasks_per_second": rate,
            "latest_live": [_record(_fields(f), live=True).as_json() for f in self._latest_live()],
            "latest_ended": latest_ended,
        }
