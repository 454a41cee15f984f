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

Large ``bytes`` (``OUT_OF_BAND_BYTES`` and more) inside a task's arguments travel
out of band: ``dumps_buffers`` pickles the arguments with each such object replaced
by a persistent id (its index), and returns the objects themselves beside the
pickle; the client sends them as ZeroMQ frames of their own, without a copy, and
``loads_buffers`` puts them back (docs/protocol.md, "Out-of-band buffers"). Pickle's
own out-of-band mechanism (protocol 5 ``buffer_callback``) never takes ``bytes``:
only ``PickleBuffer``s, which a task's arguments seldom are.

The serializer is pluggable: anything with ``dumps(obj) -> bytes`` and
``loads(bytes) -> obj``; out-of-band buffers need ``dumps_buffers`` and
``loads_buffers`` too (the two built in here have them; another serializer's
arguments travel in band, as before). ``CloudpickleSerializer`` is the default: functions defined
in the user's script (``__main__``), lambdas, closures and methods of script classes
are pickled by value, so they run on a scheduler that cannot import the script.
``PickleSerializer`` (stdlib pickle, by reference only) remains available.

Trust model: unpickling runs code. A scheduler runs whatever its authorised clients
send, and a client unpickles what its scheduler answers: connect only to schedulers
you trust, and let only clients you trust connect to yours.
"""

from __future__ import annotations

import io
import pickle
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import cloudpickle

from .errors import RemoteTraceback, TaskFailedError

__all__ = [
    "DEFAULT_SERIALIZER",
    "OUT_OF_BAND_BYTES",
    "CloudpickleSerializer",
    "DependencyRef",
    "DumpedFunctions",
    "PickleSerializer",
    "Serializer",
    "decode_failure",
    "dumps_buffers",
    "encode_failure",
    "has_large_bytes",
    "is_pickled_by_reference",
    "is_plain",
    "loads_buffers",
    "substitute_dependencies",
]

OUT_OF_BAND_BYTES = 1 << 20
"""A ``bytes`` object of at least this many bytes in a task's arguments travels as a
frame of its own (``dumps_buffers``); smaller ones are pickled in band."""


class Serializer(Protocol):
    """Turns Python objects into bytes and back."""

    def dumps(self, obj: Any) -> bytes:
        """Serialize ``obj``; raise if it cannot be."""
        ...

    def loads(self, data: bytes) -> Any:
        """Deserialize what ``dumps`` produced."""
        ...


class _OutOfBand:
    """What a pickler needs to send large ``bytes`` out of band: ``persistent_id``."""

    buffers: list[bytes]
    indices: dict[int, int]

    def persistent_id(self, obj: Any) -> int | None:
        """The index of ``obj`` in ``buffers`` if it is large ``bytes`` (appended the
        first time it is seen); None for anything else (pickled in band)."""
        if type(obj) is bytes and len(obj) >= OUT_OF_BAND_BYTES:
            index = self.indices.get(id(obj))
            if index is None:
                index = self.indices[id(obj)] = len(self.buffers)
                self.buffers.append(obj)
            return index
        return None


class _OutOfBandPickler(_OutOfBand, pickle.Pickler):
    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.buffers, self.indices = [], {}


class _OutOfBandCloudPickler(_OutOfBand, cloudpickle.Pickler):
    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.buffers, self.indices = [], {}


class _BufferUnpickler(pickle.Unpickler):
    """Unpickles what ``_OutOfBand`` pickled: each persistent id names a buffer."""

    def __init__(self, data: bytes, buffers: Sequence[bytes]) -> None:
        super().__init__(io.BytesIO(data))
        self._buffers = list(buffers)

    def persistent_load(self, pid: Any) -> Any:
        """The buffer ``pid`` names, as ``bytes`` (a zero-copy frame is copied once,
        the first time: every reference to it is the same object, as it was)."""
        buffers = self._buffers
        if type(pid) is not int or not 0 <= pid < len(buffers):
            raise pickle.UnpicklingError(
                f"out-of-band buffer {pid!r}: the task came with {len(buffers)} buffers"
            )
        buffer = buffers[pid]
        if type(buffer) is not bytes:
            buffer = buffers[pid] = bytes(buffer)
        return buffer


def _oob_dumps(
    pickler: type[_OutOfBandPickler | _OutOfBandCloudPickler], obj: Any
) -> tuple[bytes, Sequence[bytes]]:
    file = io.BytesIO()
    out = pickler(file)
    out.dump(obj)
    return file.getvalue(), out.buffers


def _oob_loads(data: bytes, buffers: Sequence[bytes]) -> Any:
    if not buffers:
        return pickle.loads(data)
    return _BufferUnpickler(data, buffers).load()


class PickleSerializer:
    """Stdlib ``pickle`` at its highest protocol: functions by reference only (they
    must be importable by the scheduler)."""

    def dumps(self, obj: Any) -> bytes:
        """``pickle.dumps(obj)``."""
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes) -> Any:
        """``pickle.loads(data)``."""
        return pickle.loads(data)

    def dumps_buffers(self, obj: Any) -> tuple[bytes, Sequence[bytes]]:
        """``dumps(obj)``, large ``bytes`` in it out of band (``OUT_OF_BAND_BYTES``)."""
        if not has_large_bytes(obj):
            return self.dumps(obj), ()
        return _oob_dumps(_OutOfBandPickler, obj)

    def loads_buffers(self, data: bytes, buffers: Sequence[bytes]) -> Any:
        """What ``dumps_buffers`` pickled, with its buffers."""
        return _oob_loads(data, buffers)


class CloudpickleSerializer:
    """The default serializer: ``cloudpickle`` (what Dask and Ray use), which pickles
    functions from ``__main__``, lambdas and closures by value; its output is read by
    plain ``pickle.loads``."""

    def dumps(self, obj: Any) -> bytes:
        """``cloudpickle.dumps(obj)`` at the highest pickle protocol.

        Plain data (``is_plain``: builtin scalars in builtin containers, as task
        arguments mostly are) goes through stdlib ``pickle`` instead, which pickles it
        the same way without building a cloudpickle pickler (most of the cost)."""
        if is_plain(obj):
            return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes) -> Any:
        """``pickle.loads(data)``."""
        return pickle.loads(data)

    def dumps_buffers(self, obj: Any) -> tuple[bytes, Sequence[bytes]]:
        """``dumps(obj)``, large ``bytes`` in it out of band (``OUT_OF_BAND_BYTES``)."""
        plain, large = _scan(obj)
        if not large:  # as dumps() does
            if plain:
                return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), ()
            return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), ()
        return _oob_dumps(_OutOfBandPickler if plain else _OutOfBandCloudPickler, obj)

    def loads_buffers(self, data: bytes, buffers: Sequence[bytes]) -> Any:
        """What ``dumps_buffers`` pickled, with its buffers."""
        return _oob_loads(data, buffers)


def dumps_buffers(serializer: Serializer, obj: Any) -> tuple[bytes, Sequence[bytes]]:
    """``serializer.dumps_buffers(obj)`` if it has one (large ``bytes`` out of band),
    else ``(serializer.dumps(obj), ())``."""
    dumps = getattr(serializer, "dumps_buffers", None)
    if dumps is None:
        return serializer.dumps(obj), ()
    data, buffers = dumps(obj)
    return data, buffers


def loads_buffers(serializer: Serializer, data: bytes, buffers: Sequence[bytes]) -> Any:
    """What ``dumps_buffers`` made of an object, back; ``serializer.loads(data)``
    without buffers. Raises ``TypeError`` for buffers that ``serializer`` cannot take
    (it has no ``loads_buffers``)."""
    if not buffers:
        return serializer.loads(data)
    loads = getattr(serializer, "loads_buffers", None)
    if loads is None:
        raise TypeError(
            f"{len(buffers)} out-of-band buffers came with the data, and the serializer "
            f"{serializer!r} has no loads_buffers to take them"
        )
    return loads(data, buffers)


DEFAULT_SERIALIZER: Serializer = CloudpickleSerializer()

_PLAIN_SCALARS = frozenset({type(None), bool, int, float, complex, str, bytes})
_PLAIN_CONTAINERS = frozenset({tuple, list, dict, set, frozenset})
_PLAIN_BUDGET = 64


def is_plain(obj: Any) -> bool:
    """True if ``obj`` is made of nothing but builtin scalars (exact ``None``, ``bool``,
    ``int``, ``float``, ``complex``, ``str``, ``bytes``) in builtin containers (exact
    ``tuple``, ``list``, ``dict``, ``set``, ``frozenset``), at most 64 objects in all
    (larger ones are not looked through: False). Stdlib ``pickle`` and ``cloudpickle``
    pickle such data alike: no function, class or subclass in it to send by value."""
    return _scan(obj)[0]


def has_large_bytes(obj: Any) -> bool:
    """True if ``obj`` is, or holds in builtin containers (as ``is_plain`` looks
    through them; other objects are not looked into), ``bytes`` of
    ``OUT_OF_BAND_BYTES`` or more."""
    return _scan(obj)[1]


def _scan(obj: Any) -> tuple[bool, bool]:
    """(``is_plain(obj)``, ``has_large_bytes(obj)``), in one walk."""
    budget = _PLAIN_BUDGET
    stack = [obj]
    pop, extend = stack.pop, stack.extend
    scalars, containers = _PLAIN_SCALARS, _PLAIN_CONTAINERS
    plain, large = True, False
    while stack:
        item = pop()
        kind = type(item)
        if kind in scalars:
            if kind is bytes and len(item) >= OUT_OF_BAND_BYTES:
                large = True
            continue
        if kind not in containers:
            plain = False
            continue
        if not item:
            continue
        budget -= len(item)
        if budget < 0:
            return False, large
        if kind is dict:
            extend(item.keys())
            extend(item.values())
        else:
            extend(item)
    return plain, large


_STRING_OPS = {0x8C: 1, 0x58: 4}  # SHORT_BINUNICODE: 1-byte length; BINUNICODE: 4
_MEMOIZE, _STACK_GLOBAL, _GLOBAL, _BINPUT, _FRAME, _STOP = 0x94, 0x93, 0x63, 0x71, 0x95, 0x2E


def is_pickled_by_reference(data: bytes) -> bool:
    """True if ``data`` is a pickle of a single global looked up by name (module and
    qualified name): a module-level function or class, a builtin, pickled "by
    reference". Unpickling such bytes always gives the object bound to that name, so
    they may be cached by identity on either side. Anything else (a closure, a lambda
    or a ``__main__`` function that cloudpickle pickles by value, a bound method, a
    partial, a non-pickle serializer's bytes) is False.
    """
    try:
        if data[0] != 0x80:  # PROTO: protocol 2 or later
            return False
        protocol, at = data[1], 2
        if data[at] == _FRAME:
            at += 9
        if protocol >= 4:  # module and name as two strings, then STACK_GLOBAL
            for _ in range(2):
                width = _STRING_OPS.get(data[at])
                if width is None:
                    return False
                length = int.from_bytes(data[at + 1 : at + 1 + width], "little")
                at += 1 + width + length
                if data[at] == _MEMOIZE:
                    at += 1
            if data[at] != _STACK_GLOBAL:
                return False
            at += 1
            if data[at] == _MEMOIZE:
                at += 1
        else:  # GLOBAL "module\nname\n", then BINPUT n
            if data[at] != _GLOBAL:
                return False
            at = data.index(b"\n", data.index(b"\n", at + 1) + 1) + 1
            if data[at] == _BINPUT:
                at += 2
        return at == len(data) - 1 and data[at] == _STOP
    except (IndexError, ValueError):
        return False


_FUNCTION_CACHE_LIMIT = 4096


class DumpedFunctions:
    """Serialized functions by identity, for the client: a module-level function is
    pickled once, not once per task.

    While the name a function is pickled under (its module and ``__qualname__``)
    still names this very object, its by-reference bytes cannot change, so they are
    reused. Any other callable (closures, lambdas, ``__main__`` functions that
    cloudpickle sends by value, bound methods, partials, callable objects, methods
    with a dotted ``__qualname__``) is serialized afresh every time, as before.
    Bounded: at most ``limit`` entries (then it starts over). (The scheduler's
    workers keep their own cache of unpickled functions:
    ``scheduler_stub.running.FunctionCache``.)
    """

    def __init__(self, serializer: Serializer, limit: int = _FUNCTION_CACHE_LIMIT) -> None:
        self._serializer = serializer
        self._limit = limit
        self._dumped: dict[Any, tuple[dict[str, Any], str, bytes]] = {}

    def dumps(self, fn: Callable[..., Any]) -> bytes:
        """``serializer.dumps(fn)``, cached while that is safe."""
        try:
            entry = self._dumped.get(fn)
        except TypeError:  # an unhashable callable object: never cached
            return self._serializer.dumps(fn)
        if entry is not None:
            namespace, name, data = entry
            if namespace.get(name) is fn:
                return data
        data = self._serializer.dumps(fn)
        name = getattr(fn, "__qualname__", None)
        module = sys.modules.get(getattr(fn, "__module__", None) or "")
        if (
            type(name) is str
            and "." not in name
            and module is not None
            and vars(module).get(name) is fn
            and is_pickled_by_reference(data)
        ):
            if len(self._dumped) >= self._limit:
                self._dumped.clear()
            self._dumped[fn] = (vars(module), name, data)
        return data


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
