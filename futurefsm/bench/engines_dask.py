"""``futurefsm bench engines`` (Dask part): futurefsm's futures on Dask vs Dask's own client.

Figures, measured in one run on one ``distributed.LocalCluster`` (2 worker processes,
one thread each):

1. wall time of 1000 no-op tasks (submit each, then every result) through Dask's own
   ``distributed.Client`` and through ``futurefsm.Client(addr, engine="dask")``,
   alternated round by round (ABBA, so neither side always goes first), each round
   starting on a quiet scheduler (no task left from the round before); the median of
   the rounds' ratios (the ratio of the medians is printed too): target <= 1.05x;
2. confirmed cancel of a running task, request to answer (``future.cancel()`` until
   the scheduler's plugin has answered ``canceled``): p50 target <= 10 ms. Dask's own
   cancel answers nothing, so it has no counterpart.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from ..client import Client
from ..fsm import CancelOutcome
from ..scheduler_stub import sample_tasks as tasks

__all__ = ["main", "measure"]


def _dask_round(dask_client: Any, count: int) -> float:
    started = time.perf_counter()
    futures = [dask_client.submit(tasks.noop, pure=False) for _ in range(count)]
    dask_client.gather(futures)
    elapsed = time.perf_counter() - started
    del futures
    return elapsed


def _futurefsm_round(client: Client, count: int) -> float:
    started = time.perf_counter()
    futures = [client.submit(tasks.noop) for _ in range(count)]
    for future in futures:
        future.result()
    return time.perf_counter() - started


def _quiesce(dask_client: Any, timeout: float = 30.0) -> None:
    """Wait until the scheduler holds no task: every round starts from the same
    quiet cluster, and neither side's releases are charged to the other's round."""

    def count(dask_scheduler: Any) -> int:
        return len(dask_scheduler.tasks)

    deadline = time.monotonic() + timeout
    while dask_client.run_on_scheduler(count) and time.monotonic() < deadline:
        time.sleep(0.01)


def _cancel_latencies(client: Client, samples: int) -> list[float]:
    """Seconds from ``cancel()`` to its confirmed answer, for tasks that are running."""
    latencies = []
    for _ in range(samples):
        future = client.submit(tasks.sleep_then, 0.05, None)
        # Long enough for the task to reach a worker: a benchmark may sleep.
        time.sleep(0.02)
        started = time.perf_counter()
        cancelled = future.cancel()
        elapsed = time.perf_counter() - started
        if cancelled and future.cancel_outcome is CancelOutcome.CONFIRMED:
            latencies.append(elapsed)
        # Dask lets the cancelled task's thread run to its end: let it free its slot.
        time.sleep(0.05)
    return latencies


def measure(
    tasks_count: int = 1000, rounds: int = 10, cancels: int = 40, address: str | None = None
) -> dict[str, Any]:
    """Run every figure on the Dask scheduler at ``address`` (None: a fresh
    LocalCluster with 2 worker processes); return them in a dict."""
    import distributed

    if address is None:
        with distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address="127.0.0.1:0",
            worker_dashboard_address="127.0.0.1:0",
        ) as cluster:
            return measure(tasks_count, rounds, cancels, cluster.scheduler_address)
    dask_client = distributed.Client(address, set_as_default=False)
    client = Client(address, engine="dask")
    try:
        dask_client.wait_for_workers(2, timeout=60)
        _dask_round(dask_client, 100)  # warm both up (imports, connections)
        _futurefsm_round(client, 100)
        dask_times: list[float] = []
        futurefsm_times: list[float] = []
        for number in range(rounds):
            dask_first = number % 4 in (0, 3)  # ABBA: neither side always goes first
            for side in ("dask", "futurefsm") if dask_first else ("futurefsm", "dask"):
                _quiesce(dask_client)
                if side == "dask":
                    dask_times.append(_dask_round(dask_client, tasks_count))
                else:
                    futurefsm_times.append(_futurefsm_round(client, tasks_count))
        latencies = sorted(_cancel_latencies(client, cancels))
    finally:
        client.close()
        dask_client.close()
    dask_median = statistics.median(dask_times)
    futurefsm_median = statistics.median(futurefsm_times)
    # Each round's two runs ran back to back: the median of their ratios is robust to
    # load that drifts during the run (other processes on a shared machine).
    pair_ratios = [f / d for f, d in zip(futurefsm_times, dask_times, strict=True)]
    figures: dict[str, Any] = {
        "tasks": tasks_count,
        "rounds": rounds,
        "dask_s": dask_median,
        "futurefsm_s": futurefsm_median,
        "ratio": statistics.median(pair_ratios),
        "ratio_of_medians": futurefsm_median / dask_median,
        "dask_times": dask_times,
        "futurefsm_times": futurefsm_times,
        "cancels_confirmed": len(latencies),
    }
    if latencies:
        figures["cancel_p50_ms"] = 1000 * statistics.median(latencies)
        figures["cancel_p99_ms"] = (
            1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        )
    return figures


def main(quick: bool = False) -> int:
    """Print the figures (``futurefsm bench engines``)."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        print("dask: skipped (pip install 'futurefsm[dask]')")
        return 0
    if quick:
        figures = measure(tasks_count=200, rounds=2, cancels=5)
    else:
        figures = measure()
    print(
        f"dask: {figures['tasks']} no-op tasks, {figures['rounds']} alternated rounds: "
        f"Dask's client {figures['dask_s']:.3f} s, futurefsm {figures['futurefsm_s']:.3f} s "
        f"(medians): ratio {figures['ratio']:.3f}x (median of the rounds' ratios; "
        f"ratio of the medians {figures['ratio_of_medians']:.3f}x) (target <= 1.05x)"
    )
    if "cancel_p50_ms" in figures:
        print(
            f"dask: confirmed cancel of a running task, request to answer: "
            f"p50 {figures['cancel_p50_ms']:.1f} ms, p99 {figures['cancel_p99_ms']:.1f} ms "
            f"over {figures['cancels_confirmed']} cancels (target p50 <= 10 ms)"
        )
    else:
        print("dask: no cancel was confirmed (every task finished first)")
    return 0
