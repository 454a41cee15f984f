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
import zmq.auth

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


def query_status(
    address: str,
    timeout: float = 5.0,
    *,
    secret_key: str | None = None,
    server_key: str | None = None,
) -> Status:
    """The ``Status`` of the scheduler at ``address``.

    ``secret_key`` and ``server_key`` (key files, as for ``Client``): ask a scheduler
    that serves CurveZMQ; this client's public key must be one it admits.
    Raises ``TimeoutError`` if no matching answer arrives within ``timeout`` seconds
    (frames that are not that answer are skipped).
    """
    seq = int.from_bytes(os.urandom(7), "big")
    context: zmq.Context[Any] = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        if secret_key is not None or server_key is not None:
            if secret_key is None or server_key is None:
                raise ValueError("--secret-key and --server-key: give both or neither")
            public, secret = zmq.auth.load_certificate(secret_key)
            if secret is None:
                raise ValueError(f"{secret_key} holds no secret key (pass NAME.key_secret)")
            socket.curve_publickey, socket.curve_secretkey = public, secret
            socket.curve_serverkey = zmq.auth.load_certificate(server_key)[0]
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


def main(
    address: str,
    *,
    timeout: float = 5.0,
    secret_key: str | None = None,
    server_key: str | None = None,
) -> int:
    """Print the scheduler's counters; 0 on success, 1 without an answer, 2 for a bad
    address."""
    if "://" not in address:
        print(
            f"futurefsm status: {address!r} is not a ZeroMQ address: did you mean tcp://{address}?",
            file=sys.stderr,
        )
        return 2
    try:
        status = query_status(address, timeout, secret_key=secret_key, server_key=server_key)
    except TimeoutError as error:
        print(f"futurefsm status: {error}", file=sys.stderr)
        return 1
    except zmq.ZMQError as error:
        print(f"futurefsm status: cannot connect to {address}: {error}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as error:  # a key file
        print(f"futurefsm status: {error}", file=sys.stderr)
        return 2
    width = max(len(label) for label, _ in _ROWS)
    print(f"scheduler {address}")
    for label, field in _ROWS:
        print(f"  {label:<{width}}  {getattr(status, field):>8}")
    return 0
