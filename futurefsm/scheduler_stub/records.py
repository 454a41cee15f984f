"""What the scheduler stub knows about tasks: one ``TaskRecord`` per task, one
``ClientBook`` per client connection (task ids are per client, docs/protocol.md).

Everything here is owned by the stub's I/O thread, with one exception: with worker
threads (``threads=True``) a worker thread claims a record (the table's ``WORKER_TOOK``)
under the stub's claim lock, and the I/O thread takes the same lock to move a record
out of ``QUEUED``, so exactly one of "it ran" and "it was removed from the queue"
happens. Worker processes are dispatched by the I/O thread itself, which claims for
them.

A task's state moves only through the task table (``task_table.py``: one literal
(state, event) -> (next state, effects) table, applied by ``SchedulerStub._apply``,
the only code that sets ``TaskRecord.state``); the records here hold what the table
does not: a task's data and how its graph hangs together. A task is *held* (and can
be cancelled) while its state is one of ``HELD_STATES``; afterwards a ``TaskCancel``
for it is answered ``not_found``.

Graphs: a task's ``depends_on`` names tasks of the same client (the same graph, as the
protocol says). Dependencies may arrive before or after their dependents: a dependent
whose dependency id is not known yet waits for a task with that id to arrive. A task
in no graph (``group_id`` None: a future passed as an argument) names tasks its client
sent before it, on the same ordered connection: one not held has ended, and the task
is answered ``DependencyGone`` at once (its client sends it again with that result). The
outcome of finished graph members (a task with a ``group_id``) is kept for dependents
that arrive later, for the ``MAX_RETAINED_GROUPS`` most recent groups of the client;
a dependent of an older, forgotten group member waits until it is cancelled.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from enum import Enum
from typing import Any, TypeAlias

from ..protocol import ResultStatus, Task, TaskResult
from .behaviour import Behaviour
from .task_table import INITIAL_STATE, TaskState

__all__ = [
    "DEPENDENCY_CANCELLED",
    "DEPENDENCY_GONE",
    "MAX_RETAINED_GROUPS",
    "AfterFinish",
    "ClientBook",
    "DependencyCancelled",
    "Outcome",
    "TaskRecord",
    "TaskState",
]

MAX_RETAINED_GROUPS = 1024
"""Per client, how many groups keep their finished members' outcomes for late dependents."""


class AfterFinish(Enum):
    """What ``SEND_RESULT`` sends besides (or instead of) the result, as a scripted
    ``on_cancel`` (``result_then_confirm``, ``ignore``) decided: fault scripting, not
    the task's state (the task's state moves the same whatever it says)."""

    SEND_RESULT = "send_result"
    SEND_RESULT_THEN_CONFIRM = "send_result_then_confirm"
    SUPPRESS_RESULT = "suppress_result"


class DependencyCancelled(Enum):
    """The outcome retained for a graph member that was cancelled, or (``GONE``) what
    ``register`` says of a dependency no longer held."""

    CANCELLED = "cancelled"
    GONE = "gone"


DEPENDENCY_CANCELLED = DependencyCancelled.CANCELLED
"""What ``ClientBook.register`` returns, and ``settled`` holds, for a cancelled member."""

DEPENDENCY_GONE = DependencyCancelled.GONE
"""What ``ClientBook.register`` returns for a task in no graph whose dependency is not
held: a task in no graph names tasks sent before it (a future passed as an argument),
so that one ended and was released before this one arrived (``DependencyGone``)."""

Outcome: TypeAlias = TaskResult | DependencyCancelled
"""How a task ended, as far as its dependents care: its result, or cancelled."""


_SEND_RESULT = AfterFinish.SEND_RESULT


class TaskRecord:
    """One task the stub received. The worker reads ``function``, ``args``,
    ``dep_payloads`` and ``behaviour``, all fixed before the record is queued.

    Lean on purpose, since the stub may hold hundreds of thousands: one object the
    garbage collector tracks per task without dependencies (its graph containers,
    ``pending_deps``, ``dep_payloads`` and ``dependents``, are None until needed)."""

    __slots__ = (
        "after_finish",
        "args",
        "behaviour",
        "buffers",
        "client",
        "confirms_after_result",
        "dep_payloads",
        "dependents",
        "function",
        "group_id",
        "index",
        "pending_deps",
        "state",
        "task_id",
        "worker",
    )

    def __init__(
        self,
        client: bytes,
        task_id: bytes,
        function: bytes,
        args: bytes,
        group_id: bytes | None,
        behaviour: Behaviour,
        index: int,
    ) -> None:
        self.client = client
        self.task_id = task_id
        self.group_id = group_id
        self.function = function
        self.args = args
        self.behaviour = behaviour
        self.index = index
        """The Task's arrival index across the stub."""
        self.state = INITIAL_STATE
        """Read anywhere; set only by ``SchedulerStub._apply`` (``task_table.py``)."""
        self.after_finish = _SEND_RESULT
        self.confirms_after_result = 0
        self.pending_deps: set[bytes] | None = None
        """Ids of the dependencies it still waits for (None: none)."""
        self.dep_payloads: dict[bytes, bytes] | None = None
        """Dependency id -> its success payload, substituted for its DependencyRef
        (None: no dependency)."""
        self.dependents: list[TaskRecord] | None = None
        """Records that wait for it (None: none yet)."""
        self.worker: object = None
        """The worker process running it, if any (the pool's business)."""
        self.buffers: Sequence[Any] = ()
        """The out-of-band buffers of its arguments (frames that came after the Task,
        held without a copy: the worker gets them as they are)."""

    @classmethod
    def of(cls, client: bytes, task: Task, behaviour: Behaviour, index: int) -> TaskRecord:
        """The record of a decoded ``Task``."""
        return cls(client, task.task_id, task.function, task.args, task.group_id, behaviour, index)

    def add_dependent(self, record: TaskRecord) -> None:
        """``record`` waits for this one."""
        if self.dependents is None:
            self.dependents = [record]
        else:
            self.dependents.append(record)

    def dependency_done(self, task_id: bytes, payload: bytes) -> bool:
        """Dependency ``task_id`` succeeded with ``payload``; True if it was the last
        one this record waited for."""
        if self.dep_payloads is None:
            self.dep_payloads = {}
        self.dep_payloads[task_id] = payload
        pending = self.pending_deps
        if pending is None:
            return True
        pending.discard(task_id)
        if pending:
            return False
        self.pending_deps = None
        return True

    def __repr__(self) -> str:
        return f"<TaskRecord {self.task_id.hex()} #{self.index} {self.state.value}>"


class ClientBook:
    """The tasks of one client connection, and how its graphs hang together."""

    __slots__ = ("groups", "identity", "live", "settled", "waiting_for_unknown")

    def __init__(self, identity: bytes) -> None:
        self.identity = identity
        self.live: dict[bytes, TaskRecord] = {}
        """Held tasks (not DONE nor CANCELLED) by task id."""
        self.groups: OrderedDict[bytes, list[bytes]] = OrderedDict()
        """Group id -> ids of its members, oldest group first."""
        self.settled: dict[bytes, Outcome] = {}
        """Outcome of finished or cancelled graph members, for dependents that arrive
        later."""
        self.waiting_for_unknown: dict[bytes, list[TaskRecord]] = {}
        """Dependency id not seen yet -> the dependents waiting for it."""

    def knows(self, task_id: bytes) -> bool:
        """True if ``task_id`` is held or is a retained graph member."""
        return task_id in self.live or task_id in self.settled

    def register(self, record: TaskRecord, depends_on: tuple[bytes, ...]) -> Outcome | None:
        """Add a new task and wire it into its graph.

        Returns None if ``record`` can go on (it must wait while ``record.pending_deps``
        is not None), else the outcome of a dependency that did not succeed: a failed
        or worker_died result (``record`` must end the same way without running) or
        ``DEPENDENCY_CANCELLED`` (``record`` must be cancelled).
        """
        task_id = record.task_id
        self.live[task_id] = record
        if record.group_id is not None:
            members = self.groups.get(record.group_id)
            if members is None:
                members = self.groups[record.group_id] = []
                self._forget_old_groups()
            members.append(task_id)
        if self.waiting_for_unknown:
            waiting = self.waiting_for_unknown.pop(task_id, None)
            if waiting:
                record.dependents = waiting
        for dep in depends_on:
            if dep in self.settled:
                outcome = self.settled[dep]
                if outcome is DEPENDENCY_CANCELLED or outcome.status is not ResultStatus.SUCCESS:
                    record.pending_deps = None
                    return outcome
                if record.dep_payloads is None:
                    record.dep_payloads = {}
                record.dep_payloads[dep] = outcome.payload
                continue
            if dep in self.live:
                self.live[dep].add_dependent(record)
            elif record.group_id is None:
                record.pending_deps = None
                return DEPENDENCY_GONE
            else:
                self.waiting_for_unknown.setdefault(dep, []).append(record)
            if record.pending_deps is None:
                record.pending_deps = {dep}
            else:
                record.pending_deps.add(dep)
        return None

    def settle(self, record: TaskRecord, outcome: Outcome | None) -> list[TaskRecord]:
        """``record`` finished (or was cancelled) with ``outcome``.

        Retains the outcome for late dependents if ``record`` is a graph member (then
        ``outcome`` must not be None), and returns (and detaches) its dependents that
        still wait.
        """
        if record.group_id is not None and record.group_id in self.groups:
            assert outcome is not None
            self.settled[record.task_id] = outcome
        if record.dependents is None:
            return []
        dependents = [d for d in record.dependents if d.state is TaskState.WAITING]
        record.dependents = None
        return dependents

    def release(self, record: TaskRecord) -> None:
        """``record`` is no longer held (DONE or CANCELLED)."""
        if self.live.get(record.task_id) is record:
            del self.live[record.task_id]

    def group_members(self, group_id: bytes) -> list[TaskRecord] | None:
        """The held members of a known group (possibly none); None for an unknown id."""
        members = self.groups.get(group_id)
        if members is None:
            return None
        return [self.live[m] for m in members if m in self.live]

    def _forget_old_groups(self) -> None:
        """Keep at most ``MAX_RETAINED_GROUPS`` groups, forgetting the oldest settled ones."""
        if len(self.groups) <= MAX_RETAINED_GROUPS:
            return
        for group_id, members in list(self.groups.items()):
            if len(self.groups) <= MAX_RETAINED_GROUPS:
                break
            if any(m in self.live for m in members):
                continue  # still running: its dependents need it
            del self.groups[group_id]
            for member in members:
                self.settled.pop(member, None)
