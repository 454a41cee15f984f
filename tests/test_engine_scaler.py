"""What is Scaler's own, against a real local Scaler cluster (``SchedulerClusterCombo``,
2 workers, started once for the module): the private attributes the engine relies on,
what only Scaler does (a running task's process is killed, a graph cancel can beat its
graph, a refusal is absorbed by its scheduler). What every engine owes is in
``tests/test_conformance.py``.

Tasks coordinate with the test through files (workers are other processes): a task
``hold(path)`` marks ``path.started`` and runs until ``path.release`` appears (polling
with a deadline), so a test knows a task is running, or queued behind running ones,
without sleeping.
"""

from __future__ import annotations

import os
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

scaler = pytest.importorskip(
    "scaler", reason="opengris-scaler is not installed (futurefsm[scaler])"
)
cloudpickle = pytest.importorskip("cloudpickle")

from futurefsm import Client  # noqa: E402
from futurefsm.engines import get_engine  # noqa: E402
from futurefsm.engines.scaler import (  # noqa: E402
    PRIVATE_ATTRIBUTES,
    SUPPORTED_VERSIONS,
    ScalerEngine,
    _ScalerWorkerDiedError,
    check_private_attributes,
)
from futurefsm.errors import WorkerDiedError  # noqa: E402
from futurefsm.fsm import CancelOutcome, FutureState  # noqa: E402

# Workers need not import this module: its task functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

RUNNING_CANCEL = 3.0
"""Scaler kills a running task's process: SIGTERM, up to 3 s grace, then SIGKILL."""
SLACK = 5.0
"""Scheduling slack on a loaded 2-core runner, added to every time bound."""


# ---------------------------------------------------------------------- task functions


def add(a: Any, b: Any) -> Any:
    return a + b


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
    # Every future was forgotten: the engine keeps no result or dependent record.
    engine = shared.engine
    assert isinstance(engine, ScalerEngine)
    assert (engine._results, engine._dependents) == ({}, {})


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


def test_a_task_whose_process_dies_is_worker_died(client: Client) -> None:
    error = client.submit(die).exception(timeout=60)
    assert isinstance(error, WorkerDiedError)
    assert isinstance(error, scaler.utility.exceptions.WorkerDiedError)
    assert isinstance(error, _ScalerWorkerDiedError)
    assert "died" in str(error)


# ---------------------------------------------------------------------- cancelling


def test_cancel_of_a_running_task_kills_it(client: Client, gates: Any) -> None:
    path = gates.new()
    future = client.submit(hold, path)
    _wait_for(lambda: _started(path), 30, "the task to start")
    assert future.cancel(timeout=RUNNING_CANCEL + SLACK) is True
    assert future.cancel_outcome is CancelOutcome.CONFIRMED  # (late: TIMED_OUT)
    Path(path + ".release").touch()  # a task still alive would finish now
    assert client.submit(add, 0, 0).result(timeout=30) == 0  # its worker is back
    assert not os.path.exists(path + ".finished")


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


# ---------------------------------------------------------------------- futures as arguments


def add_after(path: str, a: Any, b: Any) -> Any:
    """``hold(path)``, then ``a + b``."""
    hold(path)
    return a + b


def fail_after(path: str) -> None:
    hold(path)
    raise ValueError("root")


def _engine(client: Client) -> ScalerEngine:
    engine = client.engine
    assert isinstance(engine, ScalerEngine)
    return engine


def _phase(engine: ScalerEngine, task_id: bytes) -> str | None:
    """The engine's record of a task's result, for its dependents (None: none kept)."""
    record = engine._results.get(task_id)
    return None if record is None else record.phase.value


def _held(engine: ScalerEngine, task_id: bytes) -> bool:
    dependent = engine._dependents.get(task_id)
    return dependent is not None and dependent.phase.value == "held"


@pytest.fixture
def storage(cluster: Any) -> Any:
    """A connection of the test's own to the cluster's object storage server."""
    from scaler.io.ymq import IOContext
    from scaler.io.ymq_sync_object_storage_connector import YMQSyncObjectStorageConnector

    connector = YMQSyncObjectStorageConnector(
        IOContext(num_threads=1), b"futurefsm-test-probe", cluster._object_storage_address
    )
    yield connector
    connector.destroy()


def test_an_upstream_result_stays_in_the_storage_until_its_dependents_are_forgotten(
    client: Client, gates: Any, storage: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = _engine(client)
    deletes: list[tuple[Any, Any]] = []
    delete_soon = engine._delete_soon
    monkeypatch.setattr(
        engine,
        "_delete_soon",
        lambda oid: deletes.append((oid, delete_soon(oid))) or deletes[-1][1],
    )
    first, second = gates.new(), gates.new()
    upstream = client.submit(hold, first)
    _wait_for(lambda: _started(first), 30, "the upstream to start")
    dependent = client.submit(add_after, second, upstream, "!")
    assert _held(engine, dependent.task_id)  # not sent: Scaler cannot name the result yet
    release(first)
    assert upstream.result(timeout=30) == first
    # Sent once the upstream's TaskResult came in; it runs while the upstream is over.
    _wait_for(lambda: _started(second), 30, "the dependent to start")
    _wait_for(lambda: _phase(engine, upstream.task_id) == "lent", SLACK, "the upstream's end")
    object_id = engine._results[upstream.task_id].object_id
    kept = client.engine.scaler_client._serializer.deserialize(storage.get_object(object_id))
    assert kept == first  # still there, though its own future has its value
    assert not deletes
    release(second)
    assert dependent.result(timeout=30) == first + "!"
    _wait_for(lambda: deletes, SLACK, "the engine to delete the kept result")
    (deleted, done), *_ = deletes
    assert deleted == object_id
    done.result(timeout=SLACK)
    assert storage.delete_object(object_id) is False  # gone from the storage
    # A task nobody named keeps nothing: its result is deleted once fetched, as ever.
    plain = client.submit(add, 1, 2)
    assert plain.result(timeout=30) == 3
    assert _phase(engine, plain.task_id) is None


def test_a_held_dependents_cancel_is_answered_here_and_leaves_its_upstream(
    client: Client, gates: Any
) -> None:
    engine = _engine(client)
    path = gates.new()
    upstream = client.submit(hold, path)
    _wait_for(lambda: _started(path), 30, "the upstream to start")
    dependent = client.submit(add, upstream, "!")
    further = client.submit(add, dependent, "?")  # names a task that never left
    assert _held(engine, dependent.task_id) and _held(engine, further.task_id)
    assert dependent.cancel(timeout=SLACK) is True
    assert dependent.cancel_outcome is CancelOutcome.CONFIRMED
    _wait_for(further.done, SLACK, "the dependent's dependent to end")
    assert further.cancelled() and further.cancel_outcome is CancelOutcome.BY_SCHEDULER
    assert not upstream.done()
    release(path)
    assert upstream.result(timeout=30) == path
    _wait_for(lambda: _phase(engine, upstream.task_id) is None, SLACK, "the upstream's end")
    assert not engine._dependents


@pytest.mark.parametrize("end", ["fails", "is cancelled"])
def test_an_upstreams_end_reaches_a_chain_of_held_dependents(
    client: Client, gates: Any, end: str
) -> None:
    engine = _engine(client)
    path, never = gates.new(), gates.new()
    upstream = client.submit(fail_after, path)
    _wait_for(lambda: _started(path), 30, "the upstream to start")
    dependent = client.submit(add_after, never, upstream, 1)
    further = client.submit(add_after, never, [dependent], {"x": dependent})
    assert _held(engine, dependent.task_id) and _held(engine, further.task_id)
    if end == "fails":
        release(path)
        for future in (upstream, dependent, further):
            error = future.exception(timeout=30)
            assert isinstance(error, ValueError) and str(error) == "root", future.history
        assert dependent.exception(timeout=0) is not further.exception(timeout=0)
    else:
        assert upstream.cancel(timeout=RUNNING_CANCEL + SLACK) is True
        for future in (dependent, further):
            _wait_for(future.done, SLACK, "a dependent to end")
            assert future.cancel_outcome is CancelOutcome.BY_SCHEDULER, future.history
    assert not _started(never)  # neither dependent ran
    _wait_for(lambda: not engine._dependents, SLACK, "the dependents to be forgotten")


def test_an_upstream_fetched_meanwhile_is_put_in_its_place(
    client: Client, gates: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The upstream's TaskResult is in (its result fetched and deleted: nothing named
    # it) while its future is not done yet (the delivery thread is busy): the engine
    # cannot name it any more, and the client puts its value in place once delivered.
    import threading

    engine = _engine(client)
    answers: list[Any] = []
    prepare_dependent = engine.prepare_dependent
    monkeypatch.setattr(
        engine,
        "prepare_dependent",
        lambda *call: answers.append(prepare_dependent(*call)) or answers[-1],
    )
    path = gates.new()
    upstream = client.submit(hold, path)
    _wait_for(lambda: _started(path), 30, "the upstream to start")
    busy, free = threading.Event(), threading.Event()
    blocker = client.submit(add, 0, 0)
    blocker.add_done_callback(lambda _: (busy.set(), free.wait(60)))
    try:
        assert busy.wait(30), "the blocker's callback did not run"
        release(path)
        _wait_for(lambda: _phase(engine, upstream.task_id) is None, 30, "the upstream's result")
        assert not upstream.done()
        submitted: list[Any] = []
        submitting = threading.Thread(
            target=lambda: submitted.append(client.submit(add, upstream, "!"))
        )
        submitting.start()
        _wait_for(lambda: answers, SLACK, "the engine to be asked")
        assert answers[0] is None
    finally:
        free.set()
    submitting.join(timeout=SLACK)
    (dependent,) = submitted
    assert dependent.result(timeout=30) == path + "!"
    assert answers[-1] is not None


def test_a_lost_connection_ends_held_dependents(cluster: Any, gates: Any) -> None:
    from futurefsm import ConnectionLostError

    own = Client(cluster.get_address(), engine="scaler", cancel_timeout=15)
    try:
        path = gates.new()
        upstream = own.submit(hold, path)
        _wait_for(lambda: _started(path), 30, "the upstream to start")
        dependent = own.submit(add, upstream, 1)
        assert _held(_engine(own), dependent.task_id)
        _engine(own).scaler_client.disconnect()
        for future in (upstream, dependent):
            assert isinstance(future.exception(timeout=30), ConnectionLostError)
    finally:
        own.close()


def test_close_ends_held_dependents(cluster: Any, gates: Any) -> None:
    own = Client(cluster.get_address(), engine="scaler", cancel_timeout=15)
    path = gates.new()
    upstream = own.submit(hold, path)
    _wait_for(lambda: _started(path), 30, "the upstream to start")
    dependent = own.submit(add, upstream, 1)
    assert _held(_engine(own), dependent.task_id)
    own.close()
    assert dependent.cancelled() and dependent.cancel_outcome is CancelOutcome.CONFIRMED
    assert upstream.done()
