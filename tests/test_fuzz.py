"""Fuzzing: the decoder raises nothing but ``ProtocolError``, and both ends keep serving
after garbage arrives on their sockets (docs/protocol.md, docs/race-kit.md).

Garbage reaches a ``Client`` from a raw ROUTER that plays its scheduler, and a
``SchedulerStub`` from a raw DEALER that plays a client; both must count every bad
frame exactly, never raise in their I/O thread, and then answer real work.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from futurefsm import Client
from futurefsm.fsm import CancelOutcome
from futurefsm.protocol import (
    ConfirmKind,
    Disconnect,
    Heartbeat,
    HeartbeatEcho,
    Message,
    ProtocolError,
    ResultStatus,
    Status,
    StatusRequest,
    Task,
    TaskCancel,
    TaskCancelConfirm,
    TaskResult,
    decode,
    encode,
    new_task_id,
    unbatch,
)
from futurefsm.scheduler_stub import SchedulerStub
from futurefsm.scheduler_stub.sample_tasks import echo
from futurefsm.serializer import DEFAULT_SERIALIZER
from futurefsm.testing.budget import examples
from futurefsm.testing.strategies import (
    MESSAGE_STRATEGIES,
    garbage_frames,
    msgpack_values,
    mutated_frames,
    raw_frame,
    structurally_mutated_frames,
)

WAIT = 5.0
MESSAGE_TYPES = tuple(MESSAGE_STRATEGIES)
TYPE_IDS = [cls.__name__ for cls in MESSAGE_TYPES]


def decodes_or_protocol_error(data: bytes) -> Message | None:
    """Decode ``data``: a valid message (which must round-trip) or None on
    ``ProtocolError``. Any other exception fails the test."""
    try:
        message = decode(data)
    except ProtocolError as error:
        assert str(error), "a ProtocolError must say what was wrong"
        return None
    assert isinstance(message, MESSAGE_TYPES)
    assert decode(encode(message)) == message
    return message


# ---------------------------------------------------------------------------
# The decoder
# ---------------------------------------------------------------------------


@settings(max_examples=examples(20))
@given(st.binary(max_size=1024))
def test_decode_random_bytes(data: bytes) -> None:
    decodes_or_protocol_error(data)
    decodes_or_protocol_error(bytearray(data))
    decodes_or_protocol_error(memoryview(data))


@settings(max_examples=examples(5))
@given(msgpack_values(max_leaves=20))
def test_decode_arbitrary_msgpack(value: Any) -> None:
    decodes_or_protocol_error(msgpack.packb(value, use_bin_type=True))


@settings(max_examples=examples(5))
@given(st.integers(min_value=0, max_value=9), st.lists(msgpack_values(), max_size=7))
def test_decode_any_fields_behind_a_valid_envelope(type_code: int, fields: list[Any]) -> None:
    decodes_or_protocol_error(raw_frame(1, type_code, *fields))


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=TYPE_IDS)
@settings(max_examples=examples(3))
@given(data=st.data())
def test_decode_byte_mutations_of_every_message_type(cls: type[Any], data: st.DataObject) -> None:
    decodes_or_protocol_error(data.draw(mutated_frames(MESSAGE_STRATEGIES[cls])))


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=TYPE_IDS)
@settings(max_examples=examples(2))
@given(data=st.data())
def test_decode_structural_mutations_of_every_message_type(
    cls: type[Any], data: st.DataObject
) -> None:
    decodes_or_protocol_error(data.draw(structurally_mutated_frames(MESSAGE_STRATEGIES[cls])))


def test_structural_mutations_are_mostly_rejected() -> None:
    """The mutation strategies do produce garbage (this guards the fuzzers above from
    silently fuzzing only valid frames)."""
    from hypothesis import find

    find(structurally_mutated_frames(), lambda frame: decodes_or_protocol_error(frame) is None)
    find(mutated_frames(), lambda frame: decodes_or_protocol_error(frame) is None)


# ---------------------------------------------------------------------------
# Garbage to a client, from a raw ROUTER playing its scheduler
# ---------------------------------------------------------------------------

# One garbage message: a list of frames (a multipart is itself a protocol error).
garbage_messages = st.one_of(
    garbage_frames().map(lambda frame: [frame]),
    st.lists(st.binary(max_size=20), min_size=2, max_size=3),
    st.sampled_from([Task, TaskCancel, Heartbeat, StatusRequest, Status])
    .flatmap(MESSAGE_STRATEGIES.get)
    .map(lambda message: [encode(message)]),
    st.sampled_from([TaskResult, TaskCancelConfirm, HeartbeatEcho])
    .flatmap(MESSAGE_STRATEGIES.get)
    .map(lambda message: [encode(message)]),
)


def client_effects(frames: list[bytes]) -> list[str | None]:
    """What a client must do with each message of a ZeroMQ message (a Batch carries
    several): count a protocol error, count it stale, ignore it, or (a Disconnect)
    lose the connection."""
    if len(frames) != 1:
        return ["protocol_errors"]
    message = decodes_or_protocol_error(frames[0])
    if message is None:
        return ["protocol_errors"]
    return [_effect(item) for item, _ in unbatch(message)]


def _effect(message: Message | ProtocolError) -> str | None:
    if isinstance(message, (ProtocolError, Task, TaskCancel, Heartbeat, StatusRequest, Status)):
        return "protocol_errors"
    if isinstance(message, (TaskResult, TaskCancelConfirm)):
        return "stale_messages"  # random ids: no future of this client has them
    if isinstance(message, Disconnect):
        return "disconnect"
    return None


class FakeScheduler:
    """A raw ROUTER speaking the protocol by hand (echoing heartbeats)."""

    def __init__(self) -> None:
        self.context: zmq.Context[Any] = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind("tcp://127.0.0.1:*")
        self.address = self.socket.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.identity: bytes | None = None
        self.received: list[Any] = []  # taken from a Batch, not asked for yet

    def receive(self, kind: type[Any], deadline: float) -> Any:
        """The next message of ``kind`` from the client, answering heartbeats meanwhile."""
        while time.monotonic() < deadline:
            while self.received:
                message = self.received.pop(0)
                if isinstance(message, Heartbeat):
                    self.send_frames([encode(HeartbeatEcho(message.seq))])
                if isinstance(message, kind):
                    return message
            if not self.socket.poll(50):
                continue
            identity, frame = self.socket.recv_multipart()
            self.identity = identity
            if not frame:
                continue  # the empty probe that opens each connection (PROBE_ROUTER)
            self.received.extend(item for item, _ in unbatch(decode(frame)))
        raise AssertionError(f"no {kind.__name__} from the client in time")

    def send_frames(self, frames: list[bytes]) -> None:
        assert self.identity is not None
        self.socket.send_multipart([self.identity, *frames])

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()


@pytest.fixture
def fake_scheduler() -> Iterator[FakeScheduler]:
    scheduler = FakeScheduler()
    yield scheduler
    scheduler.close()


@settings(max_examples=examples(1), deadline=None)
@given(garbage=st.lists(garbage_messages, min_size=1, max_size=8))
def test_client_keeps_serving_after_garbage(garbage: list[list[bytes]]) -> None:
    garbage = [frames for frames in garbage if "disconnect" not in client_effects(frames)]
    scheduler = FakeScheduler()
    client = Client(scheduler.address, heartbeat_interval=0.05, connection_timeout=WAIT)
    try:
        deadline = time.monotonic() + WAIT
        answered, cancelled = client.submit(echo, 1), client.submit(echo, 2)
        first = scheduler.receive(Task, deadline)
        second = scheduler.receive(Task, deadline)
        for frames in garbage:
            scheduler.send_frames(frames)
        # Real work after the garbage: a result, and a confirmed cancel.
        scheduler.send_frames(
            [encode(TaskResult(first.task_id, ResultStatus.SUCCESS, DEFAULT_SERIALIZER.dumps(1)))]
        )
        assert answered.result(WAIT) == 1
        assert cancelled.cancel(wait=False)
        cancel = scheduler.receive(TaskCancel, deadline)
        assert cancel.task_id == second.task_id
        scheduler.send_frames([encode(TaskCancelConfirm(second.task_id, ConfirmKind.CANCELED))])
        assert cancelled.cancelled()
        assert cancelled.cancel_outcome is CancelOutcome.CONFIRMED
        stats = client.stats()
        effects = [effect for frames in garbage for effect in client_effects(frames)]
        assert stats["protocol_errors"] == effects.count("protocol_errors")
        assert stats["stale_messages"] == effects.count("stale_messages")
        assert stats["io_errors"] == 0
        assert stats["connection_lost"] == 0
    finally:
        client.close()
        scheduler.close()


def test_client_counts_a_disconnect_among_garbage_as_connection_lost(
    fake_scheduler: FakeScheduler,
) -> None:
    client = Client(fake_scheduler.address, heartbeat_interval=0.05, connection_timeout=WAIT)
    try:
        future = client.submit(echo, 1)
        fake_scheduler.receive(Task, time.monotonic() + WAIT)
        fake_scheduler.send_frames([b"\xc1"])
        fake_scheduler.send_frames([encode(Disconnect())])
        assert isinstance(future.exception(WAIT), ConnectionError)
        stats = client.stats()
        assert (stats["protocol_errors"], stats["connection_lost"], stats["io_errors"]) == (1, 1, 0)
    finally:
        client.close()


# ---------------------------------------------------------------------------
# Garbage to a scheduler stub, from a raw DEALER playing a client
# ---------------------------------------------------------------------------

stub_garbage = st.one_of(
    garbage_frames().map(lambda frame: [frame]),
    st.lists(st.binary(max_size=20), min_size=2, max_size=3),
    st.sampled_from([TaskResult, TaskCancelConfirm, HeartbeatEcho, Status])
    .flatmap(MESSAGE_STRATEGIES.get)
    .map(lambda message: [encode(message)]),
)


def stub_counts_it(frames: list[bytes]) -> bool | None:
    """True if the stub must count ``frames`` as a protocol error; None for a valid
    client message (left out: it would be served, not rejected)."""
    if len(frames) != 1:
        return True
    message = decodes_or_protocol_error(frames[0])
    scheduler_to_client = (TaskResult, TaskCancelConfirm, HeartbeatEcho, Status)
    if message is None or isinstance(message, scheduler_to_client):
        return True
    return None


@settings(max_examples=examples(1), deadline=None)
@given(garbage=st.lists(stub_garbage, min_size=1, max_size=8))
def test_stub_keeps_serving_after_garbage(garbage: list[list[bytes]]) -> None:
    garbage = [frames for frames in garbage if stub_counts_it(frames)]
    with SchedulerStub(workers=1) as stub:
        context: zmq.Context[Any] = zmq.Context()
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.PROBE_ROUTER, 1)  # as the client does: garbage never comes first
        dealer.connect(stub.address)
        try:
            for frames in garbage:
                dealer.send_multipart(frames)
            task = Task(
                new_task_id(),
                DEFAULT_SERIALIZER.dumps(echo),
                DEFAULT_SERIALIZER.dumps(((7,), {})),
            )
            dealer.send(encode(task))
            dealer.send(encode(Heartbeat(3)))
            replies: list[Message] = []
            deadline = time.monotonic() + WAIT
            while len(replies) < 2 and time.monotonic() < deadline:
                if dealer.poll(50):
                    replies.append(decode(dealer.recv()))
            assert HeartbeatEcho(3) in replies
            (result,) = [r for r in replies if isinstance(r, TaskResult)]
            assert result.task_id == task.task_id and result.status is ResultStatus.SUCCESS
            assert DEFAULT_SERIALIZER.loads(result.payload) == 7
            stats = stub.stats()
            assert stats["protocol_errors"] == len(garbage)
            assert stats["internal_errors"] == 0
        finally:
            dealer.close(linger=0)
            context.term()
