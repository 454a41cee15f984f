"""Tests for futurefsm.scheduler_stub, over real loopback sockets.

A raw DEALER plays the client, with ``futurefsm.protocol`` to encode and decode. Tasks
finish when a test opens their gate (``sample_tasks.gate_wait``), never after a sleep;
every wait has a deadline, and "nothing arrives" is checked with a short bounded poll.
"""

from __future__ import annotations

import json
import logging
import math
import operator
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
import zmq

from futurefsm.errors import RemoteTraceback
from futurefsm.protocol import (
    PROTOCOL_VERSION,
    Batch,
    ConfirmKind,
    Disconnect,
    Heartbeat,
    HeartbeatEcho,
    Message,
    ProtocolError,
    ResultStatus,
    Task,
    TaskCancel,
    TaskCancelConfirm,
    TaskResult,
    decode,
    encode,
    new_task_id,
    unbatch,
)
from futurefsm.scheduler_stub import (
    WORKER_DIED_REASON,
    Behaviour,
    OnCancel,
    SchedulerStub,
)
from futurefsm.scheduler_stub.sample_tasks import (
    add,
    echo,
    fail,
    gate_wait,
    noop,
    open_gate,
    reset_gates,
    touch,
    unpicklable_result,
    wait_started,
)
from futurefsm.serializer import DEFAULT_SERIALIZER, DependencyRef, decode_failure

dumps = DEFAULT_SERIALIZER.dumps
loads = DEFAULT_SERIALIZER.loads

WAIT = 5.0
"""Deadline for anything that must happen."""
QUIET = 0.15
"""How long a poll for "nothing arrives" lasts."""

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def unbatched(frame: bytes) -> list[Message]:
    """The messages in ``frame``: itself, or a Batch's, which must all decode."""
    message = decode(frame)
    if type(message) is not Batch:
        return [message]
    items = [item for item, _ in unbatch(message)]
    assert not any(isinstance(item, ProtocolError) for item in items), items
    return items  # type: ignore[return-value]


class Peer:
    """A raw DEALER client speaking the protocol."""

    def __init__(self, context: zmq.Context[Any], address: str, identity: bytes | None) -> None:
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if identity is not None:
            self.socket.setsockopt(zmq.ROUTING_ID, identity)
        self.socket.connect(address)
        self.pending: deque[Message] = deque()
        """Messages of a Batch the stub sent, not yet taken by ``recv``."""

    def send(self, message: Message) -> None:
        self.socket.send(encode(message))

    def submit(
        self,
        fn: Callable[..., Any],
        *args: Any,
        task_id: bytes | None = None,
        group_id: bytes | None = None,
        depends_on: tuple[bytes, ...] = (),
        **kwargs: Any,
    ) -> bytes:
        """Send a Task running ``fn(*args, **kwargs)``; return its id."""
        task_id = new_task_id() if task_id is None else task_id
        self.send(Task(task_id, dumps(fn), dumps((args, kwargs)), group_id, depends_on))
        return task_id

    def cancel(self, task_id: bytes, force: bool = False) -> None:
        self.send(TaskCancel(task_id, force))

    def recv(self, timeout: float = WAIT) -> Message:
        """The next message (those of a Batch one by one, as a client takes them);
        fails the test if none arrives within ``timeout``."""
        if not self.pending:
            if not self.socket.poll(int(timeout * 1000)):
                pytest.fail(f"no message from the stub within {timeout} s")
            self.pending.extend(unbatched(self.socket.recv()))
        return self.pending.popleft()

    def recv_many(self, count: int) -> list[Message]:
        return [self.recv() for _ in range(count)]

    def recv_result(self, task_id: bytes, timeout: float = WAIT) -> TaskResult:
        """The next message, which must be ``task_id``'s result."""
        message = self.recv(timeout)
        assert isinstance(message, TaskResult) and message.task_id == task_id, message
        return message

    def assert_silent(self, within: float = QUIET) -> None:
        """Fails the test if a message arrives within ``within`` seconds."""
        if self.pending:
            pytest.fail(f"unexpected message from the stub: {self.pending[0]!r}")
        if self.socket.poll(int(within * 1000)):
            pytest.fail(f"unexpected message from the stub: {decode(self.socket.recv())!r}")

    def close(self) -> None:
        self.socket.close(linger=0)


def stopped_or_discarded(stub: SchedulerStub) -> int:
    """Tasks whose worker process was killed, plus results thrown away."""
    stats = stub.stats()
    return stats["workers_killed"] + stats["results_discarded"]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll ``condition`` (a cheap read of the stub's counters) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.002)  # a polling interval, not a synchronisation


def result_value(message: Message) -> Any:
    assert isinstance(message, TaskResult)
    assert message.status is ResultStatus.SUCCESS, message
    return loads(message.payload)


def confirm(task_id: bytes, kind: str) -> TaskCancelConfirm:
    return TaskCancelConfirm(task_id, ConfirmKind(kind))


def unique(name: str) -> str:
    """A gate name no other test uses."""
    return f"{name}-{os.urandom(4).hex()}"


@pytest.fixture
def context() -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


class _Impossible(logging.Handler):
    """Keeps what the scheduler logs when an event hits a cell its task table calls
    impossible (``TaskEffect.IMPOSSIBLE``)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "impossible, says the task table" in message:
            self.seen.append(message)


@pytest.fixture(autouse=True)
def no_impossible_event() -> Iterator[None]:
    """Every test here also checks the task table's impossible cells: none is hit."""
    handler = _Impossible()
    logger = logging.getLogger("futurefsm.scheduler_stub")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    assert not handler.seen, handler.seen


@pytest.fixture
def make_stub() -> Iterator[Callable[..., SchedulerStub]]:
    stubs: list[SchedulerStub] = []

    def make(**kwargs: Any) -> SchedulerStub:
        stub = SchedulerStub(**kwargs)
        stubs.append(stub)
        return stub

    yield make
    reset_gates()  # release any task still blocked, so stop() is quick
    for stub in stubs:
        stub.stop()


@pytest.fixture
def connect(context: zmq.Context[Any]) -> Iterator[Callable[..., Peer]]:
    peers: list[Peer] = []

    def make(stub: SchedulerStub, identity: bytes | None = None) -> Peer:
        peer = Peer(context, stub.address, identity)
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.close()


def running_gate_task(peer: Peer, name: str, value: Any = None) -> bytes:
    """Submit ``gate_wait(name, value)`` and wait until a worker is inside it."""
    task_id = peer.submit(gate_wait, name, value)
    assert wait_started(name, WAIT)
    return task_id


# ---------------------------------------------------------------------------
# Running tasks
# ---------------------------------------------------------------------------


def test_task_runs_and_its_result_unpickles(make_stub, connect):
    stub = make_stub()
    peer = connect(stub)
    task_id = peer.submit(add, 2, 3)
    result = peer.recv()
    assert isinstance(result, TaskResult) and result.task_id == task_id
    assert result_value(result) == 5
    task_id = peer.submit(echo, value={"a": [1, 2]})
    result = peer.recv()
    assert result.task_id == task_id and result_value(result) == {"a": [1, 2]}


def test_stub_binds_a_free_loopback_port_by_default(make_stub):
    stub = make_stub()
    assert stub.address.startswith("tcp://127.0.0.1:")
    assert int(stub.address.rsplit(":", 1)[1]) > 0


def test_failure_carries_the_exception_and_its_traceback(make_stub, connect):
    stub = make_stub()
    peer = connect(stub)
    task_id = peer.submit(fail, "boom")
    result = peer.recv()
    assert result.task_id == task_id and result.status is ResultStatus.FAILED
    exc = decode_failure(result.payload, DEFAULT_SERIALIZER)
    assert type(exc) is ValueError and str(exc) == "boom"
    assert isinstance(exc.__cause__, RemoteTraceback)
    assert "ValueError: boom" in exc.__cause__.tb
    assert "in fail" in exc.__cause__.tb


def test_unpicklable_function_args_or_result_fail_the_task(make_stub, connect):
    stub = make_stub()
    peer = connect(stub)
    bad_function = new_task_id()
    peer.send(Task(bad_function, b"not a pickle", dumps(((), {}))))
    bad_args = new_task_id()
    peer.send(Task(bad_args, dumps(noop), b"not a pickle either"))
    bad_result = peer.submit(unpicklable_result)
    results = {m.task_id: m for m in peer.recv_many(3)}
    for task_id in (bad_function, bad_args, bad_result):
        assert results[task_id].status is ResultStatus.FAILED
    exc = decode_failure(results[bad_result].payload, DEFAULT_SERIALIZER)
    assert isinstance(exc, TypeError) and "pickle" in str(exc)


# ---------------------------------------------------------------------------
# Behaviour options
# ---------------------------------------------------------------------------


def test_result_delay_holds_the_result_without_blocking_the_stub(make_stub, connect):
    # One worker: the prompt task runs right after the delayed one, on the worker the
    # held result must not block. The delay is long next to what the prompt answer
    # takes (a few ms; 0.3 s was within reach of a loaded machine's stall, or of a
    # second worker process still starting).
    delay = 1.0
    delays = {0: Behaviour(result_delay=delay)}
    stub = make_stub(workers=1, behaviour=lambda index: delays.get(index, Behaviour()))
    peer = connect(stub)
    started = time.monotonic()
    delayed = peer.submit(echo, "late")
    prompt = peer.submit(echo, "prompt")
    peer.send(Heartbeat(1))
    first, second = peer.recv_many(2)
    assert {type(first), type(second)} == {TaskResult, HeartbeatEcho}
    assert next(m for m in (first, second) if type(m) is TaskResult).task_id == prompt
    late = peer.recv()
    assert late.task_id == delayed and result_value(late) == "late"
    assert time.monotonic() - started >= delay


def test_a_huge_result_delay_holds_the_result_and_the_stub_keeps_serving(make_stub, connect):
    delays = {0: Behaviour(result_delay=1e300)}
    stub = make_stub(workers=1, behaviour=lambda index: delays.get(index, Behaviour()))
    peer = connect(stub)
    task_id = peer.submit(noop)
    prompt = peer.submit(noop)
    assert peer.recv().task_id == prompt  # so the first result is held (one worker)
    peer.send(Heartbeat(1))
    assert peer.recv() == HeartbeatEcho(1)
    peer.cancel(task_id, force=True)
    assert peer.recv() == confirm(task_id, "canceled")
    assert stub.stats()["internal_errors"] == 0


def test_worker_died_answers_without_running_the_task(make_stub, connect):
    stub = make_stub(behaviour=Behaviour(worker_died=True))
    peer = connect(stub)
    gate = unique("worker-died")
    task_id = peer.submit(gate_wait, gate)
    result = peer.recv()
    assert result.task_id == task_id and result.status is ResultStatus.WORKER_DIED
    assert loads(result.payload) == WORKER_DIED_REASON
    assert not wait_started(gate, 0.05)


# For a running task cancelled with force=True: (what the client receives at once,
# what it receives after the task finishes). "result" stands for the task's result.
ON_CANCEL_SEQUENCES = {
    "confirm": (["canceled"], []),
    "result_then_confirm": ([], ["result", "canceled"]),
    "confirm_then_result": (["canceled"], ["result"]),
    "cancel_failed": (["cancel_failed"], ["result"]),
    "not_found": (["not_found"], ["result"]),
    "ignore": ([], []),
    "duplicate": (["canceled", "canceled"], []),
}


def test_every_on_cancel_mode_has_a_sequence():
    assert set(ON_CANCEL_SEQUENCES) == {mode.value for mode in OnCancel}


@pytest.mark.parametrize("mode", sorted(ON_CANCEL_SEQUENCES))
def test_on_cancel_mode_sends_its_exact_sequence(make_stub, connect, mode):
    at_once, after = ON_CANCEL_SEQUENCES[mode]
    stub = make_stub(behaviour=Behaviour(on_cancel=mode))
    peer = connect(stub)
    gate = unique(mode)
    task_id = running_gate_task(peer, gate, "value")
    peer.cancel(task_id, force=True)

    def expected(items: list[str]) -> list[Message]:
        return [
            TaskResult(task_id, ResultStatus.SUCCESS, dumps("value"))
            if item == "result"
            else confirm(task_id, item)
            for item in items
        ]

    assert peer.recv_many(len(at_once)) == expected(at_once)
    peer.assert_silent()
    open_gate(gate)
    assert peer.recv_many(len(after)) == expected(after)
    if "result" not in after:  # its process was killed, or its result is discarded
        wait_until(lambda: stopped_or_discarded(stub) == 1, "the task to be stopped")
    peer.assert_silent()


def test_drop_result_never_sends_the_result(make_stub, connect):
    stub = make_stub(behaviour=Behaviour(drop_result=True))
    peer = connect(stub)
    task_id = peer.submit(add, 1, 2)
    wait_until(lambda: stub.stats()["results_dropped"] == 1, "the task to finish")
    peer.assert_silent()
    peer.cancel(task_id)  # the task is finished: the scheduler no longer has it
    assert peer.recv() == confirm(task_id, "not_found")


def test_duplicate_result_sends_the_result_twice(make_stub, connect):
    stub = make_stub(behaviour=Behaviour(duplicate_result=True))
    peer = connect(stub)
    task_id = peer.submit(add, 1, 2)
    first, second = peer.recv_many(2)
    assert first == second and first.task_id == task_id and result_value(first) == 3
    peer.assert_silent()
    assert stub.stats()["results_sent"] == 2


def test_answer_heartbeats_false_goes_silent_until_set_again(make_stub, connect):
    stub = make_stub(behaviour=Behaviour(answer_heartbeats=False))
    peer = connect(stub)
    assert stub.answer_heartbeats is False
    peer.send(Heartbeat(1))
    # Silence alone does not show the stub read it: wait until it was counted ignored.
    wait_until(lambda: stub.stats()["heartbeats_ignored"] == 1, "the heartbeat to be read")
    peer.assert_silent()
    stub.answer_heartbeats = True
    peer.send(Heartbeat(2))
    assert peer.recv() == HeartbeatEcho(2)
    assert stub.stats()["heartbeats_answered"] == 1


def test_heartbeats_are_echoed_by_default(make_stub, connect):
    stub = make_stub()
    peer = connect(stub)
    for seq in (0, 5, 2**63 - 1):
        peer.send(Heartbeat(seq))
        assert peer.recv() == HeartbeatEcho(seq)


def test_callable_behaviour_is_chosen_by_arrival_index(make_stub, connect):
    indexes: list[int] = []

    def behaviour(index: int) -> Behaviour:
        indexes.append(index)
        return Behaviour(worker_died=index == 1)

    stub = make_stub(behaviour=behaviour)
    peer = connect(stub)
    statuses = []
    for n in range(3):
        task_id = peer.submit(echo, n)
        result = peer.recv()
        assert result.task_id == task_id
        statuses.append(result.status)
    assert statuses == [ResultStatus.SUCCESS, ResultStatus.WORKER_DIED, ResultStatus.SUCCESS]
    assert indexes == [0, 1, 2]


def test_callable_behaviour_can_silence_heartbeats_from_task_k(make_stub, connect):
    stub = make_stub(behaviour=lambda index: Behaviour(answer_heartbeats=index < 2))
    peer = connect(stub)
    for n in range(2):
        peer.submit(noop)
        peer.send(Heartbeat(n))
        assert set(map(type, peer.recv_many(2))) == {TaskResult, HeartbeatEcho}
    peer.submit(noop)
    peer.send(Heartbeat(2))
    assert type(peer.recv()) is TaskResult
    peer.assert_silent()
    assert stub.answer_heartbeats is False


def test_a_callable_behaviour_that_raises_falls_back_to_no_faults(make_stub, connect):
    def broken(index: int) -> Behaviour:
        raise RuntimeError("scripted bug")

    stub = make_stub(behaviour=broken)
    peer = connect(stub)
    peer.submit(add, 1, 1)
    assert result_value(peer.recv()) == 2
    assert stub.stats()["internal_errors"] == 1


# ---------------------------------------------------------------------------
# Default cancel handling
# ---------------------------------------------------------------------------


def test_cancel_queued_task_removes_it(make_stub, connect):
    stub = make_stub(workers=1)
    peer = connect(stub)
    blocker_gate, queued_gate = unique("blocker"), unique("queued")
    blocker = running_gate_task(peer, blocker_gate, "blocker")
    queued = peer.submit(gate_wait, queued_gate)
    peer.cancel(queued, force=False)
    assert peer.recv() == confirm(queued, "canceled")
    open_gate(blocker_gate)
    assert result_value(peer.recv()) == "blocker"
    after = peer.submit(echo, "after")  # the worker skips the cancelled task
    result = peer.recv()
    assert result.task_id == after and result.task_id != blocker
    assert not wait_started(queued_gate, 0.01)
    peer.cancel(queued)
    assert peer.recv() == confirm(queued, "not_found")


def test_answers_ready_in_one_turn_go_to_the_client_as_one_batch_in_order(make_stub, connect):
    stub = make_stub(workers=1)
    peer = connect(stub)
    blocker_gate = unique("blocker")
    blocker = running_gate_task(peer, blocker_gate, "blocker")
    queued = [peer.submit(gate_wait, unique("queued")) for _ in range(3)]
    wait_until(lambda: stub.stats()["tasks_received"] == 4, "the tasks arrived")
    # Three cancels in one frame: read in one turn, answered in one frame.
    peer.socket.send(encode(Batch(tuple(encode(TaskCancel(task_id, False)) for task_id in queued))))
    assert peer.socket.poll(int(WAIT * 1000))
    frame = decode(peer.socket.recv())
    assert type(frame) is Batch, frame
    assert [item for item, _ in unbatch(frame)] == [confirm(t, "canceled") for t in queued]
    assert stub.stats()["confirms_sent"] == 3
    open_gate(blocker_gate)
    assert result_value(peer.recv_result(blocker)) == "blocker"
    assert stub.stats()["results_sent"] == 1 and stub.stats()["unroutable"] == 0


def test_cancel_running_task_with_force_kills_its_worker_process(make_stub, connect):
    stub = make_stub(workers=1)
    peer = connect(stub)
    gate = unique("force")
    task_id = running_gate_task(peer, gate)
    peer.cancel(task_id, force=True)
    assert peer.recv() == confirm(task_id, "canceled")
    assert stub.stats()["workers_killed"] == 1
    open_gate(gate)
    assert result_value(peer.recv_result(peer.submit(echo, "next"))) == "next"
    assert stub.stats()["results_discarded"] == 0  # it never finished
    peer.assert_silent()


def test_cancel_running_thread_task_with_force_discards_its_result(make_stub, connect):
    stub = make_stub(threads=True)
    peer = connect(stub)
    gate = unique("force")
    task_id = running_gate_task(peer, gate)
    peer.cancel(task_id, force=True)
    assert peer.recv() == confirm(task_id, "canceled")
    open_gate(gate)
    wait_until(lambda: stub.stats()["results_discarded"] == 1, "the result to be discarded")
    assert stub.stats()["workers_killed"] == 0
    peer.assert_silent()


def test_cancel_running_task_without_force_fails_and_the_task_runs_on(make_stub, connect):
    stub = make_stub()
    peer = connect(stub)
    gate = unique("no-force")
    task_id = running_gate_task(peer, gate, 7)
    peer.cancel(task_id, force=False)
    assert peer.recv() == confirm(task_id, "cancel_failed")
    open_gate(gate)
    result = peer.recv()
    assert result.task_id == task_id and result_value(result) == 7


@pytest.mark.parametrize("force", [False, True])
def test_a_task_in_its_result_delay_counts_as_running(make_stub, connect, force):
    # The cancel must be read while the result is held: the delay is long next to the
    # few ms between the prompt result and the cancel (0.3 s was within reach of a
    # loaded machine; then the result went out and the cancel was answered not_found).
    delays = {0: Behaviour(result_delay=1.0)}
    stub = make_stub(workers=1, behaviour=lambda index: delays.get(index, Behaviour()))
    peer = connect(stub)
    delayed = peer.submit(echo, "delayed")
    prompt = peer.submit(echo, "prompt")
    # One worker, and its reports reach the I/O thread in order: once the second
    # result is here, the first task has finished and its result is being held.
    assert peer.recv().task_id == prompt
    peer.cancel(delayed, force=force)
    if force:
        assert peer.recv() == confirm(delayed, "canceled")
        wait_until(lambda: stub.stats()["results_discarded"] == 1, "the result to be discarded")
        peer.assert_silent()
    else:
        assert peer.recv() == confirm(delayed, "cancel_failed")
        assert result_value(peer.recv()) == "delayed"


def test_cancel_finished_or_unknown_task_is_not_found(make_stub, connect):
    stub = make_stub()
    peer = connect(stub)
    finished = peer.submit(noop)
    assert peer.recv().task_id == finished
    peer.cancel(finished, force=True)
    assert peer.recv() == confirm(finished, "not_found")
    unknown = new_task_id()
    peer.cancel(unknown)
    assert peer.recv() == confirm(unknown, "not_found")


def test_task_ids_are_per_client(make_stub, connect):
    stub = make_stub()
    owner, stranger = connect(stub), connect(stub)
    gate = unique("owner")
    task_id = running_gate_task(owner, gate)
    stranger.cancel(task_id, force=True)
    assert stranger.recv() == confirm(task_id, "not_found")
    open_gate(gate)
    assert owner.recv().task_id == task_id


# ---------------------------------------------------------------------------
# Graphs
# ---------------------------------------------------------------------------


def test_graph_runs_in_dependency_order_with_substitution(make_stub, connect):
    stub = make_stub()
    peer = connect(stub)
    group, gate = new_task_id(), unique("graph-a")
    a = peer.submit(gate_wait, gate, 2, group_id=group)
    b = peer.submit(add, DependencyRef(a), 10, group_id=group, depends_on=(a,))
    c = peer.submit(add, DependencyRef(b), b=DependencyRef(a), group_id=group, depends_on=(a, b))
    assert wait_started(gate, WAIT)
    peer.assert_silent()  # b and c wait for a
    open_gate(gate)
    results = peer.recv_many(3)
    assert [r.task_id for r in results] == [a, b, c]
    assert [result_value(r) for r in results] == [2, 12, 14]


def test_dependency_may_arrive_after_its_dependent(make_stub, connect):
    stub = make_stub()
    peer = connect(stub)
    group, a = new_task_id(), new_task_id()
    b = peer.submit(add, DependencyRef(a), 1, group_id=group, depends_on=(a,))
    peer.assert_silent()
    peer.submit(echo, 41, task_id=a, group_id=group)
    results = {r.task_id: result_value(r) for r in peer.recv_many(2)}
    assert results == {a: 41, b: 42}


def test_dependent_arriving_after_its_dependency_finished_gets_its_value(make_stub, connect):
    stub = make_stub()
    peer = connect(stub)
    group = new_task_id()
    a = peer.submit(echo, 5, group_id=group)
    assert peer.recv().task_id == a
    b = peer.submit(add, DependencyRef(a), 1, group_id=group, depends_on=(a,))
    result = peer.recv()
    assert result.task_id == b and result_value(result) == 6


def test_failed_dependency_fails_its_dependents_transitively(make_stub, connect):
    stub = make_stub()
    peer = connect(stub)
    group, gate_b, gate_c = new_task_id(), unique("dep-b"), unique("dep-c")
    a = peer.submit(fail, "upstream", group_id=group)
    b = peer.submit(gate_wait, gate_b, group_id=group, depends_on=(a,))
    c = peer.submit(gate_wait, gate_c, group_id=group, depends_on=(b,))
    results = {r.task_id: r for r in peer.recv_many(3)}
    assert set(results) == {a, b, c}
    assert all(r.status is ResultStatus.FAILED for r in results.values())
    assert results[b].payload == results[c].payload == results[a].payload
    exc = decode_failure(results[c].payload, DEFAULT_SERIALIZER)
    assert type(exc) is ValueError and str(exc) == "upstream"
    assert not wait_started(gate_b, 0.01) and not wait_started(gate_c, 0.01)
    late = peer.submit(noop, group_id=group, depends_on=(c,))  # arrives after the failure
    assert peer.recv() == TaskResult(late, ResultStatus.FAILED, results[a].payload)


def test_group_cancel_confirms_every_unfinished_member_at_once(make_stub, connect):
    stub = make_stub(workers=2)
    peer = connect(stub)
    group, gate_a, gate_c = new_task_id(), unique("group-a"), unique("group-c")
    finished = peer.submit(noop, group_id=group)
    assert peer.recv().task_id == finished
    a = peer.submit(gate_wait, gate_a, group_id=group)
    c = peer.submit(gate_wait, gate_c, group_id=group)
    b = peer.submit(noop, group_id=group, depends_on=(a,))
    assert wait_started(gate_a, WAIT) and wait_started(gate_c, WAIT)
    peer.cancel(group, force=False)
    confirms = peer.recv_many(3)
    assert {(m.task_id, m.kind) for m in confirms} == {
        (a, ConfirmKind.CANCELED),
        (b, ConfirmKind.CANCELED),
        (c, ConfirmKind.CANCELED),
    }
    assert stub.stats()["workers_killed"] == 2
    open_gate(gate_a)
    open_gate(gate_c)
    peer.assert_silent()
    peer.cancel(group)  # a known group with nothing left to cancel: nothing to say
    peer.assert_silent()


def test_cancelling_one_graph_member_cancels_its_dependents(make_stub, connect):
    stub = make_stub()
    peer = connect(stub)
    group, gate = new_task_id(), unique("member")
    a = peer.submit(gate_wait, gate, group_id=group)
    b = peer.submit(noop, group_id=group, depends_on=(a,))
    c = peer.submit(noop, group_id=group, depends_on=(b,))
    assert wait_started(gate, WAIT)
    peer.cancel(a, force=True)
    # a's confirm waits until its process is gone; its dependents never started.
    confirms = peer.recv_many(3)
    assert sorted(confirms, key=repr) == sorted(
        [confirm(a, "canceled"), confirm(b, "canceled"), confirm(c, "canceled")], key=repr
    )
    late = peer.submit(noop, group_id=group, depends_on=(a,))
    assert peer.recv() == confirm(late, "canceled")


def test_a_dependency_named_twice_that_fails_ends_its_dependent_once(make_stub, connect):
    # b waits on the same record twice: before the task table, a's failure reached b
    # twice and b's result was sent twice (now the second is a result in done: discarded).
    stub = make_stub()
    peer = connect(stub)
    group, gate = new_task_id(), unique("twice-failed")
    g = peer.submit(gate_wait, gate, group_id=group)
    a = peer.submit(fail, "upstream", group_id=group, depends_on=(g,))
    b = peer.submit(noop, group_id=group, depends_on=(a, a))
    assert wait_started(gate, WAIT)
    open_gate(gate)
    results = peer.recv_many(3)
    assert [r.task_id for r in results] == [g, a, b]
    assert results[2].status is ResultStatus.FAILED
    unknown = new_task_id()
    peer.cancel(unknown)  # answered after anything else b could get
    assert peer.recv() == confirm(unknown, "not_found")
    assert stub.stats()["results_sent"] == 3


def test_a_cancelled_dependency_named_twice_is_confirmed_once(make_stub, connect):
    stub = make_stub()
    peer = connect(stub)
    group, gate = new_task_id(), unique("twice-cancelled")
    a = peer.submit(gate_wait, gate, group_id=group)
    b = peer.submit(noop, group_id=group, depends_on=(a, a))
    assert wait_started(gate, WAIT)
    peer.cancel(a, force=True)
    confirms = peer.recv_many(2)
    assert sorted(confirms, key=repr) == sorted(
        [confirm(a, "canceled"), confirm(b, "canceled")], key=repr
    )
    peer.assert_silent()  # b's second dependency link raised no second confirm
    assert stub.stats()["confirms_sent"] == 2


# ---------------------------------------------------------------------------
# Bad input, disconnection, lifecycle
# ---------------------------------------------------------------------------


def test_garbage_is_counted_and_the_stub_keeps_serving(make_stub, connect):
    stub = make_stub()
    peer = connect(stub)
    peer.socket.send(os.urandom(64))
    peer.socket.send(b"")
    peer.socket.send_multipart([encode(Heartbeat(1)), encode(Heartbeat(2))])
    peer.send(TaskResult(new_task_id(), ResultStatus.SUCCESS, b""))
    peer.send(HeartbeatEcho(3))
    peer.send(Heartbeat(4))
    assert peer.recv() == HeartbeatEcho(4)
    assert stub.stats()["protocol_errors"] == 5
    task_id = peer.submit(echo, "still here")
    assert result_value(peer.recv()) == "still here"
    peer.submit(echo, "again", task_id=task_id)  # a finished task's id may be reused
    assert result_value(peer.recv()) == "again"
    assert stub.stats()["protocol_errors"] == 5


def test_a_batch_is_served_message_by_message_and_a_bad_one_counted_alone(make_stub, connect):
    stub = make_stub()
    peer = connect(stub)
    first, second = new_task_id(), new_task_id()
    frames = [
        encode(Task(first, dumps(echo), dumps((("one",), {})))),
        b"\xc1",  # not msgpack: one protocol error, the rest stands
        encode(HeartbeatEcho(1)),  # not for a scheduler: another
        encode(Task(second, dumps(echo), dumps((("two",), {})))),
        encode(Heartbeat(9)),
    ]
    peer.socket.send(msgpack.packb([PROTOCOL_VERSION, Batch.TYPE_CODE, frames]))
    replies = peer.recv_many(3)
    assert HeartbeatEcho(9) in replies
    results = {r.task_id: result_value(r) for r in replies if isinstance(r, TaskResult)}
    assert results == {first: "one", second: "two"}
    assert stub.stats()["protocol_errors"] == 2
    assert stub.stats()["tasks_received"] == 2


def test_a_batch_mixing_plain_tasks_with_graph_members_and_a_reused_id(make_stub, connect):
    stub = make_stub()
    peer = connect(stub)
    group, a, b = new_task_id(), new_task_id(), new_task_id()
    frames = [
        # b waits for a, which comes next in the same Batch, as a plain Task
        encode(Task(b, dumps(add), dumps(((DependencyRef(a), 1), {})), group, (a,))),
        encode(Task(a, dumps(echo), dumps(((41,), {})))),
        encode(Task(a, dumps(echo), dumps(((0,), {})))),  # a held task's id: an error
        encode(Heartbeat(1)),
    ]
    peer.socket.send(msgpack.packb([PROTOCOL_VERSION, Batch.TYPE_CODE, frames]))
    replies = peer.recv_many(3)
    assert HeartbeatEcho(1) in replies
    results = {r.task_id: result_value(r) for r in replies if isinstance(r, TaskResult)}
    assert results == {a: 41, b: 42}
    peer.assert_silent()
    assert stub.stats()["protocol_errors"] == 1
    assert stub.stats()["tasks_received"] == 3


def test_a_disconnect_inside_a_batch_drops_the_tasks_before_it_only(make_stub, connect):
    stub = make_stub()
    peer = connect(stub)
    before, after = new_task_id(), new_task_id()
    frames = [
        encode(Task(before, dumps(echo), dumps((("before",), {})))),
        encode(Disconnect()),
        encode(Task(after, dumps(echo), dumps((("after",), {})))),
    ]
    peer.socket.send(msgpack.packb([PROTOCOL_VERSION, Batch.TYPE_CODE, frames]))
    reply = peer.recv()
    assert reply.task_id == after and result_value(reply) == "after"
    peer.assert_silent()
    stats = stub.stats()
    assert stats["disconnects_received"] == 1
    assert stats["tasks_received"] == 2
    assert stats["results_discarded"] == 0  # the dropped one never reached a worker


def test_reusing_the_id_of_a_held_task_is_a_protocol_error(make_stub, connect):
    stub = make_stub()
    peer = connect(stub)
    gate = unique("held")
    task_id = running_gate_task(peer, gate, "first")
    peer.submit(echo, "second", task_id=task_id)
    peer.send(Heartbeat(1))
    assert peer.recv() == HeartbeatEcho(1)
    assert stub.stats()["protocol_errors"] == 1
    open_gate(gate)
    assert result_value(peer.recv()) == "first"
    peer.assert_silent()


@pytest.mark.parametrize("threads", [False, True])
def test_disconnect_from_a_client_forgets_its_tasks(make_stub, connect, threads):
    stub = make_stub(workers=1, threads=threads)
    peer = connect(stub)
    running_gate, queued_gate = unique("disc-running"), unique("disc-queued")
    running = running_gate_task(peer, running_gate)
    peer.submit(gate_wait, queued_gate)
    peer.send(Disconnect())
    peer.send(Heartbeat(1))  # processed after the Disconnect
    assert peer.recv() == HeartbeatEcho(1)
    assert stub.stats()["clients_dropped"] == 1
    if threads:  # a thread cannot be stopped: it runs on, its result is discarded
        open_gate(running_gate)
        wait_until(lambda: stub.stats()["results_discarded"] == 1, "the result to be discarded")
    else:  # its process was killed, and the slot is free at once
        assert stub.stats()["workers_killed"] == 1
    # One slot: this runs only if the forgotten queued task was skipped.
    peer.recv_result(peer.submit(noop))
    assert not wait_started(queued_gate, 0.01)
    assert stub.stats()["disconnects_received"] == 1
    peer.cancel(running)
    assert peer.recv() == confirm(running, "not_found")


def test_disconnect_all_tells_every_client_and_forgets_all_tasks(make_stub, connect):
    stub = make_stub()
    busy, idle = connect(stub), connect(stub)
    gate = unique("disconnect-all")
    task_id = running_gate_task(busy, gate)
    idle.send(Heartbeat(1))
    assert idle.recv() == HeartbeatEcho(1)
    assert stub.disconnect_all() == 2
    assert busy.recv() == Disconnect()
    assert idle.recv() == Disconnect()
    assert stub.stats()["workers_killed"] == 1  # its running task was stopped
    open_gate(gate)
    busy.assert_silent()
    busy.cancel(task_id)  # the socket is still open, and the task is forgotten
    assert busy.recv() == confirm(task_id, "not_found")
    assert stub.stats()["disconnects_sent"] == 2


def test_a_client_that_goes_away_has_its_work_dropped(make_stub, connect, tmp_path):
    # Defect 4 (detection): the stub learns from libzmq's monitor that the connection
    # closed, drops the queued task (it never runs) and stops the running one.
    stub = make_stub(workers=1)
    witness = connect(stub)
    gone = connect(stub)
    gate = unique("gone")
    running_gate_task(gone, gate)
    marker = tmp_path / "queued-task-ran"
    gone.submit(touch, str(marker))
    wait_until(lambda: stub.stats()["tasks_received"] == 2, "both tasks to arrive")
    gone.close()
    wait_until(lambda: stub.stats()["clients_gone"] == 1, "the stub to notice the close")
    wait_until(lambda: stub.stats()["workers_killed"] == 1, "the running task to be stopped")
    assert stub.stats()["clients_dropped"] == 1
    # The one worker is free again; the witness's task runs, the dropped one did not.
    witness.submit(echo, "after")
    assert result_value(witness.recv()) == "after"
    assert not marker.exists()
    assert stub.stats()["unroutable"] == 0 and stub.stats()["results_sent"] == 1


def test_a_client_reconnecting_under_a_gone_routing_id_is_told_disconnect(
    make_stub, connect, tmp_path
):
    # What a closed connection left unread is never run; a client that reconnects
    # under the same (self-chosen) routing id cannot be told apart from it, so it is
    # told Disconnect rather than left waiting.
    stub = make_stub(workers=1)
    first = connect(stub, identity=b"same-id")
    first.submit(echo, 1)
    assert result_value(first.recv()) == 1
    first.close()
    wait_until(lambda: stub.stats()["clients_gone"] == 1, "the stub to notice the close")
    again = connect(stub, identity=b"same-id")
    marker = tmp_path / "ran"
    again.submit(touch, str(marker))
    assert again.recv() == Disconnect()
    witness = connect(stub)
    witness.submit(echo, "after")
    assert result_value(witness.recv()) == "after"
    assert not marker.exists()


def test_stop_is_bounded_and_idempotent(make_stub, connect):
    stub = make_stub()
    peer = connect(stub)
    running_gate_task(peer, unique("stuck"))  # never opened (30 s): stop must not wait for it
    stopping = threading.Thread(target=stub.stop, kwargs={"timeout": 0.5}, daemon=True)
    stopping.start()
    stopping.join(WAIT)  # a deadline, not a measurement: a slow machine may take longer
    assert not stopping.is_alive(), "stop() waited for the stuck task"
    stub.stop()
    assert peer.recv() == Disconnect()  # a stopping stub tells its clients
    peer.send(Heartbeat(1))
    peer.assert_silent()
    with pytest.raises(RuntimeError):
        stub.disconnect_all()


def test_stop_drops_queued_tasks(make_stub, connect):
    stub = make_stub(workers=1)
    peer = connect(stub)
    running_gate, queued_gate = unique("stop-running"), unique("stop-queued")
    running_gate_task(peer, running_gate)
    peer.submit(gate_wait, queued_gate)
    peer.send(Heartbeat(1))
    assert peer.recv() == HeartbeatEcho(1)  # the queued task has arrived
    stub.stop(timeout=0.2)  # the worker is still inside the running task
    open_gate(running_gate)
    assert not wait_started(queued_gate, QUIET)


def test_context_manager_stops_the_stub(connect):
    with SchedulerStub() as stub:
        peer = connect(stub)
        peer.send(Heartbeat(1))
        assert peer.recv() == HeartbeatEcho(1)
    assert "stopped" in repr(stub)


def test_log_records_messages_in_and_out(make_stub, connect):
    stub = make_stub(log_messages=True)
    peer = connect(stub, identity=b"peer-log")
    task_id = peer.submit(add, 1, 2)
    result = peer.recv()
    log = stub.log
    assert [(r.direction, r.client, type(r.message)) for r in log] == [
        ("in", b"peer-log", Task),
        ("out", b"peer-log", TaskResult),
    ]
    # Ids and statuses, no payload bytes: only their frames' sizes.
    assert log[0].message.task_id == task_id and log[0].message.args == b""
    assert log[1].message == TaskResult(task_id, result.status, b"")
    assert log[1].size == len(encode(result)) and log[0].size > len(dumps((1, 2)))
    assert log[0].time <= log[1].time
    stats = stub.stats()
    assert stats["tasks_received"] == 1 and stats["results_sent"] == 1


@pytest.mark.parametrize("log_messages", [False, True])
def test_answers_that_cannot_be_routed_are_counted_unroutable_not_sent(make_stub, log_messages):
    # Answers queued for a client the ROUTER does not know (gone, as a client whose
    # connection closed between its result and the send): nothing counts as sent.
    stub = make_stub(log_messages=log_messages)
    gone, task_id = b"nobody-here", new_task_id()
    result = encode(TaskResult(task_id, ResultStatus.SUCCESS, dumps(1)))

    def answer() -> None:
        stub._send_result(gone, task_id, ResultStatus.SUCCESS, result)
        stub._send_confirm(gone, task_id, ConfirmKind.CANCELED, times=2)
        stub._flush_outgoing()

    stub._on_io_thread(answer, "answer", WAIT)
    stats = stub.stats()
    assert (stats["results_sent"], stats["confirms_sent"], stats["unroutable"]) == (0, 0, 3)
    assert stub.log == []


# ---------------------------------------------------------------------------
# Behaviour validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("result_delay", -1),
        ("result_delay", math.nan),
        ("result_delay", math.inf),
        ("result_delay", 10**400),
        ("result_delay", "1"),
        ("result_delay", True),
        ("worker_died", 1),
        ("on_cancel", "sometimes"),
        ("drop_result", None),
        ("duplicate_result", "yes"),
        ("answer_heartbeats", 0),
    ],
)
def test_behaviour_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        Behaviour(**{field: value})


def test_behaviour_from_dict_and_json_file(tmp_path):
    assert Behaviour.from_dict({"on_cancel": "ignore"}).on_cancel is OnCancel.IGNORE
    with pytest.raises(ValueError, match="bogus"):
        Behaviour.from_dict({"bogus": 1, "result_delay": 0})
    behaviour = Behaviour(result_delay=0.5, on_cancel="duplicate", drop_result=True)
    path = tmp_path / "behaviour.json"
    path.write_text(json.dumps(behaviour.to_dict()))
    assert Behaviour.from_json_file(path) == behaviour
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        Behaviour.from_json_file(path)


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------


def read_line(stream: Any, timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        pytest.fail(f"no output within {timeout} s")
    return stream.readline()


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_cli_serves_until_signalled(tmp_path, context, stop_signal):
    # Port 0: the scheduler picks a free port and prints it (a port picked here could
    # be taken by another process before the scheduler binds it).
    behaviour_file = tmp_path / "behaviour.json"
    behaviour_file.write_text(json.dumps({"duplicate_result": True}))
    command = [sys.executable, "-m", "futurefsm", "scheduler", "--address", "tcp://127.0.0.1:0"]
    command += ["--workers", "2", "--behaviour", str(behaviour_file)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        line = read_line(process.stdout, 10.0)
        match = re.fullmatch(r"futurefsm scheduler listening on (tcp://127\.0\.0\.1:(\d+))\n", line)
        assert match and int(match[2]) > 0, line
        address = match[1]
        peer = Peer(context, address, None)
        task_id = peer.submit(operator.add, 2, 2)
        first, second = peer.recv_many(2)  # the Behaviour file says: twice
        assert first == second and first.task_id == task_id and result_value(first) == 4
        peer.close()
        process.send_signal(stop_signal)
        assert process.wait(timeout=WAIT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()


def test_stop_is_bounded_when_clients_leave_as_it_stops():
    """Regression: stop() hung forever in Context.term() when a client went away just
    as the stub sent it Disconnect (libzmq 4.3.5 then never finishes tearing the
    router's pipe down). Many quick start/stop cycles, each with clients leaving, on a
    thread with a deadline: a hang fails the test instead of hanging the suite."""
    cycles, clients, stop_timeout = 60, 3, 0.2
    finished = threading.Event()
    failures: list[BaseException] = []

    def cycle_many() -> None:
        context: zmq.Context[Any] = zmq.Context()
        try:
            for _ in range(cycles):
                stub = SchedulerStub(workers=1, threads=True)
                dealers = []
                for n in range(clients):
                    dealer = context.socket(zmq.DEALER)
                    dealer.setsockopt(zmq.LINGER, 0)
                    dealer.connect(stub.address)
                    dealer.send(encode(Heartbeat(n)))
                    dealers.append(dealer)
                for dealer in dealers:  # each is known to the stub once answered
                    assert dealer.poll(WAIT * 1000), "no HeartbeatEcho"
                    dealer.recv()
                    dealer.close(linger=0)
                stub.stop(timeout=stop_timeout)  # a hang fails the wait below
        except BaseException as error:
            failures.append(error)
        finally:
            context.destroy(linger=0)
            finished.set()

    threading.Thread(target=cycle_many, name="stop-cycles", daemon=True).start()
    assert finished.wait(60), "SchedulerStub.stop() hung (in Context.term)"
    assert not failures, failures[0]
