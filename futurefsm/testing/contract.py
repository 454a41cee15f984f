"""The contract layer: the state machine a future *declares* it follows.

The universal invariants (``laws.UNIVERSAL``) hold for every
``concurrent.futures.Future``. A contract adds what one particular implementation
promises on top: which state each step leads to. It is a transition table, in one of
two literal forms:

- futurefsm's own form, ``{(state, trigger): dest}`` where ``dest`` may be a ``Cell``
  (anything whose first field is the destination state); states and triggers may be
  strings or Enums (compared by value). ``Contract.futurefsm()`` is futurefsm's
  ``TRANSITION_TABLE``.
- the ``transitions`` library's form: a list of ``{"trigger", "source", "dest"}``
  dicts, ``source`` a state, a list of states or ``"*"``
  (``Contract.from_transitions``).

A (state, trigger) pair the table does not name is a self-loop (as a ``transitions``
machine with ``ignore_invalid_triggers=True``). ``born`` says where a new future
starts: ``"pending"`` (the initial state) or ``"sent"`` (the state the ``sent``
trigger leads to from there), for clients whose futures exist only once submitted.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable, Mapping
from concurrent.futures import _base
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

__all__ = ["STDLIB_STATE", "Born", "Contract"]

Born = Literal["pending", "sent"]
"""Where a new future starts: before or after its task was sent."""


STDLIB_STATE: dict[str, str] = {
    "pending": _base.PENDING,
    "running": _base.RUNNING,
    "cancel_requested": _base.RUNNING,
    "cancelled": _base.CANCELLED_AND_NOTIFIED,
    "done": _base.FINISHED,
}
"""docs/transitions.md, States: the ``_state`` concurrent.futures must see in each of
futurefsm's states (``Contract.futurefsm().stdlib_states``)."""


def _name(value: Any) -> str:
    """A state or trigger as a plain string (an Enum by its value)."""
    if isinstance(value, Enum):
        return str(value.value)
    return str(value)


@dataclass(frozen=True)
class Contract:
    """A declared transition table (see the module docstring). Build one with
    ``Contract.futurefsm()``, ``Contract.from_table()`` or ``Contract.from_transitions()``."""

    name: str
    """How reports call it."""
    states: tuple[str, ...]
    """Every state the table names."""
    table: Mapping[tuple[str, str], str]
    """``(state, trigger) -> dest``; a missing pair is a self-loop."""
    initial: str
    """The state of a future before anything happened to it."""
    terminal: frozenset[str]
    """States in which ``done()`` must be True."""
    cancelled: frozenset[str]
    """Terminal states in which ``cancelled()`` must be True."""
    born: Born = "pending"
    """Where a new future starts (see the module docstring)."""
    sent_trigger: str = "sent"
    """The trigger ``born="sent"`` applies to ``initial``."""
    stdlib_states: Mapping[str, str] | None = field(default=None, compare=False)
    """The ``concurrent.futures`` ``_state`` each state must show (None: not
    declared); ``check_at_rest`` compares it, and ``running()`` with it."""
    futurefsm_table: bool = field(default=False, compare=False)
    """True for futurefsm's own table: failure reports then draw the path with
    ``futurefsm.diagrams.path_diagram``."""

    def __post_init__(self) -> None:
        known = set(self.states)
        unknown = {self.initial, *self.terminal, *self.cancelled} - known
        unknown |= {x for (src, _), dst in self.table.items() for x in (src, dst)} - known
        if unknown:
            raise ValueError(f"contract {self.name!r}: unknown states {sorted(unknown)}")
        if not self.cancelled <= self.terminal:
            raise ValueError(
                f"contract {self.name!r}: cancelled states {sorted(self.cancelled)} must "
                f"be terminal ({sorted(self.terminal)})"
            )
        if self.born not in ("pending", "sent"):
            raise ValueError(f"born must be 'pending' or 'sent', not {self.born!r}")
        if self.born == "sent" and (self.initial, self.sent_trigger) not in self.table:
            raise ValueError(
                f"contract {self.name!r}: born='sent' but the table has no "
                f"{self.sent_trigger!r} transition from {self.initial!r}"
            )

    # ------------------------------------------------------------------ builders

    @classmethod
    def from_table(
        cls,
        table: Mapping[tuple[Any, Any], Any],
        *,
        initial: Any,
        terminal: Collection[Any],
        cancelled: Collection[Any],
        born: Born = "pending",
        sent_trigger: Any = "sent",
        name: str = "declared table",
    ) -> Contract:
        """A contract from ``{(state, trigger): dest}`` (``dest`` may be a ``Cell``, or
        any tuple whose first item is the destination)."""
        flat: dict[tuple[str, str], str] = {}
        states: dict[str, None] = {_name(initial): None}
        for (source, trigger), dest in table.items():
            if isinstance(dest, tuple):
                dest = dest[0]
            flat[_name(source), _name(trigger)] = _name(dest)
            states.update({_name(source): None, _name(dest): None})
        states.update({_name(s): None for s in (*terminal, *cancelled)})
        return cls(
            name=name,
            states=tuple(states),
            table=flat,
            initial=_name(initial),
            terminal=frozenset(_name(s) for s in terminal),
            cancelled=frozenset(_name(s) for s in cancelled),
            born=born,
            sent_trigger=_name(sent_trigger),
        )

    @classmethod
    def from_transitions(
        cls,
        states: Iterable[Any],
        transitions: Iterable[Mapping[str, Any]],
        *,
        initial: Any,
        cancelled: Collection[Any],
        terminal: Collection[Any] | None = None,
        born: Born = "pending",
        sent_trigger: Any = "sent",
        name: str = "declared transitions",
    ) -> Contract:
        """A contract from a ``transitions``-style table: ``states`` and a list of
        ``{"trigger", "source", "dest"}`` dicts (``source``: a state, a list, or
        ``"*"``). The first transition listed for a (state, trigger) pair wins, as in
        ``transitions``. ``terminal`` defaults to the states no transition leaves."""
        names = [_name(s) for s in states]
        table: dict[tuple[str, str], str] = {}
        for row in transitions:
            missing = {"trigger", "source", "dest"} - set(row)
            if missing:
                raise ValueError(f"transition {dict(row)!r} lacks {sorted(missing)}")
            sources = row["source"]
            if sources == "*":
                sources = names
            elif isinstance(sources, (str, Enum)):
                sources = [sources]
            dest = row["dest"]
            for source in sources:
                key = (_name(source), _name(row["trigger"]))
                table.setdefault(key, _name(source) if dest is None else _name(dest))
        if terminal is None:
            leaving = {s for (s, _), d in table.items() if d != s}
            terminal = [s for s in names if s not in leaving]
        return cls(
            name=name,
            states=tuple(names),
            table=table,
            initial=_name(initial),
            terminal=frozenset(_name(s) for s in terminal),
            cancelled=frozenset(_name(s) for s in cancelled),
            born=born,
            sent_trigger=_name(sent_trigger),
        )

    @classmethod
    def futurefsm(cls, born: Born = "pending") -> Contract:
        """futurefsm's own ``TRANSITION_TABLE`` (docs/transitions.md).

        Built once per ``born`` and shared (a contract is frozen): the checks after
        every step ask for it, and building it costs about half a millisecond."""
        return _futurefsm_contract(cls, born)

    @classmethod
    def _build_futurefsm(cls, born: Born) -> Contract:
        from ..fsm import TERMINAL_STATES, TRANSITION_TABLE, FutureState

        contract = cls.from_table(
            TRANSITION_TABLE,
            initial=FutureState.PENDING,
            terminal=TERMINAL_STATES,
            cancelled=[FutureState.CANCELLED],
            born=born,
            name="futurefsm TRANSITION_TABLE",
        )
        object.__setattr__(contract, "futurefsm_table", True)
        object.__setattr__(contract, "stdlib_states", STDLIB_STATE)
        return contract

    # ------------------------------------------------------------------ use

    @property
    def born_state(self) -> str:
        """The state a new future is in."""
        if self.born == "sent":
            return self.table[self.initial, self.sent_trigger]
        return self.initial

    def fire(self, state: str, trigger: str) -> str:
        """Where ``trigger`` takes a future in ``state`` (missing pairs stay)."""
        return self.table.get((state, trigger), state)

    def knows(self, state: Any) -> bool:
        """True if ``state`` (a string or an Enum) is one of the contract's states."""
        return state is not None and _name(state) in self.states

    @staticmethod
    def name_of(value: Any) -> str:
        """A state or trigger as the contract spells it (an Enum by its value)."""
        return _name(value)


@functools.cache
def _futurefsm_contract(cls: type[Contract], born: Born) -> Contract:
    return cls._build_futurefsm(born)
