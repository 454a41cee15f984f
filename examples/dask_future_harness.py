"""The race kit on ``distributed.Future`` (distributed 2026.8), on a real ``LocalCluster``.

Every future is a real task on a real in-process ``LocalCluster`` (one worker, its
threads in this process, the scheduler reached over the ``inproc`` transport; the
only sockets are the HTTP servers', on loopback). The task waits for its answer in a
``distributed.Variable``; delivering
``result_success`` / ``result_failed`` sets that variable, the worker returns or
raises it, and the delivery ends once the client has heard (``done()``), so steps
stay serialised. ``cancel()``, ``result()`` and done-callbacks are the user's real
calls. ``DaskSharedKeyHarness`` gives every future of a sequence the same key: Dask
then hands out futures that share one state.

Dask declares no table of its own, so only the universal invariants are checked.
The cluster is started on first use and stopped by ``stop_cluster()``. Run it:
``python examples/dask_future_harness.py`` (exits 1 on a finding).
"""

from __future__ import annotations

import sys
import threading
import uuid
from typing import Any

import distributed

from futurefsm.testing import RaceHarness, RaceReport, Unsupported, check_future

LOOPBACK = "127.0.0.1:0"  # the HTTP servers' address
DELIVERY_DEADLINE = 30.0  # seconds a delivered result may take to reach the client
_running: list[tuple[distributed.LocalCluster, distributed.Client]] = []


def dask_client() -> distributed.Client:
    """The one client of the one in-process cluster (started on first use)."""
    if not _running:
        cluster = distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=4,
            processes=False,
            dashboard_address=LOOPBACK,  # None still serves /health on 0.0.0.0
            worker_dashboard_address=LOOPBACK,
        )
        _running.append((cluster, distributed.Client(cluster, set_as_default=False)))
    return _running[0][1]


def stop_cluster() -> None:
    """Close the client and the cluster ``dask_client`` started."""
    while _running:
        cluster, client = _running.pop()
        client.close()
        cluster.close()


def _answer(name: str) -> Any:
    """The task: wait for the harness's answer, then return it or raise it."""
    kind, payload = distributed.Variable(name).get()
    if kind == "raise":
        raise payload
    return payload


class DaskHarness(RaceHarness):
    """Futures of fresh keys on the shared client (a fresh harness per sequence)."""

    unsupported = ("sent", "confirm_canceled", "confirm_not_found", "confirm_cancel_failed")
    unsupported += ("cancel_timed_out", "connection_lost", "disconnect", "cancel_all")
    shared_key = False

    def __init__(self) -> None:
        self.client = dask_client()
        self.answers: dict[distributed.Future, distributed.Variable] = {}

    def create(self) -> distributed.Future:
        name = f"racekit-{uuid.uuid4().hex}"
        if self.shared_key and self.answers:
            name = next(iter(self.answers.values())).name
        future = self.client.submit(_answer, name, key=name)
        self.answers[future] = distributed.Variable(name, client=self.client)
        return future

    def deliver(self, action: str, future: Any, payload: Any) -> None:
        if action not in ("result_success", "result_failed"):
            raise Unsupported(action)
        kind = "return" if action == "result_success" else "raise"
        heard = threading.Event()
        future.add_done_callback(lambda _: heard.set())
        self.answers[future].set((kind, payload))
        if not heard.wait(DELIVERY_DEADLINE):
            raise TimeoutError(f"{future.key}: no answer in {DELIVERY_DEADLINE} s")

    def state(self, future: distributed.Future) -> str:
        return str(future.status)

    def close(self) -> None:
        """Answer every task still waiting (a cancelled one still holds a worker thread)."""
        for variable in {v.name: v for v in self.answers.values()}.values():
            variable.set(("return", None))
        self.answers.clear()


class DaskSharedKeyHarness(DaskHarness):
    """Every future of a sequence has the same key: they share one state."""

    shared_key = True


def check_dask(harness: type[DaskHarness] = DaskHarness, **options: Any) -> RaceReport:
    """The race kit on ``distributed.Future`` (universal invariants only)."""
    options.setdefault("block_timeout", 2.0)  # a delivery is a round trip
    options.setdefault("loggers", ("concurrent.futures", "distributed"))
    return check_future(harness, contract=None, **options)


if __name__ == "__main__":
    try:
        reports = [check_dask(h) for h in (DaskHarness, DaskSharedKeyHarness)]
    finally:
        stop_cluster()
    print(*reports, sep="\n\n")
    sys.exit(1 if any(r.findings for r in reports) else 0)
