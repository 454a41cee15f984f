"""Diagrams and docs generated from the one transition table (``futurefsm diagrams``).

Everything here is derived from ``futurefsm.fsm.table.TRANSITION_TABLE``:

- ``future.mmd``: a Mermaid ``stateDiagram-v2`` (GitHub renders it; the README shows it);
- ``future.dot``: the same diagram in Graphviz DOT, and ``future.svg`` rendered from it
  when the ``dot`` program is installed (nothing else needs Graphviz);
- ``transitions.md``: the whole table as markdown, plus which protocol message or local
  event is behind each trigger (``TRIGGER_SOURCES``);
- ``docs/transitions.md`` (written when ``--out`` is the repository's ``diagrams``
  directory beside ``docs/``): the users' contract page, with the states and what
  ``concurrent.futures`` sees of each (``STATE_MEANINGS`` and the adapter's own
  mapping), the Mermaid diagram and the same table.

The output is deterministic: states and triggers are always walked in their Enum order
and nothing carries a timestamp, so a test can compare the committed files with fresh
ones byte for byte.

How the table is drawn
----------------------
Cells that change the state become edges labelled ``trigger [OUTCOME] / effect``; cells
between the same two states are merged into one edge with one line per trigger. The 23
stale cells would bury the main flow under self-loops, so they are not drawn: each state
box counts them ("stale: 7 triggers"; the DOT/SVG tooltip names them, transitions.md has
every cell). The few internal cells that are not stale (``user_cancel`` while a cancel
is in flight or after the end) are one small self-loop per state, dashed and grey in DOT.

``path_diagram`` draws the same diagram with one future's history on it: visited states
filled, taken edges emphasised and each taken line numbered with its step(s); a stale
step the history took appears as a highlighted self-loop on its state.

Why not ``transitions.extensions.diagrams``: its graphviz engines need the pygraphviz or
graphviz packages (not dependencies of futurefsm), and its Mermaid engine, which needs
nothing, labels edges with trigger names only (no outcome or effect), draws every stale
trigger as a full self-loop and marks some model's current state as active. The DOT and
Mermaid text is simple enough to write directly. This module is never imported by
``futurefsm.fsm`` or ``futurefsm.client``: drawing is not on the runtime path.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Literal, NamedTuple

from .fsm.machine import HistoryEntry
from .fsm.table import (
    TERMINAL_STATES,
    TRANSITION_TABLE,
    CancelOutcome,
    Effect,
    FutureState,
    Trigger,
)
from .scheduler_stub import task_table
from .scheduler_stub.task_table import HELD_STATES as TASK_HELD_STATES
from .scheduler_stub.task_table import INITIAL_STATE as INITIAL_TASK_STATE
from .scheduler_stub.task_table import TASK_TABLE, TaskEffect, TaskEvent, TaskState
from .scheduler_stub.task_table import TERMINAL_STATES as TASK_TERMINAL_STATES

__all__ = [
    "DOCS_SCHEDULER",
    "DOCS_TRANSITIONS",
    "EFFECT_LABELS",
    "README_END",
    "README_START",
    "STATE_MEANINGS",
    "TASK_DOCS_END",
    "TASK_DOCS_START",
    "TASK_FILES",
    "TRIGGER_SOURCES",
    "Edge",
    "HistoryLike",
    "TriggerSource",
    "docs_transitions_markdown",
    "dot",
    "edges",
    "generate",
    "main",
    "mermaid",
    "path_diagram",
    "stale_triggers",
    "task_docs_block",
    "task_dot",
    "task_generate",
    "task_member_docs",
    "task_mermaid",
    "task_table_markdown",
    "transitions_markdown",
    "update_readme",
    "update_task_docs",
    "write_path_diagram",
    "write_task_files",
]

README_START = "<!-- futurefsm:diagram:start -->"
"""Marker opening the README block that ``update_readme`` keeps equal to future.mmd."""
README_END = "<!-- futurefsm:diagram:end -->"
"""Marker closing that README block."""
DOCS_TRANSITIONS = "transitions.md"
"""The page ``main`` writes into ``docs/`` beside a ``diagrams`` output directory."""


class TriggerSource(NamedTuple):
    """What fires a trigger: an inbound protocol message or a local event."""

    kind: Literal["inbound", "local"]
    what: str
    """The message (with the field value that selects the trigger) or the event, markdown."""


TRIGGER_SOURCES: dict[Trigger, TriggerSource] = {
    Trigger.SENT: TriggerSource(
        "local", "the `Task` message was handed to the transport (the I/O thread sent it)"
    ),
    Trigger.USER_CANCEL: TriggerSource(
        "local", "the user called `TaskFuture.cancel()` (or `Client.cancel()` / `close()`)"
    ),
    Trigger.RECV_RESULT: TriggerSource(
        "inbound", "`TaskResult` of any `status`: `success`, `failed` or `worker_died`"
    ),
    Trigger.RECV_CONFIRM_CANCELED: TriggerSource("inbound", "`TaskCancelConfirm(kind=canceled)`"),
    Trigger.RECV_CONFIRM_NOT_FOUND: TriggerSource("inbound", "`TaskCancelConfirm(kind=not_found)`"),
    Trigger.RECV_CONFIRM_CANCEL_FAILED: TriggerSource(
        "inbound", "`TaskCancelConfirm(kind=cancel_failed)`"
    ),
    Trigger.CANCEL_TIMED_OUT: TriggerSource(
        "local", "the cancel deadline (`cancel(timeout)` or the client's `cancel_timeout`) passed"
    ),
    Trigger.CONNECTION_LOST: TriggerSource(
        "local",
        "the connection closed (ZMTP heartbeats unanswered for `connection_timeout`, or the "
        "scheduler went away or said `Disconnect`), or no scheduler answered within "
        "`connection_timeout`",
    ),
}
"""The protocol message or local event behind each trigger (the second table of
transitions.md). A test checks that every ``Trigger`` has an entry."""

EFFECT_LABELS: dict[Effect, str] = {
    Effect.NONE: "",
    Effect.STALE: "stale: nothing changes; counted and logged",
    Effect.SEND_CANCEL: "send TaskCancel",
    Effect.RESOLVE: "set result",
    Effect.FAIL_CONNECTION_LOST: "set ConnectionLostError",
}
"""How each ``Effect`` reads on an edge label and in transitions.md."""

STATE_MEANINGS: dict[FutureState, str] = {
    FutureState.PENDING: "created; the Task message not yet handed to the transport",
    FutureState.RUNNING: "the Task was sent; the scheduler owns it",
    FutureState.CANCEL_REQUESTED: "a TaskCancel was sent; no answer yet",
    FutureState.CANCELLED: "terminal: cancelled (`cancel_outcome` says how)",
    FutureState.DONE: "terminal: a result or an exception",
}
"""What each state means, for the states table of docs/transitions.md."""

_STATES: tuple[FutureState, ...] = tuple(FutureState)
_TRIGGERS: tuple[Trigger, ...] = tuple(Trigger)


# ---------------------------------------------------------------------------
# The table as edges
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Edge:
    """One drawn edge: the table cells from ``source`` that lead to ``dest``.

    An edge between two states carries every trigger that moves ``source`` to ``dest``.
    A self-loop (``quiet``) carries the internal cells of ``source`` that are not stale
    (they keep the state, like a second ``user_cancel``). Stale cells are not edges:
    each state box only counts them (``stale_triggers``).
    """

    source: FutureState
    dest: FutureState
    triggers: tuple[Trigger, ...]

    @property
    def quiet(self) -> bool:
        """True for the self-loop of internal cells that are not stale."""
        return self.source is self.dest


def stale_triggers(state: FutureState) -> tuple[Trigger, ...]:
    """The triggers that are stale in ``state``, in ``Trigger`` order."""
    return tuple(t for t in _TRIGGERS if TRANSITION_TABLE[state, t].effect is Effect.STALE)


def edges() -> list[Edge]:
    """The table's non-stale cells as edges, in a stable order.

    Sources in state order; from each, destinations in the order of the first trigger
    (in ``Trigger`` order) that leads there; the state's quiet self-loop, if any, last.
    """
    result: list[Edge] = []
    for source in _STATES:
        by_dest: dict[FutureState, list[Trigger]] = {}
        for trigger in _TRIGGERS:
            cell = TRANSITION_TABLE[source, trigger]
            if cell.effect is not Effect.STALE:
                by_dest.setdefault(cell.dest, []).append(trigger)
        loop = by_dest.pop(source, None)
        result.extend(Edge(source, dest, tuple(trigs)) for dest, trigs in by_dest.items())
        if loop:
            result.append(Edge(source, source, tuple(loop)))
    return result


def _cell_label(source: FutureState, trigger: Trigger) -> str:
    """``trigger [OUTCOME] / effect`` for one cell; ``(stale)`` or ``(no change)`` on loops."""
    cell = TRANSITION_TABLE[source, trigger]
    label = trigger.value
    if cell.outcome is not None:
        label += f" [{cell.outcome.name}]"
    if cell.effect is Effect.STALE:
        return label + " (stale)"
    if cell.dest is source:
        return label + " (no change)"
    effect = EFFECT_LABELS[cell.effect]
    return f"{label} / {effect}" if effect else label


def _stale_label(state: FutureState) -> str:
    count = len(stale_triggers(state))
    return f"stale: {count} trigger{'s' if count != 1 else ''}" if count else ""


# ---------------------------------------------------------------------------
# Paths: which cells and states a history took
# ---------------------------------------------------------------------------

HistoryLike = Iterable[
    HistoryEntry | tuple[float, Trigger | str, FutureState | str, FutureState | str]
]
"""A future's history: ``HistoryEntry`` tuples or raw ``(time, trigger, source, dest)``."""


@dataclass(frozen=True)
class _Path:
    """A history indexed for drawing: the 1-based step numbers of each table cell."""

    steps: dict[tuple[FutureState, Trigger], tuple[int, ...]]
    visited: frozenset[FutureState]
    last: FutureState | None


def _as_path(history: HistoryLike) -> _Path:
    steps: dict[tuple[FutureState, Trigger], list[int]] = {}
    visited: set[FutureState] = set()
    last: FutureState | None = None
    for number, entry in enumerate(history, start=1):
        _, raw_trigger, raw_source, raw_dest = entry
        trigger, source, dest = Trigger(raw_trigger), FutureState(raw_source), FutureState(raw_dest)
        expected = TRANSITION_TABLE[source, trigger].dest
        if dest is not expected:
            raise ValueError(
                f"history step {number}: {trigger.value} in {source.value} leads to "
                f"{expected.value} in the transition table, not {dest.value}"
            )
        steps.setdefault((source, trigger), []).append(number)
        visited.update((source, dest))
        last = dest
    return _Path(
        {cell: tuple(numbers) for cell, numbers in steps.items()}, frozenset(visited), last
    )


def _step_text(numbers: Sequence[int]) -> str:
    """``(1)``, ``(2, 4)``, ``(3-9)``: runs of consecutive steps are collapsed."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return "(" + ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs) + ")"


class _Line(NamedTuple):
    """One line of an edge label: a cell, and the steps that took it (if any)."""

    text: str
    steps: tuple[int, ...]


class _Drawn(NamedTuple):
    """An edge as drawn: its label lines, and whether a path took it."""

    source: FutureState
    dest: FutureState
    lines: tuple[_Line, ...]
    quiet: bool

    @property
    def taken(self) -> bool:
        return any(line.steps for line in self.lines)


def _drawn_edges(path: _Path | None) -> list[_Drawn]:
    """``edges()`` with label lines; a path adds its stale steps to the state's loop."""

    def line(source: FutureState, trigger: Trigger) -> _Line:
        steps = path.steps.get((source, trigger), ()) if path else ()
        return _Line(_cell_label(source, trigger), steps)

    loops: dict[FutureState, list[_Line]] = {}
    if path is not None:
        # A stale cell is only drawn when the history took it: on the state's loop.
        for source, trigger in _table_order():
            if (source, trigger) in path.steps and (source, trigger) in _STALE_CELLS:
                loops.setdefault(source, []).append(line(source, trigger))
    all_edges = edges()
    drawn = []
    for source in _STATES:
        for edge in (e for e in all_edges if e.source is source):
            lines = [line(source, t) for t in edge.triggers]
            if edge.quiet:
                lines += loops.pop(source, [])
            drawn.append(_Drawn(source, edge.dest, tuple(lines), edge.quiet))
        if source in loops:
            drawn.append(_Drawn(source, source, tuple(loops.pop(source)), True))
    return drawn


def _table_order() -> list[tuple[FutureState, Trigger]]:
    return [(s, t) for s in _STATES for t in _TRIGGERS]


_STALE_CELLS = frozenset(
    cell for cell in _table_order() if TRANSITION_TABLE[cell].effect is Effect.STALE
)


# ---------------------------------------------------------------------------
# Mermaid
# ---------------------------------------------------------------------------

_MERMAID_TERMINAL = "    classDef terminal stroke-width:3px"
_MERMAID_PATH_CLASSES = (
    "    classDef visited fill:#fde68a,stroke:#b45309,color:#000",
    "    classDef last fill:#f59e0b,stroke:#7c2d12,color:#000",
)


def _mermaid_text(path: _Path | None) -> str:
    if path is None:
        header = "%% Generated by `futurefsm diagrams` from TRANSITION_TABLE: do not edit."
    else:
        header = "%% One future's path: taken edges are bold, with their step numbers."
    out = ["stateDiagram-v2", header, "    direction TB", _MERMAID_TERMINAL]
    if path is not None:
        out += _MERMAID_PATH_CLASSES
    for state in _STATES:
        # A state with a description line draws as a titled box: the name, then the
        # count of its stale triggers (the cells that would otherwise be 23 loops).
        out.append(f'    state "{state.value}" as {state.value}')
        if stale := _stale_label(state):
            out.append(f"    {state.value} : {stale}")
    out.append(f"    [*] --> {FutureState.PENDING.value}")
    for edge in _drawn_edges(path):
        texts = [
            f"<b>{_step_text(line.steps)} {line.text}</b>" if line.steps else line.text
            for line in edge.lines
        ]
        out.append(f"    {edge.source.value} --> {edge.dest.value}: {'<br/>'.join(texts)}")
    out.append(f"    class {','.join(s.value for s in _STATES if s in TERMINAL_STATES)} terminal")
    if path is not None and path.last is not None:
        visited = [s.value for s in _STATES if s in path.visited and s is not path.last]
        if visited:
            out.append(f"    class {','.join(visited)} visited")
        out.append(f"    class {path.last.value} last")
    return "\n".join(out) + "\n"


def mermaid() -> str:
    """The transition table as a Mermaid ``stateDiagram-v2`` (the text of future.mmd)."""
    return _mermaid_text(None)


# ---------------------------------------------------------------------------
# Graphviz DOT
# ---------------------------------------------------------------------------

_TAKEN_COLOR = "#c2410c"
_QUIET_COLOR = "gray45"
_DOT_LEGEND = (
    "stale: late or duplicate triggers that change nothing (counted, logged);"
    " dashed: no change.  Every cell: transitions.md"
)


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _dot_edge_label(lines: Sequence[_Line], *, quiet: bool) -> str:
    """An HTML-like label: one left-aligned line per cell, taken lines bold and coloured."""
    rows = []
    for line in lines:
        if line.steps:
            text = _html(f"{_step_text(line.steps)} {line.text}")
            rows.append(f'<FONT COLOR="{_TAKEN_COLOR}"><B>{text}</B></FONT>')
        else:
            rows.append(_html(line.text))
    br = '<BR ALIGN="LEFT"/>'
    body = br.join(rows) + br
    return f'<<FONT POINT-SIZE="9">{body}</FONT>>' if quiet else f"<{body}>"


def _dot_node(state: FutureState, path: _Path | None) -> str:
    # One group keeps the main flow in a column: pending, running, cancel_requested.
    attrs = ["group=flow"] if state not in TERMINAL_STATES else ["peripheries=2"]
    stale = _stale_label(state)
    if stale:
        note = f'<BR/><FONT POINT-SIZE="9" COLOR="{_QUIET_COLOR}">{stale}</FONT>'
        attrs.append(f"label=<{state.value}{note}>")
        trigger_list = ", ".join(t.value for t in stale_triggers(state))
        attrs.append(f"tooltip={_dot_quote(f'stale in {state.value}: {trigger_list}')}")
    if path is not None and state in path.visited:
        fill = "#f59e0b" if state is path.last else "#fde68a"
        attrs += [f'fillcolor="{fill}"', f'color="{_TAKEN_COLOR}"', "penwidth=2"]
    return f"    {state.value} [{', '.join(attrs)}];"


def _dot_text(path: _Path | None) -> str:
    if path is None:
        header = "// Generated by `futurefsm diagrams` from TRANSITION_TABLE: do not edit."
    else:
        header = "// One future's path: taken edges are coloured, with their step numbers."
    out = [
        header,
        "digraph future {",
        '    graph [rankdir=TB, fontname="Helvetica", nodesep=0.8, ranksep=0.7, pad=0.3,',
        f'        labelloc=b, fontsize=10, fontcolor="{_QUIET_COLOR}",',
        f"        label={_dot_quote(_DOT_LEGEND)}];",
        '    node [shape=box, style="rounded,filled", fillcolor="#ffffff", fontname="Helvetica",',
        '        fontsize=13, margin="0.25,0.1"];',
        '    edge [fontname="Helvetica", fontsize=10, arrowsize=0.8];',
        '    start [shape=circle, style=filled, fillcolor=black, label="", width=0.18];',
    ]
    out += [_dot_node(state, path) for state in _STATES]
    terminals = "; ".join(s.value for s in _STATES if s in TERMINAL_STATES)
    out.append(f"    {{ rank=same; {terminals}; }}")
    out.append(f"    start -> {FutureState.PENDING.value};")
    for edge in _drawn_edges(path):
        attrs = [f"label={_dot_edge_label(edge.lines, quiet=edge.quiet)}"]
        if edge.quiet:
            attrs += ["style=dashed", f'fontcolor="{_QUIET_COLOR}"']
        if edge.taken:
            attrs += [f'color="{_TAKEN_COLOR}"', "penwidth=2.5"]
        elif edge.quiet:
            attrs.append(f'color="{_QUIET_COLOR}"')
        out.append(f"    {edge.source.value} -> {edge.dest.value} [{', '.join(attrs)}];")
    out.append("}")
    return "\n".join(out) + "\n"


def dot() -> str:
    """The transition table as a Graphviz DOT digraph (the text of future.dot)."""
    return _dot_text(None)


# ---------------------------------------------------------------------------
# Path diagrams
# ---------------------------------------------------------------------------


def path_diagram(history: HistoryLike, *, fmt: Literal["mermaid", "dot"] = "mermaid") -> str:
    """The state diagram with the path of ``history`` highlighted.

    ``history`` is a future's history (``future.history``, ``history_of(model)``) or the
    raw ``(time, trigger, source, dest)`` tuples. Visited states are filled (the last one
    darker), and every taken line of an edge label, stale triggers included, is bold and
    prefixed with its step number(s). Raises ``ValueError`` for a step that contradicts
    the transition table or an unknown ``fmt``.
    """
    path = _as_path(history)
    if fmt == "mermaid":
        return _mermaid_text(path)
    if fmt == "dot":
        return _dot_text(path)
    raise ValueError(f"unknown diagram format {fmt!r} (expected 'mermaid' or 'dot')")


def write_path_diagram(history: HistoryLike, path: Path | str) -> Path:
    """Write ``path_diagram(history)`` to ``path``: Mermaid for ``.mmd``, DOT for ``.dot``.

    Returns the path written. Raises ``ValueError`` for any other suffix.
    """
    target = Path(path)
    formats: dict[str, Literal["mermaid", "dot"]] = {".mmd": "mermaid", ".dot": "dot"}
    fmt = formats.get(target.suffix)
    if fmt is None:
        raise ValueError(f"{target}: expected a .mmd or .dot file name")
    target.write_text(path_diagram(history, fmt=fmt), encoding="utf-8")
    return target


# ---------------------------------------------------------------------------
# transitions.md
# ---------------------------------------------------------------------------


def _markdown_cell(source: FutureState, trigger: Trigger) -> str:
    cell = TRANSITION_TABLE[source, trigger]
    if cell.effect is Effect.STALE:
        return "stale"
    if cell.dest is source:
        return "no change"
    text = f"**{cell.dest.value}**"
    if cell.outcome is not None:
        text += f" [{cell.outcome.name}]"
    effect = EFFECT_LABELS[cell.effect]
    return f"{text}, {effect}" if effect else text


def transitions_markdown(*, level: int = 1, diagrams: str = "") -> str:
    """The transition table as markdown (the text of transitions.md).

    ``level``: the depth of its top heading; ``diagrams``: the path prefix of the links
    to the diagram files (``""`` beside them).
    """
    h = "#" * level
    out = [
        f"{h} The transition table of a remote-task future",
        "",
        "<!-- Generated by `futurefsm diagrams` from TRANSITION_TABLE: do not edit. -->",
        "",
        "Generated from `futurefsm.fsm.table.TRANSITION_TABLE`, the table the runtime",
        "machine is built from. Rows are states, columns are triggers; each cell is the",
        "destination state, the `CancelOutcome` recorded [in brackets] and what the caller",
        "must do. **stale** is an explicit self-loop: nothing changes, the client counts it",
        '(`stats()["stale_messages"]`) and logs it at debug level. **no change** keeps the',
        "state without being stale (a second `cancel()` sends no second TaskCancel).",
        "Terminal states: "
        + ", ".join(f"`{s.value}`" for s in _STATES if s in TERMINAL_STATES)
        + "; nothing leaves them.",
        "",
        "| state \\ trigger | " + " | ".join(f"`{t.value}`" for t in _TRIGGERS) + " |",
        "|---" * (len(_TRIGGERS) + 1) + "|",
    ]
    for state in _STATES:
        name = f"**{state.value}**" + (" (terminal)" if state in TERMINAL_STATES else "")
        cells = [_markdown_cell(state, t) for t in _TRIGGERS]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out += [
        "",
        f"{h}# What fires each trigger",
        "",
        "| trigger | kind | protocol message or local event |",
        "|---|---|---|",
    ]
    out += [
        f"| `{t.value}` | {TRIGGER_SOURCES[t].kind} | {TRIGGER_SOURCES[t].what} |"
        for t in _TRIGGERS
    ]
    out += [
        "",
        f"{h}# Cancel outcomes",
        "",
        "| `CancelOutcome` | recorded by |",
        "|---|---|",
    ]
    for outcome in CancelOutcome:
        cells = [
            f"`{trigger.value}` in `{source.value}`"
            for (source, trigger) in _table_order()
            if TRANSITION_TABLE[source, trigger].outcome is outcome
        ]
        out.append(f"| `{outcome.name}` | {', '.join(cells) or 'no cell'} |")
    out += [
        "",
        f"Diagrams of the same table: [future.mmd]({diagrams}future.mmd) (Mermaid),",
        f"[future.dot]({diagrams}future.dot) and [future.svg]({diagrams}future.svg) (Graphviz).",
    ]
    return "\n".join(out) + "\n"


def docs_transitions_markdown() -> str:
    """docs/transitions.md: the states (with what ``concurrent.futures`` sees), the
    Mermaid diagram and the full table, all from the one table and the adapter."""
    from .client.future import _STDLIB_STATE, _TERMINAL_STDLIB_STATES, _base

    out = [
        "# States and transitions",
        "",
        "<!-- Generated by `futurefsm diagrams --out diagrams` from TRANSITION_TABLE and",
        "     the TaskFuture adapter's state mapping: do not edit. -->",
        "",
        "A future is always in exactly one of five states and moves only when a trigger",
        "fires: an inbound protocol message or a local event. This page is generated from",
        "`futurefsm.fsm.table.TRANSITION_TABLE`, the literal the runtime machine is built",
        "from, so it cannot drift from what the code does. How the adapter behaves around",
        "it (cancel, cancelled, result, callbacks, asyncio) is in [semantics.md](semantics.md).",
        "",
        "## States",
        "",
        "| state | meaning | `running()` | `done()` | `_state` seen by concurrent.futures |",
        "|---|---|---|---|---|",
    ]
    for state in _STATES:
        stdlib = _STDLIB_STATE[state]
        running = stdlib == _base.RUNNING
        done = stdlib in _TERMINAL_STDLIB_STATES
        out.append(
            f"| `{state.value}` | {STATE_MEANINGS[state]} | {running} | {done} | `{stdlib}` |"
        )
    out += [
        "",
        "`running()` is True while the scheduler owns the task, including while a cancel is",
        "in flight; `cancelled()` is True only in `cancelled` (it waits for a cancel in flight",
        "first, see [semantics.md](semantics.md#cancelled)).",
        "",
        "## Diagram",
        "",
        "Each box counts the triggers that are stale in that state (late or duplicate",
        "messages: nothing changes, the client counts and logs them). `[OUTCOME]` is the",
        "`CancelOutcome` the future records.",
        "",
        "```mermaid",
        mermaid().rstrip("\n"),
        "```",
        "",
    ]
    table = transitions_markdown(level=2, diagrams="../diagrams/")
    # The table's own title and "generated" comment are replaced by this page's.
    body = table.split("\n", 4)[4]
    out += ["## The transition table", "", body]
    return "\n".join(out)


# ---------------------------------------------------------------------------
# Writing files
# ---------------------------------------------------------------------------

_README_BLOCK = re.compile(
    re.escape(README_START) + r"\n.*?" + re.escape(README_END), flags=re.DOTALL
)


def update_readme(readme_path: Path | str, mmd_text: str) -> bool:
    """Replace the README block between ``README_START`` and ``README_END`` with
    ``mmd_text`` in a ```` ```mermaid ```` fence. Returns True if the file changed,
    False if it was already up to date. Raises ``ValueError`` without the markers."""
    readme = Path(readme_path)
    text = readme.read_text(encoding="utf-8")
    if not _README_BLOCK.search(text):
        raise ValueError(f"{readme}: no {README_START} ... {README_END} block")
    block = f"{README_START}\n```mermaid\n{mmd_text}```\n{README_END}"
    new = _README_BLOCK.sub(lambda _: block, text, count=1)
    if new == text:
        return False
    readme.write_text(new, encoding="utf-8")
    return True


def generate() -> dict[str, str]:
    """The text files ``main`` writes, by file name (everything but the svg; no I/O)."""
    return {
        "future.mmd": mermaid(),
        "future.dot": dot(),
        "transitions.md": transitions_markdown(),
    }


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def main(out: Path | str = "diagrams") -> int:
    """Write future.mmd, future.dot, transitions.md and (with Graphviz) future.svg to
    ``out``; the ``futurefsm diagrams`` command. Returns the exit status.

    Without the Graphviz ``dot`` program the svg is skipped with a note on stderr and
    the command still succeeds. When ``out`` is a directory named ``diagrams`` (the
    repository's own layout, ``futurefsm diagrams --out diagrams``), a ``docs/``
    directory beside it gets ``transitions.md`` (``docs_transitions_markdown``) and a
    README.md beside it holding the ``README_START``/``README_END`` markers gets its
    diagram block refreshed.
    """
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    texts = generate()
    for name, text in texts.items():
        _write_if_changed(target / name, text)
        print(f"wrote {target / name}")

    status = 0
    dot_program = shutil.which("dot")
    if dot_program is None:
        print(
            "Graphviz `dot` is not installed: future.svg not written "
            "(the .mmd, .dot and .md files are complete without it)",
            file=sys.stderr,
        )
    else:
        status = _render_svg(dot_program, target / "future.dot")

    docs = target.resolve().parent / "docs"
    if target.resolve().name == "diagrams" and docs.is_dir():
        _write_if_changed(docs / DOCS_TRANSITIONS, docs_transitions_markdown())
        print(f"wrote {docs / DOCS_TRANSITIONS}")

    status = max(status, write_task_files(target))

    readme = target.resolve().parent / "README.md"
    if target.resolve().name == "diagrams" and readme.is_file():
        text = readme.read_text(encoding="utf-8")
        if README_START in text and README_END in text:
            if update_readme(readme, texts["future.mmd"]):
                print(f"updated the diagram in {readme}")
    return status


# ---------------------------------------------------------------------------
# Review of a table change: ``futurefsm diagrams --diff REV``
# ---------------------------------------------------------------------------

__all__ += [  # (added here, apart from the list above: the --diff section's names)
    "TABLE_SOURCE",
    "CellChange",
    "diff_main",
    "diff_mermaid",
    "diff_text",
    "plain_table",
    "table_at_revision",
    "table_diff",
    "table_from_source",
]

TABLE_SOURCE = "futurefsm/fsm/table.py"
"""Where ``TRANSITION_TABLE`` lives in the repository (read at a git revision)."""

PlainCell = tuple[str, str, "str | None"]
"""A cell as plain names: (destination state, effect, ``CancelOutcome`` name or None)."""
PlainTable = dict[tuple[str, str], PlainCell]
"""A transition table as plain names: (state, trigger) -> ``PlainCell``. Two revisions'
tables have different Enum classes, so they are compared by name."""


class CellChange(NamedTuple):
    """One (state, trigger) cell that differs between two tables."""

    kind: Literal["added", "removed", "retargeted", "outcome changed", "effect changed"]
    state: str
    trigger: str
    old: PlainCell | None
    new: PlainCell | None


def plain_table(table: dict | None = None) -> PlainTable:
    """``table`` (default: this ``TRANSITION_TABLE``; or another revision's, whose
    states and triggers are other Enum classes) as plain names."""
    table = TRANSITION_TABLE if table is None else table
    return {
        (state.value, trigger.value): (
            cell.dest.value,
            cell.effect.value,
            cell.outcome.name if cell.outcome is not None else None,
        )
        for (state, trigger), cell in table.items()
    }


def table_from_source(source: str, origin: str = TABLE_SOURCE) -> PlainTable:
    """The ``TRANSITION_TABLE`` that the module text ``source`` defines, as plain names.

    The text is run as a module of its own (table.py imports only the standard
    library); ``origin`` names it in errors.
    """
    import types

    module = types.ModuleType(f"_futurefsm_table_{abs(hash(origin))}")
    module.__file__ = origin
    try:
        exec(compile(source, origin, "exec"), module.__dict__)
    except Exception as error:
        raise ValueError(f"{origin}: cannot load it ({type(error).__name__}: {error})") from error
    table = getattr(module, "TRANSITION_TABLE", None)
    if not isinstance(table, dict):
        raise ValueError(f"{origin}: defines no TRANSITION_TABLE dict")
    return plain_table(table)


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise ValueError(f"git {' '.join(args)} failed in {repo}: {done.stderr.strip()}")
    return done.stdout


def table_at_revision(rev: str, repo: Path | str = ".") -> PlainTable:
    """The ``TRANSITION_TABLE`` of ``TABLE_SOURCE`` at git revision ``rev`` of ``repo``.

    Raises ``ValueError`` naming the revision when git cannot show that file there.
    """
    source = _git(Path(repo), "show", f"{rev}:{TABLE_SOURCE}")
    return table_from_source(source, f"{rev}:{TABLE_SOURCE}")


def table_diff(old: PlainTable, new: PlainTable) -> list[CellChange]:
    """Every cell that differs from ``old`` to ``new``: ``new``'s order, then cells
    only ``old`` has, in its order. A changed destination is ``retargeted`` (whatever
    else changed with it), then a changed outcome, then a changed effect."""
    changes = []
    for key, cell in new.items():
        before = old.get(key)
        if before == cell:
            continue
        if before is None:
            kind = "added"
        elif before[0] != cell[0]:
            kind = "retargeted"
        elif before[2] != cell[2]:
            kind = "outcome changed"
        else:
            kind = "effect changed"
        changes.append(CellChange(kind, key[0], key[1], before, cell))
    changes += [
        CellChange("removed", key[0], key[1], cell, None)
        for key, cell in old.items()
        if key not in new
    ]
    return changes


def _plain_label(trigger: str, cell: PlainCell) -> str:
    _, effect, outcome = cell
    label = trigger + (f" [{outcome}]" if outcome else "")
    if effect == "none":
        return label
    return f"{label} ({effect})" if effect == "stale" else f"{label} / {effect}"


_DIFF_STYLES = {
    "added": "stroke:#16a34a,stroke-width:3px",
    "removed": "stroke:#dc2626,stroke-width:2px,stroke-dasharray:5 4",
    "changed": "stroke:#d97706,stroke-width:3px",
}


def diff_mermaid(changes: Sequence[CellChange], title: str = "") -> str:
    """The changed cells as a Mermaid flowchart: only the states they touch; a new
    edge green (``+``), a removed one dashed red (``-``), a retargeted cell both (its
    old edge ``was``, its new ``now``), a changed outcome or effect amber (``~``)."""
    out = ["flowchart TB", f"%% {title or 'TRANSITION_TABLE: changed cells only'}"]
    links: list[tuple[str, str, str, str]] = []  # source, dest, label, style
    for change in changes:
        old, new = change.old, change.new
        if change.kind == "added" and new is not None:
            links.append((change.state, new[0], "+ " + _plain_label(change.trigger, new), "added"))
        elif change.kind == "removed" and old is not None:
            links.append(
                (change.state, old[0], "- " + _plain_label(change.trigger, old), "removed")
            )
        elif change.kind == "retargeted" and old is not None and new is not None:
            was = "was: " + _plain_label(change.trigger, old)
            links.append((change.state, old[0], was, "removed"))
            links.append(
                (change.state, new[0], "now: " + _plain_label(change.trigger, new), "added")
            )
        elif old is not None and new is not None:
            before, after = (_plain_label("", cell).strip() or "-" for cell in (old, new))
            label = f"~ {change.trigger}: {before} → {after}"
            links.append((change.state, new[0], label, "changed"))
    states = list(dict.fromkeys(s for link in links for s in link[:2]))
    out += [f'    s_{state}(["{state}"])' for state in states]
    for source, dest, label, style in links:
        arrow = f'-. "{label}" .->' if style == "removed" else f'-- "{label}" -->'
        out.append(f"    s_{source} {arrow} s_{dest}")
    out += [f"    linkStyle {n} {_DIFF_STYLES[link[3]]}" for n, link in enumerate(links)]
    return "\n".join(out) + "\n"


def diff_text(changes: Sequence[CellChange]) -> str:
    """The changed cells as a list, one line each: kind, cell, old -> new."""
    if not changes:
        return "no cell of TRANSITION_TABLE changed\n"

    def show(cell: PlainCell | None) -> str:
        if cell is None:
            return "(no cell)"
        dest, effect, outcome = cell
        return f"{dest}" + (f" [{outcome}]" if outcome else "") + f" / {effect}"

    return "".join(
        f"- {c.kind}: ({c.state}, {c.trigger}): {show(c.old)} -> {show(c.new)}\n" for c in changes
    )


def diff_main(rev: str, repo: Path | str = ".") -> int:
    """``futurefsm diagrams --diff REV``: print, as markdown a pull request can show, what
    changed in ``TRANSITION_TABLE`` from ``rev`` to the working tree of the git
    repository around ``repo``: a Mermaid diagram of the changed cells and their list.
    Returns the exit status (2, with the reason on stderr, when git or the table fails).
    """
    try:
        top = Path(_git(Path(repo), "rev-parse", "--show-toplevel").strip())
        old = table_at_revision(rev, top)
        current = top / TABLE_SOURCE
        if not current.is_file():
            raise ValueError(f"{current}: no such file in the working tree")
        new = table_from_source(current.read_text(encoding="utf-8"), str(current))
    except ValueError as error:
        print(f"futurefsm diagrams --diff: {error}", file=sys.stderr)
        return 2
    changes = table_diff(old, new)
    title = f"TRANSITION_TABLE: {rev} -> working tree"
    print(f"## {title}\n")
    if changes:
        print(f"```mermaid\n{diff_mermaid(changes, title)}```\n")
    print(diff_text(changes), end="")


# The scheduler's task machine (futurefsm/scheduler_stub/task_table.py)
# ---------------------------------------------------------------------------

TASK_FILES = ("task.mmd", "task.dot", "task-table.md")
"""The files ``main`` writes for the scheduler's task table (and task.svg with Graphviz)."""

DOCS_SCHEDULER = "scheduler.md"
TASK_DOCS_START = "<!-- futurefsm:task-table:start -->"
"""Marks the generated task machine in docs/scheduler.md (``update_task_docs``)."""
TASK_DOCS_END = "<!-- futurefsm:task-table:end -->"

# Cells drawn as edges: every change of state, and the self-loops that answer a cancel
# (the others, results discarded and not_found answers of ended tasks, the table has).
_TASK_LOOPS_DRAWN = frozenset({TaskEffect.REFUSE_CANCEL, TaskEffect.ANSWER_AS_SCRIPTED})


def task_member_docs(enum: type[Enum]) -> dict[str, str]:
    """The docstring under each member of an Enum in ``task_table.py``, by member name,
    first sentence only (read from the source: Python keeps no member docstrings)."""
    tree = ast.parse(inspect.getsource(task_table))
    docs: dict[str, str] = {}
    for node in tree.body:
        if not (isinstance(node, ast.ClassDef) and node.name == enum.__name__):
            continue
        body = node.body
        for statement, following in itertools.pairwise(body):
            if (
                isinstance(statement, ast.Assign)
                and isinstance(statement.targets[0], ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                text = " ".join(following.value.value.split())
                docs[statement.targets[0].id] = text
    return docs


def _task_effects_text(effects: Sequence[TaskEffect]) -> str:
    return ", ".join(e.value for e in effects)


def _task_edges() -> list[tuple[TaskState, TaskState, list[str]]]:
    """(source, dest, label lines) for the drawn cells, in table order, merged by pair."""
    merged: dict[tuple[TaskState, TaskState], list[str]] = {}
    for state in TaskState:
        for event in TaskEvent:
            cell = TASK_TABLE[state, event]
            if cell.state is state and not _TASK_LOOPS_DRAWN.intersection(cell.effects):
                continue
            line = event.value
            if cell.effects:
                line += f" / {_task_effects_text(cell.effects)}"
            merged.setdefault((state, cell.state), []).append(line)
    return [(source, dest, lines) for (source, dest), lines in merged.items()]


def _task_undrawn(state: TaskState) -> int:
    """How many of ``state``'s cells are not drawn (self-loops with nothing to answer)."""
    drawn = sum(len(lines) for source, _, lines in _task_edges() if source is state)
    return len(TaskEvent) - drawn


def task_mermaid() -> str:
    """The scheduler's task table as a Mermaid ``stateDiagram-v2`` (task.mmd)."""
    out = [
        "stateDiagram-v2",
        "%% Generated by `futurefsm diagrams` from TASK_TABLE: do not edit.",
        "    direction TB",
        _MERMAID_TERMINAL,
    ]
    for state in TaskState:
        out.append(f'    state "{state.value}" as {state.value}')
        out.append(f"    {state.value} : +{_task_undrawn(state)} events that change nothing")
    out.append(f"    [*] --> {INITIAL_TASK_STATE.value}")
    for source, dest, lines in _task_edges():
        out.append(f"    {source.value} --> {dest.value}: {'<br/>'.join(lines)}")
    terminal = ",".join(s.value for s in TaskState if s in TASK_TERMINAL_STATES)
    out.append(f"    class {terminal} terminal")
    return "\n".join(out) + "\n"


def task_dot() -> str:
    """The scheduler's task table as a Graphviz DOT digraph (task.dot)."""
    legend = (
        "dashed: the state does not change.  Not drawn: events that change nothing"
        " (late results discarded, not_found answers, impossible cells).  Every cell:"
        " task-table.md"
    )
    out = [
        "// Generated by `futurefsm diagrams` from TASK_TABLE: do not edit.",
        "digraph task {",
        '    graph [rankdir=TB, fontname="Helvetica", nodesep=0.8, ranksep=0.7, pad=0.3,',
        f'        labelloc=b, fontsize=10, fontcolor="{_QUIET_COLOR}",',
        f"        label={_dot_quote(legend)}];",
        '    node [shape=box, style="rounded,filled", fillcolor="#ffffff", fontname="Helvetica",',
        '        fontsize=13, margin="0.25,0.1"];',
        '    edge [fontname="Helvetica", fontsize=10, arrowsize=0.8];',
        '    start [shape=circle, style=filled, fillcolor=black, label="", width=0.18];',
    ]
    for state in TaskState:
        attrs = ["peripheries=2"] if state in TASK_TERMINAL_STATES else ["group=flow"]
        out.append(f"    {state.value} [{', '.join(attrs)}];")
    terminals = "; ".join(s.value for s in TaskState if s in TASK_TERMINAL_STATES)
    out.append(f"    {{ rank=same; {terminals}; }}")
    out.append(f"    start -> {INITIAL_TASK_STATE.value};")
    for source, dest, lines in _task_edges():
        br = '<BR ALIGN="LEFT"/>'
        attrs = [f"label=<{br.join(_html(line) for line in lines)}{br}>"]
        if source is dest:
            attrs += ["style=dashed", f'color="{_QUIET_COLOR}"', f'fontcolor="{_QUIET_COLOR}"']
        out.append(f"    {source.value} -> {dest.value} [{', '.join(attrs)}];")
    out.append("}")
    return "\n".join(out) + "\n"


def _task_markdown_cell(state: TaskState, event: TaskEvent) -> str:
    cell = TASK_TABLE[state, event]
    effects = _task_effects_text(cell.effects)
    if cell.state is state:
        return effects or "·"
    return f"**{cell.state.value}**" + (f", {effects}" if effects else "")


def task_table_markdown(*, level: int = 1, diagrams: str = "") -> str:
    """The scheduler's task table as markdown (task-table.md, and docs/scheduler.md's
    generated block): events by state, then what each state, event and effect means.

    ``level``: the depth of its top heading; ``diagrams``: the path prefix of the links
    to the diagram files (``""`` beside them).
    """
    h = "#" * level
    held = ", ".join(f"`{s.value}`" for s in TaskState if s in TASK_HELD_STATES)
    out = [
        f"{h} The scheduler's task table",
        "",
        "<!-- Generated by `futurefsm diagrams` from TASK_TABLE: do not edit. -->",
        "",
        "Generated from `futurefsm.scheduler_stub.task_table.TASK_TABLE`, the table the",
        "scheduler fires every event through (`SchedulerStub._apply`, the only code that",
        "sets a task's state, looks it up). Rows are events, columns are states; each",
        "cell is the next state in **bold** (none: the state does not change) and the",
        "effects the scheduler then carries out, in order. `·`: nothing changes and",
        "nothing is done. Every task",
        f"starts in `{INITIAL_TASK_STATE.value}`; held (a TaskCancel reaches it): {held};",
        "terminal: "
        + ", ".join(f"`{s.value}`" for s in TaskState if s in TASK_TERMINAL_STATES)
        + ", nothing leaves them.",
        "",
        "| event \\ state | " + " | ".join(f"`{s.value}`" for s in TaskState) + " |",
        "|---" * (len(TaskState) + 1) + "|",
    ]
    for event in TaskEvent:
        cells = [_task_markdown_cell(state, event) for state in TaskState]
        out.append(f"| `{event.value}` | " + " | ".join(cells) + " |")
    for title, enum in (("States", TaskState), ("Events", TaskEvent), ("Effects", TaskEffect)):
        docs = task_member_docs(enum)
        out += ["", f"{h}# {title}", "", "| name | meaning |", "|---|---|"]
        out += [f"| `{m.value}` | {docs[m.name]} |" for m in enum]  # type: ignore[attr-defined]
    out += [
        "",
        f"Diagrams of the same table: [task.mmd]({diagrams}task.mmd) (Mermaid),",
        f"[task.dot]({diagrams}task.dot) (Graphviz; `futurefsm diagrams` renders task.svg",
        "from it when the `dot` program is installed).",
    ]
    return "\n".join(out) + "\n"


def task_docs_block() -> str:
    """What docs/scheduler.md holds between ``TASK_DOCS_START`` and ``TASK_DOCS_END``:
    the Mermaid diagram and the table of the scheduler's task machine."""
    return (
        f"{TASK_DOCS_START}\n"
        f"```mermaid\n{task_mermaid()}```\n\n"
        f"{task_table_markdown(level=3, diagrams='../diagrams/')}"
        f"{TASK_DOCS_END}"
    )


def update_task_docs(doc_path: Path | str) -> bool:
    """Refresh the generated block of docs/scheduler.md; True if it changed.

    Raises ``ValueError`` if the file has no ``TASK_DOCS_START``/``TASK_DOCS_END`` block.
    """
    doc = Path(doc_path)
    text = doc.read_text(encoding="utf-8")
    start, end = text.find(TASK_DOCS_START), text.find(TASK_DOCS_END)
    if start < 0 or end < start:
        raise ValueError(
            f"{doc}: no {TASK_DOCS_START} ... {TASK_DOCS_END} block; add the two markers "
            "where the task table should go"
        )
    new = text[:start] + task_docs_block() + text[end + len(TASK_DOCS_END) :]
    if new == text:
        return False
    doc.write_text(new, encoding="utf-8")
    return True


def task_generate() -> dict[str, str]:
    """The task machine's text files by name (``TASK_FILES``; no I/O)."""
    return {
        "task.mmd": task_mermaid(),
        "task.dot": task_dot(),
        "task-table.md": task_table_markdown(),
    }


def write_task_files(target: Path) -> int:
    """Write ``TASK_FILES`` (and task.svg with Graphviz) to ``target``; when ``target``
    is the repository's ``diagrams`` directory, refresh docs/scheduler.md's block.
    Returns the exit status (1 if ``dot`` failed)."""
    for name, text in task_generate().items():
        _write_if_changed(target / name, text)
        print(f"wrote {target / name}")
    dot_program = shutil.which("dot")
    status = _render_svg(dot_program, target / "task.dot") if dot_program is not None else 0
    doc = target.resolve().parent / "docs" / DOCS_SCHEDULER
    if target.resolve().name == "diagrams" and doc.is_file():
        text = doc.read_text(encoding="utf-8")
        if TASK_DOCS_START in text and TASK_DOCS_END in text and update_task_docs(doc):
            print(f"updated the task table in {doc}")
    return status


def _render_svg(dot_program: str, dot_file: Path) -> int:
    """Render ``dot_file`` to the .svg beside it with Graphviz; 1 (said on stderr) if
    ``dot`` failed, else 0."""
    svg = dot_file.with_suffix(".svg")
    done = subprocess.run(
        [dot_program, "-Tsvg", "-o", str(svg), str(dot_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        print(f"dot failed on {dot_file}:\n{done.stderr}", file=sys.stderr)
        return 1
    print(f"wrote {svg}")
    return 0
