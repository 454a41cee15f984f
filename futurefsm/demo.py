"""``futurefsm demo``: real tasks on an in-process scheduler stub, cancelled in every phase.

The demo starts a ``SchedulerStub`` in this process, scripts it per task (a
``Behaviour`` for each arrival index), submits a batch, cancels futures in every
phase a cancel can meet, and prints one row per future: its final state, its cancel
outcome and how long the cancel (or the task) took. Nothing in it sleeps to
synchronise: tasks wait on gates that the demo opens, and each phase waits for the
event it needs with a deadline.
"""

from __future__ import annotations

import concurrent.futures as cf
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .client import Client, TaskFuture
from .fsm import TRANSITION_TABLE
from .scheduler_stub import Behaviour, SchedulerStub
from .scheduler_stub import sample_tasks as tasks

__all__ = ["main", "run_demo"]

_DEADLINE = 10.0  # seconds any phase may wait for what it needs


@dataclass
class Row:
    """One line of the demo's table."""

    label: str
    future: TaskFuture
    latency: float | None  # seconds; None where nothing was timed

    @property
    def cells(self) -> tuple[str, str, str, str]:
        outcome = self.future.cancel_outcome
        return (
            self.label,
            self.future.state.value,
            "-" if outcome is None else outcome.value,
            "-" if self.latency is None else f"{self.latency * 1000:8.2f} ms",
        )


def _wait_until(predicate: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + _DEADLINE
    while not predicate():
        if time.monotonic() > end:
            raise RuntimeError(f"demo: timed out waiting for {what}")
        time.sleep(0.001)


class _Demo:
    def __init__(self) -> None:
        # Behaviour of the n-th task to arrive: the demo sets it before submitting.
        self.plan: dict[int, Behaviour] = {}
        self.submitted = 0
        self.stub = SchedulerStub(workers=4, behaviour=self._behaviour_for)
        self.client = Client(self.stub.address, cancel_timeout=_DEADLINE)
        self.rows: list[Row] = []

    def _behaviour_for(self, index: int) -> Behaviour:
        return self.plan.get(index, Behaviour())

    def submit(self, fn: Callable[..., Any], *args: Any, behaviour: Behaviour | None = None):
        if behaviour is not None:
            self.plan[self.submitted] = behaviour
        self.submitted += 1
        return self.client.submit(fn, *args)

    def arrived(self, count: int) -> None:
        _wait_until(lambda: self.stub.stats()["tasks_received"] >= count, "tasks to arrive")

    def timed_cancel(self, label: str, future: TaskFuture, **kwargs: Any) -> bool:
        start = time.perf_counter()
        answer = future.cancel(**kwargs)
        self.rows.append(Row(label, future, time.perf_counter() - start))
        return answer

    def run(self) -> None:
        client, stub = self.client, self.stub

        # Plain work: a batch of small tasks.
        start = time.perf_counter()
        batch = [self.submit(tasks.add, i, i) for i in range(20)]
        assert [future.result(_DEADLINE) for future in batch] == [2 * i for i in range(20)]
        self.rows.append(Row("20 x add (batch)", batch[-1], time.perf_counter() - start))

        # Before sending: a done-callback runs on the client's I/O thread, so a task
        # submitted and cancelled there has not been sent yet.
        before_send: list[TaskFuture] = []

        def submit_and_cancel(_: TaskFuture) -> None:
            # Not self.submit: this task never reaches the scheduler, so it takes no
            # arrival index.
            future = self.client.submit(tasks.noop)
            future.cancel()  # on the I/O thread: never waits; nothing was sent
            before_send.append(future)

        # The callback is added while its task waits on a gate, so it runs on the I/O
        # thread when the result arrives (added to a finished future, it would run here).
        trigger = self.submit(tasks.gate_wait, "trigger")
        trigger.add_done_callback(submit_and_cancel)
        tasks.open_gate("trigger")
        _wait_until(lambda: bool(before_send), "the callback to run")
        self.rows.append(Row("cancel before sending", before_send[0], None))

        # All four workers busy on gates.
        running = [self.submit(tasks.gate_wait, f"run{i}", i) for i in range(4)]
        for i in range(4):
            if not tasks.wait_started(f"run{i}", _DEADLINE):
                raise RuntimeError("demo: a task did not start")

        # Queued: with every worker busy, a new task waits in the queue.
        queued = self.submit(tasks.noop)
        self.arrived(self.submitted)
        self.timed_cancel("cancel while queued", queued)

        # Running: cancel one of them (its worker process is killed; a spare takes the
        # slot at once).
        self.timed_cancel("cancel while running", running[0])

        # Racing a result: the scheduler lets the task finish and sends its result
        # before the confirm. The future still ends cancelled (RESULT_RACED).
        for i in range(1, 4):
            tasks.open_gate(f"run{i}")
        cf.wait(running[1:], timeout=_DEADLINE)
        racing = self.submit(
            tasks.gate_wait, "race", "raced", behaviour=Behaviour(on_cancel="result_then_confirm")
        )
        if not tasks.wait_started("race", _DEADLINE):
            raise RuntimeError("demo: the racing task did not start")
        cancels_before = stub.stats()["cancels_received"]
        start = time.perf_counter()
        answer = cf.ThreadPoolExecutor(1).submit(racing.cancel)
        _wait_until(lambda: stub.stats()["cancels_received"] > cancels_before, "the cancel")
        tasks.open_gate("race")
        answer.result(_DEADLINE)
        self.rows.append(Row("cancel racing the result", racing, time.perf_counter() - start))
        self.raced = racing

        # Refused: the scheduler answers cancel_failed; the task runs on and finishes.
        refused = self.submit(
            tasks.gate_wait, "refuse", "ran on", behaviour=Behaviour(on_cancel="cancel_failed")
        )
        if not tasks.wait_started("refuse", _DEADLINE):
            raise RuntimeError("demo: the refused task did not start")
        self.timed_cancel("cancel refused", refused)
        tasks.open_gate("refuse")
        refused.result(_DEADLINE)

        # Not found: the scheduler lost the result; it no longer knows the task.
        lost = self.submit(tasks.noop, behaviour=Behaviour(drop_result=True))
        _wait_until(lambda: stub.stats()["results_dropped"] >= 1, "the result to be dropped")
        self.timed_cancel("cancel after a lost result", lost)

        # Timed out: the scheduler ignores the cancel; the deadline decides.
        ignored = self.submit(tasks.gate_wait, "ignore", behaviour=Behaviour(on_cancel="ignore"))
        if not tasks.wait_started("ignore", _DEADLINE):
            raise RuntimeError("demo: the ignored task did not start")
        self.timed_cancel("cancel ignored (0.2 s deadline)", ignored, timeout=0.2)

        # A graph: cancelling one member cancels all of them.
        graph = client.submit_graph(
            {"load": (tasks.gate_wait, "graph", 1), "double": (tasks.add, "load", "load")}
        )
        if not tasks.wait_started("graph", _DEADLINE):
            raise RuntimeError("demo: the graph did not start")
        self.timed_cancel("graph: cancel 'double'", graph["double"])
        cf.wait(list(graph.values()), timeout=_DEADLINE)
        self.rows.append(Row("graph: sibling 'load'", graph["load"], None))

    def close(self) -> None:
        tasks.reset_gates()
        self.client.close()
        self.stub.stop()


def run_demo() -> tuple[list[Row], TaskFuture, dict[str, Any]]:
    """Run the demo; return its rows, the RESULT_RACED future and the client's stats."""
    demo = _Demo()
    try:
        demo.run()
        # A future's waiters wake as it ends; the client forgets it just after, on the
        # thread that ended it: the stats are taken once it has forgotten every one.
        _wait_until(lambda: not demo.client.futures, "the client to release every future")
        stats = demo.client.stats()
    finally:
        demo.close()
    return demo.rows, demo.raced, stats


def _diagram_dir(diagram_out: str) -> Path | str:
    """The directory for the path diagram, created if need be; or the error to print."""
    out = Path(diagram_out)
    if out.exists() and not out.is_dir():
        return f"--diagram-out {diagram_out}: is a file; expected a directory"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f"--diagram-out {diagram_out}: cannot create the directory: {error.strerror}"
    return out


def _path_text(raced: TaskFuture) -> str:
    """The raced future's path as one line: state -trigger-> state ..."""
    steps = [raced.history[0][2].value] if raced.history else []
    for _, trigger, source, dest in raced.history:
        outcome = TRANSITION_TABLE[source, trigger].outcome
        steps.append(f"-{trigger.value}-> {dest.value}")
        if outcome is not None:
            steps.append(f"[{outcome.name}]")
    return " ".join(steps)


def main(diagram_out: str | None = None) -> int:
    """Run the demo and print the table; exit code 0 when every phase behaved, 2 when
    ``diagram_out`` is not a usable directory (checked before anything runs).

    With ``diagram_out`` the raced future's path is written there as a Mermaid diagram;
    without it the path is printed as text and nothing is left on disk.
    """
    out = _diagram_dir(diagram_out) if diagram_out else None
    if isinstance(out, str):
        print(f"futurefsm demo: {out}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    rows, raced, stats = run_demo()
    header = ("task", "final state", "cancel outcome", "latency")
    widths = [max(len(header[i]), *(len(row.cells[i]) for row in rows)) for i in range(4)]
    print("  ".join(title.ljust(width) for title, width in zip(header, widths, strict=True)))
    print("  ".join("-" * width for width in widths))
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row.cells, widths, strict=True)))
    print()
    cancelled = {key: value for key, value in stats["cancelled"].items() if value}
    print(
        f"submitted {stats['submitted']}, completed {stats['completed']}, "
        f"failed {stats['failed']}, cancelled {cancelled}, "
        f"stale messages {stats['stale_messages']}, protocol errors {stats['protocol_errors']}"
    )
    print(f"path of the raced future: {_path_text(raced)}")
    if out is not None:
        from .diagrams import write_path_diagram

        path = write_path_diagram(raced.history, out / "result_raced_path.mmd")
        print(f"the same path on the state diagram (Mermaid): {path}")
    print(f"demo finished in {time.perf_counter() - started:.2f} s")
    return 0
