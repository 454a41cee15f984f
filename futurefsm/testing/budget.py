"""Sizing hypothesis runs relative to the loaded settings profile."""

from __future__ import annotations

from hypothesis import settings

__all__ = ["examples"]


def examples(weight: float, *, minimum: int = 1) -> int:
    """``weight`` times the loaded profile's ``max_examples`` (at least ``minimum``).

    Tests pass this as ``settings(max_examples=examples(...))`` at import time, after
    ``tests/conftest.py`` loaded the profile, so ``ci``, ``dev`` and ``thorough``
    scale every test together.
    """
    return max(minimum, round(settings.default.max_examples * weight))
