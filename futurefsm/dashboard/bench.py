"""``python -m futurefsm.dashboard.bench``: what the live view costs ``submit()``.

A paired measurement (docs/dashboard.md, Cost): two clients on one scheduler process
whose only worker sleeps, so every future stays live; one client has a dashboard whose
page is open in headless chromium (Playwright driving the system's ``chromium``, as the
tests do). Blocks of ``block`` submits alternate between the two clients, so a burst of
load from elsewhere hits both alike, until each holds ``alive`` live futures. Printed:
CPU time of the process per submit for each, and the median of the per-pair ratios.
``--control`` gives the second client no dashboard either: the pairing's own noise.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from collections.abc import Sequence

from ..bench.e2e import _scheduler_process, _wait_sent
from ..client import Client, TaskFuture
from ..scheduler_stub import sample_tasks as tasks

__all__ = ["CHROMIUM_FLAGS", "main", "measure"]

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
"""How chromium is started here (headless, as root, with no network to talk to)."""


def _block(client: Client, futures: list[TaskFuture], size: int) -> float:
    start = time.process_time()
    for _ in range(size):
        futures.append(client.submit(tasks.noop))
    _wait_sent(futures[-1])
    return (time.process_time() - start) / size


def measure(
    *, alive: int = 100_000, pairs: int = 40, block: int = 1_000, control: bool = False
) -> tuple[float, float, list[float]]:
    """(CPU seconds per submit without a view, with the page open, per-pair ratios)."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None and not control:
        raise RuntimeError("no chromium on PATH: apt-get install -y chromium")
    with sync_playwright() as playwright, _scheduler_process(workers=1, kill=True) as address:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        plain, viewed = Client(address), Client(address, dashboard=not control)
        try:
            page = browser.new_page()
            page.goto(viewed.dashboard_link or "about:blank")
            plain.submit(tasks.sleep_then, 3600)  # the one worker sleeps: the rest stay live
            live: dict[Client, list[TaskFuture]] = {plain: [], viewed: []}
            for client, futures in live.items():
                futures += [client.submit(tasks.noop) for _ in range(alive - pairs * block)]
                _wait_sent(futures[-1])
            off, on, ratios = [], [], []
            for i in range(pairs):
                order = (plain, viewed) if i % 2 == 0 else (viewed, plain)
                spent = {client: _block(client, live[client], block) for client in order}
                off.append(spent[plain])
                on.append(spent[viewed])
                ratios.append(spent[viewed] / spent[plain])
        finally:
            plain.close()
            viewed.close()
            browser.close()
    return statistics.median(off), statistics.median(on), ratios


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``measure`` and print its figures."""
    parser = argparse.ArgumentParser(prog="python -m futurefsm.dashboard.bench")
    parser.add_argument("--alive", type=int, default=100_000, help="live futures per client")
    parser.add_argument("--pairs", type=int, default=40, help="pairs of blocks")
    parser.add_argument("--block", type=int, default=1_000, help="submits per block")
    parser.add_argument("--control", action="store_true", help="no view on either client")
    args = parser.parse_args(argv)
    off, on, ratios = measure(
        alive=args.alive, pairs=args.pairs, block=args.block, control=args.control
    )
    low, _, high = statistics.quantiles(ratios, n=4)
    what = "second plain client" if args.control else "page open"
    print(
        f"{args.pairs} pairs of {args.block:,} submits, to {args.alive:,} live futures each: "
        f"no view {off * 1e6:.2f} us, {what} {on * 1e6:.2f} us per submit (CPU); "
        f"median ratio {statistics.median(ratios):.3f} (quartiles {low:.3f}-{high:.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
