"""Many messages per frame: the client sends a burst of Tasks as one Batch frame."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import zmq

from futurefsm import Client
from futurefsm.engines import futurefsm as engine
from futurefsm.protocol import (
    Batch,
    Heartbeat,
    ResultStatus,
    Task,
    TaskResult,
    decode,
    encode,
    unbatch,
)
from futurefsm.scheduler_stub import sample_tasks as tasks
from futurefsm.serializer import DEFAULT_SERIALIZER

DEADLINE = 10.0


def _next_tasks(router: zmq.Socket[Any]) -> tuple[bytes, bool, list[Task]]:
    """The next frame that carries Tasks: (identity, was it a Batch, its Tasks)."""
    while True:
        assert router.poll(DEADLINE * 1000), "no Task from the client"
        identity, frame = router.recv_multipart()
        if not frame:
            continue  # the empty probe that opens each connection (PROBE_ROUTER)
        message = decode(frame)
        carried = [item for item, _ in unbatch(message)]
        found = [item for item in carried if isinstance(item, Task)]
        assert all(isinstance(item, (Task, Heartbeat)) for item in carried), carried
        if found:
            return identity, type(message) is Batch, found


@pytest.fixture
def raw() -> Iterator[tuple[zmq.Socket[Any], Client]]:
    """A bare ROUTER standing in for the scheduler, and a client connected to it.

    Nothing answers the cancels close() sends: a short cancel_timeout ends them."""
    context: zmq.Context[Any] = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    client = Client(f"tcp://127.0.0.1:{port}", connection_timeout=DEADLINE, cancel_timeout=0.2)
    try:
        yield router, client
    finally:
        client.close()
        router.close(linger=0)
        context.term()


def _run_on_the_io_thread(client: Client, router: zmq.Socket[Any], callback: Any) -> None:
    """Submit a task, answer it from ``router``: ``callback`` then runs as its
    done-callback, on the client's I/O thread."""
    first = client.submit(tasks.noop)
    first.add_done_callback(callback)
    identity, _, (task,) = _next_tasks(router)
    payload = DEFAULT_SERIALIZER.dumps(None)
    router.send_multipart(
        [identity, encode(TaskResult(task.task_id, ResultStatus.SUCCESS, payload))]
    )


def _receive_tasks(router: zmq.Socket[Any], count: int) -> list[Task]:
    received: list[Task] = []
    while len(received) < count:
        received.extend(_next_tasks(router)[2])
    return received


def test_tasks_submitted_while_the_io_thread_is_busy_go_out_in_one_batch(raw):
    router, client = raw
    burst: list[Any] = []
    submitted = threading.Event()

    def submit_a_burst(_future: Any) -> None:
        # A done-callback runs on the I/O thread: everything it submits is queued
        # before the thread gets back to its outbox, which then sends it at once.
        burst.extend(client.submit(tasks.echo, n) for n in range(50))
        submitted.set()

    _run_on_the_io_thread(client, router, submit_a_burst)
    assert submitted.wait(DEADLINE)
    _, batched, sent = _next_tasks(router)
    assert batched
    assert [t.task_id for t in sent] == [f.task_id for f in burst]  # all, in order


def test_a_submitter_that_fills_the_outbox_waits_for_the_io_thread_to_take_it(raw, monkeypatch):
    # A tight submit loop holds the GIL; past _OUTBOX_HANDOFF queued items the
    # submitter waits for the I/O thread to drain the outbox. The I/O thread must
    # say so each time: with the wait made 60 s long, a missed signal would stall.
    monkeypatch.setattr(engine, "_OUTBOX_HANDOFF", 64)
    monkeypatch.setattr(engine, "_HAND_OFF_WAIT", 60.0)
    router, client = raw
    futures: list[Any] = []
    submitter = threading.Thread(
        target=lambda: futures.extend(client.submit(tasks.noop) for _ in range(640))
    )
    submitter.start()
    received = _receive_tasks(router, 640)
    submitter.join(DEADLINE)
    assert not submitter.is_alive(), "a submitter waited for a drain it was not told of"
    assert [t.task_id for t in received] == [f.task_id for f in futures]


def test_the_io_thread_never_waits_for_itself_to_drain_the_outbox(raw, monkeypatch):
    # A done-callback runs on the I/O thread: its submits must not wait for that
    # thread to drain the outbox (it would wait out every hand-off).
    monkeypatch.setattr(engine, "_OUTBOX_HANDOFF", 4)
    monkeypatch.setattr(engine, "_HAND_OFF_WAIT", 60.0)
    router, client = raw
    burst: list[Any] = []
    submitted = threading.Event()

    def submit_a_burst(_future: Any) -> None:
        burst.extend(client.submit(tasks.echo, n) for n in range(40))
        submitted.set()

    _run_on_the_io_thread(client, router, submit_a_burst)
    assert submitted.wait(DEADLINE), "the I/O thread waited for itself"
    received = _receive_tasks(router, 40)
    assert [t.task_id for t in received] == [f.task_id for f in burst]


@contextmanager
def _io_thread_busy(client: Client, router: zmq.Socket[Any]) -> Iterator[None]:
    """Inside: the client's I/O thread is stuck in a slow done-callback."""
    release, busy = threading.Event(), threading.Event()

    def slow_callback(_future: Any) -> None:
        busy.set()
        release.wait(DEADLINE * 3)

    try:
        _run_on_the_io_thread(client, router, slow_callback)
        assert busy.wait(DEADLINE)
        yield
    finally:
        release.set()


def _submitted_in_time(submit: Callable[[], list[Any]]) -> list[Any]:
    """What ``submit`` returned, run on a thread that must finish within DEADLINE."""
    futures: list[Any] = []
    submitter = threading.Thread(target=lambda: futures.extend(submit()))
    submitter.start()
    submitter.join(DEADLINE)
    assert not submitter.is_alive(), "the submits waited for the busy I/O thread"
    return futures


def test_a_busy_io_thread_makes_one_submitter_wait_once_not_every_submit(raw, monkeypatch):
    # The I/O thread is stuck in a slow done-callback: the first hand-off runs out,
    # and the submits after it do not wait again until the I/O thread drains (one 2 s
    # wait at most; one per submit would be over 1000 s).
    monkeypatch.setattr(engine, "_OUTBOX_HANDOFF", 64)
    monkeypatch.setattr(engine, "_HAND_OFF_WAIT", 2.0)
    router, client = raw
    with _io_thread_busy(client, router):
        futures = _submitted_in_time(lambda: [client.submit(tasks.noop) for _ in range(640)])
    received = _receive_tasks(router, 640)
    assert [t.task_id for t in received] == [f.task_id for f in futures]


def test_an_event_loop_that_submits_never_waits_for_the_io_thread(raw, monkeypatch):
    # An event loop must not block: submits from a coroutine skip the hand-off even
    # with the I/O thread busy (a 60 s wait per hand-off would stall the test).
    monkeypatch.setattr(engine, "_OUTBOX_HANDOFF", 4)
    monkeypatch.setattr(engine, "_HAND_OFF_WAIT", 60.0)
    router, client = raw

    async def submit_many() -> list[Any]:
        return [client.submit(tasks.noop) for _ in range(40)]

    with _io_thread_busy(client, router):
        futures = _submitted_in_time(lambda: asyncio.run(submit_many()))
    received = _receive_tasks(router, 40)
    assert [t.task_id for t in received] == [f.task_id for f in futures]
