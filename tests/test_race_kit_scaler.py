"""The race kit on upstream Scaler's ``ScalerFuture`` (``examples/scaler_future_harness.py``):
with opengris-scaler 2.9 it finds the three bugs issue 14 reports, each in 2 steps.

Skipped where Scaler is not installed. The expected findings are Scaler 2.9's bugs:
if an upgrade fixes one, this test says which (and the example's docstring needs
updating).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from futurefsm.testing.guide import GUIDE, scaler_findings, section

scaler = pytest.importorskip("scaler")
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "scaler_future_harness.py"


def _example():
    spec = importlib.util.spec_from_file_location("scaler_future_harness", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_kit_finds_scalers_three_bugs() -> None:
    version = (Path(scaler.__path__[0]) / "version.txt").read_text().strip()
    if not version.startswith("2.9."):
        pytest.skip(f"the expected findings are opengris-scaler 2.9's; this is {version}")
    report = _example().check_scaler_future(random_runs=0)
    print(report)

    def shortest(invariant: str, shown: str) -> int:
        steps = [
            f.steps for f in report.findings if f.invariant.name == invariant and shown in f.report
        ]
        assert steps, f"Scaler {version}: no {invariant} finding showing {shown!r} (fixed?)"
        return min(steps)

    # A done-callback on the I/O thread cancels another future: blocked forever.
    assert shortest("no_call_blocks_forever", "delivering thread did not finish") == 2
    # add_done_callback on a done future re-raises the callback's exception.
    assert shortest("callback_errors_contained", "add_done_callback(f0, raises)") == 2
    # Disconnect racing a result: FINISHED then CANCELLED, notified twice.
    assert shortest("callbacks_run_once", "1. disconnect") == 2
    assert shortest("waiters_notified_once", "1. disconnect") == 2
    # The guide's table of them is this run's (python -m futurefsm.testing.guide --scaler).
    guide = GUIDE.read_text(encoding="utf-8")
    assert section(guide, "scaler") == scaler_findings(report)


def test_the_example_exits_non_zero_on_a_finding() -> None:
    """``python examples/scaler_future_harness.py``, as a user runs it: Scaler 2.9's
    bugs are findings, so it prints the report and exits 1."""
    version = (Path(scaler.__path__[0]) / "version.txt").read_text().strip()
    if not version.startswith("2.9."):
        pytest.skip(f"the expected findings are opengris-scaler 2.9's; this is {version}")
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 1, f"exit {done.returncode}:\n{done.stdout}{done.stderr}"
    assert "race kit on ScalerHarness" in done.stdout
    assert "no_call_blocks_forever" in done.stdout, done.stdout
