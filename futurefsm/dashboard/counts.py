"""What the live view counts, from the client's own records only.

Why the counting is off the submit path
---------------------------------------
``submit()`` is the hot path (``bench e2e``: its cost with 100,000 live futures), so
nothing here runs on it. The figures come from three records the client keeps anyway:

- ``client.stats()``: how many futures ended and how (done = completed + failed,
  cancelled by outcome), stale messages;
- ``client.futures``: the live futures, scanned when a snapshot is taken (at most
  every ``SNAPSHOT_EVERY`` seconds, whatever the number of pages open): their states
  and their histories;
- each future's packed history (``fsm_history``, bytes), handed over by the client's
  ``release()`` when the future ends (``Counts.ended``: one deque append on the I/O
  thread) and folded into per-cell counters later, on the dashboard's own thread.

A history is 11 bytes per fired trigger (``futurefsm.fsm.machine``), so the counters
are built from many histories joined into one ``bytes``, without an object per entry
(``_cell_counts``): no Python code runs per entry, and nothing is allocated that the
garbage collector would count towards a collection (one that walks every live future).

A snapshot's cost grows with the live futures (about 10 ms with 100,000), so the next
one is taken no sooner than ``SNAPSHOT_COST_RATIO`` times that cost later: the view
takes at most about 2% of a core, and still updates within a second up to about
100,000 live futures.
"""

from __future__ import annotations

import struct
import sys
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

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

__all__ = ["RECENT", "SNAPSHOT_EVERY", "Counts", "FutureRecord"]

SNAPSHOT_EVERY = 0.4
"""Seconds a snapshot is reused: a page polls twice a second, many pages share it."""
SNAPSHOT_COST_RATIO = 50
"""A snapshot that cost ``c`` CPU seconds is reused for at least ``c`` times this."""
RECENT = 1000
"""Ended futures whose page stays available (their records, not the futures)."""
LATEST = 12
"""Futures listed on the main page: the latest live, and the latest ended."""

_STATES = tuple(FutureState)
_TRIGGERS = tuple(Trigger)
_ENTRY = struct.Struct("=dBBB")  # futurefsm.fsm.machine's packed history entry
_RECV = frozenset(t for t in Trigger if t.value.startswith("recv_"))
_STALE_CELLS = frozenset(
    key for key, cell in TRANSITION_TABLE.items() if cell.effect is Effect.STALE
)


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


def _record(future: Any, *, live: bool) -> FutureRecord:
    error = None
    if future.state is FutureState.DONE:
        exception = future.exception(timeout=0)  # terminal: never waits
        error = type(exception).__name__ if exception is not None else None
    return FutureRecord(
        future.task_id, future.state, future.cancel_outcome, future.fsm_history, error, live
    )


# (trigger, source) codes as one little-endian 16-bit number -> the cell's code triple
# (the table decides the destination, so the pair names the cell).
_CELL_OF_PAIR = {
    t + 256 * s: (t, s, _STATES.index(TRANSITION_TABLE[_STATES[s], _TRIGGERS[t]].dest))
    for t in range(len(_TRIGGERS))
    for s in range(len(_STATES))
}


def _cell_counts(histories: Iterable[bytes]) -> Counter[tuple[int, int, int]]:
    """(trigger, source, dest) codes -> how many history entries took that cell.

    No object per entry: the histories are joined, each entry's trigger and source
    bytes gathered with extended slices into a stream of 16-bit numbers, which
    ``Counter`` counts in C. With 100,000 live futures this takes a few ms and
    allocates nothing the garbage collector tracks (``struct.iter_unpack`` made a
    tuple per entry, whose allocations brought full collections, each walking every
    live future: the submit cost went up by half with the page open).
    """
    joined = b"".join(list(histories))
    size = _ENTRY.size
    pairs = bytearray(2 * (len(joined) // size))
    low = 0 if sys.byteorder == "little" else 1  # the trigger is the number's low byte
    pairs[low::2] = joined[8::size]
    pairs[1 - low :: 2] = joined[9::size]
    counted = Counter(memoryview(pairs).cast("H"))
    return Counter({_CELL_OF_PAIR[pair]: count for pair, count in counted.items()})


class Counts:
    """The live view's figures for one client; thread-safe.

    ``ended(future)`` is the client's hook (its I/O thread, once per future reaching a
    terminal state); ``fold()`` moves what ended into the counters (the server calls it
    twice a second); ``snapshot()`` is what a page shows.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._ended: deque[Any] = deque()  # futures' records not yet folded (I/O thread)
        self._lock = threading.Lock()  # the counters below, fold() and snapshot()
        self._cells: Counter[tuple[int, int, int]] = Counter()
        self._recent: OrderedDict[bytes, FutureRecord] = OrderedDict()
        self._rate: deque[tuple[float, int]] = deque(maxlen=16)
        self._snapshot: dict[str, Any] | None = None
        self._snapshot_at = 0.0
        self._reuse_for = SNAPSHOT_EVERY

    def ended(self, future: Any) -> None:
        """The client's ``release()`` hook: ``future`` is terminal. O(1), no lock."""
        self._ended.append(_record(future, live=False))

    def fold(self) -> None:
        """Fold the futures that ended since the last call into the counters."""
        with self._lock:
            self._fold()

    def _fold(self) -> None:
        batch = []
        pop = self._ended.popleft
        for _ in range(len(self._ended)):  # popleft is atomic; appends may go on
            batch.append(pop())
        if not batch:
            return
        self._cells.update(_cell_counts(map(attrgetter("fsm_history"), batch)))
        recent = self._recent
        for record in batch[-RECENT:]:
            recent[record.task_id] = record
        while len(recent) > RECENT:
            recent.popitem(last=False)

    def find(self, task_id: bytes) -> FutureRecord | None:
        """The record of a live future or of one of the ``RECENT`` latest ended."""
        future = self._client.futures.get(task_id)
        if future is not None:
            return _record(future, live=future.state not in TERMINAL_STATES)
        with self._lock:
            self._fold()
            return self._recent.get(task_id)

    def snapshot(self) -> dict[str, Any]:
        """Every figure the page shows, as plain JSON types (reused for
        ``SNAPSHOT_EVERY`` seconds)."""
        with self._lock:
            now = time.monotonic()
            if self._snapshot is not None and now < self._snapshot_at + self._reuse_for:
                return self._snapshot
            cpu = time.thread_time()
            self._fold()
            self._snapshot = self._take(now)
            self._snapshot_at = now
            cost = time.thread_time() - cpu
            self._reuse_for = max(SNAPSHOT_EVERY, SNAPSHOT_COST_RATIO * cost)
            return self._snapshot

    def _take(self, now: float) -> dict[str, Any]:
        client = self._client
        stats = client.stats()
        # One C-level copy: the I/O thread may change the registry meanwhile.
        live = list(client.futures.values())
        live_states = list(map(attrgetter("state"), live))
        cells = self._cells + _cell_counts(map(attrgetter("fsm_history"), live))

        states = {
            state.value: 0 if state in TERMINAL_STATES else live_states.count(state)
            for state in _STATES
        }
        states[FutureState.DONE.value] = stats["completed"] + stats["failed"]
        states[FutureState.CANCELLED.value] = sum(stats["cancelled"].values())

        transitions = []
        stale = dict.fromkeys((s.value for s in _STATES), 0)
        stale_recv = 0
        for (source, trigger), cell in TRANSITION_TABLE.items():
            key = (_TRIGGERS.index(trigger), _STATES.index(source), _STATES.index(cell.dest))
            count = cells.get(key, 0)
            if (source, trigger) in _STALE_CELLS:
                stale[source.value] += count
                stale_recv += count if trigger in _RECV else 0
                continue
            transitions.append(
                {
                    "source": source.value,
                    "trigger": trigger.value,
                    "dest": cell.dest.value,
                    "outcome": cell.outcome.name if cell.outcome else None,
                    "count": count,
                }
            )
        # Stale messages for a task the client no longer holds (ended and released, or
        # unknown) are in stats() only; a live future's are in its history as well.
        stale["released"] = max(0, stats["stale_messages"] - stale_recv)

        outcomes = {
            outcome.value: stats["cancelled"].get(outcome.value, 0) for outcome in CancelOutcome
        }
        outcomes[CancelOutcome.FAILED.value] = sum(
            t["count"] for t in transitions if t["outcome"] == CancelOutcome.FAILED.name
        )

        ended = sum(stats["cancelled"].values()) + stats["completed"] + stats["failed"]
        self._rate.append((now, ended))
        first_time, first_ended = self._rate[0]
        rate = (ended - first_ended) / (now - first_time) if now > first_time else 0.0

        latest_live = [_record(f, live=True).as_json() for f in reversed(live[-LATEST:])]
        latest_ended = [r.as_json() for r in reversed(list(self._recent.values())[-LATEST:])]
        return {
            "engine": type(client.engine).__name__,
            "address": client.address,
            "states": states,
            "transitions": transitions,
            "outcomes": outcomes,
            "stale": stale,
            "stats": stats,
            "tasks_per_second": rate,
            "latest_live": latest_live,
            "latest_ended": latest_ended,
        }
