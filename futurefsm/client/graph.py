"""Dask-style task graphs: dependency order, and keys replaced by ``DependencyRef``.

A graph maps keys to tasks ``(callable, *args)`` or constants. An argument (also
inside a list) equal to a key of the graph stands for that key's result, as in Dask.
An argument that is itself a task, such as ``(inc, 1)`` in ``(add, (inc, 1), 2)``, is a
nested task: it is not a graph member of its own but is evaluated on the worker, inside
the task that holds it, before that task's function is called (depth first, as Dask's
``_execute_task`` does). Nested tasks may name keys and nest further, also in lists.

How nested tasks survive the trip: the scheduler substitutes dependency results into
the arguments it was sent (``serializer.substitute_dependencies``), which rebuilds
tuples and lists, so a marker object inside the arguments would be lost. Instead the
*function* carries the arguments' shape (``NestedCall``): which positions are nested
tasks and which are plain values. A substituted result is always a plain value, so a
result that happens to look like a task is never called.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

from ..serializer import DependencyRef

__all__ = ["NestedCall", "as_task", "dependencies", "dependency_refs", "topological_order"]


_EXHAUSTED = object()


def _is_task(value: Any) -> bool:
    return isinstance(value, tuple) and bool(value) and callable(value[0])


# The shape of one argument: None for a plain value, or (_TASK | _LIST, shapes of the
# items); a task's items are its arguments (its function is not part of the shape).
_Shape = tuple[int, tuple[Any, ...]] | None
_TASK, _LIST = 0, 1


def _shape(item: Any) -> _Shape:
    if _is_task(item):
        shapes = tuple(_shape(arg) for arg in item[1:])
        return (_TASK, shapes)
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
    nested task depth first and then calls ``fn`` with the values. Pickled by reference
    to this module plus ``fn`` and the arguments' shape.
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


def as_task(value: Any) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """``(function, args)`` of a graph value; a constant becomes ``identity(value)``.

    When an argument holds a nested task (also inside a list, at any depth) the
    function is a ``NestedCall`` that evaluates it on the worker; the args keep their
    structure, with nested tasks as plain ``(fn, *args)`` tuples.
    """
    if _is_task(value):
        fn, args = value[0], tuple(value[1:])
    else:
        fn, args = _identity, (value,)
    shapes = tuple(_shape(arg) for arg in args)
    if any(shape is not None for shape in shapes):
        return NestedCall(fn, shapes), args
    return fn, args


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
        if _is_task(item):
            for arg in item[1:]:
                visit(arg)
        elif _is_key(item, graph):
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
        if _is_task(item):
            return (item[0], *(replace(arg) for arg in item[1:]))
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
