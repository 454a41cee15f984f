"""Client as a drop-in ``concurrent.futures`` Executor, and the rough edges a new user
meets one step off the demo: worker counts, map's references and progress bar, public
errors, a blocking call inside a done-callback, nested graph tasks, the frame limit."""

from __future__ import annotations

import concurrent.futures as cf
import gc
import inspect
import pkgutil
import threading
import time
import weakref

import pytest

import futurefsm
from futurefsm import CancelOutcome, Client, ProtocolError
from futurefsm.client import InMemoryTransport
from futurefsm.protocol import MAX_FRAME_BYTES
from futurefsm.scheduler_stub import SchedulerStub
from futurefsm.scheduler_stub import sample_tasks as tasks

DEADLINE = 10.0


@pytest.fixture(autouse=True)
def _gates():
    tasks.reset_gates()
    yield
    tasks.reset_gates()


@pytest.fixture(scope="module")
def stub():
    with SchedulerStub(workers=2) as stub:
        yield stub


@pytest.fixture
def client(stub):
    client = Client(stub.address, cancel_timeout=DEADLINE, connection_timeout=DEADLINE)
    yield client
    tasks.reset_gates()  # release tasks still blocked, so close() need not wait for them
    client.close()
    assert client.stats()["io_errors"] == 0


class Dummy:
    """A result that can be weakly referenced."""


def make_dummy(_: int) -> Dummy:
    return Dummy()


# ------------------------------------------------------------------ worker counts


@pytest.mark.parametrize("name", ["workers", "max_workers"])
@pytest.mark.parametrize("count", [0, -1])
def test_a_worker_count_below_one_is_refused_like_the_stdlib(name: str, count: int) -> None:
    with pytest.raises(ValueError, match=f"^{name} must be greater than 0, got {count}$"):
        Client(**{name: count})


def test_max_workers_is_the_stdlib_name_for_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    import futurefsm.scheduler_stub as stub_package

    built: list[int] = []

    class RecordingStub(SchedulerStub):
        def __init__(self, *args: object, workers: int = 4, **kwargs: object) -> None:
            built.append(workers)
            super().__init__(*args, workers=workers, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(stub_package, "SchedulerStub", RecordingStub)
    with Client(max_workers=3) as client:
        assert client.submit(tasks.add, 1, 2).result(DEADLINE) == 3
    assert built == [3]
    with pytest.raises(ValueError, match="pass one of them"):
        Client(workers=2, max_workers=2)
    with pytest.raises(TypeError, match="workers: expected an int"):
        Client(workers=2.5)  # type: ignore[arg-type]


# ------------------------------------------------------------------ map


def test_map_keeps_no_reference_to_a_yielded_result(client: Client) -> None:
    results = client.map(make_dummy, range(5))
    # The client itself holds a future (and so its result) until it has counted how it
    # ended, just after the future's waiters woke: only the iterator is looked at here.
    end = time.monotonic() + DEADLINE
    while client.stats()["completed"] < 5:
        assert time.monotonic() < end, "the client did not release the finished futures"
        time.sleep(0.002)
    for value in results:
        ref = weakref.ref(value)
        del value
        gc.collect()
        assert ref() is None, "map's iterator still holds the result it yielded"


def test_map_progress_bar_counts_finished_tasks(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    assert list(client.map(tasks.add, range(7), range(7), progress=True)) == [
        2 * i for i in range(7)
    ]
    err = capsys.readouterr().err
    assert "add: 100%" in err and "7/7" in err, err


def test_map_progress_bar_completes_even_if_nobody_iterates(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    results = client.map(tasks.add, range(3), range(3), progress=True)
    err, end = "", time.monotonic() + DEADLINE
    while "3/3" not in err:
        assert time.monotonic() < end, f"the bar did not reach 3/3: {err!r}"
        time.sleep(0.005)
        err += capsys.readouterr().err
    del results


def test_map_without_progress_prints_nothing(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    assert list(client.map(tasks.add, [1], [2])) == [3]
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------ public errors


def test_every_public_error_is_importable_from_futurefsm() -> None:
    defined = set()
    for info in pkgutil.walk_packages(futurefsm.__path__, "futurefsm."):
        if info.name.startswith(("futurefsm.testing", "futurefsm.bench", "futurefsm.__main__")):
            continue  # test-kit assertions, not errors a user of the library meets
        module = __import__(info.name, fromlist=["_"])
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == info.name
                and not name.startswith("_")
            ):
                defined.add(value)
    assert futurefsm.ProtocolError in defined
    for error in defined:
        assert getattr(futurefsm, error.__name__, None) is error, error
        assert error.__name__ in futurefsm.__all__
    assert futurefsm.CancelledError is cf.CancelledError
    assert issubclass(ProtocolError, futurefsm.FutureFSMError)
    assert issubclass(ProtocolError, ValueError)  # as before: callers catching ValueError


# ------------------------------------------------------------------ blocking in a callback


def test_result_inside_a_done_callback_on_the_io_thread_raises_instead_of_deadlocking(
    client: Client,
) -> None:
    first = client.submit(tasks.gate_wait, "first", 1)
    second = client.submit(tasks.gate_wait, "second", 2)
    assert tasks.wait_started("first", DEADLINE)
    seen: dict[str, object] = {}
    called = threading.Event()

    def callback(done: cf.Future) -> None:
        seen["io_thread"] = client.on_io_thread()
        seen["own"] = done.result()  # finished: no wait, allowed
        for name, call in (
            ("result", lambda: second.result()),
            ("result_5", lambda: second.result(5)),
            ("exception", lambda: second.exception()),
            ("poll", lambda: second.result(timeout=0)),
        ):
            try:
                call()
            except BaseException as error:  # recorded for the asserts below
                seen[name] = error
        called.set()

    first.add_done_callback(callback)
    tasks.open_gate("first")
    if not called.wait(DEADLINE):
        second.connection_lost()  # unblock a deadlocked I/O thread so teardown can run
        pytest.fail("the done-callback blocked the I/O thread (deadlock)")
    assert seen["io_thread"] is True
    assert seen["own"] == 1
    for name in ("result", "result_5", "exception"):
        error = seen[name]
        assert isinstance(error, RuntimeError), (name, error)
        assert "I/O thread" in str(error) and "done-callback" in str(error)
        assert f"{name.split('_')[0]}() would wait forever" in str(error)
    assert isinstance(seen["poll"], cf.TimeoutError)  # timeout=0 polls as in the stdlib
    tasks.open_gate("second")
    assert second.result(DEADLINE) == 2  # the same call off the I/O thread waits


# ------------------------------------------------------------------ nested graph tasks


def test_submit_graph_evaluates_nested_tasks_on_the_worker(client: Client) -> None:
    add = tasks.add
    graph = {
        "x": (add, 1, 2),
        "y": (add, (add, "x", (add, 10, 20)), 100),
        "z": (sum, [(add, "x", 1), 5, "y"]),
        "pair": (tuple, [len, "abc"]),  # a result that looks like a task
        "kept": (tasks.echo, (tasks.echo, "pair")),
        "listed": [(add, 1, 1), "x"],  # a constant list holding a task and a key
    }
    futures = client.submit_graph(graph)
    values = {key: future.result(DEADLINE) for key, future in futures.items()}
    assert values == {
        "x": 3,
        "y": 133,
        "z": 142,
        "pair": (len, "abc"),
        "kept": (len, "abc"),  # a dependency's value is never called
        "listed": [2, 3],
    }
    assert set(futures) == set(graph)  # nested tasks are no graph members of their own


def test_a_nested_task_failure_fails_its_graph_task(client: Client) -> None:
    futures = client.submit_graph({"a": (tasks.add, (tasks.fail, "inner"), 1)})
    with pytest.raises(ValueError, match="inner"):
        futures["a"].result(DEADLINE)


# ------------------------------------------------------------------ the frame limit


def test_a_task_over_the_frame_limit_is_refused_at_submit(client: Client) -> None:
    # A large bytes argument travels as a frame of its own (out of band): over the
    # limit by one byte, it is refused; so is a Task frame over it (a bytearray is
    # pickled in band).
    with pytest.raises(ProtocolError, match=f"exceeds the {MAX_FRAME_BYTES}-byte limit"):
        client.submit(len, b"x" * (MAX_FRAME_BYTES + 1))
    with pytest.raises(ProtocolError, match=f"exceeds the {MAX_FRAME_BYTES}-byte limit"):
        client.submit(len, bytearray(MAX_FRAME_BYTES))
    assert client.stats()["submitted"] == 0


def test_a_result_over_the_frame_limit_fails_the_task_with_a_clear_error(
    client: Client,
) -> None:
    future = client.submit(bytes, MAX_FRAME_BYTES)
    error = future.exception(DEADLINE)
    assert isinstance(error, ProtocolError), error
    assert f"exceeds the {MAX_FRAME_BYTES}-byte limit" in str(error)
    assert future.cancel_outcome is None and future.state.value == "done"


# ------------------------------------------------------------------ cancel(force=False)


def test_force_travels_from_the_future_to_the_transport() -> None:
    transport = InMemoryTransport()
    forced, gentle = transport.create_future(), transport.create_future()
    for future in (forced, gentle):
        transport.send_task(future)
    assert forced.cancel(wait=False) and gentle.cancel(wait=False, force=False)
    assert transport.cancels_sent == [forced.task_id, gentle.task_id]
    assert transport.cancel_forces == [True, False]


def test_cancel_without_force_cancels_a_queued_task_and_not_a_running_one(
    client: Client, stub: SchedulerStub
) -> None:
    running = [client.submit(tasks.gate_wait, gate, gate) for gate in ("a", "b")]  # 2 workers
    assert tasks.wait_started("a", DEADLINE) and tasks.wait_started("b", DEADLINE)
    received = stub.stats()["tasks_received"]
    queued = client.submit(tasks.noop)
    end = time.monotonic() + DEADLINE
    while stub.stats()["tasks_received"] == received:  # queued behind the two
        assert time.monotonic() < end, "the task did not arrive"
        time.sleep(0.002)
    assert queued.cancel(force=False) is True
    assert queued.cancel_outcome is CancelOutcome.CONFIRMED
    assert running[0].cancel(force=False) is False  # refused: it has started
    assert running[0].cancel_outcome is CancelOutcome.FAILED
    assert client.cancel(running, force=False) == [False, False]
    tasks.open_gate("a")
    tasks.open_gate("b")
    assert [future.result(DEADLINE) for future in running] == ["a", "b"]
