"""The scheduler stub's worker processes, and the defects of issue 11 they fix.

Each defect test fails on the stub with worker threads, stdlib pickle and an unbounded
log (checked against ``main``): a force-cancelled running task ran on (3); a client
that went away left its work running (4); functions from a client's ``__main__``
failed on a standalone scheduler (5); the message log kept every payload (6); and a
task holding the GIL starved the scheduler's I/O loop (1, the stub's half).

Where the process boundary matters the scheduler (and the client) are real processes
(``python -m futurefsm scheduler``). Every bound is a deadline on a wait.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

import futurefsm
from futurefsm import Client
from futurefsm.errors import ConnectionLostError
from futurefsm.protocol import (
    Batch,
    ConfirmKind,
    Disconnect,
    Heartbeat,
    HeartbeatEcho,
    ProtocolError,
    ResultStatus,
    Task,
    TaskCancel,
    TaskCancelConfirm,
    TaskResult,
    decode,
    encode,
    new_task_id,
    unbatch,
)
from futurefsm.scheduler_stub import SchedulerStub
from futurefsm.scheduler_stub.processes import (
    FRAME_HEADER,
    WorkerSlots,
    _take_raw,
    send_frame,
    take_frame,
    take_frames,
    write_all,
)
from futurefsm.scheduler_stub.running import FunctionCache
from futurefsm.scheduler_stub.sample_tasks import (
    echo,
    gate_wait,
    mark_then_sleep,
    open_gate,
    reset_gates,
    wait_started,
)
from futurefsm.serializer import DEFAULT_SERIALIZER

dumps, loads = DEFAULT_SERIALIZER.dumps, DEFAULT_SERIALIZER.loads

WAIT = 10.0
"""Deadline for anything that must happen."""

ROOT = str(Path(futurefsm.__file__).resolve().parent.parent)
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
}


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def unbatched(frame: bytes) -> list[Any]:
    """The messages in ``frame``: itself, or a Batch's, which must all decode."""
    message = decode(frame)
    if type(message) is not Batch:
        return [message]
    items = [item for item, _ in unbatch(message)]
    assert not any(isinstance(item, ProtocolError) for item in items), items
    return items


class Peer:
    """A raw DEALER client speaking the protocol."""

    def __init__(self, context: zmq.Context[Any], address: str) -> None:
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(address)
        self.pending: deque[Any] = deque()

    def submit(self, fn: Callable[..., Any], *args: Any) -> bytes:
        task_id = new_task_id()
        self.socket.send(encode(Task(task_id, dumps(fn), dumps((args, {})), None, ())))
        return task_id

    def send(self, message: Any) -> None:
        self.socket.send(encode(message))

    def recv(self, timeout: float = WAIT) -> Any:
        """The next message (those of a Batch one by one, as a client takes them)."""
        if not self.pending:
            if not self.socket.poll(int(timeout * 1000)):
                pytest.fail(f"no message from the scheduler within {timeout} s")
            self.pending.extend(unbatched(self.socket.recv()))
        return self.pending.popleft()

    def close(self) -> None:
        self.socket.close(linger=0)


@pytest.fixture
def context() -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def stubs() -> Iterator[Callable[..., SchedulerStub]]:
    made: list[SchedulerStub] = []

    def make(**kwargs: Any) -> SchedulerStub:
        made.append(SchedulerStub(**kwargs))
        return made[-1]

    yield make
    reset_gates()
    for stub in made:
        stub.stop()


_LISTENING = "futurefsm scheduler listening on "


class Standalone:
    """Starts ``python -m futurefsm scheduler`` processes: calling it with options
    returns the address; ``pids`` maps an address to its process id."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[str]] = []
        self.pids: dict[str, int] = {}

    def __call__(self, *options: str) -> str:
        # Port 0: the scheduler binds a free port itself and prints the address.
        command = [sys.executable, "-m", "futurefsm", "scheduler", "--address", "tcp://127.0.0.1:0"]
        process = subprocess.Popen([*command, *options], stdout=subprocess.PIPE, text=True, env=ENV)
        self.processes.append(process)
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], WAIT)
        assert ready, "the scheduler did not start"
        line = process.stdout.readline()
        assert line.startswith(_LISTENING), line
        address = line[len(_LISTENING) :].strip()
        self.pids[address] = process.pid
        return address


@pytest.fixture
def standalone() -> Iterator[Standalone]:
    """Scheduler processes, stopped (SIGTERM, else killed) at the end."""
    start = Standalone()
    yield start
    for process in start.processes:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()


def wait_for_file(path: Path, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} was not created within {timeout} s"
        time.sleep(0.005)  # a polling interval inside a deadline


def write_then_wait(path: str, gate: str) -> str:
    """A task with a side effect after its gate: it writes ``path`` once let go."""
    gate_wait(gate)
    Path(path).write_text("ran")
    return "done"


def mark_then_hold_the_gil(path: str, n: int) -> int:
    """Create ``path``, then one long C call that never releases the GIL."""
    Path(path).touch()
    return sum(range(n))


def exit_abruptly() -> None:
    os._exit(3)


# ---------------------------------------------------------------------------
# Defect 3: a confirmed cancel of a running task stops it
# ---------------------------------------------------------------------------


def test_force_cancel_stops_a_running_task_before_its_side_effects(stubs, tmp_path):
    stub = stubs(workers=1)
    effect = tmp_path / "effect"
    with Client(stub.address) as client:
        future = client.submit(write_then_wait, str(effect), "side-effect")
        assert wait_started("side-effect", WAIT)
        assert future.cancel(timeout=WAIT)  # confirmed: its process is gone by now
        open_gate("side-effect")
        # One slot: this result comes after the cancelled task's, if that one ran on.
        assert client.submit(abs, -1).result(WAIT) == 1
    assert not effect.exists(), "the cancelled task ran on and did its side effect"
    assert stub.stats()["workers_killed"] == 1


def test_a_task_that_kills_its_worker_process_gets_worker_died(stubs):
    stub = stubs(workers=1)
    with Client(stub.address) as client:
        future = client.submit(exit_abruptly)
        with pytest.raises(futurefsm.WorkerDiedError, match="exited"):
            future.result(WAIT)
        assert client.submit(abs, -2).result(WAIT) == 2  # a new process took the slot


def pid_after_gate(gate: str) -> int:
    gate_wait(gate)
    return os.getpid()


@pytest.mark.parametrize("threads", [False, True])
def test_tasks_run_at_once_each_on_its_own_process_unless_threads(stubs, threads):
    stub = stubs(workers=2, threads=threads)
    with Client(stub.address) as client:
        futures = [client.submit(pid_after_gate, f"pid-{n}") for n in range(2)]
        assert wait_started("pid-0", WAIT) and wait_started("pid-1", WAIT)  # both at once
        open_gate("pid-0")
        open_gate("pid-1")
        pids = {future.result(WAIT) for future in futures}
    if threads:
        assert pids == {os.getpid()}
    else:  # no GIL shared with the scheduler, nor with each other
        assert len(pids) == 2 and os.getpid() not in pids


# ---------------------------------------------------------------------------
# Defect 1 (the stub's half): no task can starve the scheduler's I/O loop
# ---------------------------------------------------------------------------


def test_a_task_holding_the_gil_does_not_stop_the_scheduler_serving(stubs, context, tmp_path):
    stub = stubs(workers=1)
    peer = Peer(context, stub.address)
    started = tmp_path / "started"
    task_id = peer.submit(mark_then_hold_the_gil, str(started), 2 * 10**9)  # ~25 s of C
    wait_for_file(started)
    peer.send(Heartbeat(1))
    assert peer.recv(timeout=5.0) == HeartbeatEcho(1)  # with threads: starved ~25 s
    peer.send(TaskCancel(task_id, True))  # and it can be stopped
    assert peer.recv() == TaskCancelConfirm(task_id, ConfirmKind.CANCELED)
    peer.close()


# ---------------------------------------------------------------------------
# Defect 4: a client that goes away has its work dropped and stopped
# ---------------------------------------------------------------------------


def test_a_departed_clients_backlog_does_not_delay_the_next_client(standalone, context, tmp_path):
    address = standalone("--workers", "1")
    gone = Peer(context, address)
    started = tmp_path / "started"
    gone.submit(mark_then_sleep, str(started), 600)
    for _ in range(2000):
        gone.submit(mark_then_sleep, str(tmp_path / "queued"), 600)
    wait_for_file(started)
    gone.send(Disconnect())
    gone.close()
    client = Client(address)
    try:
        assert client.submit(abs, -1).result(WAIT) == 1
    finally:
        client.close()  # not shutdown(wait=True): it would wait for a stuck task
    assert not (tmp_path / "queued").exists()


def test_drop_client_drops_queued_and_stops_running_tasks(stubs, context):
    stub = stubs(workers=1)
    gone, other = Peer(context, stub.address), Peer(context, stub.address)
    gone.submit(gate_wait, "dropped-running")
    queued = [gone.submit(gate_wait, "dropped-queued") for _ in range(50)]
    assert wait_started("dropped-running", WAIT)
    identity = next(iter(stub._clients))  # the only client so far
    assert stub.drop_client(identity, "the transport says it is gone")
    assert not stub.drop_client(identity, "again")  # idempotent
    stats = stub.stats()
    assert stats["clients_dropped"] == 1 and stats["workers_killed"] == 1
    task_id = other.submit(echo, "served")
    result = other.recv()
    assert result.task_id == task_id and loads(result.payload) == "served"
    assert not wait_started("dropped-queued", 0.01)
    gone.send(TaskCancel(queued[0], False))
    assert gone.recv() == TaskCancelConfirm(queued[0], ConfirmKind.NOT_FOUND)
    gone.close()
    other.close()


def test_a_stopping_scheduler_tells_its_clients_at_once(stubs):
    stub = stubs(workers=1)
    client = Client(stub.address, connection_timeout=300)
    try:
        future = client.submit(gate_wait, "stopping")
        assert wait_started("stopping", WAIT)
        stub.stop()
        assert isinstance(future.exception(WAIT), ConnectionLostError)
    finally:
        client.close()


# ---------------------------------------------------------------------------
# Defect 5: functions from a client's __main__ run on a standalone scheduler
# ---------------------------------------------------------------------------

CLIENT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from futurefsm import Client

    def double(x):
        return 2 * x

    def make_adder(n):
        def add(x):
            return x + n
        return add

    class Scaler:
        def __init__(self, factor):
            self.factor = factor

        def scale(self, x):
            return self.factor * x

    OFFSET = 100

    with Client(sys.argv[1]) as client:
        futures = {
            "main_function": client.submit(double, 21),
            "lambda": client.submit(lambda x: x + OFFSET, 1),
            "closure": client.submit(make_adder(5), 1),
            "method": client.submit(Scaler(3).scale, 4),
        }
        print(json.dumps({name: f.result(30) for name, f in futures.items()}))
    """
)


def test_functions_from_a_client_script_run_on_a_standalone_scheduler(standalone, tmp_path):
    address = standalone("--workers", "2")
    script = tmp_path / "user_script.py"
    script.write_text(CLIENT_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), address],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "main_function": 42,
        "lambda": 101,
        "closure": 6,
        "method": 12,
    }


def test_an_unguarded_script_with_an_embedded_client_runs_once(tmp_path):
    """Worker processes never re-run the user's script (multiprocessing's spawn and
    forkserver would, and without an ``if __name__ == "__main__":`` guard every worker
    would start a client of its own)."""
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from futurefsm import Client\n"
        "print('script ran', flush=True)\n"
        "with Client(workers=2) as client:\n"
        "    print(sorted(client.map(lambda x: x * x, range(4), timeout=30)))\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=ENV
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "script ran\n[0, 1, 4, 9]\n"


def test_the_scheduler_command_takes_threads_and_log_messages(standalone, context):
    address = standalone("--workers", "1", "--threads", "--log-messages")
    peer = Peer(context, address)
    task_id = peer.submit(os.getpid)
    result = peer.recv()
    assert result.task_id == task_id and result.status is ResultStatus.SUCCESS
    pid = loads(result.payload)
    peer.send(Heartbeat(1))
    assert peer.recv() == HeartbeatEcho(1)
    peer.close()
    assert pid == standalone.pids[address]  # a thread of the scheduler's own process


# ---------------------------------------------------------------------------
# Defect 6: the message log is off unless asked, keeps no payloads, is bounded
# ---------------------------------------------------------------------------


def run_tasks(stub: SchedulerStub, context: zmq.Context[Any], count: int, size: int) -> None:
    peer = Peer(context, stub.address)
    for _ in range(count):
        task_id = peer.submit(len, b"x" * size)
        result = peer.recv()
        assert result.task_id == task_id and result.status is ResultStatus.SUCCESS
    peer.close()


def test_the_message_log_is_off_by_default(stubs, context):
    stub = stubs(threads=True)
    run_tasks(stub, context, 3, 1000)
    assert stub.log == []
    assert stub.stats()["tasks_received"] == 3


def test_the_message_log_keeps_sizes_not_payloads_and_is_bounded(stubs, context):
    stub = stubs(threads=True, log_messages=True, log_limit=6)
    run_tasks(stub, context, 5, 1_000_000)
    log = stub.log
    assert len(log) == 6  # the oldest went first
    assert all(r.size >= 1_000_000 for r in log if r.direction == "in")
    assert all(getattr(r.message, "args", b"") == b"" for r in log)
    assert all(getattr(r.message, "payload", b"") == b"" for r in log)

    small = stubs(threads=True, log_messages=True, log_bytes=1000)
    run_tasks(small, context, 10, 10)
    assert 0 < sum(r.cost() for r in small.log) <= 1000


class LockedSerializer:
    """A serializer that cannot itself be pickled (it holds a lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def dumps(self, obj: Any) -> bytes:
        return dumps(obj)

    def loads(self, data: bytes) -> Any:
        return loads(data)


def test_a_serializer_workers_cannot_get_is_refused_naming_it(stubs):
    with pytest.raises(TypeError, match=r"serializer: .*LockedSerializer.*threads=True"):
        SchedulerStub(serializer=LockedSerializer())
    stub = stubs(threads=True, serializer=LockedSerializer())  # threads share it
    with Client(stub.address, serializer=LockedSerializer()) as client:
        assert client.submit(abs, -3).result(WAIT) == 3


# ---------------------------------------------------------------------------
# The function cache
# ---------------------------------------------------------------------------


def test_function_cache_unpickles_each_function_once_and_is_bounded():
    loaded: list[bytes] = []

    def loads_counting(data: bytes) -> Any:
        loaded.append(data)
        return loads(data)

    cache = FunctionCache(loads_counting, size=2, max_bytes=1000)
    one, two, three = dumps(abs), dumps(len), dumps(repr)
    assert cache.load(one) is abs and cache.load(one) is abs
    assert loaded == [one]
    cache.load(two)
    cache.load(three)  # evicts the least recently used: one
    cache.load(one)
    assert loaded == [one, two, three, one]
    big = dumps(b"y" * 2000)
    cache.load(big)
    cache.load(big)  # too large to cache
    assert loaded[-2:] == [big, big]


# ---------------------------------------------------------------------------
# Batched dispatch (issue 13): tasks go to a worker process several at a time
# ---------------------------------------------------------------------------


def append_line(path: str, line: str) -> str:
    """A side effect that counts: one line appended per run."""
    with open(path, "a") as file:
        file.write(line + "\n")
    return line


def send_together(peer: Peer, *calls: tuple[Callable[..., Any], tuple[Any, ...]]) -> list[bytes]:
    """Send Tasks in one Batch frame: they reach the stub in one read, so they go to
    the worker processes in one share-out."""
    ids, frames = [], []
    for fn, args in calls:
        ids.append(new_task_id())
        frames.append(encode(Task(ids[-1], dumps(fn), dumps((args, {})), None, ())))
    peer.send(Batch(tuple(frames)))
    return ids


def sent_to_worker(stub: SchedulerStub, count: int) -> None:
    """Fail unless one worker process holds ``count`` tasks sent and unanswered, so the
    test exercises tasks in a worker's batch, not tasks still queued in the stub."""
    workers = stub._pool._busy  # type: ignore[union-attr]
    assert [len(worker.entries) for worker in workers] == [count], (
        "expected one busy worker process holding the batch; "
        "ProcessPool._busy / _Worker.entries moved?"
    )


def results(peer: Peer, count: int) -> dict[bytes, Any]:
    """The next ``count`` messages, all TaskResults: task id -> value."""
    out = {}
    for _ in range(count):
        message = peer.recv()
        assert message.status is ResultStatus.SUCCESS, message
        out[message.task_id] = loads(message.payload)
    return out


@pytest.mark.parametrize("force", [False, True])
def test_a_task_in_a_workers_batch_cancelled_before_it_starts_never_runs(
    stubs, context, tmp_path, force
):
    stub = stubs(workers=1)
    peer = Peer(context, stub.address)
    effect = tmp_path / "effect"
    first, second, third = send_together(
        peer,
        (gate_wait, ("batch-first", "first")),
        (append_line, (str(effect), "second")),
        (echo, ("third",)),
    )
    assert wait_started("batch-first", WAIT)
    sent_to_worker(stub, 3)
    peer.send(TaskCancel(second, force))
    assert peer.recv() == TaskCancelConfirm(second, ConfirmKind.CANCELED)
    open_gate("batch-first")
    assert results(peer, 2) == {first: "first", third: "third"}
    assert not effect.exists(), "the cancelled task ran"
    assert stub.stats()["workers_killed"] == 0  # nothing was running it: nothing killed
    peer.close()


def test_an_idle_workers_next_task_counts_as_started_for_a_non_forced_cancel(
    stubs, context, tmp_path
):
    """A worker with nothing ahead of a task is starting it: a non-forced cancel is
    refused (``cancel_failed``) and it runs, whether or not the OS has run the
    worker's process yet (stopped here), as a stdlib executor's call-queue item is
    running; the task behind it is taken back. Before, the answer depended on how
    soon the worker woke (CPython's test_cancel_futures failed ~3 in 12 under load)."""
    stub = stubs(workers=1)
    peer = Peer(context, stub.address)
    probe = peer.submit(os.getpid)
    reply = peer.recv()
    assert reply.task_id == probe
    pid = loads(reply.payload)
    effect = tmp_path / "effect"
    os.kill(pid, signal.SIGSTOP)
    try:
        head, behind = send_together(
            peer, (append_line, (str(effect), "head")), (append_line, (str(effect), "behind"))
        )
        deadline = time.monotonic() + WAIT
        while [len(w.entries) for w in stub._pool._busy] != [2]:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the batch never reached the worker"
            time.sleep(0.002)  # polling the stub's state, not a synchronisation
        peer.send(TaskCancel(head, False))
        assert peer.recv() == TaskCancelConfirm(head, ConfirmKind.CANCEL_FAILED)
        peer.send(TaskCancel(behind, False))
        assert peer.recv() == TaskCancelConfirm(behind, ConfirmKind.CANCELED)
    finally:
        os.kill(pid, signal.SIGCONT)
    reply = peer.recv()
    assert reply.task_id == head and loads(reply.payload) == "head"
    assert effect.read_text() == "head\n"
    peer.close()


def test_a_cancel_read_with_the_tasks_before_it_finds_them_handed_out(stubs, context, tmp_path):
    """Tasks and a cancel read in one go: the tasks go to the workers first, as they
    would have had the cancel been read later. So a non-forced cancel right behind a
    task an idle worker takes is refused, and the task runs (CPython's
    test_cancel_futures: shutdown(cancel_futures=True) right after the submits).
    Before, they stayed queued until the whole read was handled, and were cancelled."""
    stub = stubs(workers=1)
    peer = Peer(context, stub.address)
    probe = peer.submit(os.getpid)  # the worker is up and idle
    assert peer.recv().task_id == probe
    effect = tmp_path / "effect"
    first, second = new_task_id(), new_task_id()
    frames = [
        encode(Task(first, dumps(append_line), dumps(((str(effect), "first"), {})), None, ())),
        encode(Task(second, dumps(append_line), dumps(((str(effect), "second"), {})), None, ())),
        encode(TaskCancel(first, False)),
        encode(TaskCancel(second, False)),
    ]
    peer.send(Batch(tuple(frames)))
    answers = [peer.recv() for _ in range(3)]
    assert TaskCancelConfirm(first, ConfirmKind.CANCEL_FAILED) in answers, answers
    assert TaskCancelConfirm(second, ConfirmKind.CANCELED) in answers, answers
    done = [a for a in answers if isinstance(a, TaskResult)]
    assert [(a.task_id, loads(a.payload)) for a in done] == [(first, "first")]
    assert effect.read_text() == "first\n"
    peer.close()


def test_force_cancel_of_a_running_task_runs_the_rest_of_its_batch_once_elsewhere(
    stubs, context, tmp_path
):
    stub = stubs(workers=1)
    peer = Peer(context, stub.address)
    effect = tmp_path / "effect"
    running, *rest = send_together(
        peer,
        (write_then_wait, (str(tmp_path / "killed"), "batch-killed")),
        (append_line, (str(effect), "a")),
        (append_line, (str(effect), "b")),
    )
    assert wait_started("batch-killed", WAIT)
    sent_to_worker(stub, 3)
    peer.send(TaskCancel(running, True))
    answers = [peer.recv() for _ in range(3)]
    assert TaskCancelConfirm(running, ConfirmKind.CANCELED) in answers
    values = {a.task_id: loads(a.payload) for a in answers if isinstance(a, TaskResult)}
    assert values == dict(zip(rest, ["a", "b"], strict=True))
    open_gate("batch-killed")
    assert effect.read_text() == "a\nb\n"  # each ran once, in order
    assert not (tmp_path / "killed").exists()
    assert stub.stats()["workers_killed"] == 1
    peer.close()


def test_an_idle_worker_takes_unstarted_tasks_from_one_stuck_in_a_long_task(stubs, context):
    stub = stubs(workers=2)
    peer = Peer(context, stub.address)
    quick, stuck, behind = send_together(
        peer,
        (echo, ("quick",)),  # one worker gets this one ...
        (gate_wait, ("batch-stuck", "stuck")),  # ... the other these two
        (echo, ("behind",)),
    )
    # The first worker, done, takes the task waiting behind the stuck one.
    assert results(peer, 2) == {quick: "quick", behind: "behind"}
    open_gate("batch-stuck")
    assert results(peer, 1) == {stuck: "stuck"}
    peer.close()


def test_idle_workers_take_every_task_stuck_behind_a_long_one(stubs, context):
    stub = stubs(workers=4)
    peer = Peer(context, stub.address)
    pool = stub._pool
    deadline = time.monotonic() + WAIT
    while len(pool._idle) < 5:  # every worker process (and the spare) is up
        assert time.monotonic() < deadline, "worker processes did not start"
        time.sleep(0.005)  # a polling interval inside a deadline
    held = send_together(peer, (gate_wait, ("hold-1", 1)), (gate_wait, ("hold-2", 2)))
    assert wait_started("hold-1", WAIT) and wait_started("hold-2", WAIT)
    # Two tasks each for the two other workers: a long one, and one behind it.
    behind = send_together(
        peer,
        (gate_wait, ("long-1",)),
        (gate_wait, ("behind-1", "b1")),
        (gate_wait, ("long-2",)),
        (gate_wait, ("behind-2", "b2")),
    )
    assert wait_started("long-1", WAIT) and wait_started("long-2", WAIT)
    assert sorted(len(w.entries) for w in pool._busy) == [1, 1, 2, 2], (
        "expected the four tasks shared two by two; ProcessPool._busy moved?"
    )
    open_gate("hold-1")
    open_gate("hold-2")
    # Both freed workers take a task stuck behind a long one.
    assert wait_started("behind-1", WAIT) and wait_started("behind-2", WAIT)
    assert results(peer, 2) == {held[0]: 1, held[1]: 2}
    open_gate("behind-1")
    open_gate("behind-2")
    assert results(peer, 2) == {behind[1]: "b1", behind[3]: "b2"}
    peer.close()


_FIRST_GATE_USE = """
import os, sys, time
from futurefsm.scheduler_stub import sample_tasks
start, ready = sys.argv[1], sys.argv[2]
open(ready, "w").close()
while not os.path.exists(start):
    time.sleep(0.0005)  # a polling interval: all the processes go at once
print(sample_tasks._generation())
"""


BIG = 4 * 1024 * 1024
"""Far more than a socket pair's buffers hold."""


def test_large_arguments_and_results_cross_both_ways_at_once(stubs, context):
    # The scheduler used to block writing a batch to a worker that was itself blocked
    # writing a large result back to it: both waited forever.
    stub = stubs(workers=2)
    peer = Peer(context, stub.address)
    calls = [(echo, (bytes([n]) * BIG,)) for n in range(6)]
    calls += [(echo, (n,)) for n in range(100)]
    ids = send_together(peer, *calls)
    assert results(peer, len(ids)) == {
        task_id: args[0] for task_id, (_, args) in zip(ids, calls, strict=True)
    }
    peer.close()


def test_a_large_batch_for_a_worker_in_a_long_task_does_not_stop_the_scheduler(stubs, context):
    # The worker, inside a long task, reads nothing: what is written to it waits
    # (instead of the scheduler's I/O thread waiting for the task to end).
    stub = stubs(workers=1)
    peer = Peer(context, stub.address)
    big = [(echo, (bytes([n]) * BIG,)) for n in range(3)]
    quick, stuck, *rest = send_together(
        peer, (echo, ("quick",)), (gate_wait, ("big-stuck", "stuck")), *big
    )
    assert results(peer, 1) == {quick: "quick"}
    assert wait_started("big-stuck", WAIT)
    peer.send(Heartbeat(7))
    assert peer.recv() == HeartbeatEcho(7)
    open_gate("big-stuck")
    assert results(peer, 4) == {
        stuck: "stuck",
        **{task_id: args[0] for task_id, (_, args) in zip(rest, big, strict=True)},
    }
    peer.close()


def test_processes_using_gates_first_at_once_agree_on_one_generation(tmp_path):
    """Regression: a worker's first gate_wait and the test's first open_gate, at once,
    could each make a gate generation; the worker then waited on a gate opened in
    the other one (the demo hung in 'cancel before sending' about one run in five)."""
    from futurefsm.scheduler_stub.processes import OWNER_PID_ENV

    for attempt in range(5):
        env = {**os.environ, OWNER_PID_ENV: f"race-{os.getpid()}-{attempt}"}
        start = tmp_path / f"go-{attempt}"
        ready = [tmp_path / f"ready-{attempt}-{n}" for n in range(6)]
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _FIRST_GATE_USE, str(start), str(path)],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            for path in ready
        ]
        try:
            deadline = time.monotonic() + 60
            while not all(path.exists() for path in ready):  # all imported: go at once
                assert time.monotonic() < deadline, "the processes did not start"
                time.sleep(0.005)
            start.touch()
            seen = {proc.communicate(timeout=60)[0].strip() for proc in procs}
        finally:
            for proc in procs:
                proc.kill()
        assert len(seen) == 1, f"processes disagree on the gate generation: {seen}"
        root = os.path.dirname(seen.pop())
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------
# The framing on a worker's socket
# ---------------------------------------------------------------------------


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_the_slot_file_never_has_a_name_a_killed_scheduler_could_leave_behind() -> None:
    # It was a named file in /dev/shm until the worker said it was ready: a scheduler
    # killed in between left it there for good.
    slots = WorkerSlots.create()
    try:
        target = os.readlink(f"/proc/self/fd/{slots.fd}")
        assert target.startswith("/memfd:") or target.endswith(" (deleted)"), (
            f"the slot file is reachable by name: {target}"
        )
    finally:
        slots.close()


def _slot_files(pid: int) -> set[tuple[int, int]]:
    """(device, inode) of the slot files process ``pid`` has open."""
    found = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            if os.readlink(f"/proc/{pid}/fd/{name}").startswith("/memfd:futurefsm-worker"):
                stat = os.stat(f"/proc/{pid}/fd/{name}")
                found.add((stat.st_dev, stat.st_ino))
    return found


@pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd") or not hasattr(os, "memfd_create"), reason="Linux"
)
def test_a_worker_maps_the_nameless_slot_file_the_stub_handed_it(stubs) -> None:
    stub = stubs(workers=1)
    with Client(stub.address) as client:
        worker = client.submit(os.getpid).result(WAIT)
    theirs = _slot_files(worker)
    assert len(theirs) == 1, f"worker {worker} has slot files {theirs}"
    assert theirs <= _slot_files(os.getpid()), "not the file the stub holds"


def test_take_frames_takes_whole_messages_and_leaves_a_partial_one() -> None:
    messages = [b"", b"a", b"\x00" * 1000]
    wire = b"".join(FRAME_HEADER.pack(len(m)) + m for m in messages)
    buffer = bytearray(wire + FRAME_HEADER.pack(5) + b"par")
    assert take_frames(buffer) == messages
    assert buffer == FRAME_HEADER.pack(5) + b"par"
    buffer += b"t!"
    assert take_frames(buffer) == [b"part!"] and buffer == b""
    buffer += FRAME_HEADER.pack(3)[:2]
    assert take_frames(buffer) == [] and len(buffer) == 2


def test_take_frames_refuses_a_negative_length() -> None:
    with pytest.raises(OSError, match="bad frame length -1"):
        take_frames(bytearray(FRAME_HEADER.pack(-1)))


def _received_through(write: Callable[[int], None], expected: int, sndbuf: int = 0) -> bytes:
    """What a socket pair's far end reads (up to ``expected`` bytes, on a thread) while
    ``write`` writes to the near end's descriptor."""
    ours, theirs = socket.socketpair()
    if sndbuf:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    received = bytearray()

    def read() -> None:
        while len(received) < expected:
            chunk = theirs.recv(65536)
            if not chunk:
                return
            received.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        write(ours.fileno())
        reader.join(WAIT)
        assert not reader.is_alive(), f"read {len(received)} of {expected} bytes"
    finally:
        ours.close()
        theirs.close()
    return bytes(received)


@pytest.mark.parametrize("size", [10, 1024 * 1024])
def test_send_frame_frames_small_and_large_payloads_alike(size: int) -> None:
    payload = os.urandom(size)
    received = bytearray(
        _received_through(lambda fd: send_frame(fd, FRAME_HEADER.pack(size), payload), 4 + size)
    )
    assert take_frames(received) == [payload] and received == b""


def test_write_all_writes_everything_through_a_full_socket_buffer() -> None:
    data = os.urandom(4 * 1024 * 1024)  # far more than the buffers hold: partial writes
    assert _received_through(lambda fd: write_all(fd, data), len(data), sndbuf=4096) == data


def test_take_frame_takes_one_message_and_leaves_raw_bytes_after_it() -> None:
    buffer = bytearray(FRAME_HEADER.pack(3) + b"abc" + b"raw bytes, no header")
    assert take_frame(buffer) == b"abc"
    assert buffer == b"raw bytes, no header"  # take_frames would misread these
    assert take_frame(bytearray(FRAME_HEADER.pack(5) + b"abc")) is None
    with pytest.raises(OSError, match="bad frame length -1"):
        take_frame(bytearray(FRAME_HEADER.pack(-1)))


@pytest.mark.parametrize("held", [0, 1000])
def test_take_raw_reads_a_buffer_whole_after_what_was_read_already(held: int) -> None:
    data = os.urandom(4 * 1024 * 1024)  # more than a socket buffer holds
    tail = b"next batch"
    ours, theirs = socket.socketpair()
    writer = threading.Thread(target=write_all, args=(ours.fileno(), data[held:] + tail))
    writer.start()
    try:
        buffer = bytearray(data[:held])
        assert _take_raw(theirs, buffer, len(data)) == data
        assert buffer == b""
        assert theirs.recv(len(tail), socket.MSG_WAITALL) == tail  # nothing read past it
    finally:
        writer.join(WAIT)
        ours.close()
        theirs.close()


def test_take_raw_takes_a_small_buffer_read_already_off_the_front() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        buffer = bytearray(b"0123456789")
        assert _take_raw(theirs, buffer, 4) == b"0123"
        assert buffer == b"456789"


def test_a_worker_whose_stub_closed_while_it_started_exits_quietly() -> None:
    # The stub sends the slots and the path, then goes away (closed while a worker
    # was starting): the worker's "ready" meets a closed socket. It exits 0 without
    # a traceback (before: BrokenPipeError, logged as "worker process failed").
    import pickle
    from multiprocessing.connection import Connection

    from futurefsm.scheduler_stub import processes

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    slots = processes.WorkerSlots.create()
    try:
        socket.send_fds(ours, [processes._SLOTS_MARK], [slots.fd])  # as fork_worker does
        stub_end = Connection(ours.detach())
        stub_end.send_bytes(pickle.dumps((list(sys.path), pickle.dumps(DEFAULT_SERIALIZER))))
        stub_end.close()
        path = list(sys.path)
        try:
            assert processes.worker_main(theirs.detach()) == 0
        finally:
            sys.path[:] = path
    finally:
        slots.close()
