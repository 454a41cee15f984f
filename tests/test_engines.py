"""The engine seam: names, errors, and what ``import futurefsm`` does not import."""

from __future__ import annotations

import ast
import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from futurefsm import Client
from futurefsm.engines import ENGINES, Engine, get_engine
from futurefsm.engines.futurefsm import FutureFSMEngine
from futurefsm.protocol import ProtocolError


def test_the_default_engine_is_our_own_scheduler():
    assert get_engine("futurefsm") is FutureFSMEngine
    with Client(workers=1) as client:
        assert isinstance(client.engine, FutureFSMEngine)
        assert client.submit(abs, -3).result(timeout=10) == 3


def test_an_unknown_engine_is_an_error_listing_the_known_ones():
    with pytest.raises(ValueError) as error:
        get_engine("spark")
    message = str(error.value)
    assert "'spark'" in message
    for name in ENGINES:
        assert name in message
    with pytest.raises(ValueError, match="known engines"):
        Client("tcp://127.0.0.1:1", engine="nope")


def test_an_engine_object_is_used_as_given():
    engine = FutureFSMEngine(None, workers=1)
    with Client(engine=engine) as client:
        assert client.engine is engine
        assert client.submit(pow, 2, 5).result(timeout=10) == 32


def test_an_engine_object_takes_no_address_or_options_from_the_client():
    engine = FutureFSMEngine(None, workers=1)
    try:
        with pytest.raises(ValueError, match="engine object"):
            Client("tcp://127.0.0.1:1", engine=engine)
        with pytest.raises(TypeError, match="engine"):
            Client(engine=42)  # type: ignore[arg-type]
    finally:
        engine.close()


def test_a_future_is_counted_as_ended_when_it_leaves_the_in_flight_count():
    """Regression: the client took a finished future out of ``in_flight``, told the
    engine to forget it, and only then counted how it ended: a ``stats()`` in between
    showed it neither in flight nor ended (a test that waited for ``in_flight == 0``
    then read one short). The engine's ``forget`` is held here, as a preemption
    would hold it."""
    with Client(workers=1) as client:
        forget, forgetting, resume = client.engine.forget, threading.Event(), threading.Event()

        def held(future):
            forgetting.set()
            resume.wait(10)
            forget(future)

        client.engine.forget = held  # type: ignore[method-assign]
        try:
            future = client.submit(abs, -3)
            assert forgetting.wait(10)
            stats = client.stats()
        finally:
            resume.set()
        assert future.result(0) == 3
        assert (stats["in_flight"], stats["completed"]) == (0, 1), stats


def test_every_engine_implements_the_seam():
    assert issubclass(FutureFSMEngine, Engine)
    assert not FutureFSMEngine.__abstractmethods__


def test_importing_futurefsm_imports_no_engine_dependency():
    code = (
        "import sys, futurefsm, futurefsm.engines\n"
        "heavy = [m for m in ('dask', 'distributed', 'scaler') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""


# What an engine may not touch: a future's state, triggers or private parts, the
# client's registry or private parts. (It maps messages to the client's deliveries.)
_FUTURE_AND_CLIENT_PARTS = {
    "state",
    "sent",
    "recv_result",
    "recv_cancel_confirm",
    "connection_lost",
    "cancel_timed_out",
    "_request_cancel",
    "_transport",
    "cancel_outcome",
    "group_id",
    "futures",
    "stale",
}


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_no_engine_module_reads_a_future_or_the_client_beyond_the_seam(name: str) -> None:
    module_name = ENGINES[name].partition(":")[0]
    path = Path(__file__).resolve().parents[1] / (module_name.replace(".", "/") + ".py")
    tree = ast.parse(path.read_text())
    imported = {
        node.module or ""
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level > 0
    }
    assert not {module for module in imported if module.startswith(("client", "fsm"))}, (
        f"{path.name} imports the client or the FSM: {sorted(imported)}"
    )
    touched = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in _FUTURE_AND_CLIENT_PARTS
    }
    assert not touched, f"{path.name} touches {sorted(touched)}"


def test_deliveries_for_unknown_tasks_are_stale_and_a_bad_answer_is_a_protocol_error():
    with Client(workers=1) as client:
        client.deliver_result(bytes(16), "value")
        client.deliver_cancel_answer(bytes(16), "canceled")
        client.deliver_connection_lost("gone", [bytes(16)])  # nothing live: nothing counted
        with pytest.raises(ProtocolError, match="maybe"):
            client.deliver_cancel_answer(bytes(16), "maybe")  # type: ignore[arg-type]
        assert not client.sending(bytes(16))  # an unknown task is never sent
        stats = client.stats()
    assert stats["stale_messages"] == 2
    assert stats["connection_lost"] == 0


def test_a_batch_posted_at_once_is_delivered_in_order_after_one_wake_up():
    # The Ray fetcher posts a batch of results with one post_many: the delivery
    # thread is woken once for it, and the order holds with what came before.
    from futurefsm.engines.shared import DeliveryThread, NeverRaise, WakeQueue

    wakes: list[int] = []
    queue: WakeQueue[int] = WakeQueue(lambda: wakes.append(len(wakes)))
    queue.post(1)
    queue.post_many([2, 3, 4])
    queue.post_many([])
    assert len(wakes) == 1 and queue.take() == [1, 2, 3, 4]
    queue.post_many([5, 6])
    assert len(wakes) == 2 and queue.take() == [5, 6]

    delivered: list[int] = []
    done = threading.Event()

    def deliver(item: int) -> None:
        delivered.append(item)
        if item == 6:
            done.set()

    guard = NeverRaise(logging.getLogger("test"), "test delivery")
    thread = DeliveryThread("test-delivery", deliver, guard)
    thread.start()
    thread.post(1)
    thread.post_many([2, 3, 4, 5])
    thread.post(6)
    assert done.wait(10)
    thread.stop()
    assert delivered == [1, 2, 3, 4, 5, 6]
