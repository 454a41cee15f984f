"""What is Dask's own, on a real ``distributed.LocalCluster`` (2 worker processes, one
thread each), started once for the module; a standalone ``dask scheduler`` process
where one has to be frozen or killed. What every engine owes is in
``tests/test_conformance.py``.

Tasks that must wait for the test use file gates (``gate``): the task touches
``PATH.started`` and returns once the test creates ``PATH.open``. This module is
pickled by value, so the worker processes need not import it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import inspect
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

distributed = pytest.importorskip(
    "distributed", reason="the Dask engine needs distributed: pip install 'futurefsm[dask]'"
)

import cloudpickle  # noqa: E402 (after the skip: distributed brings it)
import dask  # noqa: E402

from futurefsm import Client, ConnectionLostError  # noqa: E402
from futurefsm.engines import dask_plugin as plugin_module  # noqa: E402
from futurefsm.engines import get_engine  # noqa: E402
from futurefsm.engines.dask import DaskEngine, DaskPluginError  # noqa: E402
from futurefsm.errors import WorkerDiedError  # noqa: E402
from futurefsm.fsm import TERMINAL_STATES, CancelOutcome, FutureState  # noqa: E402
from futurefsm.scheduler_stub.sample_tasks import add, echo  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])

CANCEL_TIMEOUT = 5.0
CONNECTION_TIMEOUT = 2.0
HEARTBEAT = 0.1
SLACK = 10.0
"""Bound on waits for things that happen on a loaded 2-core runner (never reached)."""


# ---------------------------------------------------------------------------- tasks


def gate(path: str, value: Any = None, timeout: float = 30.0) -> Any:
    """Task: say it started, wait until the test opens the gate, return ``value``."""
    import os
    import time

    with open(path + ".started", "w"):
        pass
    deadline = time.monotonic() + timeout
    while not os.path.exists(path + ".open"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} was not opened")
        time.sleep(0.002)
    return value


def kill_my_worker() -> None:
    """Task: kill the worker process running it."""
    import os

    os._exit(1)


def _refuse_to_load() -> None:
    raise RuntimeError("this value cannot be loaded here")


class Unloadable:
    """Pickles fine; unpickling it raises."""

    def __reduce__(self) -> Any:
        return (_refuse_to_load, ())


def make_unloadable() -> Unloadable:
    """Task: return a value the client cannot unpickle."""
    return Unloadable()


class Gates:
    """File gates in one directory; ``close()`` opens every gate."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.paths: list[str] = []

    def new(self, name: str) -> str:
        path = str(self.directory / f"{name}-{len(self.paths)}")
        self.paths.append(path)
        return path

    def wait_started(self, path: str, timeout: float = SLACK) -> bool:
        deadline = time.monotonic() + timeout
        while not os.path.exists(path + ".started"):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True

    def open(self, path: str) -> None:
        Path(path + ".open").touch()

    def close(self) -> None:
        for path in self.paths:
            self.open(path)


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    # No retries after a worker died, so one killed worker is enough for KilledWorker.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        local = distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address="127.0.0.1:0",
            worker_dashboard_address="127.0.0.1:0",
        )
    try:
        yield local
    finally:
        local.close()


@pytest.fixture(scope="module")
def dask_client(cluster: Any) -> Iterator[Any]:
    client = distributed.Client(cluster, set_as_default=False)
    client.wait_for_workers(2, timeout=60)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def gates(tmp_path: Path) -> Iterator[Gates]:
    keeper = Gates(tmp_path)
    try:
        yield keeper
    finally:
        keeper.close()


def make_client(dask_client: Any, **options: Any) -> Client:
    return Client(
        engine=DaskEngine(dask_client, **options),
        cancel_timeout=CANCEL_TIMEOUT,
        connection_timeout=CONNECTION_TIMEOUT,
        heartbeat_interval=HEARTBEAT,
    )


@pytest.fixture
def client(dask_client: Any, gates: Gates) -> Iterator[Client]:
    ffsm = make_client(dask_client)
    try:
        yield ffsm
    finally:
        gates.close()
        ffsm.close()
        assert ffsm.stats()["io_errors"] == 0


def settled(client: Client) -> dict[str, Any]:
    """``client.stats()`` once every future is counted: a future's waiters wake as it
    turns terminal, and the engine's thread counts it just after its callbacks."""
    assert wait_until(lambda: client.stats()["in_flight"] == 0), client.stats()
    return client.stats()


def wait_until(condition: Any, timeout: float = SLACK) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def scheduler_state(dask_client: Any, key: str) -> str | None:
    def state(dask_scheduler: Any, key: str = key) -> str | None:
        ts = dask_scheduler.tasks.get(key)
        return None if ts is None else ts.state

    return dask_client.run_on_scheduler(state)


# ---------------------------------------------------------------------------- the seam


def test_the_dask_engine_is_found_by_name_and_wraps_a_client(dask_client: Any) -> None:
    assert get_engine("dask") is DaskEngine
    assert not DaskEngine.__abstractmethods__
    with pytest.raises(TypeError, match=r"distributed\.Client"):
        DaskEngine("tcp://127.0.0.1:8786")  # type: ignore[arg-type]
    with make_client(dask_client) as ffsm:
        assert ffsm.address == dask_client.scheduler.address
        assert ffsm.submit(echo, 41).result(SLACK) == 41
    assert dask_client.status == "running", "closing the engine closed the user's Dask client"


def test_client_by_address_owns_its_dask_client(cluster: Any) -> None:
    ffsm = Client(cluster.scheduler_address, engine="dask", cancel_timeout=CANCEL_TIMEOUT)
    dask_client = ffsm.engine._dask
    try:
        assert list(ffsm.map(add, [1, 2, 3], [10, 20, 30])) == [11, 22, 33]
        with pytest.raises(ValueError, match="serializer"):
            Client(cluster.scheduler_address, engine="dask", serializer=object())  # type: ignore[arg-type]
    finally:
        ffsm.close()
    assert dask_client.status == "closed"


def test_the_cancel_keys_sent_after_a_silence_fits_the_schedulers_handler() -> None:
    # The scheduler calls handler(client=..., **message): a message missing one of
    # stimulus_cancel's arguments raised TypeError there (reason and msg, before), and
    # the scheduler stopped reading the client's stream.
    from distributed.scheduler import Scheduler

    from futurefsm.engines.dask import _cancel_keys_message

    message = _cancel_keys_message(["k"])
    assert message.pop("op") == "cancel-keys"
    inspect.signature(Scheduler.stimulus_cancel).bind(None, client="c", **message)


def test_private_distributed_attributes_are_where_the_engine_expects() -> None:
    """Fails naming the attribute when an upgrade of distributed moves one."""
    from distributed.scheduler import Scheduler

    client_attributes = {
        "Client._stream_handlers": "_stream_handlers",
        "Client.scheduler_comm": "scheduler_comm",
        "Client.status": "status",
    }
    probe = distributed.Client.__new__(distributed.Client)
    init = inspect.getsource(distributed.Client.__init__)
    for name, attribute in client_attributes.items():
        assert f"self.{attribute}" in init or hasattr(probe, attribute), f"{name} moved"
    handlers_source = inspect.getsource(distributed.Client.__init__)
    for op in ("key-in-memory", "task-erred", "cancelled-keys", "restart"):
        assert f'"{op}"' in handlers_source, f"Client._stream_handlers[{op!r}] moved"
    scheduler_source = inspect.getsource(Scheduler.__init__)
    for op in ("update-graph", "client-releases-keys", "cancel-keys", "report-key"):
        assert f'"{op}"' in scheduler_source, f"the scheduler's stream op {op!r} moved"
    assert "stream_handlers" in inspect.getsource(distributed.core.Server.__init__), (
        "Scheduler.stream_handlers moved"
    )
    parameters = inspect.signature(Scheduler.stimulus_cancel).parameters
    assert list(parameters)[1:] == ["keys", "client", "force", "reason", "msg"], (
        f"Scheduler.stimulus_cancel changed its signature: {list(parameters)}"
    )
    parameters = inspect.signature(Scheduler.update_graph).parameters
    for name in ("expr_ser", "keys", "internal_priority", "annotations", "span_metadata"):
        assert name in parameters, f"Scheduler.update_graph lost its {name!r} parameter"
    for attribute in ("stream_handlers", "handlers", "client_comms", "tasks", "rpc"):
        assert f"self.{attribute}" in inspect.getsource(Scheduler) + inspect.getsource(
            distributed.core.Server
        ), f"Scheduler.{attribute} moved"
    assert '"gather": self.gather' in scheduler_source, "the scheduler's gather RPC moved"
    from distributed.scheduler import TaskState
    from distributed.worker import Worker

    for slot in ("who_wants", "processing_on", "state"):
        assert slot in TaskState.__slots__ or hasattr(TaskState, slot), f"TaskState.{slot} moved"
    assert '"call_stack": self.get_call_stack' in inspect.getsource(Worker.__init__), (
        "the workers' call_stack RPC moved"
    )
    installed = distributed.__version__
    from packaging.specifiers import SpecifierSet

    from futurefsm.engines.dask import SUPPORTED_DISTRIBUTED

    assert installed in SpecifierSet(SUPPORTED_DISTRIBUTED), (
        f"distributed {installed} is outside the range checked ({SUPPORTED_DISTRIBUTED})"
    )


# ---------------------------------------------------------------------------- results


def test_results_arrive_in_batches_not_one_fetch_each(dask_client: Any) -> None:
    gathers = 0
    with make_client(dask_client, fetch_interval=0.5) as ffsm:
        engine = ffsm.engine
        original = engine._dask.scheduler.gather

        async def counting_gather(**kwargs: Any) -> Any:
            nonlocal gathers
            gathers += 1
            return await original(**kwargs)

        scheduler_rpc = engine._dask.scheduler
        # The rpc object makes a new caller per attribute access: patch the instance.
        scheduler_rpc.gather = counting_gather
        try:
            futures = [ffsm.submit(echo, i) for i in range(200)]
            assert [f.result(SLACK) for f in futures] == list(range(200))
        finally:
            del scheduler_rpc.gather
    # How results group into fetches depends on timing (an idle engine fetches at
    # once); what must never happen is one round trip per result. 25 were seen under
    # heavy load, 2-10 on a quiet machine.
    assert 1 <= gathers <= len(futures) // 2, f"{gathers} gathers for 200 results"


def test_a_value_that_cannot_be_loaded_fails_only_its_own_task(dask_client: Any) -> None:
    with make_client(dask_client, fetch_interval=0.5) as ffsm:
        assert ffsm.submit(echo, 0).result(SLACK) == 0  # the next ones share a gather
        futures = [ffsm.submit(echo, 1), ffsm.submit(make_unloadable), ffsm.submit(echo, 2)]
        done, _ = cf.wait(futures, SLACK)
        assert len(done) == 3
        assert futures[0].result(0) == 1 and futures[2].result(0) == 2
        error = futures[1].exception(0)
        assert "could not be fetched" in str(error)
        assert "cannot be loaded here" in str(error.__cause__)
        assert ffsm.stats()["io_errors"] == 0


def test_a_graph_runs_as_one_dask_graph(client: Client, dask_client: Any) -> None:
    futures = client.submit_graph(
        {
            "a": (echo, 1),
            "b": (add, "a", 10),
            "c": (add, ["b", "a"], [5]),
            "k": 7,
            "nested": (add, (add, "a", (echo, 100)), (echo, "b")),
            "in_list": (add, [(echo, "b")], [1]),
            "values": (echo, ("a", {"b": "b"})),  # a plain tuple or dict is a value
        }
    )
    assert {key: f.result(SLACK) for key, f in futures.items()} == {
        "a": 1,
        "b": 11,
        "c": [11, 1, 5],
        "k": 7,
        "nested": 101 + 11,
        "in_list": [11, 1],
        "values": ("a", {"b": "b"}),
    }
    assert settled(client)["completed"] == 7


def test_a_lost_worker_beyond_retries_is_worker_died(client: Client, dask_client: Any) -> None:
    future = client.submit(kill_my_worker)
    error = future.exception(SLACK * 3)
    assert isinstance(error, WorkerDiedError), repr(error)
    dask_client.wait_for_workers(2, timeout=60)  # the nanny restarts it


# ---------------------------------------------------------------------------- cancel


def test_cancel_of_a_running_task_is_confirmed_and_its_result_discarded(
    client: Client, dask_client: Any, gates: Gates
) -> None:
    path = gates.new("running")
    future = client.submit(gate, path, "late")
    assert gates.wait_started(path)
    assert scheduler_state(dask_client, future.task_id.decode()) == "processing"
    assert future.cancel() is True
    assert future.cancel_outcome is CancelOutcome.CONFIRMED
    assert future.cancelled() and isinstance(future.history[-1][1].value, str)
    # The thread runs to its end (Dask never interrupts it); the result is thrown away.
    gates.open(path)
    assert wait_until(lambda: scheduler_state(dask_client, future.task_id.decode()) is None)
    assert future.cancelled() and future.cancel_outcome is CancelOutcome.CONFIRMED


def test_cancel_of_a_queued_task_and_bulk_cancel(
    client: Client, dask_client: Any, gates: Gates
) -> None:
    paths = [gates.new("busy") for _ in range(2)]
    busy = [client.submit(gate, path) for path in paths]
    assert all(gates.wait_started(path) for path in paths)
    queued = [client.submit(echo, i) for i in range(20)]
    assert wait_until(lambda: all(f.state is FutureState.RUNNING for f in queued))
    results = client.cancel([*queued, *busy])
    assert results == [True] * 22
    assert {f.cancel_outcome for f in [*queued, *busy]} == {CancelOutcome.CONFIRMED}
    stats = settled(client)
    assert stats["cancelled"]["confirmed"] == 22
    # One answer per key: Dask's own "cancelled-keys" broadcast is not a second one.
    assert stats["stale_messages"] == 0


def test_cancel_without_force_refuses_a_running_task_as_the_stdlib_does(
    dask_client: Any, gates: Gates
) -> None:
    """``shutdown(cancel_futures=True)`` sends non-forced cancels: the tasks on the
    workers are refused and finish, the queued ones end cancelled."""
    ffsm = make_client(dask_client)
    paths = [gates.new("started") for _ in range(2)]
    running = [ffsm.submit(gate, path, index) for index, path in enumerate(paths)]
    assert all(gates.wait_started(path) for path in paths)
    queued = [ffsm.submit(echo, i) for i in range(5)]
    assert wait_until(lambda: all(f.state is FutureState.RUNNING for f in queued))
    assert running[0].cancel(force=False) is False
    assert running[0].cancel_outcome is CancelOutcome.FAILED
    ffsm.shutdown(wait=False, cancel_futures=True)
    # Dask has already handed most of them to the busy workers ("processing"): the
    # plugin asks the workers, and only what a thread is running is refused.
    assert cf.wait(queued, SLACK).done == set(queued)
    assert {f.cancel_outcome for f in queued} == {CancelOutcome.CONFIRMED}
    assert not any(f.done() for f in running)
    gates.close()
    assert [f.result(SLACK) for f in running] == [0, 1]
    assert wait_until(lambda: ffsm.engine._closed)  # shutdown closes once all are done


def test_a_key_another_client_wants_is_refused_and_runs_on(
    client: Client, dask_client: Any, gates: Gates
) -> None:
    path = gates.new("shared")
    future = client.submit(gate, path, "kept")
    assert gates.wait_started(path)
    key = future.task_id.decode()
    name = f"shared-{key}"
    with distributed.Client(dask_client.scheduler.address, set_as_default=False) as other:
        # Publishing makes the scheduler keep the key for another "client".
        other.publish_dataset(distributed.Future(key, other), name=name)
        try:
            assert future.cancel() is False
            assert future.cancel_outcome is CancelOutcome.FAILED
            assert future.state is FutureState.RUNNING
            gates.open(path)
            assert future.result(SLACK) == "kept"
        finally:
            other.unpublish_dataset(name)


def test_a_result_already_reported_wins_the_race(dask_client: Any) -> None:
    """The value is being fetched when the cancel goes out: the plugin answers that
    the result won, and the table says RESULT_RACED."""
    with make_client(dask_client) as ffsm:
        engine = ffsm.engine
        scheduler_rpc = engine._dask.scheduler
        original = scheduler_rpc.gather
        fetching, resume = threading.Event(), threading.Event()

        async def held_gather(**kwargs: Any) -> Any:
            fetching.set()
            while not resume.is_set():  # hold the fetch, as a slow transfer would
                await asyncio.sleep(0.001)
            return await original(**kwargs)

        scheduler_rpc.gather = held_gather
        try:
            future = ffsm.submit(echo, 1)
            assert fetching.wait(SLACK)  # key-in-memory arrived; the value is on its way
            assert future.state is FutureState.RUNNING
            assert future.cancel() is True
            assert future.cancel_outcome is CancelOutcome.RESULT_RACED
        finally:
            resume.set()
            del scheduler_rpc.gather
        assert ffsm.submit(echo, 2).result(SLACK) == 2
        stats = ffsm.stats()
        assert stats["io_errors"] == 0 and stats["cancelled"]["result_raced"] == 1


def test_unknown_keys_are_not_found(dask_client: Any, client: Client) -> None:
    def classify(dask_scheduler: Any, client_id: str) -> str:
        return plugin_module.classify(dask_scheduler, client_id, "no-such-key")

    assert dask_client.run_on_scheduler(classify, client_id=dask_client.id) == "not_found"


def test_close_resolves_everything_and_gives_back_dask_handlers(
    dask_client: Any, gates: Gates
) -> None:
    before = dict(dask_client._stream_handlers)
    ffsm = make_client(dask_client)
    path = gates.new("close")
    running = ffsm.submit(gate, path)
    assert gates.wait_started(path)
    queued = [ffsm.submit(echo, i) for i in range(5)]
    ffsm.close()
    assert all(f.state in TERMINAL_STATES for f in [running, *queued])
    assert running.cancel_outcome is CancelOutcome.CONFIRMED
    assert dask_client._stream_handlers == before
    gates.open(path)  # the cancelled task's thread still holds its worker's slot
    assert dask_client.submit(echo, 3).result(SLACK) == 3


def test_a_key_released_while_closing_is_not_left_on_the_scheduler(dask_client: Any) -> None:
    """Regression: a future finishing on the loop thread just as ``close()`` began (its
    key forgotten after close() marked the engine closed, before the loop released
    what was held) was released by neither: the scheduler kept its value for the Dask
    client forever (seen as a benchmark waiting 4 x 30 s for a quiet scheduler).
    A slow done-callback holds the loop thread in that gap: the future is terminal,
    its key not yet forgotten."""
    ffsm = make_client(dask_client)
    in_callback, resume = threading.Event(), threading.Event()

    def slow_callback(_: Any) -> None:
        in_callback.set()
        resume.wait(SLACK)

    future = ffsm.submit(echo, 1)
    future.add_done_callback(slow_callback)
    key = future.task_id.decode()
    closer = threading.Thread(target=ffsm.close)
    try:
        assert in_callback.wait(SLACK) and future.result(0) == 1
        closer.start()
        assert wait_until(lambda: ffsm.engine._closed)  # close() waits for the loop now
    finally:
        resume.set()
        closer.join(SLACK)
    assert not closer.is_alive()
    assert wait_until(lambda: scheduler_state(dask_client, key) is None), (
        f"the scheduler still holds {key}: {scheduler_state(dask_client, key)}"
    )


def test_two_clients_on_one_dask_client_each_get_their_own_answers(
    dask_client: Any, gates: Gates
) -> None:
    before = dict(dask_client._stream_handlers)
    first, second = make_client(dask_client), make_client(dask_client)
    try:
        paths = [gates.new("first"), gates.new("second")]
        a, b = first.submit(gate, paths[0]), second.submit(gate, paths[1])
        assert all(gates.wait_started(path) for path in paths)
        assert a.cancel() is True and b.cancel() is True
        assert a.cancel_outcome is b.cancel_outcome is CancelOutcome.CONFIRMED
        first.close()  # hooked first: it stays in the chain, passing everything on
        gates.close()  # the cancelled tasks' threads still hold both workers' slots
        assert second.submit(echo, 5).result(SLACK) == 5
        path = gates.new("third")
        c = second.submit(gate, path)
        assert gates.wait_started(path)
        assert c.cancel() is True and c.cancel_outcome is CancelOutcome.CONFIRMED
        assert first.stats()["stale_messages"] == second.stats()["stale_messages"] == 0
    finally:
        first.close()
        second.close()
    assert all(dask_client._stream_handlers.get(op) == h for op, h in before.items())


# ---------------------------------------------------------------------------- plugin missing


@pytest.mark.filterwarnings("ignore:Port .* is already in use")
def test_a_scheduler_without_the_plugin_is_a_clear_error_not_a_dropped_connection() -> None:
    with (
        distributed.LocalCluster(
            n_workers=0,
            processes=False,
            dashboard_address="127.0.0.1:0",
            worker_dashboard_address="127.0.0.1:0",
        ) as bare,
        distributed.Client(bare, set_as_default=False) as dask_client,
    ):
        with pytest.raises(DaskPluginError, match=r"preload futurefsm\.engines\.dask_plugin"):
            Client(engine=DaskEngine(dask_client, register_plugin=False))
        assert dask_client.status == "running"
        assert bare.scheduler.clients.get(dask_client.id) is not None


# ---------------------------------------------------------------------------- connection


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def standalone_scheduler(
    port: int | None = None, preload: bool = True
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A real ``dask scheduler`` process (no workers: tasks stay queued), with the
    cancel plugin installed by ``--preload`` as the docs say (unless ``preload`` is
    False: then the client must ship it)."""
    port = port or _free_port()
    command = [
        sys.executable,
        "-m",
        "distributed.cli.dask_scheduler",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-dashboard",
    ]
    if preload:
        command += ["--preload", "futurefsm.engines.dask_plugin"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield process, f"tcp://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGCONT)
        process.kill()
        process.wait(SLACK)


def test_a_frozen_then_killed_scheduler_is_connection_lost_in_time() -> None:
    with standalone_scheduler() as (process, address):
        ffsm = Client(
            address,
            engine="dask",
            register_plugin=False,  # the preload installed it
            timeout=60,
            cancel_timeout=30.0,
            connection_timeout=CONNECTION_TIMEOUT,
            heartbeat_interval=HEARTBEAT,
        )
        try:
            running = ffsm.submit(echo, 1)  # no workers: it stays queued
            cancelling = ffsm.submit(echo, 2)
            # Both written to the scheduler before it freezes: a future still pending
            # when cancelled never reached the wire (BEFORE_SEND, not connection lost).
            assert wait_until(
                lambda: all(f.state is FutureState.RUNNING for f in (running, cancelling))
            )
            process.send_signal(signal.SIGSTOP)  # frozen: the socket stays open
            started = time.monotonic()
            assert cancelling.cancel(wait=False) is True
            done, _ = cf.wait([running, cancelling], CONNECTION_TIMEOUT + SLACK)
            elapsed = time.monotonic() - started
            assert len(done) == 2, f"not resolved {elapsed:.2f} s after the scheduler froze"
            assert isinstance(running.exception(0), ConnectionLostError)
            assert cancelling.cancel_outcome is CancelOutcome.CONNECTION_LOST
            # The scheduler wakes up and then dies: Dask's client reconnects (and
            # cancels its own futures locally): a future then is connection lost,
            # never a confirmed cancel.
            process.send_signal(signal.SIGCONT)
            later = ffsm.submit(echo, 3)
            assert wait_until(lambda: later.state is FutureState.RUNNING)
            process.kill()
            assert cf.wait([later], CONNECTION_TIMEOUT + SLACK).done
            assert isinstance(later.exception(0), ConnectionLostError)
            assert not later.cancelled()
        finally:
            ffsm.close()


# ---------------------------------------------------------------------------- benchmark


def test_the_engines_benchmark_measures_every_figure(cluster: Any) -> None:
    from futurefsm.bench import engines_dask

    figures = engines_dask.measure(
        tasks_count=50, rounds=2, cancels=3, address=cluster.scheduler_address
    )
    assert figures["dask_s"] > 0 and figures["futurefsm_s"] > 0 and figures["ratio"] > 0
    assert len(figures["dask_times"]) == len(figures["futurefsm_times"]) == 2
    if figures["cancels_confirmed"]:
        assert 0 < figures["cancel_p50_ms"] <= figures["cancel_p99_ms"]


def test_after_a_reconnect_the_plugin_is_checked_again_before_a_cancel() -> None:
    """The scheduler dies and a new one (without the plugin) takes its address: Dask's
    client reconnects, futurefsm reports the old futures lost, ships the plugin again,
    and a cancel after that is confirmed (never sent blind: that would drop the
    connection)."""
    port = _free_port()
    with standalone_scheduler(port, preload=False) as (process, address):
        ffsm = Client(
            address,
            engine="dask",
            timeout=60,
            cancel_timeout=CANCEL_TIMEOUT,
            connection_timeout=CONNECTION_TIMEOUT,
            heartbeat_interval=HEARTBEAT,
        )
        try:
            engine = ffsm.engine
            before = ffsm.submit(echo, 1)  # no workers: it stays queued
            assert wait_until(lambda: before.state is FutureState.RUNNING)
            process.kill()
            process.wait(SLACK)
            assert cf.wait([before], CONNECTION_TIMEOUT + SLACK).done
            assert isinstance(before.exception(0), ConnectionLostError)
            with standalone_scheduler(port, preload=False):
                # Bounded by the Dask client's own reconnect timeout (timeout=60): a new
                # scheduler process is slow to start under load (this test: 0.9 s idle, 12.8 s
                # under two CPU burners).
                assert wait_until(lambda: engine._dask.status == "running", 60)
                after = ffsm.submit(echo, 2)
                assert wait_until(lambda: after.state is FutureState.RUNNING)
                assert after.cancel() is True
                assert after.cancel_outcome is CancelOutcome.CONFIRMED
                assert engine._plugin_ok and engine._plugin_error is None
        finally:
            ffsm.close()
