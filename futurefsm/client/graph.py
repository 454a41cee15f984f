"""Dask-style task graphs, parsed once into engine-neutral ``GraphNode`` s.

A graph maps keys to tasks ``(callable, *args)`` or constants. An argument (also
inside a list) equal to a key of the graph stands for that key's result, as in Dask.
An argument that is itself a task, such as ``(inc, 1)`` in ``(add, (inc, 1), 2)``, is a
nested task: it is not a graph member of its own but is evaluated on the worker, inside
the task that holds it, before that task's function is called (depth first, as Dask's
``_execute_task`` does). Nested tasks may name keys and nest further, also in lists.

``parse_graph`` turns the graph into ``GraphNode`` s in dependency order, every key
reference replaced by a ``KeyRef`` (top level, in lists, in nested tasks), so that no
engine has to know what a key looks like; a constant becomes ``identity(value)``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from ..engines import GraphNode, KeyRef

__all__ = ["dependencies", "parse_graph", "topological_order"]


_EXHAUSTED = object()


def _is_task(value: Any) -> bool:
    return isinstance(value, tuple) and bool(value) and callable(value[0])


def _is_key(value: Any, graph: Mapping[Hashable, Any]) -> bool:
    try:
        return value in graph
    except TypeError:  # unhashable
        return False


def _identity(value: Any) -> Any:
    return value


def _call(value: Any) -> tuple[Any, tuple[Any, ...]]:
    if _is_task(value):
        return value[0], tuple(value[1:])
    return _identity, (value,)


def dependencies(value: Any, graph: Mapping[Hashable, Any]) -> list[Hashable]:
    """The keys of ``graph`` that the task ``value`` takes as arguments."""
    found: list[Hashable] = []

    def visit(item: Any) -> None:
        if _is_task(item):
            for arg in item[1:]:
                visit(arg)
        elif _is_key(item, graph):
            found.append(item)
        elif isinstance(item, list):
            for element in item:
                visit(element)

    for arg in _call(value)[1]:
        visit(arg)
    return found


def _with_refs(item: Any, graph: Mapping[Hashable, Any]) -> Any:
    if _is_task(item):
        return (item[0], *(_with_refs(arg, graph) for arg in item[1:]))
    if _is_key(item, graph):
        return KeyRef(item)
    if isinstance(item, list):
        return [_with_refs(element, graph) for element in item]
    return item


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


def parse_graph(graph: Mapping[Hashable, Any]) -> list[GraphNode]:
    """The graph's nodes, dependencies first; ValueError on a cycle."""
    nodes = []
    for key in topological_order(graph):
        function, args = _call(graph[key])
        refs = tuple(_with_refs(arg, graph) for arg in args)
        depends = tuple(dict.fromkeys(dependencies(graph[key], graph)))
        nodes.append(GraphNode(key, function, refs, depends))
    return nodes
