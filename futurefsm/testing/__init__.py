"""Race-condition testing for futures of remote tasks, usable on any future
implementation: the race kit. See docs/race-kit.md.

Needs hypothesis (``pip install 'futurefsm[test]'``) for ``strategies`` and
``budget``; ``futurefsm`` itself does not import this package.

``check_future(harness_factory, contract=...)`` / ``assert_race_free(...)``
    Any ``concurrent.futures.Future`` through a small ``RaceHarness`` (no futurefsm
    types), every sequence of ``Action``s up to a depth then random ones, checked
    after every step against the universal invariants (``UNIVERSAL``) and a declared
    ``Contract`` (``CONTRACT``): futurefsm's table for futurefsm's own futures, none
    for any other unless given. ``run_moves`` replays one sequence.
``DEFAULT_ACTIONS``, ``WAIT_AND_RACE_ACTIONS``
    Deliveries, user calls, callbacks that act; ``wait()`` in its three modes,
    ``as_completed``, calls released together by a barrier.
``TaskFutureRaceHarness``
    The harness of futurefsm's own ``TaskFuture`` on the in-memory transport.
``check_at_rest(future)`` / ``check_history``
    One real future judged as it is (after an end-to-end test), without waiting.
``strategies``
    Hypothesis strategies: triggers, moves, protocol messages, valid, mutated and
    garbage frames, scheduler-stub ``Behaviour``s.
"""

from __future__ import annotations

from .actions import (
    DEFAULT_ACTIONS,
    WAIT_AND_RACE_ACTIONS,
    Action,
    Move,
    RaceHarness,
    ResultValue,
    TaskError,
    Unsupported,
    same_result,
)
from .at_rest import RestReport, check_at_rest, check_history, format_history
from .budget import examples
from .contract import STDLIB_STATE, Born, Contract
from .kit import (
    BLOCK_TIMEOUT,
    CountingWaiter,
    Finding,
    HarnessError,
    RaceFound,
    RaceReport,
    assert_race_free,
    check_future,
    run_moves,
)
from .laws import CONTRACT, INVARIANTS, UNIVERSAL, Invariant
from .taskfuture import TaskFutureRaceHarness

__all__ = [
    "BLOCK_TIMEOUT",
    "CONTRACT",
    "DEFAULT_ACTIONS",
    "INVARIANTS",
    "STDLIB_STATE",
    "UNIVERSAL",
    "WAIT_AND_RACE_ACTIONS",
    "Action",
    "Born",
    "Contract",
    "CountingWaiter",
    "Finding",
    "HarnessError",
    "Invariant",
    "Move",
    "RaceFound",
    "RaceHarness",
    "RaceReport",
    "RestReport",
    "ResultValue",
    "TaskError",
    "TaskFutureRaceHarness",
    "Unsupported",
    "assert_race_free",
    "check_at_rest",
    "check_future",
    "check_history",
    "examples",
    "format_history",
    "run_moves",
    "same_result",
]
