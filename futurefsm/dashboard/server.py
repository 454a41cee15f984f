"""The dashboard's HTTP server: the standard library's, read-only, loopback by default.

``http.server.ThreadingHTTPServer`` is enough for a page that a few people look at:
no dependency to install on a cluster node. Every answer is a GET (HEAD too); the
page's script and style are files inside the package (``static/``), never a CDN.
The server thread also folds the futures that ended into the counters twice a
second (``service_actions``), so the client's records never pile up unread.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from .counts import Counts
from .page import future_fragment, main_fragment, page

__all__ = ["Dashboard", "parse_address"]

LOGGER = logging.getLogger("futurefsm.dashboard")

_STATIC = {
    "/static/dashboard.css": "text/css; charset=utf-8",
    "/static/dashboard.js": "text/javascript; charset=utf-8",
}
_FUTURE = re.compile(r"^/(api/)?future/([0-9a-f]{1,64})(/live)?$")


def parse_address(address: bool | int | str) -> tuple[str, int]:
    """``Client(dashboard=...)`` as (host, port).

    ``True``: loopback, a free port. An int: loopback, that port. ``"HOST:PORT"``:
    exactly that (the only way to bind anything but loopback); ``"[::1]:PORT"`` for IPv6.
    """
    if address is True:
        return "127.0.0.1", 0
    if isinstance(address, int) and not isinstance(address, bool):
        if not 0 <= address <= 65535:
            raise ValueError(f"dashboard: port {address} is not in 0..65535")
        return "127.0.0.1", address
    if isinstance(address, str):
        host, sep, port = address.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(
                f"dashboard: expected True, a port or 'HOST:PORT' (e.g. '127.0.0.1:8787'), "
                f"got {address!r}"
            )
        return host, int(port)
    raise TypeError(f"dashboard: expected True, a port or 'HOST:PORT', got {address!r}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    counts: Counts

    def service_actions(self) -> None:
        self.counts.fold()


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "futurefsm-dashboard"

    def log_message(self, format: str, *args: Any) -> None:
        LOGGER.debug("%s %s", self.address_string(), format % args)

    def do_HEAD(self) -> None:
        self.do_GET(body=False)

    def do_GET(self, body: bool = True) -> None:
        try:
            status, kind, payload = self._answer(self.path.split("?", 1)[0])
        except Exception:  # a page must never take the client down
            LOGGER.exception("dashboard: failed to answer %s", self.path)
            status, kind, payload = HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain", b"error\n"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def _answer(self, path: str) -> tuple[HTTPStatus, str, bytes]:
        counts = self.server.counts
        html = "text/html; charset=utf-8"
        if path in ("/", "/live"):
            fragment = main_fragment(counts.snapshot())
            text = fragment if path == "/live" else page("live view", fragment, "/live")
            return HTTPStatus.OK, html, text.encode()
        if path == "/api/snapshot":
            return HTTPStatus.OK, "application/json", json.dumps(counts.snapshot()).encode()
        if path in _STATIC:
            data = resources.files(__package__).joinpath(path.removeprefix("/")).read_bytes()
            return HTTPStatus.OK, _STATIC[path], data
        match = _FUTURE.match(path)
        if match and not (match[1] and match[3]):
            task_hex = match[2]
            record = counts.find(bytes.fromhex(task_hex)) if len(task_hex) % 2 == 0 else None
            status = HTTPStatus.OK if record is not None else HTTPStatus.NOT_FOUND
            if match[1]:
                answer = record.as_json() if record else {"error": f"no future {task_hex}"}
                return status, "application/json", json.dumps(answer).encode()
            fragment = future_fragment(record, task_hex)
            if match[3]:
                return status, html, fragment.encode()
            title = f"future {task_hex[:12]}"
            return status, html, page(title, fragment, f"/future/{task_hex}/live").encode()
        return HTTPStatus.NOT_FOUND, "text/plain", b"not found\n"


class Dashboard:
    """The live view of one client, served over HTTP on its own thread.

    ``Client(dashboard=...)`` makes one; ``link`` is its URL. ``counts.ended`` is the
    client's hook for futures that reached a terminal state.
    """

    def __init__(self, client: Any, address: bool | int | str = True) -> None:
        host, port = parse_address(address)
        self.counts = Counts(client)
        family = _IPv6Server if ":" in host else _Server
        try:
            self._server = family((host, port), _Handler)
        except OSError as error:
            raise OSError(
                error.errno, f"dashboard: cannot listen on {host}:{port}: {error.strerror}"
            ) from error
        self._server.counts = self.counts
        bound_host, bound_port = self._server.server_address[:2]
        shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
        self.link: str = f"http://{shown}:{bound_port}/"
        """The page's URL."""
        if not ipaddress.ip_address(bound_host).is_loopback:
            LOGGER.warning(
                "dashboard listening on %s: not loopback, anyone who can reach "
                "it sees task ids and states",
                self.link,
            )
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.5},
            name=f"futurefsm-dashboard-{bound_port}",
            daemon=True,
        )
        self._thread.start()
        LOGGER.info("dashboard at %s", self.link)

    def close(self) -> None:
        """Stop serving and release the port. Idempotent."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
