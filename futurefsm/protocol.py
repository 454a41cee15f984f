"""The futurefsm wire protocol: message classes and their msgpack encoding (docs/protocol.md).

Theory of operation
-------------------
Every message is one frozen, slotted dataclass with a class-level ``TYPE_CODE``. On the
wire a message is one frame holding one msgpack array::

    [PROTOCOL_VERSION, TYPE_CODE, field_1, ..., field_n]

with the fields in declaration order: bytes as msgpack bin, enums as their string value,
bools as msgpack bool, ``None`` as nil and ``depends_on`` as an array of bin.

Validation lives in one place, each class's ``__post_init__``: a message that exists is
a valid message, whether it was built locally or decoded. ``decode`` therefore only checks
the envelope (size, msgpack well-formedness, version, type code, arity) and hands the
fields to the constructor. ``encode`` trusts the message it is given and only enforces
the frame size limit.

``decode`` raises nothing but ``ProtocolError``, whatever bytes it is given: the I/O
thread counts the error and carries on. This module does no I/O and never unpickles;
``function``, ``args`` and ``payload`` are opaque bytes produced by the serializer.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import Enum
from operator import attrgetter
from typing import Any, ClassVar, TypeAlias

import msgpack

from .errors import FutureFSMError

__all__ = [
    "MAX_BUFFERS",
    "MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "TASK_ID_BYTES",
    "Batch",
    "ConfirmKind",
    "Disconnect",
    "Heartbeat",
    "HeartbeatEcho",
    "Message",
    "ProtocolError",
    "ResultStatus",
    "Status",
    "StatusRequest",
    "Task",
    "TaskCancel",
    "TaskCancelConfirm",
    "TaskResult",
    "batch_frames",
    "decode",
    "decode_batch_item",
    "encode",
    "encode_task",
    "new_task_id",
    "plain_result",
    "plain_task",
    "result_frame",
    "unbatch",
]

PROTOCOL_VERSION = 1
"""The protocol version carried as the first item of every frame."""

TASK_ID_BYTES = 16
"""Length in bytes of a task id or a group id."""

MAX_FRAME_BYTES = 64 * 1024 * 1024
"""Largest frame, in bytes, that ``encode`` produces or ``decode`` accepts; also the
largest out-of-band buffer a Task may carry."""

MAX_BUFFERS = 1024
"""Most out-of-band buffers one Task may carry (frames of their own after its frame:
large ``bytes`` in its arguments, ``serializer.dumps_buffers``)."""

_SEQ_LIMIT = 2**63
_ID = f"{TASK_ID_BYTES} bytes"
_ID_OR_NONE = f"{TASK_ID_BYTES} bytes or None"
_IDS = f"a tuple of {TASK_ID_BYTES}-byte ids"


class ProtocolError(FutureFSMError, ValueError):
    """A message or frame that breaks the protocol; the message says what was wrong.

    Also raised by ``submit()`` for a task whose frame would exceed ``MAX_FRAME_BYTES``.
    """


class ResultStatus(str, Enum):
    """How a task ended, as reported in a ``TaskResult``."""

    SUCCESS = "success"
    FAILED = "failed"
    WORKER_DIED = "worker_died"


class ConfirmKind(str, Enum):
    """The scheduler's answer to a ``TaskCancel``, as reported in a ``TaskCancelConfirm``."""

    CANCELED = "canceled"
    CANCEL_FAILED = "cancel_failed"
    NOT_FOUND = "not_found"


# Keyed by the string value; the members are str subclasses, so they find themselves too.
_RESULT_STATUS_BY_VALUE: dict[str, ResultStatus] = {m.value: m for m in ResultStatus}
_CONFIRM_KIND_BY_VALUE: dict[str, ConfirmKind] = {m.value: m for m in ConfirmKind}


def _describe(value: object) -> str:
    """Name what a bad field value is, for error messages."""
    if isinstance(value, bytes):
        return f"{len(value)} bytes"
    if value is None:
        return "None"
    return type(value).__name__


def _field_error(where: str, expected: str, value: object) -> ProtocolError:
    """Build the error for a field holding the wrong type or size."""
    return ProtocolError(f"{where}: expected {expected}, got {_describe(value)}")


def _check_seq(where: str, seq: object) -> None:
    """Check a sequence number or counter: an int (not a bool) in [0, 2**63)."""
    if type(seq) is not int:
        raise _field_error(where, "int", seq)
    if not 0 <= seq < _SEQ_LIMIT:
        raise ProtocolError(f"{where}: {seq} is out of range [0, 2**63)")


def _check_ids(where: str, ids: tuple[object, ...]) -> None:
    """Check that every id in a tuple is exactly ``TASK_ID_BYTES`` bytes."""
    for index, task_id in enumerate(ids):
        if type(task_id) is not bytes or len(task_id) != TASK_ID_BYTES:
            raise _field_error(f"{where}[{index}]", _ID, task_id)


def _to_enum(where: str, value: object, by_value: dict[str, Any]) -> Any:
    """Return the enum member named by ``value`` (a member or its string value)."""
    if isinstance(value, str):
        member = by_value.get(value)
        if member is not None:
            return member
        choices = ", ".join(by_value)
        raise ProtocolError(f"{where}: unknown value {value!r} (expected one of {choices})")
    raise _field_error(where, "str", value)


# ---------------------------------------------------------------------------
# Client -> scheduler
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Task:
    """Submit a task: run ``function(*args)`` and reply with a ``TaskResult``.

    ``function`` and ``args`` are opaque serialized bytes. ``group_id`` ties the task to
    a cancellable group. ``depends_on`` lists the ids of tasks in the same graph whose
    results this task needs, so the scheduler can order a graph without unpickling it.
    """

    TYPE_CODE: ClassVar[int] = 1

    task_id: bytes
    function: bytes
    args: bytes
    group_id: bytes | None = None
    depends_on: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        """Reject fields of the wrong type or size with ``ProtocolError``."""
        if type(self.task_id) is not bytes or len(self.task_id) != TASK_ID_BYTES:
            raise _field_error("Task.task_id", _ID, self.task_id)
        if type(self.function) is not bytes:
            raise _field_error("Task.function", "bytes", self.function)
        if type(self.args) is not bytes:
            raise _field_error("Task.args", "bytes", self.args)
        group_id = self.group_id
        if group_id is not None and (type(group_id) is not bytes or len(group_id) != TASK_ID_BYTES):
            raise _field_error("Task.group_id", _ID_OR_NONE, group_id)
        if type(self.depends_on) is not tuple:
            raise _field_error("Task.depends_on", _IDS, self.depends_on)
        if self.depends_on:
            _check_ids("Task.depends_on", self.depends_on)


@dataclass(frozen=True, slots=True)
class TaskCancel:
    """Ask the scheduler to cancel a task, or every task of a group.

    ``task_id`` is a task id or a group id. ``force`` asks for a running task to be
    interrupted rather than only dequeued.
    """

    TYPE_CODE: ClassVar[int] = 2

    task_id: bytes
    force: bool = False

    def __post_init__(self) -> None:
        """Reject fields of the wrong type or size with ``ProtocolError``."""
        if type(self.task_id) is not bytes or len(self.task_id) != TASK_ID_BYTES:
            raise _field_error("TaskCancel.task_id", _ID, self.task_id)
        if type(self.force) is not bool:
            raise _field_error("TaskCancel.force", "bool", self.force)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A liveness probe; the scheduler answers with a ``HeartbeatEcho`` of the same seq."""

    TYPE_CODE: ClassVar[int] = 3

    seq: int

    def __post_init__(self) -> None:
        """Reject a seq that is not an int in [0, 2**63) with ``ProtocolError``."""
        _check_seq("Heartbeat.seq", self.seq)


@dataclass(frozen=True, slots=True)
class Disconnect:
    """The sender is going away; may be sent by either side. Has no fields."""

    TYPE_CODE: ClassVar[int] = 4


# ---------------------------------------------------------------------------
# Scheduler -> client
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskResult:
    """How a task ended.

    ``payload`` is opaque serialized bytes: the return value on success, the exception
    and its remote traceback text on failure.
    """

    TYPE_CODE: ClassVar[int] = 5

    task_id: bytes
    status: ResultStatus
    payload: bytes

    def __post_init__(self) -> None:
        """Reject bad fields with ``ProtocolError``; accept ``status`` as its string value."""
        if type(self.task_id) is not bytes or len(self.task_id) != TASK_ID_BYTES:
            raise _field_error("TaskResult.task_id", _ID, self.task_id)
        status = self.status
        if type(status) is not ResultStatus:
            object.__setattr__(
                self, "status", _to_enum("TaskResult.status", status, _RESULT_STATUS_BY_VALUE)
            )
        if type(self.payload) is not bytes:
            raise _field_error("TaskResult.payload", "bytes", self.payload)


@dataclass(frozen=True, slots=True)
class TaskCancelConfirm:
    """The scheduler's answer to a ``TaskCancel`` for ``task_id``."""

    TYPE_CODE: ClassVar[int] = 6

    task_id: bytes
    kind: ConfirmKind

    def __post_init__(self) -> None:
        """Reject bad fields with ``ProtocolError``; accept ``kind`` as its string value."""
        if type(self.task_id) is not bytes or len(self.task_id) != TASK_ID_BYTES:
            raise _field_error("TaskCancelConfirm.task_id", _ID, self.task_id)
        kind = self.kind
        if type(kind) is not ConfirmKind:
            object.__setattr__(
                self, "kind", _to_enum("TaskCancelConfirm.kind", kind, _CONFIRM_KIND_BY_VALUE)
            )


@dataclass(frozen=True, slots=True)
class HeartbeatEcho:
    """The scheduler's answer to the ``Heartbeat`` with the same ``seq``."""

    TYPE_CODE: ClassVar[int] = 7

    seq: int

    def __post_init__(self) -> None:
        """Reject a seq that is not an int in [0, 2**63) with ``ProtocolError``."""
        _check_seq("HeartbeatEcho.seq", self.seq)


# ---------------------------------------------------------------------------
# Observability: any peer (``futurefsm status``) -> scheduler -> that peer
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusRequest:
    """Ask the scheduler for its counters; it answers with a ``Status`` of the same seq.

    Sending one does not make the sender a client of the scheduler (no task book is
    kept for it), so ``futurefsm status`` leaves nothing behind.
    """

    TYPE_CODE: ClassVar[int] = 8

    seq: int

    def __post_init__(self) -> None:
        """Reject a seq that is not an int in [0, 2**63) with ``ProtocolError``."""
        _check_seq("StatusRequest.seq", self.seq)


@dataclass(frozen=True, slots=True)
class Status:
    """The scheduler's counters, answering the ``StatusRequest`` with the same ``seq``.

    ``clients``: clients it holds state for; ``queued``: tasks waiting for a worker or
    for their dependencies; ``running``: tasks on a worker (or finished with their
    result held back by a ``result_delay``); ``done``: results sent since it started;
    ``cancels``: TaskCancels received; ``protocol_errors``: bad frames received.
    """

    TYPE_CODE: ClassVar[int] = 9

    seq: int
    clients: int
    queued: int
    running: int
    done: int
    cancels: int
    protocol_errors: int

    def __post_init__(self) -> None:
        """Reject a field that is not an int in [0, 2**63) with ``ProtocolError``."""
        for name in _STATUS_FIELDS:
            _check_seq(f"Status.{name}", getattr(self, name))


_STATUS_FIELDS = ("seq", "clients", "queued", "running", "done", "cancels", "protocol_errors")


# ---------------------------------------------------------------------------
# Either direction
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Batch:
    """Several messages in one frame, handled in order as if each had come alone.

    ``frames`` are encoded messages (``encode``), none of them a Batch. Sending many
    messages as one frame costs one ZeroMQ call, one GIL hand-off and one wake-up of
    the receiver instead of one each; ``batch_frames`` builds them and ``unbatch``
    takes them apart (a bad inner frame is an error of its own, the others stand).
    """

    TYPE_CODE: ClassVar[int] = 10

    frames: tuple[bytes, ...]

    def __post_init__(self) -> None:
        """Reject anything but a non-empty tuple of bytes with ``ProtocolError``."""
        frames = self.frames
        if type(frames) is not tuple or not frames:
            raise _field_error("Batch.frames", "a non-empty tuple of frames", frames)
        for index, frame in enumerate(frames):
            if type(frame) is not bytes:
                raise _field_error(f"Batch.frames[{index}]", "bytes", frame)


Message: TypeAlias = (
    Task
    | TaskCancel
    | Heartbeat
    | Disconnect
    | TaskResult
    | TaskCancelConfirm
    | HeartbeatEcho
    | StatusRequest
    | Status
    | Batch
)
"""Any protocol message, in either direction."""

_MESSAGE_CLASSES: tuple[type[Any], ...] = (
    Task,
    TaskCancel,
    Heartbeat,
    Disconnect,
    TaskResult,
    TaskCancelConfirm,
    HeartbeatEcho,
    StatusRequest,
    Status,
    Batch,
)


def _fields_getter(cls: type[Any]) -> Callable[[Any], tuple[Any, ...]]:
    """Return a fast function giving a message's field values in declaration order."""
    names = [f.name for f in fields(cls)]
    if not names:
        return lambda message: ()
    if len(names) == 1:
        get_one = attrgetter(names[0])
        return lambda message: (get_one(message),)
    return attrgetter(*names)


# Precomputed once so encode/decode do no reflection per call.
_ENCODERS: dict[type[Any], tuple[tuple[int, int], Callable[[Any], tuple[Any, ...]]]] = {
    cls: ((PROTOCOL_VERSION, cls.TYPE_CODE), _fields_getter(cls)) for cls in _MESSAGE_CLASSES
}
_DECODERS: dict[int, tuple[type[Any], int]] = {
    cls.TYPE_CODE: (cls, len(fields(cls))) for cls in _MESSAGE_CLASSES
}
assert len(_DECODERS) == len(_MESSAGE_CLASSES), "duplicate TYPE_CODE"


def _size_error(size: int) -> ProtocolError:
    """Build the error for a frame over ``MAX_FRAME_BYTES``."""
    return ProtocolError(f"frame of {size} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")


def encode(message: Message) -> bytes:
    """Encode one message as one frame.

    Raises ``ProtocolError`` if ``message`` is not a protocol message or the frame would
    exceed ``MAX_FRAME_BYTES``. Fields are not re-validated: the constructor did that.
    """
    encoder = _ENCODERS.get(type(message))
    if encoder is None:
        raise ProtocolError(f"cannot encode {type(message).__name__}: not a protocol message")
    head, get_fields = encoder
    try:
        # (msgpack >= 1.0 packs bytes as bin and str as str by default.)
        frame = msgpack.packb((*head, *get_fields(message)))
    except Exception as exc:  # e.g. a bin over 4 GiB; surface it as a protocol error
        raise ProtocolError(f"cannot encode {type(message).__name__}: {exc!r}") from exc
    if len(frame) > MAX_FRAME_BYTES:
        raise _size_error(len(frame))
    return frame


_TASK_HEAD = (PROTOCOL_VERSION, Task.TYPE_CODE)


def encode_task(task_id: bytes, function: bytes, args: bytes) -> bytes:
    """``encode(Task(task_id, function, args))``, byte for byte, without building the
    Task: the submit path's frame (a plain Task, in no graph).

    Fields of the wrong type or size take the long way, so the error is the one the
    ``Task`` constructor raises, naming the field.
    """
    if (
        type(task_id) is bytes
        and len(task_id) == TASK_ID_BYTES
        and type(function) is bytes
        and type(args) is bytes
    ):
        frame = msgpack.packb((*_TASK_HEAD, task_id, function, args, None, ()))
        if len(frame) > MAX_FRAME_BYTES:
            raise _size_error(len(frame))
        return frame
    return encode(Task(task_id, function, args))


def decode(frame: bytes | bytearray | memoryview) -> Message:
    """Decode and validate one frame into a message.

    Raises ``ProtocolError`` -- and nothing else, whatever ``frame`` holds -- naming what
    was wrong: not bytes, oversized, not msgpack, trailing data, not an array, wrong
    version, unknown type, wrong arity, or a bad field.
    """
    if isinstance(frame, (bytes, bytearray)):
        size = len(frame)
    elif isinstance(frame, memoryview):
        size = frame.nbytes
    else:
        raise ProtocolError(f"frame must be bytes-like, got {type(frame).__name__}")
    if size > MAX_FRAME_BYTES:
        raise _size_error(size)
    try:
        # msgpack >= 1.0's unpackb limits every bin, str, array, map and ext length to
        # the frame's size by default: no item can be longer than the frame holding
        # it, so a lying length header cannot allocate more than that.
        items = _unpackb(frame, use_list=False)
    except msgpack.ExtraData as exc:
        raise ProtocolError(f"trailing data: {len(exc.extra)} bytes after the message") from exc
    except Exception as exc:  # msgpack raises many types (ValueError, StackError, ...)
        raise ProtocolError(f"not msgpack: {exc!r}") from exc

    if type(items) is not tuple:
        raise ProtocolError(f"expected a msgpack array, got {_describe(items)}")
    if len(items) < 2:
        raise ProtocolError(
            f"message array has {len(items)} items, expected at least 2 (version, type)"
        )
    version, type_code = items[0], items[1]
    if type(version) is not int:
        raise ProtocolError(f"protocol version: expected int, got {_describe(version)}")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {version} (expected {PROTOCOL_VERSION})")
    if type(type_code) is not int:
        raise ProtocolError(f"message type: expected int, got {_describe(type_code)}")
    decoder = _DECODERS.get(type_code)
    if decoder is None:
        raise ProtocolError(f"unknown message type {type_code}")
    cls, arity = decoder
    if len(items) - 2 != arity:
        raise ProtocolError(f"{cls.__name__} expects {arity} fields, got {len(items) - 2}")
    fast = _FAST_BUILDERS.get(cls)
    if fast is not None:
        message = fast(items)
        if message is not None:
            return message
    # The constructor validates every field and raises only ProtocolError.
    return cls(*items[2:])


# Fast builders for the messages sent once per task. Each checks the common, valid
# case inline and builds the message without the frozen dataclass's __init__ (which
# sets every field through object.__setattr__, then validates it again); for anything
# else it returns None and decode() calls the constructor, whose __post_init__ stays
# the one place that says what is wrong. A fast builder accepts exactly what
# __post_init__ accepts, or less.

_unpackb = msgpack.unpackb
_new = object.__new__


def _slot_setters(cls: type[Any]) -> tuple[Callable[[Any, Any], None], ...]:
    """The slot descriptors' setters of ``cls``'s fields, in declaration order."""
    return tuple(vars(cls)[f.name].__set__ for f in fields(cls))


_SET_TASK = _slot_setters(Task)
_SET_RESULT = _slot_setters(TaskResult)
_SET_CONFIRM = _slot_setters(TaskCancelConfirm)


def _fast_task(items: tuple[Any, ...]) -> Task | None:
    _, _, task_id, function, args, group_id, depends_on = items
    if (
        type(task_id) is bytes
        and len(task_id) == TASK_ID_BYTES
        and type(function) is bytes
        and type(args) is bytes
        and group_id is None
        and depends_on == ()
    ):
        task = _new(Task)
        set_id, set_function, set_args, set_group, set_depends = _SET_TASK
        set_id(task, task_id)
        set_function(task, function)
        set_args(task, args)
        set_group(task, None)
        set_depends(task, ())
        return task
    return None


def _fast_result(items: tuple[Any, ...]) -> TaskResult | None:
    _, _, task_id, status, payload = items
    if type(task_id) is bytes and len(task_id) == TASK_ID_BYTES and type(payload) is bytes:
        member = _RESULT_STATUS_BY_VALUE.get(status) if type(status) is str else None
        if member is not None:
            result = _new(TaskResult)
            set_id, set_status, set_payload = _SET_RESULT
            set_id(result, task_id)
            set_status(result, member)
            set_payload(result, payload)
            return result
    return None


def _fast_confirm(items: tuple[Any, ...]) -> TaskCancelConfirm | None:
    _, _, task_id, kind = items
    if type(task_id) is bytes and len(task_id) == TASK_ID_BYTES:
        member = _CONFIRM_KIND_BY_VALUE.get(kind) if type(kind) is str else None
        if member is not None:
            confirm = _new(TaskCancelConfirm)
            set_id, set_kind = _SET_CONFIRM
            set_id(confirm, task_id)
            set_kind(confirm, member)
            return confirm
    return None


_FAST_BUILDERS: dict[type[Any], Callable[[tuple[Any, ...]], Any]] = {
    Task: _fast_task,
    TaskResult: _fast_result,
    TaskCancelConfirm: _fast_confirm,
}


def plain_task(frame: bytes) -> tuple[Any, ...] | None:
    """The decoded array of ``frame`` if it is a valid Task without a group and without
    dependencies, else None.

    For a receiver that handles such Tasks without building the message: the array is
    ``(PROTOCOL_VERSION, Task.TYPE_CODE, task_id, function, args, None, ())``, its
    fields as valid as ``decode`` would have them. None says nothing more: ``decode``
    the frame to get the message, or the ``ProtocolError`` that names what is wrong.
    """
    items = _plain_items(frame, 7, _TASK_CODE)
    if items is not None and items[5] is None and items[6] == ():
        if type(items[3]) is bytes and type(items[4]) is bytes:
            return items
    return None


def _plain_items(frame: bytes, arity: int, code: int) -> tuple[Any, ...] | None:
    """The decoded array of ``frame`` if it is ``arity`` items long, of this protocol
    version and message type ``code``, its task id valid; else None."""
    if len(frame) > MAX_FRAME_BYTES:
        return None
    try:
        items = _unpackb(frame, use_list=False)
    except Exception:
        return None
    if (
        type(items) is tuple
        and len(items) == arity
        and items[0] == PROTOCOL_VERSION
        and items[1] == code
        and type(items[0]) is int
        and type(items[1]) is int
        and type(items[2]) is bytes
        and len(items[2]) == TASK_ID_BYTES
    ):
        return items
    return None


_TASK_CODE = Task.TYPE_CODE


def result_frame(task_id: bytes, status: ResultStatus, payload: bytes) -> bytes:
    """``encode(TaskResult(task_id, status, payload))``, byte for byte, without building
    the message when its fields are plainly valid (a worker's answer to each task);
    anything else goes through the constructor and ``encode``, which raise
    ``ProtocolError`` naming what is wrong."""
    if (
        type(task_id) is bytes
        and len(task_id) == TASK_ID_BYTES
        and type(payload) is bytes
        and type(status) is ResultStatus
    ):
        try:
            frame = _packb((PROTOCOL_VERSION, _RESULT_CODE, task_id, status.value, payload))
        except Exception:  # e.g. a bin over 4 GiB: encode says so
            frame = None
        if frame is not None and len(frame) <= MAX_FRAME_BYTES:
            return frame
    return encode(TaskResult(task_id, status, payload))


_RESULT_CODE = TaskResult.TYPE_CODE
_packb = msgpack.packb


_BATCH_OVERHEAD = 16  # the envelope, and a bin header per frame (at most 5 bytes)


def batch_frames(frames: list[bytes]) -> list[bytes]:
    """``frames`` (encoded messages, none a Batch) as few frames as possible, in
    order: Batches of at most ``MAX_FRAME_BYTES``; a group of one stays itself."""
    out: list[bytes] = []
    group: list[bytes] = []
    size = _BATCH_OVERHEAD
    for frame in frames:
        if group and size + len(frame) + _BATCH_OVERHEAD > MAX_FRAME_BYTES:
            out.append(group[0] if len(group) == 1 else _pack_batch(group))
            group, size = [], _BATCH_OVERHEAD
        group.append(frame)
        size += len(frame) + _BATCH_OVERHEAD
    if group:
        out.append(group[0] if len(group) == 1 else _pack_batch(group))
    return out


def _pack_batch(group: list[bytes]) -> bytes:
    return msgpack.packb((PROTOCOL_VERSION, Batch.TYPE_CODE, group))


def unbatch(message: Message) -> list[tuple[Message | ProtocolError, int]]:
    """The messages ``message`` carries, each with its frame's size: itself for any
    message but a Batch; for a Batch, each inner message in order, or the
    ``ProtocolError`` that names what is wrong with that one (a Batch inside a Batch
    is one)."""
    if type(message) is not Batch:
        return [(message, 0)]
    return [
        (decode_batch_item(index, frame), len(frame)) for index, frame in enumerate(message.frames)
    ]


def decode_batch_item(index: int, frame: bytes) -> Message | ProtocolError:
    """The message in ``frame``, item ``index`` of a Batch, or the ``ProtocolError``
    (returned, not raised) that names what is wrong with it: a Batch inside a Batch
    is one."""
    try:
        inner = decode(frame)
    except ProtocolError as error:
        return ProtocolError(f"Batch.frames[{index}]: {error}")
    if type(inner) is Batch:
        return ProtocolError(f"Batch.frames[{index}]: a Batch inside a Batch")
    return inner


def plain_result(frame: bytes) -> tuple[bytes, ResultStatus, bytes] | None:
    """``(task_id, status, payload)`` if ``frame`` is a valid TaskResult, else None.

    For a receiver of many results (the client) that needs their fields, not the
    message: ``decode`` builds a ``TaskResult`` and costs three times as much. None
    says nothing more: ``decode`` the frame to get the message, or the
    ``ProtocolError`` that names what is wrong.
    """
    items = _plain_items(frame, 5, _RESULT_CODE)
    if items is not None:
        _, _, task_id, status, payload = items
        if type(payload) is bytes and type(status) is str:
            member = _RESULT_STATUS_BY_VALUE.get(status)
            if member is not None:
                return task_id, member, payload
    return None


_IDS_PER_DRAW = 256
_id_lock = threading.Lock()
_id_pool = b""
_id_at = 0


def _forget_ids() -> None:
    """In a forked child: draw new ids, never the parent's."""
    global _id_pool, _id_at, _id_lock
    _id_lock = threading.Lock()
    _id_pool, _id_at = b"", 0


os.register_at_fork(after_in_child=_forget_ids)


def new_task_id() -> bytes:
    """Return a fresh random task (or group) id of ``TASK_ID_BYTES`` bytes.

    The bytes come from ``os.urandom``, drawn for ``_IDS_PER_DRAW`` ids at a time: one
    system call (which lets go of the GIL, handing it to another thread) per 256
    submits rather than per submit.
    """
    global _id_pool, _id_at
    with _id_lock:
        at = _id_at
        if at >= len(_id_pool):
            _id_pool, at = os.urandom(TASK_ID_BYTES * _IDS_PER_DRAW), 0
        _id_at = at + TASK_ID_BYTES
        return _id_pool[at : at + TASK_ID_BYTES]
