"""``futurefsm status ADDRESS``: ask a running scheduler for its counters.

One ``StatusRequest`` goes out on a fresh DEALER socket and the matching ``Status`` is
printed. The scheduler keeps no state for the asker, so nothing is left behind.

Without an answer, a socket monitor tells why: nothing listening (no connection), a
scheduler that turned the handshake down (it serves CurveZMQ and this asker has no
keys, or keys it does not admit: ``HandshakeRefused``), or one that took the
connection but did not answer in time (``TimeoutError``).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from .addresses import check_address
from .errors import HandshakeRefused
from .keys import load_public_key, load_secret_key
from .protocol import ProtocolError, Status, StatusRequest, decode, encode

__all__ = ["HandshakeRefused", "main", "query_status"]


_MONITORED = int(
    zmq.EVENT_CONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)

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
    (frames that are not that answer are skipped; the message says whether anything
    accepted the connection), ``HandshakeRefused`` as soon as a scheduler turns the
    handshake down (keys missing, not admitted, or not expected).
    """
    seq = int.from_bytes(os.urandom(7), "big")
    keyed = secret_key is not None or server_key is not None
    if keyed and (secret_key is None or server_key is None):
        raise ValueError("--secret-key and --server-key: give both or neither")
    context: zmq.Context[Any] = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    monitor = socket.get_monitor_socket(_MONITORED)
    connected = False
    try:
        if secret_key is not None and server_key is not None:
            public, secret = load_secret_key(secret_key, "--secret-key")
            socket.curve_publickey, socket.curve_secretkey = public, secret
            socket.curve_serverkey = load_public_key(server_key, "--server-key")
        socket.connect(address)
        socket.send(encode(StatusRequest(seq)))
        poller = zmq.Poller()
        poller.register(socket, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            ready = dict(poller.poll(max(1, int(remaining * 1000))))
            if monitor in ready:
                connected |= _handshake_events(monitor, address, keyed)
            if socket not in ready:
                continue
            try:
                message = decode(socket.recv())
            except ProtocolError:
                continue
            if isinstance(message, Status) and message.seq == seq:
                return message
        connected |= _handshake_events(monitor, address, keyed)
        if not connected:
            raise TimeoutError(
                f"no answer from {address} within {timeout:g} s: nothing accepted a "
                "connection there (is the scheduler running, on that host and port?)"
            )
        raise TimeoutError(
            f"no answer from {address} within {timeout:g} s: something took the "
            "connection but did not answer (busy, or not a futurefsm scheduler)"
        )
    finally:
        socket.disable_monitor()
        monitor.close(linger=0)
        socket.close(linger=0)
        context.term()


def _handshake_events(monitor: zmq.Socket[Any], address: str, keyed: bool) -> bool:
    """Read the monitor's events: True if a connection was made; ``HandshakeRefused``
    if its handshake failed."""
    connected = False
    while True:
        try:
            event = int(recv_monitor_message(monitor, zmq.NOBLOCK)["event"])
        except zmq.Again:
            return connected
        if event == zmq.EVENT_CONNECTED:
            connected = True
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            raise HandshakeRefused(
                f"the scheduler at {address} refused this key: pass a --secret-key whose "
                "public key is in its --client-keys directory"
            )
        elif not keyed:
            raise HandshakeRefused(
                f"the scheduler at {address} is running but refused the handshake: it "
                "serves CurveZMQ; pass --secret-key YOUR.key_secret --server-key "
                "SCHEDULER.key"
            )
        else:
            raise HandshakeRefused(
                f"the scheduler at {address} is running but refused the handshake: a "
                "wrong --server-key, or a scheduler that uses no keys (then omit them)"
            )


def main(
    address: str,
    *,
    timeout: float = 5.0,
    secret_key: str | None = None,
    server_key: str | None = None,
) -> int:
    """Print the scheduler's counters; 0 on success, 1 without an answer, 2 for a bad
    address or key, 3 when a scheduler is there but refused the handshake (keys)."""
    try:
        check_address(address)
        status = query_status(address, timeout, secret_key=secret_key, server_key=server_key)
    except TimeoutError as error:
        print(f"futurefsm status: {error}", file=sys.stderr)
        return 1
    except HandshakeRefused as error:
        print(f"futurefsm status: {error}", file=sys.stderr)
        return 3
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
