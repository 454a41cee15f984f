"""Dask-style task graphs: dependency order, and keys replaced by ``DependencyRef``.

A graph maps keys to tasks ``(callable, *args)`` or constants. An argument (also
inside a list) equal to a key of the graph stands for that key's result, as in Dask.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

from ..serializer import DependencyRef

__all__ = ["as_task", "dependencies", "dependency_refs", "topological_order"]


_EXHAUSTED = object()


def _is_task(value: Any) -> bool:
    return isinstance(value, tuple) and bool(value) and callable(value[0])


def as_task(value: Any) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """``(function, args)`` of a graph value; a constant becomes ``identity(value)``."""
    if _is_task(value):
        return value[0], tuple(value[1:])
    return _identity, (value,)


def _identity(value: Any) -> Any:
    return value


def _is_key(value: Any, graph: Mapping[Hashable, Any]) -> bool:
    try:
        return value in graph
    except TypeError:  # unhashable
        return False


def dependencies(value: Any, graph: Mapping[Hashable, Any]) -> list[Hashable]:
    """The keys of ``graph`` that the task ``value`` takes as arguments."""
    _, args = as_task(value)
    found: list[Hashable] = []

    def visit(item: Any) -> None:
        if _is_key(item, graph):
            found.append(item)
        elif isinstance(item, list):
            for element in item:
                visit(element)

    for arg in args:
        visit(arg)
    return found


def dependency_refs(
    args: tuple[Any, ...], graph: Mapping[Hashable, Any], task_ids: dict[Hashable, bytes]
) -> tuple[Any, ...]:
    """``args`` with every key of ``graph`` replaced by a ``DependencyRef`` to its task."""

    def replace(item: Any) -> Any:
        if _is_key(item, graph):
            return DependencyRef(task_ids[item])
        if isinstance(item, list):
            return [replace(element) for element in item]
        return item

    return tuple(replace(arg) for arg in args)


def topological_order(graph: Mapping[Hashable, Any]) -> list[Hashable]:
    """Keys with every dependency before its dependents; ValueError on a cycle."""
    order: list[Hashable] = []
    state: dict[Hashable, int] = {}  # 1 visiting, 2 done

    for root in graph:
        if state.get(root) == 2:
            continue
        stack = [(root, iter(dependencies(graph[root], graph)))]
        state[root] = 1
        while stack:
            key, children = stack[-1]
            child = next(children, _EXHAUSTED)
            if child is _EXHAUSTED:
                stack.pop()
                state[key] = 2
                order.append(key)
            elif state.get(child) == 1:
                raise ValueError(f"submit_graph: the graph has a cycle through {child!r}")
            elif state.get(child) is None:
                state[child] = 1
                stack.append((child, iter(dependencies(graph[child], graph))))
    return order
