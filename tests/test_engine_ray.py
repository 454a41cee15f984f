"""What only the Ray engine does, on a real local Ray cluster (``ray start --head`` on
loopback, 2 CPUs), started once for the module; everything every engine owes is in
tests/test_conformance.py.

The answers Ray itself never gives: a forced cancel of a running task is confirmed
only once the ref ended cancelled and its worker process is gone; ``force=False`` is
Ray's interrupt, confirmed only if the task ends cancelled. Tasks that must wait for
the test hold until a file appears (``Gates``); this module is pickled by value, so
Ray's workers need not import it. Where a test needs its own Ray connection (a new
local Ray, a cluster killed under the driver), it runs in a subprocess: Ray allows one
connection per process.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import operator
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from futurefsm.engines.ray_cluster import LocalRayCluster, use_loopback

use_loopback()  # before ray is imported
pytest.importorskip("ray", reason="the Ray engine needs ray: pip install 'futurefsm[ray]'")

import ray.cloudpickle  # noqa: E402

from futurefsm import Client, ConnectionLostError  # noqa: E402
from futurefsm.engines.ray import RayEngine  # noqa: E402
from futurefsm.errors import RemoteTraceback, WorkerDiedError  # noqa: E402
from futurefsm.fsm import CancelOutcome, FutureState  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

CANCEL_TIMEOUT = 20.0
SLACK = 30.0
"""Bound on waits for things that happen on a loaded 2-core runner (never reached)."""


# ---------------------------------------------------------------------------- tasks


def hold(gate: str, limit: float = 60.0) -> int:
    """Write this worker's pid to ``gate.started``; spin (in Python, so Ray's interrupt
    lands) until ``gate.open`` exists; return the pid."""
    Path(gate + ".started").write_text(str(os.getpid()))
    deadline = time.monotonic() + limit
    while not os.path.exists(gate + ".open") and time.monotonic() < deadline:
        for _ in range(10000):
            pass
    return os.getpid()


def sleep_in_c(gate: str, seconds: float) -> str:
    """Mark started, then one ``time.sleep`` (a C call Ray's interrupt waits out)."""
    Path(gate + ".started").write_text(str(os.getpid()))
    time.sleep(seconds)
    return "slept"


def hold_ignoring_interrupt(gate: str) -> str:
    """Like ``hold``, but a ``KeyboardInterrupt`` (Ray's non-forced cancel) is caught
    and the task returns a value."""
    try:
        hold(gate)
    except KeyboardInterrupt:
        return "caught the interrupt"
    return "finished"


def crash(gate: str) -> None:
    """Count the run in ``gate.runs``, then end the worker process abruptly."""
    with open(gate + ".runs", "a") as runs:
        runs.write("run\n")
    os._exit(3)


def raise_value_error(text: str) -> None:
    raise ValueError(text)


class OnlyOffClient:
    """A value that refuses to be unpickled in the process that runs the test: if a
    graph member receives it, it came from another member, not through the client."""

    def __init__(self, value: int, client_pid: int) -> None:
        self.value = value
        self.client_pid = client_pid

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_off_client, (self.value, self.client_pid))


def _rebuild_off_client(value: int, client_pid: int) -> OnlyOffClient:
    if os.getpid() == client_pid:
        raise RuntimeError("this value was sent through the client")
    return OnlyOffClient(value, client_pid)


def make_off_client(value: int, client_pid: int) -> OnlyOffClient:
    return OnlyOffClient(value, client_pid)


def unwrap(item: OnlyOffClient) -> int:
    return item.value + 1


# ---------------------------------------------------------------------------- fixtures


class Gates:
    """Files a held task waits on; every gate is opened at teardown."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.count = 0

    def new(self) -> str:
        self.count += 1
        return str(self.directory / f"gate{self.count}")

    def started(self, gate: str) -> int:
        """Wait until the task holding ``gate`` runs; its worker's pid."""
        path = Path(gate + ".started")
        deadline = time.monotonic() + SLACK
        while not path.exists() or not path.read_text():
            assert time.monotonic() < deadline, f"the task of {gate} never started"
            time.sleep(0.01)
        return int(path.read_text())

    def close(self) -> None:
        for number in range(1, self.count + 1):
            Path(self.directory / f"gate{number}.open").touch()


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[LocalRayCluster]:
    with LocalRayCluster(cpus=2) as cluster:
        yield cluster


@pytest.fixture
def gates(tmp_path: Path) -> Iterator[Gates]:
    keeper = Gates(tmp_path)
    try:
        yield keeper
    finally:
        keeper.close()


@pytest.fixture
def client(ray_cluster: LocalRayCluster, gates: Gates) -> Iterator[Client]:
    ffsm = Client(ray_cluster.address, engine="ray", cancel_timeout=CANCEL_TIMEOUT)
    try:
        yield ffsm
    finally:
        gates.close()
        ffsm.close()
        assert ffsm.stats()["io_errors"] == 0
        engine = ffsm.engine
        assert isinstance(engine, RayEngine)
        # Every future was forgotten: the engine keeps nothing of it.
        records = ("_refs", "_forced", "_groups", "_group_of", "_group_left")
        assert {name: len(getattr(engine, name)) for name in records} == dict.fromkeys(records, 0)


def _gone(pid: int) -> bool:
    deadline = time.monotonic() + SLACK
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.01)
    return False


# ---------------------------------------------------------------------------- cancel


def test_forced_cancel_of_a_running_task_is_confirmed_once_its_worker_is_killed(
    client: Client, gates: Gates
) -> None:
    gate = gates.new()
    future = client.submit(hold, gate)
    pid = gates.started(gate)

    assert future.cancel() is True
    assert future.cancel_outcome is CancelOutcome.CONFIRMED
    assert _gone(pid), "Ray confirmed the cancel, yet the task's worker process lives on"


def test_unforced_cancel_interrupts_a_python_loop_and_is_confirmed(
    client: Client, gates: Gates
) -> None:
    gate = gates.new()
    future = client.submit(hold, gate)
    pid = gates.started(gate)

    assert client.cancel([future], force=False) == [True]
    assert future.cancel_outcome is CancelOutcome.CONFIRMED
    # Interrupted, not killed: Ray's worker process runs on (and takes the next task).
    os.kill(pid, 0)


def test_unforced_cancel_of_a_task_in_a_c_call_waits_for_it_and_is_confirmed(
    client: Client, gates: Gates
) -> None:
    gate = gates.new()
    future = client.submit(sleep_in_c, gate, 3.0)  # long enough for the cancel to get there first
    gates.started(gate)

    assert client.cancel([future], force=False) == [True]
    # Ray's interrupt waits for time.sleep to return; Ray then reports the task
    # cancelled (its value is dropped), so the answer is a confirmed cancel.
    assert future.cancel_outcome is CancelOutcome.CONFIRMED


def test_a_task_that_ignores_the_interrupt_and_returns_races_the_cancel(
    client: Client, gates: Gates
) -> None:
    gate = gates.new()
    future = client.submit(hold_ignoring_interrupt, gate)
    gates.started(gate)

    assert client.cancel([future], force=False) == [True]
    # The task returned normally, so Ray keeps its value: the result won the race.
    assert future.cancel_outcome is CancelOutcome.RESULT_RACED


def test_cancel_of_a_queued_task_drops_it_before_it_runs(client: Client, gates: Gates) -> None:
    holders = [gates.new(), gates.new()]
    busy = [client.submit(hold, gate) for gate in holders]  # both CPUs taken
    for gate in holders:
        gates.started(gate)
    queued_gate = gates.new()
    queued = client.submit(hold, queued_gate)

    assert queued.cancel() is True
    assert queued.cancel_outcome is CancelOutcome.CONFIRMED
    gates.close()
    assert [future.result(SLACK) for future in busy]
    assert not Path(queued_gate + ".started").exists(), "the cancelled task ran"


# ---------------------------------------------------------------------------- graphs


def test_graph_members_pass_values_to_each_other_not_through_the_client(
    client: Client,
) -> None:
    futures = client.submit_graph(
        {"a": (make_off_client, 41, os.getpid()), "b": (unwrap, "a"), "c": (sum, [1, "b"])}
    )

    assert futures["b"].result(SLACK) == 42
    assert futures["c"].result(SLACK) == 43
    # The client could not read "a" (it refuses this process), yet "b" got it.
    assert futures["a"].exception(SLACK) is not None


def test_cancelling_a_graph_member_cancels_every_member(client: Client, gates: Gates) -> None:
    first, second = gates.new(), gates.new()
    futures = client.submit_graph(
        {"a": (hold, first), "b": (operator.add, "a", 1), "c": (hold, second)}
    )
    pids = [gates.started(first), gates.started(second)]

    assert futures["b"].cancel() is True
    assert futures["b"].cancel_outcome is CancelOutcome.CONFIRMED
    # Each member's answer is its own ref's end, which comes on its own time.
    cf.wait([futures["a"], futures["c"]], timeout=SLACK)
    for key in ("a", "c"):
        future = futures[key]
        assert future.cancelled(), (key, future.state)
        assert future.cancel_outcome is CancelOutcome.BY_SCHEDULER
    assert all(_gone(pid) for pid in pids), "a cancelled member's worker still runs"


# ---------------------------------------------------------------------------- failures


def test_builtins_run_through_the_wrapper(client: Client) -> None:
    assert client.submit(pow, 2, 10).result(SLACK) == 1024
    assert client.submit(len, [1, 2, 3]).result(SLACK) == 3
    assert list(client.map(abs, [-1, -2])) == [1, 2]


def test_a_crashed_worker_is_re_run_once_then_a_worker_died_error(
    client: Client, gates: Gates
) -> None:
    # max_retries=1 by default: Ray's forced cancel can kill the next task on a worker.
    gate = gates.new()
    error = client.submit(crash, gate).exception(SLACK)

    assert isinstance(error, WorkerDiedError), repr(error)
    assert Path(gate + ".runs").read_text() == "run\nrun\n"  # once, then once more


def test_max_retries_0_never_runs_a_task_twice(ray_cluster: LocalRayCluster, gates: Gates) -> None:
    with Client(ray_cluster.address, engine="ray", max_retries=0) as client:
        gate = gates.new()
        error = client.submit(crash, gate).exception(SLACK)

    assert isinstance(error, WorkerDiedError), repr(error)
    assert Path(gate + ".runs").read_text() == "run\n", "Ray re-ran the crashed task"
    with pytest.raises(ValueError, match="max_retries"):
        RayEngine("127.0.0.1:1", max_retries=-1)


def test_a_remote_exception_is_the_tasks_own_with_its_remote_traceback(client: Client) -> None:
    error = client.submit(raise_value_error, "no such thing").exception(SLACK)

    assert type(error) is ValueError
    assert str(error) == "no such thing"
    cause = error.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "raise_value_error" in cause.tb
    assert "\x1b[" not in cause.tb, "Ray's colour codes leaked into the traceback"


def test_something_that_does_not_pickle_is_refused_at_submit(client: Client) -> None:
    import threading

    with pytest.raises(TypeError, match="cannot serialize"):
        client.submit(operator.truth, threading.Lock())
    assert client.stats()["submitted"] == 0


# ---------------------------------------------------------------------------- addresses


def test_a_loopback_address_without_the_variable_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")
    with pytest.raises(ValueError, match="RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"):
        RayEngine("127.0.0.1:6379")


@pytest.mark.parametrize("address", ["ray://127.0.0.1:10001", "127.0.0.1", "host:port"])
def test_an_address_that_is_not_host_port_is_refused(address: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        RayEngine(address)


def test_a_port_where_no_cluster_answers_is_a_connection_error_in_time(
    ray_cluster: LocalRayCluster,
) -> None:
    import socket

    with socket.socket() as unused:  # bound, not listening: connections are refused
        unused.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{unused.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(ConnectionError, match=address):
            Client(address, engine="ray", connection_timeout=1.0)
    assert time.monotonic() - started < 1.0 + SLACK


# ---------------------------------------------------------------------------- own driver

_DRIVER = textwrap.dedent(
    """
    import json, os, signal, tempfile, time
    from futurefsm.engines.ray_cluster import use_loopback
    use_loopback()
    import ray
    from futurefsm import Client

    def descendants(root):
        children = {}
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
        found, todo = [], [root]
        while todo:
            for child in children.get(todo.pop(), []):
                found.append(child)
                todo.append(child)
        return found

    report = {}
    # No address: a new local Ray (its processes are this driver's descendants).
    temp = tempfile.mkdtemp(prefix="ffray")  # short: Ray's unix sockets live under it
    client = Client(engine="ray", workers=1, object_store_memory=80_000_000,
                    connection_timeout=3.0, heartbeat_interval=0.2, _temp_dir=temp)
    report["local"] = client.submit(pow, 3, 3).result(120)
    report["local_address"] = client.engine.address
    def started_then_sleep(path):
        open(path, "w").close()
        time.sleep(300)

    started = os.path.join(temp, "started")
    future = client.submit(started_then_sleep, started)
    deadline = time.monotonic() + 60  # wait until the task runs on its worker
    while not os.path.exists(started):
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.01)
    # The cluster killed under the driver: ConnectionLostError in time, and the
    # process lives on (Ray itself ends a driver whose GCS stays away for 60 s).
    killed = time.monotonic()
    for pid in descendants(os.getpid()):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    error = future.exception(60)
    report["lost_type"] = type(error).__name__
    report["lost_after"] = time.monotonic() - killed
    late = client.submit(pow, 2, 2)
    report["late_type"] = type(late.exception(10)).__name__
    deadline = time.monotonic() + 30
    while ray.is_initialized() and time.monotonic() < deadline:
        time.sleep(0.05)
    report["initialized_after_loss"] = ray.is_initialized()
    client.close()
    report["temp"] = temp
    print("REPORT " + json.dumps(report), flush=True)
    """
)


def test_a_local_ray_of_its_own_and_that_cluster_killed_under_the_driver(
    tmp_path: Path,
) -> None:
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(lines[-1][len("REPORT ") :])
    shutil.rmtree(report["temp"], ignore_errors=True)  # Ray's logs, once its driver ended

    assert report["local"] == 27
    assert report["local_address"].startswith("127.0.0.1:")  # loopback, not the interface
    assert report["lost_type"] == ConnectionLostError.__name__
    assert report["lost_after"] < 3.0 + 1.0 + SLACK
    assert report["late_type"] == ConnectionLostError.__name__
    assert report["initialized_after_loss"] is False  # the engine let its own Ray go


def test_a_cluster_started_with_sigint_ignored_lets_ray_interrupt_its_tasks() -> None:
    # A shell's background job (`pytest &`) runs with SIGINT ignored, and every
    # process it starts inherits that: Ray's workers then have no KeyboardInterrupt
    # handler and ray.cancel(force=False) interrupts nothing (before: the unforced
    # cancel tests ended TIMED_OUT in a backgrounded CI run). LocalRayCluster puts
    # SIGINT back to its default for `ray start` and everything it starts.
    sigint = 1 << (signal.SIGINT - 1)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        cluster = LocalRayCluster(cpus=1).start()
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        ignoring = []
        for pid in cluster.pids():
            status = Path(f"/proc/{pid}/status").read_text()
            if int(status.split("SigIgn:")[1].split()[0], 16) & sigint:
                ignoring.append((pid, Path(f"/proc/{pid}/comm").read_text().strip()))
        assert cluster.pids() and not ignoring, ignoring
    finally:
        cluster.stop()


def test_a_driver_ignoring_sigint_is_warned_before_it_starts_a_local_ray(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A local Ray (Client(engine="ray"), no address) is started by ray.init from this
    # process and cannot be given SIGINT back: the engine says what that costs.
    from futurefsm.engines.ray import _warn_if_sigint_ignored

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert _warn_if_sigint_ignored() is False
        assert "cannot interrupt" not in caplog.text
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        assert _warn_if_sigint_ignored() is True
    finally:
        signal.signal(signal.SIGINT, previous)
    assert "cancel(force=False) cannot interrupt" in caplog.text


def test_a_future_never_waits_for_a_ref_whose_cancel_ray_ignores(
    ray_cluster: LocalRayCluster, gates: Gates
) -> None:
    # A task in a C call under force=False: Ray answers only once it returns. With a
    # deadline shorter than that, the client's TIMED_OUT ends the wait.
    with Client(ray_cluster.address, engine="ray", cancel_timeout=0.2) as client:
        gate = gates.new()
        future = client.submit(sleep_in_c, gate, 3.0)
        gates.started(gate)
        assert client.cancel([future], force=False) == [True]
        assert future.cancel_outcome is CancelOutcome.TIMED_OUT
        assert future.state is FutureState.CANCELLED


def test_the_bench_measures_futurefsm_against_rays_own_api(ray_cluster: LocalRayCluster) -> None:
    from futurefsm.bench import engines_ray

    figures = engines_ray.measure(tasks=50, rounds=2, cancels=1, address=ray_cluster.address)

    assert len(figures["ray_times"]) == len(figures["futurefsm_times"]) == 2
    assert figures["ratio"] > 0 and figures["ratio_of_medians"] > 0
    low, high = figures["ratio_quartiles"]
    assert low <= figures["ratio"] <= high
    assert figures["ray_cancel_ms"] > 0 and figures["futurefsm_cancel_ms"] > 0


def test_results_ready_together_are_fetched_with_one_ray_get(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fetcher is held before its next wait until every task has finished; then
    # all of them are ready at once and must come in one ray.get, not one per future.
    engine = client.engine
    assert isinstance(engine, RayEngine)
    real_wait, real_get = ray.wait, ray.get
    all_done = threading.Event()
    fetcher_gets: list[int] = []

    def held_wait(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == "futurefsm-ray-fetch":
            assert all_done.wait(SLACK)
        return real_wait(*args, **kwargs)

    def counted_get(refs: Any, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == "futurefsm-ray-fetch":
            fetcher_gets.append(len(refs) if isinstance(refs, list) else 1)
        return real_get(refs, *args, **kwargs)

    monkeypatch.setattr(ray, "wait", held_wait)
    monkeypatch.setattr(ray, "get", counted_get)
    futures = [client.submit(operator.add, n, 1) for n in range(40)]
    refs = list(engine._refs.values())
    assert len(refs) == 40
    assert len(real_wait(refs, num_returns=40, timeout=SLACK)[0]) == 40
    all_done.set()

    assert [future.result(SLACK) for future in futures] == [n + 1 for n in range(40)]
    assert fetcher_gets == [40]


def test_a_stream_of_results_is_gathered_by_one_wait_not_waited_for_one_by_one(
    client: Client, gates: Gates, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Quick tasks end while a held one is outstanding: once a wait found results, the
    # next one waits for a quarter of the outstanding refs (at least one) or for
    # GATHER (before: one wait per result, each costing time in proportion to the
    # refs outstanding, and a batch of deliveries each). Few outstanding: not held.
    from futurefsm.engines.ray import GATHER, _gathered

    real_wait = ray.wait
    waits: list[tuple[int, int, float]] = []

    def recorded_wait(refs: Any, *args: Any, num_returns: int = 1, timeout: Any = None) -> Any:
        if threading.current_thread().name == "futurefsm-ray-fetch":
            waits.append((len(refs), num_returns, timeout))
        return real_wait(refs, *args, num_returns=num_returns, timeout=timeout)

    monkeypatch.setattr(ray, "wait", recorded_wait)
    gate = gates.new()
    held = client.submit(hold, gate)
    gates.started(gate)
    assert [client.submit(operator.add, n, 1).result(SLACK) for n in range(3)] == [1, 2, 3]
    gates.close()
    assert held.result(SLACK) > 0

    gathering = [(n, returns) for n, returns, timeout in waits if timeout == GATHER]
    assert gathering, waits
    assert all(returns == 1 for n, returns in gathering), waits
    # A quarter of the outstanding refs, or the last batch's size if larger; one
    # with fewer than 8 outstanding, whatever the last batch was.
    assert [_gathered(n, 0) for n in (1, 7, 8, 1000)] == [1, 1, 2, 250]
    assert [_gathered(n, 40) for n in (7, 8, 100, 1000)] == [1, 40, 40, 250]


def test_a_streaming_wait_watches_the_oldest_refs_and_sweeps_the_rest(
    client: Client, gates: Gates, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The oldest task is held; sixty quick ones after it stream in. While results
    # stream, a blocking wait is given only the window (the oldest refs: here the
    # held one and a few quick ones), never every outstanding ref (before: all of
    # them, each wait costing time in proportion); the refs beyond it are looked at
    # with timeout 0, or by the next idle wait once the window yields nothing. Every
    # quick result still arrives while the oldest is held.
    from futurefsm.engines import ray as ray_engine

    monkeypatch.setattr(ray_engine, "WINDOW", 2)
    real_wait = ray.wait
    waits: list[tuple[int, float, int]] = []

    def recorded_wait(refs: Any, *args: Any, num_returns: int = 1, timeout: Any = None) -> Any:
        ready, rest = real_wait(refs, *args, num_returns=num_returns, timeout=timeout)
        if threading.current_thread().name == "futurefsm-ray-fetch":
            waits.append((len(refs), timeout, len(ready)))
        return ready, rest

    monkeypatch.setattr(ray, "wait", recorded_wait)
    gate = gates.new()
    held = client.submit(hold, gate)
    gates.started(gate)
    quick = [client.submit(operator.add, n, 1) for n in range(60)]
    assert [future.result(SLACK) for future in quick] == [n + 1 for n in range(60)]
    assert not held.done()
    gates.close()
    assert held.result(SLACK) > 0

    # Each streaming wait (timeout GATHER) follows a wait, or a wait and its sweep,
    # that found results: it is given at most the window those found.
    found = 0
    streaming = []
    for given, timeout, ready in waits:
        if timeout == ray_engine.GATHER:
            streaming.append(given)
            assert given <= ray_engine._window(found), waits
            found = ready
        elif timeout == 0:
            found += ready
        else:
            found = ready
    assert streaming, waits


def test_a_not_found_answer_is_never_queued_before_the_result_it_follows(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cancel that finds the task's ref already taken by the fetcher answers
    # not_found, and that answer must come after the result (the result won). The
    # fetcher posts results under the lock send_cancel reads the refs under. Here a
    # cancel is sent just as the fetcher posts the result: before, it ran in between
    # and its not_found went first (the future then ended NOT_FOUND, not
    # RESULT_RACED). The wait gives the old code's race its chance; the order never
    # depends on it.
    engine = client.engine
    assert isinstance(engine, RayEngine)
    real_post, real_post_many = engine._delivery.post, engine._delivery.post_many
    posted: list[str] = []
    cancellers: list[threading.Thread] = []

    def post_many(items: list[tuple[Any, ...]]) -> None:
        for item in items:
            if item[0] == "value" and threading.current_thread().name == "futurefsm-ray-fetch":
                sent = threading.Event()

                def cancel(task_id: bytes = item[1], sent: threading.Event = sent) -> None:
                    engine.send_cancel(task_id, None)
                    sent.set()

                cancellers.append(threading.Thread(target=cancel))
                cancellers[-1].start()
                sent.wait(0.2)
        posted.extend(item[0] for item in items if item[0] in ("value", "answer"))
        real_post_many(items)

    def post(item: tuple[Any, ...]) -> None:  # (send_cancel's not_found comes this way)
        if item[0] == "answer":
            posted.append(item[0])
        real_post(item)

    monkeypatch.setattr(engine._delivery, "post_many", post_many)
    monkeypatch.setattr(engine._delivery, "post", post)
    assert client.submit(operator.add, 1, 1).result(SLACK) == 2
    for canceller in cancellers:
        canceller.join(SLACK)
    assert posted == ["value", "answer"]
