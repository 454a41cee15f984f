"""TaskFuture, the concurrent.futures adapter, over the in-memory transport."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import logging
import threading
import time
import weakref
from concurrent.futures import _base

import pytest

from futurefsm import CancelOutcome, ConnectionLostError, FutureState, TaskFuture, Trigger
from futurefsm.client import InMemoryTransport

S = FutureState
DEADLINE = 10.0  # seconds any test waits for something that should happen at once


@pytest.fixture
def transport():
    return InMemoryTransport(cancel_timeout=DEADLINE)


def running(transport: InMemoryTransport) -> TaskFuture:
    future = transport.create_future()
    assert transport.send_task(future)
    return future


def in_thread(fn, *args, **kwargs):
    """Run fn in a thread; return a stdlib future of its outcome."""
    outcome: cf.Future = cf.Future()

    def run():
        try:
            outcome.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            outcome.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return outcome


# ------------------------------------------------------------------ plain lifecycle


def test_result_lifecycle(transport):
    future = transport.create_future()
    assert (future.state, future.running(), future.done(), future._state) == (
        S.PENDING,
        False,
        False,
        _base.PENDING,
    )
    transport.send_task(future)
    assert (future.state, future.running(), future.done()) == (S.RUNNING, True, False)
    assert future._state == _base.RUNNING
    future.recv_result(42)
    assert (future.state, future.running(), future.done()) == (S.DONE, False, True)
    assert future._state == _base.FINISHED
    assert future.result(timeout=0) == 42
    assert future.exception(timeout=0) is None
    assert future.cancelled() is False
    assert future.cancel_outcome is None
    assert [entry.trigger for entry in future.history] == [Trigger.SENT, Trigger.RECV_RESULT]
    assert [(entry.source, entry.dest) for entry in future.history] == [
        (S.PENDING, S.RUNNING),
        (S.RUNNING, S.DONE),
    ]


def test_task_exception_is_raised_by_result(transport):
    future = running(transport)
    error = ValueError("boom")
    future.recv_result(exception=error)
    assert future.exception(timeout=0) is error
    with pytest.raises(ValueError, match="boom"):
        future.result(timeout=0)


def test_result_timeout(transport):
    future = running(transport)
    # concurrent.futures.TimeoutError: the builtin one only from Python 3.11 on.
    with pytest.raises(cf.TimeoutError):
        future.result(timeout=0.01)


def test_duplicate_and_late_messages_are_stale(transport):
    future = running(transport)
    future.recv_result(1)
    for cell in (
        future.recv_result(2),
        future.recv_cancel_confirm("canceled"),
        future.cancel_timed_out(),
        future.connection_lost(),
        future.sent(),
    ):
        assert cell.effect.name == "STALE"
    assert future.result() == 1
    assert future.state is S.DONE


def test_unknown_confirm_kind_is_a_clear_error(transport):
    future = running(transport)
    with pytest.raises(ValueError, match="unknown cancel confirm kind 'maybe'"):
        future.recv_cancel_confirm("maybe")
    assert future.state is S.RUNNING


def test_stdlib_setters_are_refused(transport):
    future = running(transport)
    for call in (
        future.set_running_or_notify_cancel,
        lambda: future.set_result(1),
        lambda: future.set_exception(ValueError()),
    ):
        with pytest.raises(RuntimeError, match="driven by its transport"):
            call()
    assert future.state is S.RUNNING


# ------------------------------------------------------------------ seed scenarios


def test_cancel_pending_sends_nothing(transport):
    future = transport.create_future()
    assert future.cancel() is True
    assert future.cancel_outcome is CancelOutcome.BEFORE_SEND
    assert future.cancelled() and future.done()
    assert future._state == _base.CANCELLED_AND_NOTIFIED
    assert transport.send_task(future) is False
    assert transport.cancels_sent == [] and transport.tasks_sent == []
    with pytest.raises(cf.CancelledError):
        future.result(timeout=0)


def test_cancel_confirmed(transport):
    future = running(transport)
    outcome = in_thread(future.cancel)
    assert transport.wait_for_cancels(1, DEADLINE)
    assert future.state is S.CANCEL_REQUESTED
    assert future.running() and not future.done()
    future.recv_cancel_confirm("canceled")
    assert outcome.result(DEADLINE) is True
    assert future.cancel_outcome is CancelOutcome.CONFIRMED
    assert future.cancelled()
    assert transport.cancels_sent == [future.task_id]


def test_result_racing_the_cancel_ends_cancelled(transport):
    future = running(transport)
    outcome = in_thread(future.cancel)
    assert transport.wait_for_cancels(1, DEADLINE)
    future.recv_result("too late")
    assert outcome.result(DEADLINE) is True
    assert future.cancel_outcome is CancelOutcome.RESULT_RACED
    with pytest.raises(cf.CancelledError):
        future.result(timeout=0)
    # The confirm that follows the raced result is stale.
    assert future.recv_cancel_confirm("canceled").effect.name == "STALE"
    assert future.cancel_outcome is CancelOutcome.RESULT_RACED


def test_no_answer_within_timeout_returns_true_timed_out(transport):
    future = running(transport)
    assert future.cancel(timeout=0.05) is True
    assert future.cancel_outcome is CancelOutcome.TIMED_OUT
    assert future.cancelled()
    # A late confirm changes nothing.
    assert future.recv_cancel_confirm("canceled").effect.name == "STALE"


def test_refused_cancel_returns_false_and_result_still_arrives(transport):
    future = running(transport)
    outcome = in_thread(future.cancel)
    assert transport.wait_for_cancels(1, DEADLINE)
    future.recv_cancel_confirm("cancel_failed")
    assert outcome.result(DEADLINE) is False
    assert future.state is S.RUNNING
    assert future.cancel_outcome is CancelOutcome.FAILED
    assert future.cancelled() is False
    future.recv_result("still here")
    assert future.result(timeout=0) == "still here"


def test_cancel_not_found(transport):
    future = running(transport)
    outcome = in_thread(future.cancel)
    assert transport.wait_for_cancels(1, DEADLINE)
    future.recv_cancel_confirm("not_found")
    assert outcome.result(DEADLINE) is True
    assert future.cancel_outcome is CancelOutcome.NOT_FOUND


def test_cancel_on_finished_future_returns_false(transport):
    future = running(transport)
    future.recv_result(1)
    assert future.cancel() is False
    assert future.cancel(wait=False) is False
    assert transport.cancels_sent == []
    assert future.result() == 1


def test_cancel_on_cancelled_future_returns_true(transport):
    future = transport.create_future()
    future.cancel()
    assert future.cancel() is True
    assert future.cancel(wait=False) is True


def test_confirm_nobody_asked_for_is_by_scheduler(transport):
    future = running(transport)
    future.recv_cancel_confirm("canceled")
    assert future.cancelled()
    assert future.cancel_outcome is CancelOutcome.BY_SCHEDULER


def test_connection_lost(transport):
    running_future = running(transport)
    pending_future = transport.create_future()
    cancelling = running(transport)
    cancelling.cancel(wait=False)
    finished = running(transport)
    finished.recv_result("kept")
    for future in (running_future, pending_future, cancelling, finished):
        future.connection_lost()
    for future in (running_future, pending_future):
        assert isinstance(future.exception(timeout=0), ConnectionLostError)
    assert cancelling.cancelled()
    assert cancelling.cancel_outcome is CancelOutcome.CONNECTION_LOST
    # Terminal states are final: a finished future is not turned into a failed one.
    assert finished.result(timeout=0) == "kept"


def test_cancel_without_waiting(transport):
    future = running(transport)
    assert future.cancel(wait=False) is True
    assert future.state is S.CANCEL_REQUESTED
    assert transport.cancels_sent == [future.task_id]
    assert future.cancel_deadline is not None
    future.recv_cancel_confirm("canceled")
    assert future.cancel_deadline is None
    assert future.cancel_outcome is CancelOutcome.CONFIRMED


def test_transport_enforces_the_deadline_of_a_cancel_nobody_waits_for():
    transport = InMemoryTransport(cancel_timeout=0.0)
    future = running(transport)
    future.cancel(wait=False)
    assert future.state is S.CANCEL_REQUESTED
    assert transport.expire_cancels() == 1
    assert future.cancel_outcome is CancelOutcome.TIMED_OUT


def test_cancelled_waits_for_the_cancel_in_flight(transport):
    future = running(transport)
    future.cancel(wait=False)
    seen = in_thread(future.cancelled)
    # cancelled() must still be waiting: the answer has not arrived.
    with pytest.raises(cf.TimeoutError):
        seen.result(timeout=0.05)
    future.recv_cancel_confirm("canceled")
    assert seen.result(DEADLINE) is True


def test_cancelled_is_bounded_by_the_cancel_deadline(transport):
    future = running(transport)
    future.cancel(timeout=0.05, wait=False)
    assert future.cancelled() is True
    assert future.cancel_outcome is CancelOutcome.TIMED_OUT


def test_cancelled_never_waits_on_the_io_thread(transport):
    future = running(transport)
    future.cancel(wait=False)

    def on_io_thread():
        transport.io_thread = threading.current_thread()
        return future.cancelled(), future.cancel()

    assert in_thread(on_io_thread).result(DEADLINE) == (False, True)
    assert future.state is S.CANCEL_REQUESTED
    assert len(transport.cancels_sent) == 1


def test_cancelled_never_waits_in_a_done_callback(transport):
    other = running(transport)
    other.cancel(wait=False)
    future = running(transport)
    seen = []
    future.add_done_callback(lambda _: seen.append(other.cancelled()))
    future.recv_result(1)
    assert seen == [False]
    assert other.state is S.CANCEL_REQUESTED


def test_cancel_from_many_threads_sends_exactly_one_task_cancel(transport):
    future = running(transport)
    start = threading.Barrier(8)

    def cancel():
        start.wait(DEADLINE)
        return future.cancel()

    outcomes = [in_thread(cancel) for _ in range(8)]
    assert transport.wait_for_cancels(1, DEADLINE)
    future.recv_cancel_confirm("canceled")
    assert [outcome.result(DEADLINE) for outcome in outcomes] == [True] * 8
    assert transport.cancels_sent == [future.task_id]
    assert future.cancel_outcome is CancelOutcome.CONFIRMED


def test_cancel_again_after_a_refusal_sends_a_new_request(transport):
    future = running(transport)
    future.cancel(wait=False)
    future.recv_cancel_confirm("cancel_failed")
    assert future.cancel(wait=False) is True
    assert transport.cancels_sent == [future.task_id, future.task_id]


# ------------------------------------------------------------------ callbacks


def test_callbacks_run_exactly_once_outside_the_lock(transport):
    future = running(transport)
    calls = []

    def callback(f):
        # The lock is free: another thread can take it (and give it back).
        def take_and_release():
            if not f._condition.acquire(timeout=DEADLINE):
                return False
            f._condition.release()
            return True

        calls.append((f, in_thread(take_and_release).result(DEADLINE)))

    future.add_done_callback(callback)
    future.recv_result(1)
    future.recv_result(2)
    future.connection_lost()
    assert calls == [(future, True)]
    late = []
    future.add_done_callback(late.append)
    assert late == [future]


def test_callback_exception_is_logged_not_raised(transport, caplog):
    future = running(transport)
    after = []
    future.add_done_callback(lambda f: 1 / 0)
    future.add_done_callback(after.append)
    with caplog.at_level(logging.ERROR, logger="futurefsm.future"):
        future.recv_cancel_confirm("canceled")
    assert after == [future]
    assert "exception calling callback" in caplog.text
    assert "ZeroDivisionError" in caplog.text


def test_callbacks_from_racing_threads_run_once_each(transport):
    futures = [running(transport) for _ in range(50)]
    counts = {id(f): 0 for f in futures}
    lock = threading.Lock()

    def count(f):
        with lock:
            counts[id(f)] += 1

    for f in futures:
        f.add_done_callback(count)
    deliveries = []
    for f in futures:
        deliveries.append(in_thread(f.recv_result, 1))
        deliveries.append(in_thread(f.recv_cancel_confirm, "canceled"))
        deliveries.append(in_thread(f.connection_lost))
    for delivery in deliveries:
        delivery.result(DEADLINE)
    assert set(counts.values()) == {1}


# ------------------------------------------------------------------ wait / as_completed


def test_wait_all_completed_with_stdlib_futures(transport):
    ours = [running(transport) for _ in range(3)]
    stdlib: cf.Future = cf.Future()
    waiting = in_thread(cf.wait, [*ours, stdlib], timeout=DEADLINE)
    ours[0].recv_result(0)
    ours[1].recv_cancel_confirm("canceled")
    ours[2].recv_result(exception=KeyError("k"))
    stdlib.set_result("std")
    done, not_done = waiting.result(DEADLINE)
    assert done == {*ours, stdlib} and not not_done


def test_wait_first_completed_mixed(transport):
    ours = running(transport)
    stdlib: cf.Future = cf.Future()
    waiting = in_thread(cf.wait, [ours, stdlib], timeout=DEADLINE, return_when=cf.FIRST_COMPLETED)
    ours.recv_result(1)
    done, not_done = waiting.result(DEADLINE)
    assert done == {ours} and not_done == {stdlib}


def test_wait_first_exception_mixed(transport):
    ok = running(transport)
    failing = running(transport)
    stdlib: cf.Future = cf.Future()
    waiting = in_thread(
        cf.wait, [ok, failing, stdlib], timeout=DEADLINE, return_when=cf.FIRST_EXCEPTION
    )
    ok.recv_result(1)
    failing.recv_result(exception=RuntimeError("x"))
    done, not_done = waiting.result(DEADLINE)
    assert done == {ok, failing} and not_done == {stdlib}


def test_wait_counts_cancelled_futures_as_done(transport):
    pending = transport.create_future()
    pending.cancel()
    done, not_done = cf.wait([pending], timeout=0)
    assert done == {pending} and not not_done


def test_as_completed_mixed_in_completion_order(transport):
    ours = [running(transport) for _ in range(3)]
    stdlib: cf.Future = cf.Future()
    order = []
    iterating = in_thread(lambda: order.extend(cf.as_completed([*ours, stdlib], timeout=DEADLINE)))
    ours[2].recv_result(2)
    stdlib.set_result("s")
    ours[0].recv_cancel_confirm("canceled")
    ours[1].connection_lost()
    iterating.result(DEADLINE)
    assert set(order) == {*ours, stdlib}
    assert len(order) == 4


def test_as_completed_yields_already_finished_first(transport):
    finished = running(transport)
    finished.recv_result(1)
    later = running(transport)
    iterator = cf.as_completed([later, finished], timeout=DEADLINE)
    assert next(iterator) is finished
    later.recv_result(2)
    assert next(iterator) is later


# ------------------------------------------------------------------ asyncio


def test_await_result(transport):
    future = running(transport)

    async def main():
        asyncio.get_running_loop().call_soon(future.recv_result, "awaited")
        return await future

    assert asyncio.run(main()) == "awaited"


def test_await_exception(transport):
    future = running(transport)

    async def main():
        asyncio.get_running_loop().call_soon(
            lambda: future.recv_result(exception=KeyError("remote"))
        )
        await future

    with pytest.raises(KeyError, match="remote"):
        asyncio.run(main())


def test_await_cancelled_remote_raises_cancelled_error(transport):
    future = running(transport)

    async def main():
        asyncio.get_running_loop().call_soon(future.recv_cancel_confirm, "canceled")
        await future

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())


def test_cancelling_the_awaiting_task_never_blocks_the_loop():
    # No answer ever comes, and the cancel deadline is far away: a blocking cancel()
    # would hold the loop for 60 s and the wait_for below would never get to run.
    transport = InMemoryTransport(cancel_timeout=60.0)
    future = running(transport)

    async def main():
        task = asyncio.ensure_future(awaiter())
        await asyncio.sleep(0)  # let the task start awaiting
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=DEADLINE)
        return future.state

    async def awaiter():
        return await future

    assert asyncio.run(asyncio.wait_for(main(), timeout=DEADLINE)) is S.CANCEL_REQUESTED
    assert transport.cancels_sent == [future.task_id]
    future.recv_cancel_confirm("canceled")
    assert future.cancel_outcome is CancelOutcome.CONFIRMED


def test_wrap_future_cancel_in_a_loop_does_not_block():
    transport = InMemoryTransport(cancel_timeout=60.0)
    future = running(transport)

    async def main():
        wrapped = asyncio.wrap_future(future)
        wrapped.cancel()
        await asyncio.sleep(0)
        return future.state

    assert asyncio.run(asyncio.wait_for(main(), timeout=DEADLINE)) is S.CANCEL_REQUESTED


# ------------------------------------------------------------------ release and gc


def test_future_is_released_and_collected_once_terminal(transport):
    future = running(transport)
    task_id = future.task_id
    ref = weakref.ref(future)
    future.add_done_callback(lambda f: None)
    assert transport.futures[task_id] is future
    future.recv_result(object())
    assert task_id not in transport.futures
    del future
    gc.collect()
    assert ref() is None


def test_cancelled_future_is_collected(transport):
    future = running(transport)
    ref = weakref.ref(future)
    future.cancel(wait=False)
    future.recv_cancel_confirm("canceled")
    assert future.task_id not in transport.futures
    del future
    gc.collect()
    assert ref() is None


def test_live_future_is_held_by_the_transport(transport):
    future = running(transport)
    ref = weakref.ref(future)
    del future
    gc.collect()
    assert ref() is not None


def _wait_until_blocked_on(condition, deadline=DEADLINE):
    """Poll until some thread waits on the condition ``condition()`` returns (stdlib
    internals, test only)."""
    end = time.monotonic() + deadline
    while condition() is None or not condition()._waiters:
        assert time.monotonic() < end, "nobody started waiting"
        time.sleep(0.001)


def test_result_waiter_is_not_woken_by_non_terminal_transitions(transport):
    # The stdlib's result(timeout) treats any notify as "terminal": sent, a cancel
    # request and a refused cancel must not wake it into a spurious TimeoutError.
    future = transport.create_future()
    waiting = in_thread(future.result, timeout=DEADLINE)
    _wait_until_blocked_on(lambda: future._cond)
    transport.send_task(future)
    future.cancel(wait=False)
    future.recv_cancel_confirm("cancel_failed")
    assert not waiting.done()
    future.recv_result("value")
    assert waiting.result(DEADLINE) == "value"


# ------------------------------------------------------------------ a future the GC barely sees


def _tracked_objects_per_future(make, count=1000):
    """How many objects the garbage collector tracks per live object ``make()`` builds."""
    gc.collect()
    gc.disable()  # a collection would untrack some objects half way through
    try:
        before = len(gc.get_objects())
        keep = [make() for _ in range(count)]
        after = len(gc.get_objects())
    finally:
        gc.enable()
    assert len(keep) == count
    return (after - before - 1) / count  # the list ``keep`` itself is tracked too


def test_a_live_future_is_one_object_the_gc_tracks(transport):
    # A stdlib Future tracks about eleven (a Condition with its dict, deque and bound
    # methods, two lists); with 100,000 futures alive every full collection walks
    # them all. A TaskFuture tracks itself only: it is its own lock, and its history
    # is bytes.
    def finished():
        future = running(transport)
        future.recv_result(1)
        return future

    for make in (lambda: running(transport), finished):
        tracked = _tracked_objects_per_future(make)
        assert tracked <= 1.01, tracked
    assert _tracked_objects_per_future(cf.Future) > 8  # what it replaces


def test_nothing_a_live_future_points_to_is_its_own_tracked_object(transport):
    # What the collector walks from a future: only objects every future shares
    # (its transport, enum members, its type), none of its own.
    first, second = running(transport), running(transport)
    first.recv_result(1)
    second.recv_result(1)
    shared = {id(referent) for referent in gc.get_referents(second)}
    own = [
        referent
        for referent in gc.get_referents(first)
        if gc.is_tracked(referent) and id(referent) not in shared
    ]
    assert own == []


def test_the_future_is_its_own_lock_under_its_condition(transport):
    future = running(transport)
    assert future._condition is future
    with future._condition:
        assert future._is_owned()
        # Reentrant, as the stdlib's (an RLock): wait() may take it again.
        with future:
            pass
    assert not future._is_owned()


def test_condition_and_lists_are_created_only_for_a_waiter(transport):
    future = running(transport)
    stdlib = cf.Future()
    future.add_done_callback(lambda f: None)
    assert not future.done() and future.running()
    assert (future._cond, future._waiter_list) == (None, None)
    waiting = in_thread(cf.wait, [future, stdlib], timeout=DEADLINE, return_when=cf.FIRST_COMPLETED)
    end = time.monotonic() + DEADLINE
    while not stdlib._waiters:  # wait() installs its waiter on both, under their locks
        assert time.monotonic() < end, "wait() did not install its waiter"
        time.sleep(0.001)
    with future._condition:
        assert len(future._waiter_list) == 1
    future.recv_result("value")
    done, _ = waiting.result(DEADLINE)
    assert done == {future}
    # Terminal: the condition was notified and dropped, wait() removed its waiter.
    assert future._cond is None and future._waiter_list == []
    assert future.done() and future.result() == "value" and future._cond is None


def test_many_threads_waiting_at_once_share_one_condition_and_all_wake(transport):
    future = running(transport)
    start = threading.Barrier(8)

    def wait_for_it():
        start.wait(DEADLINE)
        return future.result(DEADLINE)

    waiting = [in_thread(wait_for_it) for _ in range(8)]
    end = time.monotonic() + DEADLINE
    while future._cond is None or len(future._cond._waiters) < 8:
        assert time.monotonic() < end, "the waiters did not all park on one condition"
        time.sleep(0.001)
    future.recv_result("value")
    assert [outcome.result(DEADLINE) for outcome in waiting] == ["value"] * 8
    assert future._cond is None


def test_wait_and_as_completed_build_no_condition(transport):
    # They only take the future's lock around a look at it: no threading.Condition.
    futures = [running(transport) for _ in range(3)]
    assert all(future._condition is future for future in futures)
    futures[0].recv_result(0)
    done, not_done = cf.wait(futures, timeout=0)
    assert done == {futures[0]} and len(not_done) == 2
    later = in_thread(lambda: [f.result() for f in cf.as_completed(futures, timeout=DEADLINE)])
    futures[2].recv_result(2)
    futures[1].recv_result(1)
    assert sorted(later.result(DEADLINE)) == [0, 1, 2]
    assert all(future._cond is None for future in futures)


def test_result_times_out_as_the_stdlib_does(transport):
    future = running(transport)
    with pytest.raises(cf.TimeoutError):
        future.result(timeout=0)
    with pytest.raises(cf.TimeoutError):
        future.exception(timeout=0.01)
    future.recv_result(None, ValueError("boom"))
    assert isinstance(future.exception(timeout=0), ValueError)


def test_result_waited_for_on_a_failed_future_leaves_no_reference_cycle(transport):
    # The same when result() had to wait: the frames it raised through let go of the
    # future. (The waiting thread's own frame drops it too, as a caller would.)
    future = running(transport)
    ref = weakref.ref(future)

    def wait_for_it():
        waited = ref()
        try:
            waited.result(DEADLINE)
        except ValueError as error:
            return type(error)
        finally:
            waited = None
        return None

    waiting = in_thread(wait_for_it)
    _wait_until_blocked_on(lambda: ref()._cond)
    future.recv_result(exception=ValueError("boom"))
    assert waiting.result(DEADLINE) is ValueError
    gc.disable()
    try:
        del future
        assert ref() is None
    finally:
        gc.enable()


def test_result_of_a_failed_future_leaves_no_reference_cycle(transport):
    # result() raises the task's exception from a frame that refers to the future;
    # like the stdlib it drops that reference, so no garbage collection is needed.
    future = running(transport)
    ref = weakref.ref(future)
    future.recv_result(exception=ValueError("boom"))
    gc.disable()
    try:
        for call in (future.result, future.exception):
            try:
                call()
            except ValueError:
                pass
        del future, call
        assert ref() is None
    finally:
        gc.enable()
