"""ZeroMQ addresses as users type them: checked before libzmq sees them.

libzmq's own errors say little ("Protocol not supported", "Invalid argument"), and
some mistakes it does not report at all: ``tcp://127.0.0.1:99999`` binds port 34463
(the number is taken modulo 65536), and a host name that does not resolve makes a
client wait for a connection that cannot come, then report that no scheduler
answered. ``check_address`` turns each into a ``ValueError`` that says what was wrong
and what to type instead. The client (``Client(address)``), the scheduler command
(``--address``) and ``futurefsm status`` share it; ``check_host_port`` checks the
``HOST:PORT`` part of the other engines' addresses (Scaler's are ZeroMQ addresses).
"""

from __future__ import annotations

import difflib
import socket
from urllib.parse import urlsplit

__all__ = ["TRANSPORTS", "check_address", "check_host_port", "check_url"]

TRANSPORTS = ("tcp", "ipc", "inproc")
"""The transports futurefsm's scheduler speaks (``tcp://`` between hosts)."""


def check_address(address: object, what: str = "address", *, bind: bool = False) -> str:
    """``address`` unchanged if it is a usable ZeroMQ address, else ``ValueError``.

    ``what`` names the value as the user gave it (``address``, ``--address``).
    ``bind=True``: an address to listen on, where ``*`` and port ``0`` or ``*`` (any
    free port) are allowed and the host is an interface name or address, not looked
    up. Otherwise (to connect to) the port is 1-65535 and the host must resolve.
    """
    if not isinstance(address, str):
        raise TypeError(f"{what}: expected a string like 'tcp://127.0.0.1:5555', got {address!r}")
    transport, separator, rest = address.partition("://")
    if not separator:
        raise ValueError(
            f"{what} {address!r} is not a ZeroMQ address (it names its transport): "
            f"did you mean tcp://{address}?"
        )
    if transport not in TRANSPORTS:
        close = difflib.get_close_matches(transport.lower(), TRANSPORTS, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]}://{rest}?" if close else "use tcp://HOST:PORT"
        raise ValueError(
            f"{what} {address!r}: unknown transport {transport!r} "
            f"(known: {', '.join(TRANSPORTS)}); {hint}"
        )
    if not rest:
        raise ValueError(f"{what} {address!r}: nothing after {transport}://")
    if transport == "tcp":
        _check_tcp(address, rest, what, bind)
    return address


def _check_tcp(address: str, rest: str, what: str, bind: bool) -> None:
    # A bind may name an interface and a source address ("eth0;192.168.1.1:5555" is a
    # connect-side source form): only the part after the last ";" is checked.
    endpoint = rest.rpartition(";")[2]
    check_host_port(address, endpoint, what, bind=bind)


def check_host_port(
    address: str,
    endpoint: str,
    what: str = "address",
    *,
    bind: bool = False,
    example: str = "tcp://127.0.0.1:5555",
) -> None:
    """``ValueError`` unless ``endpoint`` (``HOST:PORT``, the part of ``address`` after
    its scheme) has a port 1-65535 and, to connect to (``bind=False``), a host that
    resolves. For any engine's address of that form (Dask's, Ray's)."""
    host, colon, port_text = endpoint.rpartition(":")
    if not colon or not host:
        raise ValueError(f"{what} {address!r}: expected HOST:PORT, e.g. {example}")
    if bind and port_text in ("*", "0"):
        return
    if not port_text.isdigit():
        raise ValueError(
            f"{what} {address!r}: the port {port_text!r} is not a number (1-65535)"
            + ("; * or 0 binds any free port" if bind else "")
        )
    port = int(port_text)
    if not 1 <= port <= 65535:
        any_port = "; * or 0 binds any free port" if bind else ""
        raise ValueError(
            f"{what} {address!r}: port {port} is out of range (1-65535); it would "
            f"wrap to port {port % 65536} instead{any_port}"
        )
    if bind:
        return
    hostname = urlsplit(f"//{endpoint}").hostname
    if not hostname or hostname == "*":
        raise ValueError(
            f"{what} {address!r}: a client connects to a host, not {host!r}: e.g. {example}"
        )
    try:
        socket.getaddrinfo(hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise ValueError(
            f"{what} {address!r}: the host {hostname!r} does not resolve ({error}); "
            "check its spelling, or give its IP address"
        ) from None


def check_url(
    address: object,
    schemes: tuple[str, ...],
    *,
    host_schemes: tuple[str, ...],
    example: str,
    bare: str | None = None,
    what: str = "address",
) -> str:
    """``address`` unchanged if it is ``SCHEME://REST`` with a known scheme (or, if
    ``bare`` names one, ``HOST:PORT`` alone, meaning that scheme), else ``ValueError``
    naming the known schemes. For a scheme of ``host_schemes``, ``REST`` is checked
    as ``check_host_port`` does. For engines whose addresses are URLs (Dask's)."""
    if not isinstance(address, str):
        raise TypeError(f"{what}: expected a string like {example!r}, got {address!r}")
    scheme, separator, rest = address.partition("://")
    if not separator:
        if bare is None:
            raise ValueError(f"{what} {address!r} names no scheme: e.g. {example}")
        scheme, rest = bare, address
    if scheme not in schemes:
        close = difflib.get_close_matches(scheme.lower(), schemes, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]}://{rest}?" if close else f"e.g. {example}"
        raise ValueError(
            f"{what} {address!r}: unknown scheme {scheme!r} (known: {', '.join(schemes)}); {hint}"
        )
    if scheme in host_schemes:
        check_host_port(address, rest.partition("/")[0], what, example=example)
    return address
