"""pebble ThreadPool: a future cancelled after a worker took its task off the queue.

``get_next_task`` checks ``task.future.cancelled()`` and yields the task;
``execute_next_task`` then calls ``task.set_running_or_notify_cancel()`` and ignores
its answer (False: the future was cancelled meanwhile). So the cancelled task runs
anyway, ``set_result`` raises ``InvalidStateError`` in the worker thread, the worker
dies before ``queue.task_done()``, and ``pool.close(); pool.join()`` waits forever.

The user's ``cancel()`` lands in that window here on purpose: a trace function holds
the worker at the call of ``execute_next_task`` (after the check) until the main
thread has cancelled. Without it the window is a few bytecodes wide, as in any
program that cancels a task just as a worker picks it up.

Needs pebble and the standard library only. Exits 1 (and says why) while the bug is
there, 0 once fixed.
"""

import concurrent.futures as cf
import sys
import threading

from pebble import ThreadPool
from pebble.pool import thread as pebble_thread

taken, go = threading.Event(), threading.Event()
worker_errors = []
ran = []


def hold_after_the_check(frame, event, arg):
    if event == "call" and frame.f_code is pebble_thread.execute_next_task.__code__:
        taken.set()  # get_next_task saw the future not cancelled, and yielded it
        go.wait(10)
    return None


threading.settrace(hold_after_the_check)  # pebble's threads start after this
threading.excepthook = lambda args: worker_errors.append(args.exc_value)

pool = ThreadPool(max_workers=1)
future = pool.schedule(lambda: ran.append("the task ran") or 42)
assert taken.wait(10), "the worker never took the task"
threading.settrace(None)
cancelled = future.cancel()
go.set()

problems = []
pool.close()
try:
    pool.join(timeout=1)
except cf.TimeoutError as error:
    problems.append(f"pool.join() never returns: {error!r} (task_done() was never called)")
if cancelled and ran:
    problems.append(f"cancel() returned True, yet {ran[0]}")
if worker_errors:
    problems.append(f"the worker thread died of {worker_errors[0]!r}")
for problem in problems:
    print("BUG:", problem)
sys.exit(1 if problems else 0)
