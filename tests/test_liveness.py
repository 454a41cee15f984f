"""Liveness and ghost runs against real ``futurefsm scheduler`` processes (issue 11).

The process boundary is the point here: a scheduler whose Python threads hold the GIL,
a frozen (SIGSTOP) scheduler, a killed client, an address where no scheduler runs yet.
Side effects are files that tasks create (``sample_tasks.touch``), so "this task never
ran" is checked in another process. Every wait has a deadline; no sleep synchronises.
"""

from __future__ import annotations

import concurrent.futures as cf
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from futurefsm import Client, ConnectionLostError
from futurefsm.scheduler_stub import SchedulerStub
from futurefsm.scheduler_stub.sample_tasks import touch

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

CONNECTION_TIMEOUT = 1.0
HEARTBEAT_INTERVAL = 0.1
SLACK = 5.0
"""Scheduling slack on a loaded 2-core machine, added to every deadline."""
GIL_HOLDING_SUM = 2 * 10**8
"""``sum(range(GIL_HOLDING_SUM))`` holds the GIL for ~2.4 s here: longer than the timeout."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = SLACK) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)  # a polling interval, not a synchronisation


class Scheduler:
    """A ``python -m futurefsm scheduler`` process on a loopback port."""

    def __init__(self, port: int | None = None, workers: int = 2, threads: bool = False) -> None:
        # Without a port, port 0: the scheduler binds a free one itself and prints it
        # (a port picked here could be taken by another process before it binds).
        requested = f"tcp://127.0.0.1:{0 if port is None else port}"
        command = [sys.executable, "-m", "futurefsm", "scheduler", "--address", requested]
        command += ["--workers", str(workers), *(["--threads"] if threads else [])]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        ready, _, _ = select.select([self.process.stdout], [], [], SLACK * 2)
        assert ready, "the scheduler printed nothing"
        line = self.process.stdout.readline()
        listening = "futurefsm scheduler listening on tcp://127.0.0.1:"
        assert line.startswith(listening), line
        self.port = int(line[len(listening) :])
        assert port is None or self.port == port, line
        self.address = f"tcp://127.0.0.1:{self.port}"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
        self.process.wait(SLACK)
        self.process.stdout.close()


@pytest.fixture
def schedulers() -> Iterator[Callable[..., Scheduler]]:
    started: list[Scheduler] = []

    def start(**kwargs: object) -> Scheduler:
        scheduler = Scheduler(**kwargs)
        started.append(scheduler)
        return scheduler

    yield start
    for scheduler in started:
        scheduler.close()


def client_for(address: str) -> Client:
    return Client(
        address, heartbeat_interval=HEARTBEAT_INTERVAL, connection_timeout=CONNECTION_TIMEOUT
    )


def test_a_scheduler_holding_the_gil_is_alive(schedulers):
    # Defect 1: one task holding the scheduler's GIL for longer than connection_timeout
    # used to fail every future in flight (its Python loop answered the heartbeats).
    # Worker threads, so the GIL held is the scheduler's own: libzmq still answers.
    scheduler = schedulers(workers=2, threads=True)
    with client_for(scheduler.address) as client:
        assert client.submit(abs, -1).result(SLACK) == 1  # connected and served
        busy = client.submit(sum, range(GIL_HOLDING_SUM))
        others = [client.submit(abs, -n) for n in range(20)]
        assert busy.result(SLACK * 4) == GIL_HOLDING_SUM * (GIL_HOLDING_SUM - 1) // 2
        assert [f.result(SLACK) for f in others] == list(range(20))
        assert client.stats()["connection_lost"] == 0


def test_a_frozen_scheduler_resolves_every_future_and_runs_nothing_later(schedulers, tmp_path):
    scheduler = schedulers(workers=1)
    client = client_for(scheduler.address)
    try:
        started = tmp_path / "started"
        # One worker: the first task runs (it sleeps past the freeze), the rest queue.
        running = client.submit(touch, str(started), "first", 2.0 + CONNECTION_TIMEOUT)
        queued = [client.submit(touch, str(tmp_path / f"queued-{n}")) for n in range(5)]
        wait_for(started.exists, "the first task to start")
        wait_for(lambda: all(f.running() for f in queued), "every task to be sent")
        scheduler.process.send_signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        # Sent while it is frozen: they wait in its socket buffers, unread.
        queued += [client.submit(touch, str(tmp_path / f"queued-late-{n}")) for n in range(5)]
        _, not_done = cf.wait([running, *queued], timeout=CONNECTION_TIMEOUT + 1 + SLACK)
        assert not not_done, "a frozen scheduler left futures unresolved"
        took = time.monotonic() - frozen_at
        for future in [running, *queued]:
            with pytest.raises(ConnectionLostError, match="lost the connection"):
                future.result(0)
        scheduler.process.send_signal(signal.SIGCONT)
        # Thawed, the scheduler drops the closed connection's work: when a new task,
        # queued behind the first one on the single worker, has run, none of the tasks
        # the user was told failed has run.
        after = tmp_path / "after"
        with client_for(scheduler.address) as other:
            assert other.submit(touch, str(after), "after").result(SLACK * 2) == "after"
        assert not [p.name for p in tmp_path.glob("queued-*")], "a failed task ran later"
        print(f"frozen scheduler noticed in {took:.2f} s (connection_timeout {CONNECTION_TIMEOUT})")
    finally:
        client.close()


def test_no_scheduler_is_a_clear_error_and_its_tasks_never_run_later(schedulers, tmp_path):
    # Defect 2: tasks submitted while no scheduler answered stayed queued in the socket
    # and all ran when a scheduler appeared at that address.
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    client = client_for(address)
    try:
        submitted_at = time.monotonic()
        failed = [client.submit(touch, str(tmp_path / f"early-{n}")) for n in range(20)]
        _, not_done = cf.wait(failed, timeout=CONNECTION_TIMEOUT + SLACK)
        assert not not_done
        took = time.monotonic() - submitted_at
        for future in failed:
            with pytest.raises(ConnectionLostError, match=f"no scheduler answered at {address}"):
                future.result(0)
        scheduler = schedulers(port=port, workers=1)
        wait_for(lambda: client.engine.connected, "the client to reconnect", SLACK * 2)
        late = tmp_path / "late"
        # One worker, first come first served: had the early tasks reached the
        # scheduler, they would have run before this one.
        assert client.submit(touch, str(late), "late").result(SLACK) == "late"
        assert late.exists()
        assert not [p.name for p in tmp_path.glob("early-*")], "a failed task ran later"
        assert scheduler.process.poll() is None
        print(f"no-scheduler error after {took:.2f} s (connection_timeout {CONNECTION_TIMEOUT})")
    finally:
        client.close()


_KILLED_CLIENT = textwrap.dedent(
    """
    import sys, time
    from futurefsm import Client
    from futurefsm.scheduler_stub.sample_tasks import touch

    address, directory = sys.argv[1], sys.argv[2]
    client = Client(address)
    first = client.submit(touch, directory + "/started", None, 3.0)
    queued = [client.submit(touch, f"{directory}/queued-{n}") for n in range(2000)]
    deadline = time.monotonic() + 30
    while not all(f.running() for f in queued) and time.monotonic() < deadline:
        time.sleep(0.01)
    print("sent", flush=True)
    time.sleep(60)  # killed before this ends
    """
)


@contextmanager
def _client_with_queued_tasks(address: str, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A client process (``_KILLED_CLIENT``) whose first task runs and the rest queue
    behind it on the single worker; killed (after a SIGCONT) at the end."""
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CLIENT, address, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([process.stdout], [], [], SLACK * 4)
        assert ready and process.stdout.readline() == "sent\n"
        wait_for((tmp_path / "started").exists, "the first task to start")
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
        process.wait()
        process.stdout.close()


def _queued_tasks_never_ran(address: str, tmp_path: Path) -> None:
    """Queued behind the running first task on the single worker: by the time a new
    task ran, the gone client's queued tasks would have run too."""
    with client_for(address) as client:
        after = client.submit(touch, str(tmp_path / "after"), "after")
        assert after.result(SLACK * 2) == "after"
    ran = sorted(p.name for p in tmp_path.glob("queued-*"))
    assert not ran, f"{len(ran)} tasks of a gone client ran"


def test_a_killed_clients_queued_tasks_are_dropped(schedulers, tmp_path):
    # Defect 4 (detection): a client killed with tasks queued; the scheduler ran them all.
    scheduler = schedulers(workers=1)
    with _client_with_queued_tasks(scheduler.address, tmp_path) as process:
        process.kill()
        process.wait(SLACK)
        _queued_tasks_never_ran(scheduler.address, tmp_path)


def test_a_frozen_clients_work_is_dropped_once_it_is_silent_past_the_timeout(tmp_path):
    # The stub's libzmq pings every client; one that answers nothing (a frozen
    # process) for client_timeout is gone, and its queued tasks are dropped.
    with SchedulerStub(workers=1, client_timeout=CONNECTION_TIMEOUT) as stub:
        with _client_with_queued_tasks(stub.address, tmp_path) as process:
            process.send_signal(signal.SIGSTOP)
            wait_for(
                lambda: stub.stats()["clients_gone"] == 1,
                "the stub to give up on the frozen client",
                CONNECTION_TIMEOUT + SLACK,
            )
            _queued_tasks_never_ran(stub.address, tmp_path)
