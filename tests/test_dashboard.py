"""The live view (``Client(dashboard=...)``) in a real headless browser.

Debian's ``chromium``, driven by Playwright with the system browser as its executable
(``.ci/run`` installs it; Playwright never downloads a browser here). The browser starts
once for the module. The scripted mix is the demo's (``futurefsm.demo``: results and a
cancel in every phase on the embedded scheduler) plus tasks that fail and a duplicated
result. Nothing sleeps: every wait is on the page's DOM or the client, with a deadline.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from playwright import sync_api

from futurefsm import Client
from futurefsm import demo as demo_module
from futurefsm.client.future import TaskFuture
from futurefsm.client.transport import InMemoryTransport
from futurefsm.dashboard import Counts, parse_address
from futurefsm.dashboard.bench import CHROMIUM_FLAGS
from futurefsm.dashboard.svg import diagram_svg
from futurefsm.demo import _wait_until as wait_until
from futurefsm.fsm import (
    TRANSITION_TABLE,
    CancelOutcome,
    Effect,
    FSMModel,
    FutureState,
    Trigger,
)
from futurefsm.scheduler_stub import Behaviour
from futurefsm.scheduler_stub import sample_tasks as tasks

DEADLINE = 15.0


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = os.environ.get("FUTUREFSM_CHROMIUM") or shutil.which("chromium")
    if executable is None:
        pytest.fail("no chromium on PATH: `apt-get install -y chromium` (.ci/run does)")
    with sync_api.sync_playwright() as playwright:
        # launch() gives the browser a fresh, temporary profile (--user-data-dir).
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1300, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(DEADLINE * 1000)
    yield page
    context.close()


class DashboardDemo(demo_module._Demo):
    """The demo's scripted mix on a client that serves the live view."""

    def __init__(self) -> None:
        super().__init__()
        self.client.close()
        self.client = Client(
            self.stub.address, cancel_timeout=demo_module._DEADLINE, dashboard=True
        )


@pytest.fixture(scope="module")
def mixed() -> Iterator[DashboardDemo]:
    demo = DashboardDemo()
    try:
        demo.run()
        # The demo's graph arrived without taking a plan index: count arrivals instead.
        demo.submitted = demo.stub.stats()["tasks_received"]
        failing = [demo.submit(tasks.fail, f"boom {i}") for i in range(3)]
        stale = demo.client.stats()["stale_messages"]
        duplicated = demo.submit(tasks.echo, "twice", behaviour=Behaviour(duplicate_result=True))
        cf.wait([*failing, duplicated], timeout=DEADLINE)
        wait_until(lambda: demo.client.stats()["stale_messages"] > stale, "the duplicate result")
        wait_until(lambda: not demo.client.futures, "the client to release every future")
        yield demo
    finally:
        demo.close()


def counts(page: Any, attribute: str) -> dict[str, int]:
    """``{value: data-count}`` of every element carrying ``attribute``."""
    found = page.eval_on_selector_all(
        f"[{attribute}]",
        f"els => els.map(e => [e.getAttribute('{attribute}'), e.getAttribute('data-count')])",
    )
    names = [name for name, _ in found]
    assert len(names) == len(set(names)), f"{attribute} repeated: {names}"
    return {name: int(count) for name, count in found}


def expected_states(client: Client) -> dict[str, int]:
    stats = client.stats()
    live = {s.value: 0 for s in FutureState}
    for future in list(client.futures.values()):
        live[future.state.value] += 1
    live["done"] = stats["completed"] + stats["failed"]
    live["cancelled"] = sum(stats["cancelled"].values())
    return live


def test_first_paint_has_the_clients_counts_after_a_mix(mixed: DashboardDemo, page: Any) -> None:
    client = mixed.client
    link = client.dashboard_link
    assert link is not None and urllib.parse.urlsplit(link).hostname == "127.0.0.1"
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    # The counts are in the HTML itself, before any script runs (a screenshot, a crawler).
    with urllib.request.urlopen(link, timeout=DEADLINE) as answer:
        html = answer.read().decode()
    assert f'data-state="done" data-count="{expected_states(client)["done"]}"' in html
    page.goto(link)

    stats = client.stats()
    states = counts(page, "data-state")
    assert states == expected_states(client)
    assert states["done"] == 20 + 1 + 4 + 3 + 1  # batch, trigger, gates, fails, duplicate
    outcomes = counts(page, "data-outcome")
    assert set(outcomes) == {o.value for o in CancelOutcome}
    for outcome, count in stats["cancelled"].items():
        assert outcomes[outcome] == count, outcome
    every_phase = {"before_send", "confirmed", "result_raced", "not_found", "timed_out"}
    assert all(outcomes[o] >= 1 for o in every_phase | {"by_scheduler"}), outcomes
    # A refusal is not a cancel (stats() has no "failed"): the demo refused one.
    refused = [row.future for row in mixed.rows if row.label == "cancel refused"]
    assert refused[0].cancel_outcome is CancelOutcome.FAILED
    assert outcomes["failed"] == len(refused) == 1

    # The transitions come from the futures' histories, the states from stats(): two
    # records of the same futures, which must agree.
    cells = counts(page, "data-transition")
    into = dict.fromkeys((s.value for s in FutureState), 0)
    for (source, trigger), cell in TRANSITION_TABLE.items():
        if cell.effect is not Effect.STALE and cell.dest is not source:
            into[cell.dest.value] += cells[f"{source.value}:{trigger.value}"]
    assert into["done"] == states["done"]
    assert into["cancelled"] == states["cancelled"]
    assert cells["cancel_requested:recv_result"] == outcomes["result_raced"]
    assert cells["pending:sent"] == stats["submitted"] - outcomes["before_send"]
    stale = counts(page, "data-stale")
    assert stale["released"] == stats["stale_messages"] >= 1

    # The latest ended futures link to their pages; nothing came from anywhere else.
    assert page.locator(".latest-ended tr[data-task] a").count() > 0
    origin = urllib.parse.urlsplit(link).netloc
    assert all(urllib.parse.urlsplit(url).netloc == origin for url in requests), requests
    paths = {urllib.parse.urlsplit(url).path for url in requests}
    assert paths >= {"/", "/static/dashboard.css", "/static/dashboard.js"}
    if screenshot := os.environ.get("FUTUREFSM_DASHBOARD_SCREENSHOT"):
        page.screenshot(path=screenshot, full_page=True)  # docs/dashboard.png


def _count_is(page: Any, selector: str, value: int) -> None:
    """Wait (deadline: the page's default timeout) until ``selector``'s data-count is
    ``value``; the live part is swapped in by the page's script, so look it up anew."""
    page.wait_for_function(
        "([selector, value]) => {"
        " const element = document.querySelector(selector);"
        " return element !== null && element.getAttribute('data-count') === value; }",
        arg=[selector, str(value)],
        polling="raf",
    )


def test_a_later_change_shows_without_a_reload(page: Any) -> None:
    with Client(workers=2, dashboard=True) as client:
        try:
            page.goto(client.dashboard_link)
            assert counts(page, "data-state")["running"] == 0
            page.evaluate("window.notReloaded = true")
            future = client.submit(tasks.gate_wait, "dashboard-later", 7)
            _count_is(page, '[data-state="running"]', 1)
            _count_is(page, '[data-transition="pending:sent"]', 1)

            # Its own page shows it running, then done, without a reload either.
            future_page = page.context.new_page()
            future_page.goto(f"{client.dashboard_link}future/{future.task_id.hex()}")
            future_page.evaluate("window.notReloaded = true")
            assert future_page.locator("[data-future-state='running']").count() == 1

            tasks.open_gate("dashboard-later")
            assert future.result(DEADLINE) == 7
            _count_is(page, '[data-state="done"]', 1)
            _count_is(page, '[data-state="running"]', 0)
            future_page.wait_for_selector("p[data-future-state='done']")
            assert page.evaluate("window.notReloaded") is True
            assert future_page.evaluate("window.notReloaded") is True
        finally:
            tasks.reset_gates()


def test_a_futures_page_draws_its_path(mixed: DashboardDemo, page: Any) -> None:
    raced = mixed.raced  # pending -> running -> cancel_requested -> cancelled
    history = raced.history
    assert [entry.dest for entry in history] == [
        FutureState.RUNNING,
        FutureState.CANCEL_REQUESTED,
        FutureState.CANCELLED,
    ]
    page.goto(f"{mixed.client.dashboard_link}future/{raced.task_id.hex()}")
    svg = page.locator("svg.diagram")
    visited = svg.locator("g.state.visited text.name, g.state.last text.name").all_text_contents()
    assert sorted(visited) == sorted({e.source.value for e in history} | {FutureState.CANCELLED})
    assert svg.locator("g.state.last text.name").all_text_contents() == ["cancelled"]
    assert svg.locator("path.edge.taken").count() == len(history)
    badges = svg.locator("g.badge.taken text").all_text_contents()
    assert sorted(badges) == [f"({n})" for n in range(1, len(history) + 1)]
    rows = page.locator("table.history tr[data-step]")
    assert rows.count() == len(history)
    for n, entry in enumerate(history):
        cells = rows.nth(n).locator("td").all_text_contents()
        assert cells[2:] == [entry.trigger.value, entry.source.value, entry.dest.value]
    assert "cancelled" in page.locator("pre").text_content()  # path_diagram's Mermaid

    # A future the client no longer holds: a clear 404, not an error.
    answer = page.goto(f"{mixed.client.dashboard_link}future/{'00' * 16}")
    assert answer is not None and answer.status == 404
    assert page.locator("[data-missing]").count() == 1


def test_api_snapshot_is_json_with_the_same_counts(mixed: DashboardDemo) -> None:
    client = mixed.client
    with urllib.request.urlopen(client.dashboard_link + "api/snapshot", timeout=DEADLINE) as r:
        snapshot = json.load(r)
    assert snapshot["states"] == expected_states(client)
    assert snapshot["stats"]["cancelled"] == client.stats()["cancelled"]
    task = mixed.raced.task_id.hex()
    with urllib.request.urlopen(f"{client.dashboard_link}api/future/{task}", timeout=5) as r:
        record = json.load(r)
    assert record["state"] == "cancelled" and record["cancel_outcome"] == "result_raced"
    assert [step["trigger"] for step in record["history"]] == [
        entry.trigger.value for entry in mixed.raced.history
    ]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (True, ("127.0.0.1", 0)),
        (8787, ("127.0.0.1", 8787)),
        ("127.0.0.1:8787", ("127.0.0.1", 8787)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("[::1]:9000", ("::1", 9000)),
    ],
)
def test_dashboard_addresses(given: Any, expected: tuple[str, int]) -> None:
    assert parse_address(given) == expected


@pytest.mark.parametrize("bad", ["8787", "localhost", "127.0.0.1:http", ":80", "h:70000", 70000])
def test_a_bad_dashboard_address_is_refused_naming_it(bad: Any) -> None:
    with pytest.raises(ValueError, match="dashboard") as error:
        parse_address(bad)
    assert repr(bad) in str(error.value) or str(bad) in str(error.value)


def test_a_client_that_cannot_serve_its_dashboard_is_not_left_open() -> None:
    with Client(workers=1, dashboard=True) as first:
        taken = urllib.parse.urlsplit(first.dashboard_link).netloc
        with pytest.raises(OSError, match=f"dashboard: cannot listen on {taken}"):
            Client(workers=1, dashboard=taken)
        assert first.submit(tasks.add, 1, 2).result(DEADLINE) == 3


def test_no_dashboard_by_default_and_it_closes_with_the_client(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with Client(workers=1) as client:
        assert client.dashboard_link is None
    with caplog.at_level(logging.INFO, logger="futurefsm.dashboard"):
        client = Client(workers=1, dashboard=True)
    with client:
        link = client.dashboard_link
        assert link is not None and f"dashboard at {link}" in caplog.text
        with urllib.request.urlopen(link, timeout=DEADLINE) as answer:
            assert answer.status == 200
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(link, timeout=DEADLINE)


ACTIONS: dict[Trigger, Callable[[Any], object]] = {
    Trigger.SENT: lambda future: future.sent(),
    Trigger.USER_CANCEL: lambda future: future.cancel(wait=False),
    Trigger.RECV_RESULT: lambda future: future.recv_result(1),
    Trigger.RECV_CONFIRM_CANCELED: lambda future: future.recv_cancel_confirm("canceled"),
    Trigger.RECV_CONFIRM_NOT_FOUND: lambda future: future.recv_cancel_confirm("not_found"),
    Trigger.RECV_CONFIRM_CANCEL_FAILED: lambda f: f.recv_cancel_confirm("cancel_failed"),
    Trigger.CANCEL_TIMED_OUT: lambda future: future.cancel_timed_out(),
    Trigger.CONNECTION_LOST: lambda future: future.connection_lost(),
}


@settings(max_examples=50)
@given(st.lists(st.lists(st.sampled_from(list(Trigger)), max_size=12), max_size=20))
def test_the_counted_cells_are_the_cells_the_futures_took(walks: list[list[Trigger]]) -> None:
    # The view counts each cell as a future takes it (TaskFuture._on_fire): the counts
    # must be what the futures' histories say, stale self-loops included.
    counts = Counts(client=None)
    transport = InMemoryTransport()
    futures = []
    for walk in walks:
        future = counts.future_class(os.urandom(16), transport)
        for trigger in walk:
            ACTIONS[trigger](future)
        futures.append(future)
    assert set(ACTIONS) == set(Trigger)
    expected = Counter((entry.source, entry.trigger) for f in futures for entry in f.history)
    assert {key: n for key, n in counts.cell_counts().items() if n} == dict(expected)
    # A plain TaskFuture is not counted (no dashboard: the hook is None).
    plain = transport.create_future()
    plain.sent()
    assert type(plain).__mro__[0] is TaskFuture and TaskFuture._on_fire is None
    assert sum(counts.cell_counts().values()) == sum(expected.values())


def test_the_view_is_the_clients_own_on_dask_too() -> None:
    # The view reads only the client's records, so another engine needs nothing more.
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=False,
        dashboard_address="127.0.0.1:0",
        worker_dashboard_address="127.0.0.1:0",
    ) as cluster:
        with Client(cluster.scheduler_address, engine="dask", dashboard=True) as client:
            assert client.submit(tasks.add, 1, 2).result(DEADLINE) == 3
            failing = client.submit(tasks.fail, "on dask")
            assert isinstance(failing.exception(DEADLINE), ValueError)
            # Dask's cancel releases it; its thread sleeps on, and closing the cluster
            # waits for it: short. (Should it finish first, it is still cancelled.)
            slow = client.submit(tasks.sleep_then, 2)
            assert slow.cancel(timeout=DEADLINE)
            wait_until(lambda: not client.futures, "the client to release every future")
            with urllib.request.urlopen(f"{client.dashboard_link}api/snapshot", timeout=5) as r:
                snapshot = json.load(r)
            assert snapshot["engine"] == "DaskEngine"
            assert snapshot["states"] == expected_states(client)
            assert snapshot["states"]["done"] == 2 and snapshot["states"]["cancelled"] == 1
            assert snapshot["outcomes"] == {
                **dict.fromkeys((o.value for o in CancelOutcome), 0),
                **client.stats()["cancelled"],
            }


def test_a_path_with_a_stale_step_marks_it_on_its_state() -> None:
    model = FSMModel()
    for trigger in (Trigger.SENT, Trigger.RECV_CONFIRM_NOT_FOUND, Trigger.RECV_RESULT):
        model.fire(trigger)
    svg = diagram_svg(path=model.history)
    boxes = [part for part in svg.split('<g class="state') if ">running<" in part]
    running = boxes[0].split("</g>")[0]
    assert ">running<" in running and "stale (2)" in running
    assert svg.count('class="badge taken"') == 2  # steps 1 and 3: the edges taken
