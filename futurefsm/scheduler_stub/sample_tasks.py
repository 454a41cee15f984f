"""Importable task functions for tests, the demo and benchmarks.

Tasks are pickled by reference, so they must live in an importable module; these do.

Gates let a test decide exactly when a task finishes, without sleeping:
``gate_wait("g")`` (run as a task) marks gate "g" as started and blocks until the test
calls ``open_gate("g")``; ``wait_started("g", timeout)`` waits until the task got
there. Gates are files in a directory of the process that runs the ``SchedulerStub``
(its worker processes find it through their environment), polled every millisecond,
so they work with worker threads and processes alike, but only when the stub runs in
the same process as the test (an in-process ``SchedulerStub``, not the ``futurefsm
scheduler`` command). Call ``reset_gates()`` between tests: it releases any task
still blocked on a gate and forgets every gate.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
import time
from typing import Any
from urllib.parse import quote

from .processes import OWNER_PID_ENV

__all__ = [
    "add",
    "echo",
    "fail",
    "gate_wait",
    "mark_then_sleep",
    "noop",
    "open_gate",
    "reset_gates",
    "sleep_then",
    "touch",
    "unpicklable_result",
    "wait_started",
]


def noop() -> None:
    """Do nothing; return None."""
    return None


def add(a: Any, b: Any) -> Any:
    """Return ``a + b``."""
    return a + b


def echo(value: Any) -> Any:
    """Return ``value`` unchanged."""
    return value


def sleep_then(seconds: float, value: Any = None) -> Any:
    """Sleep ``seconds``, then return ``value`` (for demos and benchmarks, not for
    synchronising tests: use a gate there)."""
    time.sleep(seconds)
    return value


def mark_then_sleep(path: str, seconds: float, value: Any = None) -> Any:
    """Create the file ``path`` (so a test in another process sees the task started),
    sleep ``seconds``, return ``value``."""
    with open(path, "a"):
        pass
    time.sleep(seconds)
    return value


def touch(path: str, value: Any = None, then_sleep: float = 0.0) -> Any:
    """Create the file ``path`` (a side effect a test in another process can see),
    sleep ``then_sleep`` seconds (to keep a worker busy), then return ``value``."""
    with open(path, "a"):
        pass
    if then_sleep:
        time.sleep(then_sleep)
    return value


def fail(message: str) -> None:
    """Raise ``ValueError(message)``."""
    raise ValueError(message)


def unpicklable_result() -> Any:
    """Return an object pickle refuses (a lock), so sending the result fails."""
    return threading.Lock()


def _root() -> str:
    """This test process's gate directory (a worker process finds its stub's)."""
    owner = os.environ.get(OWNER_PID_ENV) or str(os.getpid())
    return os.path.join(_TEMP, f"futurefsm-gates-{os.getuid()}-{owner}")


_TEMP = tempfile.gettempdir()
"""Where gate directories go, fixed at import (a test may point ``tempfile`` elsewhere)."""


def _generation() -> str:
    """The directory of the current generation of gates (``reset_gates`` starts a new
    one), created on first use."""
    global _cleanup_registered
    root = _root()
    current = os.path.join(root, "current")
    if not _cleanup_registered and os.environ.get(OWNER_PID_ENV) is None:
        _cleanup_registered = True  # the owner removes the directory when it exits
        atexit.register(shutil.rmtree, root, True)
    try:
        return os.path.join(root, os.readlink(current))
    except FileNotFoundError:
        pass
    with _lock:  # (threads of this process; other processes race below)
        os.makedirs(root, exist_ok=True)
        if not os.path.lexists(current):
            # A worker's gate_wait and the test's open_gate may both get here first.
            # Only one link may win: a second generation would leave the worker
            # waiting on a gate that the test opens somewhere else.
            generation = tempfile.mkdtemp(prefix="gen-", dir=root)
            try:
                os.symlink(os.path.basename(generation), current)
            except FileExistsError:
                shutil.rmtree(generation, ignore_errors=True)
    return os.path.join(root, os.readlink(current))


def _new_generation(root: str) -> None:
    """Make a fresh generation directory and point ``current`` at it, atomically."""
    generation = os.path.basename(tempfile.mkdtemp(prefix="gen-", dir=root))
    link = os.path.join(root, f"link-{generation}")
    os.symlink(generation, link)
    os.replace(link, os.path.join(root, "current"))


def _path(generation: str, name: str, what: str) -> str:
    return os.path.join(generation, f"{quote(name, safe='')}.{what}")


def _touch(path: str) -> None:
    with open(path, "a"):
        pass


_lock = threading.Lock()
_cleanup_registered = False


def gate_wait(name: str, value: Any = None, timeout: float = 30.0) -> Any:
    """Mark gate ``name`` as started, block until ``open_gate(name)``, return ``value``.

    Raises ``TimeoutError`` if the gate is not opened within ``timeout`` seconds, so a
    forgotten gate cannot hold a worker forever.
    """
    generation = _generation()
    _touch(_path(generation, name, "started"))
    opened = _path(generation, name, "opened")
    deadline = time.monotonic() + timeout
    # Opened, or its generation was reset away: go on.
    while not os.path.exists(opened) and os.path.isdir(generation):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {name!r} was not opened within {timeout} s")
        time.sleep(_POLL)  # a polling interval inside a deadline
    return value


def open_gate(name: str) -> None:
    """Let every ``gate_wait(name)`` return (now and later, until ``reset_gates()``)."""
    _touch(_path(_generation(), name, "opened"))


def wait_started(name: str, timeout: float = 5.0) -> bool:
    """Wait until a task reached ``gate_wait(name)``; False if it did not in time."""
    started = _path(_generation(), name, "started")
    deadline = time.monotonic() + timeout
    while not os.path.exists(started):
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL / 2)
    return True


def reset_gates() -> None:
    """Open every gate (releasing tasks still blocked on one) and forget them all."""
    generation = _generation()
    with _lock:
        _new_generation(_root())
    shutil.rmtree(generation, ignore_errors=True)


_POLL = 0.001
"""Seconds between two looks at a gate's files."""
