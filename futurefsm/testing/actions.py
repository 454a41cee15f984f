"""What the race kit does to futures (``Action``), and the harness it does it through.

A harness is the adapter between the kit and one client: it creates futures and
delivers named actions to them. It needs none of futurefsm's types: a future is any
``concurrent.futures.Future``, an action is a string, states are whatever the harness
reports (or nothing). Subclass ``RaceHarness`` (or write any object with the same
methods) and override ``create`` and ``deliver``; everything else has a default.

An ``Action`` is one thing that can happen: a message delivered on the delivering
thread (a result, a cancel confirm, a disconnect), or a user call on a user thread
(``cancel()``, ``result()``, ``add_done_callback`` with a callback that acts). The
kit's defaults are ``DEFAULT_ACTIONS``; add your own (a bulk cancel, a disconnect,
anything your client does) with ``Action(name, ...)`` and handle the name in
``deliver``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "DEFAULT_ACTIONS",
    "WAIT_AND_RACE_ACTIONS",
    "Action",
    "Move",
    "RaceHarness",
    "ResultValue",
    "TaskError",
    "Unsupported",
    "same_result",
]


@dataclass(frozen=True)
class ResultValue:
    """The value of a successful result number ``n``: equal iff ``n`` is equal."""

    n: int


class TaskError(Exception):
    """The exception a failed task number ``n`` raised."""

    def __init__(self, n: int) -> None:
        super().__init__(f"task error #{n}")
        self.n = n

    def __reduce__(self) -> tuple[Any, ...]:
        return (TaskError, (self.n,))


class Unsupported(Exception):
    """Raised by ``RaceHarness.deliver`` when an action does not apply to this client
    (or not in the future's current state): the kit drops the sequence, no finding."""


@dataclass(frozen=True)
class Action:
    """One kind of step (see the module docstring).

    Every parameter is listed, with its default, in docs/race-kit.md (generated
    from this class).
    """

    name: str
    """The name ``deliver`` receives and reports print."""
    trigger: str | None = None
    """The contract trigger it fires on its target(s); None: none (the model keeps
    its state)."""
    kind: Literal["deliver", "cancel", "result", "callback", "wait", "as_completed", "race"] = (
        "deliver"
    )
    """Who performs it: ``"deliver"``: ``harness.deliver(name, future, payload)`` (or
    ``run``); ``"cancel"``: ``harness.cancel(future)``; ``"result"``: a blocking
    ``future.result()``; ``"callback"``: ``add_done_callback`` with a callback that
    does ``behaviour``; ``"wait"``: ``concurrent.futures.wait`` over every future with
    ``return_when``; ``"as_completed"``: ``concurrent.futures.as_completed`` over every
    future; ``"race"``: the ``calls`` on one future, each on a thread of its own,
    released together by a barrier."""
    scope: Literal["one", "all"] = "one"
    """``"one"``: aimed at one future; ``"all"``: at the client (``future=None``), and
    in the contract it fires ``trigger`` on every future not yet terminal."""
    thread: Literal["delivering", "user"] = "delivering"
    """Where it runs: the delivering (I/O) thread, or a user thread of its own (where
    it may block, e.g. a ``cancel()`` waiting for its answer)."""
    payload: Literal["value", "exception"] | None = None
    """What a result carries: a fresh ``ResultValue`` or ``TaskError`` per delivery."""
    behaviour: Literal["raise", "cancel_other", "result_other"] | None = None
    """For ``kind="callback"``: raise; cancel another future; call ``result(0)`` on
    itself and on another future."""
    run: Callable[[Any, Future[Any] | None, Any], Any] | None = None
    """For ``kind="deliver"``: do it here instead of ``harness.deliver``."""
    return_when: Literal["FIRST_COMPLETED", "FIRST_EXCEPTION", "ALL_COMPLETED"] = "ALL_COMPLETED"
    """For ``kind="wait"``: when ``concurrent.futures.wait`` returns."""
    calls: tuple[Literal["cancel", "cancelled", "result"], ...] = ()
    """For ``kind="race"``: the user calls released together (``harness.cancel``,
    ``cancelled()``, ``result()``)."""
    follows_harness: bool = False
    """The contract cannot say what this step does (e.g. a disconnect that cancels
    futures one at a time, waiting for each answer): while it runs, and right after,
    the contract model takes the states the harness reports instead of checking them
    (the universal invariants are checked as ever)."""
    doc: str = ""
    """What it stands for, in a sentence (the reference table prints it)."""

    @property
    def needs_other(self) -> bool:
        """True if it names a second future (a callback acting on another)."""
        return self.behaviour in ("cancel_other", "result_other")


@dataclass(frozen=True)
class Move:
    """One step of a sequence: an action aimed at future ``target`` (``other`` for a
    callback acting on a second future)."""

    action: Action
    target: int | None = None
    other: int | None = None

    def __str__(self) -> str:
        name = self.action.name
        if self.target is None:
            return name
        if self.action.kind == "callback":
            what = {"raise": "raises", "cancel_other": "cancels", "result_other": "result of"}
            other = f" f{self.other}" if self.other is not None else ""
            return f"add_done_callback(f{self.target}, {what[self.action.behaviour or '']}{other})"
        if self.action.kind == "race":
            return f"race(f{self.target}: {', '.join(self.action.calls)})"
        return f"{name}(f{self.target})"


DEFAULT_ACTIONS: tuple[Action, ...] = (
    Action("sent", "sent", doc="the task was handed to the wire"),
    Action("result_success", "recv_result", payload="value", doc="a result arrives"),
    Action("result_failed", "recv_result", payload="exception", doc="a failure arrives"),
    Action("confirm_canceled", "recv_confirm_canceled", doc="the scheduler confirms a cancel"),
    Action("confirm_not_found", "recv_confirm_not_found", doc="the scheduler lost the task"),
    Action("confirm_cancel_failed", "recv_confirm_cancel_failed", doc="cancel refused"),
    Action("cancel_timed_out", "cancel_timed_out", doc="a cancel deadline passed"),
    Action("connection_lost", "connection_lost", doc="this future's connection is lost"),
    Action(
        "disconnect",
        "connection_lost",
        scope="all",
        doc="the client disconnects: every live future learns the connection is lost",
    ),
    Action(
        "cancel_all",
        "user_cancel",
        scope="all",
        thread="user",
        doc="the user cancels every future of the client at once (a bulk cancel)",
    ),
    Action(
        "cancel",
        "user_cancel",
        kind="cancel",
        thread="user",
        doc="the user calls cancel() (it may wait for the answer)",
    ),
    Action("result", kind="result", thread="user", doc="the user waits in result()"),
    Action(
        "callback_raises",
        kind="callback",
        thread="user",
        behaviour="raise",
        doc="add_done_callback with a callback that raises",
    ),
    Action(
        "callback_cancels",
        kind="callback",
        thread="user",
        behaviour="cancel_other",
        doc="add_done_callback with a callback that cancels another future (the contract "
        "fires user_cancel on it when the callback runs)",
    ),
    Action(
        "callback_results",
        kind="callback",
        thread="user",
        behaviour="result_other",
        doc="add_done_callback with a callback that calls result(timeout=0) on its future "
        "and another",
    ),
)
"""The kit's default steps. Names a harness does not handle: raise ``Unsupported``, or
list them in ``RaceHarness.unsupported``."""

WAIT_AND_RACE_ACTIONS: tuple[Action, ...] = (
    *(
        Action(
            f"wait_{mode.lower()}",
            kind="wait",
            thread="user",
            scope="all",
            return_when=mode,  # type: ignore[arg-type]
            doc=f"the user waits in concurrent.futures.wait(every future, {mode})",
        )
        for mode in ("FIRST_COMPLETED", "FIRST_EXCEPTION", "ALL_COMPLETED")
    ),
    Action(
        "as_completed",
        kind="as_completed",
        thread="user",
        scope="all",
        doc="the user iterates concurrent.futures.as_completed(every future)",
    ),
    Action(
        "cancel_race",
        "user_cancel",
        kind="race",
        thread="user",
        calls=("cancel", "cancel"),
        doc="two cancel() calls released together by a barrier",
    ),
    Action(
        "cancel_result_race",
        "user_cancel",
        kind="race",
        thread="user",
        calls=("cancel", "result", "cancelled"),
        doc="cancel(), result() and cancelled() released together by a barrier",
    ),
)
"""Steps that watch or race several calls: ``concurrent.futures.wait`` in its three
modes, ``as_completed``, and user calls released together by a barrier. Add them
with ``actions=(*DEFAULT_ACTIONS, *WAIT_AND_RACE_ACTIONS)``: they widen the search
(and its cost) by half."""


def same_result(expected: Any, got: Any) -> bool:
    """Default payload comparison: values by ``==``; exceptions by identity, by equal
    type and args, or by being in ``got``'s ``__cause__``/``__context__`` chain (a
    client that wraps the remote exception)."""
    if not isinstance(expected, BaseException):
        try:
            return bool(expected == got)
        except Exception:
            return False
    seen = 0
    while isinstance(got, BaseException) and seen < 10:
        if got is expected or (type(got) is type(expected) and got.args == expected.args):
            return True
        got = got.__cause__ or got.__context__
        seen += 1
    return False


class RaceHarness:
    """Base class of a harness: one client and the futures it makes (a fresh harness
    per sequence). Override ``create`` and ``deliver``; the rest are defaults."""

    unsupported: Collection[str] = ()
    """Names of actions this client has no equivalent of: left out of the search."""

    def create(self) -> Future[Any]:
        """A new future, in the state the contract's ``born`` says (pending or sent)."""
        raise NotImplementedError

    def deliver(self, action: str, future: Future[Any] | None, payload: Any) -> None:
        """Do ``action`` to ``future`` (None for a client-wide action) as the client
        would; ``payload`` is the result value or exception of a result action.
        Raise ``Unsupported`` if it does not apply."""
        raise Unsupported(action)

    def cancel(self, future: Future[Any]) -> Any:
        """The user's cancel: ``future.cancel()``. Override for e.g. ``cancel(timeout)``."""
        return future.cancel()

    def state(self, future: Future[Any]) -> object | None:
        """The future's state in the contract's terms, or None if unknown (then only
        ``done()``/``cancelled()`` are compared with the contract)."""
        return None

    def same_result(self, expected: Any, got: Any) -> bool:
        """Whether a future's result or exception ``got`` is the ``expected`` payload
        the kit delivered (default: ``same_result``)."""
        return same_result(expected, got)

    def attach_delivering_thread(self, thread: threading.Thread) -> None:
        """Deliveries come from ``thread`` (for clients that must not block there)."""

    def close(self) -> None:
        """Release the client: stop threads, fail or wake whatever still waits."""
