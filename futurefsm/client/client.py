"""``Client``: a ``concurrent.futures.Executor`` whose futures run on a remote engine.

The client is engine-agnostic (``futurefsm.engines``): it keeps the Executor API, the
registry of live futures, bulk cancel, cancel deadlines, the graph facade and the
stats; the engine carries tasks and cancels and turns inbound messages into the
futures' triggers.

A future is registered (``futures``) before its task is handed to the engine, and
unregistered by ``release()`` when it reaches a terminal state: the client holds no
reference to a finished future.

Nothing hangs: cancel deadlines are enforced by a timer thread (``CancelDeadlines``),
and an engine that loses its scheduler resolves every unfinished future through the
``connection_lost`` trigger.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from concurrent import futures as cf
from typing import Any

from ..engines import CancelAnswer, Engine, get_engine
from ..fsm import CancelOutcome, Effect, FutureState
from ..protocol import ProtocolError
from ..serializer import Serializer
from .deadlines import CancelDeadlines
from .dependencies import as_key_ref, find_futures, replace_futures
from .future import TaskFuture
from .gather import Errors, gather
from .graph import parse_graph

__all__ = ["Client"]

LOGGER = logging.getLogger("futurefsm.client")


_CANCEL_ANSWERS = ("canceled", "not_found", "cancel_failed")
_UPSTREAM_POLL = 0.01  # seconds between looks at an upstream being delivered (submit)


def _succeeded(future: TaskFuture) -> bool:
    """A done future that has a value (not cancelled, not failed)."""
    return not future.cancelled() and future.exception(timeout=0) is None


def _worker_count(workers: int | None, max_workers: int | None) -> int | None:
    """The embedded scheduler's worker count from ``workers`` or its stdlib alias."""
    if workers is not None and max_workers is not None:
        raise ValueError("workers and max_workers name the same thing: pass one of them")
    name, count = ("max_workers", max_workers) if max_workers is not None else ("workers", workers)
    if count is None:
        return None
    if isinstance(count, bool) or not isinstance(count, int):
        raise TypeError(f"{name}: expected an int, got {count!r}")
    if count <= 0:
        # The stdlib executors' wording, so code that matches on it keeps working.
        raise ValueError(f"{name} must be greater than 0, got {count}")
    return count


def _next_result(submitted: list[TaskFuture], end_time: float | None) -> Any:
    """The result of the last future in ``submitted``, which is then removed.

    The future stays in the list while awaited, so a timeout or an early close of
    ``map``'s iterator cancels it too (as the stdlib does since 3.12).
    """
    future = submitted[-1]
    value = future.result(None if end_time is None else end_time - time.monotonic())
    submitted.pop()
    return value


def _tick(bar: Any) -> None:
    """One more task finished; the bar closes itself after the last one (also when
    nobody iterates ``map``'s results)."""
    bar.update(1)
    if bar.n >= bar.total:
        bar.close()


def _progress_bar(total: int, what: str) -> Any:
    """A tqdm bar counting ``total`` finished tasks (tqdm is imported only here)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=what, unit="task")


class Client(cf.Executor):
    """Submit work to a scheduler through an engine; every future is a ``TaskFuture``.

    ``engine`` is ``"futurefsm"`` (our own ZeroMQ scheduler, the default), ``"scaler"``,
    ``"dask"``, another name registered in ``futurefsm.engines``, or an ``Engine``
    instance. With the default engine, ``address=None`` starts an embedded scheduler
    in-process on a loopback port (with ``workers`` workers), so the default needs no
    setup; otherwise ``address`` is the scheduler's address, such as
    ``tcp://127.0.0.1:5555``. ``serializer`` and other keyword options go to the
    engine. ``max_workers`` is the stdlib executors' name for ``workers`` (``Client(max_workers=4)``
    replaces ``ThreadPoolExecutor(max_workers=4)``); a count below 1 is a ``ValueError``.

    ``cancel_timeout``: default seconds a cancel waits for the scheduler's answer
    before the future ends cancelled with ``TIMED_OUT``. ``heartbeat_interval`` and
    ``connection_timeout``: the engine's transport heartbeats (for our own scheduler,
    ZMTP heartbeats run by libzmq, so a busy scheduler is alive); a scheduler unheard
    for ``connection_timeout`` seconds, or not reached within it, is taken as lost and
    every unfinished future is resolved (``ConnectionLostError``).

    ``dashboard=True`` serves a read-only live view of the futures on loopback at a
    free port (an int: that port; ``"HOST:PORT"``: that address, the only way to bind
    anything but loopback); ``dashboard_link`` is its URL (docs/dashboard.md).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        engine: str | Engine = "futurefsm",
        workers: int | None = None,
        max_workers: int | None = None,
        cancel_timeout: float = 30.0,
        heartbeat_interval: float = 1.0,
        connection_timeout: float = 5.0,
        serializer: Serializer | None = None,
        dashboard: bool | int | str | None = False,
        **engine_options: Any,
    ) -> None:
        for name, value in (
            ("cancel_timeout", cancel_timeout),
            ("heartbeat_interval", heartbeat_interval),
            ("connection_timeout", connection_timeout),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name}: expected a positive number of seconds, got {value!r}")
        workers = _worker_count(workers, max_workers)
        self.cancel_timeout = float(cancel_timeout)
        self.heartbeat_interval = float(heartbeat_interval)
        self.connection_timeout = float(connection_timeout)

        if isinstance(engine, Engine):
            if address is not None or workers is not None or serializer is not None:
                raise ValueError(
                    "address, workers, serializer: give them to the engine object, not the Client"
                )
            if engine_options:
                raise TypeError(f"unexpected engine options {sorted(engine_options)}")
            self._engine = engine
        else:
            if not isinstance(engine, str):
                raise TypeError(f"engine: expected a name or an Engine, got {engine!r}")
            options = dict(engine_options)
            if workers is not None:
                options["workers"] = workers
            if serializer is not None:
                options["serializer"] = serializer
            self._engine = get_engine(engine).from_address(address, **options)
        self.address: str = self._engine.address
        """The scheduler's address."""

        self.futures: dict[bytes, TaskFuture] = {}
        """Live (not yet terminal) futures by task id. Read it; do not change it."""
        self._local: set[bytes] = set()
        """Futures the engine never saw (``_end_like``): not the engine's to forget."""
        self._shutdown = False
        # Held while checking _shutdown and registering a future, and while setting
        # _shutdown: no future can be registered after close() took its snapshot.
        self._submit_lock = threading.Lock()
        self._closed = False
        self._lifecycle_lock = threading.Lock()
        # Counted under _submit_lock, which submit() holds anyway: the submitting
        # thread never waits for _stats_lock, which the I/O thread takes per result.
        self._submitted = 0
        self._stats_lock = threading.Lock()
        self._stats: dict[str, Any] = {
            "completed": 0,
            "failed": 0,
            "cancelled": dict.fromkeys((outcome.value for outcome in CancelOutcome), 0),
            "stale_messages": 0,
            "protocol_errors": 0,
            "io_errors": 0,
            "connection_lost": 0,
        }
        del self._stats["cancelled"][CancelOutcome.FAILED.value]  # a refusal is not a cancel
        self._deadlines = CancelDeadlines(
            self.futures.get, name=f"futurefsm-client-{id(self):x}-deadlines"
        )
        self._dashboard: Any = None  # futurefsm.dashboard.Dashboard when asked for
        # The dashboard's counting subclass while there is one (TaskFuture._on_fire).
        self._future_class: type[TaskFuture] = TaskFuture
        self._engine.start(self)
        if dashboard is not False and dashboard is not None:
            from ..dashboard import Dashboard

            try:
                self._dashboard = Dashboard(self, dashboard)
                self._future_class = self._dashboard.counts.future_class
            except BaseException:
                self.close()
                raise

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Client {self.address} {state} in_flight={len(self.futures)}>"

    @property
    def dashboard_link(self) -> str | None:
        """The live view's URL (``Client(dashboard=True)``), or None without one."""
        return self._dashboard.link if self._dashboard is not None else None

    @property
    def engine(self) -> Engine:
        """The engine this client's tasks run on."""
        return self._engine

    # ------------------------------------------------------------------ submitting

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> TaskFuture:
        """Run ``fn(*args, **kwargs)`` on the scheduler; return its ``TaskFuture``.

        The function and its arguments are serialized here, at once: something that
        cannot be serialized raises ``TypeError`` naming it, and nothing is sent.

        A ``TaskFuture`` of this client among the arguments (also inside lists, tuples
        and dict values) stands for its value where the task runs, as on Dask, Ray and
        Scaler: the task depends on it (``futurefsm.client.dependencies``). If it fails
        or is cancelled, this task ends the same way without running; cancelling this
        task leaves it alone. An engine that cannot express the dependency raises
        ``TypeError`` naming ``submit_graph`` (docs/engines.md).
        """
        upstream: dict[bytes, TaskFuture] = {}
        find_futures(args, upstream)
        if kwargs:
            find_futures(kwargs, upstream)
        if upstream:
            return self._submit_dependent(fn, args, kwargs, upstream)
        prepared = self._engine.prepare(fn, args, kwargs)
        future = self._future_class(prepared.task_id, self)
        with self._submit_lock:
            self._check_open()
            self._register(future)
            self._engine.send(prepared)
        return future

    def _submit_dependent(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        upstream: dict[bytes, TaskFuture],
    ) -> TaskFuture:
        """``submit`` of a call with futures among its arguments (see ``submit``)."""
        for future in upstream.values():
            if future._transport is not self:
                raise ValueError(
                    f"submit: the argument {future!r} belongs to another client; pass "
                    "futures of this client, or their values (future.result())"
                )
        while True:
            # A terminal upstream needs no dependency: its value goes in its place, or
            # (failed, cancelled) this task ends the same way without being sent.
            ended = next((f for f in upstream.values() if f.done() and not _succeeded(f)), None)
            if ended is not None:
                return self._end_like(ended)
            live = {task_id for task_id, f in upstream.items() if not f.done()}
            call_args, call_kwargs = replace_futures(
                (args, kwargs),
                lambda f, live=live: as_key_ref(f) if f.task_id in live else f.result(timeout=0),
            )
            engine = self._engine
            prepared = engine.prepare_dependent(fn, call_args, call_kwargs, sorted(live))
            if prepared is not None:
                break
            # An upstream ended meanwhile and the engine kept nothing of it: its future
            # is terminal, or about to be (being delivered); the next round puts its
            # value in its place.
            pending = [upstream[task_id] for task_id in live]
            cf.wait(pending, timeout=_UPSTREAM_POLL, return_when=cf.FIRST_COMPLETED)
        future = self._future_class(prepared.task_id, self)
        try:
            with self._submit_lock:
                self._check_open()
                self._register(future)
                self._engine.send(prepared)
        except BaseException:
            if future.task_id not in self.futures:
                engine.forget(prepared.task_id)  # let the engine drop its holds
            raise
        return future

    def _end_like(self, upstream: TaskFuture) -> TaskFuture:
        """A dependent of a failed or cancelled ``upstream`` that was terminal when it
        was submitted: a future that ends the same way, never sent (``local``)."""
        future = self._future_class(os.urandom(16), self)
        with self._submit_lock:
            self._check_open()
            self._register(future)
            self._local.add(future.task_id)
        if upstream.cancelled():
            future._request_cancel(time.monotonic())  # pending: cancelled at once
        else:
            future.sent()
            self.deliver_result(future.task_id, exception=upstream.exception(timeout=0))
        return future

    def _check_open(self) -> None:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def _register(self, future: TaskFuture) -> None:
        """Register ``future`` (``_submit_lock`` held), before its task is sent."""
        self.futures[future.task_id] = future
        self._submitted += 1

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        progress: bool = False,
    ) -> Iterator[Any]:
        """``Executor.map``: results in order; leftover futures are cancelled in bulk
        (without waiting) if the iterator is closed early or a call raises.

        The iterator keeps no reference to a result it has yielded (nor to its future).
        ``progress=True`` shows a tqdm progress bar of finished tasks on stderr, closed
        when the iterator ends. ``chunksize`` is accepted for compatibility and ignored:
        every call is its own task.
        """
        end_time = None if timeout is None else timeout + time.monotonic()
        submitted = [self.submit(fn, *args) for args in zip(*iterables, strict=False)]
        bar = _progress_bar(len(submitted), getattr(fn, "__name__", "map")) if progress else None
        if bar is not None:
            for future in submitted:
                future.add_done_callback(lambda _: _tick(bar))
        submitted.reverse()

        def result_iterator() -> Iterator[Any]:
            try:
                while submitted:
                    # No local names here: a suspended generator keeps its locals alive,
                    # and the caller may have dropped the value it was given.
                    yield _next_result(submitted, end_time)
            finally:
                if submitted:
                    self.cancel(submitted, wait=False)
                if bar is not None:
                    bar.close()

        return result_iterator()

    def submit_graph(
        self, graph: Mapping[Hashable, Any], keys: Iterable[Hashable] | None = None
    ) -> dict[Hashable, TaskFuture]:
        """Submit a Dask-style task graph; return the futures of ``keys`` (default: all).

        ``graph`` maps keys to tasks ``(callable, *args)``; an argument (also inside a
        list) that is a key of the graph stands for that key's result. A value that is
        not a task is a constant. All the graph's tasks share one group id: cancelling
        any of their futures cancels the whole graph, and every member future ends
        cancelled promptly.
        """
        nodes = parse_graph(graph)
        wanted = list(graph) if keys is None else list(keys)
        for key in wanted:
            if key not in graph:
                raise KeyError(f"submit_graph: key {key!r} is not in the graph")
        group_id = os.urandom(16)
        prepared = self._engine.prepare_graph(nodes, group_id)
        members = [self._future_class(item.task_id, self, group_id) for item in prepared]
        with self._submit_lock:
            self._check_open()
            for future in members:
                self._register(future)
            self._engine.send_graph(group_id, prepared)
        futures = {node.key: future for node, future in zip(nodes, members, strict=True)}
        for key, future in futures.items():
            future.graph_key = key
        return {key: futures[key] for key in wanted}

    def gather(
        self, futures: Any, errors: Errors = "raise", *, timeout: float | None = None
    ) -> Any:
        """Dask's ``Client.gather``: ``futures`` (a future, or lists, tuples and dicts
        of them, nested) with each future replaced by its value. ``errors``: "raise"
        a failed or cancelled future's exception, "skip" it, or "return" it in the
        value's place. See ``futurefsm.client.gather``."""
        return gather(futures, errors, timeout=timeout)

    # ------------------------------------------------------------------ cancelling

    def cancel(
        self,
        futures: Iterable[TaskFuture],
        *,
        timeout: float | None = None,
        wait: bool = True,
        force: bool = True,
    ) -> list[bool]:
        """Cancel many futures at once: every TaskCancel goes out together, and one
        deadline (``timeout``, default ``cancel_timeout``) bounds them all.
        ``force=False`` cancels only tasks that have not started (see
        ``TaskFuture.cancel``).

        Returns, per future, what ``future.cancel()`` would: True if it ended
        cancelled, False if it finished or the scheduler refused. With
        ``wait=False``, True means cancelled or the request is in flight.
        """
        futures = list(futures)
        for future in futures:
            if future._transport is not self:
                raise ValueError(f"{future!r} does not belong to this client")
        deadline = time.monotonic() + (self.cancel_timeout if timeout is None else timeout)
        for future in futures:
            future._request_cancel(deadline, force)
        if wait and futures and not futures[0]._must_not_block():
            return [future._wait_for_cancel_answer(deadline) for future in futures]
        return [
            future.state is FutureState.CANCELLED or future.state is FutureState.CANCEL_REQUESTED
            for future in futures
        ]

    # ------------------------------------------------------------------ FutureTransport

    def send_cancel(self, future: TaskFuture, deadline: float, force: bool = True) -> None:
        """FutureTransport: send one TaskCancel (the group's, for a graph member)
        through the engine, with ``force``, and time it out at ``deadline``."""
        self._deadlines.schedule(deadline, future.task_id)
        self._engine.send_cancel(future.task_id, future.group_id, force)

    def release(self, future: TaskFuture) -> None:
        """FutureTransport: ``future`` is terminal; count how it ended and forget it."""
        outcome = future.cancel_outcome
        if future.state is FutureState.CANCELLED and outcome is not None:
            # (Every cell that enters cancelled records an outcome.)
            counter, key = self._stats["cancelled"], outcome.value
        else:
            failed = future.exception(timeout=0) is not None
            counter, key = self._stats, "failed" if failed else "completed"
        # Counted and no longer in flight in one step (stats() reads both under the
        # same lock): a snapshot never shows a future neither in flight nor ended.
        with self._stats_lock:
            counter[key] += 1
            self.futures.pop(future.task_id, None)
        if self._local and future.task_id in self._local:
            self._local.discard(future.task_id)
        else:
            self._engine.forget(future.task_id)
        if self._dashboard is not None:
            self._dashboard.counts.ended(future)

    def on_io_thread(self) -> bool:
        """FutureTransport: True on a thread that delivers events (the engine's, or
        the one that expires cancel deadlines)."""
        return self._engine.on_io_thread() or threading.current_thread() is self._deadlines.thread

    # ------------------------------------------------------------------ EngineClient

    def sending(self, task_id: bytes) -> bool:
        """EngineClient: fire ``sent``; False if the task must not go out (its future
        was cancelled before sending, or is gone)."""
        future = self.futures.get(task_id)
        return future is not None and future.sent().effect is not Effect.STALE

    def sending_graph(self, task_ids: Sequence[bytes]) -> bool:
        """EngineClient: fire ``sent`` on every member, or (one was cancelled before
        sending) cancel them all and return False: a graph goes whole or not at all.

        The members' locks are held together (in ``id`` order, as
        ``concurrent.futures.wait`` takes them) from the check to the last ``sent``,
        so no cancel slips in between: either it came first and nothing is sent, or
        it finds its future running and its TaskCancel goes after the graph."""
        futures = [self.futures.get(task_id) for task_id in task_ids]
        members = [future for future in futures if future is not None]
        with contextlib.ExitStack() as locks:
            for future in sorted(members, key=id):
                locks.enter_context(future)
            whole = len(members) == len(futures) and all(
                future.state is FutureState.PENDING for future in members
            )
            if whole:
                for future in members:
                    future.sent()
        if not whole:
            deadline = time.monotonic()
            for future in members:  # pending: cancelled at once, nothing sent
                future._request_cancel(deadline)
        return whole

    def deliver_result(
        self, task_id: bytes, value: Any = None, exception: BaseException | None = None
    ) -> None:
        """EngineClient: the task finished (``recv_result``); stale if unknown."""
        future = self.futures.get(task_id)
        if future is None or future.recv_result(value, exception).effect is Effect.STALE:
            self._stale("result", task_id)

    def deliver_cancel_answer(self, task_id: bytes, answer: CancelAnswer) -> None:
        """EngineClient: a cancel was answered (``recv_confirm_*``); stale if unknown.
        ``ProtocolError`` for an answer that is not one of the three."""
        if answer not in _CANCEL_ANSWERS:
            raise ProtocolError(f"unknown cancel answer {answer!r} for task {task_id.hex()}")
        future = self.futures.get(task_id)
        if future is None:
            self._stale(answer, task_id)
        elif future.recv_cancel_confirm(answer).effect is Effect.STALE:
            self._stale(answer, task_id)

    def deliver_connection_lost(self, why: str, task_ids: Sequence[bytes] | None = None) -> None:
        """EngineClient: the scheduler is gone; every live future (or those of
        ``task_ids``) gets ``connection_lost``."""
        if task_ids is None:
            futures = list(self.futures.values())
        else:
            futures = [f for f in map(self.futures.get, task_ids) if f is not None]
        if futures:
            self.count("connection_lost")
            LOGGER.warning(
                "connection to %s lost (%s): %d futures resolved", self.address, why, len(futures)
            )
        for future in futures:
            future.connection_lost(why)

    def count(self, stat: str) -> None:
        """EngineClient: add one to the counter ``stat`` of ``stats()``."""
        with self._stats_lock:
            self._stats[stat] += 1

    def _stale(self, what: str, task_id: bytes) -> None:
        self.count("stale_messages")
        LOGGER.debug("stale message: %s for task %s", what, task_id.hex())

    # ------------------------------------------------------------------ lifecycle

    def stats(self) -> dict[str, Any]:
        """Counters: submitted, completed, failed, cancelled (by outcome), stale
        messages, protocol errors, I/O errors, connection losses, and in flight."""
        with self._stats_lock:
            snapshot = {"submitted": 0, **self._stats}
            snapshot["cancelled"] = dict(self._stats["cancelled"])
            in_flight = len(self.futures)
        # Read after the others: a future is counted submitted before it can end, so
        # the snapshot never shows more ended and in flight than submitted.
        snapshot["submitted"] = self._submitted
        snapshot["in_flight"] = in_flight
        return snapshot

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """``Executor.shutdown``: refuse new work; with ``cancel_futures``, cancel every
        task that has not started (in bulk, confirmed, ``force=False``: as in the
        stdlib, running tasks are refused and finish); with ``wait``, wait for all of
        them to finish and close the connection. Without ``wait`` the connection
        closes in the background once they have."""
        with self._submit_lock:
            self._shutdown = True
        if cancel_futures:
            outstanding = list(self.futures.values())
            if outstanding:
                self.cancel(outstanding, wait=wait, force=False)
        if wait:
            self._close_when_idle()
        else:
            threading.Thread(
                target=self._close_when_idle, name="futurefsm-client-shutdown", daemon=True
            ).start()

    def _close_when_idle(self) -> None:
        outstanding = list(self.futures.values())
        if outstanding:
            cf.wait(outstanding)
        self.close()

    def close(self) -> None:
        """Cancel everything outstanding in bulk (within ``cancel_timeout``), tell the
        scheduler, and stop the engine (and the embedded scheduler if any). Futures
        that were already terminal stay as they were. Idempotent."""
        with self._lifecycle_lock:
            if self._closed:
                return
            with self._submit_lock:
                self._shutdown = True
            outstanding = list(self.futures.values())
            if outstanding and not self.on_io_thread():
                self.cancel(outstanding)
            self._engine.close()
            # Whatever the engine left unresolved is resolved now: nothing waits forever.
            self.deliver_connection_lost("client closed")
            self._deadlines.close()
            if self._dashboard is not None:
                self._dashboard.close()
            self._closed = True

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown(wait=True)
