"""A hypothesis state machine over the bare FSM (``FSMModel``), checked against
docs/transitions.md written out a second time, independently of ``TRANSITION_TABLE``."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule

from futurefsm.fsm import (
    HISTORY_SELF_LOOP_LIMIT,
    TERMINAL_STATES,
    TRANSITION_TABLE,
    CancelOutcome,
    Effect,
    FSMModel,
    FutureState,
    Trigger,
)
from futurefsm.testing import check_history
from futurefsm.testing.budget import examples
from futurefsm.testing.strategies import triggers

S, T, Out = FutureState, Trigger, CancelOutcome

_CANCEL_ANSWERS = {
    T.RECV_RESULT: (S.CANCELLED, Out.RESULT_RACED),
    T.RECV_CONFIRM_CANCELED: (S.CANCELLED, Out.CONFIRMED),
    T.RECV_CONFIRM_NOT_FOUND: (S.CANCELLED, Out.NOT_FOUND),
    T.RECV_CONFIRM_CANCEL_FAILED: (S.RUNNING, Out.FAILED),
    T.CANCEL_TIMED_OUT: (S.CANCELLED, Out.TIMED_OUT),
    T.CONNECTION_LOST: (S.CANCELLED, Out.CONNECTION_LOST),
}


def spec_cell(state: FutureState, trigger: Trigger) -> tuple[FutureState, Effect, Out | None]:
    """docs/transitions.md, row by row, as code: (dest, effect, outcome)."""
    if state in TERMINAL_STATES:
        # Terminal: a user cancel is "no change", everything else is stale.
        return state, (Effect.NONE if trigger is T.USER_CANCEL else Effect.STALE), None
    if state is S.PENDING:
        if trigger is T.SENT:
            return S.RUNNING, Effect.NONE, None
        if trigger is T.USER_CANCEL:
            return S.CANCELLED, Effect.NONE, Out.BEFORE_SEND
        if trigger is T.CONNECTION_LOST:
            return S.DONE, Effect.FAIL_CONNECTION_LOST, None
        return S.PENDING, Effect.STALE, None
    if state is S.RUNNING:
        if trigger is T.USER_CANCEL:
            return S.CANCEL_REQUESTED, Effect.SEND_CANCEL, None
        if trigger is T.RECV_RESULT:
            return S.DONE, Effect.RESOLVE, None
        if trigger is T.RECV_CONFIRM_CANCELED:
            return S.CANCELLED, Effect.NONE, Out.BY_SCHEDULER
        if trigger is T.CONNECTION_LOST:
            return S.DONE, Effect.FAIL_CONNECTION_LOST, None
        return S.RUNNING, Effect.STALE, None
    # cancel_requested
    if trigger is T.SENT:
        return state, Effect.STALE, None
    if trigger is T.USER_CANCEL:
        return state, Effect.NONE, None  # stays; no second TaskCancel
    dest, outcome = _CANCEL_ANSWERS[trigger]
    return dest, Effect.NONE, outcome


def test_table_agrees_with_the_spec_written_out() -> None:
    for (state, trigger), cell in TRANSITION_TABLE.items():
        assert tuple(cell) == spec_cell(state, trigger), (state, trigger)


class FSMMachine(RuleBasedStateMachine):
    """Several bare models of the one shared machine, fired at random."""

    models = Bundle("models")

    def __init__(self) -> None:
        super().__init__()
        self.expected: dict[int, FutureState] = {}
        self.started: dict[int, FutureState] = {}
        self.all: list[FSMModel] = []

    def _add(self, state: FutureState) -> FSMModel:
        model = FSMModel(state)
        self.all.append(model)
        self.expected[id(model)] = state
        self.started[id(model)] = state
        return model

    @initialize(target=models)
    def first(self) -> FSMModel:
        return self._add(S.PENDING)

    @rule(target=models)
    def another(self) -> FSMModel:
        return self._add(S.PENDING)

    @rule(target=models, state=st.sampled_from(FutureState))
    def started_elsewhere(self, state: FutureState) -> FSMModel:
        """A model created directly in any state (the history then starts there)."""
        return self._add(state)

    @rule(model=models, trigger=triggers())
    def fire(self, model: FSMModel, trigger: Trigger) -> None:
        source = model.state
        before = {id(m): m.state for m in self.all}
        length = len(model.history)
        cell = model.fire(trigger)
        dest, effect, outcome = spec_cell(source, trigger)
        assert (cell.dest, cell.effect, cell.outcome) == (dest, effect, outcome)
        assert model.state is dest
        if source in TERMINAL_STATES:
            assert model.state is source, "left a terminal state"
        # One shared machine: firing one model moves no other.
        assert {id(m): m.state for m in self.all if m is not model} == {
            k: v for k, v in before.items() if k != id(model)
        }
        # A state change is always recorded, and so is anything while the history is
        # short; a self-loop (stale, or a no-op user cancel) in a long history never is.
        history = model.history
        recorded = len(history) == length + 1
        assert len(history) in (length, length + 1)
        assert recorded == (dest is not source or length < HISTORY_SELF_LOOP_LIMIT)
        if recorded:
            _, fired, entry_source, entry_dest = history[-1]
            assert (fired, entry_source, entry_dest) == (trigger, source, dest)
        self.expected[id(model)] = dest

    @rule(model=models, trigger=triggers(), times=st.integers(min_value=1, max_value=40))
    def flood(self, model: FSMModel, trigger: Trigger, times: int) -> None:
        """The same trigger many times: stale floods must not grow the history past
        ``HISTORY_SELF_LOOP_LIMIT`` (user cancels are not messages and are always kept)."""
        for _ in range(times):
            self.fire(model, trigger)

    @invariant()
    def models_are_where_the_spec_says(self) -> None:
        for model in self.all:
            assert model.state is self.expected[id(model)]

    def teardown(self) -> None:
        """Histories only grow, so a step that broke one still shows at the end: checked
        once per run, not after every step (that was quadratic: 136 s of the suite)."""
        self.histories_walk_the_table_with_one_terminal_transition()

    def histories_walk_the_table_with_one_terminal_transition(self) -> None:
        for model in self.all:
            start = self.started[id(model)]
            assert check_history(model.history, model.state, start=start) == [], model.history
            for _, trigger, source, _ in model.history[HISTORY_SELF_LOOP_LIMIT:]:
                assert TRANSITION_TABLE[source, trigger].effect is not Effect.STALE


FSMMachine.TestCase.settings = settings(max_examples=examples(5), stateful_step_count=30)
TestFSMMachine = FSMMachine.TestCase


def test_no_op_user_cancels_do_not_grow_the_history_without_bound() -> None:
    for state in (S.CANCEL_REQUESTED, S.CANCELLED, S.DONE):
        model = FSMModel(state)
        for _ in range(10 * HISTORY_SELF_LOOP_LIMIT):
            model.fire(T.USER_CANCEL)
        assert len(model.history) <= HISTORY_SELF_LOOP_LIMIT, (state, len(model.history))
