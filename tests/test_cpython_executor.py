"""CPython's own ``concurrent.futures`` tests, run against ``Client`` (a drop-in Executor).

The interpreter's test package (``test.test_concurrent_futures``, a package since
Python 3.12) holds the stdlib executors' tests as mixins: ``ExecutorTest``,
``WaitTests``, ``AsCompletedTests`` and ``ExecutorShutdownTest``. Each class below
combines one of them with CPython's ``ExecutorMixin`` and ``BaseTestCase`` and an
``executor_type`` that builds a ``Client`` (embedded scheduler stub, ``max_workers``
worker threads). Nothing of CPython's code is copied: it is imported.

Many distributions strip the test package (Debian's python3, some pyenv builds): there
every test here is skipped with that reason. ``.ci/run`` runs this module under a Python
3.13 that ships it, e.g. ``python3.13 -m venv v && v/bin/pip install -e '.[test]' &&
v/bin/python -m pytest tests/test_cpython_executor.py``.
"""

from __future__ import annotations

import importlib
import unittest
from typing import Any

import pytest

from futurefsm import Client


def _import(name: str) -> Any:
    try:
        return importlib.import_module(f"test.test_concurrent_futures.{name}")
    except ImportError as error:
        pytest.skip(
            "this interpreter lacks CPython's test package test.test_concurrent_futures "
            f"(Python >= 3.12 layout; stripped by many distributions): {error}",
            allow_module_level=True,
        )


_util = _import("util")
_executor = _import("executor")
_wait = _import("test_wait")
_as_completed = _import("test_as_completed")
_shutdown = _import("test_shutdown")


class ClientMixin(_util.ExecutorMixin):
    """CPython's ExecutorMixin with a ``Client`` as the executor under test.

    ``ExecutorMixin.setUp`` calls ``executor_type(max_workers=worker_count)``:
    ``Client`` accepts ``max_workers`` as the stdlib's name for ``workers``.
    """

    executor_type = Client


def _not_for_client(reason: str) -> Any:
    """A test method replaced by a skip that says why it cannot apply to a Client."""

    @unittest.skip(reason)
    def skipped(self: unittest.TestCase) -> None:  # pragma: no cover - never runs
        raise AssertionError(reason)

    return skipped


_SPAWNS_STDLIB_EXECUTOR = (
    "runs `from concurrent.futures import <executor_type.__name__>` in a child "
    "interpreter: it can only name a stdlib executor"
)


class ClientExecutorTest(ClientMixin, _executor.ExecutorTest, _util.BaseTestCase):
    """submit, map (order, exceptions, timeout, freed results), max_workers checks."""


class ClientWaitTest(ClientMixin, _wait.WaitTests, _util.BaseTestCase):
    """concurrent.futures.wait in all three modes, TaskFutures mixed with stdlib ones."""


class ClientAsCompletedTest(ClientMixin, _as_completed.AsCompletedTests, _util.BaseTestCase):
    """concurrent.futures.as_completed over TaskFutures and stdlib futures."""


class ClientShutdownTest(ClientMixin, _shutdown.ExecutorShutdownTest, _util.BaseTestCase):
    """shutdown: refuses new work, waits, cancel_futures cancels only what has not started."""

    test_interpreter_shutdown = _not_for_client(_SPAWNS_STDLIB_EXECUTOR)
    test_submit_after_interpreter_shutdown = _not_for_client(_SPAWNS_STDLIB_EXECUTOR)
    test_hang_gh83386 = _not_for_client(_SPAWNS_STDLIB_EXECUTOR)


def setUpModule() -> None:
    _util.setup_module()
