"""pebble ProcessPool: cancel() racing a result kills the pool's message thread.

``TaskManager.task_done`` (run by the pool's message-manager thread when a worker's
result arrives) checks ``task.future.cancelled()`` and then calls
``task.future.set_result(...)`` without holding the future's lock. A ProcessFuture
can be cancelled while RUNNING, so a user's ``cancel()`` between the two makes
``set_result`` raise ``InvalidStateError``; ``message_manager_loop`` only catches
``BrokenProcessPool``, so the thread dies. From then on no result is ever delivered:
every other outstanding future waits forever, and ``schedule()`` raises "Unexpected
error within the Pool".

The ``cancel()`` lands in that window here on purpose: a trace function holds the
message thread at its call of ``set_result`` (after the check) until the main thread
has cancelled. Without it the window is a few bytecodes wide.

Needs pebble and the standard library only. Exits 1 (and says why) while the bug is
there, 0 once fixed.
"""

import concurrent.futures as cf
import sys
import threading
import time

from pebble import ProcessPool

checked, go = threading.Event(), threading.Event()
thread_errors = []


def quick():
    return "quick"


def slow():
    time.sleep(1)
    return "slow"


def hold_at_set_result(frame, event, arg):
    if event == "call" and frame.f_code is cf.Future.set_result.__code__:
        if frame.f_locals["result"] == "quick":
            checked.set()  # task_done saw the future not cancelled
            go.wait(10)
    return None


def main():
    threading.settrace(hold_at_set_result)  # pebble's threads start after this
    threading.excepthook = lambda args: thread_errors.append(args.exc_value)
    pool = ProcessPool(max_workers=2)
    other = pool.schedule(slow)
    future = pool.schedule(quick)
    assert checked.wait(30), "the quick task's result never arrived"
    threading.settrace(None)
    cancelled = future.cancel()
    go.set()

    problems = []
    try:
        other.result(timeout=4)
    except cf.TimeoutError:
        problems.append("another task's result() never returns (its result was never delivered)")
    if thread_errors:
        problems.append(
            f"cancel() returned {cancelled}; the pool's thread died of {thread_errors[0]!r}"
        )
    try:
        pool.schedule(quick)
    except RuntimeError as error:
        problems.append(f"the pool is broken for good: schedule() raises {error!r}")
    pool.stop()
    pool.join()
    for problem in problems:
        print("BUG:", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
