"""The race kit on pebble's pool futures (pebble 5.2): ``ThreadPool`` and ``ProcessPool``.

Each harness drives pebble's own pool code, one piece per step, on the kit's
delivering thread (standing in for pebble's worker or manager thread); only the
threads, the pipe and the worker processes are replaced.

- ``PebbleThreadHarness``: a ``ThreadPool`` worker. ``worker_takes`` is
  ``get_next_task`` (the queue read and its "cancelled?" check); ``result_success`` /
  ``result_failed`` is ``execute_next_task`` running a task that returns / raises.
- ``PebbleProcessHarness``: the ``ProcessPool`` manager's ``TaskManager``.
  ``dispatch`` is ``task_scheduler_loop``'s body, ``sent`` a worker's
  ``Acknowledgement``, results the worker's ``TaskResult``, ``watchdog`` one tick of
  ``pool_manager_loop`` (``update_tasks``: it kills the worker of a cancelled running
  task), ``connection_lost`` the worker dying, ``disconnect`` a broken pool.

Pebble declares no table of its own, so only the universal invariants are checked.
Run it: ``python examples/pebble_future_harness.py`` (exits 1 on a finding).
"""

from __future__ import annotations

import itertools
import sys
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from pebble.common import ProcessFuture, Result, ResultStatus
from pebble.pool import process, thread
from pebble.pool.base_pool import PoolContext, Task, TaskPayload

from futurefsm.testing import (
    DEFAULT_ACTIONS,
    Action,
    RaceHarness,
    RaceReport,
    Unsupported,
    check_future,
)

ONE_TASK = 1  # max_tasks: get_next_task reads one task, then returns (never blocks)
THREAD_ACTIONS = (*DEFAULT_ACTIONS, Action("worker_takes", doc="get_next_task reads it"))
PROCESS_ACTIONS = (
    *DEFAULT_ACTIONS,
    Action("dispatch", doc="task_scheduler_loop takes it off the queue"),
    Action("watchdog", scope="all", doc="pool_manager_loop: update_tasks (kills cancelled)"),
)
_ids = itertools.count(1)


def _outcome(payload: Any) -> Any:
    """The task's function: return the payload, or raise it."""
    if isinstance(payload, BaseException):
        raise payload
    return payload


class PebbleThreadHarness(RaceHarness):
    """One pebble ``ThreadPool`` worker's routine per future, one piece per step."""

    unsupported = ("sent", "confirm_canceled", "confirm_not_found", "confirm_cancel_failed")
    unsupported += ("cancel_timed_out", "connection_lost", "disconnect", "cancel_all")

    def __init__(self) -> None:
        self.contexts: dict[Future[Any], PoolContext] = {}
        self.taken: dict[Future[Any], Task | None] = {}

    def create(self) -> Future[Any]:
        future: Future[Any] = Future()  # what ThreadPool.schedule makes
        self.contexts[future] = PoolContext(1, ONE_TASK, None, ())
        task = Task(next(_ids), future, None, TaskPayload(_outcome, (None,), {}))
        self.contexts[future].task_queue.put(task)
        return future

    def deliver(self, action: str, future: Any, payload: Any) -> None:
        if action == "worker_takes" and future not in self.taken:
            task = next(thread.get_next_task(self.contexts[future], ONE_TASK), None)
            self.taken[future] = task  # None: it was cancelled, and pebble said so
        elif action in ("result_success", "result_failed") and self.taken.get(future):
            task = self.taken[future]
            self.taken[future] = None
            task.payload = TaskPayload(_outcome, (payload,), {})
            thread.execute_next_task(task)
        else:
            raise Unsupported(action)

    def state(self, future: Future[Any]) -> str:
        """Where the task is, and the future's own state (for the search's key)."""
        where = "queued" if self.contexts[future].task_queue.qsize() else "ran"
        where = "taken" if self.taken.get(future) else where
        return f"{where}/{future._state}"


class _Workers:
    """The worker manager, without processes: every worker stops when asked."""

    def dispatch(self, task: Task) -> None:
        """The task went down the pipe."""

    def maybe_stop_worker(self, worker_id: int) -> bool:
        return True


class PebbleProcessHarness(RaceHarness):
    """pebble's ``ProcessPool`` manager (``PoolManager``/``TaskManager``), no processes."""

    unsupported = ("confirm_canceled", "confirm_not_found", "confirm_cancel_failed")
    unsupported += ("cancel_timed_out", "cancel_all")

    def __init__(self) -> None:
        self.manager = process.PoolManager(PoolContext(1, 0, None, ()), None)  # type: ignore[arg-type]
        self.manager.worker_manager = _Workers()  # type: ignore[assignment]
        self.tasks: dict[Future[Any], Task] = {}
        self.dispatched: set[Future[Any]] = set()

    def create(self) -> ProcessFuture[Any]:
        future: ProcessFuture[Any] = ProcessFuture()  # what ProcessPool.schedule makes
        self.tasks[future] = Task(next(_ids), future, None, TaskPayload(_outcome, (), {}))
        return future

    def deliver(self, action: str, future: Any, payload: Any) -> None:
        task = self.tasks.get(future)
        manager = self.manager.task_manager
        if action == "dispatch" and future not in self.dispatched:
            self.dispatched.add(future)
            self.manager.context.task_queue.put(task)
            if task.future.cancelled():  # task_scheduler_loop's body
                task.set_running_or_notify_cancel()
                self.manager.context.task_queue.task_done()
            else:
                self.manager.schedule(task)
        elif future is not None and future not in self.dispatched:
            raise Unsupported(action)  # the task is still in the pool's queue
        elif action == "sent":
            manager.task_start(task.id, task.id)  # the worker's Acknowledgement
        elif action in ("result_success", "result_failed"):
            status = ResultStatus.SUCCESS if action == "result_success" else ResultStatus.FAILURE
            manager.task_done(task.id, Result(status, payload))
        elif action == "connection_lost" and task.started:
            try:  # as pool_manager_loop does
                self.manager.handle_worker_expiration((task.worker_id, -9))
            except BrokenProcessPool as error:
                self.manager.handle_broken_pool(error)
        elif action == "watchdog":
            self.manager.update_tasks()
        elif action == "disconnect":
            self.manager.handle_broken_pool(BrokenProcessPool("a worker broke the pipe"))
        else:
            raise Unsupported(action)

    def state(self, future: Future[Any]) -> str:
        """Where the task is, and the future's own state (for the search's key)."""
        task = self.tasks[future]
        where = "queued" if future not in self.dispatched else "gone"
        if task.id in self.manager.task_manager.tasks:
            where = "started" if task.started else "with a worker"
        return f"{where}/{getattr(future._state, 'value', future._state)}"


def check_pebble(harness: type[RaceHarness], **options: Any) -> RaceReport:
    """The race kit on one of the two harnesses (universal invariants only)."""
    actions = THREAD_ACTIONS if harness is PebbleThreadHarness else PROCESS_ACTIONS
    options.setdefault("actions", actions)
    return check_future(harness, contract=None, **options)


if __name__ == "__main__":
    reports = [check_pebble(h, depth=3) for h in (PebbleThreadHarness, PebbleProcessHarness)]
    print(*reports, sep="\n\n")
    sys.exit(1 if any(r.findings for r in reports) else 0)
