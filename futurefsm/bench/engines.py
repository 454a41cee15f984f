"""``futurefsm bench engines``: futurefsm's futures on another engine against that
engine's own client, on the same local cluster, alternated in one run
(docs/performance.md, docs/engine-scaler.md).

Per engine (one function each in ``ENGINE_BENCHES``: Scaler here, Dask in
``engines_dask``, Ray in ``engines_ray``; an engine whose package is not installed
is skipped with a note).
For Scaler:

1. 1000 no-op tasks submitted, then gathered with ``result()`` one by one, through the
   engine's own client and through ``Client(address, engine=...)``, rounds
   alternated; the ratio of the medians, target <= 1.05x;
2. the cancel of a running task, request to answer, through both; target: no slower
   than the engine's own + 5 ms (medians).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["ENGINE_BENCHES", "main", "measure_scaler"]

TASKS = 1000
RATIO_TARGET = 1.05
CANCEL_MARGIN_MS = 5.0


def noop() -> None:
    """The no-op task."""
    return None


def hold(path: str, limit: float = 60.0) -> None:
    """Mark ``path.started``, then run until cancelled (or ``limit`` seconds)."""
    Path(path + ".started").touch()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(0.01)


def _wait_started(path: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path + ".started"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the held task {path} did not start within {timeout} s")
        time.sleep(0.002)


def _gather(submit: Callable[..., Any], count: int) -> float:
    started = time.perf_counter()
    futures = [submit(noop) for _ in range(count)]
    for future in futures:
        future.result()
    return time.perf_counter() - started


def _cancel_latency(submit: Callable[..., Any], directory: str) -> float:
    path = os.path.join(directory, uuid.uuid4().hex)
    future = submit(hold, path)
    _wait_started(path)
    started = time.perf_counter()
    cancelled = future.cancel()
    took = time.perf_counter() - started
    if not cancelled:
        raise RuntimeError("the running task was not cancelled")
    return took


# ---------------------------------------------------------------------- Scaler


def measure_scaler(tasks: int = TASKS, rounds: int = 5, cancels: int = 3) -> dict[str, Any]:
    """Start a local Scaler cluster (2 workers) and measure both clients on it."""
    import cloudpickle
    import scaler

    from ..client import Client

    # The workers need not import futurefsm: the task functions travel by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cluster = scaler.SchedulerClusterCombo(n_workers=2, logging_level="WARNING")
    own = scaler.Client(cluster.get_address())
    ours = Client(cluster.get_address(), engine="scaler")
    try:
        for client in (own, ours):  # warm up: functions uploaded, processes started
            _gather(client.submit, 50)
        own_times, our_times = [], []
        for _ in range(rounds):
            own_times.append(_gather(own.submit, tasks))
            our_times.append(_gather(ours.submit, tasks))
        own_cancels, our_cancels = [], []
        with tempfile.TemporaryDirectory() as directory:
            for _ in range(cancels):
                own_cancels.append(_cancel_latency(own.submit, directory))
                our_cancels.append(_cancel_latency(ours.submit, directory))
    finally:
        ours.close()
        own.disconnect()
        cluster.shutdown()
    own_s, our_s = statistics.median(own_times), statistics.median(our_times)
    own_cancel, our_cancel = statistics.median(own_cancels), statistics.median(our_cancels)
    return {
        "tasks": tasks,
        "own_s": own_s,
        "ours_s": our_s,
        "ratio": our_s / own_s,
        "own_rounds": own_times,
        "our_rounds": our_times,
        "own_cancel_ms": own_cancel * 1000,
        "our_cancel_ms": our_cancel * 1000,
    }


def _report_scaler(quick: bool) -> None:
    figures = measure_scaler(rounds=2, cancels=1) if quick else measure_scaler()
    ok = figures["ratio"] <= RATIO_TARGET
    print(
        f"scaler: {figures['tasks']} no-op tasks, median of "
        f"{len(figures['own_rounds'])} alternated rounds: Scaler's client "
        f"{figures['own_s']:.3f} s, futurefsm {figures['ours_s']:.3f} s"
    )
    print(
        f"scaler: futurefsm / Scaler's own: {figures['ratio']:.3f}x   "
        f"target <= {RATIO_TARGET}x {'ok' if ok else 'MISSED'}"
    )
    print(
        "scaler: rounds (s): Scaler "
        + " ".join(f"{t:.3f}" for t in figures["own_rounds"])
        + " | futurefsm "
        + " ".join(f"{t:.3f}" for t in figures["our_rounds"])
    )
    margin = figures["our_cancel_ms"] - figures["own_cancel_ms"]
    print(
        f"scaler: cancel of a running task: Scaler's client {figures['own_cancel_ms']:.1f} ms, "
        f"futurefsm {figures['our_cancel_ms']:.1f} ms ({margin:+.1f} ms; target <= "
        f"+{CANCEL_MARGIN_MS:.0f} ms {'ok' if margin <= CANCEL_MARGIN_MS else 'MISSED'})"
    )


def _report_dask(quick: bool) -> None:
    from .engines_dask import main as dask_main

    dask_main(quick=quick)


def _report_ray(quick: bool) -> None:
    from .engines_ray import main as ray_main

    ray_main(quick=quick)


ENGINE_BENCHES: dict[str, tuple[str, Callable[[bool], None]]] = {
    "scaler": ("scaler", _report_scaler),
    "dask": ("distributed", _report_dask),
    "ray": ("ray", _report_ray),
}
"""Engine name -> (the module it needs, the function that measures and prints)."""


def main(quick: bool = False, engines: list[str] | None = None) -> int:
    """Run every engine's benchmark (or those named); exit code 0 either way."""
    import importlib.util

    for name, (module, report) in ENGINE_BENCHES.items():
        if engines and name not in engines:
            continue
        if importlib.util.find_spec(module) is None:
            print(f"{name}: skipped ({module} is not installed: pip install 'futurefsm[{name}]')")
            continue
        report(quick)
    return 0
