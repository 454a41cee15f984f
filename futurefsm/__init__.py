"""futurefsm: remote-task futures that are explicit finite-state machines.

Every future is a model of one shared ``transitions`` machine built from the
transition table in ``futurefsm.fsm``; ``TaskFuture`` makes it a real
``concurrent.futures.Future``; cancellation is confirmed by the scheduler.
"""

from concurrent.futures import CancelledError

from .client import Client, TaskFuture
from .errors import (
    ConnectionLostError,
    DaskPluginError,
    FutureFSMError,
    RemoteTraceback,
    TaskFailedError,
    WorkerDiedError,
)
from .fsm import CancelOutcome, FutureState, Trigger
from .protocol import ProtocolError

__version__ = "0.1.0"

__all__ = [
    "CancelOutcome",
    "CancelledError",
    "Client",
    "ConnectionLostError",
    "DaskPluginError",
    "FutureFSMError",
    "FutureState",
    "ProtocolError",
    "RemoteTraceback",
    "TaskFailedError",
    "TaskFuture",
    "Trigger",
    "WorkerDiedError",
    "__version__",
]
