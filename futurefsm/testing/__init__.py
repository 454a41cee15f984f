"""Race-condition testing for futures of remote tasks: hypothesis strategies, the race
state machine, and an exhaustive explorer, usable on any future implementation.

Needs hypothesis (``pip install 'futurefsm[test]'``); ``futurefsm`` itself does not
import this package.

The race kit (start here)
-------------------------
``check_future(harness_factory, contract=...)`` / ``assert_race_free(...)``: any
``concurrent.futures.Future`` through a small ``RaceHarness`` (no futurefsm types),
checked against the universal invariants (``UNIVERSAL``) and a declared ``Contract``
(``CONTRACT``; futurefsm's table by default, or your own). See docs/race-kit.md.

The pieces for futurefsm's own futures
--------------------------------------
``Step``
    One inbound message or local event for one future (``sent``, ``user_cancel``, a
    result of each status, a confirm of each kind, ``cancel_timed_out``,
    ``connection_lost``), each mapped to one FSM ``Trigger``.
``FutureHarness`` / ``FutureUnderTest``
    The adapter protocols: how the tools create a future, deliver a step to it, route
    a message by task id, expire cancels, lose the connection, and read its state.
    ``TaskFutureHarness`` is the implementation for ``TaskFuture`` on the in-memory
    transport (and any ``TaskFuture`` subclass).
``ExpectedWorld``
    The oracle: the same steps replayed on ``TRANSITION_TABLE``.
``make_race_machine(harness_factory)`` / ``FutureRaceMachine``
    The hypothesis ``RuleBasedStateMachine``: messages and local events on an I/O
    thread racing user calls (``cancel``, ``cancelled``, ``result``, ``wait``,
    ``as_completed``, ``add_done_callback``) on several threads, every invariant
    checked after every step.
``explore(depth)``
    Every sequence of steps for one future up to ``depth``, checked step by step.
``strategies``
    Triggers, steps and step sequences; protocol messages, valid, mutated and garbage
    frames; scheduler-stub ``Behaviour``s.

Checking another implementation
-------------------------------
::

    from hypothesis import settings
    from hypothesis.stateful import run_state_machine_as_test
    from futurefsm.testing import make_race_machine, explore

    Machine = make_race_machine(MyHarness)          # MyHarness: a FutureHarness
    run_state_machine_as_test(Machine, settings=settings(deadline=None))
    assert not explore(8, harness_factory=MyHarness).violations
"""

from __future__ import annotations

from .actions import (
    DEFAULT_ACTIONS,
    WAIT_AND_RACE_ACTIONS,
    Action,
    Move,
    RaceHarness,
    Unsupported,
    same_result,
)
from .at_rest import RestReport, check_at_rest, format_history
from .budget import examples
from .contract import STDLIB_STATE, Born, Contract
from .explorer import EXPLORED_STEPS, ExplorationReport, Violation, explore, run_sequence
from .harness import (
    CountingWaiter,
    FutureHarness,
    FutureSnapshot,
    FutureUnderTest,
    HarnessFactory,
    TaskFutureHarness,
    TaskFutureRaceHarness,
    TaskFutureUnderTest,
)
from .invariants import InvariantViolation, describe_future
from .kit import (
    BLOCK_TIMEOUT,
    Finding,
    RaceFound,
    RaceReport,
    assert_race_free,
    check_future,
    run_moves,
)
from .laws import CONTRACT, INVARIANTS, UNIVERSAL, Invariant
from .model import CallbackKind, ExpectedFuture, ExpectedWorld, Resolution, ResolutionKind
from .race import FutureRaceMachine, make_race_machine
from .steps import (
    CONFIRM_STEPS,
    DELIVERABLE_STEPS,
    MESSAGE_STEPS,
    RESULT_STEPS,
    ResultValue,
    Step,
    TaskError,
    payload_for,
)

__all__ = [
    "BLOCK_TIMEOUT",
    "CONFIRM_STEPS",
    "CONTRACT",
    "DEFAULT_ACTIONS",
    "DELIVERABLE_STEPS",
    "EXPLORED_STEPS",
    "INVARIANTS",
    "MESSAGE_STEPS",
    "RESULT_STEPS",
    "STDLIB_STATE",
    "UNIVERSAL",
    "WAIT_AND_RACE_ACTIONS",
    "Action",
    "Born",
    "CallbackKind",
    "Contract",
    "CountingWaiter",
    "ExpectedFuture",
    "ExpectedWorld",
    "ExplorationReport",
    "Finding",
    "FutureHarness",
    "FutureRaceMachine",
    "FutureSnapshot",
    "FutureUnderTest",
    "HarnessFactory",
    "Invariant",
    "InvariantViolation",
    "Move",
    "RaceFound",
    "RaceHarness",
    "RaceReport",
    "Resolution",
    "ResolutionKind",
    "RestReport",
    "ResultValue",
    "Step",
    "TaskError",
    "TaskFutureHarness",
    "TaskFutureRaceHarness",
    "TaskFutureUnderTest",
    "Unsupported",
    "Violation",
    "assert_race_free",
    "check_at_rest",
    "check_future",
    "describe_future",
    "examples",
    "explore",
    "format_history",
    "make_race_machine",
    "payload_for",
    "run_moves",
    "run_sequence",
    "same_result",
]
