"""The generated diagrams: fresh, complete, and able to draw a future's path.

None of these tests needs Graphviz: the svg is only checked to exist and name every
state; the text files are compared byte for byte with fresh generation.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from futurefsm import diagrams
from futurefsm.diagrams import (
    README_END,
    README_START,
    TRIGGER_SOURCES,
    edges,
    main,
    path_diagram,
    stale_triggers,
    update_readme,
    write_path_diagram,
)
from futurefsm.fsm import TRANSITION_TABLE, Effect, FSMModel, FutureState, HistoryEntry, Trigger
from futurefsm.scheduler_stub.task_table import TASK_TABLE, TaskEffect, TaskEvent, TaskState

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "diagrams"
TEXT_FILES = ("future.mmd", "future.dot", "transitions.md")
STALE_HINT = "is stale: run `futurefsm diagrams --out diagrams` and commit the result"

S, T = FutureState, Trigger
NON_STALE_CELLS = [
    (state, trigger)
    for (state, trigger), cell in TRANSITION_TABLE.items()
    if cell.effect is not Effect.STALE
]


# --- parsing the generated text -------------------------------------------------------

_MERMAID_EDGE = re.compile(r"^    (\w+) --> (\w+): (.*)$", re.MULTILINE)
_DOT_EDGE = re.compile(r"^    (\w+) -> (\w+) \[label=<(.*?)>(?:, (.*))?\];$", re.MULTILINE)


def _strip_tags(text: str) -> str:
    return re.sub(r"<[^>]*>", "", text)


def mermaid_edges(text: str) -> dict[tuple[str, str], list[str]]:
    """(source, dest) -> the label's lines, tags stripped."""
    return {
        (src, dst): [_strip_tags(line) for line in label.split("<br/>")]
        for src, dst, label in _MERMAID_EDGE.findall(text)
    }


def dot_edges(text: str) -> dict[tuple[str, str], tuple[list[str], str]]:
    """(source, dest) -> (the label's lines, tags stripped; the other attributes)."""
    result = {}
    for src, dst, label, attrs in _DOT_EDGE.findall(text):
        lines = [_strip_tags(line) for line in label.split('<BR ALIGN="LEFT"/>')]
        result[src, dst] = ([line for line in lines if line], attrs)
    return result


def mermaid_bold(text: str) -> dict[tuple[str, str], list[str]]:
    """(source, dest) -> the bold (taken) lines of its label."""
    found = {}
    for src, dst, label in _MERMAID_EDGE.findall(text):
        bold = re.findall(r"<b>(.*?)</b>", label)
        if bold:
            found[src, dst] = bold
    return found


def dot_highlighted(text: str) -> set[tuple[str, str]]:
    color = diagrams._TAKEN_COLOR
    return {edge for edge, (_, attrs) in dot_edges(text).items() if f'color="{color}"' in attrs}


def _label_of(state: FutureState, trigger: Trigger) -> str:
    """What the label line of a non-stale cell starts with: trigger [OUTCOME]."""
    outcome = TRANSITION_TABLE[state, trigger].outcome
    return trigger.value + (f" [{outcome.name}]" if outcome is not None else "")


def _fire(*triggers: Trigger) -> list[HistoryEntry]:
    model = FSMModel()
    for trigger in triggers:
        model.fire(trigger)
    return model.history


# --- the committed files are what the code generates now -------------------------------


def test_committed_text_files_equal_fresh_generation(tmp_path: Path) -> None:
    assert main(out=tmp_path) == 0
    for name in TEXT_FILES:
        committed = COMMITTED / name
        assert committed.is_file(), f"diagrams/{name} is missing: {STALE_HINT}"
        assert committed.read_bytes() == (tmp_path / name).read_bytes(), (
            f"diagrams/{name} {STALE_HINT}"
        )


def test_committed_svg_names_every_state() -> None:
    svg = (COMMITTED / "future.svg").read_text(encoding="utf-8")
    for state in FutureState:
        assert f">{state.value}<" in svg, f"diagrams/future.svg lacks {state.value}: {STALE_HINT}"


def test_readme_block_equals_future_mmd() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start, end = readme.index(README_START), readme.index(README_END)
    block = readme[start + len(README_START) : end]
    mmd = (COMMITTED / "future.mmd").read_text(encoding="utf-8")
    assert block == f"\n```mermaid\n{mmd}```\n", f"the README's diagram {STALE_HINT}"


def test_generation_is_deterministic() -> None:
    assert diagrams.generate() == diagrams.generate()


# --- the diagrams show the whole table ------------------------------------------------


@pytest.mark.parametrize(("state", "trigger"), NON_STALE_CELLS, ids=str)
def test_every_non_stale_cell_is_an_edge_with_its_trigger_label(
    state: FutureState, trigger: Trigger
) -> None:
    dest = TRANSITION_TABLE[state, trigger].dest.value
    expected = _label_of(state, trigger)
    mmd_lines = mermaid_edges(diagrams.mermaid())[state.value, dest]
    dot_lines, _ = dot_edges(diagrams.dot())[state.value, dest]
    for lines in (mmd_lines, dot_lines):
        assert any(line.startswith(expected) for line in lines), (expected, lines)


def test_edges_are_exactly_the_non_stale_cells() -> None:
    drawn = {(edge.source, t): edge.dest for edge in edges() for t in edge.triggers}
    assert drawn == {cell: TRANSITION_TABLE[cell].dest for cell in NON_STALE_CELLS}
    pairs = {(e.source.value, e.dest.value) for e in edges()}
    assert set(mermaid_edges(diagrams.mermaid())) == pairs
    assert set(dot_edges(diagrams.dot())) == pairs


def test_stale_cells_are_counted_in_each_state_box_not_drawn() -> None:
    mmd, dot = diagrams.mermaid(), diagrams.dot()
    for state in FutureState:
        count = len(stale_triggers(state))
        assert count == sum(TRANSITION_TABLE[state, t].effect is Effect.STALE for t in Trigger)
        noun = "trigger" if count == 1 else "triggers"
        assert f"    {state.value} : stale: {count} {noun}\n" in mmd
        assert f"stale: {count} {noun}</FONT>" in dot
    assert "(stale)" not in mmd + dot


def test_every_trigger_has_its_protocol_message_or_event() -> None:
    assert set(TRIGGER_SOURCES) == set(Trigger)
    assert TRIGGER_SOURCES[T.RECV_CONFIRM_NOT_FOUND].what == "`TaskCancelConfirm(kind=not_found)`"
    markdown = diagrams.transitions_markdown()
    for trigger, source in TRIGGER_SOURCES.items():
        assert f"| `{trigger.value}` | {source.kind} | {source.what} |" in markdown


def test_transitions_md_has_every_cell() -> None:
    rows = {}
    for line in diagrams.transitions_markdown().splitlines():
        match = re.match(r"^\| \*\*(\w+)\*\*(?: \(terminal\))? \| (.*) \|$", line)
        if match:
            rows[FutureState(match[1])] = match[2].split(" | ")
    assert list(rows) == list(FutureState)
    for state, cells in rows.items():
        assert len(cells) == len(Trigger)
        for trigger, text in zip(Trigger, cells, strict=True):
            cell = TRANSITION_TABLE[state, trigger]
            if cell.effect is Effect.STALE:
                assert text == "stale"
            elif cell.dest is state:
                assert text == "no change"
            else:
                assert text.startswith(f"**{cell.dest.value}**")
                if cell.outcome is not None:
                    assert f"[{cell.outcome.name}]" in text


# --- path diagrams --------------------------------------------------------------------


def test_result_raced_path_highlights_exactly_its_edges() -> None:
    history = _fire(T.SENT, T.USER_CANCEL, T.RECV_RESULT)
    taken = {
        ("pending", "running"): ["(1) sent"],
        ("running", "cancel_requested"): ["(2) user_cancel / send TaskCancel"],
        ("cancel_requested", "cancelled"): ["(3) recv_result [RESULT_RACED]"],
    }
    mmd = path_diagram(history)
    assert mermaid_bold(mmd) == taken
    assert "    class pending,running,cancel_requested visited\n" in mmd
    assert "    class cancelled last\n" in mmd

    dot = path_diagram(history, fmt="dot")
    assert dot_highlighted(dot) == set(taken)
    for edge, lines in taken.items():
        assert lines[0] in dot_edges(dot)[edge][0]


def test_stale_step_is_drawn_as_a_highlighted_loop() -> None:
    history = _fire(T.SENT, T.RECV_RESULT, T.RECV_RESULT, T.USER_CANCEL)
    mmd = path_diagram(history)
    assert mermaid_bold(mmd) == {
        ("pending", "running"): ["(1) sent"],
        ("running", "done"): ["(2) recv_result / set result"],
        # Lines keep the table's trigger order, whatever the step numbers.
        ("done", "done"): ["(4) user_cancel (no change)", "(3) recv_result (stale)"],
    }
    dot = path_diagram(history, fmt="dot")
    assert dot_highlighted(dot) == {("pending", "running"), ("running", "done"), ("done", "done")}
    # Only states whose stale cells the history took grow a loop.
    assert ("pending", "pending") not in dot_edges(dot)


def test_repeated_steps_are_numbered_in_order() -> None:
    history = _fire(
        T.SENT, T.USER_CANCEL, T.RECV_CONFIRM_CANCEL_FAILED, T.USER_CANCEL, T.CANCEL_TIMED_OUT
    )
    assert mermaid_bold(path_diagram(history))["running", "cancel_requested"] == [
        "(2, 4) user_cancel / send TaskCancel"
    ]


def test_path_accepts_raw_tuples_and_strings() -> None:
    history = _fire(T.USER_CANCEL)
    raw = [(0.0, "user_cancel", "pending", "cancelled")]
    assert path_diagram(history) == path_diagram(raw) == path_diagram([tuple(history[0])])
    assert mermaid_bold(path_diagram(raw)) == {
        ("pending", "cancelled"): ["(1) user_cancel [BEFORE_SEND]"]
    }


def test_path_rejects_a_step_the_table_does_not_allow() -> None:
    with pytest.raises(ValueError, match="history step 1: sent in pending leads to running"):
        path_diagram([(0.0, T.SENT, S.PENDING, S.DONE)])
    with pytest.raises(ValueError, match="unknown diagram format"):
        path_diagram([], fmt="png")  # type: ignore[arg-type]


def test_empty_history_draws_the_plain_diagram_without_highlights() -> None:
    assert mermaid_bold(path_diagram([])) == {}
    assert dot_highlighted(path_diagram([], fmt="dot")) == set()


def test_write_path_diagram_picks_the_format_by_suffix(tmp_path: Path) -> None:
    history = _fire(T.SENT, T.RECV_RESULT)
    assert (
        write_path_diagram(history, tmp_path / "p.mmd").read_text().startswith("stateDiagram-v2\n")
    )
    assert "digraph future {" in write_path_diagram(history, tmp_path / "p.dot").read_text()
    with pytest.raises(ValueError, match=r"\.mmd or \.dot"):
        write_path_diagram(history, tmp_path / "p.svg")


# --- main and the README block --------------------------------------------------------


def test_main_writes_the_files_and_skips_svg_without_graphviz(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(diagrams.shutil, "which", lambda name: None)
    out = tmp_path / "nested" / "out"
    assert main(out=str(out)) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(TEXT_FILES + diagrams.TASK_FILES)
    assert "Graphviz `dot` is not installed" in capsys.readouterr().err
    for name, text in diagrams.generate().items():
        assert (out / name).read_text(encoding="utf-8") == text


def test_main_refreshes_the_readme_block_next_to_a_diagrams_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(diagrams.shutil, "which", lambda name: None)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{README_START}\nold\n{README_END}\n\ntail\n", encoding="utf-8")
    assert main(out=tmp_path / "diagrams") == 0
    expected = f"# x\n\n{README_START}\n```mermaid\n{diagrams.mermaid()}```\n{README_END}\n\ntail\n"
    assert readme.read_text(encoding="utf-8") == expected

    # Any other output directory leaves the README alone.
    readme.write_text(f"{README_START}\n{README_END}\n", encoding="utf-8")
    assert main(out=tmp_path / "elsewhere") == 0
    assert readme.read_text(encoding="utf-8") == f"{README_START}\n{README_END}\n"


def test_update_readme(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{README_START}\n{README_END}\nb\n", encoding="utf-8")
    assert update_readme(readme, "stateDiagram-v2\n") is True
    assert update_readme(readme, "stateDiagram-v2\n") is False
    text = readme.read_text(encoding="utf-8")
    assert text == f"a\n{README_START}\n```mermaid\nstateDiagram-v2\n```\n{README_END}\nb\n"
    readme.write_text("no markers\n", encoding="utf-8")
    with pytest.raises(ValueError, match="futurefsm:diagram:start"):
        update_readme(readme, "x")


# --- drawing stays off the runtime path -----------------------------------------------


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("package", ["fsm", "client"])
def test_runtime_packages_do_not_import_diagram_machinery(package: str) -> None:
    for path in sorted((ROOT / "futurefsm" / package).rglob("*.py")):
        for name in _imports(path):
            assert "diagrams" not in name.split("."), f"{path} imports {name}"
            assert not name.startswith("transitions.extensions"), f"{path} imports {name}"


# --- the scheduler's task machine -----------------------------------------------------


def test_committed_task_files_equal_fresh_generation(tmp_path: Path) -> None:
    assert main(out=tmp_path) == 0
    for name in diagrams.TASK_FILES:
        committed = COMMITTED / name
        assert committed.is_file(), f"diagrams/{name} is missing: {STALE_HINT}"
        assert committed.read_text(encoding="utf-8") == (tmp_path / name).read_text(
            encoding="utf-8"
        ), f"diagrams/{name} {STALE_HINT}"


def test_docs_scheduler_shows_the_generated_task_machine() -> None:
    doc = (ROOT / "docs" / diagrams.DOCS_SCHEDULER).read_text(encoding="utf-8")
    start = doc.index(diagrams.TASK_DOCS_START)
    end = doc.index(diagrams.TASK_DOCS_END) + len(diagrams.TASK_DOCS_END)
    assert doc[start:end] == diagrams.task_docs_block(), f"docs/scheduler.md {STALE_HINT}"


def test_task_diagrams_draw_every_change_of_state() -> None:
    mmd = mermaid_edges(diagrams.task_mermaid())
    dot_text = dot_edges(diagrams.task_dot())
    for (state, event), cell in TASK_TABLE.items():
        if cell.state is state:
            continue
        line = event.value + (
            f" / {', '.join(e.value for e in cell.effects)}" if cell.effects else ""
        )
        assert line in mmd[state.value, cell.state.value], (state, event)
        assert line in dot_text[state.value, cell.state.value][0], (state, event)


def test_task_table_markdown_has_every_cell_and_every_name() -> None:
    text = diagrams.task_table_markdown()
    rows = {
        line.split(" | ")[0].strip("| `"): line.split(" | ")[1:]
        for line in text.splitlines()
        if line.startswith("| `") and line.count(" | ") == len(TaskState)
    }
    assert set(rows) == {event.value for event in TaskEvent}
    for (state, event), cell in TASK_TABLE.items():
        shown = rows[event.value][list(TaskState).index(state)].rstrip(" |")
        if cell.state is not state:
            assert shown.startswith(f"**{cell.state.value}**"), (state, event, shown)
        for effect in cell.effects:
            assert effect.value in shown, (state, event, shown)
    for enum in (TaskState, TaskEvent, TaskEffect):
        docs = diagrams.task_member_docs(enum)
        assert set(docs) == {member.name for member in enum}, enum
        assert all(docs.values())


def test_update_task_docs_names_the_missing_markers(tmp_path: Path) -> None:
    doc = tmp_path / "scheduler.md"
    doc.write_text("no markers here\n", encoding="utf-8")
    with pytest.raises(ValueError, match="futurefsm:task-table:start"):
        diagrams.update_task_docs(doc)
    doc.write_text(f"a\n{diagrams.TASK_DOCS_START}\nold\n{diagrams.TASK_DOCS_END}\nb\n")
    assert diagrams.update_task_docs(doc) is True
    assert doc.read_text() == f"a\n{diagrams.task_docs_block()}\nb\n"
    assert diagrams.update_task_docs(doc) is False
