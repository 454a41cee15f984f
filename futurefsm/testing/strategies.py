"""Hypothesis strategies for futurefsm: triggers, race-kit moves and move sequences,
protocol messages and frames (valid, mutated, garbage), and scheduler-stub
``Behaviour``s.

Everything here draws plain data; nothing starts threads or sockets.
"""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import strategies as st

from ..fsm import Trigger
from ..protocol import (
    PROTOCOL_VERSION,
    TASK_ID_BYTES,
    Batch,
    ConfirmKind,
    Disconnect,
    Heartbeat,
    HeartbeatEcho,
    Message,
    ResultStatus,
    Status,
    StatusRequest,
    Task,
    TaskCancel,
    TaskCancelConfirm,
    TaskResult,
    encode,
)
from ..scheduler_stub import Behaviour, OnCancel
from .actions import DEFAULT_ACTIONS, Action, Move

__all__ = [
    "MESSAGE_STRATEGIES",
    "behaviours",
    "client_messages",
    "frames",
    "garbage_frames",
    "messages",
    "move_sequences",
    "moves",
    "msgpack_values",
    "mutated_frames",
    "raw_frame",
    "scheduler_messages",
    "structurally_mutated_frames",
    "task_ids",
    "triggers",
]


# ---------------------------------------------------------------------------
# Triggers and steps
# ---------------------------------------------------------------------------


def triggers() -> st.SearchStrategy[Trigger]:
    """Any FSM trigger."""
    return st.sampled_from(Trigger)


def moves(
    actions: tuple[Action, ...] = DEFAULT_ACTIONS, futures: int = 1
) -> st.SearchStrategy[Move]:
    """One race-kit ``Move``: an action aimed at one of ``futures`` futures (or at the
    client, for a client-wide action; a callback acting on another gets another)."""

    @st.composite
    def move(draw: st.DrawFn) -> Move:
        action = draw(st.sampled_from(actions))
        if action.scope == "all":
            return Move(action)
        target = draw(st.integers(0, futures - 1))
        if action.needs_other and futures > 1:
            other = draw(st.integers(0, futures - 1).filter(lambda o: o != target))
            return Move(action, target, other)
        return Move(action, target)

    pool = tuple(a for a in actions if futures > 1 or not a.needs_other)
    return move() if pool == tuple(actions) else moves(pool, futures)


def move_sequences(
    actions: tuple[Action, ...] = DEFAULT_ACTIONS,
    futures: int = 1,
    *,
    min_size: int = 0,
    max_size: int = 12,
) -> st.SearchStrategy[list[Move]]:
    """Sequences of moves, for ``run_moves``."""
    return st.lists(moves(actions, futures), min_size=min_size, max_size=max_size)


# ---------------------------------------------------------------------------
# Protocol messages and frames
# ---------------------------------------------------------------------------


def task_ids() -> st.SearchStrategy[bytes]:
    """A task or group id: ``TASK_ID_BYTES`` random bytes."""
    return st.binary(min_size=TASK_ID_BYTES, max_size=TASK_ID_BYTES)


_BLOBS = st.binary(max_size=256)
_SEQS = st.integers(min_value=0, max_value=2**63 - 1)

MESSAGE_STRATEGIES: dict[type[Any], st.SearchStrategy[Any]] = {
    Task: st.builds(
        Task,
        task_id=task_ids(),
        function=_BLOBS,
        args=_BLOBS,
        group_id=st.none() | task_ids(),
        depends_on=st.lists(task_ids(), max_size=4).map(tuple),
    ),
    TaskCancel: st.builds(TaskCancel, task_id=task_ids(), force=st.booleans()),
    Heartbeat: st.builds(Heartbeat, seq=_SEQS),
    Disconnect: st.just(Disconnect()),
    TaskResult: st.builds(
        TaskResult, task_id=task_ids(), status=st.sampled_from(ResultStatus), payload=_BLOBS
    ),
    TaskCancelConfirm: st.builds(
        TaskCancelConfirm, task_id=task_ids(), kind=st.sampled_from(ConfirmKind)
    ),
    HeartbeatEcho: st.builds(HeartbeatEcho, seq=_SEQS),
    StatusRequest: st.builds(StatusRequest, seq=_SEQS),
    Status: st.builds(
        Status,
        seq=_SEQS,
        clients=_SEQS,
        queued=_SEQS,
        running=_SEQS,
        done=_SEQS,
        cancels=_SEQS,
        protocol_errors=_SEQS,
    ),
}
"""A strategy for every message class, keyed by the class."""

# A Batch carries encoded messages of any other kind (never a Batch).
MESSAGE_STRATEGIES[Batch] = st.builds(
    Batch,
    frames=st.lists(
        st.one_of(*MESSAGE_STRATEGIES.values()).map(encode), min_size=1, max_size=4
    ).map(tuple),
)


def messages() -> st.SearchStrategy[Message]:
    """Any valid protocol message, in either direction."""
    return st.one_of(*MESSAGE_STRATEGIES.values())


def client_messages() -> st.SearchStrategy[Message]:
    """Messages a client sends to a scheduler."""
    return st.one_of(*(MESSAGE_STRATEGIES[c] for c in (Task, TaskCancel, Heartbeat, Disconnect)))


def scheduler_messages(
    task_id: st.SearchStrategy[bytes] | None = None,
) -> st.SearchStrategy[Message]:
    """Messages a scheduler sends to a client (``TaskResult``, ``TaskCancelConfirm``,
    ``HeartbeatEcho``); ``task_id`` draws the ids (any id by default)."""
    ids = task_ids() if task_id is None else task_id
    return st.one_of(
        st.builds(TaskResult, task_id=ids, status=st.sampled_from(ResultStatus), payload=_BLOBS),
        st.builds(TaskCancelConfirm, task_id=ids, kind=st.sampled_from(ConfirmKind)),
        MESSAGE_STRATEGIES[HeartbeatEcho],
    )


def frames(strategy: st.SearchStrategy[Message] | None = None) -> st.SearchStrategy[bytes]:
    """Valid frames: encoded messages (of ``strategy``, any message by default)."""
    return (messages() if strategy is None else strategy).map(encode)


def raw_frame(*items: Any) -> bytes:
    """Pack ``items`` as a msgpack array, bypassing all validation."""
    return msgpack.packb(list(items), use_bin_type=True)


def msgpack_values(max_leaves: int = 10) -> st.SearchStrategy[Any]:
    """Arbitrary msgpack-encodable values: nil, bool, ints at the edges of every width,
    floats, str, bin, arrays and maps, nested."""
    ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
    leaves = (
        st.none()
        | st.booleans()
        | ints
        | st.sampled_from([0, 1, -1, 127, 128, 255, 256, 65535, 65536, 2**32, 2**63 - 1, 2**63])
        | st.floats()
        | st.text(max_size=20)
        | st.binary(max_size=40)
        | task_ids()
    )
    return st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=5)
            | st.dictionaries(st.text(max_size=5) | ints, children, max_size=3)
        ),
        max_leaves=max_leaves,
    )


@st.composite
def mutated_frames(draw: st.DrawFn, strategy: st.SearchStrategy[Message] | None = None) -> bytes:
    """A valid frame (of ``strategy``, any message by default) with one to six byte-level
    mutations: bit flips, byte sets, inserts, deletes, truncation, duplication."""
    data = bytearray(draw(frames(strategy)))
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "repeat"]))
        if not data:
            op = "insert"
        index = draw(st.integers(min_value=0, max_value=max(len(data) - 1, 0)))
        if op == "flip":
            data[index] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif op == "set":
            data[index] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xC0, 0xC1, 0xDC, 0xFF]))
        elif op == "insert":
            data[index:index] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[index : index + draw(st.integers(min_value=1, max_value=8))]
        elif op == "truncate":
            del data[index:]
        else:
            data += data[index:]
    return bytes(data)


@st.composite
def structurally_mutated_frames(
    draw: st.DrawFn, strategy: st.SearchStrategy[Message] | None = None
) -> bytes:
    """A valid message re-packed with a structural change: a field replaced by any
    msgpack value, a field dropped or added, the version or type code changed, or the
    whole array wrapped or turned into a map."""
    message = draw(messages() if strategy is None else strategy)
    items: list[Any] = list(msgpack.unpackb(encode(message), raw=False))
    op = draw(st.sampled_from(["replace", "drop", "add", "version", "type", "wrap", "map"]))
    if op == "replace" or (op == "drop" and len(items) <= 2):
        index = draw(st.integers(min_value=0, max_value=len(items) - 1))
        items[index] = draw(msgpack_values())
    elif op == "drop":
        del items[draw(st.integers(min_value=2, max_value=len(items) - 1))]
    elif op == "add":
        items.insert(draw(st.integers(min_value=0, max_value=len(items))), draw(msgpack_values()))
    elif op == "version":
        items[0] = draw(st.integers(min_value=-1, max_value=2**64 - 1) | msgpack_values())
    elif op == "type":
        items[1] = draw(st.integers(min_value=-1, max_value=300) | msgpack_values())
    elif op == "wrap":
        return msgpack.packb([items], use_bin_type=True)
    else:
        return msgpack.packb(dict(enumerate(items)), use_bin_type=True)
    return msgpack.packb(items, use_bin_type=True)


def garbage_frames() -> st.SearchStrategy[bytes]:
    """Frames a peer should never send: random bytes, arbitrary msgpack, mutated and
    structurally mutated valid frames, and envelopes with a bad version."""
    return st.one_of(
        st.binary(max_size=300),
        msgpack_values().map(lambda v: msgpack.packb(v, use_bin_type=True)),
        mutated_frames(),
        structurally_mutated_frames(),
        st.integers(min_value=2, max_value=255).map(lambda v: raw_frame(v, 1)),
        st.just(raw_frame(PROTOCOL_VERSION)),
    )


# ---------------------------------------------------------------------------
# Scheduler stub behaviours
# ---------------------------------------------------------------------------


def behaviours(
    *,
    max_delay: float = 0.05,
    silence: bool = True,
    on_cancel: st.SearchStrategy[OnCancel] | None = None,
) -> st.SearchStrategy[Behaviour]:
    """Any ``Behaviour`` for one task: a short ``result_delay`` (up to ``max_delay``
    seconds), worker death, every ``on_cancel`` mode, dropped and duplicated results,
    and (if ``silence``) a scheduler that stops answering heartbeats."""
    return st.builds(
        Behaviour,
        result_delay=st.sampled_from([0.0, 0.0, max_delay / 5, max_delay]),
        worker_died=st.booleans(),
        on_cancel=st.sampled_from(OnCancel) if on_cancel is None else on_cancel,
        drop_result=st.booleans(),
        duplicate_result=st.booleans(),
        answer_heartbeats=st.booleans() if silence else st.just(True),
    )
