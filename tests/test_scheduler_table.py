"""The scheduler's task table (futurefsm/scheduler_stub/task_table.py): total, closed,
and the rules the scheduler promises, as properties of the table.

Every (state, event) pair is checked; hypothesis throws event sequences at one task
(only the events the scheduler can fire in each state, and then any event at all) and
checks the promises on the effects the table asks for. Pure: no scheduler is started.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from futurefsm.scheduler_stub import SchedulerStub
from futurefsm.scheduler_stub.behaviour import DEFAULT_BEHAVIOUR
from futurefsm.scheduler_stub.records import TaskRecord
from futurefsm.scheduler_stub.task_table import (
    HELD_STATES,
    INITIAL_STATE,
    TASK_TABLE,
    TERMINAL_STATES,
    TaskCell,
    TaskEffect,
    TaskEvent,
    TaskState,
)

S, V, E = TaskState, TaskEvent, TaskEffect
PACKAGE = Path(__file__).resolve().parents[1] / "futurefsm"
ALL_PAIRS = [(state, event) for state in TaskState for event in TaskEvent]
CANCELS = (V.CANCEL, V.CANCEL_FORCE, V.CANCEL_SCRIPTED)


class Task:
    """A task as the table sees it: a state, moved by ``step`` (as the scheduler's
    ``_apply`` moves a ``TaskRecord``, without carrying out the effects)."""

    def __init__(self) -> None:
        self.state = INITIAL_STATE


def step(task: Task, event: TaskEvent) -> TaskCell:
    cell = TASK_TABLE[task.state, event]
    task.state = cell.state
    return cell


def run(events: list[TaskEvent]) -> list[tuple[TaskState, TaskEvent, TaskCell]]:
    """Fire ``events`` on a new task; (state before, event, cell) per step."""
    task, steps = Task(), []
    for event in events:
        before = task.state
        cell = step(task, event)
        assert task.state is cell.state
        steps.append((before, event, cell))
    return steps


# --- the table is total and closed ----------------------------------------------------


def test_every_state_event_pair_has_exactly_one_cell() -> None:
    assert list(TASK_TABLE) == ALL_PAIRS  # also the order the docs show
    assert all(isinstance(cell, TaskCell) for cell in TASK_TABLE.values())
    assert all(isinstance(cell.state, TaskState) for cell in TASK_TABLE.values())
    assert all(
        all(isinstance(effect, TaskEffect) for effect in cell.effects)
        for cell in TASK_TABLE.values()
    )


@pytest.mark.parametrize(("state", "event"), ALL_PAIRS, ids=lambda x: str(x))
def test_the_scheduler_moves_a_task_as_its_cell_says(state: TaskState, event: TaskEvent) -> None:
    # SchedulerStub._apply on a record in `state`, with every effect recorded instead
    # of carried out: the state it sets, the effects it runs and their order.
    stub = SchedulerStub.__new__(SchedulerStub)  # no socket, no thread: the table only
    stub._claim_lock = None
    done: list[TaskEffect] = []
    stub._transitions = {
        key: (cell.state, tuple(_recorder(done, e) for e in cell.effects), cell)
        for key, cell in TASK_TABLE.items()
    }
    record = TaskRecord(b"client", b"t" * 16, b"", b"", None, DEFAULT_BEHAVIOUR, 0)
    assert record.state is INITIAL_STATE
    record.state = state
    cell = stub._apply(record, event)
    assert cell is TASK_TABLE[state, event]
    assert record.state is cell.state
    assert tuple(done) == cell.effects


def _recorder(done: list[TaskEffect], effect: TaskEffect):
    return lambda record, event, arg: done.append(effect)


def test_the_scheduler_carries_out_every_effect_but_the_claims() -> None:
    # _apply's own table: every effect has its method, but run and skip (the worker
    # that asked reads them from the cell).
    with SchedulerStub(threads=True, workers=1) as stub:
        for key, cell in TASK_TABLE.items():
            state, effects, same = stub._transitions[key]
            assert state is cell.state and same is cell
            wanted = [e for e in cell.effects if e not in (E.RUN, E.SKIP)]
            assert len(effects) == len(wanted), key
            for method, effect in zip(effects, wanted, strict=True):
                assert method == stub._effect_methods()[effect], (key, effect)


def test_nothing_leaves_a_terminal_state() -> None:
    for (state, event), cell in TASK_TABLE.items():
        if state in TERMINAL_STATES:
            assert cell.state is state, (state, event)


def test_every_state_is_reachable_from_the_initial_one() -> None:
    reached, frontier = {INITIAL_STATE}, [INITIAL_STATE]
    while frontier:
        state = frontier.pop()
        for event in TaskEvent:
            dest = TASK_TABLE[state, event].state
            if dest not in reached:
                reached.add(dest)
                frontier.append(dest)
    assert reached == set(TaskState)


def test_impossible_cells_change_nothing_and_do_nothing_else() -> None:
    for (state, event), cell in TASK_TABLE.items():
        if E.IMPOSSIBLE in cell.effects:
            assert cell == TaskCell(state, (E.IMPOSSIBLE,)), (state, event)


def test_every_effect_and_event_is_used() -> None:
    assert {e for cell in TASK_TABLE.values() for e in cell.effects} == set(TaskEffect)
    for event in TaskEvent:
        assert any(E.IMPOSSIBLE not in TASK_TABLE[s, event].effects for s in TaskState), event


def test_worker_took_runs_only_a_queued_task() -> None:
    for state in TaskState:
        effects = TASK_TABLE[state, V.WORKER_TOOK].effects
        assert (E.RUN in effects) == (state is S.QUEUED), state


def test_a_cancel_is_answered_exactly_once_in_every_state() -> None:
    answers = {
        E.CONFIRM_CANCELED,
        E.REFUSE_CANCEL,
        E.ANSWER_NOT_FOUND,
        E.ANSWER_AS_SCRIPTED,
        E.KILL_WORKER,  # confirmed once the worker is gone (worker_gone, kill_refused)
    }
    for state in TaskState:
        for event in CANCELS:
            effects = TASK_TABLE[state, event].effects
            assert len(answers.intersection(effects)) == 1, (state, event, effects)


def test_a_task_not_held_is_answered_not_found() -> None:
    for state in set(TaskState) - HELD_STATES:
        for event in CANCELS:
            assert TASK_TABLE[state, event] == TaskCell(state, (E.ANSWER_NOT_FOUND,))


def test_every_cancel_that_ends_a_held_task_drops_it_so_its_dependents_hear() -> None:
    # A graph member's cancel reaches every member: whatever stops being held by a
    # cancel (its own, or a dependency's) is dropped, and dropping fires
    # dependency_cancelled on its waiting dependents, which ends them the same way.
    for state in HELD_STATES:
        for event in (V.CANCEL, V.CANCEL_FORCE, V.DEPENDENCY_CANCELLED):
            cell = TASK_TABLE[state, event]
            if cell.state not in HELD_STATES:
                assert E.DROP in cell.effects, (state, event)
    assert TASK_TABLE[S.WAITING, V.DEPENDENCY_CANCELLED].state is S.CANCELLED


def test_a_group_cancel_leaves_no_member_held() -> None:
    # A group cancel fires cancel_force on every held member.
    for state in HELD_STATES:
        assert TASK_TABLE[state, V.CANCEL_FORCE].state not in HELD_STATES, state


# --- no code but step() sets a task's state -------------------------------------------


def _state_assignments() -> list[str]:
    """Every ``<something>.state = ...`` in the scheduler package, as file:function."""
    found = []
    for path in sorted((PACKAGE / "scheduler_stub").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                targets = []
                if isinstance(node, ast.Assign):
                    targets = node.targets
                elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                    targets = [node.target]
                for target in targets:
                    if isinstance(target, ast.Attribute) and target.attr == "state":
                        found.append(f"{path.name}:{function.name}")
    return found


def test_only_the_scheduler_s_apply_sets_a_task_state() -> None:
    # (The record's constructor sets the table's INITIAL_STATE.)
    assert sorted(_state_assignments()) == ["records.py:__init__", "tasks.py:_apply"]


# --- the promises, over event sequences -----------------------------------------------


@st.composite
def possible_runs(draw: st.DrawFn, max_size: int = 24) -> list[TaskEvent]:
    """Events the scheduler can fire, one after another: never an impossible one."""
    task, events = Task(), []
    for _ in range(draw(st.integers(0, max_size))):
        allowed = [
            event
            for event in TaskEvent
            if E.IMPOSSIBLE not in TASK_TABLE[task.state, event].effects
        ]
        event = draw(st.sampled_from(allowed))
        step(task, event)
        events.append(event)
    return events


any_runs = st.lists(st.sampled_from(list(TaskEvent)), max_size=24)
runs = st.one_of(possible_runs(), any_runs)


@settings(max_examples=150, deadline=None)
@given(runs)
def test_a_result_is_sent_at_most_once(events: list[TaskEvent]) -> None:
    sent = [event for _, event, cell in run(events) if E.SEND_RESULT in cell.effects]
    assert len(sent) <= 1
    held = [event for _, event, cell in run(events) if E.HOLD_RESULT in cell.effects]
    assert len(held) <= 1  # one result in hand, ever


@settings(max_examples=150, deadline=None)
@given(runs)
def test_a_task_cancelled_before_it_started_never_starts(events: list[TaskEvent]) -> None:
    cancelled = False
    for before, _, cell in run(events):
        if cancelled:
            assert not {E.RUN, E.DISPATCH, E.SEND_RESULT, E.HOLD_RESULT} & set(cell.effects)
        if before in (S.WAITING, S.QUEUED) and cell.state is S.CANCELLED:
            cancelled = True


@settings(max_examples=150, deadline=None)
@given(runs)
def test_a_task_whose_client_is_gone_ends(events: list[TaskEvent]) -> None:
    ended = {S.STOPPING} | TERMINAL_STATES
    gone = False
    for before, event, cell in run(events):
        if gone:
            assert cell.state in ended, (before, event)
            assert not {E.RUN, E.DISPATCH, E.SEND_RESULT, E.HOLD_RESULT} & set(cell.effects)
        if event is V.CLIENT_GONE:
            gone = True
            assert cell.state in TERMINAL_STATES or before is S.STOPPING, before
    # and from stopping, the only way out is its worker gone (or not killable)
    for event in TaskEvent:
        dest = TASK_TABLE[S.STOPPING, event].state
        assert dest is S.STOPPING or (
            dest is S.CANCELLED and event in (V.WORKER_GONE, V.KILL_REFUSED)
        )


@settings(max_examples=150, deadline=None)
@given(runs)
def test_a_force_cancel_of_a_running_task_ends_it_before_canceled_is_sent(
    events: list[TaskEvent],
) -> None:
    stopping = False
    for before, event, cell in run(events):
        if before is S.RUNNING and event is V.CANCEL_FORCE:
            assert E.KILL_WORKER in cell.effects and E.CONFIRM_CANCELED not in cell.effects
            assert cell.effects.index(E.KILL_WORKER) == 0  # before anything else
            stopping = True
            continue
        if stopping:
            assert E.SEND_RESULT not in cell.effects and E.RUN not in cell.effects
            if E.CONFIRM_CANCELED in cell.effects:
                # the process is gone, or there was none to kill (its result discarded)
                assert event in (V.WORKER_GONE, V.KILL_REFUSED), event


@settings(max_examples=150, deadline=None)
@given(runs)
def test_every_step_stays_in_the_table_and_terminal_states_hold(events: list[TaskEvent]) -> None:
    ended = None
    for _, _, cell in run(events):
        if ended is not None:
            assert cell.state is ended
        if cell.state in TERMINAL_STATES:
            ended = cell.state
