"""``futurefsm bench e2e``: client and scheduler stub end to end (docs/performance.md).

Figures, all measured in one run:

1. no-op tasks per second through ``Client`` and a ``SchedulerStub`` running in its
   own process (``futurefsm scheduler``), against the *pipelined* raw pyzmq+msgpack
   echo rate between two processes (this process sends every message without
   waiting, a ROUTER in another process echoes each one back); target >= 1.0x
   (batching: a task no longer costs a message each way, so the echo is no ceiling).
   The sequential echo (one message out, one back, in turn) is printed too, for scale.
   Echo and tasks are measured alternately, best of ``rounds`` each, so a burst of
   load from elsewhere on the machine hits both sides alike;
2. one task at a time: ``submit(noop).result()`` in a loop against a ``futurefsm
   scheduler`` process with two workers, its round trip's p50 and p99, against the
   echo's sequential round trip p50 (one message out, one back); target p50 <= 2.0x
   (a task crosses four hops, client -> scheduler -> worker -> scheduler -> client,
   the echo two). Alternated ``rounds`` times, every sample of each side pooled;
3. big data: ``submit(len, blob)`` with a 50 MB ``bytes`` argument, round trip
   (median), against two raw ZeroMQ hops of the same bytes between two processes
   (the data crosses two: client -> scheduler -> worker; one hop is timed as the
   blob sent zero-copy to a ROUTER in another process that answers its length);
   target <= 2x. The scheduler's resident memory after them is printed too;
4. the CPU cost of ``submit()`` while the client holds many live futures: per submit,
   growing from 50,000 to 100,000 live futures / growing from 1,000 to 2,000 (the
   median of ``rounds`` alternated runs each: the collector's cost counts);
   target <= 1.25x (the garbage collector walks live futures: few tracked objects
   per future keep this flat). The garbage collector runs as a user's would;
5. memory per live future (submitted, its Task handed to the socket, the client's
   registry entry included) / per running stdlib ``Future``; target <= 2x;
6. cancel of a running task, request to answer: p50 <= 2 ms, p99 <= 10 ms (the
   default configuration: the task runs on a worker process, which the cancel kills;
   the answer comes once that process is gone);
7. bulk cancel of 10,000 tasks: <= 1 s;
8. ``close()`` with 10,000 outstanding: <= 2 s.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgpack
import zmq

from ..client import Client
from ..client.future import TaskFuture
from ..fsm import FutureState
from ..scheduler_stub import SchedulerStub
from ..scheduler_stub import sample_tasks as tasks
from .fsm import _bytes_per_object, _running_stdlib_future
from .progress import stage, stages

__all__ = ["STAGES", "main", "measure"]

STAGES = 7
"""The ``@stage`` functions ``measure`` runs: the length of ``main``'s progress bar."""

_ECHO_SERVER = """
import sys, msgpack, zmq
context = zmq.Context()
router = context.socket(zmq.ROUTER)
router.setsockopt(zmq.ROUTER_MANDATORY, 1)
port = router.bind_to_random_port("tcp://127.0.0.1")
print(f"ready tcp://127.0.0.1:{port}", flush=True)
while True:
    identity, frame = router.recv_multipart()
    message = msgpack.unpackb(frame)
    if message == "stop":
        break
    router.send_multipart([identity, msgpack.packb(message)])
"""


_BULK_SERVER = """
import zmq
context = zmq.Context()
router = context.socket(zmq.ROUTER)
port = router.bind_to_random_port("tcp://127.0.0.1")
print(f"ready tcp://127.0.0.1:{port}", flush=True)
while True:
    identity, frame = router.recv_multipart(copy=False)
    router.send_multipart([identity, str(len(frame.buffer)).encode()])
"""


@contextmanager
def _process(
    args: list[str], ready_word: str, *, kill: bool = False
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Run ``args``; wait for a line containing ``ready_word``; yield the process and
    that line; terminate (or, with ``kill``, kill: its workers may be stuck in long
    tasks) at the end."""
    process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if ready_word not in line:
            raise RuntimeError(f"benchmark helper did not start: {args!r} said {line!r}")
        yield process, line
    finally:
        if kill:
            process.kill()
        else:
            process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def _echo_server() -> Iterator[str]:
    """A raw ROUTER echo in its own process, on a port it picks; yields its address."""
    with _process([sys.executable, "-c", _ECHO_SERVER], "ready") as (_, line):
        yield line.split()[-1]


# A message shaped like a Task: version, type, 16-byte id, two small payloads.
_ECHO_MESSAGE = [1, 1, os.urandom(16), os.urandom(60), os.urandom(20), None, []]


@contextmanager
def _dealer(address: str) -> Iterator[zmq.Socket[Any]]:
    """A DEALER connected to ``address`` (no high water marks), closed at the end."""
    context: zmq.Context[Any] = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.SNDHWM, 0)
    dealer.setsockopt(zmq.RCVHWM, 0)
    dealer.connect(address)
    try:
        yield dealer
    finally:
        dealer.close()
        context.term()


def _echo_round_trips(address: str, count: int) -> list[float]:
    """Seconds of each of ``count`` sequential round trips with the echo at ``address``."""
    message, pack, unpack, clock = _ECHO_MESSAGE, msgpack.packb, msgpack.unpackb, time.perf_counter
    with _dealer(address) as dealer:
        for _ in range(100):  # warm up the connection
            dealer.send(pack(message))
            unpack(dealer.recv())
        samples = []
        for _ in range(count):
            start = clock()
            dealer.send(pack(message))
            unpack(dealer.recv())
            samples.append(clock() - start)
    return samples


def _echo_rates(address: str, count: int) -> tuple[float, float]:
    """(sequential, pipelined) round trips per second with the echo at ``address``."""
    message = _ECHO_MESSAGE
    with _dealer(address) as dealer:
        for _ in range(100):  # warm up the connection
            dealer.send(msgpack.packb(message))
            msgpack.unpackb(dealer.recv())
        start = time.perf_counter()
        for _ in range(count):
            dealer.send(msgpack.packb(message))
            msgpack.unpackb(dealer.recv())
        sequential = count / (time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(count):
            dealer.send(msgpack.packb(message))
        for _ in range(count):
            msgpack.unpackb(dealer.recv())
        pipelined = count / (time.perf_counter() - start)
    return sequential, pipelined


@contextmanager
def _scheduler_process(workers: int, *, kill: bool = False) -> Iterator[str]:
    with _scheduler_process_and_pid(workers, kill=kill) as (address, _):
        yield address


@contextmanager
def _scheduler_process_and_pid(workers: int, *, kill: bool = False) -> Iterator[tuple[str, int]]:
    # Port 0: the scheduler binds a free port itself and prints its address.
    args = [sys.executable, "-m", "futurefsm", "scheduler", "--address", "tcp://127.0.0.1:0"]
    with _process([*args, "--workers", str(workers)], "listening", kill=kill) as (process, line):
        yield line.rsplit(" ", 1)[-1].strip(), process.pid


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` so far, from ``/proc`` (None elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime


def _descendants(pid: int) -> list[int]:
    """The live descendants of ``pid`` (Linux ``/proc``; empty elsewhere)."""
    found: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for thread in threads:
        try:
            with open(f"/proc/{pid}/task/{thread}/children") as children:
                pids = [int(child) for child in children.read().split()]
        except OSError:
            continue
        for child in pids:
            found.append(child)
            found.extend(_descendants(child))
    return found


def _scheduler_cpu(pid: int) -> tuple[float, float] | None:
    """(the scheduler's CPU seconds, its descendants': the zygote and the workers)."""
    own = _cpu_seconds(pid)
    if own is None:
        return None
    return own, sum(_cpu_seconds(child) or 0.0 for child in _descendants(pid))


def _task_rate(address: str, count: int, pid: int | None = None) -> tuple[float, list[float]]:
    """(no-op tasks per second, CPU microseconds per task of [client, scheduler,
    workers]; the last two empty without ``pid`` or ``/proc``)."""
    with Client(address) as client:
        client.submit(tasks.noop).result(30)  # connected and warm
        scheduler_before = None if pid is None else _scheduler_cpu(pid)
        client_before = time.process_time()
        start = time.perf_counter()
        futures = [client.submit(tasks.noop) for _ in range(count)]
        for future in futures:
            future.result(60)
        rate = count / (time.perf_counter() - start)
        cpu = [(time.process_time() - client_before) / count * 1e6]
        scheduler_after = None if pid is None else _scheduler_cpu(pid)
        if scheduler_before is not None and scheduler_after is not None:
            cpu += [
                (after - before) / count * 1e6
                for before, after in zip(scheduler_before, scheduler_after, strict=True)
            ]
        return rate, cpu


@stage
def _cancel_latencies(count: int) -> list[float]:
    """Seconds from cancel() to its answer, for a task that is running (in-process stub,
    so a gate can tell when the task runs)."""
    latencies = []
    with SchedulerStub(workers=2) as stub, Client(stub.address) as client:
        for i in range(count):
            gate = f"bench-cancel-{i}"
            future = client.submit(tasks.gate_wait, gate)
            if not tasks.wait_started(gate, 30):
                raise RuntimeError("benchmark: task did not start")
            start = time.perf_counter()
            answered = future.cancel()
            latencies.append(time.perf_counter() - start)
            if not answered:
                raise RuntimeError(f"benchmark: cancel refused: {future.cancel_outcome}")
            tasks.open_gate(gate)  # free the worker (its result is discarded)
        tasks.reset_gates()
    return latencies


def _outstanding(client: Client, count: int) -> list[Any]:
    """``count`` futures whose Tasks were all handed to the socket (state running).

    The scheduler may still be reading the last of them when the cancels follow; the
    cancels queue behind them on the same connection, so that time counts against
    the figure, never for it.
    """
    futures = [client.submit(tasks.sleep_then, 60) for _ in range(count)]
    end = time.monotonic() + 60
    while any(future.state is FutureState.PENDING for future in futures):
        if time.monotonic() > end:
            raise RuntimeError("benchmark: tasks were not sent")
        time.sleep(0.01)
    return futures


@stage
def _bulk_cancel_seconds(address: str, count: int) -> float:
    client = Client(address)
    try:
        futures = _outstanding(client, count)
        start = time.perf_counter()
        answers = client.cancel(futures)
        elapsed = time.perf_counter() - start
    finally:
        client.close()
    if not all(answers):
        raise RuntimeError("benchmark: some cancels were refused")
    return elapsed


@stage
def _close_seconds(address: str, count: int) -> float:
    client = Client(address)
    futures = _outstanding(client, count)
    start = time.perf_counter()
    client.close()
    elapsed = time.perf_counter() - start
    cf.wait(futures, timeout=0)
    if not all(future.cancelled() for future in futures):
        raise RuntimeError("benchmark: close() left futures unfinished")
    return elapsed


def _wait_sent(future: TaskFuture, timeout: float = 60) -> None:
    """Wait until ``future``'s Task was handed to the socket (Tasks go out in order)."""
    end = time.monotonic() + timeout
    while future.state is FutureState.PENDING:
        if time.monotonic() > end:
            raise RuntimeError("benchmark: tasks were not sent")
        time.sleep(0.0005)


def _submit_seconds_growing(address: str, alive: int) -> float:
    """CPU seconds of this process per ``submit()`` while the live futures grow from
    ``alive // 2`` to ``alive``, until the last Task is on the socket (the I/O
    thread's share included). CPU time, not wall time: other processes on a shared
    machine do not count. The scheduler's one worker is kept asleep, so every future
    stays alive (running) until ``close()``."""
    client = Client(address)  # closed, not shut down: close() cancels what is left
    try:
        client.submit(tasks.sleep_then, 3600)  # keeps the worker busy: the rest queue
        futures = [client.submit(tasks.noop) for _ in range(alive // 2)]
        _wait_sent(futures[-1])
        count = alive - len(futures)
        start = time.process_time()
        for _ in range(count):
            futures.append(client.submit(tasks.noop))
        _wait_sent(futures[-1])
        return (time.process_time() - start) / count
    finally:
        client.close()


def _bytes_per_live_future(address: str, count: int) -> float:
    """Bytes each live, sent future costs the client (future, registry entry, ids)."""
    client = Client(address)
    try:
        client.submit(tasks.sleep_then, 3600)  # keeps the worker busy: the rest queue
        _wait_sent(client.submit(tasks.noop))  # connected and warm
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            futures = [client.submit(tasks.noop) for _ in range(count)]
            _wait_sent(futures[-1])
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        total = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        return (total - futures.__sizeof__()) / count
    finally:
        client.close()


@stage
def _throughput(tasks_count: int, rounds: int) -> tuple[float, float, float, list[float]]:
    """(sequential echo, pipelined echo, tasks) per second: echo and tasks measured
    alternately, ``rounds`` times, best of each; and the CPU microseconds per task
    (client, scheduler, its workers) of the best task round."""
    sequential = pipelined = rate = 0.0
    cpu: list[float] = []
    with _echo_server() as echo_address, _scheduler_process_and_pid(workers=2) as (address, pid):
        for _ in range(rounds):
            round_sequential, round_pipelined = _echo_rates(echo_address, tasks_count)
            sequential = max(sequential, round_sequential)
            pipelined = max(pipelined, round_pipelined)
            round_rate, round_cpu = _task_rate(address, tasks_count, pid)
            if round_rate > rate:
                rate, cpu = round_rate, round_cpu
    return sequential, pipelined, rate, cpu


def _task_round_trips(client: Client, count: int) -> list[float]:
    """Seconds of each of ``count`` ``submit(noop).result()`` round trips, one at a time."""
    submit, noop, clock = client.submit, tasks.noop, time.perf_counter
    samples = []
    for _ in range(count):
        start = clock()
        submit(noop).result(30)
        samples.append(clock() - start)
    return samples


@stage
def _one_at_a_time(count: int, rounds: int) -> tuple[list[float], list[float]]:
    """(echo's sequential round trips, tasks' round trips), in seconds, sorted: the
    two alternated ``rounds`` times (each ``count`` long), every sample pooled."""
    echoes: list[float] = []
    round_trips: list[float] = []
    with _echo_server() as echo_address, _scheduler_process(workers=2) as address:
        with Client(address) as client:
            _task_round_trips(client, 100)  # connected, workers warm
            for _ in range(rounds):
                echoes += _echo_round_trips(echo_address, count)
                round_trips += _task_round_trips(client, count)
    return sorted(echoes), sorted(round_trips)


def _quantile(samples: list[float], q: float) -> float:
    """The ``q`` quantile of sorted ``samples`` (nearest rank)."""
    return samples[min(len(samples) - 1, int(len(samples) * q))]


def _rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid`` (Linux ``/proc``; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _raw_hop_seconds(dealer: zmq.Socket[Any], blob: bytes) -> float:
    """Seconds for ``blob`` to cross to the bulk server behind ``dealer`` (zero-copy
    send), until its answer (its length, a few bytes) is back: one hop of the data."""
    start = time.perf_counter()
    dealer.send(blob, copy=False)
    answer = dealer.recv()
    elapsed = time.perf_counter() - start
    if int(answer) != len(blob):
        raise RuntimeError(f"benchmark: the bulk server got {answer!r} bytes, not {len(blob)}")
    return elapsed


@stage
def _big_data(size: int, reps: int) -> tuple[float, float, int | None]:
    """(median seconds of two raw ZeroMQ hops of ``size`` bytes, median seconds of a
    ``submit(len, blob)`` round trip, the scheduler's resident bytes after them),
    the two alternated ``reps`` times."""
    blob = os.urandom(size)
    hops: list[float] = []
    round_trips: list[float] = []
    with _process([sys.executable, "-c", _BULK_SERVER], "ready") as (_, line):
        with (
            _dealer(line.split()[-1]) as dealer,
            _scheduler_process_and_pid(workers=2) as (
                address,
                pid,
            ),
        ):
            client = Client(address)
            try:
                if client.submit(len, blob[:1024]).result(60) != 1024:  # connected, warm
                    raise RuntimeError("benchmark: len() of the blob came back wrong")
                _raw_hop_seconds(dealer, blob)  # connected, warm
                for _ in range(reps):
                    hops.append(2 * _raw_hop_seconds(dealer, blob))
                    start = time.perf_counter()
                    answer = client.submit(len, blob).result(120)
                    round_trips.append(time.perf_counter() - start)
                    if answer != size:
                        raise RuntimeError(f"benchmark: len() of the blob came back {answer!r}")
                rss = _rss_bytes(pid)
            finally:
                client.close()
    return statistics.median(hops), statistics.median(round_trips), rss


@stage
def _live_futures(alive: tuple[int, int], rounds: int) -> tuple[float, float, float]:
    """(seconds per submit growing to ``alive[0]``, to ``alive[1]``, bytes per live
    future). Both figures are measured alternately, ``rounds`` times, so a burst of
    load from elsewhere hits both sides alike; each is the median of its runs, not the
    best: a full collection of the garbage collector falls in some runs and not in
    others, and its cost is part of what is measured."""
    few, many = alive
    runs_few: list[float] = []
    runs_many: list[float] = []
    # Its worker sleeps in a task that is cancelled at the end: the scheduler is killed.
    with _scheduler_process(workers=1, kill=True) as address:
        for _ in range(rounds):
            runs_few.append(_submit_seconds_growing(address, few))
            runs_many.append(_submit_seconds_growing(address, many))
        memory = _bytes_per_live_future(address, 20_000)
    return statistics.median(runs_few), statistics.median(runs_many), memory


def measure(
    tasks_count: int = 20_000,
    cancels: int = 300,
    bulk: int = 10_000,
    rounds: int = 3,
    alive: tuple[int, int] = (2_000, 100_000),
    one_at_a_time: int = 2_000,
    blob_bytes: int = 50_000_000,
    blob_reps: int = 5,
) -> dict[str, Any]:
    """Run every measurement; return the figures."""
    sequential, pipelined, rate, cpu = _throughput(tasks_count, rounds)
    echoes, round_trips = _one_at_a_time(one_at_a_time, rounds)
    hops_s, blob_s, scheduler_rss = _big_data(blob_bytes, blob_reps)
    few, many = alive
    submit_few, submit_many, memory_ours = _live_futures(alive, rounds)
    memory_stdlib = _bytes_per_object(_running_stdlib_future, 20_000)
    latencies = sorted(_cancel_latencies(cancels))
    # Each bulk figure gets a fresh scheduler: sleeping workers do not carry over.
    # Their workers sleep in cancelled tasks: those schedulers are killed, not stopped.
    with _scheduler_process(workers=2, kill=True) as address:
        bulk_seconds = _bulk_cancel_seconds(address, bulk)
    with _scheduler_process(workers=2, kill=True) as address:
        close_seconds = _close_seconds(address, bulk)
    return {
        "echo_sequential_per_s": sequential,
        "echo_pipelined_per_s": pipelined,
        "tasks_per_s": rate,
        "tasks_vs_pipelined": rate / pipelined,
        "tasks_vs_sequential": rate / sequential,
        "cpu_us_per_task": dict(zip(("client", "scheduler", "workers"), cpu, strict=False)),
        "echo_round_trip_p50_us": _quantile(echoes, 0.5) * 1e6,
        "task_round_trip_p50_us": _quantile(round_trips, 0.5) * 1e6,
        "task_round_trip_p99_us": _quantile(round_trips, 0.99) * 1e6,
        "round_trip_ratio": _quantile(round_trips, 0.5) / _quantile(echoes, 0.5),
        "blob_bytes": blob_bytes,
        "two_hops_ms": hops_s * 1000,
        "blob_round_trip_ms": blob_s * 1000,
        "blob_ratio": blob_s / hops_s,
        "scheduler_rss_bytes": scheduler_rss,
        "alive_few": few,
        "alive_many": many,
        "submit_few_us": submit_few * 1e6,
        "submit_many_us": submit_many * 1e6,
        "submit_alive_ratio": submit_many / submit_few,
        "memory_live_future_bytes": memory_ours,
        "memory_stdlib_bytes": memory_stdlib,
        "memory_ratio": memory_ours / memory_stdlib,
        "cancel_p50_ms": statistics.median(latencies) * 1000,
        "cancel_p99_ms": _quantile(latencies, 0.99) * 1000,
        "bulk": bulk,
        "bulk_cancel_s": bulk_seconds,
        "close_s": close_seconds,
    }


def main(quick: bool = False) -> int:
    """Print every figure against its target; exit code 0 either way."""
    with stages(STAGES, "bench e2e"):
        if quick:
            figures = measure(
                tasks_count=2_000,
                cancels=50,
                bulk=1_000,
                rounds=1,
                alive=(200, 10_000),
                one_at_a_time=200,
                blob_bytes=5_000_000,
                blob_reps=2,
            )
        else:
            figures = measure()

    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    print(f"raw pyzmq+msgpack echo, sequential: {figures['echo_sequential_per_s']:>9,.0f} /s")
    print(f"raw pyzmq+msgpack echo, pipelined:  {figures['echo_pipelined_per_s']:>9,.0f} /s")
    print(f"no-op tasks through client + stub:  {figures['tasks_per_s']:>9,.0f} /s")
    ratio = figures["tasks_vs_pipelined"]
    print(f"tasks / pipelined echo:  {ratio:.2f}x   target >= 1.0x {verdict(ratio >= 1.0)}")
    print(f"tasks / sequential echo: {figures['tasks_vs_sequential']:.2f}x   (for scale)")
    cpu = figures["cpu_us_per_task"]
    if cpu:
        print(
            "CPU per task: "
            + ", ".join(f"{name} {microseconds:.1f} us" for name, microseconds in cpu.items())
            + " (all processes share this machine's cores)"
        )
    ratio = figures["round_trip_ratio"]
    print(
        f"one task at a time, submit().result(): p50 {figures['task_round_trip_p50_us']:.0f} us,"
        f" p99 {figures['task_round_trip_p99_us']:.0f} us; echo round trip p50"
        f" {figures['echo_round_trip_p50_us']:.0f} us"
    )
    print(f"one task at a time p50 / echo p50: {ratio:.2f}x   target <= 2.0x {verdict(ratio <= 2)}")
    ratio = figures["blob_ratio"]
    megabytes = figures["blob_bytes"] / 1e6
    print(
        f"{megabytes:g} MB argument, submit(len, blob) round trip: "
        f"{figures['blob_round_trip_ms']:.1f} ms / two raw ZeroMQ hops {figures['two_hops_ms']:.1f}"
        f" ms = {ratio:.2f}x   target <= 2x {verdict(ratio <= 2)}"
    )
    rss = figures["scheduler_rss_bytes"]
    if rss is not None:
        print(f"scheduler resident memory after them: {rss / 1e6:.0f} MB")
    few, many = figures["alive_few"], figures["alive_many"]
    ratio = figures["submit_alive_ratio"]
    print(
        f"submit() growing to {many:,} live / to {few:,} live: "
        f"{figures['submit_many_us']:.2f} us / {figures['submit_few_us']:.2f} us = "
        f"{ratio:.2f}x   target <= 1.25x {verdict(ratio <= 1.25)}"
    )
    ratio = figures["memory_ratio"]
    print(
        f"memory per live future / stdlib Future: {figures['memory_live_future_bytes']:.0f} B"
        f" / {figures['memory_stdlib_bytes']:.0f} B = {ratio:.2f}x"
        f"   target <= 2x {verdict(ratio <= 2)}"
    )
    p50, p99 = figures["cancel_p50_ms"], figures["cancel_p99_ms"]
    print(
        f"cancel of a running task: p50 {p50:.2f} ms (<= 2 {verdict(p50 <= 2)}), "
        f"p99 {p99:.2f} ms (<= 10 {verdict(p99 <= 10)})"
    )
    bulk = figures["bulk"]
    print(
        f"bulk cancel of {bulk:,} tasks: {figures['bulk_cancel_s']:.3f} s "
        f"(<= 1 s {verdict(figures['bulk_cancel_s'] <= 1)})"
    )
    print(
        f"close() with {bulk:,} outstanding: {figures['close_s']:.3f} s "
        f"(<= 2 s {verdict(figures['close_s'] <= 2)})"
    )
    return 0
