"""``futurefsm scheduler``: run futurefsm's scheduler until SIGINT or SIGTERM.

It is the real scheduler (keys, worker processes, kill-to-cancel, liveness); the class
is named ``SchedulerStub`` for its fault scripting (``--behaviour``), which is off
unless a Behaviour file is given.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

import zmq

from .behaviour import Behaviour
from .stub import SchedulerStub

__all__ = ["main"]


def main(
    address: str,
    *,
    workers: int,
    behaviour_file: str | None,
    threads: bool = False,
    log_messages: bool = False,
    secret_key: str | None = None,
    client_keys: str | None = None,
    insecure: bool = False,
) -> int:
    """Serve on ``address`` with ``workers`` worker processes (threads if ``threads``)
    and the Behaviour in ``behaviour_file`` (a JSON object of Behaviour fields) applied
    to every task; keep the message log if ``log_messages``.

    ``secret_key`` (a ``.key_secret`` file) and ``client_keys`` (a directory of
    ``.key`` files): serve CurveZMQ to those clients only. Without keys, an address
    beyond this host is refused unless ``insecure``.

    Binds exactly the address it is given (the command's default is loopback). Prints
    ``futurefsm scheduler listening on <address actually bound>`` once serving, runs
    until SIGINT or SIGTERM, stops cleanly and returns 0; returns 2 for a bad
    Behaviour file, worker count, key or unsafe bind and 1 if the address cannot be
    bound.
    """
    try:
        behaviour = Behaviour.from_json_file(behaviour_file) if behaviour_file else None
    except (OSError, ValueError) as exc:
        print(f"futurefsm scheduler: bad --behaviour file: {exc}", file=sys.stderr)
        return 2
    stop_requested = threading.Event()
    previous = _install_stop_handlers(stop_requested)
    try:
        try:
            stub = SchedulerStub(
                address,
                workers=workers,
                threads=threads,
                behaviour=behaviour,
                log_messages=log_messages,
                secret_key=secret_key,
                client_keys=client_keys,
                insecure=insecure,
            )
        except ValueError as exc:
            print(f"futurefsm scheduler: {exc}", file=sys.stderr)
            return 2
        except zmq.ZMQError as exc:
            print(
                f"futurefsm scheduler: cannot bind {address}: {exc}{_hint(address)}",
                file=sys.stderr,
            )
            return 1
        with stub:
            print(f"futurefsm scheduler listening on {stub.bound_address}", flush=True)
            if stub.server_key is not None:
                public_file = str(secret_key).removesuffix("_secret")
                print(
                    f"futurefsm scheduler: CurveZMQ: admits the client keys in {client_keys}; "
                    f"clients pass server_key={public_file}",
                    flush=True,
                )
            # A timeout keeps the wait responsive to signals on every platform.
            while not stop_requested.wait(0.5):
                pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def _install_stop_handlers(stop_requested: threading.Event) -> dict[int, Any]:
    """Make SIGINT and SIGTERM set ``stop_requested``; return the handlers replaced.

    Signal handlers can only be installed from the main thread; elsewhere (e.g. a test
    calling ``main`` in a thread) none are installed.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.getsignal(signum)
        signal.signal(signum, request_stop)
    return previous


def _hint(address: str) -> str:
    """A hint for an address ZeroMQ could not bind, or ""."""
    if "://" not in address:
        return f" (a ZeroMQ address names its transport: did you mean tcp://{address}?)"
    return ""
