"""The race kit over ``TaskFuture`` on the in-memory transport (docs/race-kit.md), with
every action: deliveries racing user calls on several threads, ``wait()`` in its three
modes, ``as_completed``, callbacks that cancel a sibling, and calls released together
by a barrier, judged by both layers with futurefsm's table.
"""

from __future__ import annotations

import time

import pytest

from futurefsm import TaskFuture
from futurefsm.fsm import Cell
from futurefsm.testing import (
    DEFAULT_ACTIONS,
    WAIT_AND_RACE_ACTIONS,
    TaskFutureRaceHarness,
    check_future,
    examples,
)

EVERY = (*DEFAULT_ACTIONS, *WAIT_AND_RACE_ACTIONS)


@pytest.mark.parametrize(
    ("futures", "depth", "weight", "max_steps"),
    [(3, 1, 0.5, 12), (1, 2, 0.3, 20)],
    ids=["three-futures", "one-future-deep"],
)
def test_taskfuture_races_every_action(
    futures: int, depth: int, weight: float, max_steps: int
) -> None:
    report = check_future(
        TaskFutureRaceHarness,
        actions=EVERY,
        futures=futures,
        depth=depth,
        random_runs=examples(weight, minimum=10),
        max_steps=max_steps,
        progress=None,
    )
    print(report.summary())
    assert report.findings == [], str(report)


class _SlowWindows(TaskFuture):
    """A correct TaskFuture whose races are made wide by sleeps: a cancel looks at the
    state 30 ms after its request, a cancel_failed confirm arrives 10 ms late."""

    __slots__ = ()

    def _request_cancel(self, deadline: float, force: bool = True) -> None:
        super()._request_cancel(deadline, force)
        time.sleep(0.03)  # then it reads the state the others left

    def recv_cancel_confirm(self, kind: str) -> Cell:
        time.sleep(0.01)
        return super().recv_cancel_confirm(kind)


def test_racing_calls_through_wide_windows_keep_the_promises() -> None:
    races = tuple(a for a in EVERY if a.kind == "race" or a.kind == "deliver")
    report = check_future(
        lambda: TaskFutureRaceHarness(future_class=_SlowWindows, born="sent"),
        actions=races,
        futures=1,
        depth=2,
        random_runs=0,
        block_timeout=0.5,
        progress=None,
    )
    print(report.summary())
    assert report.findings == [], str(report)
