"""Judge one real future at rest: after a test drove it, nothing more is happening.

``check_at_rest(future)`` reads the future once, without ever waiting (``cancelled()``
is called only on a future that is ``done()``, where it cannot wait), and checks:

- the universal layer (``laws.UNIVERSAL``): ``cancelled()`` implies ``done()``;
  ``result(timeout=0)`` and ``exception(timeout=0)`` raise ``CancelledError`` exactly
  when cancelled, time out exactly while not done, and agree with each other;
- with a contract (``Contract.futurefsm()`` by default for a futurefsm future, none for
  any other): ``done()``/``cancelled()`` are what the contract says in the state the
  future reports; what ``concurrent.futures`` sees (``_state``, ``running()``) is the
  contract's stdlib view of that state; the future's history is a legal path of the
  table from its initial state to the state it is in, entering a terminal state once;
  and, given ``registered``, the client holds the future exactly while it is live.

It returns a ``RestReport``: the ``Finding``s (each names its invariant; ``moves`` is
empty, nothing was driven) and ``report``, the future's state, cancel outcome, history
table and path diagram, for a failure message. ``assert_clean()`` raises ``RaceFound``.

A future whose state the contract does not know is an error (``ValueError``), not a
silent skip: the contract is the wrong one.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Sequence
from concurrent.futures import _base
from dataclasses import dataclass, field
from typing import Any

from .contract import Contract
from .kit import DEFAULT_CONTRACT, Finding, RaceFound
from .laws import INVARIANTS

__all__ = ["RestReport", "check_at_rest", "check_history", "format_history"]


@dataclass
class RestReport:
    """What ``check_at_rest`` read and found."""

    name: str
    """How the report calls the future."""
    state: str | None
    """The state the future reports (None: it reports none)."""
    findings: list[Finding] = field(default_factory=list)
    """Every invariant broken, in the order checked."""
    report: str = ""
    """State, cancel outcome, history table and path diagram (for a failure message)."""

    @property
    def invariants(self) -> list[str]:
        """Names of the invariants broken."""
        return [f.invariant.name for f in self.findings]

    def __str__(self) -> str:
        broken = [f"- {f.invariant.layer} {f.invariant.name}: {f.message}" for f in self.findings]
        return "\n".join([*(broken or ["no invariant broken"]), self.report])

    def assert_clean(self) -> None:
        """Raise ``RaceFound`` with the whole report if an invariant is broken."""
        if self.findings:
            raise RaceFound(str(self))


def _is_futurefsm(future: Any) -> bool:
    from ..fsm import FutureState

    return isinstance(getattr(future, "state", None), FutureState)


def _outcome(call: Any) -> tuple[str, Any]:
    try:
        return ("value", call())
    except BaseException as error:  # every outcome is judged below
        return ("raised", error)


def format_history(history: Sequence[Sequence[Any]] | None) -> str:
    """A history of ``(time, trigger, source, dest)`` as a table, times relative."""
    if history is None:
        return "    (the future keeps no history)"
    if not history:
        return "    (no trigger fired)"
    start = history[0][0]
    rows = [f"    {'t (ms)':>9}  {'trigger':<28}{'from':<18}to"]
    for when, trigger, source, dest in history:
        trigger, source, dest = (Contract.name_of(x) for x in (trigger, source, dest))
        rows.append(f"    {(when - start) * 1000:9.3f}  {trigger:<28}{source:<18}{dest}")
    return "\n".join(rows)


def check_at_rest(
    future: Any,
    *,
    contract: Contract | None = DEFAULT_CONTRACT,
    registered: bool | None = None,
    name: str | None = None,
) -> RestReport:
    """Judge ``future`` as it is now (see the module docstring).

    ``contract``: the declared table; by default ``Contract.futurefsm()`` for a future
    whose ``state`` is a futurefsm ``FutureState``, else None (universal layer only).
    The future's state is its ``state`` attribute, its history its ``history``
    attribute (either may be absent). ``registered``: whether the client still holds
    the future (None: not checked). ``name``: how the report calls it (its repr).
    """
    if contract is DEFAULT_CONTRACT:
        contract = Contract.futurefsm() if _is_futurefsm(future) else None
    name = name or repr(future)
    condition = getattr(future, "_condition", None)
    lock = condition if hasattr(condition, "__enter__") else None
    # One consistent read of what the lock guards; nothing here waits.
    if lock is not None:
        with lock:
            state, stdlib, running, done = (
                getattr(future, "state", None),
                getattr(future, "_state", None),
                future.running(),
                future.done(),
            )
            history = getattr(future, "history", None)
            outcome = getattr(future, "cancel_outcome", None)
    else:
        state, stdlib = getattr(future, "state", None), getattr(future, "_state", None)
        running, done = future.running(), future.done()
        history, outcome = getattr(future, "history", None), getattr(future, "cancel_outcome", None)
    state_name = None if state is None else Contract.name_of(state)
    if contract is not None and state is not None and not contract.knows(state):
        raise ValueError(
            f"{name} reports state {state_name!r}, which the contract {contract.name!r} "
            f"does not know (it knows {list(contract.states)}): pass the contract this "
            "future declares, or contract=None for the universal layer only"
        )
    rest = RestReport(name, state_name)

    def broken(invariant: str, message: str) -> None:
        rest.findings.append(Finding(INVARIANTS[invariant], f"{name}: {message}", ()))

    # A done future's cancelled() cannot wait; a live one's may (futurefsm's waits for
    # a cancel's answer), so its cancelled() is the stdlib's view instead.
    if done:
        cancelled = future.cancelled()
    else:
        cancelled = stdlib in (_base.CANCELLED, _base.CANCELLED_AND_NOTIFIED)
    result = _outcome(lambda: future.result(timeout=0))
    error = _outcome(lambda: future.exception(timeout=0))
    _universal(broken, done, cancelled, result, error)
    if contract is not None and state_name is not None:
        _contract(broken, contract, state_name, done, cancelled, stdlib, running)
        if history is not None:
            _history(broken, contract, history, state_name)
        if registered is not None and registered is (state_name in contract.terminal):
            held = "still holds" if registered else "let go of"
            broken("client_holds_live_futures", f"in {state_name} but the client {held} it")
    rest.report = _describe(name, state_name, outcome, history, contract)
    return rest


def _universal(
    broken: Any, done: bool, cancelled: bool, result: tuple[str, Any], error: tuple[str, Any]
) -> None:
    if cancelled and not done:
        broken("cancelled_implies_done", "cancelled() is True, done() False")
    for call, (kind, value) in (("result", result), ("exception", error)):
        raised_cancelled = kind == "raised" and isinstance(value, cf.CancelledError)
        timed_out = kind == "raised" and isinstance(value, cf.TimeoutError)
        if raised_cancelled is not cancelled or timed_out is done:
            broken(
                "result_raises_cancelled_iff_cancelled",
                f"done() {done}, cancelled() {cancelled}, but {call}(timeout=0) "
                f"{'raised' if kind == 'raised' else 'returned'} {value!r}",
            )
            return
    if done and not cancelled:
        kind, value = result
        _, exception = error
        if (kind == "value") is not (exception is None) or (
            kind == "raised" and exception is not value
        ):
            broken(
                "result_raises_cancelled_iff_cancelled",
                f"result(timeout=0) gave {kind} {value!r} but exception(timeout=0) "
                f"returned {exception!r}",
            )


def _contract(
    broken: Any,
    contract: Contract,
    state: str,
    done: bool,
    cancelled: bool,
    stdlib: str | None,
    running: bool,
) -> None:
    want = (state in contract.terminal, state in contract.cancelled)
    if (done, cancelled) != want:
        broken(
            "contract_done",
            f"done() {done}, cancelled() {cancelled}; in {state} the contract says done() "
            f"{want[0]}, cancelled() {want[1]}",
        )
    view = contract.stdlib_states.get(state) if contract.stdlib_states else None
    if view is not None and (stdlib, running) != (view, view == _base.RUNNING):
        broken(
            "contract_stdlib_view",
            f"in {state}: concurrent.futures sees _state {stdlib!r} and running() "
            f"{running}; the contract says {view!r} and {view == _base.RUNNING}",
        )


def check_history(
    history: Sequence[Any],
    state: Any,
    *,
    contract: Contract | None = None,
    start: Any = None,
) -> list[str]:
    """What is wrong with ``history`` (``(time, trigger, source, dest)`` entries) as a
    path of ``contract``'s table (futurefsm's by default) from ``start`` (its initial
    state by default) to ``state``, entering a terminal state once: a message per
    problem, none if it is a legal path."""
    contract = contract or Contract.futurefsm()
    problems: list[str] = []
    _history(
        lambda _, message: problems.append(message),
        contract,
        history,
        Contract.name_of(state),
        None if start is None else Contract.name_of(start),
    )
    return problems


def _history(
    broken: Any, contract: Contract, history: Sequence[Any], state: str, start: str | None = None
) -> None:
    previous = contract.initial if start is None else start
    entered = 0
    for number, (_, trigger, source, dest) in enumerate(history, start=1):
        trigger, source, dest = (Contract.name_of(x) for x in (trigger, source, dest))
        if source != previous:
            broken(
                "contract_history",
                f"history step {number} starts in {source}, the step before ended in {previous}",
            )
            return
        if dest != contract.fire(source, trigger):
            broken(
                "contract_history",
                f"history step {number}: {trigger} took {source} to {dest}; the table says "
                f"{contract.fire(source, trigger)}",
            )
            return
        entered += source not in contract.terminal and dest in contract.terminal
        previous = dest
    if previous != state:
        broken("contract_history", f"the history ends in {previous}, the future is in {state}")
    elif entered != (state in contract.terminal and _starts_live(contract, start)):
        broken("contract_history", f"the history enters a terminal state {entered} times")


def _starts_live(contract: Contract, start: str | None) -> bool:
    """True unless the path starts in a terminal state (then it enters none)."""
    return start is None or start not in contract.terminal


def _describe(
    name: str,
    state: str | None,
    outcome: Any,
    history: Sequence[Any] | None,
    contract: Contract | None,
) -> str:
    lines = [f"{name}: state {state}, cancel_outcome {outcome}", "  history:"]
    lines.append(format_history(history))
    if history and contract is not None and contract.futurefsm_table:
        from ..diagrams import path_diagram

        try:
            lines += ["  path (Mermaid):", path_diagram(history)]
        except ValueError as error:  # a history off the table cannot be drawn
            lines.append(f"  (no path diagram: {error})")
    return "\n".join(lines)
