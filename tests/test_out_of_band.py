"""Large ``bytes`` arguments travel out of band: frames of their own after the Task's,
never copied by the client or the scheduler (docs/protocol.md, "Out-of-band buffers")."""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from futurefsm import Client
from futurefsm.engines import futurefsm as engine
from futurefsm.protocol import (
    ProtocolError,
    ResultStatus,
    TaskCancel,
    decode,
    encode,
    encode_task,
    new_task_id,
    result_frame,
)
from futurefsm.scheduler_stub import SchedulerStub
from futurefsm.scheduler_stub.behaviour import DEFAULT_BEHAVIOUR
from futurefsm.scheduler_stub.records import TaskRecord
from futurefsm.scheduler_stub.sample_tasks import gate_wait, open_gate, reset_gates, wait_started
from futurefsm.scheduler_stub.workers import ProcessPool
from futurefsm.serializer import DEFAULT_SERIALIZER, OUT_OF_BAND_BYTES, dumps_buffers

WAIT = 10.0
"""Deadline for anything that must happen."""

dumps, loads = DEFAULT_SERIALIZER.dumps, DEFAULT_SERIALIZER.loads


def _same_object_twice(a: bytes, b: bytes) -> tuple[int, bool]:
    return len(a), a is b


@pytest.fixture
def context() -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def test_a_large_bytes_argument_leaves_the_client_as_a_frame_of_its_own(context):
    router = context.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    big = os.urandom(OUT_OF_BAND_BYTES)
    client = Client(f"tcp://127.0.0.1:{port}", cancel_timeout=0.1)
    try:
        future = client.submit(len, big)
        frames: list[bytes] = []
        while len(frames) < 2 or not frames[1]:  # the connection's probe (empty) first
            assert router.poll(int(WAIT * 1000)), "nothing from the client"
            frames = router.recv_multipart()
        identity, task_frame, *buffers = frames
        task = decode(task_frame)
        assert len(task_frame) < 1000  # the bytes are not in the Task's frame...
        assert buffers == [big]  # ...but after it, whole
        call = DEFAULT_SERIALIZER.loads_buffers(task.args, buffers)  # type: ignore[attr-defined]
        assert call == ((big,), {})
        router.send_multipart(
            [identity, result_frame(task.task_id, ResultStatus.SUCCESS, dumps(len(big)))]
        )
        assert future.result(WAIT) == len(big)
    finally:
        client.close()


@pytest.mark.parametrize("threads", [False, True])
def test_large_bytes_reach_the_task_whole_and_as_one_object(threads):
    big = os.urandom(3 * OUT_OF_BAND_BYTES + 5)
    with SchedulerStub(workers=2, threads=threads) as stub, Client(stub.address) as client:
        assert client.submit(len, big).result(WAIT) == len(big)
        assert client.submit(_same_object_twice, big, big).result(WAIT) == (len(big), True)
        assert client.submit(bytes.hex, big[:10]).result(WAIT) == big[:10].hex()  # in band
        assert stub.stats()["protocol_errors"] == 0


def test_a_buffer_over_the_frame_limit_is_refused_at_submit(monkeypatch):
    monkeypatch.setattr(engine, "MAX_FRAME_BYTES", OUT_OF_BAND_BYTES)
    with SchedulerStub(workers=1) as stub, Client(stub.address) as client:
        with pytest.raises(ProtocolError, match=r"exceeds the \d+-byte limit of a frame"):
            client.submit(len, b"x" * (OUT_OF_BAND_BYTES + 1))
        assert client.stats()["submitted"] == 0


def test_frames_after_anything_but_a_task_are_a_protocol_error(context):
    with SchedulerStub(workers=1, insecure=True) as stub:
        dealer = context.socket(zmq.DEALER)
        dealer.connect(stub.address)
        dealer.send_multipart([encode(TaskCancel(new_task_id(), True)), b"stray"])
        data, buffers = dumps_buffers(DEFAULT_SERIALIZER, ((b"y" * OUT_OF_BAND_BYTES,), {}))
        task_id = new_task_id()
        dealer.send_multipart([encode_task(task_id, dumps(len), data), *buffers])
        assert dealer.poll(int(WAIT * 1000))
        result = decode(dealer.recv())
        assert (result.task_id, loads(result.payload)) == (task_id, OUT_OF_BAND_BYTES)
        assert stub.stats()["protocol_errors"] == 1  # the cancel; the Task was served
        dealer.close(linger=0)


def test_a_task_taken_back_from_a_workers_batch_leaves_its_stream_in_step(tmp_path):
    # The worker reads a task's raw bytes after its batch, whether it runs the task or
    # skips it: the next tasks' frames must still be read as frames.
    reset_gates()
    reports: list[tuple[TaskRecord, int, bytes]] = []
    posted: queue.SimpleQueue[Any] = queue.SimpleQueue()
    pool = ProcessPool(
        1,
        DEFAULT_SERIALIZER,
        lambda record: True,
        lambda record, status, frame: reports.append((record, status, bytes(frame))),
        lambda action: posted.put(action) or True,
        "test-oob",
        lambda record: None,
    )
    poller = zmq.Poller()

    def record(index: int, fn: Any, *args: Any) -> TaskRecord:
        data, buffers = dumps_buffers(DEFAULT_SERIALIZER, (args, {}))
        made = TaskRecord(b"client", new_task_id(), dumps(fn), data, None, DEFAULT_BEHAVIOUR, index)
        made.buffers = buffers
        return made

    def until(done: Any) -> None:
        end = time.monotonic() + WAIT
        while not done():
            assert time.monotonic() < end, f"reports so far: {reports}"
            while not posted.empty():
                posted.get()()
            for fd, flags in poller.poll(10):
                if flags & zmq.POLLOUT:
                    pool.on_writable(fd)
                if flags & (zmq.POLLIN | zmq.POLLERR):
                    pool.on_readable(fd)

    big = os.urandom(2 * OUT_OF_BAND_BYTES)
    gate = "oob-gate"
    records = [
        record(0, gate_wait, gate),
        record(1, len, big),  # taken back below: skipped, its bytes read all the same
        record(2, len, big[:-1]),
        record(3, bytes.hex, b"small"),
    ]
    try:
        pool.attach(poller)
        pool.submit_all(records)  # before any worker is up: they go out as one batch
        # The gate's task and the large one go in one batch (then the batch is full:
        # over _BATCH_BYTES); the others follow on the same stream once one is answered.
        until(lambda: records[0].worker is not None)
        assert records[1].worker is not None, "not in the gate task's batch"
        until(lambda: wait_started(gate, 0))  # (its batch's raw bytes are read first)
        assert pool.take_back(records[1])
        open_gate(gate)
        until(lambda: len(reports) == 3)
    finally:
        pool.stop(time.monotonic() + WAIT)
        reset_gates()
    answered = {r.index: loads(decode(frame).payload) for r, _, frame in reports}
    assert answered == {0: None, 2: len(big) - 1, 3: b"small".hex()}
