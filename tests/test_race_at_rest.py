"""``check_at_rest``: one real future judged as it is, without waiting.

A ``TaskFuture`` driven through every state is clean; each planted defect (the stdlib
view off the state, a history off the table, a client holding a finished future, a
result that disagrees with ``exception()``) is reported under its own invariant; a
future that is not futurefsm's is judged by the universal layer only; a state the
contract does not know is an error.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from concurrent.futures import _base
from typing import Any

import pytest

from futurefsm.client.future import TaskFuture
from futurefsm.client.transport import InMemoryTransport
from futurefsm.fsm import FutureState, HistoryEntry, Trigger
from futurefsm.testing import Contract, RaceFound, check_at_rest


def _future(*steps: str) -> tuple[TaskFuture, InMemoryTransport]:
    transport = InMemoryTransport(cancel_timeout=60.0)
    future = transport.create_future()
    for step in steps:
        if step == "sent":
            transport.send_task(future)
        elif step == "cancel":
            future.cancel(wait=False)
        elif step == "result":
            future.recv_result(42)
        elif step == "failed":
            future.recv_result(exception=ValueError("boom"))
        elif step == "confirm":
            future.recv_cancel_confirm("canceled")
        elif step == "lost":
            future.connection_lost()
    return future, transport


@pytest.mark.parametrize(
    "steps",
    [(), ("sent",), ("sent", "cancel"), ("sent", "cancel", "confirm"), ("sent", "result"),
     ("sent", "failed"), ("cancel",), ("sent", "lost"), ("sent", "cancel", "result")],
)  # fmt: skip
def test_a_task_future_in_every_state_is_clean(steps: tuple[str, ...]) -> None:
    future, transport = _future(*steps)
    registered = future.task_id in transport.futures
    rest = check_at_rest(future, registered=registered, name="f0")
    assert rest.findings == [], str(rest)
    assert rest.state == future.state.value
    rest.assert_clean()
    assert "f0: state" in rest.report
    if steps:
        assert "path (Mermaid)" in rest.report


def test_a_cancel_in_flight_is_read_without_waiting_for_its_answer() -> None:
    # cancelled() waits for the answer in cancel_requested (off the I/O thread): the
    # check must not call it there, or it would wait out the cancel deadline.
    future, _ = _future("sent", "cancel")
    assert future.state is FutureState.CANCEL_REQUESTED
    done = threading.Event()
    holder: list[Any] = []

    def judge() -> None:
        holder.append(check_at_rest(future))
        done.set()

    threading.Thread(target=judge, daemon=True).start()
    assert done.wait(10.0), "check_at_rest waited for the cancel's answer"
    assert holder[0].findings == []


class _Tampered(TaskFuture):
    """A TaskFuture whose reads can be made to lie."""

    __slots__ = ("fake_history", "fake_stdlib")

    def __init__(self, task_id: bytes, transport: Any) -> None:
        super().__init__(task_id, transport)
        self.fake_history: list[HistoryEntry] | None = None
        self.fake_stdlib: str | None = None

    @property
    def history(self) -> list[HistoryEntry]:  # type: ignore[override]
        return self.fake_history if self.fake_history is not None else super().history

    def running(self) -> bool:
        return self.fake_stdlib == _base.RUNNING if self.fake_stdlib else super().running()


def _tampered(*steps: str) -> _Tampered:
    transport = InMemoryTransport(cancel_timeout=60.0)
    future = _Tampered(b"\x01" * 16, transport)
    transport.futures[future.task_id] = future
    for step in steps:
        if step == "sent":
            transport.send_task(future)
        elif step == "result":
            future.recv_result(1)
    return future


def test_a_history_off_the_table_is_reported() -> None:
    future = _tampered("sent", "result")
    now = time.monotonic()
    future.fake_history = [
        HistoryEntry(now, Trigger.SENT, FutureState.PENDING, FutureState.RUNNING),
        HistoryEntry(now, Trigger.CANCEL_TIMED_OUT, FutureState.RUNNING, FutureState.DONE),
    ]
    rest = check_at_rest(future)
    assert rest.invariants == ["contract_history"]
    assert "step 2: cancel_timed_out took running to done; the table says running" in str(rest)
    assert "no path diagram" in rest.report
    with pytest.raises(RaceFound, match="contract_history"):
        rest.assert_clean()


def test_a_history_that_does_not_reach_the_state_is_reported() -> None:
    future = _tampered("sent", "result")
    future.fake_history = future.history[:1]
    assert check_at_rest(future).invariants == ["contract_history"]


def test_a_stdlib_view_off_the_state_is_reported() -> None:
    future = _tampered("sent", "result")
    future.fake_stdlib = _base.RUNNING
    rest = check_at_rest(future)
    assert rest.invariants == ["contract_stdlib_view"]
    assert "running() True" in str(rest)


def test_a_client_holding_a_finished_future_is_reported() -> None:
    future, _ = _future("sent", "result")
    assert check_at_rest(future, registered=True).invariants == ["client_holds_live_futures"]
    assert check_at_rest(future, registered=False).findings == []
    live, _ = _future("sent")
    assert check_at_rest(live, registered=False).invariants == ["client_holds_live_futures"]


class _Contradicts(cf.Future):  # type: ignore[type-arg]
    """A plain future whose exception() disagrees with result()."""

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return None


class _CancelledNotDone(cf.Future):  # type: ignore[type-arg]
    def done(self) -> bool:
        return False


def test_a_plain_future_gets_the_universal_layer_only() -> None:
    ok: cf.Future[int] = cf.Future()
    assert check_at_rest(ok).findings == []
    ok.set_result(3)
    assert check_at_rest(ok).findings == []
    bad = _Contradicts()
    bad.set_exception(ValueError("x"))
    rest = check_at_rest(bad, name="bad")
    assert rest.invariants == ["result_raises_cancelled_iff_cancelled"]
    assert "bad: result(timeout=0) gave raised ValueError('x')" in str(rest)
    odd = _CancelledNotDone()
    odd.cancel()
    names = check_at_rest(odd).invariants
    assert names[0] == "cancelled_implies_done"


def test_a_state_the_contract_does_not_know_is_an_error() -> None:
    other = Contract.from_table(
        {("new", "go"): "over"}, initial="new", terminal=["over"], cancelled=[]
    )
    future, _ = _future("sent")
    with pytest.raises(ValueError, match="state 'running', which the contract"):
        check_at_rest(future, contract=other)
    # Without a contract the same future is judged by the universal layer alone.
    assert check_at_rest(future, contract=None).findings == []
