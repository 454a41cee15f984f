"""docs/race-kit.md's generated sections: tables and reports come from the kit itself.

Each section sits between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->`` in the
guide. ``python -m futurefsm.testing.guide [--scaler]`` rewrites them from the code
and from a run (the walkthrough's report; with ``--scaler``, the Scaler example's
findings, which need opengris-scaler and about a minute); the tests check that the
file matches what the code gives now.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any

from .actions import DEFAULT_ACTIONS, WAIT_AND_RACE_ACTIONS, Action
from .laws import CONTRACT, UNIVERSAL, Invariant

__all__ = [
    "GUIDE",
    "action_parameters",
    "actions_table",
    "invariants_table",
    "section",
    "walkthrough_report",
    "write",
]

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "race-kit.md"
"""The guide, in a source checkout."""

_SECTION = re.compile(
    r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end: (?P=name) -->)", re.DOTALL
)


def section(text: str, name: str) -> str:
    """The body of the generated section ``name`` of ``text``."""
    for match in _SECTION.finditer(text):
        if match["name"] == name:
            return match["body"]
    raise KeyError(f"docs/race-kit.md has no generated section {name!r}")


def replace(text: str, name: str, body: str) -> str:
    """``text`` with the body of section ``name`` replaced by ``body``."""
    section(text, name)  # it must exist
    return _SECTION.sub(
        lambda m: m.group(0) if m["name"] != name else f"{m.group(1)}{body}{m.group(4)}", text
    )


def invariants_table(invariants: Iterable[Invariant]) -> str:
    """A markdown table of invariants and what they say."""
    rows = ["| invariant | what it says |", "|---|---|"]
    rows += [f"| `{i.name}` | {i.doc} |" for i in invariants]
    return "\n".join(rows) + "\n"


def _where(action: Action) -> str:
    kind = {
        "deliver": "`harness.deliver`",
        "cancel": "`harness.cancel(future)`",
        "result": "`future.result()`",
        "callback": "`add_done_callback`",
        "race": "racing calls",
    }.get(action.kind, action.kind)
    thread = "delivering thread" if action.thread == "delivering" else "user thread"
    scope = ", client-wide" if action.scope == "all" else ""
    return f"{kind}, {thread}{scope}"


def actions_table(actions: Iterable[Action] = DEFAULT_ACTIONS) -> str:
    """A markdown table of ``actions``: name, who does it where, trigger, what."""
    rows = ["| name | done by, where | contract trigger | what it is |", "|---|---|---|---|"]
    for action in actions:
        trigger = f"`{action.trigger}`" if action.trigger else "none"
        rows.append(f"| `{action.name}` | {_where(action)} | {trigger} | {action.doc} |")
    return "\n".join(rows) + "\n"


def action_parameters() -> str:
    """Every parameter of ``Action``, with its default and its docstring."""
    import ast
    import inspect

    docs: dict[str, str] = {}
    tree = ast.parse(inspect.getsource(Action))
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, following in zip(body, [*body[1:], None], strict=True):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
                text = " ".join(str(following.value.value).split())
                docs[node.target.id] = text.replace("``", "`")
    rows = ["| parameter | default | what it is |", "|---|---|---|"]
    for field in fields(Action):
        default = "(required)" if field.default is field.default_factory else repr(field.default)
        if field.name == "name":
            default = "(required)"
        rows.append(f"| `{field.name}` | `{default}` | {docs.get(field.name, '')} |")
    return "\n".join(rows) + "\n"


def walkthrough_report(namespace: dict[str, Any]) -> str:
    """The walkthrough's printed report (its first line, counts and time, left out)."""
    report = namespace["report"]
    body = str(report).split("\n", 1)[1].strip("\n")
    return f"```text\n{report.summary()}\n\n{body}\n```\n"


def scaler_findings(report: Any) -> str:
    """The Scaler example's findings: invariant, steps, minimal sequence."""
    rows = ["| invariant | steps | minimal sequence |", "|---|---|---|"]
    for finding in sorted(
        report.findings, key=lambda f: (f.invariant.name, [str(m) for m in f.moves])
    ):
        moves = ", ".join(f"`{m}`" for m in finding.moves)
        rows.append(f"| `{finding.invariant.name}` | {finding.steps} | {moves} |")
    return "\n".join(rows) + "\n"


def run_walkthrough() -> dict[str, Any]:
    """Run the guide's Python blocks, in order, in one namespace."""
    text = GUIDE.read_text(encoding="utf-8")
    namespace: dict[str, Any] = {"__name__": "race_kit_guide"}
    for number, code in enumerate(re.findall(r"^```python\n(.*?)^```$", text, re.S | re.M)):
        exec(compile(code, f"{GUIDE}:block{number + 1}", "exec"), namespace)
    return namespace


def generated(namespace: dict[str, Any] | None = None) -> dict[str, str]:
    """Every section the code gives without an optional dependency."""
    sections = {
        "universal": invariants_table(UNIVERSAL),
        "contract": invariants_table(CONTRACT),
        "actions": actions_table(),
        "wait-and-race-actions": actions_table(WAIT_AND_RACE_ACTIONS),
        "action-parameters": action_parameters(),
    }
    if namespace is not None:
        sections["walkthrough-report"] = walkthrough_report(namespace)
    return sections


def write(*, scaler: bool = False) -> None:
    """Rewrite the guide's generated sections."""
    text = GUIDE.read_text(encoding="utf-8")
    sections = generated(run_walkthrough())
    if scaler:
        sys.path.insert(0, str(GUIDE.parents[1] / "examples"))
        from scaler_future_harness import check_scaler_future  # type: ignore[import-not-found]

        sections["scaler"] = scaler_findings(check_scaler_future(random_runs=0))
    for name, body in sections.items():
        text = replace(text, name, body)
    GUIDE.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    write(scaler="--scaler" in sys.argv[1:])
