"""The transition table and the shared machine (futurefsm/fsm/)."""

from __future__ import annotations

import ast
import pathlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from futurefsm.fsm import (
    HISTORY_SELF_LOOP_LIMIT,
    MACHINE,
    TERMINAL_STATES,
    TRANSITION_TABLE,
    CancelOutcome,
    Effect,
    FSMModel,
    FutureState,
    Trigger,
)

S, T, O = FutureState, Trigger, CancelOutcome  # noqa: E741
ALL_CELLS = [(state, trigger) for state in FutureState for trigger in Trigger]

# docs/transitions.md, written out independently of the table: the non-stale cells.
# Anything not listed here must be a stale self-loop or a no-change user cancel.
SPEC_MOVES = {
    (S.PENDING, T.SENT): (S.RUNNING, None),
    (S.PENDING, T.USER_CANCEL): (S.CANCELLED, O.BEFORE_SEND),
    (S.PENDING, T.CONNECTION_LOST): (S.DONE, None),
    (S.RUNNING, T.USER_CANCEL): (S.CANCEL_REQUESTED, None),
    (S.RUNNING, T.RECV_RESULT): (S.DONE, None),
    (S.RUNNING, T.RECV_CONFIRM_CANCELED): (S.CANCELLED, O.BY_SCHEDULER),
    (S.RUNNING, T.CONNECTION_LOST): (S.DONE, None),
    (S.CANCEL_REQUESTED, T.RECV_RESULT): (S.CANCELLED, O.RESULT_RACED),
    (S.CANCEL_REQUESTED, T.RECV_CONFIRM_CANCELED): (S.CANCELLED, O.CONFIRMED),
    (S.CANCEL_REQUESTED, T.RECV_CONFIRM_NOT_FOUND): (S.CANCELLED, O.NOT_FOUND),
    (S.CANCEL_REQUESTED, T.RECV_CONFIRM_CANCEL_FAILED): (S.RUNNING, O.FAILED),
    (S.CANCEL_REQUESTED, T.CANCEL_TIMED_OUT): (S.CANCELLED, O.TIMED_OUT),
    (S.CANCEL_REQUESTED, T.CONNECTION_LOST): (S.CANCELLED, O.CONNECTION_LOST),
}


def test_table_is_total():
    assert set(TRANSITION_TABLE) == set(ALL_CELLS)
    assert len(TRANSITION_TABLE) == len(FutureState) * len(Trigger) == 40


def test_cancel_outcome_has_the_eight_outcomes():
    assert {outcome.name for outcome in CancelOutcome} == {
        "BEFORE_SEND",
        "CONFIRMED",
        "NOT_FOUND",
        "RESULT_RACED",
        "TIMED_OUT",
        "BY_SCHEDULER",
        "CONNECTION_LOST",
        "FAILED",
    }


@pytest.mark.parametrize(("state", "trigger"), ALL_CELLS, ids=lambda x: x.value)
def test_every_cell_through_the_machine(state, trigger):
    model = FSMModel(state)
    cell = model.fire(trigger)
    assert model.state is cell.dest
    assert model.history[-1][1:] == (trigger, state, cell.dest)
    if (state, trigger) in SPEC_MOVES:
        assert (cell.dest, cell.outcome) == SPEC_MOVES[state, trigger]
        assert cell.effect is not Effect.STALE
    else:
        # No move: either a stale message or a user cancel that changes nothing.
        assert cell.dest is state
        assert cell.outcome is None
        expected = Effect.NONE if trigger is T.USER_CANCEL else Effect.STALE
        assert cell.effect is expected


def test_effects_of_moves():
    assert TRANSITION_TABLE[S.RUNNING, T.USER_CANCEL].effect is Effect.SEND_CANCEL
    assert TRANSITION_TABLE[S.RUNNING, T.RECV_RESULT].effect is Effect.RESOLVE
    assert TRANSITION_TABLE[S.PENDING, T.CONNECTION_LOST].effect is Effect.FAIL_CONNECTION_LOST
    assert TRANSITION_TABLE[S.RUNNING, T.CONNECTION_LOST].effect is Effect.FAIL_CONNECTION_LOST
    # Only one cell sends a TaskCancel: a second cancel() never sends another.
    senders = [key for key, cell in TRANSITION_TABLE.items() if cell.effect is Effect.SEND_CANCEL]
    assert senders == [(S.RUNNING, T.USER_CANCEL)]


def test_nothing_leaves_a_terminal_state():
    for (state, _trigger), cell in TRANSITION_TABLE.items():
        if state in TERMINAL_STATES:
            assert cell.dest is state


def test_machine_has_no_auto_transitions_and_one_event_per_trigger():
    assert set(MACHINE.events) == {trigger.value for trigger in Trigger}
    assert MACHINE.auto_transitions is False
    assert not any(name.startswith("to_") for name in MACHINE.events)
    assert MACHINE.models == []


def test_machine_refuses_callbacks():
    with pytest.raises(ValueError, match="no callbacks"):
        MACHINE.events[T.SENT.value].add_callback("after", lambda: None)


def test_stale_history_is_bounded():
    model = FSMModel(S.DONE)
    for _ in range(HISTORY_SELF_LOOP_LIMIT * 3):
        model.fire(T.RECV_RESULT)
    assert len(model.history) == HISTORY_SELF_LOOP_LIMIT


@given(st.lists(st.sampled_from(list(Trigger)), max_size=30))
def test_any_trigger_sequence_enters_a_terminal_state_at_most_once(triggers):
    model = FSMModel()
    terminal_entries = 0
    for trigger in triggers:
        before = model.state
        model.fire(trigger)
        if model.state in TERMINAL_STATES and before not in TERMINAL_STATES:
            terminal_entries += 1
        if before in TERMINAL_STATES:
            assert model.state is before
    assert terminal_entries <= 1
    assert [entry.trigger for entry in model.history] == triggers
    times = [entry.time for entry in model.history]
    assert times == sorted(times)


def test_fsm_package_is_sans_io():
    forbidden = {"socket", "threading", "zmq", "pickle", "asyncio", "selectors"}
    package = pathlib.Path(__file__).parent.parent / "futurefsm" / "fsm"
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
                if node.level and (node.module or "").split(".")[0] in {"client", "scheduler_stub"}:
                    pytest.fail(f"{path.name} imports {node.module}")
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                assert root not in forbidden, f"{path.name} imports {name}"
                assert not name.startswith("futurefsm.client"), f"{path.name} imports {name}"
