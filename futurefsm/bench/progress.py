"""A tqdm progress bar over a benchmark's stages (``futurefsm bench e2e`` runs for minutes).

``main`` opens the bar with ``stages(total, desc)``; each stage function is decorated
with ``@stage``, which names it on the bar while it runs and counts it when it ends.
Outside a ``stages`` block the decorator does nothing, so ``measure()`` called from a
test stays silent. The bar goes to stderr and, by default, only when that is a
terminal (tqdm's ``disable=None``), so piped output holds the figures alone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from tqdm import tqdm

__all__ = ["stage", "stages"]

_F = TypeVar("_F", bound=Callable[..., Any])
_bar: tqdm | None = None  # type: ignore[type-arg]


@contextmanager
def stages(total: int, desc: str, *, disable: bool | None = None) -> Iterator[tqdm]:  # type: ignore[type-arg]
    """A bar of ``total`` stages for the ``@stage`` functions called inside the block.

    ``disable=None`` shows it only on a terminal; True never; False always.
    """
    global _bar
    bar = tqdm(total=total, desc=desc, unit="stage", disable=disable)
    _bar = bar
    try:
        yield bar
    finally:
        _bar = None
        bar.close()


def stage(fn: _F) -> _F:
    """Mark ``fn`` as one stage of a benchmark: shown while it runs, counted at its end."""
    name = fn.__name__.strip("_").replace("_", " ")

    @functools.wraps(fn)
    def run_stage(*args: Any, **kwargs: Any) -> Any:
        bar = _bar
        if bar is None:
            return fn(*args, **kwargs)
        bar.set_postfix_str(name)
        result = fn(*args, **kwargs)
        bar.update(1)
        return result

    return run_stage  # type: ignore[return-value]
