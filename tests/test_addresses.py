"""Addresses checked before libzmq sees them, with the fix in the error (issue 24)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from futurefsm import Client
from futurefsm.addresses import check_address


@pytest.mark.parametrize(
    ("address", "complaint"),
    [
        ("127.0.0.1:5555", "did you mean tcp://127.0.0.1:5555?"),
        ("tpc://127.0.0.1:5555", "did you mean tcp://127.0.0.1:5555?"),
        ("udp://127.0.0.1:5555", "known: tcp, ipc, inproc"),
        ("tcp://127.0.0.1:99999", "port 99999 is out of range"),
        ("tcp://127.0.0.1:http", "is not a number"),
        ("tcp://127.0.0.1", "expected HOST:PORT, e.g. tcp://127.0.0.1:5555"),
        ("tcp://no-such-host.invalid:5555", "the host 'no-such-host.invalid' does not resolve"),
    ],
)
def test_a_bad_client_address_says_what_to_type(address: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=f"address '{address}'.*{_escape(complaint)}"):
        check_address(address)
    # Client raises the same at once (it raised raw ZMQErrors, or waited for a
    # connection to an unresolvable host and then said no scheduler answered).
    with pytest.raises(ValueError, match=_escape(complaint)):
        Client(address, connection_timeout=60)


def _escape(text: str) -> str:
    import re

    return re.escape(text)


@pytest.mark.parametrize(
    ("engine", "address", "complaint"),
    [
        ("scaler", "127.0.0.1:2345", "did you mean tcp://127.0.0.1:2345?"),
        ("scaler", "tcp://127.0.0.1:99999", "port 99999 is out of range"),
        ("dask", "tpc://127.0.0.1:8786", "did you mean tcp://127.0.0.1:8786?"),
        ("dask", "127.0.0.1:99999", "port 99999 is out of range"),
        ("dask", "tcp://no-such-host.invalid:8786", "'no-such-host.invalid' does not resolve"),
        ("ray", "127.0.0.1:70000", "port 70000 is out of range"),
        ("ray", "no-such-host.invalid:6379", "'no-such-host.invalid' does not resolve"),
    ],
)
def test_other_engines_check_their_addresses_before_connecting(
    engine: str, address: str, complaint: str
) -> None:
    # Each raised later and less clearly (Dask waited for its connect timeout, Ray
    # for its GCS probe's deadline, Scaler passed the address to libzmq).
    pytest.importorskip({"scaler": "scaler", "dask": "distributed", "ray": "ray"}[engine])
    with pytest.raises(ValueError, match=_escape(complaint)):
        Client(address, engine=engine, connection_timeout=60)


@pytest.mark.parametrize(
    "address", ["tcp://127.0.0.1:5555", "tcp://localhost:1", "tcp://[::1]:5555", "ipc:///tmp/x"]
)
def test_good_addresses_pass_unchanged(address: str) -> None:
    assert check_address(address) == address


@pytest.mark.parametrize("address", ["tcp://*:0", "tcp://127.0.0.1:*", "tcp://eth0:5555"])
def test_bind_addresses_may_ask_for_any_port_or_name_an_interface(address: str) -> None:
    assert check_address(address, bind=True) == address


def test_the_scheduler_refuses_a_port_out_of_range_instead_of_binding_another() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "futurefsm", "scheduler", "--address", "tcp://127.0.0.1:99999"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout
    assert "--address 'tcp://127.0.0.1:99999': port 99999 is out of range" in done.stderr
    assert "listening" not in done.stdout
