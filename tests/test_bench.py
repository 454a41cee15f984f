"""The benchmarks run and report every figure (speed is never asserted here)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from futurefsm.bench import e2e, engines, fsm
from futurefsm.bench.progress import stage, stages
from futurefsm.cli import _parser
from futurefsm.cli import main as cli_main


def test_fsm_benchmark_reports_three_ratios(capsys):
    assert cli_main(["bench", "fsm", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "lifecycle: TaskFuture / stdlib Future" in out
    assert "alive / with 100 alive" in out
    assert "memory per running future" in out
    figures = fsm.measure(number=200, repeat=1, alive=1_000)
    for key in ("lifecycle_ratio", "alive_ratio", "memory_ratio"):
        assert figures[key] > 0


def test_e2e_benchmark_measures_every_figure(capsys):
    with stages(e2e.STAGES, "bench e2e", disable=False) as bar:
        figures = e2e.measure(
            tasks_count=200,
            cancels=5,
            bulk=100,
            rounds=2,
            alive=(100, 400),
            one_at_a_time=20,
            blob_bytes=1_000_000,
            blob_reps=1,
        )
    assert bar.n == e2e.STAGES  # main's bar counts every stage measure() runs
    assert "bench e2e: 100%" in capsys.readouterr().err
    assert figures["echo_sequential_per_s"] > 0 and figures["tasks_per_s"] > 0
    cpu = figures["cpu_us_per_task"]
    assert cpu["client"] > 0
    if sys.platform == "linux":  # the scheduler's side is read from /proc (10 ms ticks:
        # too coarse to be above 0 for 200 tasks; test_cpu_of_a_process... checks values)
        assert set(cpu) == {"client", "scheduler", "workers"}
        assert cpu["scheduler"] >= 0 and cpu["workers"] >= 0
    # The denominator is the pipelined echo; the sequential one is shown for scale.
    assert figures["tasks_vs_pipelined"] == figures["tasks_per_s"] / figures["echo_pipelined_per_s"]
    # One task at a time against the echo's sequential round trip, both measured here.
    assert 0 < figures["task_round_trip_p50_us"] <= figures["task_round_trip_p99_us"]
    assert figures["round_trip_ratio"] == pytest.approx(
        figures["task_round_trip_p50_us"] / figures["echo_round_trip_p50_us"]
    )
    # The big argument's round trip against two raw hops of the same bytes.
    assert figures["blob_bytes"] == 1_000_000
    assert figures["two_hops_ms"] > 0 and figures["blob_round_trip_ms"] > 0
    assert figures["blob_ratio"] == pytest.approx(
        figures["blob_round_trip_ms"] / figures["two_hops_ms"]
    )
    if sys.platform == "linux":
        assert figures["scheduler_rss_bytes"] > 0
    assert figures["submit_few_us"] > 0 and figures["submit_many_us"] > 0
    assert figures["memory_live_future_bytes"] > 0 and figures["memory_stdlib_bytes"] > 0
    assert 0 < figures["cancel_p50_ms"] <= figures["cancel_p99_ms"]
    assert figures["bulk_cancel_s"] > 0 and figures["close_s"] > 0


def test_a_stage_outside_a_bar_is_silent_and_inside_one_is_counted(capsys):
    calls = []

    @stage
    def _warm_up(x):
        calls.append(x)
        return x * 2

    assert _warm_up(1) == 2
    assert capsys.readouterr().err == ""
    with stages(2, "demo bench", disable=False) as bar:
        assert _warm_up(2) == 4
        assert bar.n == 1 and bar.postfix == "warm up"
    assert calls == [1, 2]
    assert "demo bench:  50%" in capsys.readouterr().err


def test_engines_benchmark_measures_scaler_against_its_own_client():
    pytest.importorskip("scaler", reason="opengris-scaler is not installed: futurefsm[scaler]")
    assert _parser().parse_args(["bench", "engines", "--quick"]).which == "engines"
    figures = engines.measure_scaler(tasks=50, rounds=1, cancels=1)
    assert figures["own_s"] > 0 and figures["ours_s"] > 0
    assert figures["ratio"] == figures["ours_s"] / figures["own_s"]
    # Both cancels are Scaler's process kill: seconds, not milliseconds.
    assert figures["own_cancel_ms"] > 100 and figures["our_cancel_ms"] > 100


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_cpu_of_a_process_and_its_descendants_is_read_from_proc():
    before = e2e._cpu_seconds(os.getpid())
    start = time.process_time()
    while time.process_time() - start < 0.3:  # burn CPU in this process
        pass
    assert before is not None
    assert e2e._cpu_seconds(os.getpid()) - before >= 0.2
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        assert child.pid in e2e._descendants(os.getpid())
        own, descendants = e2e._scheduler_cpu(os.getpid())
        assert own >= 0.2 and descendants >= 0
    finally:
        child.communicate(b"")
    assert e2e._cpu_seconds(child.pid) is None  # gone: nothing to read
