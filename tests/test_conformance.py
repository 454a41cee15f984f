"""What every engine owes, run against each engine's real local cluster.

One suite, parametrized over the engines: results, remote exceptions and their
traceback, cancel in every phase with its outcome, ``cancel(wait=False)``, bulk
cancel, close with work outstanding, graphs and their shared cancel, callbacks and
waiters exactly once, stats, connecting where nothing answers, a lost scheduler, and
generated cancel timings against real tasks. Each engine's own test module keeps only
what is specific to it.

Clusters: futurefsm's ``SchedulerStub``, Scaler's ``SchedulerClusterCombo`` and Dask's
``LocalCluster``, two workers each, started once per engine (the ``cluster`` fixture
is module-scoped and parametrized, so pytest runs one engine's tests together and
stops its cluster before starting the next).

A new engine joins by adding one entry to ``CLUSTERS``: a context manager that
starts a local cluster of two workers and yields its ``Cluster`` description.

Tasks run in other processes and coordinate with the test through files: ``hold(path)``
marks ``path.started`` and runs until ``path.release`` exists, so a test knows a task
is running, or queued behind running ones, without sleeping.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import os
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from futurefsm import Client, ConnectionLostError
from futurefsm.errors import RemoteTraceback
from futurefsm.fsm import TERMINAL_STATES, TRANSITION_TABLE, CancelOutcome, FutureState

# Workers need not import this module: its task functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

SLACK = 10.0
"""Bound on waits for what happens on a loaded 2-core runner (never reached when well)."""
CANCEL_TIMEOUT = 15.0


# ---------------------------------------------------------------------- tasks


def add(a: Any, b: Any = 0) -> Any:
    return a + b


def boom(message: str) -> None:
    raise ValueError(message)


def hold(path: str, value: Any = None, limit: float = 60.0) -> Any:
    """Mark ``path.started``, run until ``path.release`` exists (or ``limit``), then
    mark ``path.finished`` and return ``value``."""
    Path(path + ".started").touch()
    deadline = time.monotonic() + limit
    while not os.path.exists(path + ".release") and time.monotonic() < deadline:
        time.sleep(0.005)
    Path(path + ".finished").touch()
    return value


def release(path: str) -> None:
    """Let ``hold(path)`` finish (also as a task)."""
    Path(path + ".release").touch()


def held_boom(path: str, message: str) -> None:
    """``hold(path)``, then raise ``ValueError(message)``."""
    hold(path)
    raise ValueError(message)


def echo(*args: Any, **kwargs: Any) -> Any:
    return args, kwargs


def work(seconds: float, fails: bool, value: int) -> int:
    time.sleep(seconds)
    if fails:
        raise ValueError(value)
    return value


# ---------------------------------------------------------------------- clusters


@dataclass
class Cluster:
    """A running local cluster of one engine, with two workers."""

    engine: str
    address: str
    running_cancel: float = 0.0
    """Seconds a running task's cancel may take (Scaler kills its process: ~3 s)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Engine options every ``Client`` of this cluster gets."""
    refuses_unforced_cancel: bool = True
    """A ``force=False`` cancel of a running task is refused (``cancel_failed``). Ray's
    is an interrupt, which it cannot refuse: the task ends cancelled."""
    second_cluster: bool = True
    """A second cluster can run beside this one in the same process (Ray: one per
    process; its lost-cluster test runs in a subprocess, in test_engine_ray.py)."""
    futures_as_arguments: bool = True
    """``submit(f, future)`` runs with the future's value as a dependency on the
    engine's scheduler; False: it raises ``TypeError`` naming ``submit_graph``
    (docs/engines.md says which engines)."""

    def client(self, **settings: Any) -> Client:
        """A new ``Client`` of this cluster."""
        settings = {"cancel_timeout": CANCEL_TIMEOUT, **self.options, **settings}
        return Client(self.address, engine=self.engine, **settings)


@contextlib.contextmanager
def futurefsm_cluster() -> Iterator[Cluster]:
    from futurefsm.scheduler_stub import SchedulerStub

    stub = SchedulerStub(workers=2)
    try:
        yield Cluster("futurefsm", stub.address)
    finally:
        stub.stop()


@contextlib.contextmanager
def scaler_cluster() -> Iterator[Cluster]:
    scaler = pytest.importorskip("scaler", reason="futurefsm[scaler] is not installed")
    combo = scaler.SchedulerClusterCombo(n_workers=2, logging_level="WARNING")
    try:
        # Once its scheduler answers: one still booting on a loaded runner can take
        # longer than a short connection_timeout (Scaler's own client waits 60 s).
        scaler.Client(combo.get_address()).disconnect()
        yield Cluster("scaler", combo.get_address(), running_cancel=3.0)
    finally:
        combo.shutdown()


@contextlib.contextmanager
def dask_cluster() -> Iterator[Cluster]:
    distributed = pytest.importorskip("distributed", reason="futurefsm[dask] is not installed")
    # Loopback only: dashboard_address=None still serves HTTP on every interface.
    local = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address="127.0.0.1:0",
        worker_dashboard_address="127.0.0.1:0",
    )
    try:
        with distributed.Client(local, set_as_default=False) as probe:
            probe.wait_for_workers(2, timeout=60)
        yield Cluster("dask", local.scheduler_address)
    finally:
        local.close()


@contextlib.contextmanager
def ray_cluster() -> Iterator[Cluster]:
    """Ray on loopback (``LocalRayCluster``: ``ray start --head``, 2 CPUs).

    Where Ray cannot do what this suite asks (docs/engine-ray.md): ``force=False``
    is Ray's interrupt, which Ray cannot refuse (a running task ends cancelled, not
    ``cancel_failed``); Ray allows one cluster per process, so a second cluster
    killed under this one's driver is tests/test_engine_ray.py's (in a subprocess).
    (Ray's forced cancel of a task as it ends can kill the worker's next task; the
    engine's ``max_retries=1`` has Ray re-run it, so the race suite sees its value.)
    """
    from futurefsm.engines.ray_cluster import LocalRayCluster, use_loopback

    use_loopback()  # before ray is imported: the cluster and the driver stay on 127.0.0.1
    cloudpickle_of_ray = pytest.importorskip("ray.cloudpickle", reason="no futurefsm[ray]")
    # Ray pickles with its own copy of cloudpickle, which keeps its own by-value list.
    cloudpickle_of_ray.register_pickle_by_value(sys.modules[__name__])
    with LocalRayCluster(cpus=2) as local:
        # A forced cancel kills the task's worker process, and Ray starts a new one for
        # the tasks after it (seconds on a loaded runner).
        yield Cluster(
            "ray",
            local.address,
            running_cancel=5.0,
            refuses_unforced_cancel=False,
            second_cluster=False,
        )


CLUSTERS: dict[str, Callable[[], contextlib.AbstractContextManager[Cluster]]] = {
    "futurefsm": futurefsm_cluster,
    "scaler": scaler_cluster,
    "dask": dask_cluster,
    "ray": ray_cluster,
}
"""Every engine under test: its name -> how to start a local cluster of two workers."""


@pytest.fixture(scope="module", params=list(CLUSTERS))
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    with CLUSTERS[request.param]() as running:
        yield running


@pytest.fixture(scope="module")
def client(cluster: Cluster) -> Iterator[Client]:
    """One client per engine, shared by the tests that need nothing of their own."""
    shared = cluster.client()
    yield shared
    live = [repr(future) for future in shared.futures.values()]
    stats = shared.stats()
    shared.close()
    assert not live, f"futures left in flight by the tests: {live}"
    assert stats["io_errors"] == 0 and stats["protocol_errors"] == 0, stats


@pytest.fixture
def gates(tmp_path: Path) -> Iterator[Callable[[], str]]:
    """``gates()`` -> a new path for ``hold``; every hold is released at the end."""
    made: list[str] = []

    def new() -> str:
        made.append(str(tmp_path / uuid.uuid4().hex))
        return made[-1]

    yield new
    for path in made:
        release(path)


def started(path: str) -> bool:
    return os.path.exists(path + ".started")


def wait_for(predicate: Callable[[], object], what: str, timeout: float = SLACK) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def fill_workers(client: Client, gates: Callable[[], str]) -> list[tuple[Any, str]]:
    """Two held tasks, both running (one per worker)."""
    paths = [gates(), gates()]
    futures = [client.submit(hold, path, path) for path in paths]
    wait_for(lambda: all(started(path) for path in paths), "both workers busy")
    return list(zip(futures, paths, strict=True))


def sent(*futures: Any) -> None:
    """Wait until every future's task was handed to the scheduler (a cancel before
    that is ``BEFORE_SEND``)."""
    wait_for(lambda: all(f.state is FutureState.RUNNING for f in futures), "the tasks sent")


def free_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


# ---------------------------------------------------------------------- results


def test_results_map_and_keyword_arguments(client: Client) -> None:
    assert client.submit(add, 2, b=3).result(SLACK) == 5
    assert client.submit(abs, -7).result(SLACK) == 7  # a builtin
    assert list(client.map(add, [1, 2, 3], [10, 20, 30], timeout=SLACK)) == [11, 22, 33]
    futures = [client.submit(add, i, i) for i in range(50)]
    assert [future.result(SLACK) for future in futures] == [2 * i for i in range(50)]


def test_an_exception_returned_as_a_value_is_the_result_not_raised(client: Client) -> None:
    returned = client.submit(ValueError, "a value, not a failure").result(SLACK)
    assert type(returned) is ValueError
    assert returned.args == ("a value, not a failure",)


def test_what_cannot_be_serialized_is_a_type_error_and_nothing_is_sent(client: Client) -> None:
    before = client.stats()["submitted"]
    with pytest.raises(TypeError):
        client.submit(add, 1, threading.Lock())
    with pytest.raises(TypeError, match="callable"):
        client.submit(42)  # type: ignore[arg-type]
    assert client.stats()["submitted"] == before


def test_a_remote_exception_carries_its_remote_traceback_once(client: Client) -> None:
    future = client.submit(boom, "no luck")
    with pytest.raises(ValueError, match="no luck") as raised:
        future.result(SLACK)
    cause = raised.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "in boom" in cause.tb and "ValueError: no luck" in cause.tb
    # Printed, the remote frame shows once: in the cause, not again in the exception's
    # own traceback (which holds only local frames).
    printed = "".join(traceback.format_exception(raised.value))
    assert printed.count("in boom\n") == 1, printed


# ---------------------------------------------------------------------- cancel


def test_cancel_of_a_queued_task_is_confirmed_and_it_never_runs(
    client: Client, gates: Callable[[], str]
) -> None:
    busy = fill_workers(client, gates)
    path = gates()
    queued = client.submit(hold, path)
    sent(queued)
    assert queued.cancel() is True
    assert queued.cancel_outcome is CancelOutcome.CONFIRMED
    assert queued.cancelled() and queued.done()
    # wait=False: True at once (in flight); cancelled() then waits for the answer.
    other = client.submit(hold, gates())
    sent(other)
    assert other.cancel(wait=False) is True
    assert other.cancelled() is True
    assert other.cancel_outcome is CancelOutcome.CONFIRMED
    for future, held in busy:
        release(held)
        assert future.result(SLACK) == held
    assert not started(path)


def test_cancel_of_a_running_task_is_confirmed(
    client: Client, cluster: Cluster, gates: Callable[[], str]
) -> None:
    path = gates()
    future = client.submit(hold, path, "late")
    wait_for(lambda: started(path), "the task to start")
    assert future.cancel(timeout=cluster.running_cancel + SLACK) is True
    assert future.cancel_outcome is CancelOutcome.CONFIRMED  # (late: TIMED_OUT)
    release(path)
    with pytest.raises(cf.CancelledError):
        future.result(0)


def test_cancel_of_a_finished_future_is_false_and_asks_nothing(client: Client) -> None:
    future = client.submit(add, 1, 1)
    assert future.result(SLACK) == 2
    assert future.cancel() is False
    assert future.cancel(wait=False) is False
    assert future.cancel_outcome is None and future.state is FutureState.DONE


def test_a_non_forced_cancel_of_a_running_task_is_refused_and_it_finishes(
    cluster: Cluster, client: Client, gates: Callable[[], str]
) -> None:
    path = gates()
    running = client.submit(hold, path, "finished")
    wait_for(lambda: started(path), "the task to start")
    if not cluster.refuses_unforced_cancel:
        # Ray's interrupt: the task (in Python between its short sleeps) ends
        # cancelled, and the cancel is confirmed by what Ray says of its result.
        assert running.cancel(SLACK, force=False) is True
        assert running.cancel_outcome is CancelOutcome.CONFIRMED, running.history
        assert not os.path.exists(path + ".finished"), "the interrupted task ran on"
        return
    # (True while the answer is on its way; False if the refusal came back already.)
    running.cancel(wait=False, force=False)
    # Released by a task sent after the cancel on the same connection, on the other
    # worker: the cancel reaches the worker before the task can finish (Scaler drops a
    # result that reaches its scheduler while a cancel is on its way to the worker).
    releaser = client.submit(release, path)
    assert running.result(SLACK) == "finished"
    assert releaser.result(SLACK) is None
    assert running.cancel_outcome is CancelOutcome.FAILED
    assert running.cancelled() is False


def test_bulk_cancel_confirms_every_future_under_one_deadline(
    client: Client, gates: Callable[[], str]
) -> None:
    busy = fill_workers(client, gates)
    queued = [client.submit(hold, gates()) for _ in range(5)]
    sent(*queued)
    assert client.cancel(queued, timeout=SLACK) == [True] * 5
    assert {future.cancel_outcome for future in queued} == {CancelOutcome.CONFIRMED}
    in_flight = [client.submit(hold, gates()) for _ in range(3)]
    sent(*in_flight)
    assert client.cancel(in_flight, wait=False) == [True] * 3
    assert cf.wait(in_flight, SLACK).not_done == set()
    assert all(future.cancelled() for future in in_flight)
    for future, held in busy:
        release(held)
        future.result(SLACK)


def test_close_cancels_what_is_outstanding_and_leaves_finished_alone(
    cluster: Cluster, gates: Callable[[], str]
) -> None:
    own = cluster.client()
    finished = own.submit(add, 1, 2)
    assert finished.result(SLACK) == 3
    busy = fill_workers(own, gates)
    queued = [own.submit(hold, gates()) for _ in range(3)]
    own.close()
    assert all(future.cancelled() for future, _ in busy)
    assert all(future.cancelled() for future in queued)
    assert finished.result(0) == 3
    with pytest.raises(RuntimeError, match="shutdown"):
        own.submit(add, 1, 1)
    assert own.stats()["in_flight"] == 0


# ---------------------------------------------------------------------- graphs


def test_graph_members_pass_results_and_nested_tasks_run(client: Client) -> None:
    graph = {
        "a": (add, 1, 2),
        "b": (add, "a", 10),
        "c": 100,
        "d": (sum, ["a", "b", "c"]),
        "e": (add, ["a"], [["c"]]),
        "f": (add, (add, "a", 1), 1),  # a nested task naming a key
    }
    futures = client.submit_graph(graph)
    assert {key: future.result(SLACK) for key, future in futures.items()} == {
        "a": 3,
        "b": 13,
        "c": 100,
        "d": 116,
        "e": [3, [100]],
        "f": 5,
    }
    assert len({future.group_id for future in futures.values()}) == 1
    only = client.submit_graph({"x": (add, 1, 1), "y": (add, "x", 1)}, keys=["y"])
    assert list(only) == ["y"] and only["y"].result(SLACK) == 3
    with pytest.raises(ValueError, match="cycle"):
        client.submit_graph({"p": (add, "q"), "q": (add, "p")})
    with pytest.raises(KeyError, match="zz"):
        client.submit_graph({"p": (add, 1)}, keys=["zz"])


def test_a_failed_member_fails_its_dependents(client: Client) -> None:
    futures = client.submit_graph({"a": (boom, "root"), "b": (add, "a", 1)})
    for future in futures.values():
        error = future.exception(SLACK)
        assert isinstance(error, ValueError) and str(error) == "root"


def test_cancelling_one_member_cancels_the_whole_graph(
    client: Client, cluster: Cluster, gates: Callable[[], str]
) -> None:
    path = gates()
    futures = client.submit_graph({"a": (hold, path, 1), "b": (add, "a", 1), "c": (add, "b", 1)})
    wait_for(lambda: started(path), "the graph's first task to start")
    assert futures["c"].cancel(timeout=cluster.running_cancel + SLACK) is True
    assert futures["c"].cancel_outcome is CancelOutcome.CONFIRMED
    for key in "ab":
        wait_for(futures[key].done, f"member {key} to end", cluster.running_cancel + SLACK)
        assert futures[key].cancelled(), (key, futures[key].history)


# ---------------------------------------------------------------------- futures as arguments


def _needs_futures_as_arguments(cluster: Cluster, client: Client) -> None:
    """Skip-free: an engine that cannot do it must say so, naming submit_graph."""
    if cluster.futures_as_arguments:
        return
    upstream = client.submit(add, 1, 2)
    with pytest.raises(TypeError, match="submit_graph"):
        client.submit(add, upstream, 1)
    with pytest.raises(TypeError, match="submit_graph"):
        list(client.map(add, [upstream], [1]))
    assert upstream.result(SLACK) == 3
    pytest.xfail(f"{cluster.engine}: futures as arguments raise TypeError (docs/engines.md)")


def running_upstream(
    client: Client, gates: Callable[[], str], fn: Callable[..., Any], value: Any
) -> tuple[Any, str]:
    """``client.submit(fn, path, value)`` with a new gate, once it runs."""
    path = gates()
    upstream = client.submit(fn, path, value)
    wait_for(lambda: started(path), "the upstream to start")
    return upstream, path


def test_a_future_argument_is_its_value_where_the_task_runs(
    cluster: Cluster, client: Client, gates: Callable[[], str]
) -> None:
    _needs_futures_as_arguments(cluster, client)
    upstream, path = running_upstream(client, gates, hold, 3)
    # Submitted while the upstream runs: a dependency on the scheduler.
    dependent = client.submit(add, upstream, 10)
    nested = client.submit(echo, [upstream, (upstream, 1)], key={"deep": [upstream]})
    mapped = client.map(add, [upstream, upstream], [1, 2])
    sent(dependent, nested)
    assert not dependent.done()
    release(path)
    assert dependent.result(SLACK) == 13
    assert nested.result(SLACK) == (([3, (3, 1)],), {"key": {"deep": [3]}})
    assert list(mapped) == [4, 5]
    # An upstream that already finished: its value goes in its place.
    assert client.submit(add, upstream, upstream).result(SLACK) == 6


def test_an_upstream_failure_fails_its_dependents_with_that_error(
    cluster: Cluster, client: Client, gates: Callable[[], str]
) -> None:
    _needs_futures_as_arguments(cluster, client)
    upstream, path = running_upstream(client, gates, held_boom, "root")
    dependents = [client.submit(add, upstream, 1), client.submit(echo, [upstream])]
    sent(*dependents)
    release(path)
    for future in (upstream, *dependents):
        error = future.exception(SLACK)
        assert isinstance(error, ValueError) and str(error) == "root", future.history
    late = client.submit(add, upstream, 1)  # submitted after it failed
    assert isinstance(late.exception(SLACK), ValueError)


def test_an_upstream_cancel_cancels_its_dependents(
    cluster: Cluster, client: Client, gates: Callable[[], str]
) -> None:
    _needs_futures_as_arguments(cluster, client)
    upstream, _ = running_upstream(client, gates, hold, 1)
    dependents = [client.submit(add, upstream, 1), client.submit(echo, {"x": upstream})]
    sent(*dependents)
    assert upstream.cancel(timeout=cluster.running_cancel + SLACK) is True
    for future in dependents:
        wait_for(future.done, "a dependent to end", cluster.running_cancel + SLACK)
        assert future.cancelled(), future.history
    late = client.submit(add, upstream, 1)  # submitted after it was cancelled
    assert late.cancelled()


def test_a_dependents_cancel_leaves_a_shared_upstream_running(
    cluster: Cluster, client: Client, gates: Callable[[], str]
) -> None:
    _needs_futures_as_arguments(cluster, client)
    upstream, path = running_upstream(client, gates, hold, 5)
    first, second = client.submit(add, upstream, 1), client.submit(add, upstream, 2)
    sent(first, second)
    assert first.cancel() is True
    assert first.cancel_outcome is CancelOutcome.CONFIRMED
    assert not upstream.done() and not second.done()
    release(path)
    assert upstream.result(SLACK) == 5
    assert second.result(SLACK) == 7


def test_a_future_of_another_client_is_refused(cluster: Cluster, client: Client) -> None:
    if not cluster.second_cluster:
        pytest.skip("one client per process here (Ray: one driver)")
    with cluster.client() as other:
        foreign = other.submit(add, 1, 1)
        with pytest.raises(ValueError, match="belongs to another client"):
            client.submit(add, foreign, 1)
        assert foreign.result(SLACK) == 2


# ---------------------------------------------------------------------- the Executor API


def test_callbacks_and_waiters_are_told_exactly_once(
    client: Client, gates: Callable[[], str]
) -> None:
    calls: dict[str, list[bool]] = {"done": [], "failed": [], "cancelled": []}
    all_called = threading.Semaphore(0)

    def callback(name: str) -> Callable[[Any], None]:
        def called(_: Any) -> None:
            calls[name].append(client.engine.on_io_thread())
            all_called.release()

        return called

    path = gates()
    futures = {
        "done": client.submit(add, 20, 22),
        "failed": client.submit(boom, "x"),
        "cancelled": client.submit(hold, path),
    }
    for name, future in futures.items():
        future.add_done_callback(callback(name))
    wait_for(lambda: started(path), "the held task to start")
    assert futures["cancelled"].cancel() is True
    with cf.ThreadPoolExecutor(1) as pool:
        mixed = [*futures.values(), pool.submit(pow, 2, 3)]
        assert not cf.wait(mixed, timeout=SLACK).not_done
        assert len(list(cf.as_completed(mixed, timeout=SLACK))) == 4
    for _ in futures:
        assert all_called.acquire(timeout=SLACK)
    assert {name: len(called) for name, called in calls.items()} == dict.fromkeys(calls, 1)
    # On a terminal future a new callback runs at once, in the caller's thread.
    late: list[bool] = []
    futures["done"].add_done_callback(lambda _: late.append(client.engine.on_io_thread()))
    assert late == [False]
    assert {name: len(called) for name, called in calls.items()} == dict.fromkeys(calls, 1)

    async def main() -> Any:
        return await client.submit(add, "a", "b")

    assert asyncio.run(main()) == "ab"


def test_a_callback_may_submit_and_cancel(client: Client, gates: Callable[[], str]) -> None:
    chained: cf.Future[Any] = cf.Future()
    path = gates()

    def callback(finished: Any) -> None:
        held = client.submit(hold, path)
        held.cancel(wait=False)  # on the delivering thread: never blocks
        follow = client.submit(add, finished.result(), 1)
        follow.add_done_callback(lambda f: chained.set_result((f.result(), held)))

    client.submit(add, 1, 1).add_done_callback(callback)
    value, held = chained.result(SLACK)
    assert value == 3
    wait_for(held.done, "the cancel made in a callback")
    assert held.cancelled()


def test_stats_account_for_every_future(cluster: Cluster, gates: Callable[[], str]) -> None:
    with cluster.client() as own:
        own.submit(add, 1, 1).result(SLACK)
        own.submit(boom, "x").exception(SLACK)
        busy = fill_workers(own, gates)
        queued = own.submit(hold, gates())
        sent(queued)
        assert queued.cancel() is True
        for future, held in busy:
            release(held)
            future.result(SLACK)
        # Counted on the delivering thread just after result() woke: wait for it.
        wait_for(lambda: own.stats()["in_flight"] == 0, "every future counted")
        stats = own.stats()
    assert stats["submitted"] == 5
    assert stats["completed"] == 3
    assert stats["failed"] == 1
    assert stats["cancelled"]["confirmed"] == 1
    assert sum(stats["cancelled"].values()) == 1
    assert stats["io_errors"] == 0 and stats["protocol_errors"] == 0


# ---------------------------------------------------------------------- connection


def test_an_address_where_nothing_answers_is_a_connection_error_in_time(
    cluster: Cluster,
) -> None:
    address = free_address()
    timeout = 1.0
    begun = time.monotonic()
    with pytest.raises(ConnectionError, match=address):
        own = Client(address, engine=cluster.engine, connection_timeout=timeout)
        try:  # an engine that connects lazily fails the futures instead
            own.submit(add, 1, 1).result(timeout + SLACK)
        finally:
            own.close()
    took = time.monotonic() - begun
    assert took < timeout + 1.0, f"{took:.2f} s for connection_timeout={timeout}"


def test_a_lost_scheduler_resolves_every_future(cluster: Cluster) -> None:
    if not cluster.second_cluster:
        pytest.skip(f"{cluster.engine}: one cluster per process (its own test module runs it)")
    path = f"/tmp/futurefsm-conformance-{uuid.uuid4().hex}"
    with CLUSTERS[cluster.engine]() as doomed:  # its own cluster: this one is stopped
        own = doomed.client(connection_timeout=2.0, heartbeat_interval=0.2)
        running = own.submit(hold, path, None, 30)
        cancelling = own.submit(hold, path + "-2", None, 30)
        wait_for(lambda: started(path), "the task to start")
        sent(cancelling)
        assert cancelling.cancel(wait=False, force=False) is True
    try:
        # (The cluster's own shutdown may take a while; the futures end within it.)
        assert not cf.wait([running, cancelling], 2.0 + SLACK).not_done
        assert isinstance(running.exception(0), ConnectionLostError)
        assert cancelling.cancelled() or isinstance(cancelling.exception(0), ConnectionError)
        if cancelling.cancelled():
            assert cancelling.cancel_outcome in (
                CancelOutcome.CONNECTION_LOST,
                CancelOutcome.CONFIRMED,
            ), cancelling.history
    finally:
        own.close()
        release(path)
        release(path + "-2")


# ---------------------------------------------------------------------- race suite


_ALLOWED = {
    CancelOutcome.CONFIRMED,
    CancelOutcome.NOT_FOUND,
    CancelOutcome.RESULT_RACED,
    CancelOutcome.BEFORE_SEND,
    CancelOutcome.BY_SCHEDULER,
}
_PLANS = st.lists(
    st.tuples(
        st.sampled_from([0.0, 0.02, 0.1]),  # how long the task runs
        st.booleans(),  # whether it fails
        st.one_of(
            st.none(),
            st.tuples(
                st.sampled_from([0.0, 0.01, 0.05, 0.15]),  # when it is cancelled
                st.sampled_from(["wait", "nowait", "bulk"]),
            ),
        ),
    ),
    min_size=1,
    max_size=5,
)


def _check_history(future: Any) -> None:
    """Every step of the future's history is a cell of the table, chained, ending in a
    terminal state."""
    history = future.history
    state = FutureState.PENDING
    for _, trigger, source, dest in history:
        assert source is state, history
        assert TRANSITION_TABLE[(source, trigger)].dest is dest, history
        state = dest
    assert state is future.state and state in TERMINAL_STATES, history


# A twentieth of the profile's examples (5 in CI): real clusters are slow.
@settings(max_examples=max(3, settings.default.max_examples // 20), deadline=None)
@given(plans=_PLANS, graph=st.booleans())
def test_race_generated_cancel_timings_against_real_tasks(
    client: Client, cluster: Cluster, plans: list[Any], graph: bool
) -> None:
    told: dict[int, int] = {}
    lock = threading.Lock()

    def count(future: Any) -> None:
        with lock:
            told[id(future)] = told.get(id(future), 0) + 1

    if graph:  # independent members, cancelled together
        tasks = {f"k{n}": (work, seconds, fails, n) for n, (seconds, fails, _) in enumerate(plans)}
        futures = list(client.submit_graph(tasks).values())
    else:
        futures = [client.submit(work, s, f, n) for n, (s, f, _) in enumerate(plans)]
    for future in futures:
        future.add_done_callback(count)
    begun = time.monotonic()
    bulk = []
    for future, (_, _, cancel) in sorted(
        zip(futures, plans, strict=True), key=lambda pair: pair[1][2][0] if pair[1][2] else 0
    ):
        if cancel is None:
            continue
        at, how = cancel
        time.sleep(max(0.0, begun + at - time.monotonic()))  # the generated timing
        if how == "wait":
            future.cancel()
        elif how == "nowait":
            future.cancel(wait=False)
        else:
            bulk.append(future)
    if bulk:
        client.cancel(bulk)
    bound = CANCEL_TIMEOUT + cluster.running_cancel + SLACK
    assert not cf.wait(futures, bound).not_done
    wait_for(lambda: len(told) == len(futures), "every callback")
    for n, (future, (_, fails, _)) in enumerate(zip(futures, plans, strict=True)):
        note(f"{n}: {future.history}")
        _check_history(future)
        assert told[id(future)] == 1
        if future.state is FutureState.CANCELLED:
            assert future.cancelled() and future.cancel_outcome in _ALLOWED
            with pytest.raises(cf.CancelledError):
                future.result(0)
        elif fails:
            assert isinstance(future.exception(0), ValueError)
        elif graph and future.exception(0) is not None:
            # Scaler aborts a whole graph when one member fails: every member still
            # running or waiting gets that failure. A failure is a failing member's.
            error = future.exception(0)
            failing = {index for index, plan in enumerate(plans) if plan[1]}
            assert isinstance(error, ValueError) and error.args[0] in failing, error
        else:
            assert future.result(0) == n
