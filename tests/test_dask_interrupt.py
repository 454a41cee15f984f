"""``interrupt=True`` on the Dask engine: a forced cancel stops a running pure-Python
task, so the next task on that worker starts (issue 24). One ``LocalCluster`` for the
module: one worker process with one thread, so every task queues behind the last.

Tasks report by files: ``PATH.started`` when they start, ``PATH.ended`` if they ran to
their end. A busy loop runs until ``PATH.open`` exists (the test opens it at the end,
so an uninterrupted loop ends too).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

distributed = pytest.importorskip(
    "distributed", reason="the Dask engine needs distributed: pip install 'futurefsm[dask]'"
)

import cloudpickle  # noqa: E402

from futurefsm import CancelOutcome, Client  # noqa: E402
from futurefsm.engines import dask_plugin  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])

SLACK = 60.0
"""Bound on waits for what happens on a loaded runner (never reached when it works)."""


def busy_loop(path: str) -> int:
    """Task: pure Python, no C call that blocks, until ``PATH.open`` exists."""
    import os

    open(path + ".started", "w").close()
    spins = 0
    while not os.path.exists(path + ".open"):
        for _ in range(10_000):
            spins += 1
    open(path + ".ended", "w").close()
    return spins


def note_start(path: str, other: str) -> bool:
    """Task: say it started; True if ``other`` had ended by then."""
    import os

    open(path + ".started", "w").close()
    return os.path.exists(other + ".ended")


def wait_for_file(path: str) -> None:
    deadline = time.monotonic() + SLACK
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def cluster() -> Iterator[distributed.LocalCluster]:
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, dashboard_address=None, host="127.0.0.1"
    ) as cluster:
        yield cluster


def test_a_forced_cancel_with_interrupt_frees_the_thread(cluster, tmp_path: Path) -> None:
    loop, after = str(tmp_path / "loop"), str(tmp_path / "after")
    with Client(cluster.scheduler_address, engine="dask", interrupt=True) as client:
        try:
            running = client.submit(busy_loop, loop)
            wait_for_file(loop + ".started")
            assert running.cancel(timeout=SLACK) is True
            assert running.cancel_outcome is CancelOutcome.CONFIRMED
            # The one thread is free: the next task starts while the loop's gate is
            # shut (without the interrupt it waits for the gate: a TimeoutError here).
            assert client.submit(note_start, after, loop).result(timeout=SLACK) is False
            assert not os.path.exists(loop + ".ended")  # the loop never reached its end
        finally:
            # Inside the block: leaving it waits for every task, and an uninterrupted
            # loop (and what queues behind it) ends only once this exists.
            open(loop + ".open", "w").close()


def test_without_interrupt_a_cancelled_task_runs_to_its_end(cluster, tmp_path: Path) -> None:
    loop, after = str(tmp_path / "loop"), str(tmp_path / "after")
    with Client(cluster.scheduler_address, engine="dask") as client:
        running = client.submit(busy_loop, loop)
        wait_for_file(loop + ".started")
        assert running.cancel(timeout=SLACK) is True  # released, as Dask does
        follower = client.submit(note_start, after, loop)
        open(loop + ".open", "w").close()
        # The next task started only once the loop had ended: Dask's default.
        assert follower.result(timeout=SLACK) is True


def test_the_private_parts_the_interrupt_relies_on_are_there() -> None:
    """distributed is pinned (pyproject); this fails, naming the part, if it moves."""
    from distributed import worker

    assert callable(getattr(worker, "_run_task_simple", None)), (
        "distributed.worker._run_task_simple is gone: dask_plugin._inside_task_call "
        "looks for its frame"
    )
    source = Path(worker.__file__).read_text(encoding="utf-8")
    for name in ("active_threads_lock", "active_threads[ident] = key"):
        assert name in source, f"distributed.worker no longer has {name!r}"
    assert dask_plugin.INTERRUPT_OP == "futurefsm_interrupt"


class _SlowWorker:
    """A worker's RPCs as the scheduler plugin calls them: each waits for ``answer``."""

    def __init__(self, executing: dict[str, Any]) -> None:
        self.answer, self.executing = asyncio.Event(), executing
        self.interrupting = asyncio.Event()

    async def futurefsm_interrupt(self, keys: list[str]) -> list[str]:
        self.interrupting.set()
        await self.answer.wait()
        return keys

    async def call_stack(self, keys: list[str]) -> dict[str, Any]:
        await self.answer.wait()
        return self.executing


def _plugin_on_a_stub_scheduler(worker: _SlowWorker) -> tuple[Any, list[Any], list[Any]]:
    """The cancel plugin on a scheduler holding one processing key "k" of "client-1":
    (the plugin, the messages it sends the client, the keys it cancels)."""
    sent: list[Any] = []
    cancelled: list[Any] = []
    task = SimpleNamespace(
        state="processing",
        who_wants=[SimpleNamespace(client_key="client-1")],
        processing_on=SimpleNamespace(address="tcp://worker"),
    )
    plugin = dask_plugin.FutureFSMCancelPlugin()
    plugin.scheduler = SimpleNamespace(
        tasks={"k": task},
        client_comms={"client-1": SimpleNamespace(send=sent.append)},
        rpc=lambda address: worker,
        stimulus_cancel=lambda keys, client, **_: cancelled.append(keys),
        stream_handlers={},
        handlers={},
    )
    return plugin, sent, cancelled


def _answer(answers: dict[str, str]) -> dict[str, Any]:
    return {"op": dask_plugin.CANCEL_ANSWER_OP, "answers": answers}


def test_a_slow_interrupt_does_not_hold_up_the_clients_stream() -> None:
    # The scheduler reads a client's stream one handler at a time, awaiting each. A
    # worker whose thread spins in Python answered the interrupt RPC in 8 ms to 2.2 s
    # here; awaited in handle_cancel, that held up the client's pings (and its next
    # task) past its 5 s liveness deadline now and then: "the Dask scheduler answered
    # nothing". The answer goes at once, and handle_cancel returns while the
    # interrupt is still on its way (this one is never answered).
    async def cancel_then_close() -> tuple[Any, list[Any]]:
        worker = _SlowWorker({})
        plugin, sent, cancelled = _plugin_on_a_stub_scheduler(worker)
        await asyncio.wait_for(
            plugin.handle_cancel("client-1", ["k"], force=True, interrupt=True), timeout=SLACK
        )
        assert sent == [_answer({"k": "canceled"})]
        await asyncio.wait_for(worker.interrupting.wait(), SLACK)  # it was sent
        await plugin.close()  # and close() drops it
        return plugin, cancelled

    plugin, cancelled = asyncio.run(cancel_then_close())
    assert cancelled == [["k"]]
    assert not plugin._background


def test_a_non_forced_cancel_asks_the_workers_without_holding_up_the_stream() -> None:
    # Without force the plugin asks the workers which keys their threads run
    # (call_stack) before it answers: in a task of its own, so handle_cancel returns
    # at once; the answer follows the workers' (here: "k" is running: refused).
    async def cancel() -> tuple[list[Any], list[Any]]:
        worker = _SlowWorker({"k": ["a frame"]})
        plugin, sent, cancelled = _plugin_on_a_stub_scheduler(worker)
        await asyncio.wait_for(plugin.handle_cancel("client-1", ["k"], force=False), SLACK)
        assert sent == []  # not answered before the workers are
        worker.answer.set()
        await asyncio.wait_for(asyncio.gather(*plugin._background), SLACK)
        return sent, cancelled

    sent, cancelled = asyncio.run(cancel())
    assert sent == [_answer({"k": "cancel_failed"})]
    assert cancelled == []
