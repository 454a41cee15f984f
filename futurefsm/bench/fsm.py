"""``futurefsm bench fsm``: the cost of a TaskFuture against a stdlib Future.

Three ratios (docs/performance.md):

1. lifecycle (create, sent, result, ``result()``) of a TaskFuture / of a stdlib
   ``Future`` doing the same (create, set_running_or_notify_cancel, set_result,
   ``result()``); target at most 4x;
2. the TaskFuture lifecycle with 100,000 futures alive / with 100 alive; target at
   most 1.25x (nothing is O(n) in the number of live futures);
3. memory per live running TaskFuture / per running stdlib Future; target at most 2x.
"""

from __future__ import annotations

import gc
import os
import timeit
import tracemalloc
from collections.abc import Callable
from concurrent.futures import Future

from ..client.future import TaskFuture

__all__ = ["main", "measure"]

_TASK_ID = os.urandom(16)


class _NullTransport:
    """A transport that does nothing: the benchmark measures the future alone."""

    cancel_timeout = 30.0

    def send_cancel(self, future: TaskFuture, deadline: float, force: bool = True) -> None:
        pass

    def release(self, future: TaskFuture) -> None:
        pass

    def on_io_thread(self) -> bool:
        return False


_TRANSPORT = _NullTransport()


def _stdlib_lifecycle() -> None:
    future: Future[int] = Future()
    future.set_running_or_notify_cancel()
    future.set_result(1)
    future.result()


def _taskfuture_lifecycle() -> None:
    future = TaskFuture(_TASK_ID, _TRANSPORT)
    future.sent()
    future.recv_result(1)
    future.result()


def _best_per_call(fn: Callable[[], None], number: int, repeat: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number


def _running_taskfuture() -> TaskFuture:
    future = TaskFuture(_TASK_ID, _TRANSPORT)
    future.sent()
    return future


def _running_stdlib_future() -> Future[int]:
    future: Future[int] = Future()
    future.set_running_or_notify_cancel()
    return future


def _bytes_per_object(make: Callable[[], object], count: int) -> float:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    keep = [make() for _ in range(count)]
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    total = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    # The list holding them is not part of either object.
    total -= keep.__sizeof__()
    del keep
    return total / count


def measure(number: int = 20_000, repeat: int = 7, alive: int = 100_000) -> dict[str, float]:
    """Run the three measurements and return the figures (seconds, bytes, ratios)."""
    stdlib = _best_per_call(_stdlib_lifecycle, number, repeat)
    ours = _best_per_call(_taskfuture_lifecycle, number, repeat)

    few = [_running_taskfuture() for _ in range(100)]
    with_few = _best_per_call(_taskfuture_lifecycle, number, repeat)
    many = [_running_taskfuture() for _ in range(alive)]
    with_many = _best_per_call(_taskfuture_lifecycle, number, repeat)
    # Finish them, so the live set is really live futures the machine drives.
    for future in many + few:
        future.recv_result(None)
    del few, many

    memory_ours = _bytes_per_object(_running_taskfuture, 20_000)
    memory_stdlib = _bytes_per_object(_running_stdlib_future, 20_000)
    return {
        "lifecycle_stdlib_us": stdlib * 1e6,
        "lifecycle_taskfuture_us": ours * 1e6,
        "lifecycle_ratio": ours / stdlib,
        "alive_100_us": with_few * 1e6,
        "alive_many_us": with_many * 1e6,
        "alive_ratio": with_many / with_few,
        "alive": alive,
        "memory_stdlib_bytes": memory_stdlib,
        "memory_taskfuture_bytes": memory_ours,
        "memory_ratio": memory_ours / memory_stdlib,
    }


def main(quick: bool = False) -> int:
    """Print the three ratios against their targets; exit code 0 either way."""
    figures = measure(number=2_000, repeat=3, alive=10_000) if quick else measure()
    rows = [
        (
            "lifecycle: TaskFuture / stdlib Future",
            f"{figures['lifecycle_taskfuture_us']:.2f} us"
            f" / {figures['lifecycle_stdlib_us']:.2f} us",
            figures["lifecycle_ratio"],
            4.0,
        ),
        (
            f"lifecycle with {figures['alive']:,} alive / with 100 alive",
            f"{figures['alive_many_us']:.2f} us / {figures['alive_100_us']:.2f} us",
            figures["alive_ratio"],
            1.25,
        ),
        (
            "memory per running future: TaskFuture / stdlib",
            f"{figures['memory_taskfuture_bytes']:.0f} B / {figures['memory_stdlib_bytes']:.0f} B",
            figures["memory_ratio"],
            2.0,
        ),
    ]
    print(f"{'figure':<50} {'measured':<26} {'ratio':>7}  target")
    for name, measured, ratio, target in rows:
        verdict = "ok" if ratio <= target else "MISSED"
        print(f"{name:<50} {measured:<26} {ratio:>6.2f}x  <= {target}x {verdict}")
    return 0
