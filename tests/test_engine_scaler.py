"""The Scaler engine against a real local Scaler cluster (``SchedulerClusterCombo``,
2 workers, started once for the module): everything ``Client`` does, the mapping of
Scaler's messages to the table's triggers, the private attributes it relies on, and
an end-to-end race suite with generated cancel timings against real tasks.

Tasks coordinate with the test through files (workers are other processes): a task
``hold(path)`` marks ``path.started`` and runs until ``path.release`` appears (polling
with a deadline), so a test knows a task is running, or queued behind running ones,
without sleeping.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import re
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, note, settings
from hypothesis import strategies as st

scaler = pytest.importorskip(
    "scaler", reason="opengris-scaler is not installed (futurefsm[scaler])"
)
cloudpickle = pytest.importorskip("cloudpickle")

from futurefsm import Client, ConnectionLostError  # noqa: E402
from futurefsm.engines import get_engine  # noqa: E402
from futurefsm.engines.scaler import (  # noqa: E402
    PRIVATE_ATTRIBUTES,
    SUPPORTED_VERSIONS,
    ScalerEngine,
    _ScalerWorkerDiedError,
    check_private_attributes,
)
from futurefsm.errors import RemoteTraceback, WorkerDiedError  # noqa: E402
from futurefsm.fsm import TERMINAL_STATES, CancelOutcome, FutureState  # noqa: E402
from futurefsm.testing.budget import examples  # noqa: E402
from futurefsm.testing.harness import FutureSnapshot  # noqa: E402
from futurefsm.testing.invariants import check_snapshot, describe_future  # noqa: E402

# Workers need not import this module: its task functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

RUNNING_CANCEL = 3.0
"""Scaler kills a running task's process: SIGTERM, up to 3 s grace, then SIGKILL."""
SLACK = 5.0
"""Scheduling slack on a loaded 2-core runner, added to every time bound."""


# ---------------------------------------------------------------------- task functions


def add(a: Any, b: Any) -> Any:
    return a + b


def boom(message: str) -> None:
    raise ValueError(message)


def die() -> None:
    os._exit(3)


def hold(path: str, limit: float = 60.0) -> str:
    """Mark ``path.started``, run until ``path.release`` exists (or ``limit``), then
    mark ``path.finished``."""
    Path(path + ".started").write_text(repr(time.time()))
    deadline = time.monotonic() + limit
    while not os.path.exists(path + ".release") and time.monotonic() < deadline:
        time.sleep(0.005)
    Path(path + ".finished").write_text(repr(time.time()))
    return path


def release(path: str) -> None:
    """Let ``hold(path)`` finish."""
    Path(path + ".release").touch()


def work(path: str, seconds: float, fails: bool) -> str:
    """Record the wall time it started at, run ``seconds``, then return or raise."""
    Path(path + ".started").write_text(repr(time.time()))
    time.sleep(seconds)
    if fails:
        raise ValueError(path)
    return path


# ---------------------------------------------------------------------- fixtures


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def _answering(combo: Any) -> Any:
    """``combo`` once its scheduler answers a client: one with Scaler's own 60 s
    heartbeat timeout connects and leaves. A client whose timeout is futurefsm's
    ``connection_timeout`` (a few seconds) gives up on a scheduler still booting,
    which on a loaded 2-core runner can take longer than that (seen: "cannot
    connect ... CancelledError", 1 run in 7 under load)."""
    probe = scaler.Client(combo.get_address())
    probe.disconnect()
    return combo


@pytest.fixture(scope="module")
def cluster() -> Any:
    combo = scaler.SchedulerClusterCombo(n_workers=2, logging_level="WARNING")
    try:
        yield _answering(combo)
    finally:
        combo.shutdown()


@pytest.fixture(scope="module")
def client(cluster: Any) -> Any:
    shared = Client(cluster.get_address(), engine="scaler", cancel_timeout=15)
    yield shared
    # close(), not shutdown(wait=True): bounded by cancel_timeout even if a test left
    # a future running; and such a future is reported, not waited for.
    live = [repr(future) for future in shared.futures.values()]
    shared.close()
    assert not live, f"futures left in flight by the tests: {live}"


@pytest.fixture
def gates(tmp_path: Path) -> Any:
    """``gates.new()`` -> a path for ``hold``; every hold still running is released at
    the end of the test."""

    class Gates:
        made: list[str] = []

        def new(self) -> str:
            path = str(tmp_path / uuid.uuid4().hex)
            self.made.append(path)
            return path

    made = Gates()
    yield made
    for path in made.made:
        Path(path + ".release").touch()


def _started(path: str) -> bool:
    return os.path.exists(path + ".started")


def _fill_workers(client: Client, gates: Any) -> list[Any]:
    """Two held tasks, both running (one per worker)."""
    paths = [gates.new(), gates.new()]
    futures = [client.submit(hold, path) for path in paths]
    _wait_for(lambda: all(_started(path) for path in paths), 30, "both workers busy")
    return [(future, path) for future, path in zip(futures, paths, strict=True)]


# ---------------------------------------------------------------------- the seam


def test_scaler_is_an_engine_of_the_seam(client: Client) -> None:
    assert get_engine("scaler") is ScalerEngine
    assert not ScalerEngine.__abstractmethods__
    assert isinstance(client.engine, ScalerEngine)
    with pytest.raises(ValueError, match="running Scaler scheduler"):
        Client(engine="scaler")


def test_private_attributes_are_there_and_a_missing_one_is_named(client: Client) -> None:
    scaler_client = client.engine.scaler_client  # type: ignore[attr-defined]
    check_private_attributes(scaler_client)

    class Moved:
        """A scaler Client from a release that renamed one private attribute."""

        def __getattr__(self, name: str) -> Any:
            if name == "_object_buffer":
                raise AttributeError(name)
            return getattr(scaler_client, name)

    with pytest.raises(RuntimeError) as error:
        check_private_attributes(Moved())
    message = str(error.value)
    assert "scaler.Client._object_buffer" in message
    assert SUPPORTED_VERSIONS in message
    assert {dotted for dotted, _ in PRIVATE_ATTRIBUTES} >= {"_future_manager", "_object_buffer"}


def test_the_scaler_extra_pins_the_supported_versions() -> None:
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    extra = re.search(r"^scaler = \[(.*?)\]", pyproject, re.MULTILINE | re.DOTALL)
    assert extra is not None, "pyproject.toml has no scaler extra"
    assert f'"opengris-scaler{SUPPORTED_VERSIONS}"' in extra.group(1)
    installed = tuple(int(part) for part in scaler.__version__.split(".")[:2])
    low, high = (
        tuple(int(part) for part in bound.split("."))
        for bound in re.findall(r"[\d.]+", SUPPORTED_VERSIONS)
    )
    assert low <= installed < high, (
        f"opengris-scaler {scaler.__version__} is outside {SUPPORTED_VERSIONS}: check "
        "PRIVATE_ATTRIBUTES against it and move the pin"
    )


# ---------------------------------------------------------------------- submitting


def test_submit_map_and_keyword_arguments(client: Client) -> None:
    assert client.submit(add, 2, b=3).result(timeout=30) == 5
    assert client.submit(abs, -7).result(timeout=30) == 7  # a builtin: no signature needed
    assert list(client.map(add, [1, 2, 3], [10, 20, 30], timeout=30)) == [11, 22, 33]
    values = [client.submit(add, i, i) for i in range(50)]
    assert [future.result(timeout=30) for future in values] == [2 * i for i in range(50)]


def test_what_cannot_be_serialized_is_named_and_nothing_is_sent(client: Client) -> None:
    before = client.stats()["submitted"]
    with pytest.raises(TypeError, match="argument 1"):
        client.submit(add, 1, threading.Lock())
    with pytest.raises(TypeError, match="callable"):
        client.submit(42)  # type: ignore[arg-type]
    assert client.stats()["submitted"] == before


def test_a_remote_exception_carries_its_remote_traceback(client: Client) -> None:
    future = client.submit(boom, "no luck")
    error = future.exception(timeout=30)
    assert isinstance(error, ValueError)
    assert str(error) == "no luck"
    assert isinstance(error.__cause__, RemoteTraceback)
    assert "in boom" in error.__cause__.tb
    assert "ValueError: no luck" in error.__cause__.tb


def test_a_task_whose_process_dies_is_worker_died(client: Client) -> None:
    error = client.submit(die).exception(timeout=60)
    assert isinstance(error, WorkerDiedError)
    assert isinstance(error, scaler.utility.exceptions.WorkerDiedError)
    assert isinstance(error, _ScalerWorkerDiedError)
    assert "died" in str(error)


def test_graph_members_pass_results_in_the_cluster(client: Client) -> None:
    graph = {
        "a": (add, 1, 2),
        "b": (add, "a", 10),
        "c": 100,
        "d": (sum, ["a", "b", "c"]),
        "e": (add, ["a"], [["c"]]),
    }
    futures = client.submit_graph(graph)
    assert {key: future.result(timeout=30) for key, future in futures.items()} == {
        "a": 3,
        "b": 13,
        "c": 100,
        "d": 116,
        "e": [3, [100]],
    }
    assert len({future.group_id for future in futures.values()}) == 1
    only = client.submit_graph({"x": (add, 1, 1), "y": (add, "x", 1)}, keys=["y"])
    assert list(only) == ["y"]
    assert only["y"].result(timeout=30) == 3


def test_a_failed_member_fails_its_dependents(client: Client) -> None:
    futures = client.submit_graph({"a": (boom, "root"), "b": (add, "a", 1)})
    for future in futures.values():
        error = future.exception(timeout=30)
        assert isinstance(error, ValueError) and str(error) == "root"


# ---------------------------------------------------------------------- cancelling


def test_cancel_of_a_queued_task_is_confirmed_and_it_never_runs(client: Client, gates: Any) -> None:
    busy = _fill_workers(client, gates)
    path = gates.new()
    queued = client.submit(hold, path)
    # A deadline, not a measured time: an answer later than this is TIMED_OUT.
    assert queued.cancel(timeout=1.0 + SLACK) is True
    assert queued.cancel_outcome is CancelOutcome.CONFIRMED
    assert queued.cancelled()
    # wait=False, then cancelled() waits for the answer.
    other = client.submit(hold, gates.new())
    assert other.cancel(wait=False) is True
    assert other.cancelled() is True
    assert other.cancel_outcome is CancelOutcome.CONFIRMED
    for future, held in busy:
        Path(held + ".release").touch()
        assert future.result(timeout=30) == held
    assert not _started(path)


def test_cancel_of_a_running_task_kills_it(client: Client, gates: Any) -> None:
    path = gates.new()
    future = client.submit(hold, path)
    _wait_for(lambda: _started(path), 30, "the task to start")
    assert future.cancel(timeout=RUNNING_CANCEL + SLACK) is True
    assert future.cancel_outcome is CancelOutcome.CONFIRMED  # (late: TIMED_OUT)
    Path(path + ".release").touch()  # a task still alive would finish now
    assert client.submit(add, 0, 0).result(timeout=30) == 0  # its worker is back
    assert not os.path.exists(path + ".finished")


def test_bulk_cancel_and_a_refused_non_forced_cancel(client: Client, gates: Any) -> None:
    busy = _fill_workers(client, gates)
    queued = [client.submit(hold, gates.new()) for _ in range(5)]
    assert client.cancel(queued) == [True] * 5
    assert {future.cancel_outcome for future in queued} == {CancelOutcome.CONFIRMED}
    # force=False on a running task: Scaler refuses and says nothing; the result,
    # when it comes, is delivered as the refusal it proves.
    running, held = busy[0]
    release(busy[1][1])
    assert busy[1][0].result(timeout=30) == busy[1][1]
    assert running.cancel(wait=False, force=False) is True
    assert running.state is FutureState.CANCEL_REQUESTED
    # The task may finish only once its worker has refused: a result that reaches
    # Scaler's scheduler while the cancel is on its way to the worker is dropped, and
    # the worker then answers cancelNotFound (NOT_FOUND; seen 1 in 30 when the test
    # released it itself). So a task on the other worker releases it, sent after the
    # TaskCancel on the same connection: the scheduler forwards the cancel before it
    # dispatches that task.
    releaser = client.submit(release, held)
    assert running.result(timeout=30) == held
    assert releaser.result(timeout=30) is None
    assert running.cancel_outcome is CancelOutcome.FAILED
    assert running.cancelled() is False


def test_cancelling_one_member_cancels_the_whole_graph_promptly(client: Client, gates: Any) -> None:
    path = gates.new()
    futures = client.submit_graph(
        {"a": (hold, path), "b": (add, "a", "!"), "c": (add, "b", "?"), "d": (add, "x", 1), "x": 1}
    )
    _wait_for(lambda: _started(path), 30, "the graph's first task to start")
    assert futures["c"].cancel(timeout=RUNNING_CANCEL + SLACK) is True  # (late: TIMED_OUT)
    for key in "abc":
        # d and x may have finished before the cancel; a, b, c cannot have.
        _wait_for(lambda key=key: futures[key].done(), SLACK, f"member {key} to end")
        assert futures[key].cancelled(), key
    assert futures["c"].cancel_outcome is CancelOutcome.CONFIRMED
    for key in "dx":  # finished, or cancelled with the graph: never left running
        _wait_for(futures[key].done, RUNNING_CANCEL + SLACK, f"member {key} to end")
    # Cancelled the moment it was sent: Scaler may get the cancel before the graph.
    right_away = client.submit_graph({"a": (hold, gates.new()), "b": (add, "a", 1)})
    assert right_away["a"].cancel() is True
    _wait_for(lambda: right_away["b"].done(), SLACK, "the dependent to end")
    assert right_away["b"].cancelled()


def _as_if_the_scheduler_said(client: Client, confirm: Any) -> None:
    """Feed ``confirm`` to Scaler's agent as if its scheduler had sent it."""
    scaler_client = client.engine.scaler_client  # type: ignore[attr-defined]
    task_manager = scaler_client._bridge._agent._task_manager
    scaler_client._bridge.run_in_agent(task_manager.on_task_cancel_confirm(confirm)).result(10)


def test_a_refused_cancel_still_gets_its_result(client: Client, gates: Any) -> None:
    # Scaler 2.9's scheduler absorbs cancelFailed; if one ever reaches the client, the
    # agent forgets the task, and its result would be dropped: the engine keeps it.
    from scaler.protocol.capnp import TaskCancelConfirm, TaskCancelConfirmType

    path = gates.new()
    future = client.submit(hold, path)
    _wait_for(lambda: _started(path), 30, "the task to start")
    assert future.cancel(wait=False, force=False) is True
    refused = TaskCancelConfirm(
        taskId=future.task_id, cancelConfirmType=TaskCancelConfirmType.cancelFailed
    )
    _as_if_the_scheduler_said(client, refused)
    _wait_for(lambda: future.state is FutureState.RUNNING, SLACK, "the refusal")
    assert future.cancel_outcome is CancelOutcome.FAILED
    # The real non-forced TaskCancel may still be on its way to the worker (the refusal
    # above is ours): a result reaching the scheduler meanwhile is dropped, and the
    # worker's cancelNotFound is stale for a running future, which then waited for
    # nothing (seen under load). So a task on the other worker, sent after the cancel
    # on the same connection, releases it.
    releaser = client.submit(release, path)
    assert future.result(timeout=30) == path
    assert releaser.result(timeout=30) is None


def test_a_graph_cancel_that_beat_its_graph_is_sent_again(client: Client, gates: Any) -> None:
    # Scaler registers a GraphTask after queueing it: a TaskCancel in between is
    # answered cancelNotFound for the graph, and the graph would run on.
    from scaler.protocol.capnp import TaskCancelConfirm, TaskCancelConfirmType

    path = gates.new()
    futures = client.submit_graph({"a": (hold, path), "b": (add, "a", "!")})
    _wait_for(lambda: _started(path), 30, "the graph to start")
    group_id = futures["a"].group_id
    not_found = TaskCancelConfirm(
        taskId=group_id, cancelConfirmType=TaskCancelConfirmType.cancelNotFound
    )
    _as_if_the_scheduler_said(client, not_found)
    for key, future in futures.items():
        _wait_for(future.done, RUNNING_CANCEL + SLACK, f"member {key} to end")
        assert future.cancel_outcome is CancelOutcome.BY_SCHEDULER, key
    assert not os.path.exists(path + ".finished")


# ---------------------------------------------------------------------- the Executor API


def test_await_callbacks_and_wait_mix_with_stdlib_futures(client: Client) -> None:
    called: list[Any] = []
    done = threading.Event()
    future = client.submit(add, 20, 22)

    def callback(finished: Any) -> None:
        called.append((finished.result(), client.engine.on_io_thread()))
        done.set()

    future.add_done_callback(callback)

    async def main() -> Any:
        return await client.submit(add, "a", "b")

    assert asyncio.run(main()) == "ab"
    assert done.wait(30)
    assert called == [(42, True)]
    with cf.ThreadPoolExecutor(1) as pool:
        mixed = [client.submit(add, 1, 1), pool.submit(pow, 2, 3)]
        finished, _ = cf.wait(mixed, timeout=30)
    assert {f.result() for f in finished} == {2, 8}


def test_a_callback_may_submit_and_cancel(client: Client) -> None:
    chained: cf.Future[Any] = cf.Future()

    def callback(finished: Any) -> None:
        follow = client.submit(add, finished.result(), [object().__class__.__name__])
        follow.add_done_callback(lambda f: chained.set_result(f.result()))

    client.submit(add, ["x"], ["y"]).add_done_callback(callback)
    assert chained.result(timeout=30) == ["x", "y", "object"]


def test_stats_account_for_every_future(cluster: Any, gates: Any) -> None:
    with Client(cluster.get_address(), engine="scaler") as own:
        own.submit(add, 1, 1).result(timeout=30)
        own.submit(boom, "x").exception(timeout=30)
        busy = _fill_workers(own, gates)
        queued = own.submit(hold, gates.new())
        assert queued.cancel() is True
        for future, held in busy:
            Path(held + ".release").touch()
            future.result(timeout=30)
        # Counted by the delivery thread just after waking result(): wait for it.
        _wait_for(lambda: own.stats()["in_flight"] == 0, SLACK, "every future counted")
        stats = own.stats()
    assert stats["submitted"] == 5
    assert stats["completed"] == 3
    assert stats["failed"] == 1
    assert stats["cancelled"]["confirmed"] == 1
    assert stats["in_flight"] == 0
    assert stats["io_errors"] == 0


def test_close_cancels_what_is_outstanding(cluster: Any, gates: Any) -> None:
    own = Client(cluster.get_address(), engine="scaler", cancel_timeout=15)
    done = own.submit(add, 1, 2)
    assert done.result(timeout=30) == 3
    busy = _fill_workers(own, gates)
    queued = [own.submit(hold, gates.new()) for _ in range(3)]
    started = time.monotonic()
    own.close()
    assert time.monotonic() - started < RUNNING_CANCEL + SLACK
    assert all(future.cancelled() for future, _ in busy)
    assert all(future.cancelled() for future in queued)
    assert done.result() == 3
    with pytest.raises(RuntimeError, match="shutdown"):
        own.submit(add, 1, 1)


def test_an_existing_scaler_client_keeps_its_own_futures(cluster: Any) -> None:
    scaler_client = scaler.Client(cluster.get_address())
    try:
        engine = ScalerEngine(scaler_client)
        with Client(engine=engine) as ours:
            theirs = scaler_client.submit(add, 1, 2)
            mine = ours.submit(add, 3, 4)
            assert mine.result(timeout=30) == 7
            assert theirs.result(timeout=30) == 3
        # Closing the engine hands the Scaler client back, still connected.
        assert scaler_client.submit(add, 5, 6).result(timeout=30) == 11
    finally:
        scaler_client.disconnect()


def test_a_lost_scheduler_resolves_every_future() -> None:
    # Its own cluster: this one is killed.
    doomed = scaler.SchedulerClusterCombo(n_workers=1, logging_level="WARNING")
    try:
        own = Client(_answering(doomed).get_address(), engine="scaler", connection_timeout=2)
        path = f"/tmp/futurefsm-scaler-{uuid.uuid4().hex}"
        future = own.submit(hold, path, 30)
        _wait_for(lambda: _started(path), 30, "the task to start")
    finally:
        started = time.monotonic()
        doomed.shutdown()
    error = future.exception(timeout=2 + SLACK)
    assert isinstance(error, ConnectionLostError)
    # When it was resolved, not when shutdown() returned: Scaler's shutdown alone
    # took 4-5 s under load (it waits for every process of the cluster).
    lost_after = future.history[-1][0] - started
    assert lost_after < 2 + SLACK, f"resolved {lost_after:.2f} s after the shutdown began"
    own.close()
    Path(path + ".release").touch()


# ---------------------------------------------------------------------- race suite


RACE_CANCEL_TIMEOUT = 8.0  # a running task's cancel takes ~3 s on Scaler
RACE_CONNECTION_TIMEOUT = 5.0
_TERMINAL_WITHIN = RACE_CANCEL_TIMEOUT + RACE_CONNECTION_TIMEOUT + SLACK
_ALLOWED = {
    CancelOutcome.CONFIRMED,
    CancelOutcome.NOT_FOUND,
    CancelOutcome.RESULT_RACED,
    CancelOutcome.BEFORE_SEND,
    CancelOutcome.BY_SCHEDULER,
}
_plans = st.lists(
    st.tuples(
        st.sampled_from([0.0, 0.02, 0.1, 0.3]),  # how long the task runs
        st.booleans(),  # whether it fails
        st.one_of(
            st.none(),
            st.tuples(
                st.sampled_from([0.0, 0.01, 0.05, 0.15, 0.4]),  # when it is cancelled
                st.sampled_from(["wait", "nowait", "bulk"]),
            ),
        ),
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=examples(0.08, minimum=4))
@given(
    plans=_plans,
    graph=st.booleans(),
    graph_cancel=st.sampled_from([None, 0.0, 0.05, 0.2]),
    close_at=st.sampled_from([None, None, 0.02, 0.2]),
    long_task=st.sampled_from([None, None, None, "wait", "nowait", "bulk"]),
)
def test_race_generated_cancel_timings_against_real_tasks(
    cluster: Any,
    tmp_path_factory: Any,
    plans: list[Any],
    graph: bool,
    graph_cancel: Any,
    close_at: float | None,
    long_task: str | None,
) -> None:
    base = tmp_path_factory.mktemp("race")
    own = Client(
        cluster.get_address(),
        engine="scaler",
        cancel_timeout=RACE_CANCEL_TIMEOUT,
        connection_timeout=RACE_CONNECTION_TIMEOUT,
    )
    if long_task is not None:  # a few running tasks are cancelled too (~3 s each)
        plans = [(2.0, False, (0.3, long_task)), *plans]
    calls: dict[int, list[float]] = {}
    futures: list[tuple[Any, str, bool, Any]] = []
    try:
        for number, (seconds, fails, cancel) in enumerate(plans):
            path = str(base / f"t{number}")
            future = own.submit(work, path, seconds, fails)
            calls[id(future)] = []
            future.add_done_callback(lambda f: calls[id(f)].append(time.time()))
            futures.append((future, path, fails, cancel))
        if graph:
            members = own.submit_graph(
                {"g0": (work, str(base / "g0"), 0.1, False), "g1": (add, "g0", "+")}
            )
            for key, future in members.items():
                calls[id(future)] = []
                future.add_done_callback(lambda f: calls[id(f)].append(time.time()))
                futures.append((future, str(base / key), False, None))
            if graph_cancel is not None:
                futures[-1] = (members["g1"], str(base / "g1"), False, (graph_cancel, "nowait"))
        started = time.monotonic()
        waiting: list[cf.Future[Any]] = []
        bulk: list[Any] = []
        actions = [(item[3][0], item[3][1], item[0]) for item in futures if item[3] is not None]
        if close_at is not None:
            actions.append((close_at, "close", None))
        with cf.ThreadPoolExecutor(4) as pool:
            for delay, mode, future in sorted(actions, key=lambda action: action[0]):
                # Timing is what is generated here, not synchronisation.
                time.sleep(max(0.0, started + delay - time.monotonic()))
                if mode == "close":
                    waiting.append(pool.submit(own.close))
                elif mode == "wait":
                    waiting.append(pool.submit(future.cancel))
                elif mode == "nowait":
                    future.cancel(wait=False)
                else:
                    bulk.append(future)
            if bulk:
                own.cancel(bulk, wait=False)
            last_action = time.monotonic()
            for answer in waiting:
                answer.result(timeout=_TERMINAL_WITHIN)
        for future, _, _, _ in futures:
            remaining = last_action + _TERMINAL_WITHIN - time.monotonic()
            cf.wait([future], timeout=max(0.0, remaining))
            assert future.state in TERMINAL_STATES, describe_future("future", _Seen(future), None)
        # Waiters wake as a future turns terminal; its callbacks run and the client
        # lets go of it just after, on the delivery thread: wait for the last of them.
        _wait_for(lambda: not own.futures, SLACK, "the client to let go of every future")
        for number, (future, path, fails, _) in enumerate(futures):
            name = f"future {number} ({Path(path).name})"
            note(describe_future(name, _Seen(future), None))
            check_snapshot(name, _snapshot(future, own))
            assert len(calls[id(future)]) == 1, f"{name}: callbacks ran {calls[id(future)]}"
            event(f"{future.state.value} {future.cancel_outcome}")
            if future.state is FutureState.CANCELLED:
                assert future.cancel_outcome in _ALLOWED, f"{name}: {future.cancel_outcome}"
                # A task the user was told is cancelled does not start afterwards.
                marker = Path(path + ".started")
                if marker.exists() and future.cancel_outcome is not CancelOutcome.RESULT_RACED:
                    assert float(marker.read_text()) <= calls[id(future)][0], name
            elif Path(path).name.startswith("g1"):
                assert future.result() == str(base / "g0") + "+"
            elif fails:
                assert isinstance(future.exception(), ValueError), name
            else:
                assert future.result() == path, name
        stats = own.stats()
        assert stats["io_errors"] == 0 and stats["protocol_errors"] == 0
    finally:
        own.close()
    assert all(future.done() for future, _, _, _ in futures)


class _Seen:
    """Enough of ``FutureUnderTest`` for ``describe_future``."""

    def __init__(self, future: Any) -> None:
        self.future = future
        self.task_id = future.task_id

    def snapshot(self) -> FutureSnapshot:
        return _snapshot(self.future, None)

    def cancels_sent(self) -> int:
        return -1


def _snapshot(future: Any, client: Client | None) -> FutureSnapshot:
    registered = None if client is None else future.task_id in client.futures
    return FutureSnapshot.of_task_future(future, registered)
