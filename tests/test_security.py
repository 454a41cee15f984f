"""Only authorised clients run code: CurveZMQ keys, the ZAP check, safe binds (issue 12).

Side effects are files a task creates (``sample_tasks.touch``): "an unauthorised
client's task never runs" is checked on the file system after an authorised task,
queued behind it on the single worker, has run.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import re
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth

from futurefsm import Client, ConnectionLostError
from futurefsm.protocol import Task, encode, new_task_id
from futurefsm.scheduler_stub import SchedulerStub
from futurefsm.scheduler_stub.sample_tasks import touch
from futurefsm.scheduler_stub.security import is_local, keygen
from futurefsm.serializer import DEFAULT_SERIALIZER

TIMEOUT = 3.0
"""The connection_timeout of clients that never complete a handshake (no keys, a wrong
server key): at its end they report the handshake failures seen meanwhile. Long enough
that a loaded machine fits a failed handshake in it (1 s did not, under load)."""
REFUSED = 30.0
"""The connection_timeout of clients the scheduler refuses by name (status 400): the
refusal ends their futures at once, so this long timeout is never reached; a client
that waited for it would fail the test's deadline."""
SLACK = 5.0
"""Scheduling slack on a loaded machine, added to deadlines (never a timed assertion)."""


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A scheduler keypair, an allowed client (alice) and a stranger (mallory)."""
    root = tmp_path_factory.mktemp("keys")
    keygen(root / "server", "scheduler")
    keygen(root / "alice", "alice", public_to=root / "clients")
    keygen(root / "strangers", "mallory")
    return {
        "server_public": root / "server" / "scheduler.key",
        "server_secret": root / "server" / "scheduler.key_secret",
        "clients": root / "clients",
        "alice": root / "alice" / "alice.key_secret",
        "mallory": root / "strangers" / "mallory.key_secret",
    }


@pytest.fixture
def secured(keys: dict[str, Path]) -> Iterator[SchedulerStub]:
    stub = SchedulerStub(workers=1, secret_key=keys["server_secret"], client_keys=keys["clients"])
    yield stub
    stub.stop()


def turned_away(stub: SchedulerStub) -> int:
    """Handshakes the stub refused or that failed."""
    stats = stub.stats()
    return stats["handshakes_refused"] + stats["handshakes_failed"]


def run_behind(client: Client, path: Path) -> None:
    """Run an authorised task to its end: on one worker, anything queued before it ran."""
    assert client.submit(touch, str(path), "ok").result(SLACK) == "ok"


# ------------------------------------------------------------------ keygen


def test_keygen_writes_a_keypair_pyzmq_reads(tmp_path):
    public_file, secret_file = keygen(tmp_path / "new" / "dir", "node")
    assert (public_file.name, secret_file.name) == ("node.key", "node.key_secret")
    public, none = zmq.auth.load_certificate(public_file)
    assert none is None and len(public) == 40
    assert zmq.auth.load_certificate(secret_file)[0] == public
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError, match="not overwriting"):
        keygen(tmp_path / "new" / "dir", "node")


def test_keygen_command(tmp_path):
    command = [sys.executable, "-m", "futurefsm", "keygen", str(tmp_path), "--name", "bob"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "bob.key").exists() and (tmp_path / "bob.key_secret").exists()
    again = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert again.returncode == 1 and "not overwriting" in again.stderr


# ------------------------------------------------------------------ who may connect


def test_an_authorised_client_works(secured, keys):
    with Client(
        secured.address,
        secret_key=keys["alice"],
        server_key=keys["server_public"],
        connection_timeout=TIMEOUT,
    ) as client:
        assert client.submit(abs, -3).result(SLACK) == 3
    assert secured.stats()["handshakes_refused"] == 0


def test_a_client_with_an_unlisted_key_is_refused_at_once(secured, keys, tmp_path):
    client = Client(
        secured.address,
        secret_key=keys["mallory"],
        server_key=keys["server_public"],
        connection_timeout=REFUSED,
    )
    try:
        started = time.monotonic()
        future = client.submit(touch, str(tmp_path / "mallory-ran"))
        done, _ = cf.wait([future], timeout=SLACK)
        assert done, "a refused client's future did not end"
        elapsed = time.monotonic() - started
        with pytest.raises(
            ConnectionLostError, match=f"authentication failed at {secured.address}"
        ):
            future.result(0)
        # Later submits fail at once too: the client does not retry forever.
        with pytest.raises(ConnectionLostError, match="authentication failed"):
            client.submit(abs, -1).result(SLACK)
        print(f"refused key reported after {elapsed:.3f} s")
    finally:
        client.close()
    with Client(
        secured.address, secret_key=keys["alice"], server_key=keys["server_public"]
    ) as alice:
        run_behind(alice, tmp_path / "alice-ran")
    assert not (tmp_path / "mallory-ran").exists()
    stats = secured.stats()
    assert stats["handshakes_refused"] >= 1 and stats["tasks_received"] == 1


def test_a_wrong_server_key_is_a_clear_error_within_the_timeout(secured, keys):
    wrong = zmq.curve_keypair()[0]
    with Client(
        secured.address, secret_key=keys["alice"], server_key=wrong, connection_timeout=TIMEOUT
    ) as client:
        future = client.submit(abs, -1)
        done, _ = cf.wait([future], timeout=TIMEOUT + SLACK)
        assert done
        with pytest.raises(
            ConnectionLostError, match=f"authentication failed at {secured.address}"
        ):
            future.result(0)


def test_a_raw_unkeyed_peer_sends_nothing_that_is_decoded(secured, keys, tmp_path):
    # A pickled call from a plain DEALER, as an attacker would send it: refused in the
    # handshake, so the stub never decodes (let alone unpickles or runs) it.
    context: zmq.Context[Any] = zmq.Context()
    raw = context.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(secured.address)
    dumps = DEFAULT_SERIALIZER.dumps
    attack = Task(new_task_id(), dumps(touch), dumps(((str(tmp_path / "pwned"),), {})))
    raw.send(encode(attack))
    try:
        deadline = time.monotonic() + SLACK
        # A mechanism mismatch: refused (a protocol error) or failed (no detail),
        # depending on which side notices first.
        while turned_away(secured) == 0:
            assert time.monotonic() < deadline, "the stub never refused the raw peer"
            time.sleep(0.005)  # a polling interval, not a synchronisation
        with Client(
            secured.address, secret_key=keys["alice"], server_key=keys["server_public"]
        ) as alice:
            run_behind(alice, tmp_path / "alice-ran")
    finally:
        raw.close()
        context.term()
    assert not (tmp_path / "pwned").exists()
    stats = secured.stats()
    assert stats["tasks_received"] == 1 and stats["protocol_errors"] == 0


def test_the_embedded_scheduler_admits_only_its_own_client(tmp_path):
    with Client(workers=1) as owner:
        assert owner.engine._stub.server_key is not None  # a CurveZMQ server
        # Another local process (here: client) without the embedded keys.
        with Client(owner.address, connection_timeout=TIMEOUT) as stranger:
            future = stranger.submit(touch, str(tmp_path / "stranger-ran"))
            done, _ = cf.wait([future], timeout=TIMEOUT + SLACK)
            assert done
            with pytest.raises(ConnectionLostError, match="authentication failed"):
                future.result(0)
        # ... and one with keys of its own, that the embedded scheduler does not list.
        public, secret = zmq.curve_keypair()
        with Client(
            owner.address,
            secret_key=(public, secret),
            server_key=owner.engine._stub.server_key,
            connection_timeout=REFUSED,
        ) as keyed:
            with pytest.raises(ConnectionLostError, match="refused this client's key"):
                keyed.submit(abs, -1).result(SLACK)
        run_behind(owner, tmp_path / "owner-ran")
        assert turned_away(owner.engine._stub) >= 2
    assert not (tmp_path / "stranger-ran").exists()


def test_refusals_and_bad_frames_are_counted_and_logged_once_per_peer(secured, keys, caplog):
    caplog.set_level(logging.INFO, logger="futurefsm")
    public, secret = zmq.curve_keypair()
    for _ in range(3):  # the same stranger three times: one warning
        with Client(
            secured.address,
            secret_key=(public, secret),
            server_key=keys["server_public"],
            connection_timeout=REFUSED,
        ) as stranger:
            with pytest.raises(ConnectionLostError, match="refused this client's key"):
                stranger.submit(abs, -1).result(SLACK)
    refusals = [r for r in caplog.records if "is not listed" in r.getMessage()]
    assert len(refusals) == 1 and public.decode() in refusals[0].getMessage()
    assert secured.stats()["handshakes_refused"] >= 3

    context: zmq.Context[Any] = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    alice_public, alice_secret = zmq.auth.load_certificate(keys["alice"])
    dealer.curve_publickey, dealer.curve_secretkey = alice_public, alice_secret
    dealer.curve_serverkey = zmq.auth.load_certificate(keys["server_public"])[0]
    dealer.connect(secured.address)
    try:
        for garbage in (b"\xc1", b"\xc1\xc1", b"not msgpack"):
            dealer.send(garbage)
        deadline = time.monotonic() + SLACK
        while secured.stats()["protocol_errors"] < 3:
            assert time.monotonic() < deadline, "garbage not counted"
            time.sleep(0.005)  # a polling interval, not a synchronisation
    finally:
        dealer.close()
        context.term()
    bad = [r for r in caplog.records if "protocol error from client" in r.getMessage()]
    assert len(bad) == 1 and bad[0].levelno == logging.WARNING
    connects = [
        r for r in caplog.records if r.levelno == logging.INFO and "connected" in r.getMessage()
    ]
    assert connects, "connects are logged at INFO"


# ------------------------------------------------------------------ binds


def test_is_local():
    for address in ("tcp://127.0.0.1:5555", "tcp://localhost:1", "tcp://[::1]:2", "ipc:///x"):
        assert is_local(address), address
    for address in ("tcp://*:5555", "tcp://0.0.0.0:1", "tcp://eth0:1", "tcp://192.0.2.1:1"):
        assert not is_local(address), address


def test_an_open_bind_without_keys_is_refused_unless_insecure(keys):
    with pytest.raises(ValueError, match="futurefsm keygen"):
        SchedulerStub("tcp://*:0")
    with SchedulerStub("tcp://*:0", insecure=True) as stub:
        assert stub.bound_address.startswith("tcp://0.0.0.0:")
    with SchedulerStub(
        "tcp://*:0", secret_key=keys["server_secret"], client_keys=keys["clients"]
    ) as stub:
        assert stub.server_key is not None


def read_line(stream: Any, timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, f"no output within {timeout} s"
    return stream.readline()


def test_the_command_refuses_an_open_bind_and_prints_the_bound_address(keys, tmp_path):
    base = [sys.executable, "-m", "futurefsm", "scheduler"]
    refused = subprocess.run(
        [*base, "--address", "tcp://*:0"], capture_output=True, text=True, timeout=30
    )
    assert refused.returncode == 2
    assert "refusing to bind tcp://*:0 without keys" in refused.stderr
    assert "futurefsm keygen" in refused.stderr and "--insecure" in refused.stderr
    hint = subprocess.run(
        [*base, "--address", "127.0.0.1:1"], capture_output=True, text=True, timeout=30
    )
    # A bad address is bad input (2), checked before binding, the hint shared with Client.
    assert hint.returncode == 2 and "did you mean tcp://127.0.0.1:1?" in hint.stderr

    # Port 0: the scheduler binds a free port and prints it (a port picked here first
    # could be taken by another process before the scheduler binds it).
    command = [sys.executable, "-m", "futurefsm", "-v", "scheduler", "--address", "tcp://*:0"]
    command += ["--workers", "1", "--secret-key", str(keys["server_secret"])]
    command += ["--client-keys", str(keys["clients"])]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = read_line(process.stdout, SLACK * 2)
        bound = re.fullmatch(r"futurefsm scheduler listening on tcp://0\.0\.0\.0:(\d+)\n", line)
        assert bound and int(bound[1]) > 0, line
        address = f"tcp://127.0.0.1:{bound[1]}"
        with Client(address, secret_key=keys["alice"], server_key=keys["server_public"]) as alice:
            run_behind(alice, tmp_path / "alice-ran")
        # -v: the connect is logged at INFO on stderr.
        deadline = time.monotonic() + SLACK
        while "connected from" not in (line := read_line(process.stderr, SLACK)):
            assert time.monotonic() < deadline, "no connect logged"
        assert "INFO" in line
        process.send_signal(signal.SIGTERM)
        assert process.wait(SLACK) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


def test_keys_are_checked_when_given(keys):
    with pytest.raises(ValueError, match="client_keys: required"):
        SchedulerStub(secret_key=zmq.curve_keypair())
    with pytest.raises(ValueError, match="give both"):
        Client("tcp://127.0.0.1:1", secret_key=zmq.curve_keypair())
    with pytest.raises(ValueError, match="holds only a public key"):
        Client("tcp://127.0.0.1:1", secret_key=keys["server_public"], server_key=b"x" * 40)


def test_status_asks_a_keyed_scheduler_with_keys(secured, keys):
    from futurefsm.status import HandshakeRefused, query_status

    status = query_status(
        secured.address,
        timeout=SLACK,
        secret_key=str(keys["alice"]),
        server_key=str(keys["server_public"]),
    )
    assert status.protocol_errors == 0
    # Without keys: told apart from a dead scheduler (the handshake was refused), and
    # at once, not at the timeout.
    with pytest.raises(HandshakeRefused, match="serves CurveZMQ; pass --secret-key"):
        query_status(secured.address, timeout=60.0)
