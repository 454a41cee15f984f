"""Who may connect to a ``SchedulerStub``: CurveZMQ keys, the ZAP check, safe binds.

A scheduler runs whatever its clients send (pickled functions), so a client that can
connect can run code as the scheduler's user. Two rules follow (docs/trust-model.md):

- A stub with keys is a CurveZMQ server: pyzmq's ``zmq.auth`` authenticator thread
  (ZAP) admits only clients whose public key is listed. A refused client is turned
  away in the handshake, so nothing it sends reaches the stub's code.
- A stub without keys binds only to this host (loopback, ``ipc://``, ``inproc://``)
  unless the caller says ``insecure=True``.

Keys are made and read in ``futurefsm.keys`` (shared with the client); the names
below that it defines are re-exported here for code that imported them from here.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import zmq

from ..keys import (
    KEYGEN_HINT,
    ClientKeys,
    SecretKey,
    keygen,
    keygen_main,
    load_client_keys,
    load_secret_key,
)

__all__ = [
    "KEYGEN_HINT",
    "ClientKeys",
    "CurveServer",
    "SecretKey",
    "check_bind",
    "is_local",
    "keygen",
    "keygen_main",
    "load_client_keys",
    "load_secret_key",
]

logger = logging.getLogger("futurefsm.scheduler_stub")


def is_local(address: str) -> bool:
    """True if ``address`` can only be reached from this host: ``ipc://``, ``inproc://``,
    or TCP on a loopback address (a name counts if every address it resolves to is
    loopback). ``tcp://*``, ``0.0.0.0``, interface names and other hosts are not."""
    transport, _, rest = address.partition("://")
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp" or not rest:
        return False
    host = urlsplit(f"//{rest}").hostname
    if not host or host == "*":
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False  # an interface name (eth0) or an unknown host
    return bool(infos) and all(
        ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos
    )


def check_bind(address: str, secured: bool, insecure: bool) -> None:
    """Refuse to bind ``address`` beyond this host without keys, unless ``insecure``."""
    if secured or insecure or "://" not in address or is_local(address):
        return
    raise ValueError(
        f"refusing to bind {address} without keys: anyone who can reach it could run "
        f"code as this user. To serve other hosts, {KEYGEN_HINT}"
    )


@dataclass(frozen=True, slots=True)
class CurveServer:
    """A stub's CurveZMQ identity and the public keys of the clients it admits."""

    public_key: bytes
    secret_key: bytes
    client_keys: frozenset[bytes]

    @classmethod
    def load(cls, secret_key: SecretKey, client_keys: ClientKeys | None) -> CurveServer:
        """Read the keys; ``client_keys`` is required (a server admitting any key would
        let anyone who knows its public key run code)."""
        if client_keys is None:
            raise ValueError(
                "client_keys: required with secret_key (the public keys of the clients "
                "allowed to connect)"
            )
        public, secret = load_secret_key(secret_key)
        return cls(public, secret, load_client_keys(client_keys))

    def apply(self, router: zmq.Socket[Any]) -> None:
        """Make ``router`` a CurveZMQ server (before it binds)."""
        router.curve_secretkey = self.secret_key
        router.curve_publickey = self.public_key
        router.curve_server = True

    def start_authenticator(self, context: zmq.Context[Any]) -> Authenticator:
        """Start the ZAP handler for ``context``; must run before the socket binds, or
        libzmq admits every client that knows the server's public key."""
        from zmq.auth.thread import ThreadAuthenticator  # imports asyncio: only when used

        class _Authenticator(ThreadAuthenticator):
            """pyzmq's authenticator, noting who was refused (once per peer and key)."""

            peer = ""

            async def handle_zap_message(self, msg: list[bytes]) -> None:
                # The ZAP request's 4th frame is the peer's address; the callback below
                # does not get it, and runs within this call on the same thread.
                self.peer = msg[3].decode("utf-8", "replace") if len(msg) > 3 else "?"
                await super().handle_zap_message(msg)

        checker = Authenticator(self.client_keys)
        authenticator = _Authenticator(context, log=logging.getLogger("futurefsm.zap"))
        authenticator.start()
        authenticator.configure_curve_callback("*", checker)
        checker.bind(authenticator)
        return checker


class Authenticator:
    """The ZAP credentials check: admits the listed client keys, refuses the rest.

    Refusals are counted (``refused``) and logged at warning level once per peer
    address and key; ``stop()`` ends the authenticator thread.
    """

    def __init__(self, client_keys: frozenset[bytes]) -> None:
        self._keys = client_keys
        self._thread: Any = None
        self._logged: set[tuple[str, bytes]] = set()
        self._lock = threading.Lock()
        self.refused = 0
        """Clients refused by key (the monitor also counts other handshake failures)."""

    def bind(self, thread: Any) -> None:
        """Attach the running ``ThreadAuthenticator`` this check belongs to."""
        self._thread = thread

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's credentials-provider hook: ``key`` is the client's Z85 public key."""
        if key in self._keys:
            return True
        peer = getattr(self._thread, "peer", "?")
        with self._lock:
            self.refused += 1
            first = (peer, key) not in self._logged
            if first and len(self._logged) < 10_000:
                self._logged.add((peer, key))
        if first:
            logger.warning(
                "scheduler stub: refused a client from %s: its key %s is not listed "
                "(logged once per peer and key)",
                peer,
                key.decode("ascii", "replace"),
            )
        return False

    def stop(self) -> None:
        """Stop the authenticator thread."""
        if self._thread is not None:
            self._thread.stop()
            self._thread = None
