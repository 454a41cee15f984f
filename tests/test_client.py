"""Client against a real SchedulerStub over loopback ZeroMQ sockets."""

from __future__ import annotations

import concurrent.futures as cf
import gc
import threading
import time
import weakref

import pytest
import zmq

from futurefsm import (
    CancelOutcome,
    Client,
    ConnectionLostError,
    FutureState,
    RemoteTraceback,
    TaskFailedError,
    WorkerDiedError,
)
from futurefsm.protocol import (
    ConfirmKind,
    ResultStatus,
    TaskCancelConfirm,
    TaskResult,
    decode,
    encode,
)
from futurefsm.scheduler_stub import Behaviour, SchedulerStub
from futurefsm.scheduler_stub import sample_tasks as tasks

DEADLINE = 10.0


@pytest.fixture(autouse=True)
def _gates():
    tasks.reset_gates()
    yield
    tasks.reset_gates()


def wait_until(predicate, timeout=DEADLINE, what="condition"):
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.002)


def counted(client, stat, value):
    """Wait until the client's counter ``stat`` (a cancel outcome's name for the
    cancelled ones) reaches ``value``; fail if it does not, or goes past it.

    A future's waiters wake as it enters its terminal state; the client forgets it and
    counts how it ended just after, on the thread that finished it (``release``). A
    counter read at once after ``result()`` or ``cancel()`` returned may not have it
    yet.
    """

    def read():
        stats = client.stats()
        return stats["cancelled"][stat] if stat in stats["cancelled"] else stats[stat]

    wait_until(lambda: read() >= value, what=f"stats {stat} to reach {value}")
    assert read() == value


@pytest.fixture
def stub_and_client(request):
    """A stub with the Behaviour given by ``@pytest.mark.behaviour(...)`` and a client."""
    marker = request.node.get_closest_marker("behaviour")
    behaviour = Behaviour(**marker.kwargs) if marker else None
    stub = SchedulerStub(workers=2, behaviour=behaviour)
    client = Client(stub.address, cancel_timeout=DEADLINE, connection_timeout=DEADLINE)
    yield stub, client
    client.close()
    tasks.reset_gates()  # release tasks still blocked, so stop() need not wait for them
    stub.stop()
    assert client.stats()["io_errors"] == 0
    assert stub.stats()["internal_errors"] == 0


def running_gate_task(stub, client, gate="g"):
    """Submit a task that blocks on ``gate`` and wait until it runs on a worker."""
    future = client.submit(tasks.gate_wait, gate, "gate value")
    assert tasks.wait_started(gate, DEADLINE)
    return future


# ------------------------------------------------------------------ plain work


def test_embedded_scheduler_by_default():
    with Client(workers=2) as client:
        future = client.submit(tasks.add, 2, 3)
        assert future.result(DEADLINE) == 5
        assert future.state is FutureState.DONE
        assert client.address.startswith("tcp://127.0.0.1:")
    assert client.stats()["completed"] == 1


def test_submit_map_and_kwargs(stub_and_client):
    _, client = stub_and_client
    assert client.submit(tasks.sleep_then, 0, value="kw").result(DEADLINE) == "kw"
    assert list(client.map(tasks.add, range(20), range(20), timeout=DEADLINE)) == [
        2 * i for i in range(20)
    ]


def test_map_timeout_cancels_the_rest(stub_and_client):
    _, client = stub_and_client
    results = client.map(tasks.gate_wait, ["m1", "m2"], timeout=0.05)
    with pytest.raises(cf.TimeoutError):
        next(results)

    def ended() -> int:
        cancelled = client.stats()["cancelled"]
        return cancelled["confirmed"] + cancelled["before_send"]

    # (Waits for what it asserts: the count of the cancels that ended.)
    wait_until(lambda: ended() >= 2, what="map leftovers to be cancelled")
    assert ended() == 2
    assert client.stats()["in_flight"] == 0


def test_task_exception_carries_remote_traceback(stub_and_client):
    _, client = stub_and_client
    future = client.submit(tasks.fail, "no good")
    with pytest.raises(ValueError, match="no good") as raised:
        future.result(DEADLINE)
    assert isinstance(raised.value.__cause__, RemoteTraceback)
    assert "sample_tasks.py" in str(raised.value.__cause__)
    counted(client, "failed", 1)
    assert client.stats()["completed"] == 0


def test_unpicklable_submit_raises_at_once_and_sends_nothing(stub_and_client):
    stub, client = stub_and_client
    lock = threading.Lock()
    with pytest.raises(TypeError, match="cannot serialize the arguments"):
        client.submit(tasks.echo, lock)
    with pytest.raises(TypeError, match="cannot serialize the function"):
        client.submit(lambda: lock.locked())  # a lambda pickles (cloudpickle); a lock not
    with pytest.raises(TypeError, match="needs a callable"):
        client.submit(42)
    assert client.submit(tasks.noop).result(DEADLINE) is None
    assert stub.stats()["tasks_received"] == 1
    assert client.stats()["submitted"] == 1


def test_unpicklable_result_is_a_clear_failure(stub_and_client):
    _, client = stub_and_client
    with pytest.raises(Exception) as raised:
        client.submit(tasks.unpicklable_result).result(DEADLINE)
    assert isinstance(raised.value.__cause__, RemoteTraceback)


def test_submit_after_shutdown_is_refused():
    client = Client(workers=1)
    client.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        client.submit(tasks.noop)


def test_finished_future_is_released_and_collected(stub_and_client):
    _, client = stub_and_client
    future = client.submit(tasks.echo, "x")
    assert future.result(DEADLINE) == "x"
    ref = weakref.ref(future)
    counted(client, "completed", 1)
    assert client.stats()["in_flight"] == 0
    del future
    gc.collect()
    assert ref() is None


# ------------------------------------------------------------------ cancel, default handling


def test_cancel_running_task_is_confirmed(stub_and_client):
    stub, client = stub_and_client
    future = running_gate_task(stub, client)
    assert future.cancel() is True
    assert future.cancel_outcome is CancelOutcome.CONFIRMED
    with pytest.raises(cf.CancelledError):
        future.result(0)
    counted(client, "confirmed", 1)


def test_cancel_queued_task_is_confirmed(stub_and_client):
    stub, client = stub_and_client
    blockers = [running_gate_task(stub, client, f"w{i}") for i in range(2)]  # both workers
    queued = client.submit(tasks.noop)
    wait_until(lambda: stub.stats()["tasks_received"] == 3, what="the queued task to arrive")
    assert queued.cancel() is True
    assert queued.cancel_outcome is CancelOutcome.CONFIRMED
    for name in ("w0", "w1"):
        tasks.open_gate(name)
    assert [blocker.result(DEADLINE) for blocker in blockers] == ["gate value"] * 2


def test_cancel_finished_task_remotely_not_found(stub_and_client):
    _, client = stub_and_client
    future = client.submit(tasks.noop)
    assert future.result(DEADLINE) is None
    assert future.cancel() is False  # finished: nothing to cancel
    assert future.cancel_outcome is None


# ------------------------------------------------------------------ every Behaviour option


@pytest.mark.behaviour(result_delay=0.2)
def test_result_delay(stub_and_client):
    _, client = stub_and_client
    start = time.monotonic()
    assert client.submit(tasks.echo, 1).result(DEADLINE) == 1
    assert time.monotonic() - start >= 0.2


@pytest.mark.behaviour(worker_died=True)
def test_worker_died(stub_and_client):
    _, client = stub_and_client
    with pytest.raises(WorkerDiedError, match="died"):
        client.submit(tasks.noop).result(DEADLINE)


@pytest.mark.behaviour(on_cancel="result_then_confirm")
def test_result_then_confirm_is_result_raced(stub_and_client):
    stub, client = stub_and_client
    future = running_gate_task(stub, client)
    outcome = cf.ThreadPoolExecutor(1).submit(future.cancel)
    wait_until(lambda: stub.stats()["cancels_received"] == 1, what="the cancel to arrive")
    tasks.open_gate("g")  # the task finishes; its result goes out before the confirm
    assert outcome.result(DEADLINE) is True
    assert future.cancel_outcome is CancelOutcome.RESULT_RACED
    wait_until(lambda: client.stats()["stale_messages"] == 1, what="the late confirm")


@pytest.mark.behaviour(on_cancel="confirm_then_result")
def test_confirm_then_result(stub_and_client):
    stub, client = stub_and_client
    future = running_gate_task(stub, client)
    assert future.cancel() is True
    assert future.cancel_outcome is CancelOutcome.CONFIRMED
    tasks.open_gate("g")
    wait_until(lambda: client.stats()["stale_messages"] == 1, what="the late result")
    assert future.cancelled()


@pytest.mark.behaviour(on_cancel="cancel_failed")
def test_cancel_refused_then_result(stub_and_client):
    stub, client = stub_and_client
    future = running_gate_task(stub, client)
    assert future.cancel() is False
    assert future.cancel_outcome is CancelOutcome.FAILED
    assert future.state is FutureState.RUNNING
    tasks.open_gate("g")
    assert future.result(DEADLINE) == "gate value"


@pytest.mark.behaviour(on_cancel="not_found")
def test_cancel_not_found(stub_and_client):
    stub, client = stub_and_client
    future = running_gate_task(stub, client)
    assert future.cancel() is True
    assert future.cancel_outcome is CancelOutcome.NOT_FOUND
    tasks.open_gate("g")
    wait_until(lambda: client.stats()["stale_messages"] == 1, what="the late result")


@pytest.mark.behaviour(on_cancel="ignore")
def test_ignored_cancel_times_out(stub_and_client):
    stub, client = stub_and_client
    future = running_gate_task(stub, client)
    assert future.cancel(timeout=0.2) is True
    assert future.cancel_outcome is CancelOutcome.TIMED_OUT


@pytest.mark.behaviour(on_cancel="ignore")
def test_ignored_cancel_without_waiting_times_out_on_the_io_thread(stub_and_client):
    stub, client = stub_and_client
    future = running_gate_task(stub, client)
    assert future.cancel(timeout=0.2, wait=False) is True
    done, _ = cf.wait([future], timeout=DEADLINE)
    assert done == {future}
    assert future.cancel_outcome is CancelOutcome.TIMED_OUT


@pytest.mark.behaviour(on_cancel="duplicate")
def test_duplicate_confirm_is_stale(stub_and_client):
    stub, client = stub_and_client
    future = running_gate_task(stub, client)
    assert future.cancel() is True
    assert future.cancel_outcome is CancelOutcome.CONFIRMED
    wait_until(lambda: client.stats()["stale_messages"] == 1, what="the duplicate confirm")


@pytest.mark.behaviour(drop_result=True)
def test_dropped_result_never_hangs(stub_and_client):
    stub, client = stub_and_client
    future = client.submit(tasks.noop)
    wait_until(lambda: stub.stats()["results_dropped"] == 1, what="the result to be dropped")
    with pytest.raises(cf.TimeoutError):
        future.result(timeout=0.05)
    # The way out: cancel. The scheduler no longer knows the task.
    assert future.cancel() is True
    assert future.cancel_outcome is CancelOutcome.NOT_FOUND


@pytest.mark.behaviour(duplicate_result=True)
def test_duplicate_result_is_stale(stub_and_client):
    _, client = stub_and_client
    assert client.submit(tasks.echo, 7).result(DEADLINE) == 7
    wait_until(lambda: client.stats()["stale_messages"] == 1, what="the duplicate result")
    assert client.stats()["completed"] == 1


def test_a_scheduler_that_ignores_protocol_heartbeats_is_alive():
    # Liveness is judged by ZMTP heartbeats (libzmq's I/O threads), never by the
    # protocol's Heartbeat messages: a stub that answers none of them stays connected.
    # libzmq runs its due timers before it reads: a stall of the process (a loaded VM)
    # longer than connection_timeout between a PING and its PONG closes a live
    # connection. With 0.3 s, 0.5 s stalls (SIGSTOP) failed it every time; with 1 s, not.
    stub = SchedulerStub(workers=1, behaviour=Behaviour(answer_heartbeats=False))
    client = Client(stub.address, heartbeat_interval=0.05, connection_timeout=1.0)
    try:
        running = running_gate_task(stub, client)
        # Two connection timeouts pass (a bounded observation, not a synchronisation).
        done, _ = cf.wait([running], timeout=2.0)
        assert not done, running.exception(0)
        tasks.open_gate("g")
        assert running.result(DEADLINE) == "gate value"
        assert client.stats()["connection_lost"] == 0
        assert stub.stats()["heartbeats_answered"] == 0
    finally:
        client.close()
        tasks.reset_gates()
        stub.stop()


def test_stopped_scheduler_resolves_every_future():
    stub = SchedulerStub(workers=1)
    client = Client(stub.address, heartbeat_interval=0.05, connection_timeout=1.0)
    try:
        future = running_gate_task(stub, client)
        stub.stop(timeout=0.1)  # goes away with the task still running
        with pytest.raises(ConnectionLostError):
            future.result(DEADLINE)
    finally:
        client.close()


def test_disconnect_all_resolves_futures_at_once(stub_and_client):
    stub, client = stub_and_client
    running = running_gate_task(stub, client)
    cancelling = client.submit(tasks.gate_wait, "other")
    assert tasks.wait_started("other", DEADLINE)
    client.cancel([cancelling], wait=False)
    # The stub is scripted to confirm, so only a disconnect racing it would stop it;
    # either way the future ends cancelled.
    stub.disconnect_all()
    with pytest.raises(ConnectionLostError):
        running.result(DEADLINE)  # well before connection_timeout (10 s)
    assert cancelling.cancelled()


def test_callable_behaviour_per_arrival_index():
    stub = SchedulerStub(workers=1, behaviour=lambda index: Behaviour(worker_died=index == 1))
    with Client(stub.address) as client:
        first, second, third = (client.submit(tasks.echo, i) for i in range(3))
        assert first.result(DEADLINE) == 0
        with pytest.raises(WorkerDiedError):
            second.result(DEADLINE)
        assert third.result(DEADLINE) == 2
    stub.stop()


# ------------------------------------------------------------------ graphs


def test_graph_runs_in_dependency_order(stub_and_client):
    _, client = stub_and_client
    futures = client.submit_graph(
        {
            "total": (sum, ["a", "b"]),
            "a": (tasks.add, 1, 2),
            "b": (tasks.add, "a", 10),
            "const": 5,
        }
    )
    assert {key: future.result(DEADLINE) for key, future in futures.items()} == {
        "total": 16,
        "a": 3,
        "b": 13,
        "const": 5,
    }


def test_graph_keys_subset_and_errors(stub_and_client):
    _, client = stub_and_client
    futures = client.submit_graph({"a": (tasks.add, 1, 1), "b": (tasks.add, "a", 1)}, keys=["b"])
    assert list(futures) == ["b"] and futures["b"].result(DEADLINE) == 3
    with pytest.raises(ValueError, match="cycle"):
        client.submit_graph({"a": (tasks.echo, "b"), "b": (tasks.echo, "a")})
    with pytest.raises(KeyError, match="not in the graph"):
        client.submit_graph({"a": (tasks.noop,)}, keys=["zz"])


def test_graph_failed_dependency_fails_dependents(stub_and_client):
    _, client = stub_and_client
    futures = client.submit_graph(
        {"bad": (tasks.fail, "root cause"), "child": (tasks.echo, "bad"), "ok": (tasks.noop,)}
    )
    for key in ("bad", "child"):
        with pytest.raises(ValueError, match="root cause"):
            futures[key].result(DEADLINE)
    assert futures["ok"].result(DEADLINE) is None


def test_cancelling_a_graph_member_cancels_the_whole_graph_promptly(stub_and_client):
    stub, client = stub_and_client
    futures = client.submit_graph(
        {
            "root": (tasks.gate_wait, "gate-root"),
            "mid": (tasks.echo, "root"),
            "leaf": (tasks.echo, "mid"),
            "side": (tasks.gate_wait, "gate-side"),
        }
    )
    assert tasks.wait_started("gate-root", DEADLINE)
    assert tasks.wait_started("gate-side", DEADLINE)
    assert futures["mid"].cancel() is True
    _, not_done = cf.wait(list(futures.values()), timeout=DEADLINE)
    assert not not_done
    assert all(future.cancelled() for future in futures.values())
    # Promptly: each ended on the scheduler's confirm, none on a cancel timeout (that
    # would be TIMED_OUT), and not by measuring the time, which a slow machine stretches.
    assert futures["mid"].cancel_outcome is CancelOutcome.CONFIRMED
    assert {futures[k].cancel_outcome for k in ("root", "leaf", "side")} == {
        CancelOutcome.BY_SCHEDULER
    }
    assert stub.stats()["cancels_received"] == 1  # one TaskCancel for the group


def test_graph_member_cancelled_before_sending_takes_the_graph_with_it(stub_and_client):
    stub, client = stub_and_client
    graph: dict = {}

    def submit_and_cancel_on_the_io_thread(_):
        # The I/O thread is busy running this callback: nothing submitted here is sent
        # before the callback returns.
        assert client.on_io_thread()
        graph.update(client.submit_graph({"a": (tasks.echo, 1), "b": (tasks.add, "a", 1)}))
        graph["b"].cancel()

    # The callback is added while the task cannot finish, so it runs on the I/O thread
    # when the result arrives (added later, it would run at once on this thread).
    trigger = client.submit(tasks.gate_wait, "trigger")
    trigger.add_done_callback(submit_and_cancel_on_the_io_thread)
    tasks.open_gate("trigger")
    _, not_done = cf.wait([trigger], timeout=DEADLINE)
    assert not not_done
    wait_until(lambda: len(graph) == 2, what="the callback")
    _, not_done = cf.wait(list(graph.values()), timeout=DEADLINE)
    assert not not_done
    assert {future.cancel_outcome for future in graph.values()} == {CancelOutcome.BEFORE_SEND}
    assert stub.stats()["tasks_received"] == 1  # only the trigger


# ------------------------------------------------------------------ bulk cancel, close, shutdown


def test_bulk_cancel_one_deadline(stub_and_client):
    stub, client = stub_and_client
    finished = client.submit(tasks.noop)
    assert finished.result(DEADLINE) is None
    futures = [client.submit(tasks.gate_wait, f"bulk{i}") for i in range(200)]
    wait_until(lambda: stub.stats()["tasks_received"] == 201, what="all tasks to arrive")
    outcomes = client.cancel([*futures, finished])
    assert outcomes == [True] * 200 + [False]
    assert {future.cancel_outcome for future in futures} == {CancelOutcome.CONFIRMED}


def test_bulk_cancel_rejects_foreign_futures(stub_and_client):
    _, client = stub_and_client
    with Client(workers=1) as other:
        foreign = other.submit(tasks.noop)
        with pytest.raises(ValueError, match="does not belong"):
            client.cancel([foreign])


def test_close_cancels_outstanding_and_leaves_finished_alone():
    stub = SchedulerStub(workers=2)
    client = Client(stub.address)
    finished = client.submit(tasks.echo, "kept")
    assert finished.result(DEADLINE) == "kept"
    outstanding = [running_gate_task(stub, client, "c1"), client.submit(tasks.gate_wait, "c2")]
    wait_until(lambda: stub.stats()["tasks_received"] == 3, what="tasks to arrive")
    client.close()
    assert all(future.cancelled() for future in outstanding)
    assert {future.cancel_outcome for future in outstanding} == {CancelOutcome.CONFIRMED}
    assert finished.result(0) == "kept"
    assert not client.engine._io_thread.is_alive()
    client.close()  # idempotent
    wait_until(lambda: stub.stats()["disconnects_received"] == 1, what="the Disconnect")
    tasks.reset_gates()
    stub.stop()


def test_shutdown_cancel_futures_cancels_only_what_has_not_started(stub_and_client):
    """As the stdlib: queued tasks are cancelled, running ones finish (a non-force
    TaskCancel, which the scheduler refuses for a running task)."""
    stub, client = stub_and_client
    running = [running_gate_task(stub, client, gate) for gate in ("g1", "g2")]  # 2 workers
    queued = [client.submit(tasks.noop) for _ in range(3)]
    wait_until(lambda: stub.stats()["tasks_received"] == 5, what="the tasks to arrive")
    shutting = cf.ThreadPoolExecutor(1)
    shut = shutting.submit(client.shutdown, wait=True, cancel_futures=True)
    wait_until(
        lambda: all(f.cancel_outcome is CancelOutcome.FAILED for f in running),
        what="the running tasks' cancels to be refused",
    )
    assert not shut.done()  # shutdown waits for the running tasks
    tasks.open_gate("g1")
    tasks.open_gate("g2")
    shut.result(DEADLINE)
    shutting.shutdown()
    assert [f.result(0) for f in running] == ["gate value", "gate value"]
    assert all(f.cancel_outcome is CancelOutcome.CONFIRMED for f in queued)
    # (A forced cancel would have stopped the running tasks: CONFIRMED, not FAILED.)
    assert stub.stats()["cancels_received"] == 5
    assert not client.engine._io_thread.is_alive()


def test_shutdown_waits_for_outstanding_work(stub_and_client):
    stub, client = stub_and_client
    future = running_gate_task(stub, client)
    shutting = cf.ThreadPoolExecutor(1).submit(client.shutdown, wait=True)
    with pytest.raises(cf.TimeoutError):
        shutting.result(timeout=0.05)
    tasks.open_gate("g")
    shutting.result(DEADLINE)
    assert future.result(0) == "gate value"


def test_context_manager_waits_and_closes():
    with Client(workers=1) as client:
        future = client.submit(tasks.sleep_then, 0.05, "slept")
    assert future.result(0) == "slept"
    assert not client.engine._io_thread.is_alive()


# ------------------------------------------------------------------ bad input to the client


def test_garbage_and_stale_messages_never_kill_the_io_thread():
    context = zmq.Context.instance()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    client = Client(f"tcp://127.0.0.1:{port}", connection_timeout=DEADLINE)
    try:
        future = client.submit(tasks.noop)
        assert router.poll(DEADLINE * 1000)
        identity, probe = router.recv_multipart()
        assert probe == b""  # each connection opens with an empty probe (PROBE_ROUTER)
        while True:  # skip anything else until the Task arrives
            identity, frame = router.recv_multipart()
            task = decode(frame)
            if type(task).__name__ == "Task":
                break
        unknown = bytes(16)
        for garbage in (
            [b"\xc1"],  # not msgpack
            [b"not", b"one frame"],
            [encode(TaskResult(unknown, ResultStatus.SUCCESS, b"\x80\x04N."))],  # stale id
            [encode(TaskCancelConfirm(unknown, ConfirmKind.CANCELED))],  # stale id
            [encode(TaskResult(task.task_id, ResultStatus.SUCCESS, b"not pickle"))],
        ):
            router.send_multipart([identity, *garbage])
        with pytest.raises(TaskFailedError, match="could not be deserialized"):
            future.result(DEADLINE)
        wait_until(lambda: client.stats()["stale_messages"] == 2, what="stale messages")
        stats = client.stats()
        assert stats["protocol_errors"] == 2
        assert stats["io_errors"] == 0
        assert client.engine._io_thread.is_alive()
    finally:
        client.close()
        router.close()


def test_a_dependent_crossing_its_upstreams_result_is_sent_again_with_it():
    """The scheduler sends the upstream's result before the dependent's Task reaches
    it (forced here: the I/O thread sends the dependent only once that result left):
    the scheduler answers DependencyGone, and the engine sends the Task again with
    the result it kept. Before, the dependent waited forever."""
    from futurefsm.engines.futurefsm import FutureFSMEngine

    stub = SchedulerStub(workers=1)

    class CrossingEngine(FutureFSMEngine):
        def _send_dependent(self, prepared):  # on the I/O thread
            wait_until(lambda: stub.stats()["results_sent"] == 1, what="the upstream result out")
            super()._send_dependent(prepared)

    client = Client(engine=CrossingEngine(stub.address), cancel_timeout=DEADLINE)
    try:
        upstream = client.submit(tasks.gate_wait, "crossing", 20)
        assert tasks.wait_started("crossing", DEADLINE)
        dependent = client.submit(tasks.add, upstream, 1)
        tasks.open_gate("crossing")
        assert dependent.result(DEADLINE) == 21
        assert stub.stats()["tasks_received"] == 3  # upstream, dependent, dependent again
        assert dependent.history[-1].trigger.value == "recv_result", dependent.history
    finally:
        client.close()
        stub.stop()
