"""``futurefsm bench engines`` (Ray part): futurefsm's futures on Ray vs Ray's own API.

Figures, measured in one run on one local Ray cluster (``LocalRayCluster``: ``ray
start --head`` on loopback, 2 CPUs), one driver connection shared by both sides:

1. wall time of 1000 no-op tasks: Ray's own ``ray.get([f.remote(i) for i in ...])``
   against ``futurefsm.Client(address, engine="ray")`` (submit each, then every
   ``result()``), alternated round by round (ABBA); the median of the rounds' ratios
   (and the ratio of the medians): target <= 1.05x. Thirty rounds: on the shared
   2-core machine one round's ratio varies by about 10% either way, so the median
   of 10 rounds moved by 0.05 from run to run (1.008x to 1.111x in four runs of one
   build); the quartiles of the rounds' ratios are printed beside it;
2. the cancel of a running task, request to answer: Ray's own is
   ``ray.cancel(ref, force=True)`` until ``ray.get`` raises ``TaskCancelledError``
   (Ray's only answer); futurefsm's is ``future.cancel()`` until it returns,
   confirmed. Target: medians within Ray's own + 5 ms.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from ..engines.ray_cluster import LocalRayCluster, use_loopback

__all__ = ["main", "measure"]

RATIO_TARGET = 1.05
CANCEL_MARGIN_MS = 5.0


def noop(i: int) -> int:
    """The no-op task."""
    return i


def hold(path: str, limit: float = 60.0) -> None:
    """Mark ``path.started``, then spin in Python until cancelled (or ``limit``)."""
    Path(path + ".started").touch()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        pass


def _wait_started(path: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path + ".started"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the held task {path} did not start within {timeout} s")
        time.sleep(0.002)


def _ray_round(remote_noop: Any, count: int) -> float:
    import ray

    started = time.perf_counter()
    ray.get([remote_noop.remote(i) for i in range(count)])
    return time.perf_counter() - started


def _futurefsm_round(client: Any, count: int) -> float:
    started = time.perf_counter()
    futures = [client.submit(noop, i) for i in range(count)]
    for future in futures:
        future.result()
    return time.perf_counter() - started


def _ray_cancel(remote_hold: Any, directory: str) -> float:
    import ray
    from ray.exceptions import TaskCancelledError

    path = os.path.join(directory, uuid.uuid4().hex)
    ref = remote_hold.remote(path)
    _wait_started(path)
    started = time.perf_counter()
    ray.cancel(ref, force=True)
    try:
        ray.get(ref, timeout=60)
    except TaskCancelledError:
        return time.perf_counter() - started
    raise RuntimeError("Ray's cancel of a running task did not end it cancelled")


def _futurefsm_cancel(client: Any, directory: str) -> float:
    from ..fsm import CancelOutcome

    path = os.path.join(directory, uuid.uuid4().hex)
    future = client.submit(hold, path)
    _wait_started(path)
    started = time.perf_counter()
    cancelled = future.cancel()
    took = time.perf_counter() - started
    if not cancelled or future.cancel_outcome is not CancelOutcome.CONFIRMED:
        raise RuntimeError(f"futurefsm's cancel ended {future.cancel_outcome}")
    return took


def _quartiles(values: list[float]) -> tuple[float, float]:
    """The first and third quartiles (the values themselves with fewer than two)."""
    if len(values) < 2:
        return min(values), max(values)
    quartiles = statistics.quantiles(values, n=4, method="inclusive")
    return quartiles[0], quartiles[2]


def measure(
    tasks: int = 1000, rounds: int = 30, cancels: int = 5, address: str | None = None
) -> dict[str, Any]:
    """Every figure on the Ray cluster at ``address`` (None: a new LocalRayCluster)."""
    if address is None:
        with LocalRayCluster(cpus=2) as cluster:
            return measure(tasks, rounds, cancels, cluster.address)
    use_loopback()
    import ray

    from ..client import Client

    client = Client(address, engine="ray")  # the driver's ray.init, shared with Ray's side
    try:
        remote_noop = ray.remote(noop)
        remote_hold = ray.remote(max_retries=0)(hold)
        _ray_round(remote_noop, 100)  # warm up: functions exported, workers started
        _futurefsm_round(client, 100)
        ray_times: list[float] = []
        our_times: list[float] = []
        for number in range(rounds):
            ray_first = number % 4 in (0, 3)  # ABBA: neither side always goes first
            for side in ("ray", "futurefsm") if ray_first else ("futurefsm", "ray"):
                if side == "ray":
                    ray_times.append(_ray_round(remote_noop, tasks))
                else:
                    our_times.append(_futurefsm_round(client, tasks))
        ray_cancels: list[float] = []
        our_cancels: list[float] = []
        with tempfile.TemporaryDirectory() as directory:
            for _ in range(cancels):
                ray_cancels.append(_ray_cancel(remote_hold, directory))
                our_cancels.append(_futurefsm_cancel(client, directory))
    finally:
        client.close()
    pair_ratios = [ours / theirs for ours, theirs in zip(our_times, ray_times, strict=True)]
    ray_median, our_median = statistics.median(ray_times), statistics.median(our_times)
    return {
        "tasks": tasks,
        "rounds": rounds,
        "ray_s": ray_median,
        "futurefsm_s": our_median,
        "ratio": statistics.median(pair_ratios),
        "ratio_quartiles": _quartiles(pair_ratios),
        "ratio_of_medians": our_median / ray_median,
        "ray_times": ray_times,
        "futurefsm_times": our_times,
        "ray_cancel_ms": 1000 * statistics.median(ray_cancels),
        "futurefsm_cancel_ms": 1000 * statistics.median(our_cancels),
        "ray_cancels_ms": [1000 * t for t in ray_cancels],
        "futurefsm_cancels_ms": [1000 * t for t in our_cancels],
    }


def main(quick: bool = False) -> int:
    """Print the figures (``futurefsm bench engines``)."""
    use_loopback()
    figures = measure(tasks=200, rounds=2, cancels=2) if quick else measure()
    ok = figures["ratio"] <= RATIO_TARGET
    low, high = figures["ratio_quartiles"]
    print(
        f"ray: {figures['tasks']} no-op tasks, {figures['rounds']} alternated rounds: "
        f"ray.get([f.remote(i) ...]) {figures['ray_s']:.3f} s, futurefsm "
        f"{figures['futurefsm_s']:.3f} s (medians)"
    )
    print(
        f"ray: futurefsm / Ray's own: {figures['ratio']:.3f}x (median of the rounds' ratios, "
        f"quartiles {low:.3f}x-{high:.3f}x; ratio of the medians "
        f"{figures['ratio_of_medians']:.3f}x)   target <= "
        f"{RATIO_TARGET}x {'ok' if ok else 'MISSED'}"
    )
    margin = figures["futurefsm_cancel_ms"] - figures["ray_cancel_ms"]
    print(
        f"ray: cancel of a running task (forced), request to answer: Ray's own "
        f"(ray.cancel until ray.get raises) {figures['ray_cancel_ms']:.1f} ms, futurefsm "
        f"{figures['futurefsm_cancel_ms']:.1f} ms ({margin:+.1f} ms; target <= "
        f"+{CANCEL_MARGIN_MS:.0f} ms {'ok' if margin <= CANCEL_MARGIN_MS else 'MISSED'})"
    )
    return 0
