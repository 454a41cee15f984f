"""An idle client hands its first task over before ``submit`` returns (issue 24).

A stdlib executor gives a submitted call to a worker at once. The client used to
queue it for its I/O thread, which a thread submitting in a loop kept from the GIL
for a switch interval, and the embedded scheduler was not even connected yet when
``Client()`` returned: ``shutdown(cancel_futures=True)`` right after 50 submits then
cancelled all 50 unsent (CPython's ``test_cancel_futures`` failed 3 of 3; it now runs
in tests/test_cpython_executor.py).
"""

from __future__ import annotations

import time

from futurefsm import CancelOutcome, Client, FutureState


def test_an_idle_client_sends_its_first_task_before_the_next_submit() -> None:
    with Client(workers=1) as client:
        for _ in range(3):  # right after Client(), and each time it is idle again
            first = client.submit(abs, -1)
            second = client.submit(abs, -2)
            assert first.state is not FutureState.PENDING  # sent (or even done)
            assert (first.result(timeout=30), second.result(timeout=30)) == (1, 2)


def test_shutdown_cancel_futures_after_a_burst_leaves_the_first_task_sent() -> None:
    client = Client(workers=1)
    futures = [client.submit(time.sleep, 0.05) for _ in range(50)]
    client.shutdown(wait=True, cancel_futures=True)
    # The first went to the scheduler: its cancel was a TaskCancel, answered by the
    # scheduler (refused if a worker had started it, confirmed if not).
    assert futures[0].cancel_outcome in (CancelOutcome.FAILED, CancelOutcome.CONFIRMED)
    assert sum(future.cancelled() for future in futures) >= 40
