"""What a Dask, Ray or Scaler user types: ``client.gather``, ``future.key``,
``futurefsm.wait`` / ``futurefsm.as_completed`` (issue 24)."""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Iterator

import pytest

import futurefsm
from futurefsm import Client, TaskFailedError


def fail(message: str) -> None:
    raise ValueError(message)


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with Client(workers=2) as client:
        yield client


def test_gather_keeps_the_shape(client: Client) -> None:
    futures = [client.submit(pow, 2, n) for n in range(4)]
    assert client.gather(futures) == [1, 2, 4, 8]
    one = client.submit(abs, -5)
    nested = {"a": futures[1], "b": (one, [futures[3], "plain"]), "c": 7}
    assert client.gather(nested) == {"a": 2, "b": (5, [8, "plain"]), "c": 7}
    assert client.gather(one) == 5
    assert list(client.gather(iter(futures[:2]))) == [1, 2]


def test_gather_errors_raise_skip_or_return(client: Client) -> None:
    good = client.submit(abs, -1)
    bad = client.submit(fail, "boom")
    cancelled = cf.Future()  # any concurrent.futures.Future gathers the same way
    cancelled.cancel()
    cancelled.set_running_or_notify_cancel()  # as an executor does: now done
    with pytest.raises((ValueError, TaskFailedError), match="boom"):
        client.gather([good, bad])
    assert client.gather([good, bad, cancelled], errors="skip") == [1]
    assert client.gather({"g": good, "b": bad}, errors="skip") == {"g": 1}
    value, error, stopped = client.gather([good, bad, cancelled], errors="return")
    assert value == 1 and "boom" in str(error) and isinstance(stopped, cf.CancelledError)
    with pytest.raises(cf.CancelledError):
        client.gather([cancelled])
    with pytest.raises(ValueError, match="errors: expected one of 'raise', 'skip', 'return'"):
        client.gather([good], errors="ignore")  # type: ignore[arg-type]


def test_gather_raises_a_failure_without_waiting_for_the_rest(client: Client) -> None:
    never = cf.Future()  # would keep an ALL_COMPLETED wait forever
    bad = client.submit(fail, "early")
    with pytest.raises((ValueError, TaskFailedError), match="early"):
        client.gather([never, bad])
    with pytest.raises(TimeoutError, match="1 of 1 futures not done"):
        client.gather([never], timeout=0.05)


def test_future_key_is_the_task_id_or_the_graph_key(client: Client) -> None:
    future = client.submit(abs, -2)
    assert future.key == future.task_id.hex()
    graph = client.submit_graph({"x": (abs, -3), ("y", 0): (pow, "x", 2)})
    assert {key: member.key for key, member in graph.items()} == {"x": "x", ("y", 0): ("y", 0)}
    assert graph[("y", 0)].result(timeout=30) == 9


def test_wait_and_as_completed_are_the_stdlib_ones(client: Client) -> None:
    assert futurefsm.wait is cf.wait and futurefsm.as_completed is cf.as_completed
    futures = [client.submit(abs, -n) for n in range(5)]
    done, not_done = futurefsm.wait(futures, return_when=futurefsm.ALL_COMPLETED)
    assert done == set(futures) and not not_done
    assert sorted(f.result() for f in futurefsm.as_completed(futures)) == [0, 1, 2, 3, 4]
