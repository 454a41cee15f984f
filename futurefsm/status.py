"""``futurefsm status ADDRESS``: ask a running scheduler for its counters.

One ``StatusRequest`` goes out on a fresh DEALER socket and the matching ``Status`` is
printed. The scheduler keeps no state for the asker, so nothing is left behind.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import zmq

from .protocol import ProtocolError, Status, StatusRequest, decode, encode

__all__ = ["main", "query_status"]

_ROWS = (
    ("clients", "clients"),
    ("queued", "queued"),
    ("running", "running"),
    ("done", "done"),
    ("cancels", "cancels"),
    ("protocol errors", "protocol_errors"),
)


def query_status(address: str, timeout: float = 5.0) -> Status:
    """The ``Status`` of the scheduler at ``address``.

    Raises ``TimeoutError`` if no matching answer arrives within ``timeout`` seconds
    (frames that are not that answer are skipped).
    """
    seq = int.from_bytes(os.urandom(7), "big")
    context: zmq.Context[Any] = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.connect(address)
        socket.send(encode(StatusRequest(seq)))
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if not socket.poll(max(1, int(remaining * 1000))):
                break
            try:
                message = decode(socket.recv())
            except ProtocolError:
                continue
            if isinstance(message, Status) and message.seq == seq:
                return message
        raise TimeoutError(f"no answer from {address} within {timeout:g} s")
    finally:
        socket.close(linger=0)
        context.term()


def main(address: str, *, timeout: float = 5.0) -> int:
    """Print the scheduler's counters; 0 on success, 1 without an answer, 2 for a bad
    address."""
    if "://" not in address:
        print(
            f"futurefsm status: {address!r} is not a ZeroMQ address: did you mean tcp://{address}?",
            file=sys.stderr,
        )
        return 2
    try:
        status = query_status(address, timeout)
    except zmq.ZMQError as error:
        print(f"futurefsm status: cannot connect to {address}: {error}", file=sys.stderr)
        return 2
    except TimeoutError as error:
        print(f"futurefsm status: {error}", file=sys.stderr)
        return 1
    width = max(len(label) for label, _ in _ROWS)
    print(f"scheduler {address}")
    for label, field in _ROWS:
        print(f"  {label:<{width}}  {getattr(status, field):>8}")
    return 0
