"""The oracle: what docs/transitions.md says a set of futures must look like.

``ExpectedWorld`` replays, on plain records, every trigger the tools deliver to the
implementation under test, using ``TRANSITION_TABLE`` itself, plus the few things the
table leaves to the adapter: which result a future keeps, how many TaskCancels go
out, which done-callbacks run (and what they do), and in which order the transport's
bulk events (``expire_cancels``, ``lose_connection``) reach the futures. The checks in
``invariants`` compare the implementation with it after every step.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..fsm import TERMINAL_STATES, TRANSITION_TABLE, CancelOutcome, Cell, Effect, FutureState
from ..fsm import Trigger as T
from .steps import Step

__all__ = [
    "CallbackKind",
    "ExpectedCallback",
    "ExpectedFuture",
    "ExpectedWorld",
    "Resolution",
    "ResolutionKind",
]


class ResolutionKind(str, Enum):
    """What a ``done`` future finished with."""

    VALUE = "value"
    EXCEPTION = "exception"
    CONNECTION_LOST = "connection_lost"


@dataclass(frozen=True)
class Resolution:
    """The result a ``done`` future keeps: a value, an exception, or connection lost."""

    kind: ResolutionKind
    payload: Any = None


class CallbackKind(str, Enum):
    """What a done-callback registered by the tools does when it runs."""

    COUNT = "count"
    """Only records the call."""
    RAISE = "raise"
    """Records the call, then raises (the future must log it and carry on)."""
    CANCEL = "cancel"
    """Records the call, then calls ``cancel()`` on a target future: inside a callback
    that must not block, so it acts as ``cancel(wait=False)``."""
    QUERY = "query"
    """Records the call, then asks a target future ``cancelled()``, ``done()`` and
    ``result(timeout=0)``: inside a callback none of them may block or change it."""


@dataclass
class ExpectedCallback:
    """A registered done-callback and how many times it must have run."""

    kind: CallbackKind
    target: int | None = None
    calls: int = 0


@dataclass
class ExpectedFuture:
    """The expected observable state of one future."""

    index: int
    state: FutureState = FutureState.PENDING
    outcome: CancelOutcome | None = None
    resolution: Resolution | None = None
    cancels_sent: int = 0
    first_cancel: int | None = None
    """Sequence number of the first TaskCancel sent (the transport's deadline order)."""
    deadline_passed: bool = False
    """The deadline of the cancel in flight is already in the past."""
    terminal_order: int | None = None
    callbacks: list[ExpectedCallback] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        """True in ``cancelled`` or ``done``."""
        return self.state in TERMINAL_STATES

    def clone(self) -> ExpectedFuture:
        """A copy that shares payloads (exceptions keep their identity) but not lists."""
        copy = ExpectedFuture(**{k: getattr(self, k) for k in self.__dataclass_fields__})
        copy.callbacks = [ExpectedCallback(c.kind, c.target, c.calls) for c in self.callbacks]
        return copy

    def key(self) -> tuple[Any, ...]:
        """Everything that decides this future's future behaviour, payloads abstracted."""
        return (
            self.state,
            self.outcome,
            None if self.resolution is None else self.resolution.kind,
            self.cancels_sent,
            self.deadline_passed,
            tuple((c.kind, c.target, c.calls) for c in self.callbacks),
        )


class ExpectedWorld:
    """Expected states of every future of one harness, driven by the same steps."""

    def __init__(self) -> None:
        self.futures: list[ExpectedFuture] = []
        self._seq = itertools.count()

    def clone(self) -> ExpectedWorld:
        """An independent copy (for comparing the possible orders of a race)."""
        copy = ExpectedWorld()
        copy.futures = [f.clone() for f in self.futures]
        copy._seq = itertools.count(next(self._seq))
        return copy

    def add_future(self) -> ExpectedFuture:
        """A new future in ``pending``."""
        expected = ExpectedFuture(len(self.futures))
        self.futures.append(expected)
        return expected

    def fire(
        self,
        index: int,
        trigger: T,
        *,
        resolution: Resolution | None = None,
        deadline_passed: bool = False,
    ) -> Cell:
        """Apply one trigger to future ``index`` as the table says; return the cell.

        ``resolution`` is what a ``recv_result`` carries; ``deadline_passed`` says
        whether a ``user_cancel`` that sends a TaskCancel has a deadline already past.
        Entering a terminal state runs the future's expected callbacks in order.
        """
        future = self.futures[index]
        source = future.state
        cell = TRANSITION_TABLE[source, trigger]
        if cell.dest is source:
            return cell
        future.state = cell.dest
        if cell.outcome is not None:
            future.outcome = cell.outcome
        if cell.effect is Effect.SEND_CANCEL:
            future.cancels_sent += 1
            future.deadline_passed = deadline_passed
            if future.first_cancel is None:
                future.first_cancel = next(self._seq)
        elif cell.effect is Effect.RESOLVE:
            future.resolution = resolution
        elif cell.effect is Effect.FAIL_CONNECTION_LOST:
            future.resolution = Resolution(ResolutionKind.CONNECTION_LOST)
        if future.terminal:
            future.terminal_order = next(self._seq)
            for callback in future.callbacks:
                self._run_callback(callback)
        return cell

    def step(self, index: int, step: Step, payload: Any = None) -> Cell:
        """Apply a ``Step`` (with the payload a result step carries)."""
        resolution = None
        if step is Step.RESULT_SUCCESS:
            resolution = Resolution(ResolutionKind.VALUE, payload)
        elif step.status is not None:
            resolution = Resolution(ResolutionKind.EXCEPTION, payload)
        return self.fire(index, step.trigger, resolution=resolution)

    def cancel(self, index: int, *, deadline_passed: bool, wait: bool) -> Cell:
        """``cancel(timeout, wait=...)`` by a user thread that may block.

        With ``deadline_passed`` and ``wait`` the caller times out at once and fires
        ``cancel_timed_out`` itself if the cancel is still in flight.
        """
        cell = self.fire(index, T.USER_CANCEL, deadline_passed=deadline_passed)
        if wait and deadline_passed and self.futures[index].state is FutureState.CANCEL_REQUESTED:
            self.fire(index, T.CANCEL_TIMED_OUT)
        return cell

    def cancelled_called(self, index: int) -> None:
        """``cancelled()`` on a cancel in flight whose deadline passed times it out."""
        future = self.futures[index]
        if future.state is FutureState.CANCEL_REQUESTED and future.deadline_passed:
            self.fire(index, T.CANCEL_TIMED_OUT)

    def add_callback(self, index: int, kind: CallbackKind, target: int | None) -> None:
        """``add_done_callback``: registered, or run at once on a terminal future."""
        callback = ExpectedCallback(kind, target)
        future = self.futures[index]
        future.callbacks.append(callback)
        if future.terminal:
            self._run_callback(callback)

    def expire_cancels(self) -> None:
        """The transport's cancel timer fires for every live future with a TaskCancel
        sent, in the order of their first TaskCancel."""
        due = sorted(
            (f for f in self.futures if not f.terminal and f.first_cancel is not None),
            key=lambda f: f.first_cancel or 0,
        )
        for future in due:
            self.fire(future.index, T.CANCEL_TIMED_OUT)

    def lose_connection(self) -> None:
        """``connection_lost`` on every future live now, in creation order."""
        for future in [f for f in self.futures if not f.terminal]:
            self.fire(future.index, T.CONNECTION_LOST)

    def _run_callback(self, callback: ExpectedCallback) -> None:
        callback.calls += 1
        if callback.kind is CallbackKind.CANCEL and callback.target is not None:
            self.fire(callback.target, T.USER_CANCEL)

    def key(self) -> tuple[Any, ...]:
        """The whole world's behaviour-deciding state (for deduplication)."""
        return tuple(f.key() for f in self.futures)
