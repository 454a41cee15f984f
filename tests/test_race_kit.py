"""The race kit's API (``futurefsm.testing.check_future`` and friends), on the plain
stdlib ``Future`` driven as a remote task's future, on ``TaskFuture``, and on small
broken variants. The three bug shapes of issue 14 are in ``test_race_kit_bugs.py``;
the guide's walkthrough in ``test_race_kit_guide.py``.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
from concurrent.futures import _base
from typing import Any

import pytest

from futurefsm.client.future import TaskFuture
from futurefsm.fsm import TERMINAL_STATES, TRANSITION_TABLE, FutureState
from futurefsm.testing import (
    CONTRACT,
    DEFAULT_ACTIONS,
    INVARIANTS,
    UNIVERSAL,
    WAIT_AND_RACE_ACTIONS,
    Action,
    Contract,
    Move,
    RaceFound,
    RaceHarness,
    TaskFutureRaceHarness,
    Unsupported,
    assert_race_free,
    check_future,
    run_moves,
    same_result,
)

ACTIONS = {a.name: a for a in DEFAULT_ACTIONS}
QUICK = {"depth": 2, "random_runs": 30}

# ---------------------------------------------------------------------------
# The stdlib Future as a remote task's future
# ---------------------------------------------------------------------------


class StdlibHarness(RaceHarness):
    """``concurrent.futures.Future`` driven by messages: ``sent`` starts it, a result
    sets it; a cancel of a future not yet running notifies its waiters, as an
    executor's worker would."""

    unsupported = (
        "confirm_canceled",
        "confirm_not_found",
        "confirm_cancel_failed",
        "cancel_timed_out",
        "connection_lost",
        "disconnect",
        "cancel_all",
    )

    def __init__(self) -> None:
        self.futures: list[cf.Future[Any]] = []

    def create(self) -> cf.Future[Any]:
        future: cf.Future[Any] = cf.Future()
        self.futures.append(future)
        return future

    def deliver(self, action: str, future: Any, payload: Any) -> None:
        if action == "sent":
            if future._state == _base.PENDING:
                future.set_running_or_notify_cancel()
        elif action == "result_success":
            if not future.done():
                future.set_result(payload)
        elif action == "result_failed":
            if not future.done():
                future.set_exception(payload)
        else:
            raise Unsupported(action)

    def cancel(self, future: cf.Future[Any]) -> bool:
        if future.cancel():
            future.set_running_or_notify_cancel()  # notify the waiters
            return True
        return False

    def close(self) -> None:
        """Fail every future still live: a result() waiting on one returns."""
        for future in self.futures:
            if not future.done():
                future.set_exception(RuntimeError("the harness is closed"))


class NaiveStdlibHarness(StdlibHarness):
    """Cancels with the stdlib's ``cancel()`` alone: the future is done and cancelled,
    but ``concurrent.futures.wait`` never hears of it."""

    def cancel(self, future: cf.Future[Any]) -> bool:
        return future.cancel()


class ResultReplacingHarness(StdlibHarness):
    """A second result replaces the first."""

    def deliver(self, action: str, future: Any, payload: Any) -> None:
        if action == "result_failed" and future._state == _base.FINISHED:
            with future._condition:
                future._result, future._exception = None, payload
            return
        super().deliver(action, future, payload)


# The stdlib future's own table: born pending, a result may come at any time.
STDLIB_CONTRACT = Contract.from_table(
    {
        ("pending", "sent"): "running",
        ("pending", "user_cancel"): "cancelled",
        ("pending", "recv_result"): "finished",
        ("running", "recv_result"): "finished",
    },
    initial="pending",
    terminal=["finished", "cancelled"],
    cancelled=["cancelled"],
    name="the stdlib Future's table",
)


def test_the_stdlib_future_keeps_the_universal_invariants() -> None:
    report = check_future(StdlibHarness, contract=None, depth=3, random_runs=50)
    print(report.summary())
    assert report.findings == [], str(report)


def test_the_stdlib_future_keeps_its_own_table() -> None:
    report = check_future(StdlibHarness, contract=STDLIB_CONTRACT, **QUICK)
    assert report.findings == [], str(report)


def test_a_cancel_that_does_not_notify_waiters_is_found() -> None:
    """Not notified right after cancel() is the stdlib's own way (the executor
    notifies when it reaches the task); still not notified once a delivery to the
    future gave the library its turn is the bug."""
    report = check_future(NaiveStdlibHarness, contract=None, **QUICK)
    (finding,) = [f for f in report.findings if f.invariant.name == "waiters_notified_once"]
    first, then = (str(m) for m in finding.moves)
    assert first == "cancel(f0)" and then.endswith("(f0)") and not then.startswith("cancel")
    assert "(0, 0, 0), expected (0, 0, 1) (cancelled, and a delivery" in finding.message


def test_different_semantics_fail_only_the_contract_layer() -> None:
    """futurefsm's table ignores a result before ``sent``; the stdlib future takes it.
    That is a disagreement with the table, not a bug: only contract findings."""
    report = check_future(StdlibHarness, contract=Contract.futurefsm(), **QUICK)
    assert report.findings
    assert {f.invariant.layer for f in report.findings} == {"contract"}
    assert "contract_done" in report.invariants


def test_the_search_keeps_going_past_a_violation() -> None:
    """Every sequence starting with a result breaks futurefsm's table at step 1; the
    replaced result behind it (step 2) is still found, and each violation is
    reported once."""
    report = check_future(
        ResultReplacingHarness, contract=Contract.futurefsm(), futures=1, depth=3, random_runs=0
    )
    first = min(f.steps for f in report.findings if f.invariant.layer == "contract")
    replaced = [f for f in report.findings if f.invariant.name == "one_terminal_state"]
    assert first == 1
    assert [str(m) for m in replaced[0].moves] == ["result_success(f0)", "result_failed(f0)"]
    keys = [(f.invariant.name, f.message) for f in report.findings]
    assert len(keys) == len(set(keys))


# ---------------------------------------------------------------------------
# TaskFuture, futurefsm's own
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("born", ["pending", "sent"])
def test_taskfuture_keeps_both_layers(born: Any) -> None:
    report = check_future(
        lambda: TaskFutureRaceHarness(born=born), contract=Contract.futurefsm(born=born), **QUICK
    )
    print(report.summary())
    assert report.findings == [], str(report)
    assert ("sent" in report.unsupported) is (born == "sent")


class RunsCallbacksTwice(TaskFuture):
    """Done-callbacks run twice on entering a terminal state."""

    __slots__ = ()

    def _invoke_callbacks(self) -> None:
        super()._invoke_callbacks()
        super()._invoke_callbacks()


def test_a_finding_on_futurefsms_table_draws_the_path() -> None:
    report = check_future(
        lambda: TaskFutureRaceHarness(future_class=RunsCallbacksTwice), futures=1, **QUICK
    )
    finding = next(f for f in report.findings if f.invariant.name == "callbacks_run_once")
    assert finding.steps == 1  # connection_lost on a pending future ends it
    assert "path of f0 on the diagram (Mermaid):" in finding.report
    assert "stateDiagram-v2" in finding.report
    assert run_moves(
        lambda: TaskFutureRaceHarness(future_class=RunsCallbacksTwice),
        finding.moves,
        futures=1,
    ) == ["callbacks_run_once"]


# ---------------------------------------------------------------------------
# Contracts
# ---------------------------------------------------------------------------


def test_futurefsms_contract_is_its_table() -> None:
    contract = Contract.futurefsm()
    assert contract.born_state == "pending"
    assert Contract.futurefsm(born="sent").born_state == "running"
    assert contract.terminal == {s.value for s in TERMINAL_STATES}
    for (state, trigger), cell in TRANSITION_TABLE.items():
        assert contract.fire(state.value, trigger.value) == cell.dest.value
    assert contract.futurefsm_table


def test_a_transitions_table_with_wildcards_and_defaults() -> None:
    contract = Contract.from_transitions(
        [FutureState.PENDING, "working", "ok", "gone"],
        [
            {"trigger": "start", "source": FutureState.PENDING, "dest": "working"},
            {"trigger": "finish", "source": "working", "dest": "ok"},
            {"trigger": "lose", "source": "*", "dest": "gone"},
            {"trigger": "lose", "source": "ok", "dest": "working"},  # first one wins
            {"trigger": "poke", "source": "working", "dest": None},  # internal
        ],
        initial="pending",
        cancelled=["gone"],
        sent_trigger="start",
        born="sent",
    )
    assert contract.born_state == "working"
    assert contract.terminal == {"gone"}  # the only state no transition leaves
    assert contract.fire("ok", "lose") == "gone"
    assert contract.fire("working", "poke") == "working"
    assert contract.fire("working", "unheard_of") == "working"  # missing: a self-loop
    assert contract.knows(FutureState.PENDING) and not contract.knows("elsewhere")


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"cancelled": ["nowhere"]}, "must be terminal"),
        ({"cancelled": ["running"]}, "must be terminal"),
        ({"born": "sent", "sent_trigger": "go"}, "no 'go' transition"),
        ({"born": "later"}, "born must be"),
    ],
)
def test_a_contract_that_cannot_be_is_refused(options: dict[str, Any], error: str) -> None:
    arguments: dict[str, Any] = {
        "initial": "pending",
        "terminal": ["done"],
        "cancelled": [],
        **options,
    }
    with pytest.raises(ValueError, match=error):
        Contract.from_table(
            {("pending", "sent"): "running", ("running", "result"): "done"}, **arguments
        )


def test_a_contract_naming_unknown_states_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown states \\['elsewhere'\\]"):
        Contract("t", ("a",), {("a", "go"): "elsewhere"}, "a", frozenset(), frozenset())


def test_transitions_rows_need_trigger_source_and_dest() -> None:
    with pytest.raises(ValueError, match="lacks \\['dest'\\]"):
        Contract.from_transitions(
            ["a"], [{"trigger": "t", "source": "a"}], initial="a", cancelled=[]
        )


def test_invariants_are_named_in_two_layers() -> None:
    assert {i.layer for i in UNIVERSAL} == {"universal"}
    assert {i.layer for i in CONTRACT} == {"contract"}
    assert set(INVARIANTS) == {i.name for i in (*UNIVERSAL, *CONTRACT)}
    assert all(i.doc for i in INVARIANTS.values())


# ---------------------------------------------------------------------------
# Harnesses free of futurefsm's types
# ---------------------------------------------------------------------------


class DuckHarness:
    """Not a ``RaceHarness``: only ``create``, ``deliver``, ``cancel``, ``state`` and
    ``close``; it reports states the contract does not know, and refuses what it
    cannot do at run time."""

    def __init__(self) -> None:
        self.inner = StdlibHarness()

    def create(self) -> cf.Future[Any]:
        return self.inner.create()

    def deliver(self, action: str, future: Any, payload: Any) -> None:
        if action not in ("sent", "result_success"):
            raise Unsupported(action)
        self.inner.deliver(action, future, payload)

    def cancel(self, future: cf.Future[Any]) -> bool:
        return self.inner.cancel(future)

    def state(self, future: cf.Future[Any]) -> str:
        return f"stdlib:{future._state}"

    def close(self) -> None:
        pass


def test_a_duck_typed_harness_gets_the_universal_layer_without_a_contract() -> None:
    report = check_future(DuckHarness, depth=2, random_runs=10)
    assert report.contract is None
    assert report.findings == [], str(report)
    assert {"result_failed", "confirm_canceled", "disconnect"} <= report.unsupported


def test_a_harness_whose_states_the_contract_does_not_know_is_an_error() -> None:
    with pytest.raises(ValueError, match="state 'stdlib:PENDING' for f0, which the contract"):
        check_future(DuckHarness, contract=STDLIB_CONTRACT, depth=2, random_runs=10)


def test_leaving_out_the_contract_checks_futurefsms_own_futures_by_their_table() -> None:
    assert check_future(StdlibHarness, depth=1, random_runs=0).contract is None
    report = check_future(lambda: TaskFutureRaceHarness(born="sent"), depth=1, random_runs=0)
    assert report.contract == Contract.futurefsm(born="sent")


class WrappingHarness(StdlibHarness):
    """Wraps a failed task's exception, as clients wrap remote errors."""

    def deliver(self, action: str, future: Any, payload: Any) -> None:
        if action == "result_failed":
            wrapped = RuntimeError("the remote task failed")
            wrapped.__cause__ = payload
            payload = wrapped
        super().deliver(action, future, payload)


class NothingIsTheSameHarness(WrappingHarness):
    def same_result(self, expected: Any, got: Any) -> bool:
        return False


def test_payload_comparison_is_a_hook() -> None:
    assert check_future(WrappingHarness, contract=STDLIB_CONTRACT, **QUICK).findings == []
    report = check_future(NothingIsTheSameHarness, contract=STDLIB_CONTRACT, **QUICK)
    assert "contract_result" in report.invariants


def test_same_result_by_default() -> None:
    error = KeyError("k")
    wrapped = RuntimeError("remote")
    wrapped.__cause__ = KeyError("k")  # a copy, as unpickling makes
    assert same_result(1, 1) and not same_result(1, 2)
    assert same_result(error, error) and same_result(error, wrapped)
    assert not same_result(error, RuntimeError("remote")) and not same_result(error, 5)


# ---------------------------------------------------------------------------
# Actions of your own, callbacks that act, captured output
# ---------------------------------------------------------------------------


def test_a_custom_action_that_raises_on_the_delivering_thread_is_found() -> None:
    def fail_everything(harness: Any, future: Any, payload: Any) -> None:
        for each in harness.futures:
            each.set_exception(RuntimeError("disconnected"))  # done ones raise

    fail_all = Action("fail_all", "connection_lost", scope="all", run=fail_everything)
    report = check_future(
        StdlibHarness, contract=None, actions=(*DEFAULT_ACTIONS, fail_all), **QUICK
    )
    finding = next(
        f for f in report.findings if f.invariant.name == "nothing_raises_on_delivering_thread"
    )
    assert [str(m) for m in finding.moves][-1] == "fail_all"
    assert finding.steps == 2
    assert "InvalidStateError" in finding.message


def test_a_custom_user_action_runs_on_a_user_thread() -> None:
    seen: list[str] = []

    def cancel_both(harness: Any, future: Any, payload: Any) -> None:
        import threading

        seen.append(threading.current_thread().name)
        for each in harness.futures:
            harness.cancel(each)

    bulk = Action("cancel_both", "user_cancel", scope="all", thread="user", run=cancel_both)
    assert run_moves(StdlibHarness, [Move(bulk)], contract=STDLIB_CONTRACT, actions=[bulk]) == []
    assert seen and seen[0].startswith("racekit-cancel_both")


class StopsAtAFailingCallback(cf.Future):
    """Logs a failing done-callback like the stdlib, then skips the ones after it."""

    def _invoke_callbacks(self) -> None:
        for callback in self._done_callbacks:
            try:
                callback(self)
            except Exception:
                _base.LOGGER.exception("exception calling callback for %r", self)
                return


class StoppingHarness(StdlibHarness):
    def create(self) -> cf.Future[Any]:
        future = StopsAtAFailingCallback()
        self.futures.append(future)
        return future


def test_callback_output_is_captured_not_printed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    report = check_future(StoppingHarness, contract=None, futures=1, depth=3, random_runs=0)
    finding = next(f for f in report.findings if f.invariant.name == "callbacks_run_once")
    assert [str(m) for m in finding.moves] == [
        "add_done_callback(f0, raises)",
        "add_done_callback(f0, raises)",
        "result_success(f0)",
    ]
    assert "captured output:" in finding.report
    assert "concurrent.futures ERROR exception calling callback" in finding.report
    assert "raises (on purpose)" in finding.report
    assert "exception calling callback" not in caplog.text
    assert logging.getLogger("concurrent.futures").propagate


def test_assert_race_free_is_the_pytest_form() -> None:
    assert assert_race_free(StdlibHarness, contract=None, **QUICK).findings == []
    with pytest.raises(RaceFound, match="waiters_notified_once") as caught:
        assert_race_free(NaiveStdlibHarness, contract=None, **QUICK)
    assert isinstance(caught.value, AssertionError)
    assert "1. cancel(f0)" in str(caught.value)


def test_an_unsupported_step_ends_the_sequence_without_a_finding() -> None:
    moves = [Move(ACTIONS["sent"], 0), Move(ACTIONS["confirm_canceled"], 0)]
    assert run_moves(DuckHarness, moves, contract=None) == []


# ---------------------------------------------------------------------------
# wait() in its three modes, as_completed, calls released together
# ---------------------------------------------------------------------------

WIDE = (*DEFAULT_ACTIONS, *WAIT_AND_RACE_ACTIONS)


def test_taskfuture_keeps_its_promises_to_waits_and_races() -> None:
    report = check_future(
        TaskFutureRaceHarness, actions=WIDE, depth=1, random_runs=40, max_steps=6, progress=None
    )
    assert report.findings == [], str(report)
    assert report.sequences_run > 40


def test_a_wait_that_a_cancel_never_wakes_is_found() -> None:
    # The stdlib's bare cancel() does not notify wait()'s waiter; the executor does,
    # when it reaches the task. One that never does, even when messages for the
    # cancelled tasks arrive, leaves wait(ALL_COMPLETED) asleep although every future
    # is done. Until such a message, sleeping on is the stdlib's own behaviour.
    wait_all = next(a for a in WIDE if a.name == "wait_all_completed")
    cancels = [Move(wait_all), Move(ACTIONS["cancel"], 0), Move(ACTIONS["cancel"], 1)]
    moves = [*cancels, Move(ACTIONS["sent"], 0), Move(ACTIONS["sent"], 1)]
    assert "no_call_blocks_forever" in run_moves(
        NaiveStdlibHarness, moves, contract=None, actions=WIDE
    )
    assert run_moves(NaiveStdlibHarness, cancels, contract=None, actions=WIDE) == []
    assert "no_call_blocks_forever" not in run_moves(
        StdlibHarness, moves, contract=None, actions=WIDE
    )


def test_racing_calls_are_released_together_and_judged() -> None:
    race = next(a for a in WIDE if a.name == "cancel_result_race")
    moves = [Move(ACTIONS["sent"], 0), Move(race, 0), Move(ACTIONS["confirm_canceled"], 0)]
    assert str(moves[1]) == "race(f0: cancel, result, cancelled)"
    assert run_moves(TaskFutureRaceHarness, moves, actions=WIDE) == []
