"""The race kit on anyio's ``BlockingPortal`` futures (anyio 4.16).

Each sequence gets a real portal (``start_blocking_portal``: an asyncio event loop in
a thread of its own). Every future is ``portal.start_task_soon(answer)``, a task that
waits for an ``anyio.Event``; delivering ``result_success`` / ``result_failed`` sets
it, with the value to return or the exception to raise, and waits until the future is
done. ``cancel()``, ``result()`` and done-callbacks are the user's real calls on the
``concurrent.futures.Future`` the portal returned; ``disconnect`` is the portal shut
down with its tasks still running (``portal.stop(cancel_remaining=True)``).

anyio declares no table of its own, so only the universal invariants are checked.
Run it: ``python examples/anyio_future_harness.py`` (exits 1 on a finding).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import sys
from typing import Any

import anyio
from anyio.from_thread import start_blocking_portal

from futurefsm.testing import RaceHarness, RaceReport, Unsupported, check_future

DELIVERY_DEADLINE = 30.0  # seconds a released task may take to settle its future


async def _answer(event: anyio.Event, box: list[Any]) -> Any:
    """The task: wait for the harness's answer, then return it or raise it."""
    await event.wait()
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


class AnyioPortalHarness(RaceHarness):
    """Futures of tasks started through one fresh ``BlockingPortal`` per sequence."""

    unsupported = ("sent", "confirm_canceled", "confirm_not_found", "confirm_cancel_failed")
    unsupported += ("cancel_timed_out", "connection_lost", "cancel_all")

    def __init__(self) -> None:
        self.stack = contextlib.ExitStack()
        self.portal = self.stack.enter_context(start_blocking_portal())
        self.tasks: dict[cf.Future[Any], tuple[anyio.Event, list[Any]]] = {}

    def create(self) -> cf.Future[Any]:
        event, box = self.portal.call(anyio.Event), [None]
        future = self.portal.start_task_soon(_answer, event, box)
        self.tasks[future] = (event, box)
        return future

    def deliver(self, action: str, future: Any, payload: Any) -> None:
        if action not in ("result_success", "result_failed", "disconnect"):
            raise Unsupported(action)
        try:
            if action == "disconnect":
                self.portal.call(self.portal.stop, True)
            else:
                event, box = self.tasks[future]
                box[0] = payload
                self.portal.call(event.set)
        except RuntimeError as error:  # the portal was stopped: nothing to deliver
            raise Unsupported(action) from error
        cf.wait(self.tasks if future is None else [future], timeout=DELIVERY_DEADLINE)

    def close(self) -> None:
        """Stop the portal, cancelling what still runs, and its event loop."""
        with contextlib.suppress(RuntimeError):  # already stopped by a disconnect
            self.portal.call(self.portal.stop, True)
        self.stack.close()


def check_anyio(**options: Any) -> RaceReport:
    """The race kit on ``BlockingPortal`` futures (universal invariants only)."""
    return check_future(AnyioPortalHarness, contract=None, **options)


if __name__ == "__main__":
    report = check_anyio()
    print(report)
    sys.exit(1 if report.findings else 0)
