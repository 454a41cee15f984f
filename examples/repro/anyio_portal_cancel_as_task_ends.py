"""anyio BlockingPortal: cancel() as the task ends logs an AttributeError.

``BlockingPortal._call_func`` adds a done-callback to the future it returns; on a
cancelled future that callback asks the event loop to run ``scope.cancel``, reading
``scope`` from the enclosing frame. ``_call_func`` sets ``scope = None`` in its
``finally`` once the task is over. ``Future.cancel()`` marks the future cancelled and
*then* runs the callbacks, outside the future's lock, on the caller's thread: if the
task ends in between (its ``set_running_or_notify_cancel()`` sees the cancel, then
``finally`` clears ``scope``), the callback reads ``None`` and raises
``AttributeError: 'NoneType' object has no attribute 'cancel'``, which
concurrent.futures logs as "exception calling callback".

The cancelling thread is held here, by a trace function, at the start of anyio's
callback until the task has ended; without it the window is a few bytecodes wide, as
in any program that cancels a portal future just as its task finishes.

Needs anyio and the standard library only. Exits 1 (and prints the logged error)
while the bug is there, 0 once fixed.
"""

import concurrent.futures as cf
import logging
import sys
import threading

import anyio
from anyio.from_thread import start_blocking_portal

logged = []


class Collect(logging.Handler):
    def emit(self, record):
        logged.append(record)


logging.getLogger("concurrent.futures").addHandler(Collect())
logging.getLogger("concurrent.futures").propagate = False
in_callback, go = threading.Event(), threading.Event()


def hold_in_anyios_callback(frame, event, arg):
    if (
        event == "call"
        and frame.f_code.co_qualname == "BlockingPortal._call_func.<locals>.callback"
    ):
        in_callback.set()  # the future is already cancelled; scope not read yet
        go.wait(10)
    return None


with start_blocking_portal() as portal:
    event = portal.call(anyio.Event)
    future = portal.start_task_soon(event.wait)
    portal.call(lambda: None)  # the task has started and waits

    def cancel():
        sys.settrace(hold_in_anyios_callback)  # this thread only
        future.cancel()

    canceller = threading.Thread(target=cancel)
    canceller.start()
    assert in_callback.wait(10), "anyio's done-callback never ran"
    portal.call(event.set)  # the task ends: it sees the cancel, then clears scope
    cf.wait([future], timeout=10)
    portal.call(lambda: None)  # _call_func has run its finally
    go.set()
    canceller.join(10)

errors = [r for r in logged if r.exc_info and isinstance(r.exc_info[1], AttributeError)]
for record in errors:
    print(f"BUG: {record.getMessage()}: {record.exc_info[1]!r}")
sys.exit(1 if errors else 0)
