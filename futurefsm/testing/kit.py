"""The race kit: check any future against the universal invariants and its contract.

Entry points: ``check_future(harness_factory, ...)`` returns a ``RaceReport``;
``assert_race_free(...)`` is the same for pytest: it raises ``RaceFound`` (an
``AssertionError``) whose message is the report.

Theory of operation
-------------------
A *sequence* is a list of ``Move``s (an ``Action`` aimed at one of ``futures``
futures). Each sequence runs on a fresh harness: deliveries on one delivering thread
(the kit's, standing in for the client's I/O thread), user calls each on a thread of
their own. A user call that blocks (``cancel()`` waiting for its answer, ``result()``)
is started and left parked in ``Condition.wait``; it must return once its future is
done. Parked means waiting for one of the sequence's futures (on its condition, or in
its ``result()``); a wait on anything else is the library's own thread at work
(Dask's ``sync()``), waited for up to ``block_timeout`` before it counts as parked.
The futures are read once every done-callback that started has returned or parked.
A call that neither finishes nor parks within ``block_timeout`` seconds (and
whose stack stops moving) is a blocked call, reported with its stack.

After every move the kit reads every future (``done()``, ``cancelled()``,
``result(timeout=0)``, the harness's ``state()``) on the delivering thread and checks
the universal invariants (``laws.UNIVERSAL``), then, if a contract is declared, the
contract's (``laws.CONTRACT``). A violation is recorded and the run goes on: the
contract model follows the state the harness reports, so everything after a first
violation is still checked. Only a blocked delivering thread ends a run.

The search is breadth first over every sequence up to ``depth`` (pruned: a sequence
whose observable state an earlier one reached is not extended), then
``random_runs`` random sequences up to ``max_steps`` long. Each distinct violation
(invariant plus what was seen) is reported once, with the shortest sequence found:
breadth first finds shortest sequences first, and a violation found at random is
shrunk by deleting steps while it still reproduces. Nothing here uses hypothesis: a
sequence that fails once and not on replay is kept as found, never turned into a
flaky-test error.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import logging
import random
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import _base
from dataclasses import dataclass, field, replace
from typing import Any

from .actions import (
    DEFAULT_ACTIONS,
    Action,
    Move,
    RaceHarness,
    ResultValue,
    TaskError,
    Unsupported,
    same_result,
)
from .contract import Contract
from .laws import INVARIANTS, Invariant

__all__ = [
    "BLOCK_TIMEOUT",
    "DEFAULT_CONTRACT",
    "CountingWaiter",
    "Finding",
    "HarnessError",
    "RaceFound",
    "RaceReport",
    "assert_race_free",
    "check_future",
    "run_moves",
]

BLOCK_TIMEOUT = 0.2
"""Default seconds a call may take before the kit looks at whether it is blocked."""

LONG = 60.0
"""Timeout of the user's blocking calls: they must be woken by an event, not the clock."""

DEFAULT_CONTRACT: Any = object()
"""Sentinel: ``contract=`` left out: futurefsm's table for futurefsm's own futures,
none (the universal layer only) for any other."""

_MAX_SHRINK_RUNS = 150
_PROGRESS_AFTER = 5.0
"""Seconds a search runs before it reports progress (then every ``_PROGRESS_EVERY``)."""
_PROGRESS_EVERY = 5.0
_STACK_FRAMES = 8


_PARKED_CODE = threading.Condition.wait.__code__


def is_parked(thread: threading.Thread) -> bool:
    """True if ``thread`` is inside ``threading.Condition.wait`` (waiting to be woken)."""
    frame = sys._current_frames().get(thread.ident or -1)
    return frame is not None and frame.f_code is _PARKED_CODE


class CountingWaiter(_base._Waiter):
    """A concurrent.futures waiter (what ``wait``/``as_completed`` install) that counts
    every notification, to check that waiters are notified exactly once."""

    def __init__(self) -> None:
        super().__init__()
        self.results = 0
        self.exceptions = 0
        self.cancellations = 0
        self._lock = threading.Lock()

    def add_result(self, future: cf.Future[Any]) -> None:
        """Count a result notification."""
        with self._lock:
            self.results += 1
        super().add_result(future)

    def add_exception(self, future: cf.Future[Any]) -> None:
        """Count an exception notification."""
        with self._lock:
            self.exceptions += 1
        super().add_exception(future)

    def add_cancelled(self, future: cf.Future[Any]) -> None:
        """Count a cancellation notification."""
        with self._lock:
            self.cancellations += 1
        super().add_cancelled(future)

    @property
    def total(self) -> int:
        """Notifications of any kind so far."""
        return self.results + self.exceptions + self.cancellations

    @classmethod
    def install(cls, future: cf.Future[Any]) -> CountingWaiter:
        """Install a new counting waiter on ``future`` as ``concurrent.futures.wait`` does
        (under the future's condition), and return it."""
        waiter = cls()
        with future._condition:
            future._waiters.append(waiter)
        return waiter


class HarnessError(RuntimeError):
    """The harness itself failed (e.g. its ``state()`` raised): a bug to fix in the
    harness, named with the method and the steps that led there, not a finding."""


class _CallbackError(Exception):
    """What a raising probe callback raises (on purpose)."""


@dataclass
class Finding:
    """One distinct violation, with the shortest sequence that shows it."""

    invariant: Invariant
    message: str
    """What was wrong, naming the future(s)."""
    moves: tuple[Move, ...]
    """The minimal sequence of steps (the violation shows after the last)."""
    found_after_seconds: float = 0.0
    """Seconds from the start of the search until it was first seen."""
    shrunk_after_seconds: float = 0.0
    """Seconds from the start of the search until its minimal sequence was known."""
    how: str = "breadth-first"
    """``breadth-first``, or ``random, shrunk from N steps``."""
    report: str = ""
    """The readable report: invariant, steps with the states seen, path, output."""

    @property
    def steps(self) -> int:
        """Length of the minimal sequence."""
        return len(self.moves)

    def __str__(self) -> str:
        return self.report or f"{self.invariant.name}: {self.message}"


@dataclass
class RaceReport:
    """What ``check_future`` did and found."""

    harness: str
    contract: Contract | None
    futures: int
    depth: int
    findings: list[Finding] = field(default_factory=list)
    sequences_run: int = 0
    states_reached: int = 0
    unsupported: set[str] = field(default_factory=set)
    """Actions the harness declared unsupported, or refused (``Unsupported``) in
    every state the search met."""
    refused_sometimes: set[str] = field(default_factory=set)
    """Actions refused in some states and done in others (not unsupported)."""
    close_blocked: int = 0
    """Sequences whose ``harness.close()`` did not return (abandoned, not waited for)."""
    seconds: float = 0.0

    @property
    def invariants(self) -> set[str]:
        """Names of the invariants violated."""
        return {f.invariant.name for f in self.findings}

    def summary(self) -> str:
        """One paragraph for a log."""
        contract = self.contract.name if self.contract else "no contract"
        return (
            f"race kit on {self.harness} ({self.futures} future"
            f"{'s' if self.futures != 1 else ''}, {contract}): "
            f"{self.sequences_run:,} sequences (breadth-first to depth {self.depth}, then "
            f"random), {self.states_reached:,} states, {len(self.findings)} finding"
            f"{'s' if len(self.findings) != 1 else ''}, {self.seconds:.1f} s"
            + (f"; unsupported: {sorted(self.unsupported)}" if self.unsupported else "")
            + (
                f"; refused in some states: {sorted(self.refused_sometimes)}"
                if self.refused_sometimes
                else ""
            )
            + (
                f"; harness.close() blocked {self.close_blocked} times"
                if self.close_blocked
                else ""
            )
        )

    def __str__(self) -> str:
        """The summary, then each minimal sequence once with every violation it shows."""
        reports = list(dict.fromkeys(f.report or str(f) for f in self.findings))
        parts = [self.summary()]
        for number, text in enumerate(reports, start=1):
            parts.append(f"\n=== sequence {number} of {len(reports)} ===\n{text}")
        return "\n".join(parts)

    def assert_clean(self) -> None:
        """Raise ``RaceFound`` with the whole report if anything was found."""
        if self.findings:
            raise RaceFound(str(self))


class RaceFound(AssertionError):
    """``assert_race_free`` found violations; the message is the report."""


# ---------------------------------------------------------------------------
# Waiting for threads, with blocked-call detection
# ---------------------------------------------------------------------------


def _parked(thread: threading.Thread, ours: Callable[[], set[int]] | None = None) -> bool:
    """``is_parked``, and not yet woken: a notified thread stays in ``Condition.wait``
    until it runs again, but its waiter lock is released by the notify.

    With ``ours`` (the ids of the sequence's futures and of the conditions the kit
    knows to be theirs), only a wait for one of them counts: a call waiting in
    ``Condition.wait`` for the library's own thread (Dask's ``sync()``, a
    ``Thread.start()``) is busy, not parked until a delivery."""
    if not is_parked(thread):
        return False
    frame = _frame_of(thread)
    waiter = None if frame is None else frame.f_locals.get("waiter")
    locked = getattr(waiter, "locked", None)
    if locked is not None and not locked():
        return False
    if ours is not None and frame is not None:
        condition = frame.f_locals.get("self")
        known = ours()
        lock = getattr(condition, "_lock", None)
        if id(condition) in known or id(lock) in known:
            return True
        # A result()/exception() of one of the futures waits for that future, on
        # whatever its library waits on.
        while frame is not None:
            if frame.f_code.co_name in _WAITS_FOR_ITS_FUTURE:
                if id(frame.f_locals.get("self")) in known:
                    return True
            frame = frame.f_back
        return False
    # Thread.start() waits in Condition.wait until the new thread runs (long, on a
    # loaded machine): a call starting a thread is busy, not waiting to be woken.
    while frame is not None:
        if frame.f_code is _THREAD_START:
            return False
        frame = frame.f_back
    return True


_THREAD_START = threading.Thread.start.__code__
_WAITS_FOR_ITS_FUTURE = ("result", "exception")


def _frame_of(thread: threading.Thread) -> Any:
    return sys._current_frames().get(thread.ident or -1)


def _stack_of(thread: threading.Thread) -> str:
    frame = _frame_of(thread)
    if frame is None:
        return "    (no stack: the thread is gone)"
    lines = traceback.format_stack(frame)[-_STACK_FRAMES:]
    return "".join("    " + line.replace("\n", "\n    ").rstrip() + "\n" for line in lines)


def _wait(
    finished: Callable[[], bool],
    thread: threading.Thread,
    timeout: float,
    *,
    parked_ok: bool,
    ours: Callable[[], set[int]] | None = None,
) -> bool:
    """Wait until ``finished()`` (or, with ``parked_ok``, the thread is parked in
    ``Condition.wait``). False if the thread is blocked: still busy after ``timeout``
    and its stack has stopped moving for a while (a thread that is merely slow, e.g.
    on a loaded machine, keeps moving and is waited for, up to 50 x ``timeout``).

    With ``ours``, a wait on a condition that is not a future's (see ``_parked``) is
    taken for a wait on the library's own thread during ``timeout``, and only then
    for a parked call (a future may wait for its answer on a condition of its own)."""
    start = time.monotonic()
    end, polls = start + timeout, 0
    while time.monotonic() < end:
        # Most calls return at once: look at the thread's stack (sys._current_frames,
        # which costs as much as there are threads) only after a few polls.
        polls += 1
        if finished() or (parked_ok and polls > 8 and _parked(thread, ours)):
            return True
        time.sleep(0.0002)
    still_for = max(0.05, timeout / 2)
    hard_end = time.monotonic() + 50 * timeout
    last, since = None, time.monotonic()
    while time.monotonic() < hard_end:
        if finished() or (parked_ok and _parked(thread)):
            return True
        frame = _frame_of(thread)
        where = None if frame is None else (frame.f_code, frame.f_lasti, frame.f_lineno)
        now = time.monotonic()
        if where != last or _runnable(thread):
            last, since = where, now
        elif now - since >= still_for:
            return False
        time.sleep(0.005)
    return False


def _runnable(thread: threading.Thread) -> bool:
    """True if the OS says ``thread`` is running or waiting for a CPU (Linux: state R
    in /proc), not asleep on a lock: on a loaded machine a thread may wait long for a
    CPU with its stack unchanged, and is not blocked for that."""
    try:
        with open(f"/proc/self/task/{thread.native_id}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return bool(fields) and fields[0] == b"R"


class _Blocked(Exception):
    def __init__(self, stack: str) -> None:
        super().__init__(stack)
        self.stack = stack


class _Delivering:
    """The delivering thread: runs what it is given in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._work: list[Callable[[], None]] = []
        self._ready = threading.Condition(self._lock)
        self._closed = False
        self.job: cf.Future[Any] | None = None
        """What it runs (or ran) last."""
        self.thread = threading.Thread(target=self._loop, name="racekit-delivering", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            with self._ready:
                while not self._work and not self._closed:
                    self._ready.wait()
                if not self._work:
                    return
                job = self._work.pop(0)
            job()

    def run(self, fn: Callable[[], Any], timeout: float) -> Any:
        """Run ``fn`` there; its result, its exception, or ``_Blocked``."""
        out = self.start(fn, timeout, parked_ok=False)
        assert out is not None
        return out.result()

    def start(
        self,
        fn: Callable[[], Any],
        timeout: float,
        *,
        parked_ok: bool,
        ours: Callable[[], set[int]] | None = None,
    ) -> cf.Future[Any] | None:
        """Run ``fn`` there: a finished future of what it gave, None if it parked
        waiting (with ``parked_ok``; the thread is then the caller's to watch), or
        ``_Blocked``."""
        out: cf.Future[Any] = cf.Future()

        def job() -> None:
            try:
                out.set_result(fn())
            except BaseException as error:
                out.set_exception(error)

        with self._ready:
            self._work.append(job)
            self._ready.notify()
        self.job = out
        if not _wait(out.done, self.thread, timeout, parked_ok=parked_ok, ours=ours):
            raise _Blocked(_stack_of(self.thread))
        return out if out.done() else None

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()


@dataclass(eq=False)
class _UserCall:
    label: str
    thread: threading.Thread
    futures: tuple[int, ...]
    kind: str
    follows: bool = False
    outcome: tuple[str, Any] | None = None
    finished: threading.Event = field(default_factory=threading.Event)
    parked_in: str | None = None
    """The state its future was seen in once it had parked: a ``cancel()`` or
    ``cancelled()`` waiting for the answer is resolved once its future is done or has
    left this state."""


# ---------------------------------------------------------------------------
# One run of one sequence
# ---------------------------------------------------------------------------


@dataclass(eq=False)
class _Probe:
    """A done-callback the kit added (the counting one, or one that acts)."""

    behaviour: str | None
    other: int | None
    calls: int = 0
    early: bool = False
    """It ran while ``done()`` was False."""
    returned: int = 0
    """Calls that have returned (or raised): the kit reads the futures only once
    every callback that started has returned, or parked in a wait of its own."""
    thread: threading.Thread | None = None
    """The thread that ran it last."""


@dataclass(eq=False)
class _Fut:
    index: int
    future: Any
    model: str | None
    waiter: CountingWaiter | None
    probes: list[_Probe]
    expected: list[tuple[_Probe, int]] = field(default_factory=list)
    """(probe, calls the model says it must have had)."""
    first_end: tuple[bool, str, Any] | None = None
    kept: tuple[str, Any] | None = None
    """The payload the contract says the future finished with: (kind, payload)."""
    seen: str | None = None
    """The state the harness reported last."""
    said: str | None = None
    """The state the contract expected after the last move (before following the
    implementation)."""
    path: tuple[str, ...] = ()
    """Every state it was seen in, in order (repeats collapsed): part of the search's
    key, since a flag-based future may remember how it got where it is."""
    unnotified: bool = False
    """Last seen cancelled, its waiters not yet notified (the stdlib's ``CANCELLED``)."""
    had_turn: bool = False
    """A delivery to it ran while it was so: the library had its turn to notify."""


@dataclass(frozen=True)
class _Obs:
    done: bool
    cancelled: bool
    result: tuple[str, Any]
    state: object | None
    unnotified: bool = False
    """Cancelled, and (a ``concurrent.futures.Future``) still in the stdlib's
    ``CANCELLED``: its waiters are notified only at ``set_running_or_notify_cancel()``,
    when the executor reaches the task, as the stdlib's own executors do."""
    timed_out: bool = False
    """Done, yet ``result(timeout=0)`` raised ``TimeoutError`` and so did
    ``exception(timeout=0)``: the read timed out, it is not the future's ending."""


@dataclass
class _Violation:
    name: str
    key: tuple[Any, ...]
    message: str
    step: int
    future: int | None = None
    shape: tuple[str, ...] | None = None
    """The states its future went through up to it (repeats collapsed): two
    violations of one invariant are one finding when their shapes are the same."""

    @property
    def finding_key(self) -> tuple[str, tuple[str, ...]]:
        """What tells findings apart: the invariant and the shape of its path."""
        return (self.name, self.shape or ())


class _Run:
    """One sequence on a fresh harness."""

    def __init__(self, kit: _Kit, trace: bool = False) -> None:
        self.kit = kit
        self.trace: list[str] | None = [] if trace else None
        self.histories: dict[int, list[tuple[str, str, str, str, str]]] = {}
        self.violations: list[_Violation] = []
        self.calls: list[_UserCall] = []
        self.dead = False
        self.following_now: set[int] = set()
        """Futures a ``follows_harness`` step just acted on."""
        self.following: set[int] = set()
        self.blocked = False
        """A user call is blocked: the run goes on, but is not worth extending."""
        self.unsupported: str | None = None
        self.step = 0
        self.payloads = itertools.count(1)
        self.lock = threading.Condition()
        self.conditions: set[int] = set()
        """Ids of the kit's own conditions a call may park on (a race's)."""
        self.harness: Any = kit.harness_factory()
        self.io = _Delivering()
        self.retired: list[_Delivering] = []
        """Delivering threads handed over to a parked read of the kit's."""
        attach = getattr(self.harness, "attach_delivering_thread", None)
        self._attached = _attaches(self.harness)
        """The harness treats the delivering thread as its client's I/O thread: a
        read that waits there is a finding, not a parked call."""
        if attach is not None:
            attach(self.io.thread)
        contract = kit.contract
        self.futs: list[_Fut] = []
        for index in range(kit.futures):
            future = self.harness.create()
            try:
                waiter: CountingWaiter | None = CountingWaiter.install(future)
            except AttributeError:  # not a concurrent.futures.Future subclass
                waiter = None
            fut = _Fut(index, future, contract.born_state if contract else None, waiter, [])
            self.futs.append(fut)
            probe = _Probe(None, None)
            fut.probes.append(probe)
            fut.expected.append((probe, 0))
            future.add_done_callback(self._callback(fut, probe))

    # ------------------------------------------------------------------ helpers

    def _ours(self) -> set[int]:
        """Ids of what a parked call waits on: the sequence's futures, their
        ``_condition``, the events of the waiters ``wait``/``as_completed`` installed
        on them, and the kit's own conditions."""
        known = set(self.conditions)
        for fut in self.futs:
            future = fut.future
            known.add(id(future))
            condition = getattr(future, "_condition", None)
            known.add(id(condition))
            for waiter in list(getattr(future, "_waiters", ()) or ()):
                event = getattr(waiter, "event", None)
                known.add(id(getattr(event, "_cond", None)))
        known.discard(id(None))
        return known

    def violate(self, name: str, key: tuple[Any, ...], message: str, future: int | None) -> None:
        self.violations.append(_Violation(name, (name, *key), message, self.step, future))

    def _callback(self, fut: _Fut, probe: _Probe) -> Callable[[Any], None]:
        harness, futs = self.harness, self.futs

        def callback(future: Any) -> None:
            with self.lock:
                probe.calls += 1
                probe.early = probe.early or not future.done()
                probe.thread = threading.current_thread()
                self.lock.notify_all()
            try:
                act(future)
            finally:
                with self.lock:
                    probe.returned += 1
                    self.lock.notify_all()

        def act(future: Any) -> None:
            if probe.behaviour == "raise":
                raise _CallbackError(f"f{fut.index}'s done-callback raises (on purpose)")
            if probe.behaviour == "cancel_other" and probe.other is not None:
                _cancel(harness, futs[probe.other].future)
            if probe.behaviour == "result_other" and probe.other is not None:
                for other in (future, futs[probe.other].future):
                    try:
                        other.result(timeout=0)
                    except (Exception, cf.CancelledError):
                        pass  # any answer will do; blocking is what would be wrong

        return callback

    def _payload(self, action: Action) -> Any:
        n = next(self.payloads)
        if action.payload == "value":
            return ResultValue(n)
        if action.payload == "exception":
            return TaskError(n)
        return None

    def _user(
        self,
        label: str,
        fn: Callable[[], Any],
        futures: tuple[int, ...],
        kind: str,
        follows: bool = False,
    ) -> None:
        """Start a user call on its own thread; wait until it returns or parks."""
        holder: list[_UserCall] = []

        def body() -> None:
            call = holder[0]
            try:
                call.outcome = ("value", fn())
            except BaseException as error:
                call.outcome = ("raised", error)
            call.finished.set()

        thread = threading.Thread(target=body, name=f"racekit-{label}", daemon=True)
        call = _UserCall(label, thread, futures, kind, follows)
        holder.append(call)
        thread.start()
        if not _wait(
            call.finished.is_set, thread, self.kit.block_timeout, parked_ok=True, ours=self._ours
        ):
            self.blocked = True
            self.violate(
                "no_call_blocks_forever",
                (kind, "user call blocked"),
                f"{label} neither returned nor started waiting within "
                f"{self.kit.block_timeout} s: blocked at\n{_stack_of(thread)}",
                futures[0] if futures else None,
            )
            return
        if call.finished.is_set():
            self._judge_returned(call)
        else:
            self.calls.append(call)

    def _race(self, future: Any, calls: Sequence[str]) -> Callable[[], list[tuple[str, Any]]]:
        """The body of a race: ``calls`` on threads of their own, released together by
        a barrier; it waits (parked) until every one has returned."""
        harness, kit = self.harness, self.kit
        named: dict[str, Callable[[], Any]] = {
            "cancel": lambda: _cancel(harness, future),
            "cancelled": future.cancelled,
            "result": lambda: future.result(LONG),
        }

        def race() -> list[tuple[str, Any]]:
            barrier = threading.Barrier(len(calls))
            outcomes: list[tuple[str, Any] | None] = [None] * len(calls)
            ended = threading.Condition()
            self.conditions.add(id(ended))  # the race waits for its calls: parked

            passed = [0]

            def one(number: int, name: str) -> None:
                barrier.wait()
                with ended:
                    passed[0] += 1
                try:
                    outcome: tuple[str, Any] = ("value", named[name]())
                except BaseException as error:
                    outcome = ("raised", error)
                with ended:
                    outcomes[number] = outcome
                    ended.notify_all()

            threads = [
                threading.Thread(target=one, args=(n, c), name=f"racekit-race-{c}", daemon=True)
                for n, c in enumerate(calls)
            ]
            for thread in threads:
                thread.start()
            # Each call is past the barrier (where it waits too), then returns or
            # parks, before the race parks: what is read next does not depend on
            # scheduling more than the race itself does. (Polled: the race must not
            # look parked to the kit before its calls are.)
            while passed[0] < len(calls):
                time.sleep(0.0002)
            # (_wait gives up on a thread that waits long for the GIL on a loaded
            # machine, as it would on a blocked one: ask again, within bounds.)
            until = time.monotonic() + 50 * kit.block_timeout
            for number, thread in enumerate(threads):
                while not _wait(
                    lambda n=number: outcomes[n] is not None,
                    thread,
                    kit.block_timeout,
                    parked_ok=True,
                    ours=self._ours,
                ):
                    if time.monotonic() > until:
                        break
            with ended:
                while any(o is None for o in outcomes):
                    ended.wait()
            return [o for o in outcomes if o is not None]

        return race

    def _judge_returned(self, call: _UserCall) -> None:
        assert call.outcome is not None
        kind, value = call.outcome
        if kind == "raised" and isinstance(value, Unsupported):
            self.unsupported = str(value) or call.label
        elif kind == "raised" and isinstance(value, _CallbackError):
            self.violate(
                "callback_errors_contained",
                (call.kind,),
                f"{call.label} raised the done-callback's exception: {value!r}",
                call.futures[0] if call.futures else None,
            )

    # ------------------------------------------------------------------ one move

    def apply(self, move: Move) -> None:
        """Do ``move``, update the contract model, and check everything."""
        self.step += 1
        action = move.action
        fut = self.futs[move.target] if move.target is not None else None
        future = fut.future if fut is not None else None
        before = [f.seen for f in self.futs]
        models = [f.model for f in self.futs]
        payload = self._payload(action)
        label = str(move)
        harness = self.harness
        try:
            if action.kind == "deliver":
                run = action.run

                def deliver() -> None:
                    if run is not None:
                        run(harness, future, payload)
                    else:
                        harness.deliver(action.name, future, payload)

                targets = tuple(range(len(self.futs))) if fut is None else (fut.index,)
                if action.follows_harness:
                    self.following_now = set(targets)
                if action.thread == "delivering":
                    self._on_delivering_thread(label, deliver, move.target)
                else:
                    self._user(label, deliver, targets, action.name, action.follows_harness)
            elif action.kind == "cancel":
                assert fut is not None
                self._user(label, lambda: _cancel(harness, future), (fut.index,), "cancel")
            elif action.kind == "result":
                assert fut is not None
                self._user(label, lambda: future.result(LONG), (fut.index,), "result")
            elif action.kind in ("wait", "as_completed"):
                every = [f.future for f in self.futs]
                indices = tuple(range(len(self.futs)))
                if action.kind == "wait":
                    mode = getattr(cf, action.return_when)
                    self._user(
                        label, lambda: cf.wait(every, LONG, mode), indices, action.return_when
                    )
                else:
                    self._user(
                        label, lambda: list(cf.as_completed(every, LONG)), indices, "as_completed"
                    )
            elif action.kind == "race":
                assert fut is not None
                race = self._race(future, action.calls)
                # A race with a result() in it waits for the end; one of cancels and
                # cancelled() for the answer.
                kind = "race_result" if "result" in action.calls else "race"
                self._user(label, race, (fut.index,), kind)
            else:
                assert fut is not None
                other = move.other
                probe = _Probe(action.behaviour, other)
                fut.probes.append(probe)
                fut.expected.append((probe, 0))
                callback = self._callback(fut, probe)
                watched = (fut.index,) if other is None else (fut.index, other)
                self._user(label, lambda: future.add_done_callback(callback), watched, "add")
        except Unsupported:
            self.unsupported = action.name
            return
        if self.unsupported is not None:
            return
        self.kit.accepted.add(action.name)
        if action.kind == "deliver" and fut is not None:
            # (A delivery to it: one to all, e.g. a disconnect, may not reach its task.)
            fut.had_turn = fut.had_turn or fut.unnotified
        self._model(move, payload)
        self.check()
        if self.trace is not None:
            self._note(label, before, models)

    def _on_delivering_thread(self, label: str, fn: Callable[[], None], target: int | None) -> None:
        try:
            self.io.run(fn, self.kit.block_timeout)
        except _Blocked as blocked:
            self.dead = True
            self.violate(
                "no_call_blocks_forever",
                ("delivering thread blocked",),
                f"the delivering thread did not finish {label} within "
                f"{self.kit.block_timeout} s: it is blocked at\n{blocked.stack}",
                target,
            )
        except Unsupported as error:
            self.unsupported = str(error) or label
        except BaseException as error:
            origin = "the done-callback's" if isinstance(error, _CallbackError) else "an"
            self.violate(
                "nothing_raises_on_delivering_thread",
                (type(error).__name__,),
                f"{label} raised {origin} exception on the delivering thread: {error!r}",
                target,
            )

    # ------------------------------------------------------------------ the model

    def _model(self, move: Move, payload: Any) -> None:
        contract, action = self.kit.contract, move.action
        if action.kind == "callback":
            fut = self.futs[move.target or 0]
            if contract is not None and fut.model in contract.terminal:
                self._run_probe(fut, len(fut.expected) - 1)
            return
        if contract is None or action.trigger is None or action.follows_harness:
            return
        if move.target is None:
            targets = [f for f in self.futs if f.model not in contract.terminal]
        else:
            targets = [self.futs[move.target]]
        for fut in targets:
            self._fire(fut, action.trigger, action.payload, payload)

    def _fire(self, fut: _Fut, trigger: str, kind: str | None = None, payload: Any = None) -> None:
        contract = self.kit.contract
        assert contract is not None and fut.model is not None
        source = fut.model
        dest = contract.fire(source, trigger)
        fut.model = dest
        if dest != source and dest in contract.terminal and source not in contract.terminal:
            if kind is not None and dest not in contract.cancelled:
                fut.kept = (kind, payload)
            for number in range(len(fut.expected)):
                self._run_probe(fut, number)

    def _run_probe(self, fut: _Fut, number: int) -> None:
        probe, calls = fut.expected[number]
        fut.expected[number] = (probe, calls + 1)
        if probe.behaviour == "cancel_other" and probe.other is not None and self.kit.contract:
            if self.kit.cancel_trigger is not None:
                self._fire(self.futs[probe.other], self.kit.cancel_trigger)

    # ------------------------------------------------------------------ checks

    def _observe(self) -> list[_Obs]:
        """Read every future on the delivering thread. ``done()``, ``result(0)`` and
        the harness's ``state()`` never wait; ``cancelled()`` may (a future that waits
        for a cancel's answer), so on a future not done it is read on its own: if it
        waits there, on a thread the harness was not told is its I/O thread, it is a
        parked call (resumed by later deliveries, judged when it returns) and a fresh
        delivering thread takes over. The kit never blocks itself on its own reads."""
        state = getattr(self.harness, "state", None)
        attached = self._attached

        def read() -> list[_Obs]:
            seen = []
            for fut in self.futs:
                future = fut.future
                done = future.done()
                # (On the client's own I/O thread cancelled() must not wait: read it.)
                cancelled = future.cancelled() if done or attached else False
                try:
                    result: tuple[str, Any] = ("value", future.result(timeout=0))
                except BaseException as error:
                    result = ("raised", error)
                timed_out = done and _timed_out(future, result, cancelled)
                unnotified = cancelled and _raw_state(future) == "CANCELLED"
                seen.append(
                    _Obs(done, cancelled, result, self._state(state, fut), unnotified, timed_out)
                )
            return seen

        observed = self.io.run(read, self.kit.block_timeout)
        reading = {i for call in self.calls if call.kind == "cancelled" for i in call.futures}
        for index, (fut, obs) in enumerate(zip(self.futs, observed, strict=True)):
            if obs.done or attached or index in reading:
                continue
            out = self.io.start(
                fut.future.cancelled, self.kit.block_timeout, parked_ok=True, ours=self._ours
            )
            if out is None:
                self._adopt_parked_read(index)
            elif out.exception() is not None:
                raise out.exception()  # type: ignore[misc]
            elif out.result():
                unnotified = _raw_state(fut.future) == "CANCELLED"
                observed[index] = replace(obs, cancelled=True, unnotified=unnotified)
        return observed

    def _state(self, state: Callable[[Any], object] | None, fut: _Fut) -> object | None:
        """``harness.state(future)``; an exception there is the harness's bug, named."""
        if state is None:
            return None
        try:
            return state(fut.future)
        except Exception as error:
            moves = ", ".join(str(m) for m in self.kit.last_moves[: self.step]) or "none"
            raise HarnessError(
                f"{type(self.harness).__name__}.state(f{fut.index}) raised {error!r} "
                f"after the steps [{moves}]: fix the harness's state()"
            ) from error

    def _adopt_parked_read(self, index: int) -> None:
        """The delivering thread waits in the kit's ``cancelled()`` read of future
        ``index``: make it a parked call, and deliver from a fresh thread."""
        io, job = self.io, self.io.job
        assert job is not None
        call = _UserCall(f"cancelled(f{index}) (the kit's read)", io.thread, (index,), "cancelled")

        def returned(out: cf.Future[Any]) -> None:
            error = out.exception()
            call.outcome = ("raised", error) if error is not None else ("value", out.result())
            call.finished.set()

        job.add_done_callback(returned)
        self.calls.append(call)
        io.close()
        self.retired.append(io)
        self.io = _Delivering()
        attach = getattr(self.harness, "attach_delivering_thread", None)
        if attach is not None:
            attach(self.io.thread)

    def check(self) -> None:
        """Every invariant, for every future, now."""
        if self.dead:
            self._shape_violations()
            return
        for call in self.calls:
            # A waiting call the last step woke runs until it returns or waits again
            # before anything is read, so what is read does not depend on scheduling.
            # (Already taken for parked when it started: any Condition.wait will do.)
            if not _wait(call.finished.is_set, call.thread, self.kit.block_timeout, parked_ok=True):
                self.blocked = True
        self._callbacks_settle()
        try:
            observed = self._observe()
        except _Blocked as blocked:
            self.dead = True
            self.violate(
                "no_call_blocks_forever",
                ("reading state blocked",),
                "reading the futures (done(), cancelled(), result(timeout=0)) blocked at\n"
                + blocked.stack,
                None,
            )
            self._shape_violations()
            return
        for fut, obs in zip(self.futs, observed, strict=True):
            self._universal(fut, obs)
        self.following = self.following_now | {
            i for call in self.calls if call.follows for i in call.futures
        }
        self.following_now = set()
        self._pending(observed)
        if self.kit.contract is not None:
            for fut, obs in zip(self.futs, observed, strict=True):
                self._contract(fut, obs)
        for fut, obs in zip(self.futs, observed, strict=True):
            fut.unnotified = obs.unnotified
            fut.seen = _state_name(obs)
            if not fut.path or fut.path[-1] != fut.seen:
                fut.path += (fut.seen,)
        self._shape_violations()

    def _callbacks_settle(self) -> None:
        """Before reading: every done future's callbacks have started, and every
        callback that started has returned or parked (one that cancels another
        future may still be cancelling it, on the library's thread)."""
        deadline = time.monotonic() + self.kit.block_timeout
        for fut in self.futs:
            if fut.future.done():
                with self.lock:
                    self.lock.wait_for(
                        lambda f=fut: all(p.calls for p in f.probes),
                        max(0.0, deadline - time.monotonic()),
                    )
        for fut in self.futs:
            for probe in fut.probes:
                thread = probe.thread
                if thread is None or thread is threading.current_thread():
                    continue
                _wait(
                    lambda p=probe: p.returned >= p.calls,
                    thread,
                    self.kit.block_timeout,
                    parked_ok=True,
                    ours=self._ours,
                )

    def _shape_violations(self) -> None:
        for violation in self.violations:
            if violation.shape is None:
                fut = None if violation.future is None else self.futs[violation.future]
                violation.shape = () if fut is None else fut.path

    def _universal(self, fut: _Fut, obs: _Obs) -> None:
        name = f"f{fut.index}"
        kind, value = obs.result
        ending = _ending(obs)
        if obs.timed_out:
            # One bug, whatever the path: reported once (one shape), and the timeout is
            # never taken for the future's ending (nothing else is judged on it).
            self.violate(
                "result_raises_cancelled_iff_cancelled",
                ("done, timed out",),
                f"{name}: done() is True (cancelled() {obs.cancelled}) but "
                f"result(timeout=0) raised {value!r}, and so did exception(timeout=0)",
                fut.index,
            )
            self.violations[-1].shape = ("done", "result(timeout=0) timed out")
            ending = (obs.cancelled, "cancelled" if obs.cancelled else "unread", None)
            if fut.first_end is None:
                fut.first_end = ending
            elif fut.first_end[0] != obs.cancelled:
                self._changed_ending(fut, obs, ending)
            self._notifications(fut, obs, ending)
            return
        if obs.cancelled and not obs.done:
            self.violate(
                "cancelled_implies_done",
                (),
                f"{name}: cancelled() is True, done() False",
                fut.index,
            )
        raised_cancelled = kind == "raised" and isinstance(value, cf.CancelledError)
        if raised_cancelled is not obs.cancelled:
            self.violate(
                "result_raises_cancelled_iff_cancelled",
                ("cancelled" if obs.cancelled else "not cancelled", kind),
                f"{name}: cancelled() is {obs.cancelled} but result(timeout=0) "
                f"{'raised' if kind == 'raised' else 'returned'} {value!r}",
                fut.index,
            )
        elif not obs.done and not (kind == "raised" and isinstance(value, cf.TimeoutError)):
            self.violate(
                "result_raises_cancelled_iff_cancelled",
                ("not done", kind),
                f"{name}: done() is False but result(timeout=0) gave {kind} {value!r}",
                fut.index,
            )
        if fut.first_end is not None and fut.first_end[1] == "unread" and obs.done:
            if not ending[0]:
                fut.first_end = ending  # finished, as it was; now its ending is read
        if fut.first_end is not None:
            was = fut.first_end
            same = obs.done and was[:2] == ending[:2]
            if same and was[1] != "cancelled" and was[2] is not ending[2]:
                same = self._same(was[2], ending[2])
            if not same:
                self._changed_ending(fut, obs, ending)
        elif obs.done:
            fut.first_end = ending
        self._notifications(fut, obs, ending)

    def _changed_ending(self, fut: _Fut, obs: _Obs, ending: tuple[bool, str, Any]) -> None:
        was = fut.first_end
        assert was is not None
        now = _describe_ending(ending) if obs.done else "done() is False"
        self.violate(
            "one_terminal_state",
            (was[0], ending[0] if obs.done else "not done"),
            f"f{fut.index} was done ({_describe_ending(was)}), now {now}",
            fut.index,
        )

    def _notifications(self, fut: _Fut, obs: _Obs, ending: tuple[bool, str, Any]) -> None:
        name = f"f{fut.index}"
        want = 1 if obs.done else 0
        # Callbacks may run on another thread than the one that finished the future:
        # give them block_timeout to arrive.
        with self.lock:
            self.lock.wait_for(
                lambda: all(p.calls >= want for p in fut.probes), self.kit.block_timeout
            )
            calls = [p.calls for p in fut.probes]
            early = any(p.early for p in fut.probes)
        if any(c != want for c in calls) or early:
            self.violate(
                "callbacks_run_once",
                (max(calls), early),
                f"{name}: done-callbacks ran {calls} times "
                f"{'(one before done() was True) ' if early else ''}with done() {obs.done}",
                fut.index,
            )
        waiter = fut.waiter
        if waiter is None or (obs.timed_out and not obs.cancelled):
            return  # (a timed-out read does not tell how it ended)
        seen = (waiter.results, waiter.exceptions, waiter.cancellations)
        # A cancelled future's waiters are notified when the library reaches its task
        # (set_running_or_notify_cancel), not by cancel(): unnotified is fine until a
        # delivery to it has given the library its turn.
        if not obs.done or (obs.unnotified and not fut.had_turn):
            expected = (0, 0, 0)
        elif obs.cancelled:
            expected = (0, 0, 1)
        elif ending[1] == "raised":
            expected = (0, 1, 0)
        else:
            expected = (1, 0, 0)
        # (Read unnotified: the library may have notified since the read.)
        allowed = {expected, (0, 0, 1)} if obs.unnotified and not fut.had_turn else {expected}
        if seen not in allowed:
            self.violate(
                "waiters_notified_once",
                (sum(seen), expected),
                f"{name}: a concurrent.futures waiter got (results, exceptions, "
                f"cancellations) {seen}, expected {expected}"
                + (" (cancelled, and a delivery to it since)" if fut.had_turn else ""),
                fut.index,
            )

    def _resolved(self, call: _UserCall, observed: list[_Obs]) -> str | None:
        """What the parked ``call`` waited for, if it has happened: every future it
        watches is done, or (``cancel()``, ``cancelled()``: they wait for a cancel's
        answer, which may leave the future live) its future left the state it parked
        in. None if not yet."""
        # wait() and as_completed() see a cancelled future only once it is notified,
        # which the library may leave until its turn (see _notifications).
        collective = call.kind in ("FIRST_COMPLETED", "FIRST_EXCEPTION", "ALL_COMPLETED")
        collective = collective or call.kind == "as_completed"
        done = [
            i
            for i in call.futures
            if observed[i].done
            and not (collective and observed[i].unnotified and not self.futs[i].had_turn)
        ]
        if len(done) == len(call.futures):
            names = ", ".join(f"f{i}" for i in call.futures)
            return f"{names} {'is' if len(call.futures) == 1 else 'are'} done"
        if call.kind == "FIRST_COMPLETED" and done:
            return f"f{done[0]} is done (FIRST_COMPLETED)"
        failed = [
            i
            for i in done
            if not observed[i].cancelled
            and not observed[i].timed_out
            and observed[i].result[0] == "raised"
        ]
        if call.kind == "FIRST_EXCEPTION" and failed:
            return f"f{failed[0]} raised (FIRST_EXCEPTION)"
        if call.kind in ("cancel", "cancelled", "race"):
            now = _state_name(observed[call.futures[0]])
            if call.parked_in is None:
                call.parked_in = now
            elif now != call.parked_in:
                return f"f{call.futures[0]} left {call.parked_in} (now {now})"
        return None

    def _pending(self, observed: list[_Obs]) -> None:
        still = []
        for call in self.calls:
            resolved = None if call.finished.is_set() else self._resolved(call, observed)
            if call.finished.is_set() or (
                resolved is not None
                and _wait(
                    call.finished.is_set, call.thread, self.kit.block_timeout, parked_ok=False
                )
            ):
                self._judge_returned(call)
                if call.kind == "result":
                    self._judge_result(call, observed[call.futures[0]])
                elif call.kind == "cancelled":
                    self._judge_cancelled(call, observed[call.futures[0]])
                else:
                    self._judge_collective(call, observed)
                continue
            if resolved is not None:
                self.blocked = True
                self.violate(
                    "no_call_blocks_forever",
                    (call.kind, "still waiting once resolved"),
                    f"{call.label} is still waiting although {resolved}: it waits at\n"
                    + _stack_of(call.thread),
                    call.futures[0],
                )
                continue
            still.append(call)
        self.calls = still

    def _judge_collective(self, call: _UserCall, observed: list[_Obs]) -> None:
        """What ``wait``, ``as_completed`` and a race returned."""
        if call.outcome is None or call.outcome[0] != "value":
            return
        value = call.outcome[1]
        futures = [f.future for f in self.futs]
        if call.kind in ("FIRST_COMPLETED", "FIRST_EXCEPTION", "ALL_COMPLETED"):
            done, not_done = value
            early = [f"f{futures.index(f)}" for f in done if not f.done()]
            if early or (call.kind == "ALL_COMPLETED" and not_done):
                self.violate(
                    "waiters_notified_once",
                    (call.kind,),
                    f"{call.label} returned with {early or 'futures'} in its done set not "
                    f"done, not_done {len(not_done)}",
                    call.futures[0],
                )
        elif call.kind == "as_completed":
            if sorted(map(id, value)) != sorted(map(id, futures)) or not all(
                f.done() for f in value
            ):
                self.violate(
                    "waiters_notified_once",
                    ("as_completed",),
                    f"{call.label} yielded {len(value)} futures for {len(futures)}, "
                    "not each done future once",
                    call.futures[0],
                )
        elif isinstance(value, list):  # a race: judge each call as its own
            index = call.futures[0]
            names = call.label.split(": ", 1)[1].rstrip(")").split(", ")
            for name, outcome in zip(names, value, strict=False):
                one = _UserCall(f"{name}(f{index}) in {call.label}", call.thread, (index,), name)
                one.outcome = outcome
                if name == "result":
                    self._judge_result(one, observed[index])
                elif name == "cancelled" and outcome == ("value", True):
                    # (False may be right: it may have run before the cancel did.)
                    self._judge_cancelled(one, observed[index])

    def _judge_cancelled(self, call: _UserCall, obs: _Obs) -> None:
        assert call.outcome is not None
        kind, value = call.outcome
        index = call.futures[0]
        if kind == "value" and value is (obs.done and obs.cancelled):
            return
        ending = "is not done" if not obs.done else f"ended {_describe_ending(_ending(obs))}"
        self.violate(
            "cancelled_tells_the_ending",
            (kind, obs.done),
            f"{call.label} gave {kind} {value!r} after waiting, but f{index} {ending}",
            index,
        )

    def _judge_result(self, call: _UserCall, obs: _Obs) -> None:
        assert call.outcome is not None
        kind, value = call.outcome
        index = call.futures[0]
        if obs.timed_out:
            return  # the read timed out: nothing to compare with (reported as such)
        if not obs.done:
            self.violate(
                "result_raises_cancelled_iff_cancelled",
                ("returned while not done",),
                f"{call.label} gave {kind} {value!r} while f{index} is not done",
                index,
            )
            return
        raised_cancelled = kind == "raised" and isinstance(value, cf.CancelledError)
        want_kind, want = obs.result
        if raised_cancelled is not obs.cancelled or (
            not obs.cancelled and (kind != want_kind or not self._same(want, value))
        ):
            self.violate(
                "result_raises_cancelled_iff_cancelled",
                ("blocked result()", kind, obs.cancelled),
                f"{call.label} gave {kind} {value!r}; result(timeout=0) now gives "
                f"{want_kind} {want!r} (cancelled() {obs.cancelled})",
                index,
            )

    def _same(self, expected: Any, got: Any) -> bool:
        hook = getattr(self.harness, "same_result", None)
        return bool((hook or same_result)(expected, got))

    def _contract(self, fut: _Fut, obs: _Obs) -> None:
        contract = self.kit.contract
        assert contract is not None and fut.model is not None
        name = f"f{fut.index}"
        fut.said = fut.model
        if obs.state is not None:
            if contract.knows(obs.state):
                seen = contract.name_of(obs.state)
                if fut.index in self.following:
                    fut.model = fut.said = seen  # the contract cannot say: follow
                elif seen != fut.model:
                    self.violate(
                        "contract_state",
                        (fut.model, seen),
                        f"{name} is in {seen}, the contract says {fut.model}",
                        fut.index,
                    )
                    fut.model = seen  # follow the implementation: keep checking after it
            else:
                raise ValueError(
                    f"the harness reports state {obs.state!r} for {name}, which the "
                    f"contract {contract.name!r} does not know (it knows "
                    f"{list(contract.states)}): give the contract this future declares, "
                    "have state() report its states, or pass contract=None"
                )
        done, cancelled = fut.model in contract.terminal, fut.model in contract.cancelled
        if (obs.done, obs.cancelled) != (done, cancelled):
            self.violate(
                "contract_done",
                (fut.model, obs.done, obs.cancelled),
                f"{name}: done() {obs.done}, cancelled() {obs.cancelled}; in {fut.model} the "
                f"contract says done() {done}, cancelled() {cancelled}",
                fut.index,
            )
        if fut.kept is not None and obs.done and not obs.cancelled and not obs.timed_out:
            kind, payload = fut.kept
            got_kind, got = obs.result
            want_kind = "value" if kind == "value" else "raised"
            if got_kind != want_kind or not self._same(payload, got):
                self.violate(
                    "contract_result",
                    (kind,),
                    f"{name} finished with {got_kind} {got!r}; the contract says it keeps "
                    f"the delivered {payload!r}",
                    fut.index,
                )

    # ------------------------------------------------------------------ reports

    def _note(self, label: str, before: list[str | None], models: list[str | None]) -> None:
        assert self.trace is not None
        if self.dead:
            self.trace.append(f"  {self.step}. {label:<44}(blocked: nothing more can be read)")
            return
        changes = []
        for fut, was, model_was in zip(self.futs, before, models, strict=True):
            if fut.seen != was or fut.said != model_was:
                text = f"f{fut.index}: {was or '?'} -> {fut.seen or '?'}"
                if self.kit.contract is not None and fut.seen != fut.said:
                    text += f" (contract: {fut.said})"
                changes.append(text)
            trigger = self._trigger_for(label, fut.index)
            if trigger is not None and was is not None and fut.seen is not None:
                self.histories.setdefault(fut.index, []).append(
                    (label, trigger, was, fut.seen, model_was or "")
                )
        self.trace.append(f"  {self.step}. {label:<44}{'; '.join(changes)}")

    def _trigger_for(self, label: str, index: int) -> str | None:
        for move in self.kit.last_moves[self.step - 1 : self.step]:
            if move.action.trigger is None:
                return None
            if move.target == index or (move.target is None and move.action.scope == "all"):
                return move.action.trigger
        return None

    def key(self) -> tuple[Any, ...]:
        """Everything later moves can depend on (payload identities abstracted)."""
        futs = tuple(
            (
                f.model,
                f.path,
                f.first_end[:2] if f.first_end else None,
                None if f.waiter is None else f.waiter.total,
                tuple((p.behaviour, p.other, p.calls) for p in f.probes),
            )
            for f in self.futs
        )
        calls = tuple(sorted((c.kind, c.futures, c.finished.is_set()) for c in self.calls))
        return (futs, calls, self.dead)

    def close(self) -> None:
        """``harness.close()`` on a thread of its own: a close that blocks (it may run
        done-callbacks that wait) is abandoned after a while and counted, never waited
        for forever; one that raises re-raises here."""
        errors: list[BaseException] = []

        def close() -> None:
            try:
                self.harness.close()
            except BaseException as error:
                errors.append(error)

        closing = threading.Thread(target=close, name="racekit-close", daemon=True)
        closing.start()
        closing.join(max(2.0, 10 * self.kit.block_timeout))
        self.io.close()
        if closing.is_alive():
            self.kit.close_blocked += 1
        elif errors:
            raise errors[0]


def _attaches(harness: Any) -> bool:
    """True if ``harness`` does something with ``attach_delivering_thread`` (a
    ``RaceHarness`` that overrides it, or a duck-typed harness that has it)."""
    method = getattr(type(harness), "attach_delivering_thread", None)
    return method is not None and method is not RaceHarness.attach_delivering_thread


def _cancel(harness: Any, future: Any) -> Any:
    cancel = getattr(harness, "cancel", None)
    return cancel(future) if cancel is not None else future.cancel()


def _raw_state(future: Any) -> str | None:
    """The stdlib state of a ``concurrent.futures.Future`` (an enum's value), if any."""
    raw = getattr(future, "_state", None)
    raw = getattr(raw, "value", raw)
    return raw if isinstance(raw, str) else None


def _timed_out(future: Any, result: tuple[str, Any], cancelled: bool) -> bool:
    """True if ``result(timeout=0)`` of a done future raised ``TimeoutError`` as a
    timeout, not as the task's own exception: the future is cancelled, or
    ``exception(timeout=0)`` does not give that same exception back (it times out,
    returns None or another exception)."""
    if result[0] != "raised" or not isinstance(result[1], TimeoutError):
        return False
    exception = getattr(future, "exception", None)
    if cancelled or exception is None:
        return True
    try:
        raised = exception(timeout=0)
    except BaseException:
        return True
    return not (
        raised is result[1] or (type(raised) is type(result[1]) and raised.args == result[1].args)
    )


def _ending(obs: _Obs) -> tuple[bool, str, Any]:
    if obs.cancelled:
        return (True, "cancelled", None)
    kind, value = obs.result
    return (False, kind, value)


def _describe_ending(ending: tuple[bool, str, Any]) -> str:
    cancelled, kind, value = ending
    if cancelled:
        return "cancelled"
    if kind == "unread":
        return "finished, its ending unread: result(timeout=0) timed out"
    return f"result {value!r}" if kind == "value" else f"exception {value!r}"


def _state_name(obs: _Obs) -> str:
    if obs.state is not None:
        return Contract.name_of(obs.state)
    if obs.cancelled:
        return "CANCELLED"
    if obs.done:
        return "FINISHED"
    return "not done"


# ---------------------------------------------------------------------------
# The search
# ---------------------------------------------------------------------------


class _Capture(logging.Handler):
    """Collects log records of the given loggers (a done-callback's traceback logged by
    concurrent.futures, the client's own logs) for the run under way."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if len(self.lines) < 200:
                self.lines.append(self.format(record))
        except Exception:  # a log line must never break a run
            pass


class _Kit:
    def __init__(
        self,
        harness_factory: Callable[[], Any],
        contract: Contract | None,
        actions: Sequence[Action],
        futures: int,
        block_timeout: float,
    ) -> None:
        self.harness_factory = harness_factory
        self.contract = contract
        self.futures = futures
        self.block_timeout = block_timeout
        cancels = [a.trigger for a in actions if a.kind == "cancel"]
        self.cancel_trigger = cancels[0] if cancels else None
        self.last_moves: tuple[Move, ...] = ()
        self.capture = _Capture()
        self.close_blocked = 0
        self.accepted: set[str] = set()
        """Actions some run did (not refused with ``Unsupported``)."""

    def run(self, moves: Sequence[Move], trace: bool = False) -> _Run:
        """Run ``moves`` on a fresh harness; stop early once the delivering thread is
        dead or an action is unsupported."""
        self.last_moves = tuple(moves)
        self.capture.lines = []
        run = _Run(self, trace)
        try:
            run.check()
            for move in moves:
                if run.dead or run.blocked or run.unsupported is not None:
                    break
                run.apply(move)
        finally:
            run.close()
        return run


def _alphabet(actions: Sequence[Action], futures: int) -> list[Move]:
    moves: list[Move] = []
    for action in actions:
        if action.scope == "all":
            moves.append(Move(action))
        elif action.needs_other:
            moves += [Move(action, t, o) for t in range(futures) for o in range(futures) if o != t]
        else:
            moves += [Move(action, t) for t in range(futures)]
    return moves


def _report(kit: _Kit, violations: Sequence[_Violation], moves: tuple[Move, ...]) -> str:
    """Replay ``moves`` with tracing and render every violation they show."""
    run = kit.run(moves, trace=True)
    output = list(kit.capture.lines)
    contract = kit.contract
    steps = f"{len(moves)} step{'s' if len(moves) != 1 else ''}"
    names = ", ".join(dict.fromkeys(v.name for v in violations))
    lines = [f"violated after {steps}: {names}"]
    for violation in violations:
        invariant = INVARIANTS[violation.name]
        lines += [
            f"- {invariant.layer} invariant {invariant.name}:",
            f"    {violation.message}".replace("\n", "\n    "),
            f"    ({invariant.doc})",
        ]
    lines += [
        "",
        f"minimal steps ({kit.futures} future{'s' if kit.futures != 1 else ''}"
        + (f", born {contract.born_state} under {contract.name}" if contract else "")
        + "; states as the harness reports them):",
        *(run.trace or []),
    ]
    for index in dict.fromkeys(v.future for v in violations if v.future is not None):
        history = run.histories.get(index, [])
        if contract is not None and contract.futurefsm_table:
            lines += _path(history, index)
        elif history:
            path = " -> ".join([history[0][2]] + [f"[{t}] {dest}" for _, t, _, dest, _ in history])
            lines += ["", f"path of f{index}: {path}"]
    if output:
        lines += ["", "captured output:", *("  " + line.replace("\n", "\n  ") for line in output)]
    return "\n".join(lines)


def _path(history: list[tuple[str, str, str, str, str]], index: int) -> list[str]:
    from ..diagrams import path_diagram

    if not history:
        return []
    entries = [
        (float(n), trigger, source, dest) for n, (_, trigger, source, dest, _) in enumerate(history)
    ]
    try:
        return ["", f"path of f{index} on the diagram (Mermaid):", path_diagram(entries)]
    except ValueError as error:
        # The implementation took a step the table does not have: draw the steps that
        # agree with it, and say which one does not.
        good = []
        for entry in entries:
            try:
                path_diagram([*good, entry])
            except ValueError:
                break
            good.append(entry)
        text = ["", f"path of f{index} on the diagram (Mermaid), up to the step off the table:"]
        text.append(f"  ({error})")
        if good:
            text.append(path_diagram(good))
        return text


def _progress_to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _default_contract(harness: Any) -> Contract | None:
    """``Contract.futurefsm()`` if ``harness`` makes futurefsm's own futures (born as
    the first one is), else None: another future never declared futurefsm's table."""
    from ..client.future import TaskFuture
    from ..fsm import FutureState

    try:
        future = harness.create()
    except Exception:  # not ours to judge here: the search will report it
        return None
    if not isinstance(future, TaskFuture):
        return None
    return Contract.futurefsm(born="sent" if future.state is FutureState.RUNNING else "pending")


def check_future(
    harness_factory: Callable[[], Any],
    *,
    contract: Contract | None = DEFAULT_CONTRACT,
    actions: Iterable[Action] = DEFAULT_ACTIONS,
    futures: int = 2,
    depth: int = 2,
    random_runs: int = 200,
    max_steps: int = 8,
    block_timeout: float = BLOCK_TIMEOUT,
    seed: int = 0,
    time_limit: float | None = None,
    prune: bool = True,
    loggers: Iterable[str] = ("concurrent.futures", "futurefsm"),
    progress: Callable[[str], None] | None = _progress_to_stderr,
) -> RaceReport:
    """Check the futures ``harness_factory()`` makes (see the module docstring).

    ``contract``: the declared table. By default ``Contract.futurefsm()`` for
    futurefsm's own futures (the harness makes ``TaskFuture``s) and None for any
    other: None checks the universal invariants only. A contract that does not know
    a state the harness reports is an error (``ValueError``). ``actions``: the steps
    to combine (add your own). ``futures``: futures per sequence. ``depth``: every
    sequence up to this length is run (pruned on observable state); then
    ``random_runs`` random ones of up to ``max_steps``, started from ``seed``.
    ``block_timeout``: seconds before a call that has not returned or parked is
    examined as blocked (and how long a call waiting on something that is not one
    of the futures' is taken for the library at work, before it counts as parked).
    ``time_limit``: stop the random phase after this many
    seconds. ``prune=False`` extends every sequence, not only those reaching a new
    observable state (for a future whose hidden flags the
    harness's ``state()`` does not show). Log records of ``loggers`` are captured
    (shown in the report of the run that produced them), not printed. ``progress``
    is called with a line of news (the phase, sequences run, findings so far) every
    few seconds once a run has taken more than a few, and with each new finding
    then; the default prints to stderr, None is silent.
    """
    started = time.monotonic()
    actions = tuple(actions)
    probe = harness_factory()
    try:
        declared = set(getattr(probe, "unsupported", ()) or ())
        if contract is DEFAULT_CONTRACT:
            contract = _default_contract(probe)
    finally:
        probe.close()
    if contract is not None and contract.born == "sent":
        declared |= {a.name for a in actions if a.trigger == contract.sent_trigger}
    actions = tuple(a for a in actions if a.name not in declared)
    kit = _Kit(harness_factory, contract, actions, futures, block_timeout)
    name = getattr(harness_factory, "__name__", "<lambda>")
    report = RaceReport(
        type(probe).__name__ if name == "<lambda>" else name,
        contract,
        futures,
        depth,
        unsupported=set(declared),
    )
    alphabet = _alphabet(actions, futures)
    found: dict[tuple[str, tuple[str, ...]], tuple[_Violation, tuple[Move, ...], Finding]] = {}
    seen: set[tuple[Any, ...]] = set()

    news_after = started + _PROGRESS_AFTER
    news_at = [news_after]

    def tick(phase: str) -> None:
        now = time.monotonic()
        if progress is not None and now >= news_at[0]:
            news_at[0] = now + _PROGRESS_EVERY
            progress(
                f"race kit: {now - started:.0f} s, {phase}: {report.sequences_run:,} "
                f"sequences, {len(found)} finding{'s' if len(found) != 1 else ''} so far"
            )

    def record(run: _Run, moves: tuple[Move, ...], how: str) -> None:
        """A violation of a new (invariant, path shape), or of a known one on a
        shorter sequence, is shrunk and kept with its own shortest sequence."""
        for violation in run.violations:
            key = violation.finding_key
            path = moves[: violation.step]
            known = found.get(key)
            if known is not None and len(known[1]) <= len(path):
                continue
            seen_at = time.monotonic() - started
            shrunk, shown, runs = _shrink(kit, path, key)
            report.sequences_run += runs
            known = found.get(key)
            if known is not None and len(known[1]) <= len(shrunk):
                continue
            shown = shown or violation
            finding = Finding(
                INVARIANTS[shown.name],
                shown.message,
                shrunk,
                found_after_seconds=seen_at if known is None else known[2].found_after_seconds,
                shrunk_after_seconds=time.monotonic() - started,
                how=how if len(shrunk) == len(path) else f"{how}, shrunk from {len(path)} steps",
            )
            found[key] = (shown, shrunk, finding)
            if known is None and progress is not None and time.monotonic() > news_after:
                progress(f"race kit: found {finding.invariant.name} in {finding.steps} steps")

    handlers = []
    for logger in _loggers_under(loggers):
        # Captured, not printed: the logger's own handlers (Dask's StreamHandler on
        # "distributed" and some of its children) are set aside for the search too.
        handlers.append((logger, logger.propagate, logger.handlers))
        logger.handlers = [kit.capture]
        logger.propagate = False
    try:
        frontier: list[tuple[Move, ...]] = [()]
        for level in range(depth):
            next_frontier = []
            for prefix in frontier:
                for move in alphabet:
                    moves = (*prefix, move)
                    run = kit.run(moves)
                    report.sequences_run += 1
                    if run.unsupported is not None:
                        report.unsupported.add(run.unsupported)
                        continue
                    record(run, moves, "breadth-first")
                    if run.dead or run.blocked:
                        continue
                    key = run.key() if prune else moves
                    if key not in seen:
                        seen.add(key)
                        next_frontier.append(moves)
                    tick(f"breadth-first, depth {level + 1} of {depth}")
            frontier = next_frontier
        rng = random.Random(seed)
        for number in range(random_runs):
            if time_limit is not None and time.monotonic() - started > time_limit:
                break
            length = rng.randint(1, max(1, max_steps))
            moves = tuple(rng.choice(alphabet) for _ in range(length))
            run = kit.run(moves)
            report.sequences_run += 1
            if run.unsupported is not None:
                report.unsupported.add(run.unsupported)
            record(run, moves, "random")
            tick(f"random, {number + 1} of {random_runs}")
        groups: dict[tuple[Move, ...], list[tuple[_Violation, Finding]]] = {}
        for violation, moves, finding in found.values():
            groups.setdefault(moves, []).append((violation, finding))
        for moves, group in groups.items():
            group.sort(key=lambda pair: pair[1].invariant.layer != "universal")
            text = _report(kit, [v for v, _ in group], moves)
            for _, finding in group:
                finding.report = f"{text}\n\n(found {finding.how})"
                report.findings.append(finding)
    finally:
        for logger, propagate, own in handlers:
            logger.handlers = own
            logger.propagate = propagate
    report.findings.sort(key=lambda f: (f.invariant.layer != "universal", f.steps))
    report.states_reached = len(seen)
    report.refused_sometimes = (report.unsupported - declared) & kit.accepted
    report.unsupported -= report.refused_sometimes
    report.close_blocked = kit.close_blocked
    report.seconds = time.monotonic() - started
    return report


def _loggers_under(names: Iterable[str]) -> list[logging.Logger]:
    """The loggers ``names``, and those below them that have handlers of their own or
    do not propagate (their records would not reach a parent's capture)."""
    names = tuple(names)
    found = {name: logging.getLogger(name) for name in names}
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and name.startswith(tuple(f"{n}." for n in names)):
            if logger.handlers or not logger.propagate:
                found[name] = logger
    return list(found.values())


def _shrink(
    kit: _Kit, moves: tuple[Move, ...], key: tuple[str, tuple[str, ...]]
) -> tuple[tuple[Move, ...], _Violation | None, int]:
    """Delete steps while a violation of ``key`` (invariant, path shape) still
    shows; return the shortest
    sequence, the violation it shows (None if ``moves`` itself no longer shows it:
    a race that did not recur is kept as found) and the runs it took."""
    runs = 0
    shown: _Violation | None = None

    def shows(candidate: tuple[Move, ...]) -> tuple[tuple[Move, ...], _Violation] | None:
        nonlocal runs
        runs += 1
        run = kit.run(candidate)
        for violation in run.violations:
            if violation.finding_key == key:
                return candidate[: violation.step], violation
        return None

    best = moves
    size = max(1, len(best) // 2)
    while size >= 1 and runs < _MAX_SHRINK_RUNS:
        start, progressed = 0, False
        while start < len(best) and runs < _MAX_SHRINK_RUNS:
            candidate = best[:start] + best[start + size :]
            shorter = shows(candidate) if candidate else None
            if shorter is not None:
                (best, shown), progressed = shorter, True
            else:
                start += size
        if not progressed:
            size //= 2
    return best, shown, runs


def run_moves(
    harness_factory: Callable[[], Any],
    moves: Sequence[Move],
    *,
    contract: Contract | None = DEFAULT_CONTRACT,
    actions: Iterable[Action] = DEFAULT_ACTIONS,
    futures: int = 2,
    block_timeout: float = BLOCK_TIMEOUT,
) -> list[str]:
    """Replay one sequence (e.g. a finding's ``moves``) and return the names of the
    invariants it violates, in order (empty if none)."""
    if contract is DEFAULT_CONTRACT:
        probe = harness_factory()
        try:
            contract = _default_contract(probe)
        finally:
            probe.close()
    kit = _Kit(harness_factory, contract, tuple(actions), futures, block_timeout)
    return [v.name for v in kit.run(moves).violations]


def assert_race_free(harness_factory: Callable[[], Any], **options: Any) -> RaceReport:
    """``check_future(harness_factory, **options)`` for pytest: raise ``RaceFound``
    (an ``AssertionError``) with the report if anything was found; else return it."""
    report = check_future(harness_factory, **options)
    report.assert_clean()
    return report


_ = RaceHarness  # re-exported through the package
