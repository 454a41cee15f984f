"""The client side: ``TaskFuture`` (the concurrent.futures adapter) and its transports."""

from .future import TaskFuture
from .transport import FutureTransport, InMemoryTransport

__all__ = ["FutureTransport", "InMemoryTransport", "TaskFuture"]
