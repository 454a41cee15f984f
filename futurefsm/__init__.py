"""futurefsm: remote-task futures that are explicit finite-state machines.

Every future is a model of one shared ``transitions`` machine built from the
transition table in ``futurefsm.fsm``; ``TaskFuture`` makes it a real
``concurrent.futures.Future``; cancellation is confirmed by the scheduler.
``futurefsm.wait`` and ``futurefsm.as_completed`` are ``concurrent.futures``' own
(they work on these futures; Dask's ``distributed.wait`` does not).
"""

from concurrent.futures import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    CancelledError,
    as_completed,
    wait,
)

from .client import Client, TaskFuture
from .errors import (
    ConnectionLostError,
    DaskPluginError,
    DependencyGone,
    FutureFSMError,
    HandshakeRefused,
    RemoteTraceback,
    TaskFailedError,
    WorkerDiedError,
)
from .fsm import CancelOutcome, FutureState, Trigger
from .protocol import ProtocolError

__version__ = "0.1.0"

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "CancelOutcome",
    "CancelledError",
    "Client",
    "ConnectionLostError",
    "DaskPluginError",
    "DependencyGone",
    "FutureFSMError",
    "FutureState",
    "HandshakeRefused",
    "ProtocolError",
    "RemoteTraceback",
    "TaskFailedError",
    "TaskFuture",
    "Trigger",
    "WorkerDiedError",
    "__version__",
    "as_completed",
    "wait",
]
