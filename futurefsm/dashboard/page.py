"""The dashboard's HTML: rendered on the server, so the first paint has every count.

The page's script (``static/dashboard.js``) only fetches the same HTML again (the
``/live`` fragment) twice a second and swaps it in when it changed: one renderer, in
Python, for the first paint and for every update.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

from ..diagrams import path_diagram
from ..fsm import CancelOutcome
from .counts import FutureRecord
from .svg import diagram_svg

__all__ = ["future_fragment", "main_fragment", "page"]


def page(title: str, fragment: str, live_url: str) -> str:
    """A whole page around ``fragment``, which the script refreshes from ``live_url``."""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title>"
        '<link rel="stylesheet" href="/static/dashboard.css">'
        '<script src="/static/dashboard.js" defer></script></head>'
        f'<body><header><a href="/">futurefsm</a> <span>{escape(title)}</span>'
        '<span id="connection" data-connected="yes"></span></header>'
        f'<main id="live" data-src="{escape(live_url)}">{fragment}</main></body></html>\n'
    )


def _future_row(record: Mapping[str, Any]) -> str:
    task = record["task_id"]
    outcome = record["cancel_outcome"] or ""
    how = record["error"] or outcome
    return (
        f'<tr data-task="{task}"><td><a href="/future/{task}">{task[:12]}</a></td>'
        f'<td data-future-state="{record["state"]}">{record["state"]}</td>'
        f"<td>{escape(how)}</td></tr>"
    )


def _futures_table(title: str, records: list[Mapping[str, Any]], css: str) -> str:
    rows = "".join(_future_row(r) for r in records) or '<tr><td colspan="3">none</td></tr>'
    return (
        f'<table class="{css}"><caption>{escape(title)}</caption>'
        f"<tr><th>task</th><th>state</th><th>outcome / error</th></tr>{rows}</table>"
    )


def main_fragment(snapshot: Mapping[str, Any]) -> str:
    """The main page's live part: the diagram with its counts and the tables."""
    stats = snapshot["stats"]
    cells = {(t["source"], t["trigger"]): t["count"] for t in snapshot["transitions"]}
    svg = diagram_svg(snapshot["states"], cells, snapshot["stale"])
    summary = (
        f'<p class="summary">{escape(snapshot["engine"])} at '
        f"<code>{escape(snapshot['address'])}</code>: "
        f'<b data-stat="submitted">{stats["submitted"]:,}</b> submitted, '
        f'<b data-stat="in_flight">{stats["in_flight"]:,}</b> in flight, '
        f'<b data-stat="tasks_per_second">{snapshot["tasks_per_second"]:,.1f}</b> tasks/s '
        f"ended, {stats['protocol_errors']:,} protocol errors, "
        f"{stats['connection_lost']:,} connections lost</p>"
    )
    outcomes = "".join(
        f'<tr data-outcome="{o.value}" data-count="{snapshot["outcomes"][o.value]}">'
        f"<td>{o.name}</td><td>{snapshot['outcomes'][o.value]:,}</td></tr>"
        for o in CancelOutcome
    )
    stale = "".join(
        f'<tr data-stale="{name}" data-count="{count}"><td>{escape(name)}</td>'
        f"<td>{count:,}</td></tr>"
        for name, count in snapshot["stale"].items()
    )
    transitions = "".join(
        f'<tr data-transition="{t["source"]}:{t["trigger"]}" data-count="{t["count"]}"'
        f"{' class=zero' if not t['count'] else ''}>"
        f"<td>{t['source']}</td><td>{t['trigger']}</td><td>{t['dest']}</td>"
        f"<td>{t['outcome'] or ''}</td><td>{t['count']:,}</td></tr>"
        for t in snapshot["transitions"]
    )
    return (
        f'{summary}<div class="row"><div class="panel">{svg}</div><div class="panel tables">'
        '<table class="outcomes"><caption>cancel outcomes</caption>'
        f"<tr><th>outcome</th><th>futures</th></tr>{outcomes}</table>"
        '<table class="stale"><caption>stale triggers by state</caption>'
        f"<tr><th>state</th><th>seen</th></tr>{stale}</table></div></div>"
        '<div class="row"><div class="panel">'
        '<table class="transitions"><caption>transitions taken</caption><tr><th>from</th>'
        f"<th>trigger</th><th>to</th><th>outcome</th><th>futures</th></tr>{transitions}</table>"
        '</div><div class="panel tables">'
        + _futures_table("latest live futures", snapshot["latest_live"], "latest-live")
        + _futures_table("latest ended futures", snapshot["latest_ended"], "latest-ended")
        + "</div></div>"
    )


def future_fragment(record: FutureRecord | None, task_hex: str) -> str:
    """A future's page: its path on the diagram, its history and its Mermaid text."""
    if record is None:
        return (
            f'<p class="missing" data-missing="{escape(task_hex)}">No future {escape(task_hex)}: '
            "the client holds only live futures and the latest ended ones.</p>"
        )
    history = record.history
    start = history[0].time if history else 0.0
    rows = "".join(
        f'<tr data-step="{n}"><td>{n}</td><td>+{(e.time - start) * 1000:,.1f} ms</td>'
        f"<td>{e.trigger.value}</td><td>{e.source.value}</td><td>{e.dest.value}</td></tr>"
        for n, e in enumerate(history, start=1)
    )
    outcome = record.cancel_outcome.name if record.cancel_outcome else "none"
    return (
        f'<p class="summary" data-future="{record.task_id.hex()}" '
        f'data-future-state="{record.state.value}">task <code>{record.task_id.hex()}</code>: '
        f"<b>{record.state.value}</b>, cancel outcome <b>{outcome}</b>"
        f"{', error <b>' + escape(record.error) + '</b>' if record.error else ''}"
        f"{'' if record.live else ' (ended)'}</p>"
        f'<div class="row"><div class="panel">{diagram_svg(path=history)}</div>'
        '<div class="panel tables"><table class="history"><caption>history</caption>'
        "<tr><th>step</th><th>time</th><th>trigger</th><th>from</th><th>to</th></tr>"
        f"{rows}</table>"
        "<details><summary>the same path as Mermaid (<code>path_diagram</code>)</summary>"
        f"<pre>{escape(path_diagram(history))}</pre></details></div></div>"
    )
