"""The scheduler's task handling: ``TaskEvents``, the part of ``SchedulerStub`` that
turns what happens to a task into a ``TaskEvent`` and applies it (docs/scheduler.md).

``_apply`` is the only code that sets a task's state: it looks the (state, event) cell
up in ``task_table.TASK_TABLE``, moves the task, and carries out the cell's effects,
each one method here ("The effects"). ``_fire`` also fires the events the effects
raised for other tasks (a graph's dependents), last raised first, so a long chain needs
no deep recursion. Everything here runs on the I/O thread, except ``_claim`` with
worker threads (under the claim lock: see ``_apply``).

What a TaskCancel does is decided here too, but what it *answers* for a task whose
Behaviour scripts its cancel (``on_cancel`` other than confirm/duplicate) is fault
scripting (``_answer_as_scripted``).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from ..errors import DependencyGone
from ..protocol import (
    ConfirmKind,
    ResultStatus,
    Task,
    TaskCancel,
    TaskResult,
    decode,
    encode,
)
from ..serializer import encode_failure
from .behaviour import Behaviour, OnCancel
from .outbound import Outbound, _Outbox
from .records import (
    DEPENDENCY_CANCELLED,
    DEPENDENCY_GONE,
    AfterFinish,
    ClientBook,
    TaskRecord,
)
from .task_table import HELD_STATES, TASK_TABLE, TaskCell, TaskEffect, TaskEvent, TaskState
from .workers import STATUSES, Inbox, ProcessPool, ThreadPool

if TYPE_CHECKING:
    import zmq

__all__ = ["TaskEvents"]

logger = logging.getLogger("futurefsm.scheduler_stub")

# Enum members as module constants: a member read from its class costs a lookup.
_QUEUED, _SEND_RESULT = TaskState.QUEUED, AfterFinish.SEND_RESULT
_READY, _WORKER_TOOK, _RUN = TaskEvent.READY, TaskEvent.WORKER_TOOK, TaskEffect.RUN
_RESULT, _RESULT_HELD = TaskEvent.RESULT, TaskEvent.RESULT_HELD
_DEPENDENCY_CANCELLED = TaskEvent.DEPENDENCY_CANCELLED

Transition = tuple[TaskState, tuple[Callable[[TaskRecord, TaskEvent, Any], None], ...], TaskCell]
"""A compiled cell: the next state, the methods of its effects, the cell itself."""


class TaskEvents(Outbound):
    """Task handling for ``SchedulerStub`` (a base class: the server owns the state
    listed below and calls ``_init_task_events`` in its constructor)."""

    _clients: dict[bytes, ClientBook]
    _pool: ProcessPool | ThreadPool
    _inbox: Inbox
    _arrivals: int
    _arriving: Task | None
    _arrived: list[TaskRecord] | None
    _answer_heartbeats: bool
    _behaviour_fn: Callable[[int], Behaviour] | None
    _plain_behaviour: Behaviour | None
    _serializer: Any

    def _init_task_events(self, threads: bool) -> None:
        """The task handling's own state (called by the constructor)."""
        self._timers: list[tuple[float, int, TaskRecord, tuple[ResultStatus, Any]]] = []
        """Held results: (due, sequence, record, (status, frame)), soonest first."""
        self._timer_seq = itertools.count()
        self._followups: list[tuple[TaskRecord, TaskEvent, Any]] = []
        """Events raised by effects for other tasks, fired by ``_fire`` (last first)."""
        effects = self._effect_methods()
        self._transitions: dict[tuple[TaskState, TaskEvent], Transition] = {
            key: (cell.state, tuple(effects[e] for e in cell.effects if e in effects), cell)
            for key, cell in TASK_TABLE.items()
        }
        """``TASK_TABLE`` with each cell's effects as the methods that carry them out."""
        # Worker threads claim tasks on their own threads (the one race: ``_apply``).
        self._claim_lock = threading.Lock() if threads else None

    # The abstract parts, the server's.

    def _book(self, identity: bytes) -> ClientBook:
        raise NotImplementedError

    def _behaviour_for(self, index: int) -> Behaviour:
        raise NotImplementedError

    def _protocol_error(self, identity: bytes, what: str) -> None:
        raise NotImplementedError

    def _start_arrived(self, arrived: list[TaskRecord]) -> None:
        raise NotImplementedError

    def _guarded(self, handler: Callable[..., None], *args: Any) -> None:
        raise NotImplementedError

    # -- inbound task messages

    def _on_task(
        self, identity: bytes, task: Task, buffers: Sequence[bytes | zmq.Frame] = ()
    ) -> None:
        """A Task arrived (with the out-of-band buffers of its arguments, if any)."""
        index = self._arrivals
        self._arrivals += 1
        self._arriving = task
        try:
            behaviour = self._behaviour_for(index)
        finally:
            self._arriving = None
        if self._behaviour_fn is not None:
            self._answer_heartbeats = behaviour.answer_heartbeats
        book = self._book(identity)
        if book.knows(task.task_id):
            self._protocol_error(identity, f"task id {task.task_id.hex()} is already in use")
            return
        record = TaskRecord.of(identity, task, behaviour, index)
        if buffers:
            record.buffers = buffers
        blocked_by = book.register(record, task.depends_on)
        if blocked_by is DEPENDENCY_CANCELLED:
            self._fire(record, _DEPENDENCY_CANCELLED, 1)
        elif blocked_by is DEPENDENCY_GONE:  # its client sends it again (DependencyGone)
            gone = DependencyGone(
                f"task {record.task_id.hex()} names a task that ended before it arrived"
            )
            payload = encode_failure(gone, "", self._serializer)
            failed = TaskResult(record.task_id, ResultStatus.FAILED, payload)
            self._fire(record, _result_event(record), (failed.status, encode(failed)))
        elif blocked_by is not None:  # it ends as its dependency did, without running
            failed = TaskResult(record.task_id, blocked_by.status, blocked_by.payload)
            self._fire(record, _result_event(record), (failed.status, encode(failed)))
        elif record.pending_deps is None:
            self._fire(record, _READY)

    def _on_cancel(self, identity: bytes, cancel: TaskCancel) -> None:
        self._count("cancels_received")
        if self._arrived:
            # Tasks read before this cancel in the same read go to the workers first,
            # as they would have had the cancel come in a later read: what a cancel
            # finds must not depend on how many messages one read took in.
            arrived, self._arrived = self._arrived, []
            self._start_arrived(arrived)
        if logger.isEnabledFor(logging.INFO):  # `futurefsm scheduler -v`
            force = " (force)" if cancel.force else ""
            logger.info("cancel%s of %s from %s", force, cancel.task_id.hex(), identity.hex())
        book = self._book(identity)
        record = book.live.get(cancel.task_id)
        if record is not None:
            self._fire_cancel(record, cancel.force)
            return
        members = book.group_members(cancel.task_id)
        if members is None:  # not held: the table's cells of the other states say the same
            self._send_confirm(identity, cancel.task_id, ConfirmKind.NOT_FOUND)
            return
        # A group cancel: each held member is cancelled as if forced, and confirmed on
        # its own id. Members that finished get nothing; cancelling one member may have
        # cancelled its dependents already, hence the state check. The running ones
        # last, as in _forget: a kill must not hand a queued member to the spare.
        for member in sorted(members, key=_is_running):
            if member.state in HELD_STATES:
                self._fire_cancel(member, force=True)

    # -- the task table: events fired, effects carried out

    def _fire(self, record: TaskRecord, event: TaskEvent, arg: Any = None) -> None:
        """Fire ``event`` on ``record`` and carry out its cell's effects, then those of
        the events the effects raised for its dependents (``_followups``: the last
        raised first), until none is left. ``arg``: the event's data (a result's
        ``(status, frame)``, or how many confirms a cancel answer takes)."""
        self._apply(record, event, arg)
        followups = self._followups
        while followups:
            self._apply(*followups.pop())

    def _apply(self, record: TaskRecord, event: TaskEvent, arg: Any = None) -> TaskCell:
        """Fire ``event`` on ``record``: move it as ``TASK_TABLE`` says, then carry out
        the cell's effects, in order; returns the cell. The only code that sets a task's
        state (``tests/test_scheduler_table.py`` checks)."""
        # Worker threads claim queued tasks on their own threads: a claim and any other
        # move out of queued happen one at a time (the lock covers the state change).
        lock = self._claim_lock
        locked = lock is not None and record.state is _QUEUED
        if locked:
            lock.acquire()  # type: ignore[union-attr]
        try:
            state, effects, cell = self._transitions[record.state, event]
            record.state = state
        finally:
            if locked:
                lock.release()  # type: ignore[union-attr]
        for effect in effects:
            effect(record, event, arg)
        return cell

    def _fire_cancel(self, record: TaskRecord, force: bool) -> None:
        """A TaskCancel reached a held task: the event its Behaviour makes of it."""
        mode = record.behaviour.on_cancel
        if mode is not OnCancel.CONFIRM and mode is not OnCancel.DUPLICATE:
            self._fire(record, TaskEvent.CANCEL_SCRIPTED)
            return
        # Sent, not started: unstarted again (a non-forced cancel leaves the next task
        # of an idle worker to start: ProcessPool.take_back).
        if record.state is TaskState.RUNNING and self._pool.take_back(record, next_to_run=force):
            self._fire(record, TaskEvent.WORKER_GAVE_BACK)
        times = 2 if mode is OnCancel.DUPLICATE else 1
        self._fire(record, TaskEvent.CANCEL_FORCE if force else TaskEvent.CANCEL, times)

    def _forget(self, *books: ClientBook) -> None:
        """Drop every held task of these clients without a word (``CLIENT_GONE``):
        queued ones never run, running ones are stopped (worker processes) or their
        results discarded."""
        records = [record for book in books for record in book.live.values()]
        for book in books:
            book.live.clear()
        # Every task sent to a worker process but not started is taken back first, so
        # killing the process of another does not hand it to a second process.
        for record in records:
            if record.state is TaskState.RUNNING and self._pool.take_back(record):
                self._fire(record, TaskEvent.WORKER_GAVE_BACK)
        # Then the running ones last: killing a process lets the spare take queued
        # tasks at once, and these clients' must be cancelled by then.
        records.sort(key=_is_running)
        for record in records:
            self._fire(record, TaskEvent.CLIENT_GONE)

    def _claim(self, record: TaskRecord) -> bool:
        """Called by a worker (thread, or the process pool) before it runs ``record``."""
        return _RUN in self._apply(record, _WORKER_TOOK).effects

    def _gave_back(self, record: TaskRecord) -> None:
        """Called by the process pool for a record it takes back to queue it again."""
        self._apply(record, TaskEvent.WORKER_GAVE_BACK)

    def _report(self, record: TaskRecord, status: int, frame: bytes | memoryview) -> None:
        """Called by a worker thread with a task's outcome: hand it to the I/O thread."""
        self._inbox.post(partial(self._on_task_done, record, status, frame))

    def _on_task_done(self, record: TaskRecord, status: int, frame: bytes | memoryview) -> None:
        """A worker finished ``record``: ``status`` (a ``STATUS_CODES`` byte) and the
        encoded ``TaskResult``. (``_fire``, unrolled: this runs once per task.)"""
        event = _RESULT_HELD if record.behaviour.result_delay > 0 else _RESULT
        self._apply(record, event, (STATUSES[status], frame))
        followups = self._followups
        while followups:
            self._apply(*followups.pop())

    def _fire_due_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, record, result = heapq.heappop(self._timers)
            self._guarded(self._fire, record, TaskEvent.HOLD_OVER, result)

    # The effects (``TaskEffect``), each called as (record, event, arg).

    def _effect_methods(self) -> dict[TaskEffect, Callable[[TaskRecord, TaskEvent, Any], None]]:
        """The method that carries out each ``TaskEffect``; all but RUN and SKIP, which
        the worker that asked (``_claim``) reads from the cell."""
        E = TaskEffect
        return {
            E.DISPATCH: self._dispatch,
            E.PASS_ON: self._pass_on,
            E.SEND_RESULT: self._send_result_effect,
            E.HOLD_RESULT: self._hold_result,
            E.DROP: self._drop,
            E.CONFIRM_CANCELED: self._confirm_canceled,
            E.REFUSE_CANCEL: self._refuse_cancel,
            E.ANSWER_NOT_FOUND: self._answer_not_found,
            E.ANSWER_AS_SCRIPTED: self._answer_as_scripted,
            E.KILL_WORKER: self._kill_worker,
            E.STOP_WORKER: self._stop_worker,
            E.DISCARD: self._discard,
            E.IMPOSSIBLE: self._impossible,
        }

    def _dispatch(self, record: TaskRecord, event: TaskEvent, arg: Any) -> None:
        if self._arrived is not None:  # reading the ROUTER: start after the batch
            self._arrived.append(record)
        else:
            self._pool.submit(record)

    def _pass_on(self, record: TaskRecord, event: TaskEvent, arg: Any) -> None:
        """Its dependents get its outcome ``arg`` (status, frame); a failure ends them
        the same way, transitively, without running them."""
        if record.dependents is None and record.group_id is None:
            return  # not a graph member: what most tasks are
        status, frame = arg
        outcome = decode(bytes(frame))
        assert isinstance(outcome, TaskResult)
        followups = self._followups
        for dependent in self._clients[record.client].settle(record, outcome):
            if status is ResultStatus.SUCCESS:
                if dependent.dependency_done(record.task_id, outcome.payload):
                    followups.append((dependent, _READY, None))
            else:
                failed = encode(TaskResult(dependent.task_id, status, outcome.payload))
                followups.append((dependent, _result_event(dependent), (status, failed)))

    def _send_result_effect(self, record: TaskRecord, event: TaskEvent, arg: Any) -> None:
        """No longer held; send its result ``arg`` as its Behaviour and any TaskCancel say."""
        live = self._clients[record.client].live
        if live.get(record.task_id) is record:
            del live[record.task_id]
        status, frame = arg
        if (
            record.behaviour is self._plain_behaviour
            and record.after_finish is _SEND_RESULT
            and not self._log_messages
        ):  # what most tasks are: _queue_out, the short way
            box = self._outgoing.get(record.client)
            if box is None:
                box = self._outgoing[record.client] = _Outbox(False)
            box.frames.append(frame)
            return
        if record.after_finish is AfterFinish.SUPPRESS_RESULT:
            self._count("results_discarded")
            return
        behaviour = record.behaviour
        if behaviour.drop_result:
            self._count("results_dropped")
        else:
            for _ in range(2 if behaviour.duplicate_result else 1):
                self._send_result(record.client, record.task_id, status, frame)
        if record.after_finish is AfterFinish.SEND_RESULT_THEN_CONFIRM:
            confirms = record.confirms_after_result
            self._send_confirm(record.client, record.task_id, ConfirmKind.CANCELED, confirms)

    def _hold_result(self, record: TaskRecord, event: TaskEvent, arg: Any) -> None:
        due = time.monotonic() + record.behaviour.result_delay
        heapq.heappush(self._timers, (due, next(self._timer_seq), record, arg))

    def _drop(self, record: TaskRecord, event: TaskEvent, arg: Any) -> None:
        book = self._clients[record.client]
        book.release(record)
        waiting = book.settle(record, DEPENDENCY_CANCELLED)
        self._followups.extend((dependent, _DEPENDENCY_CANCELLED, 1) for dependent in waiting)

    def _confirm_canceled(self, record: TaskRecord, event: TaskEvent, arg: Any) -> None:
        self._send_confirm(record.client, record.task_id, ConfirmKind.CANCELED, arg or 1)

    def _refuse_cancel(self, record: TaskRecord, event: TaskEvent, arg: Any) -> None:
        self._send_confirm(record.client, record.task_id, ConfirmKind.CANCEL_FAILED, arg or 1)

    def _answer_not_found(self, record: TaskRecord, event: TaskEvent, arg: Any) -> None:
        self._send_confirm(record.client, record.task_id, ConfirmKind.NOT_FOUND)

    def _answer_as_scripted(self, record: TaskRecord, event: TaskEvent, arg: Any) -> None:
        """Fault scripting: the TaskCancel is answered as ``on_cancel`` says."""
        mode = record.behaviour.on_cancel
        if mode is OnCancel.RESULT_THEN_CONFIRM:
            record.after_finish = AfterFinish.SEND_RESULT_THEN_CONFIRM
            record.confirms_after_result += 1
        elif mode is OnCancel.CONFIRM_THEN_RESULT:
            self._send_confirm(record.client, record.task_id, ConfirmKind.CANCELED)
        elif mode is OnCancel.CANCEL_FAILED:
            self._send_confirm(record.client, record.task_id, ConfirmKind.CANCEL_FAILED)
        elif mode is OnCancel.NOT_FOUND:
            self._send_confirm(record.client, record.task_id, ConfirmKind.NOT_FOUND)
        else:  # OnCancel.IGNORE
            record.after_finish = AfterFinish.SUPPRESS_RESULT

    def _kill_worker(self, record: TaskRecord, event: TaskEvent, arg: Any) -> None:
        gone = partial(self._fire, record, TaskEvent.WORKER_GONE, arg)
        if self._pool.kill(record, gone):
            self._count("workers_killed")
        else:  # a thread, or it finished meanwhile: its result is discarded when it comes
            self._apply(record, TaskEvent.KILL_REFUSED, arg)

    def _stop_worker(self, record: TaskRecord, event: TaskEvent, arg: Any) -> None:
        if not self._pool.take_back(record) and self._pool.kill(record, _nothing):
            self._count("workers_killed")

    def _discard(self, record: TaskRecord, event: TaskEvent, arg: Any) -> None:
        self._count("results_discarded")

    def _impossible(self, record: TaskRecord, event: TaskEvent, arg: Any) -> None:
        logger.error("scheduler stub: %s on %r: impossible, says the task table", event, record)
        self._count("internal_errors")


def _result_event(record: TaskRecord) -> TaskEvent:
    """The event of ``record``'s result: held if its Behaviour delays results."""
    return _RESULT_HELD if record.behaviour.result_delay > 0 else _RESULT


def _is_running(record: TaskRecord) -> bool:
    return record.state is TaskState.RUNNING


def _nothing() -> None:
    """A callback with nothing to do."""
