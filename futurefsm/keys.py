"""CurveZMQ keys: make them, read them, and say what to do when one is wrong.

Shared by the client (``Client(secret_key=..., server_key=...)``, ``futurefsm status``)
and the scheduler (``--secret-key``, ``--client-keys``). Keys are pyzmq certificate
files (``zmq.auth.create_certificates``): ``NAME.key`` holds the public key,
``NAME.key_secret`` both keys. In memory a key is its 40-byte Z85 text, as
``zmq.curve_keypair()`` returns it.

Layout (docs/trust-model.md): each side keeps its ``NAME.key_secret`` to itself; the
scheduler trusts a directory that holds its clients' *public* keys only. ``keygen
--public-to DIR`` copies a new public key there; a secret key found in that directory
is refused, since everyone who may read it could connect as that client.

Every error names what the user gave (``what``: the option or argument as they typed
it, ``--client-keys`` on the command line, ``client_keys`` in Python) and what to do.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TypeAlias

import zmq
import zmq.auth

__all__ = [
    "KEYGEN_HINT",
    "ClientKeys",
    "PublicKey",
    "SecretKey",
    "keygen",
    "keygen_main",
    "load_client_keys",
    "load_public_key",
    "load_secret_key",
]

SecretKey: TypeAlias = "str | os.PathLike[str] | tuple[bytes, bytes]"
"""A secret-key file (``NAME.key_secret``) or an in-memory ``(public, secret)`` pair."""

PublicKey: TypeAlias = "str | os.PathLike[str] | bytes"
"""A public-key file (``NAME.key``) or the key's 40 bytes of Z85 text."""

ClientKeys: TypeAlias = "str | os.PathLike[str] | Iterable[bytes]"
"""A directory of public-key files (``*.key``) or in-memory public keys (Z85 bytes)."""

KEYGEN_HINT = (
    "make keys with `futurefsm keygen keys --name scheduler` and, per client, "
    "`futurefsm keygen NAME --name NAME --public-to keys/clients`, then run "
    "`futurefsm scheduler --secret-key keys/scheduler.key_secret --client-keys keys/clients` "
    "(clients pass secret_key=NAME/NAME.key_secret, server_key=keys/scheduler.key); "
    "or pass --insecure if everyone who can reach the port may run code as this user"
)
_MAKE_ONE = "make a keypair with `futurefsm keygen DIR --name NAME` (NAME.key, NAME.key_secret)"


def keygen(
    directory: str | os.PathLike[str],
    name: str,
    *,
    public_to: str | os.PathLike[str] | None = None,
) -> tuple[Path, Path]:
    """Write a new keypair, ``DIR/NAME.key`` (public) and ``DIR/NAME.key_secret``
    (both keys, readable by its owner only), with ``zmq.auth.create_certificates``.

    ``public_to``: also copy the public key there (a scheduler's client-keys
    directory); it must not be ``directory``, which then would hold a secret key.
    ``FileExistsError`` rather than overwrite a key; ``ValueError`` for a bad name.
    """
    if not name or name != Path(name).name or name.startswith("."):
        raise ValueError(f"--name: expected a plain file stem, got {name!r}")
    directory = Path(directory)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    targets = [public, secret]
    if public_to is not None:
        public_to = Path(public_to)
        if public_to.resolve() == directory.resolve():
            raise ValueError(
                f"--public-to {os.fspath(public_to)}: that is where the secret key goes; "
                "the directory a scheduler trusts holds public keys only: write the "
                "keypair elsewhere (e.g. `futurefsm keygen "
                f"{name} --name {name} --public-to {os.fspath(public_to)}`)"
            )
        targets.append(public_to / f"{name}.key")
    for path in targets:
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
    if public_to is not None:
        public_to.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(written_public, public_to / f"{name}.key")
    return Path(written_public), Path(written_secret)


def keygen_main(directory: str, name: str, public_to: str | None = None) -> int:
    """``futurefsm keygen DIR --name NAME [--public-to DIR]``: 0 when written, 1 if
    it cannot be."""
    try:
        public, secret = keygen(directory, name, public_to=public_to)
    except (OSError, ValueError) as exc:
        print(f"futurefsm keygen: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {public} (public: give it to the other side)")
    print(f"wrote {secret} (secret: keep it here, readable only by you)")
    if public_to is not None:
        print(f"wrote {Path(public_to) / public.name} (a copy of the public key)")
    return 0


def load_secret_key(key: SecretKey, what: str = "secret_key") -> tuple[bytes, bytes]:
    """``(public, secret)`` Z85 keys from a ``.key_secret`` file or a pair in memory."""
    if isinstance(key, tuple):
        public, secret = key
    else:
        public, secret = _read_certificate(key, what)
        if secret is None:
            raise ValueError(
                f"{what} {os.fspath(key)!r} holds only a public key "
                "(pass the NAME.key_secret file that `futurefsm keygen` wrote)"
            )
    _check_z85_key(public, f"{what}: public key")
    _check_z85_key(secret, f"{what}: secret key")
    return public, secret


def load_public_key(key: PublicKey, what: str = "server_key") -> bytes:
    """A public Z85 key, from a ``.key`` file (or a ``.key_secret``) or the bytes."""
    if not isinstance(key, bytes):
        key = _read_certificate(key, what)[0]
    _check_z85_key(key, what)
    return key


def load_client_keys(keys: ClientKeys, what: str = "client_keys") -> frozenset[bytes]:
    """The public keys (Z85) of the clients allowed in, from a directory or an iterable.

    A directory holding a secret key (``*.key_secret``) is refused: whoever can read
    the directory the scheduler trusts could connect as that client."""
    if isinstance(keys, (str, os.PathLike)):
        directory = Path(keys)
        if not directory.is_dir():
            problem = "does not exist" if not directory.exists() else "is not a directory"
            raise ValueError(
                f"{what} {os.fspath(keys)!r} {problem}: pass the directory of the "
                "clients' public keys (*.key); `futurefsm keygen NAME --name NAME "
                f"--public-to {os.fspath(keys)}` makes one there"
            )
        secrets = sorted(path.name for path in directory.glob("*.key_secret"))
        if secrets:
            raise ValueError(
                f"{what} {os.fspath(keys)!r} holds secret keys ({', '.join(secrets)}): "
                "the directory a scheduler trusts must hold public keys (*.key) only; "
                "move each NAME.key_secret to its client (`futurefsm keygen NAME "
                f"--name NAME --public-to {os.fspath(keys)}` keeps them apart)"
            )
        loaded = frozenset(zmq.auth.load_certificates(directory))
        if not loaded:
            raise ValueError(
                f"{what}: no public key (*.key) in {os.fspath(keys)!r}; make one with "
                f"`futurefsm keygen NAME --name NAME --public-to {os.fspath(keys)}`"
            )
        return loaded
    loaded = frozenset(keys)
    for key in loaded:
        _check_z85_key(key, f"{what}: a key")
    return loaded


def _read_certificate(path: str | os.PathLike[str], what: str) -> tuple[bytes, bytes | None]:
    """``zmq.auth.load_certificate`` with errors that say which file and what to do
    (pyzmq says "Invalid certificate file" for a file that does not exist)."""
    shown = os.fspath(path)
    file = Path(path)
    if not file.exists():
        raise ValueError(f"{what} {shown!r}: no such file; {_MAKE_ONE}")
    if file.is_dir():
        raise ValueError(f"{what} {shown!r} is a directory: pass a key file; {_MAKE_ONE}")
    try:
        return zmq.auth.load_certificate(file)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{what} {shown!r}: not a key file that `futurefsm keygen` wrote ({error}); {_MAKE_ONE}"
        ) from error


def _check_z85_key(key: object, what: str) -> None:
    if not isinstance(key, bytes) or len(key) != 40:
        raise ValueError(f"{what}: expected 40 bytes of Z85 text, got {key!r:.60}")
