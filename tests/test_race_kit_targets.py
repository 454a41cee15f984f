"""The race kit on three futures nobody here wrote (docs/race-kit-findings.md).

Each target's test is skipped where its library is not installed, and checks the
findings of the release the page records: if an upgrade fixes a bug, the test says
which. None of the kit defects the page lists (K1-K6) may show: pebble and anyio
notify a cancelled future's waiters when they reach its task, as the stdlib's
executors do, and ``waiters_notified_once`` must not be reported for them.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from futurefsm.testing import RaceReport, check_future

ROOT = Path(__file__).resolve().parent.parent


def _example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _release(distribution: str, checked: str) -> None:
    version = importlib.metadata.version(distribution)
    if not version.startswith(checked):
        pytest.skip(f"the expected findings are {distribution} {checked}'s; this is {version}")


def _steps(report: RaceReport, invariant: str, shown: str) -> list[str]:
    """The minimal steps of the finding of ``invariant`` whose report shows ``shown``."""
    for finding in report.findings:
        if finding.invariant.name == invariant and shown in finding.report:
            return [str(move) for move in finding.moves]
    raise AssertionError(f"no {invariant} finding showing {shown!r} (fixed?):\n{report}")


def _reproduces(script: str) -> subprocess.CompletedProcess[str]:
    """Run a standalone reproduction; it exits 1 while the bug is there."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "repro" / script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, f"{script} no longer fails:\n{done.stdout}{done.stderr}"
    return done


# ---------------------------------------------------------------------------- pebble


PEBBLE_INTERNALS = (
    "pebble.pool.thread:get_next_task",
    "pebble.pool.thread:execute_next_task",
    "pebble.pool.process:PoolManager.schedule",
    "pebble.pool.process:PoolManager.update_tasks",
    "pebble.pool.process:PoolManager.handle_worker_expiration",
    "pebble.pool.process:PoolManager.handle_broken_pool",
    "pebble.pool.process:TaskManager.task_start",
    "pebble.pool.process:TaskManager.task_done",
    "pebble.pool.base_pool:PoolContext",
    "pebble.pool.base_pool:Task",
    "pebble.pool.base_pool:TaskPayload",
)
"""pebble's private parts the pebble harness drives (the test extra pins pebble 5.2)."""


def test_the_pebble_internals_the_harness_drives_are_there() -> None:
    pytest.importorskip("pebble")
    version = importlib.metadata.version("pebble")
    for name in PEBBLE_INTERNALS:
        module, _, path = name.partition(":")
        found: Any = importlib.import_module(module)
        for part in path.split("."):
            assert hasattr(found, part), (
                f"pebble {version} has no {name}: examples/pebble_future_harness.py drives it"
            )
            found = getattr(found, part)


def test_pebble_threadpool_runs_a_task_cancelled_after_a_worker_took_it() -> None:
    pytest.importorskip("pebble")
    _release("pebble", "5.2.")
    pebble = _example("pebble_future_harness")
    report = pebble.check_pebble(pebble.PebbleThreadHarness, futures=1, depth=3, random_runs=0)
    assert _steps(report, "nothing_raises_on_delivering_thread", "InvalidStateError") == [
        "worker_takes(f0)",
        "cancel(f0)",
        "result_success(f0)",
    ]
    assert report.invariants == {"nothing_raises_on_delivering_thread"}, str(report)
    shown = _reproduces("pebble_threadpool_cancel_after_take.py").stdout
    assert "cancel() returned True, yet the task ran" in shown
    assert "pool.join() never returns" in shown


def test_pebble_processpool_manager_keeps_the_universal_invariants() -> None:
    pytest.importorskip("pebble")
    _release("pebble", "5.2.")
    pebble = _example("pebble_future_harness")
    report = pebble.check_pebble(pebble.PebbleProcessHarness, futures=2, depth=2, random_runs=0)
    assert report.sequences_run >= 300, report.summary()
    assert report.findings == [], str(report)
    assert "waiters_notified_once" not in report.invariants


# ---------------------------------------------------------------------------- dask


@pytest.fixture(scope="module")
def dask_example() -> Any:
    pytest.importorskip("distributed")
    _release("distributed", "2026.8.")
    dask = _example("dask_future_harness")
    dask.dask_client()  # one LocalCluster for the module
    yield dask
    dask.stop_cluster()


def test_dask_result_with_timeout_zero_times_out_on_a_done_future(dask_example: Any) -> None:
    report = dask_example.check_dask(futures=1, depth=2, random_runs=0)
    # D1: one finding, whatever the path (the kit never takes the timeout for the
    # future's ending, so it shows nowhere else).
    (timed_out,) = [f for f in report.findings if "TimeoutError" in f.message]
    assert timed_out.invariant.name == "result_raises_cancelled_iff_cancelled"
    assert timed_out.steps == 1 and "done() is True" in timed_out.message
    # D2, documented by Client.cancel, not a bug: cancel() of a finished future
    # cancels it, on each path to done.
    assert _steps(report, "one_terminal_state", "now cancelled") in (
        ["result_success(f0)", "cancel(f0)"],
        ["result_failed(f0)", "cancel(f0)"],
    )
    assert report.invariants == {"result_raises_cancelled_iff_cancelled", "one_terminal_state"}
    assert len(report.findings) == 3, str(report)
    shown = _reproduces("dask_result_timeout_zero_on_done_future.py").stdout
    assert "result(timeout=0) of the finished future raised TimeoutError" in shown


def test_dask_futures_of_one_key_share_their_ending(dask_example: Any) -> None:
    from futurefsm.testing import DEFAULT_ACTIONS, Move, run_moves

    cancel = next(a for a in DEFAULT_ACTIONS if a.name == "cancel")
    harness = dask_example.DaskSharedKeyHarness()
    try:
        first, second = harness.create(), harness.create()
        assert first.key == second.key and first is not second
        first.cancel()
        assert second.cancelled()
    finally:
        harness.close()
    # Cancelled, both: its result(timeout=0) times out (D1), nothing else.
    broken = run_moves(dask_example.DaskSharedKeyHarness, [Move(cancel, 0)], contract=None)
    assert set(broken) <= {"result_raises_cancelled_iff_cancelled"}, broken


# ---------------------------------------------------------------------------- anyio


def test_anyio_portal_futures_keep_the_universal_invariants() -> None:
    pytest.importorskip("anyio")
    _release("anyio", "4.16.")
    anyio = _example("anyio_future_harness")
    report = anyio.check_anyio(futures=2, depth=2, random_runs=0)
    assert report.sequences_run >= 150, report.summary()
    assert report.findings == [], str(report)
    assert "waiters_notified_once" not in report.invariants
    shown = _reproduces("anyio_portal_cancel_as_task_ends.py").stdout
    assert "AttributeError" in shown


def test_the_anyio_harness_finds_a_planted_double_notification() -> None:
    pytest.importorskip("anyio")
    anyio = _example("anyio_future_harness")

    class Planted(anyio.AnyioPortalHarness):
        """Runs a finished future's callbacks a second time."""

        def deliver(self, action: str, future: Any, payload: Any) -> None:
            super().deliver(action, future, payload)
            if future is not None and future.done():
                future._invoke_callbacks()

    report = check_future(Planted, contract=None, futures=1, depth=2, random_runs=0)
    assert _steps(report, "callbacks_run_once", "ran [2] times") == ["result_success(f0)"]
