"""Tests for futurefsm.protocol: round trips, every named error, and fuzzing of decode."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from futurefsm import protocol
from futurefsm.protocol import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    TASK_ID_BYTES,
    Batch,
    ConfirmKind,
    Disconnect,
    Heartbeat,
    HeartbeatEcho,
    ProtocolError,
    ResultStatus,
    Task,
    TaskCancel,
    TaskCancelConfirm,
    TaskResult,
    decode,
    encode,
    new_task_id,
    plain_task,
    result_frame,
)

ID = b"\x01" * TASK_ID_BYTES
GROUP = b"\x02" * TASK_ID_BYTES

# ---------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------

ids = st.binary(min_size=TASK_ID_BYTES, max_size=TASK_ID_BYTES)
blobs = st.binary(max_size=256)
seqs = st.integers(min_value=0, max_value=2**63 - 1)

tasks = st.builds(
    Task,
    task_id=ids,
    function=blobs,
    args=blobs,
    group_id=st.none() | ids,
    depends_on=st.lists(ids, max_size=4).map(tuple),
)
task_cancels = st.builds(TaskCancel, task_id=ids, force=st.booleans())
heartbeats = st.builds(Heartbeat, seq=seqs)
disconnects = st.just(Disconnect())
task_results = st.builds(
    TaskResult, task_id=ids, status=st.sampled_from(ResultStatus), payload=blobs
)
task_cancel_confirms = st.builds(TaskCancelConfirm, task_id=ids, kind=st.sampled_from(ConfirmKind))
heartbeat_echoes = st.builds(HeartbeatEcho, seq=seqs)
messages = st.one_of(
    tasks,
    task_cancels,
    heartbeats,
    disconnects,
    task_results,
    task_cancel_confirms,
    heartbeat_echoes,
)


def raw(*items: Any) -> bytes:
    """Pack arbitrary items as a msgpack array, bypassing all validation."""
    return msgpack.packb(list(items), use_bin_type=True)


def frame(type_code: int, *fields: Any) -> bytes:
    """A frame with the current version, ``type_code`` and raw ``fields``."""
    return raw(PROTOCOL_VERSION, type_code, *fields)


# ---------------------------------------------------------------------------
# Round trips and wire format
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "strategy",
    [
        tasks,
        task_cancels,
        heartbeats,
        disconnects,
        task_results,
        task_cancel_confirms,
        heartbeat_echoes,
    ],
    ids=[cls.__name__ for cls in (Task, TaskCancel, Heartbeat, Disconnect, TaskResult)]
    + ["TaskCancelConfirm", "HeartbeatEcho"],
)
@settings(max_examples=50)
@given(data=st.data())
def test_round_trip(strategy: st.SearchStrategy[Any], data: st.DataObject) -> None:
    message = data.draw(strategy)
    decoded = decode(encode(message))
    assert decoded == message
    assert type(decoded) is type(message)


def test_wire_format_is_version_type_then_fields_in_order() -> None:
    task = Task(ID, b"fn", b"args", None, (GROUP,))
    assert msgpack.unpackb(encode(task), raw=False) == [
        PROTOCOL_VERSION,
        Task.TYPE_CODE,
        ID,
        b"fn",
        b"args",
        None,
        [GROUP],
    ]
    cancel = TaskCancel(GROUP, force=True)
    assert msgpack.unpackb(encode(cancel), raw=False) == [1, TaskCancel.TYPE_CODE, GROUP, True]
    result = TaskResult(ID, ResultStatus.WORKER_DIED, b"")
    unpacked = msgpack.unpackb(encode(result), raw=False)
    assert unpacked == [1, TaskResult.TYPE_CODE, ID, "worker_died", b""]
    assert type(unpacked[3]) is str
    assert msgpack.unpackb(encode(Disconnect()), raw=False) == [1, Disconnect.TYPE_CODE]


def test_type_codes_are_distinct() -> None:
    classes = [Task, TaskCancel, Heartbeat, Disconnect, TaskResult, TaskCancelConfirm]
    classes.append(HeartbeatEcho)
    assert len({cls.TYPE_CODE for cls in classes}) == len(classes)


def test_decoded_enums_are_members() -> None:
    result = decode(frame(TaskResult.TYPE_CODE, ID, "failed", b"tb"))
    assert result.status is ResultStatus.FAILED
    confirm = decode(frame(TaskCancelConfirm.TYPE_CODE, ID, "not_found"))
    assert confirm.kind is ConfirmKind.NOT_FOUND


def test_constructor_accepts_enum_string_values() -> None:
    assert TaskResult(ID, "success", b"").status is ResultStatus.SUCCESS  # type: ignore[arg-type]
    assert TaskCancelConfirm(ID, "canceled").kind is ConfirmKind.CANCELED  # type: ignore[arg-type]


def test_defaults() -> None:
    task = Task(ID, b"f", b"a")
    assert task.group_id is None
    assert task.depends_on == ()
    assert TaskCancel(ID).force is False


def test_decode_accepts_bytearray_and_memoryview() -> None:
    encoded = encode(Heartbeat(7))
    assert decode(bytearray(encoded)) == Heartbeat(7)
    assert decode(memoryview(encoded)) == Heartbeat(7)


def test_new_task_id() -> None:
    first, second = new_task_id(), new_task_id()
    assert type(first) is bytes
    assert len(first) == TASK_ID_BYTES
    assert first != second
    assert Task(first, b"", b"").task_id == first


def test_seq_bounds_round_trip() -> None:
    for seq in (0, 2**63 - 1):
        assert decode(encode(Heartbeat(seq))) == Heartbeat(seq)
        assert decode(encode(HeartbeatEcho(seq))) == HeartbeatEcho(seq)


# ---------------------------------------------------------------------------
# Frozen, slotted dataclasses
# ---------------------------------------------------------------------------


@settings(max_examples=20)
@given(messages)
def test_messages_are_frozen_and_slotted(message: Any) -> None:
    assert not hasattr(message, "__dict__")
    for field in dataclasses.fields(message):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(message, field.name, getattr(message, field.name))
    with pytest.raises((dataclasses.FrozenInstanceError, AttributeError, TypeError)):
        message.extra = 1


def test_messages_are_hashable() -> None:
    assert hash(Task(ID, b"f", b"a", GROUP, (ID,))) == hash(Task(ID, b"f", b"a", GROUP, (ID,)))


# ---------------------------------------------------------------------------
# Envelope errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "not msgpack"),
        (b"\xc1", "not msgpack"),  # the one byte msgpack never uses
        (b"\x92\x01", "not msgpack"),  # truncated array
        (b"\xc4\x10abc", "not msgpack"),  # bin header longer than the frame
        (b"\xa3\xff\xfe\xfd", "not msgpack"),  # str that is not utf-8
        (b"\x91" * 5000, "not msgpack"),  # nested past msgpack's stack
    ],
)
def test_not_msgpack(data: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode(data)


@pytest.mark.parametrize("frame_obj", ["text", 42, None, [1, 2]])
def test_frame_must_be_bytes_like(frame_obj: Any) -> None:
    with pytest.raises(ProtocolError, match="frame must be bytes-like"):
        decode(frame_obj)


@pytest.mark.parametrize(
    ("obj", "name"),
    [(1, "int"), ("s", "str"), ({"a": 1}, "dict"), (None, "None"), (b"x", "1 bytes")],
)
def test_not_an_array(obj: Any, name: str) -> None:
    with pytest.raises(ProtocolError, match=f"expected a msgpack array, got {name}"):
        decode(msgpack.packb(obj, use_bin_type=True))


@pytest.mark.parametrize("items", [(), (PROTOCOL_VERSION,)])
def test_array_too_short(items: tuple[Any, ...]) -> None:
    with pytest.raises(ProtocolError, match=f"has {len(items)} items, expected at least 2"):
        decode(raw(*items))


@pytest.mark.parametrize("version", [0, 2, 7, -1, 2**64 - 1])
def test_unsupported_version(version: int) -> None:
    with pytest.raises(
        ProtocolError, match=rf"unsupported protocol version {version} \(expected 1\)"
    ):
        decode(raw(version, Heartbeat.TYPE_CODE, 1))


@pytest.mark.parametrize(("version", "name"), [(True, "bool"), ("1", "str"), (1.0, "float")])
def test_version_must_be_int(version: Any, name: str) -> None:
    with pytest.raises(ProtocolError, match=f"protocol version: expected int, got {name}"):
        decode(raw(version, Heartbeat.TYPE_CODE, 1))


@pytest.mark.parametrize("type_code", [0, 11, 99, -1, 2**40])
def test_unknown_message_type(type_code: int) -> None:
    with pytest.raises(ProtocolError, match=f"unknown message type {type_code}"):
        decode(frame(type_code))


@pytest.mark.parametrize(("type_code", "name"), [(True, "bool"), ("task", "str"), (None, "None")])
def test_message_type_must_be_int(type_code: Any, name: str) -> None:
    with pytest.raises(ProtocolError, match=f"message type: expected int, got {name}"):
        decode(raw(PROTOCOL_VERSION, type_code))


@pytest.mark.parametrize(
    ("type_code", "fields", "match"),
    [
        (TaskResult.TYPE_CODE, (ID, "success"), "TaskResult expects 3 fields, got 2"),
        (TaskResult.TYPE_CODE, (ID, "success", b"", b""), "TaskResult expects 3 fields, got 4"),
        (Task.TYPE_CODE, (ID, b"f", b"a"), "Task expects 5 fields, got 3"),
        (Task.TYPE_CODE, (ID, b"f", b"a", None, [], 1), "Task expects 5 fields, got 6"),
        (TaskCancel.TYPE_CODE, (ID,), "TaskCancel expects 2 fields, got 1"),
        (Heartbeat.TYPE_CODE, (), "Heartbeat expects 1 fields, got 0"),
        (HeartbeatEcho.TYPE_CODE, (1, 2), "HeartbeatEcho expects 1 fields, got 2"),
        (Disconnect.TYPE_CODE, (None,), "Disconnect expects 0 fields, got 1"),
        (TaskCancelConfirm.TYPE_CODE, (ID,), "TaskCancelConfirm expects 2 fields, got 1"),
    ],
)
def test_wrong_arity(type_code: int, fields: tuple[Any, ...], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode(frame(type_code, *fields))


def test_trailing_bytes_after_valid_message() -> None:
    encoded = encode(Heartbeat(1))
    with pytest.raises(ProtocolError, match="trailing data: 3 bytes after the message"):
        decode(encoded + b"\x00\x01\x02")
    with pytest.raises(ProtocolError, match="trailing data"):
        decode(encoded + encoded)


def test_oversized_frame_at_the_real_limit() -> None:
    # bytes(n) is zero-filled lazily, so this is cheap; the size check precedes unpacking.
    huge = bytes(MAX_FRAME_BYTES + 1)
    match = f"frame of {MAX_FRAME_BYTES + 1} bytes exceeds the {MAX_FRAME_BYTES}-byte limit"
    with pytest.raises(ProtocolError, match=match):
        decode(huge)
    with pytest.raises(ProtocolError, match=match):
        decode(memoryview(huge))


def test_oversized_frame_with_a_small_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "MAX_FRAME_BYTES", 100)
    small = Task(ID, b"f", b"a" * 10)
    assert decode(encode(small)) == small
    big = Task(ID, b"f", b"a" * 100)
    with pytest.raises(ProtocolError, match=r"frame of \d+ bytes exceeds the 100-byte limit"):
        encode(big)
    with pytest.raises(ProtocolError, match="frame of 101 bytes exceeds the 100-byte limit"):
        decode(bytes(101))
    payload = b"p" * (100 - len(frame(TaskResult.TYPE_CODE, ID, "success", b"")))
    exactly = frame(TaskResult.TYPE_CODE, ID, "success", payload)
    assert len(exactly) == 100
    assert decode(exactly).payload == payload


@pytest.mark.parametrize("obj", [object(), ID, (1, ID), ResultStatus.SUCCESS])
def test_encode_rejects_non_messages(obj: Any) -> None:
    with pytest.raises(ProtocolError, match="not a protocol message"):
        encode(obj)


# ---------------------------------------------------------------------------
# Field errors: every field kind, through decode and through the constructor
# ---------------------------------------------------------------------------

T, TC, HB, TR, TCC, HE = (
    Task.TYPE_CODE,
    TaskCancel.TYPE_CODE,
    Heartbeat.TYPE_CODE,
    TaskResult.TYPE_CODE,
    TaskCancelConfirm.TYPE_CODE,
    HeartbeatEcho.TYPE_CODE,
)

FIELD_ERRORS = [
    # 16-byte ids
    (T, [b"short", b"f", b"a", None, []], "Task.task_id: expected 16 bytes, got 5 bytes"),
    (T, [ID + b"!", b"f", b"a", None, []], "Task.task_id: expected 16 bytes, got 17 bytes"),
    (T, ["x" * 16, b"f", b"a", None, []], "Task.task_id: expected 16 bytes, got str"),
    (TC, [None, False], "TaskCancel.task_id: expected 16 bytes, got None"),
    (TR, ["a" * 16, "success", b""], "TaskResult.task_id: expected 16 bytes, got str"),
    (TR, [b"", "success", b""], "TaskResult.task_id: expected 16 bytes, got 0 bytes"),
    (TCC, [1, "canceled"], "TaskCancelConfirm.task_id: expected 16 bytes, got int"),
    # opaque bytes
    (T, [ID, "fn", b"a", None, []], "Task.function: expected bytes, got str"),
    (T, [ID, b"f", [1], None, []], "Task.args: expected bytes, got tuple"),
    (T, [ID, b"f", None, None, []], "Task.args: expected bytes, got None"),
    (TR, [ID, "success", "text"], "TaskResult.payload: expected bytes, got str"),
    (TR, [ID, "failed", 0], "TaskResult.payload: expected bytes, got int"),
    # optional id
    (T, [ID, b"f", b"a", b"g", []], r"Task.group_id: expected 16 bytes or None, got 1 bytes"),
    (T, [ID, b"f", b"a", "g" * 16, []], "Task.group_id: expected 16 bytes or None, got str"),
    (T, [ID, b"f", b"a", False, []], "Task.group_id: expected 16 bytes or None, got bool"),
    # tuple of ids
    (T, [ID, b"f", b"a", None, None], "Task.depends_on: expected a tuple of 16-byte ids, got None"),
    (T, [ID, b"f", b"a", None, ID], "Task.depends_on: expected a tuple of 16-byte ids, got 16 b"),
    (T, [ID, b"f", b"a", None, {}], "Task.depends_on: expected a tuple of 16-byte ids, got dict"),
    (T, [ID, b"f", b"a", None, [ID, b"x"]], r"Task.depends_on\[1\]: expected 16 bytes, got 1 b"),
    (T, [ID, b"f", b"a", None, ["a" * 16]], r"Task.depends_on\[0\]: expected 16 bytes, got str"),
    (T, [ID, b"f", b"a", None, [[ID]]], r"Task.depends_on\[0\]: expected 16 bytes, got tuple"),
    # bool
    (TC, [ID, 1], "TaskCancel.force: expected bool, got int"),
    (TC, [ID, 0], "TaskCancel.force: expected bool, got int"),
    (TC, [ID, None], "TaskCancel.force: expected bool, got None"),
    (TC, [ID, "true"], "TaskCancel.force: expected bool, got str"),
    # int
    (HB, [True], "Heartbeat.seq: expected int, got bool"),
    (HB, [1.0], "Heartbeat.seq: expected int, got float"),
    (HB, [b"1"], "Heartbeat.seq: expected int, got 1 bytes"),
    (HE, [False], "HeartbeatEcho.seq: expected int, got bool"),
    (HB, [-1], r"Heartbeat.seq: -1 is out of range \[0, 2\*\*63\)"),
    (HE, [2**63], r"HeartbeatEcho.seq: 9223372036854775808 is out of range"),
    # enums
    (
        TR,
        [ID, "weird", b""],
        r"TaskResult.status: unknown value 'weird' "
        r"\(expected one of success, failed, worker_died\)",
    ),
    (TR, [ID, "SUCCESS", b""], "TaskResult.status: unknown value 'SUCCESS'"),
    (TR, [ID, b"success", b""], "TaskResult.status: expected str, got 7 bytes"),
    (TR, [ID, 0, b""], "TaskResult.status: expected str, got int"),
    (
        TCC,
        [ID, "cancelled"],
        r"TaskCancelConfirm.kind: unknown value 'cancelled' "
        r"\(expected one of canceled, cancel_failed, not_found\)",
    ),
    (TCC, [ID, None], "TaskCancelConfirm.kind: expected str, got None"),
]


@pytest.mark.parametrize(("type_code", "fields", "match"), FIELD_ERRORS)
def test_decode_field_errors(type_code: int, fields: list[Any], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode(frame(type_code, *fields))


_CLASS_BY_CODE = {
    cls.TYPE_CODE: cls
    for cls in (Task, TaskCancel, Heartbeat, TaskResult, TaskCancelConfirm, HeartbeatEcho)
}


def _as_python(value: Any) -> Any:
    """Turn the wire-shaped field values used above into what decode would hand over."""
    return tuple(_as_python(v) for v in value) if isinstance(value, list) else value


@pytest.mark.parametrize(("type_code", "fields", "match"), FIELD_ERRORS)
def test_constructor_field_errors(type_code: int, fields: list[Any], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        _CLASS_BY_CODE[type_code](*(_as_python(f) for f in fields))


def test_constructor_rejects_list_and_bytearray() -> None:
    with pytest.raises(ProtocolError, match=r"Task\.depends_on: expected a tuple.*got list"):
        Task(ID, b"f", b"a", None, [ID])  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match=r"Task\.args: expected bytes, got bytearray"):
        Task(ID, b"f", bytearray(b"a"))  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match=r"TaskResult\.status: unknown value"):
        TaskResult(ID, ConfirmKind.CANCELED, b"")  # type: ignore[arg-type]


def test_protocol_error_is_a_value_error() -> None:
    assert issubclass(ProtocolError, ValueError)


# ---------------------------------------------------------------------------
# Fuzzing: decode raises nothing but ProtocolError
# ---------------------------------------------------------------------------

# Every message class decode knows (StatusRequest, Status and Batch included).
MESSAGE_TYPES = tuple(cls for cls, _ in protocol._DECODERS.values())


def _decode_or_protocol_error(data: bytes) -> None:
    try:
        message = decode(data)
    except ProtocolError:
        return
    assert isinstance(message, MESSAGE_TYPES)
    assert decode(encode(message)) == message


@settings(max_examples=400)
@given(st.binary(max_size=512))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    _decode_or_protocol_error(data)


@settings(max_examples=300)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**63), max_value=2**64 - 1)
        | st.floats()
        | st.text(max_size=20)
        | st.binary(max_size=20),
        lambda children: st.lists(children, max_size=6),
        max_leaves=12,
    ),
    st.sampled_from([PROTOCOL_VERSION, 0, 2, True]),
    st.integers(min_value=0, max_value=9),
)
def test_fuzz_well_formed_msgpack(body: Any, version: Any, type_code: int) -> None:
    fields = body if isinstance(body, list) else [body]
    _decode_or_protocol_error(raw(version, type_code, *fields))


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    data = bytearray(encode(draw(messages)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if not data:
            op = "insert"
        index = draw(st.integers(min_value=0, max_value=max(len(data) - 1, 0)))
        if op == "flip":
            data[index] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif op == "set":
            data[index] = draw(st.integers(min_value=0, max_value=255))
        elif op == "insert":
            data[index:index] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[index : index + draw(st.integers(min_value=1, max_value=8))]
        else:
            del data[index:]
    return bytes(data)


@settings(max_examples=400)
@given(mutated_frames())
def test_fuzz_mutated_valid_frames(data: bytes) -> None:
    _decode_or_protocol_error(data)


# ---------------------------------------------------------------------------
# decode's fast builders accept exactly what the constructors accept, or less
# ---------------------------------------------------------------------------

_NEAR_VALID = st.sampled_from(
    [
        b"i" * TASK_ID_BYTES,
        b"i" * (TASK_ID_BYTES - 1),
        b"i" * (TASK_ID_BYTES + 1),
        b"",
        b"payload",
        "i" * TASK_ID_BYTES,
        None,
        0,
        True,
        1.5,
        (),
        (b"d" * TASK_ID_BYTES,),
        (b"d",),
        [],
        {},
        *(status.value for status in ResultStatus),
        *(kind.value for kind in ConfirmKind),
        "bogus",
    ]
)


@pytest.mark.parametrize("cls", list(protocol._FAST_BUILDERS), ids=lambda cls: cls.__name__)
@settings(max_examples=300)
@given(data=st.data())
def test_a_fast_builder_builds_what_the_constructor_builds_or_leaves_it_to_it(cls, data):
    arity = len(dataclasses.fields(cls))
    items = (PROTOCOL_VERSION, cls.TYPE_CODE, *data.draw(st.tuples(*[_NEAR_VALID] * arity)))
    fast = protocol._FAST_BUILDERS[cls](items)
    try:
        expected = cls(*items[2:])
    except ProtocolError:
        assert fast is None, f"the fast builder accepted what {cls.__name__} refuses: {items}"
        return
    if fast is not None:
        assert fast == expected
        assert [type(getattr(fast, f.name)) for f in dataclasses.fields(cls)] == [
            type(getattr(expected, f.name)) for f in dataclasses.fields(cls)
        ]


def test_the_common_messages_take_the_fast_path():
    messages = [
        Task(new_task_id(), b"fn", b"args"),
        TaskResult(new_task_id(), ResultStatus.SUCCESS, b"value"),
        TaskCancelConfirm(new_task_id(), ConfirmKind.CANCELED),
    ]
    for message in messages:
        items = msgpack.unpackb(encode(message), use_list=False)
        assert protocol._FAST_BUILDERS[type(message)](items) == message
        assert decode(encode(message)) == message


def _check_plain_task(data: bytes) -> None:
    """plain_task gives the fields decode would, for a plain Task only."""
    items = plain_task(data)
    try:
        message = decode(data)
    except ProtocolError:
        assert items is None, f"plain_task accepted what decode refuses: {data!r}"
        return
    plain = type(message) is Task and message.group_id is None and message.depends_on == ()
    if not plain:
        assert items is None, f"plain_task accepted {message!r}"
        return
    assert items is not None, f"plain_task refused {message!r}"
    assert items == (PROTOCOL_VERSION, Task.TYPE_CODE, *dataclasses.astuple(message))
    assert [type(item) for item in items[2:5]] == [bytes, bytes, bytes]


@settings(max_examples=300)
@given(st.one_of(messages.map(encode), mutated_frames()))
def test_plain_task_gives_the_fields_decode_would_for_a_plain_task_only(data: bytes) -> None:
    _check_plain_task(data)


@settings(max_examples=300)
@given(st.tuples(*[_NEAR_VALID] * 5))
def test_plain_task_refuses_near_valid_tasks_that_decode_refuses(fields: tuple[Any, ...]) -> None:
    _check_plain_task(frame(Task.TYPE_CODE, *fields))
    _check_plain_task(raw(True, Task.TYPE_CODE, *fields))


def test_plain_task_takes_a_plain_task_and_nothing_else() -> None:
    task_id = new_task_id()
    assert plain_task(encode(Task(task_id, b"fn", b"args"))) == (
        PROTOCOL_VERSION,
        Task.TYPE_CODE,
        task_id,
        b"fn",
        b"args",
        None,
        (),
    )
    assert plain_task(encode(Task(task_id, b"fn", b"args", group_id=GROUP))) is None
    assert plain_task(encode(Task(task_id, b"fn", b"args", depends_on=(ID,)))) is None
    assert plain_task(encode(TaskCancel(task_id))) is None
    assert plain_task(b"\xc1") is None


@settings(max_examples=200)
@given(task_results)
def test_result_frame_is_the_encoded_task_result(result: TaskResult) -> None:
    frame = result_frame(result.task_id, result.status, result.payload)
    assert frame == encode(result)
    assert decode(frame) == result


@pytest.mark.parametrize(
    ("task_id", "status", "payload", "match"),
    [
        (b"short", ResultStatus.SUCCESS, b"", "TaskResult.task_id"),
        (ID, "bogus", b"", "TaskResult.status"),
        (ID, ResultStatus.SUCCESS, bytearray(b"x"), "TaskResult.payload"),
    ],
)
def test_result_frame_names_a_bad_field(task_id: Any, status: Any, payload: Any, match: str):
    with pytest.raises(ProtocolError, match=match):
        result_frame(task_id, status, payload)


def test_result_frame_refuses_a_frame_over_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "MAX_FRAME_BYTES", 64)
    with pytest.raises(ProtocolError, match="exceeds the 64-byte limit"):
        result_frame(ID, ResultStatus.SUCCESS, b"x" * 64)


def test_task_ids_are_distinct_across_draws_and_threads():
    import threading

    ids: list[bytes] = []

    def draw() -> None:
        ids.extend(new_task_id() for _ in range(1000))

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 4000 == len(set(ids))
    assert all(type(task_id) is bytes and len(task_id) == TASK_ID_BYTES for task_id in ids)


def test_a_forked_child_draws_other_ids_than_its_parent():
    import os

    new_task_id()  # the parent has ids drawn and waiting
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send back the ids it draws, then leave at once
        os.write(write, b"".join(new_task_id() for _ in range(8)))
        os._exit(0)
    os.close(write)
    child = os.read(read, TASK_ID_BYTES * 8)
    os.close(read)
    os.waitpid(pid, 0)
    parent = b"".join(new_task_id() for _ in range(8))
    assert len(child) == TASK_ID_BYTES * 8 and child != parent


# ---------------------------------------------------------------------------
# Batch: many messages in one frame
# ---------------------------------------------------------------------------


@settings(max_examples=100)
@given(st.lists(st.integers(0, 2**62), min_size=1, max_size=30))
def test_batched_frames_give_back_every_message_in_order(seqs: list[int]) -> None:
    messages = [Heartbeat(seq) if seq % 2 else Task(new_task_id(), b"f", b"a") for seq in seqs]
    frames = protocol.batch_frames([encode(message) for message in messages])
    assert len(frames) == 1  # small messages: one frame
    got = [item for frame in frames for item, _ in protocol.unbatch(decode(frame))]
    assert got == messages


def test_a_single_frame_is_not_wrapped() -> None:
    frame = encode(Heartbeat(1))
    assert protocol.batch_frames([frame]) == [frame]
    assert protocol.batch_frames([]) == []


def test_batches_stay_under_the_frame_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "MAX_FRAME_BYTES", 1000)
    frames = [encode(Task(new_task_id(), b"f" * 300, b"a")) for _ in range(7)]
    batched = protocol.batch_frames(frames)
    assert 1 < len(batched) < 7 and all(len(frame) <= 1000 for frame in batched)
    got = [item for frame in batched for item, _ in protocol.unbatch(decode(frame))]
    assert [encode(message) for message in got] == frames


def test_a_bad_message_in_a_batch_is_an_error_of_its_own() -> None:
    good = Heartbeat(5)
    inner = encode(Batch((encode(good),)))
    batch = decode(raw(PROTOCOL_VERSION, Batch.TYPE_CODE, (encode(good), b"\xc1", inner)))
    items = [item for item, _ in protocol.unbatch(batch)]
    assert items[0] == good
    assert isinstance(items[1], ProtocolError) and "Batch.frames[1]: not msgpack" in str(items[1])
    assert isinstance(items[2], ProtocolError) and "a Batch inside a Batch" in str(items[2])


@pytest.mark.parametrize(
    ("frames", "what"),
    [((), "non-empty tuple"), ((b"x", "y"), r"Batch\.frames\[1\]: expected bytes, got str")],
)
def test_batch_fields_are_validated(frames: Any, what: str) -> None:
    with pytest.raises(ProtocolError, match=what):
        Batch(frames)
    with pytest.raises(ProtocolError, match=what):
        decode(raw(PROTOCOL_VERSION, Batch.TYPE_CODE, frames))
    with pytest.raises(ProtocolError, match=r"Batch\.frames: expected a non-empty tuple"):
        Batch([b"x"])  # type: ignore[arg-type]


@given(
    task_id=st.binary(min_size=16, max_size=16),
    function=st.binary(max_size=200),
    args=st.binary(max_size=200),
)
def test_encode_task_is_encode_of_a_task_byte_for_byte(
    task_id: bytes, function: bytes, args: bytes
) -> None:
    frame = protocol.encode_task(task_id, function, args)
    assert frame == encode(Task(task_id, function, args))
    assert decode(frame) == Task(task_id, function, args)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ((b"short", b"f", b"a"), "Task.task_id"),
        ((b"i" * 16, "not bytes", b"a"), "Task.function"),
        ((b"i" * 16, b"f", bytearray(b"a")), "Task.args"),
    ],
)
def test_encode_task_names_a_bad_field(fields: tuple[Any, ...], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        protocol.encode_task(*fields)


def test_encode_task_refuses_an_oversized_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "MAX_FRAME_BYTES", 100)
    with pytest.raises(ProtocolError, match="exceeds the 100-byte limit"):
        protocol.encode_task(b"i" * 16, b"f" * 100, b"")


@given(
    task_id=st.binary(min_size=16, max_size=16),
    status=st.sampled_from(ResultStatus),
    payload=st.binary(max_size=200),
)
def test_plain_result_gives_the_fields_decode_would(
    task_id: bytes, status: ResultStatus, payload: bytes
) -> None:
    frame = encode(TaskResult(task_id, status, payload))
    message = decode(frame)
    assert protocol.plain_result(frame) == (message.task_id, message.status, message.payload)


@pytest.mark.parametrize(
    "items",
    [
        (PROTOCOL_VERSION, TaskResult.TYPE_CODE, b"short", "success", b""),
        (PROTOCOL_VERSION, TaskResult.TYPE_CODE, ID, "no such status", b""),
        (PROTOCOL_VERSION, TaskResult.TYPE_CODE, ID, "success", "not bytes"),
        (PROTOCOL_VERSION + 1, TaskResult.TYPE_CODE, ID, "success", b""),
        (True, TaskResult.TYPE_CODE, ID, "success", b""),
        (PROTOCOL_VERSION, TaskCancelConfirm.TYPE_CODE, ID, "canceled"),
        (PROTOCOL_VERSION, TaskResult.TYPE_CODE, ID, "success"),
    ],
)
def test_plain_result_leaves_anything_else_to_decode(items: tuple[Any, ...]) -> None:
    frame = msgpack.packb(items)
    assert protocol.plain_result(frame) is None
    assert protocol.plain_result(b"\xc1 not msgpack") is None


def test_a_batch_item_is_its_message_or_the_error_naming_it() -> None:
    result = TaskResult(ID, ResultStatus.SUCCESS, b"")
    assert protocol.decode_batch_item(3, encode(result)) == result
    error = protocol.decode_batch_item(3, b"\xc1")
    assert isinstance(error, ProtocolError) and str(error).startswith("Batch.frames[3]: ")
    nested = protocol.decode_batch_item(4, protocol.batch_frames([encode(result)] * 2)[0])
    assert isinstance(nested, ProtocolError) and "a Batch inside a Batch" in str(nested)
