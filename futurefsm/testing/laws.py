"""The two layers of invariants the race kit checks, by name.

``UNIVERSAL``: what every ``concurrent.futures.Future`` owes its users, whatever its
implementation and its protocol. A violation here is a bug in the future, full stop.

``CONTRACT``: what the future's *declared* contract (a ``Contract``: futurefsm's
``TRANSITION_TABLE`` by default, or the user's own table) says. A violation here means
the implementation and its table disagree: either may be wrong.

Every finding names one of these, and reports print its ``doc``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["CONTRACT", "INVARIANTS", "UNIVERSAL", "Invariant"]


@dataclass(frozen=True)
class Invariant:
    """One named invariant of one layer."""

    name: str
    layer: Literal["universal", "contract"]
    doc: str

    def __str__(self) -> str:
        return self.name


UNIVERSAL: tuple[Invariant, ...] = (
    Invariant(
        "one_terminal_state",
        "universal",
        "a future that is done stays done with the same ending: FINISHED with one "
        "result, or cancelled; never one then the other, never a result replaced",
    ),
    Invariant(
        "waiters_notified_once",
        "universal",
        "a waiter installed by concurrent.futures.wait/as_completed is notified exactly "
        "once, when the future becomes done, with the right kind (result, exception, "
        "cancelled); never before",
    ),
    Invariant(
        "callbacks_run_once",
        "universal",
        "every done-callback runs exactly once, after done() is True; one added to a "
        "future already done runs at once",
    ),
    Invariant(
        "cancelled_implies_done",
        "universal",
        "cancelled() True implies done() True",
    ),
    Invariant(
        "cancelled_tells_the_ending",
        "universal",
        "cancelled(), even one that waited for a cancel's answer, returns True exactly "
        "when the future ended cancelled, and False while it is not done",
    ),
    Invariant(
        "result_raises_cancelled_iff_cancelled",
        "universal",
        "result() raises CancelledError exactly when cancelled() is True; it times out "
        "while not done, and a blocked result() returns once the future is done",
    ),
    Invariant(
        "no_call_blocks_forever",
        "universal",
        "no call blocks forever: a delivery on the delivering thread finishes, a user "
        "call finishes or parks waiting, and a call waiting on a future returns once "
        "that future is done",
    ),
    Invariant(
        "nothing_raises_on_delivering_thread",
        "universal",
        "delivering a message (and running the done-callbacks it triggers) never "
        "raises on the delivering thread: a callback's exception is logged, not raised",
    ),
    Invariant(
        "callback_errors_contained",
        "universal",
        "add_done_callback on a future already done runs the callback and returns: the "
        "callback's exception is logged, never raised to the caller",
    ),
)
"""The invariants every ``concurrent.futures.Future`` keeps."""

CONTRACT: tuple[Invariant, ...] = (
    Invariant(
        "contract_state",
        "contract",
        "the state the harness reports is the one the declared table reaches for the "
        "steps delivered (skipped where the harness reports no state or one the "
        "contract does not know)",
    ),
    Invariant(
        "contract_done",
        "contract",
        "done() is True exactly in the table's terminal states, cancelled() exactly in "
        "its cancelled ones",
    ),
    Invariant(
        "contract_result",
        "contract",
        "a future the table finishes with a delivered result keeps that result (or "
        "exception), as the harness's comparison hook judges",
    ),
    Invariant(
        "contract_stdlib_view",
        "contract",
        "what concurrent.futures sees (_state, running()) is the stdlib view the "
        "contract declares for the state the future is in",
    ),
    Invariant(
        "contract_history",
        "contract",
        "the history the future keeps is a legal path of the table, from its initial "
        "state to the state it is in, entering a terminal state once",
    ),
    Invariant(
        "client_holds_live_futures",
        "contract",
        "the client holds a future exactly while the table says it is live (not terminal)",
    ),
)
"""The invariants a declared ``Contract`` adds."""

INVARIANTS: dict[str, Invariant] = {i.name: i for i in (*UNIVERSAL, *CONTRACT)}
"""Every invariant by name."""
