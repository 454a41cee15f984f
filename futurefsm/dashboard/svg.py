"""The future's state diagram as inline SVG, drawn from ``TRANSITION_TABLE``.

The page draws the diagram itself rather than shipping a renderer: Mermaid's script is
megabytes and Graphviz a system program, and the table is five boxes. The edges are
``futurefsm.diagrams``' own (``edges()``: the non-stale cells, merged per pair of
states), so the page and the committed diagrams cannot disagree about the table.

Layout: each state's rank is its distance from ``pending`` along the edges, terminal
states last; one row per rank, top to bottom. An edge between neighbouring ranks is a
straight line (two opposite edges are drawn side by side); a longer one swings out in
a side lane, towards its destination, so it passes the rows in between; a self-loop
is a small arc on the box's right. Each edge carries one badge: how many futures took
it (the live view), or the steps of one future's path (a future's page).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from html import escape

from ..diagrams import edges
from ..fsm import TERMINAL_STATES, TRANSITION_TABLE, Effect, FutureState, HistoryEntry, Trigger

__all__ = ["diagram_svg"]

_BOX_W, _BOX_H = 190, 58
_ROW, _TOP, _WIDTH = 118, 40, 760
_LANE = 70


@cache
def _ranks() -> dict[FutureState, int]:
    rank = {FutureState.PENDING: 0}
    frontier = [FutureState.PENDING]
    while frontier:
        following = []
        for state in frontier:
            for edge in edges():
                if edge.source is state and edge.dest not in rank:
                    rank[edge.dest] = rank[state] + 1
                    following.append(edge.dest)
        frontier = following
    last = max((r for s, r in rank.items() if s not in TERMINAL_STATES), default=0) + 1
    for state in FutureState:
        if state in TERMINAL_STATES or state not in rank:
            rank[state] = last
    return rank


@cache
def _positions() -> dict[FutureState, tuple[float, float]]:
    rank = _ranks()
    rows: dict[int, list[FutureState]] = {}
    for state in FutureState:
        rows.setdefault(rank[state], []).append(state)
    where = {}
    for r, states in rows.items():
        for i, state in enumerate(states):
            x = _WIDTH * (i + 1) / (len(states) + 1)
            where[state] = (x, _TOP + _BOX_H / 2 + r * _ROW)
    return where


def _bezier_mid(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """The point at t=0.5 of a cubic Bezier curve."""
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = points
    return (x0 + 3 * x1 + 3 * x2 + x3) / 8, (y0 + 3 * y1 + 3 * y2 + y3) / 8


def diagram_svg(
    state_counts: Mapping[str, int] | None = None,
    cell_counts: Mapping[tuple[str, str], int] | None = None,
    stale_counts: Mapping[str, int] | None = None,
    path: Sequence[HistoryEntry] | None = None,
) -> str:
    """The diagram as an ``<svg>`` element.

    Live view: ``state_counts`` (state -> futures), ``cell_counts`` ((state, trigger) ->
    futures that took that cell) and ``stale_counts`` (state -> stale triggers seen)
    label the boxes and edges; each state box is ``data-state``/``data-count``. A
    future's page: ``path`` (its history) fills the visited states and marks each
    taken edge with its step numbers.
    """
    where = _positions()
    rank = _ranks()
    steps: dict[tuple[FutureState, Trigger], list[int]] = {}
    visited: set[FutureState] = set()
    for number, entry in enumerate(path or (), start=1):
        steps.setdefault((entry.source, entry.trigger), []).append(number)
        visited.update((entry.source, entry.dest))
    last = path[-1].dest if path else None

    pairs = {(e.source, e.dest) for e in edges()}
    out: list[str] = []
    lanes = {"left": 0, "right": 0}
    badges: list[str] = []
    for edge in sorted(edges(), key=lambda e: -abs(rank[e.dest] - rank[e.source])):
        (sx, sy), (dx, dy) = where[edge.source], where[edge.dest]
        cells = [(edge.source, t) for t in edge.triggers]
        taken = [n for cell in cells for n in steps.get(cell, ())]
        count = sum((cell_counts or {}).get((s.value, t.value), 0) for s, t in cells)
        names = ", ".join(t.value for t in edge.triggers)
        if edge.quiet:
            x, y = sx + _BOX_W / 2, sy
            d = f"M{x},{y - 12} C{x + 46},{y - 40} {x + 46},{y + 40} {x},{y + 12}"
            mid = (x + 38, y)
        elif abs(rank[edge.dest] - rank[edge.source]) == 1 or edge.source is edge.dest:
            shift = 22 if (edge.dest, edge.source) in pairs else 0
            if rank[edge.dest] < rank[edge.source]:
                shift = -shift
            y0 = sy + (_BOX_H / 2 if dy > sy else -_BOX_H / 2)
            y1 = dy - (_BOX_H / 2 if dy > sy else -_BOX_H / 2)
            d = f"M{sx + shift},{y0} L{dx + shift},{y1}"
            mid = ((sx + dx) / 2 + shift, (y0 + y1) / 2)
        else:
            side = "left" if dx < sx else "right"
            lanes[side] += 1
            sign = -1 if side == "left" else 1
            lane = _WIDTH / 2 + sign * (_BOX_W / 2 + _LANE * lanes[side])
            start = (sx + sign * _BOX_W / 2, sy)
            end = (dx, dy - _BOX_H / 2)
            c1, c2 = (lane, sy), (lane, end[1] - 70)
            d = f"M{start[0]},{start[1]} C{c1[0]},{c1[1]} {c2[0]},{c2[1]} {end[0]},{end[1]}"
            mid = _bezier_mid((start, c1, c2, end))
        css = "edge taken" if taken else ("edge quiet" if edge.quiet else "edge")
        out.append(
            f'<path class="{css}" d="{d}" marker-end="url(#arrow)">'
            f"<title>{escape(edge.source.value)} → {escape(edge.dest.value)}: "
            f"{escape(names)}</title></path>"
        )
        if path is not None:
            if taken:
                label = "(" + ", ".join(map(str, sorted(taken))) + ")"
                badges.append(_badge(mid, label, "badge taken"))
        else:
            data = f'data-edge="{edge.source.value}:{edge.dest.value}" data-count="{count}"'
            badges.append(_badge(mid, f"{count:,}", "badge", data))

    for state in FutureState:
        x, y = where[state]
        css = ["state"]
        if state in TERMINAL_STATES:
            css.append("terminal")
        if state in visited:
            css.append("last" if state is last else "visited")
        attrs = f'class="{" ".join(css)}"'
        lines = [f'<text class="name" x="{x}" y="{y - 8}">{state.value}</text>']
        stale_steps = [n for (s, _), numbers in steps.items() if s is state for n in numbers]
        stale_steps = [n for n in stale_steps if _is_stale_step(path, n)]
        if stale_steps:
            numbers = ", ".join(map(str, sorted(stale_steps)))
            lines.append(f'<text class="stale" x="{x}" y="{y + 16}">stale ({numbers})</text>')
        if state_counts is not None:
            count = state_counts.get(state.value, 0)
            attrs += f' data-state="{state.value}" data-count="{count}"'
            stale = (stale_counts or {}).get(state.value, 0)
            lines.append(
                f'<text class="count" x="{x}" y="{y + 16}">{count:,}'
                f'<tspan class="stale" dx="8">stale {stale:,}</tspan></text>'
            )
        out.append(
            f'<g {attrs}><rect x="{x - _BOX_W / 2}" y="{y - _BOX_H / 2}" '
            f'width="{_BOX_W}" height="{_BOX_H}" rx="12"/>{"".join(lines)}</g>'
        )
    height = _TOP * 2 + _BOX_H + max(rank.values()) * _ROW
    return (
        f'<svg class="diagram" viewBox="0 0 {_WIDTH} {height}" width="{_WIDTH}" '
        f'height="{height}" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'aria-label="the future\'s state diagram">'
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z"/></marker>'
        "</defs>" + "".join(out) + "".join(badges) + "</svg>"
    )


def _is_stale_step(path: Sequence[HistoryEntry] | None, number: int) -> bool:
    """Whether step ``number`` (1-based) of ``path`` took a stale cell."""
    entry = path[number - 1] if path else None
    return (
        entry is not None and TRANSITION_TABLE[entry.source, entry.trigger].effect is Effect.STALE
    )


def _badge(at: tuple[float, float], text: str, css: str, data: str = "") -> str:
    x, y = at
    width = 14 + 7.5 * len(text)
    return (
        f'<g class="{css}" {data}><rect x="{x - width / 2}" y="{y - 11}" width="{width}" '
        f'height="22" rx="11"/><text x="{x}" y="{y + 5}">{escape(text)}</text></g>'
    )
