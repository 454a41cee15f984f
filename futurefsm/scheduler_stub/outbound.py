"""The scheduler's outbound messages: ``Outbound``, the part of ``SchedulerStub`` that
sends to clients (docs/scheduler.md).

Results and cancel confirms wait in a per-client ``_Outbox`` until the I/O loop has
nothing else ready (or a few turns passed) and then go out together, each client's in
as few ``Batch`` frames as fit ``MAX_FRAME_BYTES``, in the order they were produced.
Any other message (``_send``) goes at once, after what waits for the same client. Every
message is counted (and logged, with the log on) before it is handed to the socket,
and taken back if the socket refuses it (a client gone: ``unroutable``).
"""

from __future__ import annotations

import logging
from typing import Any

import msgpack
import zmq

from ..protocol import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Batch,
    ConfirmKind,
    Disconnect,
    HeartbeatEcho,
    Message,
    ResultStatus,
    TaskCancelConfirm,
    TaskResult,
    encode,
)
from .observe import LogRecord, Observations

__all__ = ["Outbound"]

logger = logging.getLogger("futurefsm.scheduler_stub")

_NOBLOCK = int(zmq.NOBLOCK)  # plain ints: pyzmq's flag enums cost time per call
_NOBLOCK_SNDMORE = int(zmq.NOBLOCK | zmq.SNDMORE)


class Outbound:
    """Sending to clients, for ``SchedulerStub`` (a base class: the server owns the
    socket and the state listed below)."""

    _router: zmq.Socket[Any]
    _observed: Observations
    _log_messages: bool
    _outgoing: dict[bytes, _Outbox]

    def _warn(self, message: str, *args: Any) -> None:
        raise NotImplementedError

    def _count(self, stat: str) -> None:
        raise NotImplementedError

    def _send_confirm(
        self, identity: bytes, task_id: bytes, kind: ConfirmKind, times: int = 1
    ) -> None:
        """Queue ``times`` TaskCancelConfirms (``_queue_out``)."""
        confirm = TaskCancelConfirm(task_id, kind)
        if logger.isEnabledFor(logging.INFO):
            logger.info("cancel of %s: %s, to client %s", task_id.hex(), kind.value, identity.hex())
        frame = encode(confirm)
        for _ in range(times):
            self._queue_out(identity, frame, confirm)

    def _send_result(
        self, identity: bytes, task_id: bytes, status: ResultStatus, frame: bytes | memoryview
    ) -> None:
        """Queue an encoded TaskResult (no message object is built unless it is logged)."""
        self._queue_out(identity, frame, (task_id, status))

    def _queue_out(
        self,
        identity: bytes,
        frame: bytes | memoryview,
        what: TaskCancelConfirm | tuple[bytes, ResultStatus],
    ) -> None:
        """Results and confirms wait until nothing else is ready (``_run``) and go out
        together (``_flush_outgoing``: one Batch frame for a client's lot), counted then."""
        box = self._outgoing.get(identity)
        if box is None:
            box = self._outgoing[identity] = _Outbox(self._log_messages)
        if type(what) is TaskCancelConfirm:
            box.confirms.append(len(box.frames))
        box.frames.append(frame)
        if box.logged is not None:
            # Logged now, in the order they were produced; taken back if unsent.
            box.logged.append(self._observed.note("out", identity, what, len(frame)))

    def _send(
        self,
        identity: bytes,
        message: Message,
        *,
        quiet: bool = False,
    ) -> None:
        """Send ``message`` at once, after what waits for the same client, so a client
        gets every message in the order it was sent here (no warning if ``quiet``)."""
        frame = encode(message)
        stat = _OUT_STATS.get(type(message))
        # Logged and counted before the send: a peer that has the reply must find it in
        # the log and the stats already. Taken back if the send fails.
        observed = self._observed
        logged = observed.note("out", identity, message, len(frame)) if observed.logging else None
        if stat is not None:
            observed.count(stat)
        box = self._outgoing.pop(identity, None)
        if box is not None:
            self._flush_to(identity, box)
        try:
            # Two sends with plain int flags: cheaper than send_multipart, and with
            # ROUTER_MANDATORY an unroutable identity fails on the first, sending nothing.
            self._router.send(identity, _NOBLOCK_SNDMORE)
            self._router.send(frame, _NOBLOCK)
        except zmq.ZMQError as exc:
            with observed.lock:
                if stat is not None:
                    observed.stats[stat] -= 1
                observed.unlog([logged])
            # EHOSTUNREACH: the peer is gone (ROUTER_MANDATORY). EAGAIN cannot happen with
            # no high water mark, but is accounted for the same way if it does.
            self._count("unroutable")
            if quiet:
                return
            self._warn(
                "scheduler stub: could not send %s to client %r: %s",
                type(message).__name__,
                identity,
                exc.strerror,
            )

    def _flush_outgoing(self) -> None:
        """Send the results and confirms that wait, each client's in as few frames as
        it takes (``Batch``es under ``MAX_FRAME_BYTES``), in order."""
        outgoing, self._outgoing = self._outgoing, {}
        for identity, box in outgoing.items():
            self._flush_to(identity, box)

    def _flush_to(self, identity: bytes, box: _Outbox) -> None:
        frames, confirms = box.frames, len(box.confirms)
        # Counted before the send: a peer that has them must find them in the stats.
        observed = self._observed
        with observed.lock:
            observed.stats["results_sent"] += len(frames) - confirms
            if confirms:
                observed.stats["confirms_sent"] += confirms
        router = self._router
        start, count = 0, len(frames)
        while start < count:
            end, size = start, _BATCH_OVERHEAD
            while end < count and (
                end == start or size + len(frames[end]) + _BATCH_OVERHEAD <= MAX_FRAME_BYTES
            ):
                size += len(frames[end]) + _BATCH_OVERHEAD
                end += 1
            if end - start == 1:
                frame = frames[start]
            elif end - start == count:
                frame = msgpack.packb((PROTOCOL_VERSION, Batch.TYPE_CODE, frames))
            else:
                frame = msgpack.packb((PROTOCOL_VERSION, Batch.TYPE_CODE, frames[start:end]))
            try:
                router.send(identity, _NOBLOCK_SNDMORE)
                router.send(frame, _NOBLOCK)
            except zmq.ZMQError as exc:
                self._unsent(identity, box, start, exc)
                return
            start = end

    def _unsent(self, identity: bytes, box: _Outbox, start: int, exc: zmq.ZMQError) -> None:
        """``box``'s messages from ``start`` on could not be sent: take back their
        counts and log records."""
        unsent = len(box.frames) - start
        confirms = sum(1 for position in box.confirms if position >= start)
        observed = self._observed
        with observed.lock:
            observed.stats["results_sent"] -= unsent - confirms
            observed.stats["confirms_sent"] -= confirms
            observed.unlog((box.logged or [])[start:])
            # EHOSTUNREACH: the peer is gone (ROUTER_MANDATORY).
            observed.stats["unroutable"] += unsent
        first = "TaskCancelConfirm" if start in box.confirms else "TaskResult"
        self._warn(
            "scheduler stub: could not send %d messages (the first a %s) to client %r: %s",
            unsent,
            first,
            identity,
            exc.strerror,
        )


class _Outbox:
    """The results and confirms waiting to go to one client, in order."""

    __slots__ = ("confirms", "frames", "logged")

    def __init__(self, log: bool) -> None:
        self.frames: list[bytes | memoryview] = []
        """Their encoded frames."""
        self.confirms: list[int] = []
        """Where in ``frames`` the TaskCancelConfirms are (the others are results)."""
        self.logged: list[LogRecord | None] | None = [] if log else None
        """With the log on: their log records, as ``frames``."""


_BATCH_OVERHEAD = 16
"""A Batch's envelope, and a bin header per frame (at most 5 bytes): for its size."""


_OUT_STATS: dict[type[Any], str] = {
    TaskResult: "results_sent",
    TaskCancelConfirm: "confirms_sent",
    HeartbeatEcho: "heartbeats_answered",
    Disconnect: "disconnects_sent",
}
