"""distributed: ``cancel()`` of a finished future turns it into a cancelled one.

Documented behaviour (``Client.cancel``: "deletes them if they have already run"), not
a bug; listed because ``concurrent.futures.Future.cancel()``, which dask's Future
mirrors, returns False on a done future and changes nothing: code written for the
stdlib that cancels "whatever is left" loses finished results.

Needs distributed and the standard library only. Exits 1 while the behaviour holds.
"""

import sys

from distributed import Client, LocalCluster


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
        future = client.submit(lambda: 42, key="finished")
        assert future.result() == 42 and future.status == "finished"
        returned = future.cancel()
        if future.cancelled():
            print(
                f"DIVERGENCE: cancel() of a finished future returned {returned!r} and "
                f"made it {future.status!r}; result() now raises "
                f"{type(_error(future)).__name__}"
            )
            return 1
        return 0


def _error(future):
    try:
        future.result(timeout=5)
    except BaseException as error:
        return error
    return None


if __name__ == "__main__":
    sys.exit(main())
