"""``gather``: the values of futures, in the shape they were given (Dask's ``gather``).

Dask and Scaler users collect results with ``client.gather(futures)``: a list of
futures gives a list of values, a dict gives a dict, nested lists, tuples and dicts
keep their nesting, and anything that is not a future is returned as it is. What
happens to a future that failed or was cancelled is the caller's choice (``errors``):

- ``"raise"`` (Dask's default): its exception is raised, as soon as any future has
  failed (the first failed one in the structure's order, among those done);
- ``"skip"`` (Dask's): it is left out of its list, tuple or dict;
- ``"return"``: its exception takes the value's place (Ray's and asyncio's habit).

A cancelled future counts as failed with ``CancelledError``. Any other
``concurrent.futures.Future`` gathers the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures as cf
from typing import Any, Literal

__all__ = ["ERRORS", "gather"]

Errors = Literal["raise", "skip", "return"]
ERRORS: tuple[str, ...] = ("raise", "skip", "return")

_SKIP = object()  # a failed future's place under errors="skip"


def gather(futures: Any, errors: Errors = "raise", *, timeout: float | None = None) -> Any:
    """``futures`` with every future replaced by its value (see the module docstring).

    ``timeout``: seconds to wait for all of them; ``TimeoutError`` if some are not done
    by then (none is cancelled). An iterator gives an iterator that gathers each item
    as it is taken.
    """
    if errors not in ERRORS:
        raise ValueError(f"errors: expected one of {', '.join(map(repr, ERRORS))}, got {errors!r}")
    if isinstance(futures, Iterator):
        return (gather(item, errors, timeout=timeout) for item in futures)
    found: list[cf.Future[Any]] = []
    _collect(futures, found)
    if found:
        mode = cf.FIRST_EXCEPTION if errors == "raise" else cf.ALL_COMPLETED
        done, not_done = cf.wait(found, timeout, return_when=mode)
        if errors == "raise":
            for future in found:  # in the structure's order
                if future in done and (future.cancelled() or future.exception() is not None):
                    future.result()  # raises it
        if not_done:  # (FIRST_EXCEPTION returned with none failed: the time ran out)
            raise TimeoutError(
                f"gather: {len(not_done)} of {len(set(found))} futures not done "
                f"within {timeout:g} s"
            )
    value = _rebuild(futures, errors)
    if value is _SKIP:  # a lone failed future has nowhere to be skipped from
        futures.result()
    return value


def _collect(value: Any, found: list[cf.Future[Any]]) -> None:
    if isinstance(value, cf.Future):
        found.append(value)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            _collect(item, found)
    elif isinstance(value, dict):
        for item in value.values():
            _collect(item, found)


def _rebuild(value: Any, errors: str) -> Any:
    if isinstance(value, cf.Future):
        if value.cancelled():
            error: BaseException | None = cf.CancelledError()
        else:
            error = value.exception(timeout=0)
        if error is None:
            return value.result(timeout=0)
        if errors == "return":
            return error
        if errors == "skip":
            return _SKIP
        raise error
    if isinstance(value, dict):
        rebuilt = {key: _rebuild(item, errors) for key, item in value.items()}
        return {key: item for key, item in rebuilt.items() if item is not _SKIP}
    for kind in (list, tuple, set, frozenset):  # the built-in kind (a subclass's base)
        if isinstance(value, kind):
            items = [_rebuild(item, errors) for item in value]
            return kind(item for item in items if item is not _SKIP)
    return value
