"""The race kit finds the three real bug shapes of issue 14 in a small client written
here from scratch (``MiniClient``: futures born sent, a blocking ``cancel()`` that
waits for the scheduler's answer, and a client-wide disconnect, as Scaler's are).

The correct client passes both layers under its own transitions-style contract; each
broken variant is found with a minimal sequence of at most 6 steps, both by the
breadth-first search and by the random search with shrinking alone. Run with ``-s``
to see how long each took and the report.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from concurrent.futures import _base
from typing import Any

import pytest

from futurefsm.testing import Contract, Finding, RaceHarness, RaceReport, check_future, run_moves

# ---------------------------------------------------------------------------
# A small client, correct
# ---------------------------------------------------------------------------

_callback_depth = threading.local()


class MiniFuture(cf.Future):
    """A flag-based remote future: running until a result or a cancel confirm."""

    def __init__(self, client: MiniClient, task_id: int) -> None:
        super().__init__()
        self.client = client
        self.task_id = task_id
        self.cancelling = False
        self._state = _base.RUNNING  # born sent: submit() sends at once

    def state_name(self) -> str:
        """The contract's name for where the flags say the future is."""
        if self._state == _base.FINISHED:
            return "finished"
        if self._state in (_base.CANCELLED, _base.CANCELLED_AND_NOTIFIED):
            return "cancelled"
        return "cancelling" if self.cancelling else "running"

    def finish(self, result: Any = None, exception: BaseException | None = None) -> None:
        with self._condition:
            if self.done():
                return
            self._result, self._exception, self._state = result, exception, _base.FINISHED
            for waiter in self._waiters:
                (waiter.add_exception if exception else waiter.add_result)(self)
            self._condition.notify_all()
        self._invoke_callbacks()

    def cancelled_by_scheduler(self) -> None:
        with self._condition:
            if self.done():
                return
            self._notify_cancelled()
        self._invoke_callbacks()

    def _notify_cancelled(self) -> None:
        self._state = _base.CANCELLED_AND_NOTIFIED
        for waiter in self._waiters:
            waiter.add_cancelled(self)
        self._condition.notify_all()

    def _invoke_callbacks(self) -> None:
        _callback_depth.n = getattr(_callback_depth, "n", 0) + 1
        try:
            super()._invoke_callbacks()
        finally:
            _callback_depth.n -= 1

    def add_done_callback(self, fn: Any) -> None:
        _callback_depth.n = getattr(_callback_depth, "n", 0) + 1
        try:
            super().add_done_callback(fn)
        finally:
            _callback_depth.n -= 1

    def must_not_block(self) -> bool:
        return self.client.on_io_thread() or getattr(_callback_depth, "n", 0) > 0

    def cancel(self) -> bool:
        """Ask the scheduler to cancel; wait for its answer (except where that could
        deadlock: on the I/O thread or in a done-callback)."""
        with self._condition:
            if self.done():
                return self.cancelled()
            send, self.cancelling = not self.cancelling, True
        if send:
            self.client.cancels.append(self.task_id)
        if self.must_not_block():
            return True
        with self._condition:
            while not self.done() and not self.client.closed:
                self._condition.wait()
            return self.cancelled()


class MiniClient:
    """The client: a registry of futures and the handlers of inbound messages."""

    future_class: type[MiniFuture] = MiniFuture

    def __init__(self) -> None:
        self.futures: dict[int, MiniFuture] = {}
        self.cancels: list[int] = []
        self.io_thread: threading.Thread | None = None
        self.closed = False

    def on_io_thread(self) -> bool:
        return threading.current_thread() is self.io_thread

    def submit(self) -> MiniFuture:
        future = self.future_class(self, len(self.futures))
        self.futures[future.task_id] = future
        return future

    def on_result(self, future: MiniFuture, value: Any, error: BaseException | None) -> None:
        future.finish(value, error)
        self.forget(future)

    def forget(self, future: MiniFuture) -> None:
        self.futures.pop(future.task_id, None)

    def on_confirm(self, future: MiniFuture, kind: str) -> None:
        if kind == "canceled" or (kind == "not_found" and future.cancelling):
            future.cancelled_by_scheduler()
            self.forget(future)

    def disconnect(self) -> None:
        """Every outstanding future is cancelled."""
        for future in list(self.futures.values()):
            future.cancelled_by_scheduler()
        self.futures.clear()

    def close(self) -> None:
        self.closed = True
        for future in list(self.futures.values()):
            with future._condition:
                future._condition.notify_all()


MINI_CONTRACT = Contract.from_transitions(
    ["pending", "running", "cancelling", "finished", "cancelled"],
    [
        {"trigger": "sent", "source": "pending", "dest": "running"},
        {"trigger": "recv_result", "source": ["running", "cancelling"], "dest": "finished"},
        {"trigger": "user_cancel", "source": "running", "dest": "cancelling"},
        {
            "trigger": "recv_confirm_canceled",
            "source": ["running", "cancelling"],
            "dest": "cancelled",
        },
        {"trigger": "recv_confirm_not_found", "source": "cancelling", "dest": "cancelled"},
        {"trigger": "connection_lost", "source": ["running", "cancelling"], "dest": "cancelled"},
    ],
    initial="pending",
    cancelled=["cancelled"],
    born="sent",
    name="MiniClient's table",
)


class MiniHarness(RaceHarness):
    """The race kit's harness for ``MiniClient``."""

    client_class: type[MiniClient] = MiniClient
    unsupported = ("connection_lost", "cancel_timed_out", "confirm_cancel_failed", "cancel_all")

    def __init__(self) -> None:
        self.client = self.client_class()

    def create(self) -> MiniFuture:
        return self.client.submit()

    def deliver(self, action: str, future: Any, payload: Any) -> None:
        client = self.client
        if action == "result_success":
            client.on_result(future, payload, None)
        elif action == "result_failed":
            client.on_result(future, None, payload)
        elif action.startswith("confirm_"):
            client.on_confirm(future, action.removeprefix("confirm_"))
        elif action == "disconnect":
            client.disconnect()
        else:
            super().deliver(action, future, payload)

    def state(self, future: MiniFuture) -> str:
        return future.state_name()

    def attach_delivering_thread(self, thread: threading.Thread) -> None:
        self.client.io_thread = thread

    def close(self) -> None:
        self.client.close()


# ---------------------------------------------------------------------------
# The three bug shapes
# ---------------------------------------------------------------------------


class BlockingCancelFuture(MiniFuture):
    """Deadlock: cancel() always waits for the confirm, even in a done-callback on the
    I/O thread, the only thread that could deliver it."""

    def must_not_block(self) -> bool:
        return False


class ReraisingFuture(MiniFuture):
    """add_done_callback on a future already done lets the callback's exception out."""

    def add_done_callback(self, fn: Any) -> None:
        with self._condition:
            if not self.done():
                self._done_callbacks.append(fn)
                return
        fn(self)


class LateForgettingClient(MiniClient):
    """Double notification: the registry forgets a finished future only later, and
    disconnect cancels every registered future without checking it: FINISHED then
    CANCELLED_AND_NOTIFIED, waiters and done-callbacks notified twice."""

    def on_result(self, future: MiniFuture, value: Any, error: BaseException | None) -> None:
        future.finish(value, error)  # forgotten on a later loop iteration

    def disconnect(self) -> None:
        for future in list(self.futures.values()):
            with future._condition:
                future._notify_cancelled()
            future._invoke_callbacks()
        self.futures.clear()


def _harness(future_class: type[MiniFuture] = MiniFuture, client: type[MiniClient] = MiniClient):
    client_class = type(f"{client.__name__}Of{future_class.__name__}", (client,), {})
    client_class.future_class = future_class
    return type(f"Harness{client_class.__name__}", (MiniHarness,), {"client_class": client_class})


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


def test_the_correct_mini_client_keeps_both_layers() -> None:
    report = check_future(_harness(), contract=MINI_CONTRACT, depth=3, random_runs=100)
    print(report.summary())
    assert report.findings == [], str(report)
    assert {"sent", "connection_lost"} <= report.unsupported


BUGS = [
    pytest.param(
        _harness(BlockingCancelFuture),
        "no_call_blocks_forever",
        "delivering thread did not finish",
        id="deadlock",
    ),
    pytest.param(
        _harness(ReraisingFuture),
        "callback_errors_contained",
        "add_done_callback(f0, raises)",
        id="callback-reraised",
    ),
    pytest.param(
        _harness(client=LateForgettingClient),
        "one_terminal_state",
        "2. disconnect",
        id="double-notification",
    ),
]


def _finding(report: RaceReport, invariant: str, shown: str) -> Finding:
    """The finding of ``invariant`` whose report shows ``shown``."""
    matching = [f for f in report.findings if f.invariant.name == invariant and shown in f.report]
    assert matching, str(report)
    return matching[0]


@pytest.mark.parametrize(("harness", "invariant", "shown"), BUGS)
def test_the_kit_finds_the_bug_breadth_first(harness: Any, invariant: str, shown: str) -> None:
    started = time.monotonic()
    report = check_future(harness, contract=MINI_CONTRACT, depth=2, random_runs=0)
    finding = _finding(report, invariant, shown)
    print(f"\n{report.summary()}\nfound after {finding.found_after_seconds:.2f} s\n{finding}")
    assert finding.steps <= 6
    assert finding.invariant.layer == "universal"
    assert shown in finding.report and f"universal invariant {invariant}:" in finding.report
    # Replaying the minimal sequence shows the violation again.
    assert invariant in run_moves(harness, finding.moves, contract=MINI_CONTRACT)
    print(f"whole search: {time.monotonic() - started:.2f} s")


@pytest.mark.parametrize(("harness", "invariant", "shown"), BUGS)
def test_the_kit_finds_the_bug_at_random_and_shrinks_it(
    harness: Any, invariant: str, shown: str
) -> None:
    report = check_future(
        harness, contract=MINI_CONTRACT, depth=0, random_runs=100, max_steps=20, seed=1
    )
    finding = _finding(report, invariant, shown)
    print(
        f"\n{report.summary()}\nfound after {finding.found_after_seconds:.2f} s, minimal after "
        f"{finding.shrunk_after_seconds:.2f} s ({finding.how})\n{finding}"
    )
    assert finding.steps <= 6
    assert shown in finding.report


def test_double_notification_is_reported_on_every_layer_it_breaks() -> None:
    report = check_future(
        _harness(client=LateForgettingClient), contract=MINI_CONTRACT, depth=2, random_runs=0
    )
    assert {
        "one_terminal_state",
        "waiters_notified_once",
        "callbacks_run_once",
        "contract_state",
    } <= report.invariants
    # Each distinct violation once, universal ones first.
    keys = [(f.invariant.name, f.message) for f in report.findings]
    assert len(keys) == len(set(keys))
    layers = [f.invariant.layer for f in report.findings]
    assert layers == sorted(layers, key=lambda layer: layer != "universal")


def test_a_deadlock_is_detected_fast_and_shows_where_it_blocks() -> None:
    harness = _harness(BlockingCancelFuture)
    report = check_future(
        harness, contract=MINI_CONTRACT, depth=2, random_runs=0, block_timeout=0.1
    )
    finding = _finding(report, "no_call_blocks_forever", "delivering thread did not finish")
    assert finding.steps == 2
    assert "in cancel" in finding.report  # the blocked thread's stack
