"""How functions, arguments, results and failures become bytes (docs/protocol.md).

The protocol carries opaque bytes; this module is the one contract between the
client and the scheduler about what is inside them:

- ``Task.function``: ``dumps(fn)``
- ``Task.args``: ``dumps((args, kwargs))``; in a graph task, a ``DependencyRef``
  anywhere in args or kwargs (inside tuples, lists and dict values) stands for the
  result of the task it names, substituted by the scheduler before the call
- ``TaskResult(success).payload``: ``dumps(value)``
- ``TaskResult(failed).payload``: ``encode_failure(exc, tb_text)``
- ``TaskResult(worker_died).payload``: ``dumps(reason_text)``

The serializer is pluggable: anything with ``dumps(obj) -> bytes`` and
``loads(bytes) -> obj``. ``CloudpickleSerializer`` is the default: functions defined
in the user's script (``__main__``), lambdas, closures and methods of script classes
are pickled by value, so they run on a scheduler that cannot import the script.
``PickleSerializer`` (stdlib pickle, by reference only) remains available.

Trust model: unpickling runs code. A scheduler runs whatever its authorised clients
send, and a client unpickles what its scheduler answers: connect only to schedulers
you trust, and let only clients you trust connect to yours.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any, Protocol

import cloudpickle

from .errors import RemoteTraceback, TaskFailedError

__all__ = [
    "DEFAULT_SERIALIZER",
    "CloudpickleSerializer",
    "DependencyRef",
    "PickleSerializer",
    "Serializer",
    "decode_failure",
    "encode_failure",
    "substitute_dependencies",
]


class Serializer(Protocol):
    """Turns Python objects into bytes and back."""

    def dumps(self, obj: Any) -> bytes:
        """Serialize ``obj``; raise if it cannot be."""
        ...

    def loads(self, data: bytes) -> Any:
        """Deserialize what ``dumps`` produced."""
        ...


class PickleSerializer:
    """Stdlib ``pickle`` at its highest protocol: functions by reference only (they
    must be importable by the scheduler)."""

    def dumps(self, obj: Any) -> bytes:
        """``pickle.dumps(obj)``."""
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes) -> Any:
        """``pickle.loads(data)``."""
        return pickle.loads(data)


class CloudpickleSerializer:
    """The default serializer: ``cloudpickle`` (what Dask and Ray use), which pickles
    functions from ``__main__``, lambdas and closures by value; its output is read by
    plain ``pickle.loads``."""

    def dumps(self, obj: Any) -> bytes:
        """``cloudpickle.dumps(obj)`` at the highest pickle protocol."""
        return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes) -> Any:
        """``pickle.loads(data)``."""
        return pickle.loads(data)


DEFAULT_SERIALIZER: Serializer = CloudpickleSerializer()


@dataclass(frozen=True, slots=True)
class DependencyRef:
    """Placeholder for the result of another task of the same graph."""

    task_id: bytes


def substitute_dependencies(obj: Any, results: dict[bytes, Any]) -> Any:
    """``obj`` with every ``DependencyRef`` replaced by ``results[ref.task_id]``.

    Walks tuples, lists and dict values, as Dask does for graph arguments.
    """
    if isinstance(obj, DependencyRef):
        return results[obj.task_id]
    if isinstance(obj, tuple):
        return tuple(substitute_dependencies(item, results) for item in obj)
    if isinstance(obj, list):
        return [substitute_dependencies(item, results) for item in obj]
    if isinstance(obj, dict):
        return {key: substitute_dependencies(value, results) for key, value in obj.items()}
    return obj


def encode_failure(exc: BaseException, tb_text: str, serializer: Serializer) -> bytes:
    """The payload of a failed task: the exception itself if it serializes, and
    always its type, text and remote traceback text."""
    description = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"
    try:
        exc_bytes: bytes | None = serializer.dumps(exc)
    except Exception:
        exc_bytes = None
    return serializer.dumps((exc_bytes, description, tb_text))


def decode_failure(payload: bytes, serializer: Serializer) -> BaseException:
    """The exception ``result()`` re-raises for a failed task.

    It is the task's own exception when it could be carried over, with the remote
    traceback attached as ``__cause__`` (a ``RemoteTraceback``); otherwise a
    ``TaskFailedError`` describing it. Never raises: a payload that cannot be read
    becomes a ``TaskFailedError`` that says so.
    """
    try:
        exc_bytes, description, tb_text = serializer.loads(payload)
    except Exception as error:
        return TaskFailedError(f"task failed, and its failure payload is unreadable: {error!r}")
    exc: BaseException | None = None
    if exc_bytes is not None:
        try:
            exc = serializer.loads(exc_bytes)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = TaskFailedError(f"task failed with {description}")
    exc.__cause__ = RemoteTraceback(str(tb_text))
    return exc
