"""The engine seam: names, errors, and what ``import futurefsm`` does not import."""

from __future__ import annotations

import subprocess
import sys

import pytest

from futurefsm import Client
from futurefsm.engines import ENGINES, Engine, get_engine
from futurefsm.engines.futurefsm import FutureFSMEngine


def test_the_default_engine_is_our_own_scheduler():
    assert get_engine("futurefsm") is FutureFSMEngine
    with Client(workers=1) as client:
        assert isinstance(client.engine, FutureFSMEngine)
        assert client.submit(abs, -3).result(timeout=10) == 3


def test_an_unknown_engine_is_an_error_listing_the_known_ones():
    with pytest.raises(ValueError) as error:
        get_engine("ray")
    message = str(error.value)
    assert "'ray'" in message
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
