"""What every engine needs, written once: a queue with one wake-up, a delivery thread,
the never-raise guard, remote tracebacks, and nested graph tasks.

- ``WakeQueue``: many threads post, one consumer takes everything at once; the
  consumer is woken once per batch (a burst of posts costs one wake-up: a pipe byte,
  a loop callback, a condition notify, whatever the engine's ``wake`` is).
- ``DeliveryThread``: a thread of the engine's own that delivers what the engine's
  callbacks queued (for engines whose events arrive on a thread that must not run
  user callbacks, such as Scaler's agent loop).
- ``NeverRaise``: ``with guard:`` around handling one message: a malformed message
  is counted as a protocol error, any other failure is logged and counted as an I/O
  error, and the thread goes on.
- ``attach_remote_traceback``: a task's exception as ``result()`` raises it: the remote
  frames once, as the ``RemoteTraceback`` text of its ``__cause__``.
- ``connect_within``: an engine's own connect call held to ``connection_timeout``
  (``ConnectionError`` naming the address), for engines that retry for longer.
- ``flatten_nested``: a graph node's nested tasks folded into one call
  (``NestedCall``), for a scheduler that cannot evaluate nested tasks itself.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import threading
import time
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, TypeVar

from ..errors import RemoteTraceback
from ..protocol import ProtocolError
from . import KeyRef

__all__ = [
    "DeliveryThread",
    "NestedCall",
    "NeverRaise",
    "WakeQueue",
    "attach_remote_traceback",
    "connect_within",
    "flatten_nested",
    "in_event_loop",
    "replace_key_refs",
]

T = TypeVar("T")

_LOUD_PROTOCOL_ERRORS = 10  # warnings before protocol errors drop to debug level
_PROBE_INTERVAL = 0.05  # seconds between TCP probes of an address that refuses


def replace_key_refs(obj: Any, replace: Callable[[Any], Any]) -> Any:
    """``obj`` with every ``KeyRef`` replaced by ``replace(ref)``, walking tuples, lists
    and dict values (the arguments of ``Engine.prepare_dependent``)."""
    kind = type(obj)
    if kind is tuple or kind is list:
        return kind(replace_key_refs(item, replace) for item in obj)
    if kind is dict:
        return {key: replace_key_refs(item, replace) for key, item in obj.items()}
    if kind is KeyRef:
        return replace(obj)
    return obj


def in_event_loop() -> bool:
    """True in a running asyncio event loop (which a wait must never block)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


# ---------------------------------------------------------------------- queues


class WakeQueue(Generic[T]):
    """A queue with one consumer that is woken once per batch.

    ``post`` appends and calls ``wake()`` only if no wake-up is pending; ``take``
    (the consumer) clears the pending flag, then empties the queue. Cleared before
    emptying: a post that saw the flag still set is taken by this ``take``; one that
    sees it clear wakes the consumer again. ``wake`` must not block and may be called
    from any thread.
    """

    __slots__ = ("_items", "_pending", "_wake")

    def __init__(self, wake: Callable[[], object]) -> None:
        self._items: collections.deque[T] = collections.deque()
        self._pending = False
        self._wake = wake

    def __len__(self) -> int:
        return len(self._items)

    def post(self, item: T) -> None:
        """Queue ``item`` and wake the consumer unless a wake-up is pending."""
        self._items.append(item)
        if not self._pending:
            self.wake()

    def post_many(self, items: list[T]) -> None:
        """Queue ``items``, in order, and wake the consumer once (unless pending)."""
        if items:
            self._items.extend(items)
            if not self._pending:
                self.wake()

    def wake(self) -> None:
        """Wake the consumer (unless a wake-up is pending) without queueing anything.
        If ``wake`` raises (the consumer is gone), the error goes to the caller and
        the next post tries again."""
        if not self._pending:
            self._pending = True
            try:
                self._wake()
            except BaseException:
                self._pending = False
                raise

    def take(self) -> list[T]:
        """Everything queued, oldest first (the consumer only)."""
        self._pending = False
        items = self._items
        taken = []
        while items:
            taken.append(items.popleft())
        return taken


class DeliveryThread(Generic[T]):
    """A daemon thread that calls ``deliver(item)`` for every posted item, in order,
    each under ``guard`` (a failure is counted, the thread goes on). ``stop()`` ends
    it after what was posted before."""

    def __init__(self, name: str, deliver: Callable[[T], object], guard: NeverRaise) -> None:
        self._deliver = deliver
        self._guard = guard
        self._ready = threading.Condition(threading.Lock())
        self._queue: WakeQueue[T | None] = WakeQueue(self._notify)
        self._stopped = False
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start delivering."""
        self.thread.start()

    def post(self, item: T) -> None:
        """Deliver ``item`` on the thread, after everything posted before it."""
        self._queue.post(item)

    def post_many(self, items: list[T]) -> None:
        """Deliver ``items``, in order, after everything posted before them: one
        wake-up of the thread for the lot."""
        self._queue.post_many(items)

    def stop(self) -> None:
        """Deliver what was posted, then end; waits for that unless called on the
        thread itself. Idempotent."""
        self._queue.post(None)
        if self.thread.ident is not None and not self.is_current():
            self.thread.join()

    def is_current(self) -> bool:
        """True on the delivery thread."""
        return threading.current_thread() is self.thread

    def _notify(self) -> None:
        with self._ready:
            self._ready.notify()

    def _run(self) -> None:
        queue, ready, guard, deliver = self._queue, self._ready, self._guard, self._deliver
        while True:
            with ready:
                items = queue.take()
                if not items:
                    ready.wait()
                    continue
            for item in items:
                if item is None:
                    return
                with guard:
                    deliver(item)


# ---------------------------------------------------------------------- connecting


def _tcp_endpoint(address: str) -> tuple[str, int] | None:
    scheme, _, rest = address.partition("://")
    if scheme != "tcp" or not rest:
        return None
    host, _, port = rest.rpartition(":")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        return None


def connect_within(
    connect: Callable[[], T],
    address: str,
    timeout: float,
    *,
    what: str = "the scheduler",
    dispose: Callable[[T], object] | None = None,
) -> T:
    """``connect()``'s result, or ``ConnectionError`` naming ``address`` within
    ``timeout`` seconds (plus a moment).

    A ``tcp://host:port`` address is first probed with plain TCP connects (every
    50 ms while refused: a scheduler may still be starting), so a port where nothing
    listens fails at the deadline without the engine's own, longer, retries.
    ``connect`` then runs in a helper thread; if it has not returned by the deadline,
    the caller gets the error and a late result is handed to ``dispose`` (an engine
    whose connect retries for a minute leaves nothing behind once it gives up).
    ``TypeError`` and ``ValueError`` (a bad option) pass through as they are.
    """
    deadline = time.monotonic() + timeout
    endpoint = _tcp_endpoint(address)
    while endpoint is not None:  # until something listens, or the deadline
        left = deadline - time.monotonic()
        try:
            socket.create_connection(endpoint, timeout=max(0.001, left)).close()
            break
        except OSError as error:
            if left <= 0 or time.monotonic() + _PROBE_INTERVAL >= deadline:
                raise ConnectionError(
                    f"cannot connect to {what} at {address}: nothing answered within "
                    f"{timeout:g} s ({error})"
                ) from error
            time.sleep(_PROBE_INTERVAL)
    outcome: list[tuple[bool, Any]] = []
    lock = threading.Lock()  # outcome and gave_up: the caller takes it or dispose does
    done = threading.Event()
    gave_up: list[bool] = []

    def run() -> None:
        try:
            result: tuple[bool, Any] = (True, connect())
        except BaseException as error:
            result = (False, error)
        with lock:
            outcome.append(result)
            late = bool(gave_up)
        done.set()
        if late and result[0] and dispose is not None:
            try:
                dispose(result[1])
            except Exception:
                logging.getLogger(__name__).debug("disposing a late connection", exc_info=True)

    threading.Thread(target=run, name=f"futurefsm-connect {address}", daemon=True).start()
    done.wait(max(0.0, deadline - time.monotonic()))
    with lock:
        if not outcome:
            gave_up.append(True)
            raise ConnectionError(f"cannot connect to {what} at {address} within {timeout:g} s")
    ok, value = outcome[0]
    if ok:
        return value  # type: ignore[no-any-return]
    if isinstance(value, (TypeError, ValueError)):
        raise value
    raise ConnectionError(
        f"cannot connect to {what} at {address}: {type(value).__name__} {value}".rstrip()
    ) from value


# ---------------------------------------------------------------------- never raise


class NeverRaise:
    """``with guard:`` around handling one message on a delivering thread.

    A ``ProtocolError`` (or one of ``malformed``) is counted in
    ``protocol_errors`` and warned about (the first ten; then debug level); any other
    ``Exception`` is logged with its traceback and counted in ``io_errors``. Both are
    swallowed: the thread goes on with the next message. ``count`` is set when the
    engine starts (``client.count``); before that nothing is counted.
    """

    __slots__ = ("_logger", "_loud", "_malformed", "_what", "count")

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        malformed: tuple[type[BaseException], ...] = (ProtocolError,),
    ) -> None:
        self._logger = logger
        self._what = what
        self._malformed = malformed
        self._loud = _LOUD_PROTOCOL_ERRORS
        self.count: Callable[[str], None] | None = None

    def __enter__(self) -> NeverRaise:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if error is None or not isinstance(error, Exception):
            return False
        if isinstance(error, self._malformed):
            self.protocol_error(error)
        else:
            self._logger.error("%s: failed to handle a message", self._what, exc_info=error)
            if self.count is not None:
                self.count("io_errors")
        return True

    def protocol_error(self, error: BaseException) -> None:
        """Count and warn about a malformed message (also without raising it)."""
        if self.count is not None:
            self.count("protocol_errors")
        if self._loud > 0:
            self._loud -= 1
            self._logger.warning("%s: protocol error: %s", self._what, error)
        else:
            self._logger.debug("%s: protocol error: %s", self._what, error)


# ---------------------------------------------------------------------- tracebacks


def attach_remote_traceback(
    exception: BaseException, tb: TracebackType | str | None = None
) -> BaseException:
    """``exception`` as ``result()`` raises it: the remote traceback (``tb``, a
    traceback or its text; default the exception's own) becomes the text of a
    ``RemoteTraceback`` set as ``__cause__``, and the exception keeps no frames of
    its own, so the remote frames print once. Returns ``exception``."""
    if isinstance(tb, str):
        text = tb
    else:
        frames = tb if tb is not None else exception.__traceback__
        lines = ["Traceback (most recent call last):\n"]
        lines += traceback.format_tb(frames) if frames is not None else []
        lines += traceback.format_exception_only(type(exception), exception)
        text = "".join(lines)
    exception.__traceback__ = None
    exception.__cause__ = RemoteTraceback(text)
    return exception


# ---------------------------------------------------------------------- nested tasks


def _is_task(value: Any) -> bool:
    return isinstance(value, tuple) and bool(value) and callable(value[0])


# The shape of one argument: None for a plain value, or (_TASK | _LIST, shapes of the
# items); a task's items are its arguments (its function is not part of the shape).
_Shape = tuple[int, tuple[Any, ...]] | None
_TASK, _LIST = 0, 1


def _shape(item: Any) -> _Shape:
    if _is_task(item):
        return (_TASK, tuple(_shape(arg) for arg in item[1:]))
    if isinstance(item, list):
        shapes = tuple(_shape(element) for element in item)
        return (_LIST, shapes) if any(s is not None for s in shapes) else None
    return None


def _evaluate(item: Any, shape: _Shape) -> Any:
    if shape is None:
        return item
    kind, shapes = shape
    if kind == _TASK:
        return item[0](*(_evaluate(arg, s) for arg, s in zip(item[1:], shapes, strict=True)))
    return [_evaluate(element, s) for element, s in zip(item, shapes, strict=True)]


class NestedCall:
    """A graph task's function when its arguments hold nested tasks.

    Called on the worker with the (dependency-substituted) arguments, it evaluates every
    nested task depth first and then calls ``fn`` with the values. The *function*
    carries the arguments' shape (which positions are nested tasks), not the
    arguments: a scheduler that substitutes dependency results rebuilds tuples and
    lists, and a substituted result that looks like a task is never called. Pickled by
    reference to this module plus ``fn`` and the shape.
    """

    __slots__ = ("fn", "shapes")

    def __init__(self, fn: Callable[..., Any], shapes: tuple[_Shape, ...]) -> None:
        self.fn = fn
        self.shapes = shapes

    def __call__(self, *args: Any) -> Any:
        """Evaluate the nested tasks in ``args``, then return ``fn(*values)``."""
        values = (_evaluate(arg, s) for arg, s in zip(args, self.shapes, strict=True))
        return self.fn(*values)

    def __reduce__(self) -> tuple[Any, ...]:
        return (NestedCall, (self.fn, self.shapes))

    def __repr__(self) -> str:
        return f"NestedCall({getattr(self.fn, '__name__', self.fn)!r})"


def flatten_nested(
    function: Callable[..., Any], args: tuple[Any, ...]
) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """``(function, args)`` of a ``GraphNode`` as one plain call: if an argument holds
    a nested task (also inside a list, at any depth), the function becomes a
    ``NestedCall`` that evaluates it on the worker; the args keep their structure."""
    shapes = tuple(_shape(arg) for arg in args)
    if any(shape is not None for shape in shapes):
        return NestedCall(function, shapes), args
    return function, args
