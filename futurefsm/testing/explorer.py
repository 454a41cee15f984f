"""Exhaustive exploration: every sequence of steps for one future, up to a depth.

``explore(depth)`` runs every sequence of ``Step``s (by default all ten: ``sent``,
``user_cancel`` as ``cancel(wait=False)``, a result of each status, a confirm of each
kind, ``cancel_timed_out`` and ``connection_lost``) of length 1 to ``depth`` against a
real future from a ``FutureHarness`` (a fresh one per sequence), and checks every
invariant against ``ExpectedWorld`` after the last step (every prefix is run as a
sequence of its own, so every step of every sequence is checked). The future starts
``pending`` with a counting waiter and a counting done-callback installed.

Pruning (``dedup=True``, the default): the walk is breadth first, and a prefix whose
*observable state* was already reached by an earlier prefix of the same or smaller
length is not extended: whatever follows behaves as it did after the first one. The
observable state is everything a later step or check can depend on: the model's
state, cancel outcome, kind of kept result, TaskCancels sent, whether the cancel
deadline passed, callback and waiter counts, and the implementation's own snapshot
(state, stdlib state, outcome, registration, and whether the history reached
``HISTORY_SELF_LOOP_LIMIT``, the one length at which recording changes). Payload identities
are not part of it: each result carries a fresh payload, and the checks compare
against the model's. ``ExplorationReport.states_reached`` lets a test confirm the
pruning empirically: with and without it, the same states are reached.
The report says how many sequences that covers (``len(steps) ** k`` for each length
k) and how many were actually run; ``dedup=False`` runs every one of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..fsm import HISTORY_SELF_LOOP_LIMIT, Effect, FutureState, Trigger
from .harness import CountingWaiter, FutureHarness, FutureUnderTest, HarnessFactory
from .harness import TaskFutureHarness as _DefaultHarness
from .invariants import (
    InvariantViolation,
    check_matches_model,
    check_notifications,
    check_snapshot,
    check_user_view,
    describe_future,
)
from .model import CallbackKind, ExpectedWorld
from .steps import Step, payload_for

__all__ = ["EXPLORED_STEPS", "ExplorationReport", "Violation", "explore", "run_sequence"]

EXPLORED_STEPS: tuple[Step, ...] = tuple(Step)
"""The default alphabet: every ``Step``, ``sent`` and ``user_cancel`` included."""


@dataclass(frozen=True)
class Violation:
    """A sequence after which an invariant failed, and the report of the future."""

    sequence: tuple[Step, ...]
    error: str
    """The first line of the failure: the steps so far and what was wrong."""
    report: str
    """The whole failure: that line, the future's history table and path diagram."""

    def __str__(self) -> str:
        return self.report


@dataclass
class ExplorationReport:
    """What ``explore`` did."""

    depth: int
    steps: tuple[Step, ...]
    dedup: bool
    sequences_covered: int = 0
    """Sequences of length 1..depth covered: ``sum(len(steps) ** k)``."""
    sequences_run: int = 0
    """Sequences actually run on a fresh future (each checked after every step)."""
    steps_run: int = 0
    """Steps delivered in all (a sequence of length k counts k)."""
    states_reached: list[int] = field(default_factory=list)
    """Per length 1..depth: distinct observable states reached by sequences that long
    or shorter."""
    keys: set[tuple[Any, ...]] = field(default_factory=set, repr=False)
    """Every observable state reached."""
    cells: set[tuple[FutureState, Trigger]] = field(default_factory=set)
    """Every (state, trigger) cell of the table some step fired in."""
    violations: list[Violation] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        """One paragraph for a test log."""
        mode = "deduplicated on observable state" if self.dedup else "no pruning"
        return (
            f"explored every sequence of {len(self.steps)} steps up to depth {self.depth} "
            f"({mode}): {self.sequences_covered:,} sequences covered, "
            f"{self.sequences_run:,} run ({self.steps_run:,} steps), distinct states "
            f"reached by depth {self.states_reached}, {len(self.violations)} violations, "
            f"{self.seconds:.1f} s"
        )


class _Run:
    """One future, its model and its probes, driven by one sequence."""

    def __init__(self, harness: FutureHarness) -> None:
        self.harness = harness
        self.fut: FutureUnderTest = harness.create()
        self.model = ExpectedWorld()
        self.model.add_future()
        self.waiter = CountingWaiter.install(self.fut.future)
        self.callback_calls = [0]
        calls = self.callback_calls

        def count(_: Any) -> None:
            calls[0] += 1

        self.fut.future.add_done_callback(count)
        self.model.add_callback(0, CallbackKind.COUNT, None)
        self.payloads = 0
        self.cells: list[tuple[FutureState, Trigger]] = []

    def apply(self, step: Step) -> None:
        """Deliver ``step`` (``user_cancel`` as ``cancel(wait=False)``) to both sides."""
        self.cells.append((self.model.futures[0].state, step.trigger))
        if step is Step.USER_CANCEL:
            returned = self.fut.future.cancel(wait=False)
            self.model.cancel(0, deadline_passed=False, wait=False)
            expected = self.model.futures[0].state is not FutureState.DONE
            if returned is not expected:
                raise InvariantViolation(f"cancel(wait=False) returned {returned}")
            return
        self.payloads += 1
        payload = payload_for(step, self.payloads)
        stale = self.fut.deliver(step, payload)
        cell = self.model.step(0, step, payload)
        want = cell.effect is Effect.STALE
        if stale is not None and stale is not want:
            raise InvariantViolation(f"{step} reported stale={stale}, the table says {want}")

    def check(self) -> tuple[Any, ...]:
        """Check every invariant; return the observable-state key."""
        expected = self.model.futures[0]
        snap = self.fut.snapshot()
        check_snapshot("future", snap)
        check_matches_model("future", snap, expected)
        sent = self.fut.cancels_sent()
        if sent != expected.cancels_sent:
            raise InvariantViolation(f"{sent} TaskCancels sent, expected {expected.cancels_sent}")
        check_user_view("future", self.fut, expected)
        check_notifications("future", expected, self.waiter, self.callback_calls)
        # The history's length changes what a step records only once it reaches
        # HISTORY_SELF_LOOP_LIMIT (stale self-loops stop being recorded); its content was
        # checked above and later steps can only append to it.
        history = None if snap.history is None else len(snap.history) >= HISTORY_SELF_LOOP_LIMIT
        waiter = (self.waiter.results, self.waiter.exceptions, self.waiter.cancellations)
        return (
            self.model.key(),
            (snap.state, snap.stdlib_state, snap.cancel_outcome, history, snap.registered),
            waiter,
            tuple(self.callback_calls),
        )


def run_sequence(
    sequence: Sequence[Step],
    harness_factory: HarnessFactory = _DefaultHarness,
    *,
    check_every_step: bool = True,
    cells: set[tuple[FutureState, Trigger]] | None = None,
) -> tuple[Any, ...]:
    """Run one sequence on a fresh future and check every invariant after every step
    (or, with ``check_every_step=False``, after the last one only: ``explore`` runs
    every prefix as a sequence of its own). Return the final observable-state key.
    Raises ``InvariantViolation`` (with a report of the future) on failure. The table
    cells the steps fired in are added to ``cells`` if given."""
    harness = harness_factory()
    try:
        run = _Run(harness)
        key = run.check()
        last = len(sequence)
        for number, step in enumerate(sequence, start=1):
            try:
                run.apply(step)
                if check_every_step or number == last:
                    key = run.check()
            except InvariantViolation as error:
                done = ", ".join(s.value for s in sequence[:number])
                report = describe_future("future", run.fut, run.model.futures[0])
                raise InvariantViolation(f"after [{done}]: {error}\n{report}") from error
        if cells is not None:
            cells.update(run.cells)
        return key
    finally:
        harness.close()


def explore(
    depth: int,
    *,
    harness_factory: HarnessFactory = _DefaultHarness,
    steps: Iterable[Step] = EXPLORED_STEPS,
    dedup: bool = True,
    max_violations: int = 10,
    on_sequence: Callable[[tuple[Step, ...]], None] | None = None,
) -> ExplorationReport:
    """Run every sequence of ``steps`` of length 1..``depth`` (see the module
    docstring); return an ``ExplorationReport``. Violations are collected (up to
    ``max_violations``, then the walk stops), not raised."""
    alphabet = tuple(steps)
    report = ExplorationReport(depth, alphabet, dedup)
    report.sequences_covered = sum(len(alphabet) ** k for k in range(1, depth + 1))
    started = time.monotonic()
    seen = report.keys
    frontier: list[tuple[Step, ...]] = [()]
    for _ in range(depth):
        next_frontier: list[tuple[Step, ...]] = []
        for prefix in frontier:
            for step in alphabet:
                sequence = (*prefix, step)
                if on_sequence is not None:
                    on_sequence(sequence)
                report.sequences_run += 1
                report.steps_run += len(sequence)
                try:
                    key = run_sequence(
                        sequence, harness_factory, check_every_step=False, cells=report.cells
                    )
                except InvariantViolation as error:
                    report.violations.append(
                        Violation(sequence, str(error).split("\n")[0], str(error))
                    )
                    if len(report.violations) >= max_violations:
                        report.seconds = time.monotonic() - started
                        return report
                    continue
                if not dedup or key not in seen:
                    next_frontier.append(sequence)
                seen.add(key)
        report.states_reached.append(len(seen))
        frontier = next_frontier
    report.seconds = time.monotonic() - started
    return report
