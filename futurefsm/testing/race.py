"""The race machine: a hypothesis ``RuleBasedStateMachine`` over futures of any
implementation that has a ``FutureHarness``.

Theory of operation
-------------------
Up to ``max_futures`` futures live on one harness. Rules deliver inbound messages
(results of each status, confirms of each kind, duplicates, messages for unknown or
released task ids) and local events (sent, cancel deadlines through the transport,
connection lost) on an ``IOThread``, and make user calls (``cancel()``,
``cancel(wait=False)``, ``cancelled()``, ``result()``, ``exception()``,
``concurrent.futures.wait`` in all three modes, ``as_completed``, ``add_done_callback``)
from user threads. ``ExpectedWorld`` replays every step on the transition table.

Blocking calls are deterministic: a rule starts one on its own thread and returns only
once the call has finished or is parked in ``Condition.wait``; after every step, each
call whose answer has arrived (by the model) is joined with a deadline and its return
value checked, and each call whose answer has not arrived must still be waiting.

One rule, ``burst``, is a real race: one delivery, up to three ``cancel(wait=False)``,
an ``add_done_callback`` and possibly a ``cancel(timeout=0)`` (whose waiter fires
``cancel_timed_out`` itself, racing the delivery as a user thread races the I/O thread
in a client) are released together by a barrier. Its outcome depends on scheduling, so
the model then keeps whichever serial order explains what happened (there must be
one), each racing ``cancel(wait=False)`` must have returned what it could read after
its request in one of those orders, and the calls that were waiting meanwhile are
checked leniently.

After every step every future is checked (``invariants``): state, outcome and kept
result as the table says; the stdlib's ``_state``/``running()``/``done()`` per
docs/transitions.md; a history that walks the table with exactly one terminal transition;
callbacks and waiters notified exactly once; ``cancelled()`` implies ``done()``;
``result()`` raises ``CancelledError`` exactly when cancelled; TaskCancels sent once per
request; stale deliveries reported as stale. Teardown loses the connection, which must
end every future, and joins every call.

On failure hypothesis prints the steps, and the machine ``note()``s each future's
history table and path diagram.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hypothesis import note
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, precondition, rule

from ..fsm import Effect, FutureState
from ..fsm import Trigger as T
from . import threads
from .harness import CountingWaiter, FutureHarness, FutureUnderTest, HarnessFactory
from .harness import TaskFutureHarness as _DefaultHarness
from .invariants import (
    InvariantViolation,
    Outcome,
    check_matches_model,
    check_notifications,
    check_result_outcome,
    check_snapshot,
    check_user_view,
    describe_future,
)
from .model import CallbackKind, ExpectedFuture, ExpectedWorld, ResolutionKind
from .steps import DELIVERABLE_STEPS, MESSAGE_STEPS, Step, payload_for
from .threads import IOThread, UserCall

__all__ = ["FutureRaceMachine", "make_race_machine"]

LONG = 60.0
"""Timeout of blocking calls: they must be woken by an event, never by the clock."""

_MAX_CALLS = 8
_CANCEL_IN_FLIGHT_OR_DONE = (FutureState.CANCEL_REQUESTED, FutureState.CANCELLED)
_F = TypeVar("_F", bound=Callable[..., Any])
_RETURN_WHEN = (cf.FIRST_COMPLETED, cf.FIRST_EXCEPTION, cf.ALL_COMPLETED)


@dataclass(eq=False)
class FutureRecord:
    """A future under test with its counting waiter and callback probes."""

    index: int
    fut: FutureUnderTest
    waiter: CountingWaiter
    probes: list[list[int]] = field(default_factory=list)
    last_delivery: tuple[Step, Any] | None = None

    def __repr__(self) -> str:
        return f"f{self.index}"


@dataclass(eq=False)
class PendingCall:
    """A user call on its own thread, and how to judge it against the model."""

    call: UserCall
    should_return: Callable[[], bool]
    verify: Callable[[Outcome, bool], None]
    """Checks the outcome; the flag says whether strict (serial) checks apply."""
    strict: bool = True


def _interleavings(threads: Sequence[Sequence[str]]) -> list[tuple[str, ...]]:
    """Every merge of the threads' op sequences that keeps each thread's order."""
    if not any(threads):
        return [()]
    merged: set[tuple[str, ...]] = set()
    for index, ops in enumerate(threads):
        if ops:
            rest = [*threads[:index], ops[1:], *threads[index + 1 :]]
            merged.update((ops[0], *tail) for tail in _interleavings(rest))
    return sorted(merged)


def _step(method: _F) -> _F:
    """Wrap a rule: run it, then check every invariant; on failure note the futures."""

    @functools.wraps(method)
    def wrapper(self: _RaceMachineBase, *args: Any, **kwargs: Any) -> Any:
        try:
            self._terminal_before = {r for r in self.records if self._expected(r).terminal}
            result = method(self, *args, **kwargs)
            self._check_all()
            self._settle()
            return result
        except BaseException:
            self._failed = True
            note(self._describe())
            raise

    return wrapper  # type: ignore[return-value]


class _RaceMachineBase(RuleBasedStateMachine):
    """Shared body of every race machine; ``make_race_machine`` binds the harness."""

    harness_factory: HarnessFactory = _DefaultHarness
    max_futures = 3
    bursts = True
    deadline: float | None = None
    """Seconds a call may take before it counts as blocked (None: ``threads.DEADLINE``)."""
    futures = Bundle("futures")

    def __init__(self) -> None:
        super().__init__()
        self.harness: FutureHarness = type(self).harness_factory()
        self.io = IOThread()
        self.harness.attach_io_thread(self.io.thread)
        self.model = ExpectedWorld()
        self.records: list[FutureRecord] = []
        self.calls: list[PendingCall] = []
        self._payloads = 0
        self._stale_ids = 0
        self._failed = False
        self._probe_lock = threading.Condition()
        self._terminal_before: set[FutureRecord] = set()
        """Futures terminal when the current step began (one step, such as a lost
        connection, can end several, and a waiter may wake between two of them)."""

    # ------------------------------------------------------------------ helpers

    @property
    def _limit(self) -> float:
        return threads.DEADLINE if self.deadline is None else self.deadline

    def _expected(self, record: FutureRecord) -> ExpectedFuture:
        return self.model.futures[record.index]

    def _payload(self, step: Step) -> Any:
        self._payloads += 1
        return payload_for(step, self._payloads)

    def _new_record(self) -> FutureRecord:
        fut = self.harness.create()
        record = FutureRecord(len(self.records), fut, CountingWaiter.install(fut.future))
        self.records.append(record)
        self.model.add_future()
        return record

    def _deliver(self, record: FutureRecord, step: Step, payload: Any, *, routed: bool) -> None:
        expected = self._expected(record)
        was_terminal = expected.terminal
        harness, fut = self.harness, record.fut
        if routed:
            stale = self.io.run(
                lambda: harness.deliver_to_id(fut.task_id, step, payload), step, self._limit
            )
        else:
            stale = self.io.run(lambda: fut.deliver(step, payload), step, self._limit)
        record.last_delivery = (step, payload)
        if routed and was_terminal:
            want_stale = True  # released: the registry no longer knows the id
        else:
            want_stale = self.model.step(record.index, step, payload).effect is Effect.STALE
        if stale is not None and stale is not want_stale:
            raise InvariantViolation(
                f"{record}: {step} was reported {'stale' if stale else 'not stale'}, "
                f"the table says {'stale' if want_stale else 'not stale'}"
            )

    def _probe(
        self, record: FutureRecord, kind: CallbackKind, target: FutureRecord | None
    ) -> Callable[[Any], None]:
        calls = [0]
        record.probes.append(calls)
        condition = self._probe_lock

        def callback(future: Any) -> None:
            with condition:
                calls[0] += 1
                condition.notify_all()
            if not future.done():
                raise InvariantViolation(f"{record}: done-callback ran before done()")
            if kind is CallbackKind.RAISE:
                raise RuntimeError("a done-callback that fails (the future must log it)")
            if kind is CallbackKind.CANCEL and target is not None:
                target.fut.future.cancel()  # in a callback: must not block
            if kind is CallbackKind.QUERY and target is not None:
                other = target.fut.future
                other.cancelled()  # in a callback: must not wait for a cancel in flight
                other.done()
                with contextlib.suppress(Exception):
                    other.result(timeout=0)

        return callback

    def _start(
        self,
        label: str,
        fn: Callable[[], Any],
        should_return: Callable[[], bool],
        verify: Callable[[Outcome, bool], None],
    ) -> None:
        call = UserCall(label, fn).start()
        call.settle(self._limit)
        self.calls.append(PendingCall(call, should_return, verify))

    # ------------------------------------------------------------------ checks

    def _settle(self) -> None:
        """Join the calls whose answer has arrived; the others must still wait."""
        waiting = []
        for pending in self.calls:
            if pending.should_return():
                outcome = pending.call.join(self._limit)
                pending.verify(outcome, pending.strict)
            elif pending.strict and pending.call.finished.is_set():
                raise InvariantViolation(
                    f"{pending.call.label} returned {pending.call.outcome!r} before its "
                    "answer arrived"
                )
            else:
                waiting.append(pending)
        self.calls = waiting

    def _check_all(self) -> None:
        for record in self.records:
            expected = self._expected(record)
            name = repr(record)
            snap = record.fut.snapshot()
            check_snapshot(name, snap)
            check_matches_model(name, snap, expected)
            sent = record.fut.cancels_sent()
            if sent != expected.cancels_sent:
                raise InvariantViolation(
                    f"{name}: {sent} TaskCancels sent, expected {expected.cancels_sent} "
                    "(one per request that left running)"
                )
            check_user_view(name, record.fut, expected)
            wanted = [c.calls for c in expected.callbacks]
            with self._probe_lock:
                self._probe_lock.wait_for(
                    lambda r=record, w=wanted: [p[0] for p in r.probes] >= w, self._limit
                )
                calls = [p[0] for p in record.probes]
            check_notifications(name, expected, record.waiter, calls)
        terminal = {r for r in self.records if self._expected(r).terminal}
        done, _ = cf.wait([r.fut.future for r in self.records], timeout=0)
        if done != {r.fut.future for r in terminal}:
            raise InvariantViolation(f"wait(timeout=0) says done: {done}; terminal: {terminal}")

    def _describe(self) -> str:
        parts = ["Futures at the failure:"]
        for record in self.records:
            futures = self.model.futures
            expected = futures[record.index] if record.index < len(futures) else None
            parts.append(describe_future(repr(record), record.fut, expected))
        for pending in self.calls:
            parts.append(f"pending call: {pending.call!r}")
        return "\n".join(parts)

    # ------------------------------------------------------------------ futures

    def _create(self, sent: bool) -> FutureRecord:
        record = self._new_record()
        if sent:
            self._deliver(record, Step.SENT, None, routed=False)
        return record

    @initialize(target=futures, sent=st.booleans())
    @_step
    def first_future(self, sent: bool) -> FutureRecord:
        """The first future, pending or already sent."""
        return self._create(sent)

    @precondition(lambda self: len(self.records) < self.max_futures)
    @rule(target=futures, sent=st.booleans())
    @_step
    def new_future(self, sent: bool) -> FutureRecord:
        """Another future, pending or already sent."""
        return self._create(sent)

    # ------------------------------------------------------------------ deliveries

    @rule(f=futures, step=st.sampled_from(DELIVERABLE_STEPS), routed=st.booleans())
    @_step
    def deliver(self, f: FutureRecord, step: Step, routed: bool) -> None:
        """One message or local event for ``f``, direct or routed by task id."""
        self._deliver(f, step, self._payload(step), routed=routed)

    @rule(f=futures)
    @_step
    def deliver_duplicate(self, f: FutureRecord) -> None:
        """The last message ``f`` got, again (same payload object)."""
        if f.last_delivery is not None:
            step, payload = f.last_delivery
            self._deliver(f, step, payload, routed=False)

    @rule(step=st.sampled_from(MESSAGE_STEPS))
    @_step
    def deliver_to_unknown_id(self, step: Step) -> None:
        """A message for a task id nobody has: stale, and nothing changes."""
        self._stale_ids += 1
        task_id = b"\xff" * 8 + self._stale_ids.to_bytes(8, "big")
        harness, payload = self.harness, self._payload(step)
        stale = self.io.run(
            lambda: harness.deliver_to_id(task_id, step, payload), step, self._limit
        )
        if stale is False:
            raise InvariantViolation(f"{step} for an unknown task id was not stale")

    @rule()
    @_step
    def expire_cancels(self) -> None:
        """Every cancel deadline passes, enforced by the transport."""
        self.io.run(self.harness.expire_cancels, "expire_cancels", self._limit)
        self.model.expire_cancels()

    @rule()
    @_step
    def lose_connection(self) -> None:
        """The connection is lost: every live future gets ``connection_lost``."""
        self.io.run(self.harness.lose_connection, "lose_connection", self._limit)
        self.model.lose_connection()

    # ------------------------------------------------------------------ user calls

    @rule(f=futures, timeout=st.sampled_from([LONG, 0.0]))
    @_step
    def cancel_without_waiting(self, f: FutureRecord, timeout: float) -> None:
        """``cancel(timeout, wait=False)`` from a user thread."""
        future = f.fut.future
        outcome = UserCall.run(
            f"{f}.cancel(wait=False)", lambda: future.cancel(timeout, wait=False), self._limit
        )
        self.model.cancel(f.index, deadline_passed=timeout == 0, wait=False)
        state = self._expected(f).state
        if outcome != ("value", state is not FutureState.DONE):
            raise InvariantViolation(f"{f}: cancel(wait=False) gave {outcome!r} in {state}")

    @precondition(lambda self: len(self.calls) < _MAX_CALLS)
    @rule(f=futures, timeout=st.sampled_from([LONG, 0.0]))
    @_step
    def start_cancel(self, f: FutureRecord, timeout: float) -> None:
        """``cancel(timeout)`` from a user thread: waits for the answer (or times out
        at once with ``timeout=0``)."""
        future = f.fut.future

        def verify(outcome: Outcome, strict: bool) -> None:
            self._verify_bool(f, "cancel()", outcome, strict)

        self._start(
            f"{f}.cancel({timeout})",
            lambda: future.cancel(timeout),
            lambda: self._expected(f).state is not FutureState.CANCEL_REQUESTED,
            verify,
        )
        self.model.cancel(f.index, deadline_passed=timeout == 0, wait=True)

    @precondition(lambda self: len(self.calls) < _MAX_CALLS)
    @rule(f=futures)
    @_step
    def start_cancelled(self, f: FutureRecord) -> None:
        """``cancelled()`` from a user thread: waits while a cancel is in flight."""
        future = f.fut.future

        def verify(outcome: Outcome, strict: bool) -> None:
            self._verify_bool(f, "cancelled()", outcome, strict)

        self._start(
            f"{f}.cancelled()",
            future.cancelled,
            lambda: self._expected(f).state is not FutureState.CANCEL_REQUESTED,
            verify,
        )
        self.model.cancelled_called(f.index)

    def _verify_bool(self, f: FutureRecord, call: str, outcome: Outcome, strict: bool) -> None:
        state = self._expected(f).state
        kind, value = outcome
        if kind != "value" or not isinstance(value, bool):
            raise InvariantViolation(f"{f}: {call} gave {kind} {value!r}")
        if strict and value is not (state is FutureState.CANCELLED):
            raise InvariantViolation(f"{f}: {call} returned {value} and the future is in {state}")
        if value and state is not FutureState.CANCELLED:
            raise InvariantViolation(f"{f}: {call} returned True but the future is in {state}")

    @precondition(lambda self: len(self.calls) < _MAX_CALLS)
    @rule(f=futures, exception=st.booleans())
    @_step
    def start_result(self, f: FutureRecord, exception: bool) -> None:
        """``result(timeout)`` or ``exception(timeout)`` from a user thread."""
        future = f.fut.future
        call = future.exception if exception else future.result
        label = f"{f}.{'exception' if exception else 'result'}({LONG})"

        def verify(outcome: Outcome, strict: bool) -> None:
            expected = self._expected(f)
            if exception:
                kind, value = outcome
                if kind == "value":
                    # exception() returns what result() would raise, or None.
                    outcome = ("raised", value) if value is not None else ("value", None)
                    resolution = expected.resolution
                    if value is None and resolution and resolution.kind is ResolutionKind.VALUE:
                        outcome = ("value", resolution.payload)
            check_result_outcome(repr(f), label, expected, outcome)

        self._start(label, lambda: call(LONG), lambda: self._expected(f).terminal, verify)

    @precondition(lambda self: len(self.calls) < _MAX_CALLS)
    @rule(
        fs=st.lists(futures, min_size=1, max_size=3, unique_by=id),
        return_when=st.sampled_from(_RETURN_WHEN),
    )
    @_step
    def start_wait(self, fs: Sequence[FutureRecord], return_when: str) -> None:
        """``concurrent.futures.wait(fs, timeout, return_when)`` from a user thread."""
        futures = [r.fut.future for r in fs]
        by_future = {r.fut.future: r for r in fs}

        def satisfied(done: set[FutureRecord]) -> bool:
            if return_when == cf.ALL_COMPLETED or len(done) == len(fs):
                return len(done) == len(fs)
            if return_when == cf.FIRST_COMPLETED:
                return bool(done)
            return any(self._failed_with_exception(r) for r in done)

        def terminal() -> set[FutureRecord]:
            return {r for r in fs if self._expected(r).terminal}

        def verify(outcome: Outcome, strict: bool) -> None:
            kind, value = outcome
            if kind != "value":
                raise InvariantViolation(f"wait({fs}, {return_when}) raised {value!r}")
            done = {by_future[f] for f in value.done}
            not_done = {by_future[f] for f in value.not_done}
            if done | not_done != set(fs) or done & not_done:
                raise InvariantViolation(f"wait({fs}): done {done} / not done {not_done}")
            if not done <= terminal() or (strict and not self._terminal_before & set(fs) <= done):
                raise InvariantViolation(
                    f"wait({fs}, {return_when}) says done {done}; terminal: {terminal()}"
                )
            if not satisfied(done):
                raise InvariantViolation(f"wait({fs}, {return_when}) returned early: {done}")

        self._start(
            f"wait({fs}, {return_when})",
            lambda: cf.wait(futures, LONG, return_when),
            lambda: satisfied(terminal()),
            verify,
        )

    def _failed_with_exception(self, record: FutureRecord) -> bool:
        expected = self._expected(record)
        resolution = expected.resolution
        return (
            expected.state is FutureState.DONE
            and resolution is not None
            and resolution.kind is not ResolutionKind.VALUE
        )

    @precondition(lambda self: len(self.calls) < _MAX_CALLS)
    @rule(fs=st.lists(futures, min_size=1, max_size=3, unique_by=id))
    @_step
    def start_as_completed(self, fs: Sequence[FutureRecord]) -> None:
        """Iterate ``as_completed(fs, timeout)`` from a user thread."""
        futures = [r.fut.future for r in fs]

        def iterate() -> list[tuple[Any, bool]]:
            return [(f, f.done()) for f in cf.as_completed(futures, LONG)]

        def verify(outcome: Outcome, strict: bool) -> None:
            kind, value = outcome
            if kind != "value":
                raise InvariantViolation(f"as_completed({fs}) raised {value!r}")
            yielded = [f for f, _ in value]
            if len(yielded) != len(futures) or set(yielded) != set(futures):
                raise InvariantViolation(f"as_completed({fs}) yielded {yielded}")
            if not all(done for _, done in value):
                raise InvariantViolation(f"as_completed({fs}) yielded a future not done")

        self._start(
            f"as_completed({fs})",
            iterate,
            lambda: all(self._expected(r).terminal for r in fs),
            verify,
        )

    @rule(f=futures, kind=st.sampled_from(CallbackKind), other=futures)
    @_step
    def add_done_callback(self, f: FutureRecord, kind: CallbackKind, other: FutureRecord) -> None:
        """``add_done_callback`` from a user thread: counts its calls; or raises; or
        cancels ``other``, or queries it (inside a callback: must not block)."""
        callback = self._probe(f, kind, other)
        future = f.fut.future
        outcome = UserCall.run(
            f"{f}.add_done_callback", lambda: future.add_done_callback(callback), self._limit
        )
        if outcome[0] != "value":
            raise InvariantViolation(f"{f}: add_done_callback raised {outcome[1]!r}")
        self.model.add_callback(f.index, kind, other.index)

    # ------------------------------------------------------------------ a real race

    @precondition(lambda self: self.bursts)
    @rule(
        f=futures,
        step=st.sampled_from(DELIVERABLE_STEPS),
        cancellers=st.integers(min_value=0, max_value=3),
        timing_out=st.booleans(),
    )
    @_step
    def burst(self, f: FutureRecord, step: Step, cancellers: int, timing_out: bool) -> None:
        """A delivery on the I/O thread, ``cancellers`` x ``cancel(wait=False)``, an
        ``add_done_callback`` and (``timing_out``) a ``cancel(timeout=0)`` whose waiter
        fires ``cancel_timed_out`` itself, all released at once from their own threads."""
        future, fut, payload = f.fut.future, f.fut, self._payload(step)
        barrier = threading.Barrier(cancellers + 2 + timing_out)
        callback = self._probe(f, CallbackKind.COUNT, None)

        def after_barrier(fn: Callable[[], Any]) -> Callable[[], Any]:
            def run() -> Any:
                barrier.wait(self._limit)
                return fn()

            return run

        delivery = self.io.submit(after_barrier(lambda: fut.deliver(step, payload)))
        users = [
            UserCall(
                f"{f}.add_done_callback", after_barrier(lambda: future.add_done_callback(callback))
            )
        ]
        users += [
            UserCall(f"{f}.cancel(wait=False)", after_barrier(lambda: future.cancel(wait=False)))
            for _ in range(cancellers)
        ]
        if timing_out:
            users.append(UserCall(f"{f}.cancel(0)", after_barrier(lambda: future.cancel(0.0))))
        for user in users:
            user.start()
        outcomes = [user.join(self._limit) for user in users]
        stale = delivery.result(self._limit)
        for pending in self.calls:
            pending.strict = False
        seen_after_cancel = self._resolve_burst(f, step, payload, cancellers, timing_out, stale)
        state = self._expected(f).state
        if outcomes[0][0] != "value":
            raise InvariantViolation(f"{f}: racing add_done_callback raised {outcomes[0][1]!r}")
        # cancel(wait=False) returns what it reads after its request: True in
        # cancel_requested or cancelled. It reads at some point after a user_cancel of
        # an order that explains the burst, not necessarily at the end (a refusal may
        # have come in between, and then cancel(0) asked again and timed out).
        could_return = {s in _CANCEL_IN_FLIGHT_OR_DONE for s in seen_after_cancel}
        for outcome in outcomes[1 : 1 + cancellers]:
            if outcome[0] != "value" or outcome[1] not in could_return:
                raise InvariantViolation(
                    f"{f}: racing cancel(wait=False) gave {outcome!r} in {state}; after a "
                    f"user_cancel the burst's orders pass through {sorted(seen_after_cancel)}"
                )
        if timing_out:
            outcome = outcomes[-1]
            if outcome[0] != "value" or (outcome[1] and state is not FutureState.CANCELLED):
                raise InvariantViolation(f"{f}: racing cancel(0) gave {outcome!r} in {state}")

    def _resolve_burst(
        self,
        f: FutureRecord,
        step: Step,
        payload: Any,
        cancellers: int,
        timing_out: bool,
        stale: bool | None,
    ) -> set[FutureState]:
        """Keep a serial order of the burst that explains what the futures show; return
        the states ``f`` is in after a ``user_cancel`` (``UC``), over every such order.

        The racing calls are ``UC`` (a ``user_cancel``), ``EV`` (the delivery), and for
        ``cancel(0)`` ``UCt`` then ``TOt``: its waiter looks at the state and, if the
        cancel is still in flight, fires ``cancel_timed_out`` (the look and the fire are
        not atomic, so ``TOt`` is tried both as "if in flight" and as "always").
        """
        observed = [(r.fut.snapshot(), r.fut.cancels_sent()) for r in self.records]
        seen = [(snap.state, snap.cancel_outcome, sent) for snap, sent in observed]
        threads = [["EV"]] + [["UC"]] * cancellers + ([["UCt", "TOt"]] if timing_out else [])
        tried = []
        kept = None
        after_cancel: set[FutureState] = set()
        for order in _interleavings(threads):
            for always in (False, True) if timing_out else (False,):
                world = self.model.clone()
                cell = None
                expected = world.futures[f.index]
                states: set[FutureState] = set()
                for op in order:
                    if op == "EV":
                        cell = world.step(f.index, step, payload)
                    elif op == "UC":
                        world.fire(f.index, T.USER_CANCEL)
                    elif op == "UCt":
                        world.fire(f.index, T.USER_CANCEL, deadline_passed=True)
                    elif always or expected.state is FutureState.CANCEL_REQUESTED:
                        world.fire(f.index, T.CANCEL_TIMED_OUT)
                    if op == "UC" or states:
                        states.add(expected.state)
                world.add_callback(f.index, CallbackKind.COUNT, None)
                assert cell is not None
                want = [(e.state, e.outcome, e.cancels_sent) for e in world.futures]
                if seen == want and (stale is None or stale is (cell.effect is Effect.STALE)):
                    kept = kept or world
                    after_cancel |= states
                else:
                    tried.append((order, want))
        if kept is not None:
            self.model = kept
            return after_cancel
        raise InvariantViolation(
            f"no serial order of the burst ({step}, {cancellers} cancel(wait=False)"
            f"{', cancel(0)' if timing_out else ''}) on {f} explains (state, outcome, "
            f"TaskCancels) = {seen} (stale={stale}); the orders give {tried}"
        )

    # ------------------------------------------------------------------ teardown

    def teardown(self) -> None:
        """Lose the connection (every future must end), join every call, check all."""
        try:
            if not self._failed:
                self._teardown_checks()
        finally:
            self.io.close()
            self.harness.close()

    def _teardown_checks(self) -> None:
        try:
            self._terminal_before = {r for r in self.records if self._expected(r).terminal}
            self.io.run(self.harness.lose_connection, "lose_connection", self._limit)
            self.model.lose_connection()
            self._check_all()
            self._settle()
            if self.calls:
                raise InvariantViolation(f"calls still waiting after the end: {self.calls}")
            for record in self.records:
                if not self._expected(record).terminal:
                    raise InvariantViolation(f"{record} is not terminal after connection lost")
        except BaseException:
            note(self._describe())
            raise


def make_race_machine(
    harness_factory: HarnessFactory = _DefaultHarness,
    *,
    max_futures: int = 3,
    bursts: bool = True,
    deadline: float | None = None,
    name: str | None = None,
) -> type[RuleBasedStateMachine]:
    """A race machine class over the futures ``harness_factory()`` makes.

    ``max_futures`` bounds the futures per test case. ``bursts=False`` leaves out the
    one rule whose outcome depends on thread scheduling, so that every failure
    replays exactly (use it when hunting a known bug, to avoid ``FlakyFailure``).
    ``deadline``: seconds a call may take before it counts as blocked (default
    ``threads.DEADLINE``, read when the machine runs); a short one (0.5) lets
    hypothesis shrink a deadlock quickly. ``name`` names the class (hypothesis prints
    it in failing cases).

    For a future with its own contract (not futurefsm's table), or one whose harness
    cannot provide futurefsm's types, use the race kit instead:
    ``futurefsm.testing.check_future``.

    Run it with ``hypothesis.stateful.run_state_machine_as_test(cls, settings=...)``
    or expose ``cls.TestCase`` to pytest/unittest. Use ``deadline=None``: its steps
    start threads.
    """
    namespace = {
        "harness_factory": staticmethod(harness_factory),
        "max_futures": max_futures,
        "bursts": bursts,
        "deadline": deadline,
    }
    return type(name or "FutureRaceMachine", (_RaceMachineBase,), namespace)


FutureRaceMachine = make_race_machine(name="FutureRaceMachine")
"""The race machine over ``TaskFuture`` on the in-memory transport."""
