"""Which clients of a ROUTER are still connected, from libzmq's own view.

The stub's ROUTER runs ZMTP heartbeats (libzmq's I/O thread pings every client and
drops a connection that stays silent past the timeout, however busy the stub's Python
threads are), and a socket monitor reports every connection accepted, closed, or
refused in its handshake. What the monitor does not say is *which client* a closed
connection carried: its events name a file descriptor, while messages name the
client's routing id. (libzmq's ``ROUTER_NOTIFY`` would say, but it is a draft API
that pyzmq's wheels do not build.) ``PeerTracker`` joins the two: every message
carries the descriptor it arrived on (``zmq.SRCFD``), looked up once per client.

Why the join is safe
--------------------
Connections that share a descriptor number follow each other: the kernel reuses a
number only after it was closed. libzmq's I/O thread reports a connection's
``ACCEPTED`` before it delivers any of its messages, and its ``DISCONNECTED`` before
the number can be reused. futurefsm's client sets ``PROBE_ROUTER``, so the first
message of every connection is an empty probe, sent as the handshake ends. When a new
client's first message is read and then the monitor is drained:

- if the descriptor is open, the open connection is the client's own, or the client's
  connection closed meanwhile (then it is gone anyway, and is dropped when the later
  connection on that number closes: late, never wrongly);
- if the descriptor is closed, the client's connection is gone: it is dropped at once,
  and nothing it sent runs.

A client is therefore never dropped while its connection is alive. The one late case
needs a connection to close, and its number to be reused, before the stub read even
its probe; a client that goes away that fast may have its first tasks run.

Before tasks start
------------------
libzmq delivers what a connection carried before it reports the connection closed. A
scheduler thawed after a freeze therefore reads the tasks a client sent into its
frozen socket first, and only then the close the client made when it gave up (and
told its user those tasks failed). So the stub starts the tasks of a batch only after
``closed()`` has asked the kernel whether each sender's connection is still open
(``POLLRDHUP``: the peer's FIN has arrived, even with data still unread). What is left
is the network's own latency: a close still in flight when the kernel is asked.
A routing id that went away stays gone; its leftovers are ignored, and the first one
is answered ``Disconnect`` (``tell_once``).
"""

from __future__ import annotations

import logging
import select
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

__all__ = ["PeerTracker"]

logger = logging.getLogger("futurefsm.scheduler_stub")

_EVENTS = int(
    zmq.EVENT_ACCEPTED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
_HANDSHAKE_REFUSED = {
    int(zmq.EVENT_HANDSHAKE_FAILED_AUTH): "the client's key was refused",
    int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL): (
        "a protocol error (wrong server key, or the client does not use CurveZMQ)"
    ),
}
_NO_DETAIL = int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
_HANGUP = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR
"""What ``poll`` reports for a TCP connection whose peer has closed it (Linux: RDHUP
even while data it sent before closing is still unread)."""
_GONE_REMEMBERED = 10_000
"""How many gone clients are remembered, to ignore messages they left behind."""


class PeerTracker:
    """Connection bookkeeping for one ROUTER (used by the stub's I/O thread only).

    ``monitor`` is the socket to poll; ``drain()`` reads its events and returns the
    routing ids of clients whose connection closed. ``admit(identity, frame)`` is
    called for a routing id not seen before, with the frame it arrived in.
    """

    def __init__(self, router: zmq.Socket[Any]) -> None:
        self._router = router
        self.monitor: zmq.Socket[Any] = router.get_monitor_socket(_EVENTS)
        self._open: dict[int, int] = {}  # descriptor -> serial of its open connection
        self._members: dict[int, list[bytes]] = {}  # serial -> routing ids on it
        self._known: set[bytes] = set()
        self._fd_of: dict[bytes, int] = {}  # known routing id -> its descriptor
        # Gone routing id -> whether the stub has told it so (see ``tell_once``).
        self._gone: OrderedDict[bytes, bool] = OrderedDict()
        self._failures_logged: set[int] = set()
        self.connections = 0
        """Connections accepted."""
        self.handshakes_refused = 0
        """Connections refused in the handshake (a key not listed, a wrong server key)."""
        self.handshakes_failed = 0
        """Handshakes that ended without detail: the client closed the connection during
        it (harmless), or a client without CurveZMQ met a stub with keys."""

    def knows(self, identity: bytes) -> bool:
        """True once ``admit`` accepted ``identity`` (and until it is gone)."""
        return identity in self._known

    def connected(self) -> set[bytes]:
        """The routing ids of the clients whose connection is open, as far as known."""
        return set(self._known)

    def admit(self, identity: bytes, frame: zmq.Frame) -> tuple[list[bytes], bool]:
        """A message from a routing id not known (new, or gone): bind it to its connection.

        Returns the clients found gone meanwhile (the monitor is drained first; the list
        includes ``identity`` if its connection is already closed), and whether the
        message is to be handled: False for a routing id whose connection closed.

        A routing id that went away stays gone: what its connection left unread carries
        a descriptor number the kernel may have given to a newer connection already, so
        a later connection under the same id (a client that sets its own
        ``ROUTING_ID``; futurefsm's does not) cannot be told apart. See ``tell_once``.
        """
        if identity in self._gone:
            return [], False
        gone = self.drain()
        serial = self._open.get(frame.get(zmq.SRCFD))
        if serial is None:
            self._mark_gone(identity)
            gone.append(identity)
            return gone, False
        self._known.add(identity)
        self._fd_of[identity] = frame.get(zmq.SRCFD)
        self._members.setdefault(serial, []).append(identity)
        return gone, True

    def closed(self, identities: Iterable[bytes]) -> list[bytes]:
        """Before their new tasks start: which clients are gone, as far as the kernel
        knows now. Returns every client found gone (these and any other).

        libzmq reports a closed connection only after it delivered whatever was sent
        before the close: a scheduler thawed after a freeze reads the tasks a client
        sent into its frozen socket, and only then the close that client made when it
        gave up on it. Asking the kernel (the peer's FIN is already there) closes that
        gap; the monitor is drained again after, in case libzmq closed and reused a
        descriptor meanwhile (its DISCONNECTED comes before any reuse).
        """
        gone = self.drain()
        fds = {self._fd_of[i] for i in identities if i in self._known}
        if fds:
            poller = select.poll()
            for fd in fds:
                poller.register(fd, _HANGUP)
            for fd, _ in poller.poll(0):
                serial = self._open.get(fd)
                for identity in self._members.pop(serial, ()) if serial is not None else ():
                    self._forget_known(identity)
                    gone.append(identity)
            gone += self.drain()
        return gone

    def _forget_known(self, identity: bytes) -> None:
        self._known.discard(identity)
        self._fd_of.pop(identity, None)
        self._mark_gone(identity)

    def drain(self) -> list[bytes]:
        """Handle every pending monitor event; return the clients whose connection closed."""
        gone: list[bytes] = []
        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return gone
            kind, value = int(event["event"]), int(event["value"])
            if kind == zmq.EVENT_ACCEPTED:
                self._open[value] = self.connections  # the connection's serial
                self.connections += 1
            elif kind == zmq.EVENT_DISCONNECTED:
                serial = self._open.pop(value, None)
                for identity in self._members.pop(serial, ()) if serial is not None else ():
                    self._forget_known(identity)
                    gone.append(identity)
            elif kind in _HANDSHAKE_REFUSED:
                self.handshakes_refused += 1
                self._log_refusal(kind, value)
            elif kind == _NO_DETAIL:
                self.handshakes_failed += 1
                logger.info(
                    "scheduler stub: a handshake ended without detail (code %d): the client "
                    "closed it, or it does not use CurveZMQ and this stub does",
                    value,
                )

    def tell_once(self, identity: bytes) -> bool:
        """True the first time a gone routing id is heard from again: the stub then
        sends it ``Disconnect``, so a client reconnecting under it learns its work is
        gone instead of waiting forever."""
        if self._gone.get(identity) is False:
            self._gone[identity] = True
            return True
        return False

    def _mark_gone(self, identity: bytes) -> None:
        self._gone[identity] = False
        if len(self._gone) > _GONE_REMEMBERED:
            self._gone.popitem(last=False)

    def _log_refusal(self, kind: int, value: int) -> None:
        # The monitor does not name the peer; refused keys are logged by the
        # authenticator, per peer. Here: once per kind of failure.
        if kind in self._failures_logged:
            logger.debug("scheduler stub: a handshake failed: %s", _HANDSHAKE_REFUSED[kind])
            return
        self._failures_logged.add(kind)
        logger.warning(
            "scheduler stub: refused a connection in its handshake: %s (code %d; further "
            "ones are counted in stats()['handshakes_refused'], logged at debug level)",
            _HANDSHAKE_REFUSED[kind],
            value,
        )

    def close(self) -> None:
        """Stop monitoring (the I/O thread calls this before closing the ROUTER)."""
        try:
            self._router.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(linger=0)
