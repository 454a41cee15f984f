"""Futures passed as arguments: ``client.submit(f, fut)`` as on Dask, Ray and Scaler.

A ``TaskFuture`` of the same client anywhere in a call's arguments (at the top level,
or inside lists, tuples and dict values, nested) stands for its value where the task
runs. The client turns each into a ``KeyRef`` of its task id and hands the call to the
engine's ``prepare_dependent``, which maps it to its scheduler's own form of "this
task depends on an already-submitted task"; the value never comes back through the
client. An upstream that is already terminal needs no dependency: its value is put
in its place, and an upstream that failed or was cancelled ends the dependent the
same way without sending it (``resolve``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..engines import KeyRef
from .future import TaskFuture

__all__ = ["as_key_ref", "find_futures", "replace_futures"]


_LEAVES = frozenset({int, float, complex, str, bytes, bool, type(None)})
"""Types that never hold a future: not walked (a submit's arguments mostly are these)."""


def find_futures(obj: Any, found: dict[bytes, TaskFuture]) -> None:
    """Add every ``TaskFuture`` in ``obj`` (walking tuples, lists and dict values) to
    ``found``, by task id, in order of appearance."""
    if isinstance(obj, TaskFuture):
        found.setdefault(obj.task_id, obj)
    elif type(obj) is tuple or type(obj) is list:
        for item in obj:
            if type(item) not in _LEAVES:
                find_futures(item, found)
    elif type(obj) is dict:
        for item in obj.values():
            if type(item) not in _LEAVES:
                find_futures(item, found)


def replace_futures(obj: Any, replace: Callable[[TaskFuture], Any]) -> Any:
    """``obj`` with every ``TaskFuture`` replaced by ``replace(future)`` (a copy of
    each tuple, list and dict on the way; named tuples and other types as they are)."""
    if isinstance(obj, TaskFuture):
        return replace(obj)
    if type(obj) is tuple:
        return tuple(replace_futures(item, replace) for item in obj)
    if type(obj) is list:
        return [replace_futures(item, replace) for item in obj]
    if type(obj) is dict:
        return {key: replace_futures(item, replace) for key, item in obj.items()}
    return obj


def as_key_ref(future: TaskFuture) -> KeyRef:
    """The ``KeyRef`` an engine sees for an upstream future: its task id."""
    return KeyRef(future.task_id)
