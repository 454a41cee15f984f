"""Key files: errors that say which file and what to do, options named as typed, and a
layout in which no client's secret key lands where the scheduler trusts (issue 24)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from futurefsm import Client
from futurefsm.cli import main as cli_main
from futurefsm.keys import keygen, load_client_keys
from futurefsm.scheduler_stub import SchedulerStub


def test_a_missing_key_file_says_which_and_how_to_make_one(tmp_path: Path) -> None:
    keygen(tmp_path / "keys", "scheduler")
    missing = tmp_path / "alice.key_secret"
    with pytest.raises(ValueError) as raised:
        Client(
            "tcp://127.0.0.1:5555", secret_key=missing, server_key=tmp_path / "keys/scheduler.key"
        )
    message = str(raised.value)
    assert str(missing) in message and "no such file" in message
    assert "futurefsm keygen" in message and "Invalid certificate file" not in message
    with pytest.raises(ValueError, match=r"server_key .*no such file.*futurefsm keygen"):
        Client(
            "tcp://127.0.0.1:5555",
            secret_key=tmp_path / "keys/scheduler.key_secret",
            server_key=tmp_path / "nope.key",
        )


def test_the_scheduler_command_names_the_options_as_typed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keygen(tmp_path / "keys", "scheduler")
    secret = str(tmp_path / "keys/scheduler.key_secret")
    assert cli_main(["scheduler", "--secret-key", secret]) == 2
    err = capsys.readouterr().err
    assert "--client-keys" in err and "client_keys" not in err
    assert cli_main(["scheduler", "--secret-key", secret, "--client-keys", "nowhere"]) == 2
    err = capsys.readouterr().err
    assert "--client-keys 'nowhere' does not exist" in err and "client_keys" not in err
    missing = str(tmp_path / "gone.key_secret")
    assert cli_main(["scheduler", "--secret-key", missing, "--client-keys", "x"]) == 2
    err = capsys.readouterr().err
    assert f"--secret-key '{missing}': no such file" in err and "futurefsm keygen" in err


def test_keygen_keeps_client_secrets_out_of_the_trusted_directory(tmp_path: Path) -> None:
    # The README's commands, run as written (cwd = a fresh directory).
    for argv in (
        ["keygen", "keys", "--name", "scheduler"],
        ["keygen", "alice", "--name", "alice", "--public-to", "keys/clients"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "futurefsm", *argv],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    trusted = tmp_path / "keys/clients"
    assert sorted(path.name for path in trusted.iterdir()) == ["alice.key"]
    assert (tmp_path / "alice/alice.key_secret").is_file()
    with SchedulerStub(
        workers=1, secret_key=tmp_path / "keys/scheduler.key_secret", client_keys=trusted
    ) as stub:
        with Client(
            stub.address,
            secret_key=tmp_path / "alice/alice.key_secret",
            server_key=tmp_path / "keys/scheduler.key",
        ) as client:
            assert client.submit(abs, -3).result(timeout=60) == 3
    with pytest.raises(ValueError, match="public keys only"):
        keygen(trusted, "bob", public_to=trusted)


def test_a_trusted_directory_holding_a_secret_key_is_refused(tmp_path: Path) -> None:
    # The layout the README used to show: a client's keypair made in the trusted dir.
    keygen(tmp_path / "keys/clients", "alice")
    with pytest.raises(ValueError, match=r"holds secret keys \(alice.key_secret\)"):
        load_client_keys(tmp_path / "keys/clients")
    with pytest.raises(ValueError, match="--public-to"):
        load_client_keys(tmp_path / "keys/clients", "--client-keys")
