"""The client side: ``TaskFuture`` (the concurrent.futures adapter) and its transports.

Everything here is engine-agnostic; engines live in ``futurefsm.engines``.
"""

from .client import Client
from .future import TaskFuture
from .transport import FutureTransport, InMemoryTransport

__all__ = ["Client", "FutureTransport", "InMemoryTransport", "TaskFuture"]
