"""Who may connect to a ``SchedulerStub``: CurveZMQ keys, the ZAP check, safe binds.

A scheduler runs whatever its clients send (pickled functions), so a client that can
connect can run code as the scheduler's user. Two rules follow (docs/trust-model.md):

- A stub with keys is a CurveZMQ server: pyzmq's ``zmq.auth`` authenticator thread
  (ZAP) admits only clients whose public key is listed. A refused client is turned
  away in the handshake, so nothing it sends reaches the stub's code.
- A stub without keys binds only to this host (loopback, ``ipc://``, ``inproc://``)
  unless the caller says ``insecure=True``.

Keys are pyzmq certificate files (``zmq.auth.create_certificates``): ``NAME.key``
holds the public key, ``NAME.key_secret`` both keys. In memory a key is its 40-byte
Z85 text, as ``zmq.curve_keypair()`` returns it.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import zmq
import zmq.auth

__all__ = [
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

SecretKey: TypeAlias = "str | os.PathLike[str] | tuple[bytes, bytes]"
"""A secret-key file (``NAME.key_secret``) or an in-memory ``(public, secret)`` pair."""

ClientKeys: TypeAlias = "str | os.PathLike[str] | Iterable[bytes]"
"""A directory of public-key files (``*.key``) or in-memory public keys (Z85 bytes)."""

KEYGEN_HINT = (
    "make keys with `futurefsm keygen KEYS --name scheduler` and one "
    "`futurefsm keygen CLIENTS --name NAME` per client, then run "
    "`futurefsm scheduler --secret-key KEYS/scheduler.key_secret --client-keys CLIENTS` "
    "(clients pass secret_key=THEIR.key_secret, server_key=KEYS/scheduler.key); "
    "or pass --insecure if everyone who can reach the port may run code as this user"
)


def keygen(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Write a new keypair, ``DIR/NAME.key`` (public) and ``DIR/NAME.key_secret``
    (both keys, readable by its owner only), with ``zmq.auth.create_certificates``.

    ``FileExistsError`` rather than overwrite a key; ``ValueError`` for a bad name.
    """
    if not name or name != Path(name).name or name.startswith("."):
        raise ValueError(f"--name: expected a plain file stem, got {name!r}")
    directory = Path(directory)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise FileExistsError(f"{path} exists; not overwriting a key")
    directory.mkdir(parents=True, exist_ok=True)
    old_umask = os.umask(0o077)  # the secret file is never readable by others, even briefly
    try:
        written_public, written_secret = zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old_umask)
    Path(written_public).chmod(0o644)
    Path(written_secret).chmod(0o600)
    return Path(written_public), Path(written_secret)


def keygen_main(directory: str, name: str) -> int:
    """``futurefsm keygen DIR --name NAME``: 0 when written, 1 if it cannot be."""
    try:
        public, secret = keygen(directory, name)
    except (OSError, ValueError) as exc:
        print(f"futurefsm keygen: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {public} (public: give it to the other side)")
    print(f"wrote {secret} (secret: keep it here, readable only by you)")
    return 0


def load_secret_key(key: SecretKey) -> tuple[bytes, bytes]:
    """``(public, secret)`` Z85 keys from a ``.key_secret`` file or a pair in memory."""
    if isinstance(key, tuple):
        public, secret = key
    else:
        try:
            public, secret = zmq.auth.load_certificate(key)
        except (OSError, ValueError) as exc:
            raise ValueError(f"secret key {os.fspath(key)!r}: cannot read it: {exc}") from exc
        if secret is None:
            raise ValueError(
                f"secret key {os.fspath(key)!r} holds only a public key "
                "(pass the NAME.key_secret file that `futurefsm keygen` wrote)"
            )
    _check_z85_key(public, "public key")
    _check_z85_key(secret, "secret key")
    return public, secret


def load_client_keys(keys: ClientKeys) -> frozenset[bytes]:
    """The public keys (Z85) of the clients allowed in, from a directory or an iterable."""
    if isinstance(keys, (str, os.PathLike)):
        directory = Path(keys)
        if not directory.is_dir():
            raise ValueError(f"client keys: {os.fspath(keys)!r} is not a directory")
        loaded = frozenset(zmq.auth.load_certificates(directory))
        if not loaded:
            raise ValueError(
                f"client keys: no public key (*.key) in {os.fspath(keys)!r}; "
                "make one with `futurefsm keygen DIR --name NAME`"
            )
        return loaded
    loaded = frozenset(keys)
    for key in loaded:
        _check_z85_key(key, "client key")
    return loaded


def _check_z85_key(key: object, what: str) -> None:
    if not isinstance(key, bytes) or len(key) != 40:
        raise ValueError(f"{what}: expected 40 bytes of Z85 text, got {key!r:.60}")


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
