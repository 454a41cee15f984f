"""The invariants every future must keep, checked against the ``ExpectedWorld`` oracle.

Each check raises ``InvariantViolation`` (an ``AssertionError``) naming the future and
what was wrong. ``describe_future`` renders a future's history as a table and, when the
history is consistent with the table, as a path diagram, for failure reports.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ConnectionLostError
from ..fsm import TERMINAL_STATES, TRANSITION_TABLE, FutureState, HistoryEntry
from .harness import STDLIB_STATE, CountingWaiter, FutureSnapshot, FutureUnderTest
from .model import ExpectedFuture, ResolutionKind

__all__ = [
    "InvariantViolation",
    "Outcome",
    "capture",
    "check_history",
    "check_matches_model",
    "check_notifications",
    "check_result_outcome",
    "check_snapshot",
    "check_user_view",
    "describe_future",
    "format_history",
]


class InvariantViolation(AssertionError):
    """A future broke an invariant of docs/transitions.md, semantics.md or race-kit.md."""


def _fail(name: str, message: str) -> None:
    raise InvariantViolation(f"{name}: {message}")


def check_history(
    name: str,
    history: Sequence[HistoryEntry],
    state: FutureState,
    start: FutureState = FutureState.PENDING,
) -> None:
    """The history is a walk through the table from ``start`` to ``state``, with
    exactly one terminal transition if it ends terminal from a live start, else none."""
    previous = start
    terminal_transitions = 0
    for number, (_, trigger, source, dest) in enumerate(history, start=1):
        if source is not previous:
            _fail(
                name,
                f"history step {number} starts in {source}, but step before ended in {previous}",
            )
        expected = TRANSITION_TABLE[source, trigger].dest
        if dest is not expected:
            _fail(
                name,
                f"history step {number}: {trigger} took {source} to {dest}; the table "
                f"says {expected}",
            )
        if source not in TERMINAL_STATES and dest in TERMINAL_STATES:
            terminal_transitions += 1
        previous = dest
    if previous is not state:
        _fail(name, f"history ends in {previous} but the future is in {state}")
    wanted = 1 if state in TERMINAL_STATES and start not in TERMINAL_STATES else 0
    if terminal_transitions != wanted:
        _fail(name, f"{terminal_transitions} terminal transitions in history (expected {wanted})")


def check_snapshot(name: str, snap: FutureSnapshot) -> None:
    """What concurrent.futures sees agrees with the FSM state (docs/transitions.md, States)."""
    state = snap.state
    expected = (
        STDLIB_STATE[state],
        state in (FutureState.RUNNING, FutureState.CANCEL_REQUESTED),
        state in TERMINAL_STATES,
    )
    seen = (snap.stdlib_state, snap.running, snap.done)
    if seen != expected:
        _fail(name, f"in {state}: (_state, running(), done()) is {seen}, expected {expected}")
    if snap.history is not None:
        check_history(name, snap.history, state)
    if snap.registered is not None and snap.registered is (state in TERMINAL_STATES):
        what = "still held by" if snap.registered else "released by"
        _fail(name, f"in {state} but {what} the transport")


def check_matches_model(name: str, snap: FutureSnapshot, expected: ExpectedFuture) -> None:
    """State and cancel outcome are what the table says for the steps delivered."""
    if snap.state is not expected.state:
        _fail(name, f"is in {snap.state}, the table says {expected.state}")
    if snap.cancel_outcome is not expected.outcome:
        _fail(name, f"cancel_outcome is {snap.cancel_outcome}, expected {expected.outcome}")


def check_user_view(name: str, fut: FutureUnderTest, expected: ExpectedFuture) -> None:
    """``result``/``exception``/``cancelled``/``done`` as a user sees them, without blocking.

    ``result()`` raises ``CancelledError`` exactly when cancelled, returns the value or
    raises the exception the future kept when done, and times out otherwise;
    ``cancelled()`` implies ``done()``. (``cancelled()`` is not called while a cancel
    is in flight: there it waits, which the race machine checks from threads.)
    """
    future = fut.future
    state = expected.state
    if state is not FutureState.CANCEL_REQUESTED:
        cancelled = future.cancelled()
        if cancelled and not future.done():
            _fail(name, "cancelled() is True but done() is False")
        if cancelled is not (state is FutureState.CANCELLED):
            _fail(name, f"cancelled() is {cancelled} in {state}")
    check_result_outcome(
        name, "result(timeout=0)", expected, capture(lambda: future.result(timeout=0))
    )
    try:
        error = future.exception(timeout=0)
    except cf.CancelledError:
        if state is not FutureState.CANCELLED:
            _fail(name, f"exception(timeout=0) raised CancelledError in {state}")
    except cf.TimeoutError:
        if state in TERMINAL_STATES:
            _fail(name, f"exception(timeout=0) timed out in {state}")
    else:
        if state is FutureState.CANCELLED or state not in TERMINAL_STATES:
            _fail(name, f"exception(timeout=0) returned {error!r} in {state}")
        resolution = expected.resolution
        assert resolution is not None
        if resolution.kind is ResolutionKind.VALUE and error is not None:
            _fail(name, f"exception() is {error!r} but the task succeeded")
        if resolution.kind is ResolutionKind.EXCEPTION and error is not resolution.payload:
            _fail(name, f"exception() is {error!r}, expected {resolution.payload!r}")
        if resolution.kind is ResolutionKind.CONNECTION_LOST and not isinstance(
            error, ConnectionLostError
        ):
            _fail(name, f"exception() is {error!r}, expected a ConnectionLostError")


Outcome = tuple[str, Any]
"""What a call gave: ``("value", v)`` or ``("raised", exception)``."""


def capture(call: Callable[[], Any]) -> Outcome:
    """Run ``call`` and return what it gave as an ``Outcome``."""
    try:
        return ("value", call())
    except BaseException as error:  # every outcome is checked by the caller
        return ("raised", error)


def check_result_outcome(name: str, call: str, expected: ExpectedFuture, outcome: Outcome) -> None:
    """``outcome`` of a ``result()`` call is right for the future's expected state:
    ``CancelledError`` exactly when cancelled, the kept value or exception when done,
    a timeout otherwise."""
    kind, got = outcome
    state = expected.state
    if state is FutureState.CANCELLED:
        if not (kind == "raised" and isinstance(got, cf.CancelledError)):
            _fail(name, f"{call} in cancelled gave {kind} {got!r}, expected CancelledError")
        return
    if kind == "raised" and isinstance(got, cf.CancelledError):
        _fail(name, f"{call} raised CancelledError in {state}")
    if state not in TERMINAL_STATES:
        if not (kind == "raised" and isinstance(got, cf.TimeoutError)):
            _fail(name, f"{call} in {state} gave {kind} {got!r}, expected a timeout")
        return
    resolution = expected.resolution
    assert resolution is not None
    if resolution.kind is ResolutionKind.VALUE:
        if kind != "value" or got != resolution.payload:
            _fail(name, f"{call} gave {kind} {got!r}, expected value {resolution.payload!r}")
    elif resolution.kind is ResolutionKind.EXCEPTION:
        if kind != "raised" or got is not resolution.payload:
            _fail(name, f"{call} gave {kind} {got!r}, expected to raise {resolution.payload!r}")
    elif kind != "raised" or not isinstance(got, ConnectionLostError):
        _fail(name, f"{call} gave {kind} {got!r}, expected ConnectionLostError")


def check_notifications(
    name: str,
    expected: ExpectedFuture,
    waiter: CountingWaiter | None,
    callback_calls: Sequence[int],
) -> None:
    """Waiters and callbacks are notified exactly once, on entering a terminal state,
    and with the right kind (cancelled / exception / result)."""
    calls = list(callback_calls)
    wanted = [c.calls for c in expected.callbacks]
    if calls != wanted:
        _fail(name, f"done-callbacks ran {calls} times, expected {wanted}")
    if waiter is None:
        return
    seen = (waiter.results, waiter.exceptions, waiter.cancellations)
    if expected.state is FutureState.CANCELLED:
        want = (0, 0, 1)
    elif expected.state is FutureState.DONE:
        assert expected.resolution is not None
        failed = expected.resolution.kind is not ResolutionKind.VALUE
        want = (0, 1, 0) if failed else (1, 0, 0)
    else:
        want = (0, 0, 0)
    if seen != want:
        _fail(name, f"waiter got (results, exceptions, cancellations) {seen}, expected {want}")


def format_history(history: Sequence[HistoryEntry] | None) -> str:
    """The history as a table of (time, trigger, source, dest), times relative."""
    if history is None:
        return "    (the implementation keeps no history)"
    if not history:
        return "    (no trigger fired)"
    start = history[0][0]
    rows = [f"    {'t (ms)':>9}  {'trigger':<28}{'from':<18}to"]
    for when, trigger, source, dest in history:
        rows.append(
            f"    {(when - start) * 1000:9.3f}  {trigger.value:<28}{source.value:<18}{dest.value}"
        )
    return "\n".join(rows)


def describe_future(name: str, fut: FutureUnderTest, expected: ExpectedFuture | None) -> str:
    """A failure report for one future: expected state, history table, path diagram."""
    try:
        snap: FutureSnapshot | None = fut.snapshot()
    except Exception as error:  # a report must not fail
        snap = None
        lines = [f"{name}: snapshot failed: {error!r}"]
    else:
        lines = [f"{name}: state {snap.state}, cancel_outcome {snap.cancel_outcome}"]
    if expected is not None:
        lines.append(
            f"  expected: state {expected.state}, cancel_outcome {expected.outcome}, "
            f"resolution {expected.resolution}, TaskCancels {expected.cancels_sent}, "
            f"callbacks {[c.calls for c in expected.callbacks]}"
        )
    lines.append(f"  TaskCancels sent: {fut.cancels_sent()}")
    history = snap.history if snap is not None else None
    lines.append("  history:")
    lines.append(format_history(history))
    if history:
        try:
            from ..diagrams import path_diagram

            lines.append("  path (Mermaid):")
            lines.append(path_diagram(history))
        except Exception as error:  # an inconsistent history cannot be drawn
            lines.append(f"  (no path diagram: {error})")
    return "\n".join(lines)
