"""Exceptions raised by futurefsm.

``ProtocolError`` (a peer sent something malformed) lives in ``futurefsm.protocol``;
the ones here describe what happened to a task or a connection. Every one of them is
importable from ``futurefsm`` itself, with ``CancelledError`` (the stdlib's, raised by
``result()`` of a cancelled future). ``FutureFSMError`` is the base of futurefsm's own.
"""

from __future__ import annotations

__all__ = [
    "ConnectionLostError",
    "DaskPluginError",
    "DependencyGone",
    "FutureFSMError",
    "HandshakeRefused",
    "RemoteTraceback",
    "TaskFailedError",
    "WorkerDiedError",
]


class FutureFSMError(Exception):
    """Base class of futurefsm's own exceptions."""


class ConnectionLostError(FutureFSMError, ConnectionError):
    """The scheduler went silent or away before the task finished."""


class HandshakeRefused(FutureFSMError, ConnectionError):
    """A scheduler took the connection but turned the handshake down (CurveZMQ keys
    missing, not admitted, or not expected): ``futurefsm status`` raises it."""


class DaskPluginError(FutureFSMError, RuntimeError):
    """A Dask scheduler cannot confirm cancels: futurefsm's scheduler plugin is missing
    there (or was refused). Raised by ``Client(addr, engine="dask")`` before anything
    is submitted; see docs/engine-dask.md."""


class WorkerDiedError(FutureFSMError):
    """The worker running the task died; the scheduler answered ``worker_died``."""


class TaskFailedError(FutureFSMError):
    """A task failed and its own exception could not be carried back as itself.

    Raised in place of an exception that could not be pickled or unpickled; the
    message holds the original exception's type and text.
    """


class RemoteTraceback(Exception):
    """The traceback text of a task's exception, as it was on the scheduler.

    Attached as ``__cause__`` of the exception ``result()`` re-raises, as
    ``concurrent.futures.ProcessPoolExecutor`` does, so the remote frames print too.
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class DependencyGone(FutureFSMError):
    """The scheduler's answer to a Task whose ``depends_on`` names a task it no longer
    holds (it finished before this Task arrived). The client's engine sends the Task
    again with that task's result, which it kept; a future never ends with it."""
