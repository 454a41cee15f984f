"""``StatusRequest``/``Status``: the messages, the stub's answer, ``futurefsm status``."""

from __future__ import annotations

import time
from typing import Any

import msgpack
import pytest
import zmq

from futurefsm import Client
from futurefsm.cli import main as cli_main
from futurefsm.protocol import (
    PROTOCOL_VERSION,
    ProtocolError,
    Status,
    StatusRequest,
    decode,
    encode,
)
from futurefsm.scheduler_stub import SchedulerStub
from futurefsm.scheduler_stub import sample_tasks as tasks
from futurefsm.status import query_status

DEADLINE = 10.0
COUNTS = dict(clients=1, queued=2, running=3, done=4, cancels=5, protocol_errors=6)


@pytest.fixture(autouse=True)
def _gates():
    tasks.reset_gates()
    yield
    tasks.reset_gates()


def wait_until(predicate, what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.002)


# ------------------------------------------------------------------ the messages


def test_status_messages_round_trip_in_the_wire_format() -> None:
    status = Status(7, **COUNTS)
    assert decode(encode(status)) == status
    assert msgpack.unpackb(encode(status)) == [PROTOCOL_VERSION, 9, 7, 1, 2, 3, 4, 5, 6]
    assert decode(encode(StatusRequest(3))) == StatusRequest(3)
    assert msgpack.unpackb(encode(StatusRequest(3))) == [PROTOCOL_VERSION, 8, 3]


@pytest.mark.parametrize("field", ["seq", *COUNTS])
@pytest.mark.parametrize(("value", "complaint"), [(-1, "out of range"), (True, "expected int")])
def test_every_status_field_is_validated(field: str, value: Any, complaint: str) -> None:
    fields = {"seq": 0, **COUNTS, field: value}
    with pytest.raises(ProtocolError, match=f"^Status.{field}: .*{complaint}"):
        Status(**fields)
    frame = msgpack.packb([PROTOCOL_VERSION, 9, *fields.values()])
    with pytest.raises(ProtocolError, match=f"Status.{field}"):
        decode(frame)


def test_status_request_seq_is_validated() -> None:
    with pytest.raises(ProtocolError, match=r"StatusRequest\.seq: expected int, got str"):
        StatusRequest("1")  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="StatusRequest expects 1 fields, got 0"):
        decode(msgpack.packb([PROTOCOL_VERSION, 8]))


# ------------------------------------------------------------------ the stub's answer


def test_the_stub_reports_clients_queued_running_done_cancels_and_errors() -> None:
    with SchedulerStub(workers=1) as stub:
        idle = query_status(stub.address, DEADLINE)
        assert idle == Status(idle.seq, 0, 0, 0, 0, 0, 0)
        client = Client(stub.address, cancel_timeout=DEADLINE)
        try:
            assert client.submit(tasks.add, 1, 1).result(DEADLINE) == 2
            running = client.submit(tasks.gate_wait, "g")
            assert tasks.wait_started("g", DEADLINE)
            queued = [client.submit(tasks.noop) for _ in range(3)]
            wait_until(lambda: stub.stats()["tasks_received"] == 5, "the tasks to arrive")
            assert queued[0].cancel()

            context: zmq.Context[Any] = zmq.Context()
            garbage = context.socket(zmq.DEALER)
            garbage.connect(stub.address)
            garbage.send(b"not msgpack \xc1")
            wait_until(lambda: stub.stats()["protocol_errors"] == 1, "the bad frame")
            garbage.close(linger=0)
            context.term()

            status = query_status(stub.address, DEADLINE)
            # The garbage sender is no client; the status asker is none either.
            counts = (status.clients, status.queued, status.running, status.done)
            assert counts == (1, 2, 1, 1)
            assert (status.cancels, status.protocol_errors) == (1, 1)
            tasks.open_gate("g")
            assert running.result(DEADLINE) is None
        finally:
            client.close()
        # close() hands its Disconnect to ZeroMQ and returns; the status request comes on
        # another connection, which ZeroMQ may deliver first: wait until it was read.
        wait_until(lambda: stub.stats()["clients_dropped"] == 1, "the Disconnect")
        assert query_status(stub.address, DEADLINE).clients == 0  # Disconnect forgets it


def test_no_answer_is_a_timeout_error() -> None:
    context: zmq.Context[Any] = zmq.Context()
    silent = context.socket(zmq.ROUTER)  # accepts the connection, never answers
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    try:
        with pytest.raises(TimeoutError, match=f"no answer from tcp://127.0.0.1:{port} within"):
            query_status(f"tcp://127.0.0.1:{port}", timeout=0.2)
    finally:
        silent.close(linger=0)
        context.term()


# ------------------------------------------------------------------ the command


def test_futurefsm_status_prints_the_counters(capsys: pytest.CaptureFixture[str]) -> None:
    with SchedulerStub(workers=1) as stub:
        with Client(stub.address) as client:
            client.submit(tasks.noop).result(DEADLINE)
            assert cli_main(["status", stub.address]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"scheduler {stub.address}"
    rows = {line[:17].strip(): int(line[17:]) for line in out[1:]}
    assert rows == {
        "clients": 1,
        "queued": 0,
        "running": 0,
        "done": 1,
        "cancels": 0,
        "protocol errors": 0,
    }


def test_futurefsm_status_without_an_answer_or_a_scheme(capsys: pytest.CaptureFixture[str]) -> None:
    context: zmq.Context[Any] = zmq.Context()
    silent = context.socket(zmq.ROUTER)
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    try:
        assert cli_main(["status", f"tcp://127.0.0.1:{port}", "--timeout", "0.2"]) == 1
        assert "no answer from" in capsys.readouterr().err
    finally:
        silent.close(linger=0)
        context.term()
    assert cli_main(["status", "127.0.0.1:5555"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean tcp://127.0.0.1:5555?" in err


def test_futurefsm_status_tells_a_keyed_scheduler_from_a_dead_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Both used to print "no answer ... within 5 s" and return 1.
    secret, client_public = zmq.curve_keypair(), zmq.curve_keypair()[0]
    with SchedulerStub(workers=1, secret_key=secret, client_keys=[client_public]) as stub:
        keyed = stub.address
        assert cli_main(["status", keyed, "--timeout", "60"]) == 3  # at once, not at 60 s
        err = capsys.readouterr().err
        assert "refused the handshake: it serves CurveZMQ; pass --secret-key" in err
    context: zmq.Context[Any] = zmq.Context()
    probe = context.socket(zmq.ROUTER)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(linger=0)  # nothing listens there now
    context.term()
    assert cli_main(["status", f"tcp://127.0.0.1:{port}", "--timeout", "0.5"]) == 1
    assert "nothing accepted a connection there" in capsys.readouterr().err
