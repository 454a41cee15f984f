"""distributed: ``Future.result(timeout=0)`` of a future that is done raises TimeoutError.

``Future.result(timeout)`` is ``client.sync(self._result, callback_timeout=timeout)``,
and ``distributed.utils.sync`` schedules the coroutine on the client's event loop and
then waits ``timeout`` seconds for the loop to run it. With ``timeout=0`` (or any
timeout shorter than one trip through the loop) that wait fails even though the
future is done, so a finished, erred or cancelled future raises ``TimeoutError``
instead of returning its result, raising its exception or raising CancelledError.
``concurrent.futures.Future.result(timeout=0)``, which dask's Future mirrors, never
times out once ``done()`` is True; code that polls with ``result(timeout=0)`` after
``done()`` (a common pattern) breaks.

Needs distributed and the standard library only (an in-process LocalCluster; its HTTP
servers on loopback). Exits 1 (and says how often it failed) while the bug is there, 0 once fixed.
"""

import sys
import time

from distributed import Client, LocalCluster

TRIES = 50


def main():
    with (
        LocalCluster(
            n_workers=1,
            processes=False,
            dashboard_address="127.0.0.1:0",  # None still serves HTTP on 0.0.0.0
            worker_dashboard_address="127.0.0.1:0",
        ) as cluster,
        Client(cluster) as client,
    ):
        finished = client.submit(lambda: 42, key="finished")
        cancelled = client.submit(time.sleep, 1, key="cancelled")
        assert finished.result() == 42
        cancelled.cancel()
        failures = {}
        for name, future in (("finished", finished), ("cancelled", cancelled)):
            assert future.done(), name
            for _ in range(TRIES):
                try:
                    future.result(timeout=0)
                except TimeoutError as error:
                    count, _ = failures.get(name, (0, None))
                    failures[name] = (count + 1, error)
                except Exception:  # CancelledError for the cancelled one: right
                    pass
        for name, (count, error) in failures.items():
            print(
                f"BUG: done() is True, yet result(timeout=0) of the {name} future "
                f"raised {error!r} in {count} of {TRIES} calls"
            )
        return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
