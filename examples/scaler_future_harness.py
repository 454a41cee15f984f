"""The race kit on Scaler's own future: ``ScalerFuture`` (opengris-scaler 2.9).

The harness drives Scaler's real ``ScalerFuture`` through Scaler's real inbound
message handler, ``ClientFutureManager`` (what the client agent's thread runs on a
``TaskResult`` or a ``TaskCancelConfirm``), with real capnp messages. Only the wire
is replaced: TaskCancels are collected, and result objects are served from memory.
Disconnecting is ``ClientFutureManager.cancel_all_futures()``, what
``Client.disconnect()`` calls, on a user thread.

Its contract is Scaler's own semantics, declared in ``transitions`` form: futures are
born sent (``Client.submit`` sends at once), ``cancel()`` waits for the scheduler's
answer with no deadline, a refused cancel leaves the request standing.

Run it (needs ``futurefsm[scaler]``, i.e. opengris-scaler)::

    python examples/scaler_future_harness.py

It exits with status 1 when the kit reports a finding. With opengris-scaler 2.9.0 it
reports, each with a 2-step sequence, the three bugs
issue 14 describes: a done-callback that cancels another future blocks the thread
delivering messages forever (``no_call_blocks_forever``); ``add_done_callback`` on a
done future re-raises the callback's exception (``callback_errors_contained``); a
disconnect whose cancel is answered by a result leaves the future FINISHED then
CANCELLED, its waiters and callbacks notified twice (``one_terminal_state``,
``waiters_notified_once``, ``callbacks_run_once``).
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from typing import Any

from scaler.client.agent.future_manager import ClientFutureManager
from scaler.client.future import ScalerFuture
from scaler.protocol.capnp import (
    Task,
    TaskCancelConfirm,
    TaskCancelConfirmType,
    TaskResult,
    TaskResultType,
)
from scaler.utility.identifiers import ClientID, ObjectID, TaskID

from futurefsm.testing import (
    DEFAULT_ACTIONS,
    Action,
    Contract,
    RaceHarness,
    RaceReport,
    Unsupported,
    check_future,
)

CLIENT = ClientID(b"race-kit-client")

SCALER_CONTRACT = Contract.from_transitions(
    ["pending", "running", "cancel_requested", "done", "cancelled"],
    [
        {"trigger": "sent", "source": "pending", "dest": "running"},
        {"trigger": "user_cancel", "source": "running", "dest": "cancel_requested"},
        {"trigger": "recv_result", "source": ["running", "cancel_requested"], "dest": "done"},
        {
            "trigger": "recv_confirm_canceled",
            "source": ["running", "cancel_requested"],
            "dest": "cancelled",
        },
        {
            "trigger": "recv_confirm_not_found",
            "source": ["running", "cancel_requested"],
            "dest": "cancelled",
        },
    ],
    initial="pending",
    cancelled=["cancelled"],
    born="sent",
    name="ScalerFuture's semantics",
)
"""What ScalerFuture promises (a refused cancel keeps the request standing: no row)."""

DISCONNECT = Action(
    "disconnect",
    scope="all",
    thread="user",
    follows_harness=True,
    doc="Client.disconnect(): cancel every outstanding future, waiting for each answer",
)
SCALER_ACTIONS = (*(a for a in DEFAULT_ACTIONS if a.name != "disconnect"), DISCONNECT)


class _Wire:
    """The connector (collects what is sent) and the object buffer (serves results)."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.objects: dict[bytes, Any] = {}

    def send(self, message: Any) -> None:
        self.sent.append(message)

    def fetch_object(
        self, object_id: ObjectID, is_exception: bool, delete_after_fetch: bool
    ) -> Any:
        fetched: cf.Future[Any] = cf.Future()
        fetched.set_result(self.objects[bytes(object_id)])
        return fetched


class ScalerHarness(RaceHarness):
    """ScalerFuture and ClientFutureManager, a fresh pair per sequence."""

    unsupported = ("cancel_timed_out", "connection_lost", "cancel_all")

    def __init__(self) -> None:
        self.wire = _Wire()
        self.manager = ClientFutureManager(serializer=None)  # type: ignore[arg-type]
        self.futures: list[ScalerFuture] = []

    def create(self) -> ScalerFuture:
        task = Task(
            taskId=TaskID.generate_task_id(),
            source=CLIENT,
            metadata=b"",
            funcObjectId=None,
            functionArgs=[],
            capabilities={},
        )
        future = ScalerFuture(task, False, None, None, self.wire, self.wire)  # type: ignore[arg-type]
        self.manager.add_future(future)
        self.futures.append(future)
        return future

    def deliver(self, action: str, future: Any, payload: Any) -> None:
        if action in ("result_success", "result_failed"):
            object_id = ObjectID.generate_object_id(CLIENT)
            self.wire.objects[bytes(object_id)] = payload
            kind = TaskResultType.success if action == "result_success" else TaskResultType.failed
            self.manager.on_task_result(
                TaskResult(
                    taskId=future.task_id, resultType=kind, metadata=b"", results=[object_id]
                )
            )
        elif action.startswith("confirm_"):
            kind = {
                "confirm_canceled": TaskCancelConfirmType.canceled,
                "confirm_not_found": TaskCancelConfirmType.cancelNotFound,
                "confirm_cancel_failed": TaskCancelConfirmType.cancelFailed,
            }[action]
            self.manager.on_task_cancel_confirm(
                TaskCancelConfirm(taskId=future.task_id, cancelConfirmType=kind)
            )
        elif action == "disconnect":
            self.manager.cancel_all_futures()
        else:
            raise Unsupported(action)

    def state(self, future: ScalerFuture) -> str:
        if future.cancelled():
            return "cancelled"
        if future.done():
            return "done"
        return "cancel_requested" if future._cancel_requested else "running"

    def close(self) -> None:
        """Wake whatever waits forever in ``cancel()`` (a deadlocked thread too). Each
        future is cancelled from a thread of its own: a done-callback that cancels
        another future blocks until that one is cancelled too."""
        for future in self.futures:
            threading.Thread(target=future.set_canceled, daemon=True).start()


def check_scaler_future(**options: Any) -> RaceReport:
    """The race kit on ``ScalerFuture`` under its own contract."""
    options.setdefault("contract", SCALER_CONTRACT)
    options.setdefault("actions", SCALER_ACTIONS)
    return check_future(ScalerHarness, **options)


if __name__ == "__main__":
    import sys

    found = check_scaler_future()  # progress goes to stderr once it takes a while
    print(found)
    sys.exit(1 if found.findings else 0)
