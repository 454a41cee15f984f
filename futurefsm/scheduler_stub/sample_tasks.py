"""Importable task functions for tests, the demo and benchmarks.

Tasks are pickled by reference, so they must live in an importable module; these do.

Gates let a test decide exactly when a task finishes, without sleeping:
``gate_wait("g")`` (run as a task) marks gate "g" as started and blocks until the test
calls ``open_gate("g")``; ``wait_started("g", timeout)`` waits until the task got
there. Gates are plain ``threading.Event``s in this process, so they work only when the
stub runs in the same process as the test (an in-process ``SchedulerStub``, not the
``futurefsm scheduler`` command). Call ``reset_gates()`` between tests: it releases any
task still blocked on a gate and forgets every gate.
"""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = [
    "add",
    "echo",
    "fail",
    "gate_wait",
    "noop",
    "open_gate",
    "reset_gates",
    "sleep_then",
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


def fail(message: str) -> None:
    """Raise ``ValueError(message)``."""
    raise ValueError(message)


def unpicklable_result() -> Any:
    """Return an object pickle refuses (a lock), so sending the result fails."""
    return threading.Lock()


class _Gate:
    """One named gate: ``started`` is set by the task, ``opened`` by the test."""

    __slots__ = ("opened", "started")

    def __init__(self) -> None:
        self.started = threading.Event()
        self.opened = threading.Event()


_gates: dict[str, _Gate] = {}
_gates_lock = threading.Lock()


def _gate(name: str) -> _Gate:
    """The gate called ``name``, created on first use by either side."""
    with _gates_lock:
        gate = _gates.get(name)
        if gate is None:
            gate = _gates[name] = _Gate()
        return gate


def gate_wait(name: str, value: Any = None, timeout: float = 30.0) -> Any:
    """Mark gate ``name`` as started, block until ``open_gate(name)``, return ``value``.

    Raises ``TimeoutError`` if the gate is not opened within ``timeout`` seconds, so a
    forgotten gate cannot hold a worker thread forever.
    """
    gate = _gate(name)
    gate.started.set()
    if not gate.opened.wait(timeout):
        raise TimeoutError(f"gate {name!r} was not opened within {timeout} s")
    return value


def open_gate(name: str) -> None:
    """Let every ``gate_wait(name)`` return (now and later, until ``reset_gates()``)."""
    _gate(name).opened.set()


def wait_started(name: str, timeout: float = 5.0) -> bool:
    """Wait until a task reached ``gate_wait(name)``; False if it did not in time."""
    return _gate(name).started.wait(timeout)


def reset_gates() -> None:
    """Open every gate (releasing tasks still blocked on one) and forget them all."""
    with _gates_lock:
        gates = list(_gates.values())
        _gates.clear()
    for gate in gates:
        gate.opened.set()
