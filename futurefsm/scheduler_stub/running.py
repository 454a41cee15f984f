"""Running one task: the code shared by worker threads and worker processes.

Kept light (no ZeroMQ, no client): a worker process imports this and little else, so
it starts and, when a cancel kills it, exits quickly.
"""

from __future__ import annotations

import threading
import traceback
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from ..protocol import ResultStatus, TaskResult, encode, result_frame
from ..serializer import Serializer, encode_failure, loads_buffers, substitute_dependencies

__all__ = [
    "STATUSES",
    "STATUS_CODES",
    "WORKER_DIED_REASON",
    "FunctionCache",
    "run_call",
    "worker_died_result",
]

WORKER_DIED_REASON = "worker died (scripted by Behaviour.worker_died)"
"""The reason text sent, pickled, in a scripted ``worker_died`` result."""

STATUS_CODES: dict[ResultStatus, int] = {status: n for n, status in enumerate(ResultStatus)}
"""A result's status as one byte, ahead of its frame on a worker process's connection."""
STATUSES: tuple[ResultStatus, ...] = tuple(ResultStatus)


def run_call(
    task_id: bytes,
    function: bytes,
    args: bytes,
    dep_payloads: dict[bytes, bytes] | None,
    serializer: Serializer,
    functions: FunctionCache,
    buffers: Sequence[bytes] = (),
) -> tuple[int, bytes]:
    """Run one task; return its status code (``STATUS_CODES``) and its encoded result.
    ``buffers``: the out-of-band buffers of its arguments (``serializer.dumps_buffers``).

    Never raises for anything the task does: an exception while unpickling the
    function or arguments, in the call (even ``SystemExit``), while pickling the value,
    or while encoding a too-large result becomes a ``failed`` result.
    """
    try:
        fn = functions.load(function)
        call_args, kwargs = loads_buffers(serializer, args, buffers)
        if dep_payloads:
            values = {dep: serializer.loads(p) for dep, p in dep_payloads.items()}
            call_args = substitute_dependencies(call_args, values)
            kwargs = substitute_dependencies(kwargs, values)
        value = fn(*call_args, **kwargs)
        return _SUCCESS, result_frame(task_id, ResultStatus.SUCCESS, serializer.dumps(value))
    except BaseException as exc:  # a remote task's failure, whatever it is, is its result
        return _FAILED, _failure(task_id, exc, serializer)


_SUCCESS = STATUS_CODES[ResultStatus.SUCCESS]
_FAILED = STATUS_CODES[ResultStatus.FAILED]
_WORKER_DIED = STATUS_CODES[ResultStatus.WORKER_DIED]


def worker_died_result(task_id: bytes, reason: str, serializer: Serializer) -> tuple[int, bytes]:
    """A ``worker_died`` result carrying ``reason``."""
    result = TaskResult(task_id, ResultStatus.WORKER_DIED, serializer.dumps(reason))
    return _WORKER_DIED, encode(result)


def _failure(task_id: bytes, exc: BaseException, serializer: Serializer) -> bytes:
    """The ``failed`` result frame carrying ``exc`` and its traceback text."""
    tb_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        return encode(
            TaskResult(task_id, ResultStatus.FAILED, encode_failure(exc, tb_text, serializer))
        )
    except Exception as error:  # e.g. an exception too large to fit in a frame
        summary = RuntimeError(
            f"task failed with {type(exc).__name__}, and that failure could not be sent "
            f"back: {error!r}"
        )
        payload = encode_failure(summary, tb_text[-20_000:], serializer)
        return encode(TaskResult(task_id, ResultStatus.FAILED, payload))


class FunctionCache:
    """Deserialized task functions by their bytes, so a function sent with every task
    is unpickled once (as Dask's workers do). Bounded: ``size`` entries of at most
    ``max_bytes`` each; larger functions are not cached. Thread-safe."""

    def __init__(self, loads: Callable[[bytes], Any], size: int = 128, max_bytes: int = 64_000):
        self._loads = loads
        self._size = size
        self._max_bytes = max_bytes
        self._functions: OrderedDict[bytes, Any] = OrderedDict()
        self._lock = threading.Lock()

    def load(self, data: bytes) -> Any:
        """``loads(data)``, from the cache when it was seen before."""
        if len(data) > self._max_bytes:
            return self._loads(data)
        with self._lock:
            function = self._functions.get(data)
            if function is not None:
                self._functions.move_to_end(data)
                return function
        function = self._loads(data)
        with self._lock:
            self._functions[data] = function
            if len(self._functions) > self._size:
                self._functions.popitem(last=False)
        return function
