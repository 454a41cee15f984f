"""The demo: every phase ends as it should, and `futurefsm demo` exits 0."""

from __future__ import annotations

from futurefsm import CancelOutcome, FutureState
from futurefsm.cli import main as cli_main
from futurefsm.demo import run_demo

EXPECTED = {
    "cancel before sending": (FutureState.CANCELLED, CancelOutcome.BEFORE_SEND),
    "cancel while running": (FutureState.CANCELLED, CancelOutcome.CONFIRMED),
    "cancel while queued": (FutureState.CANCELLED, CancelOutcome.CONFIRMED),
    "cancel racing the result": (FutureState.CANCELLED, CancelOutcome.RESULT_RACED),
    "cancel refused": (FutureState.DONE, CancelOutcome.FAILED),
    "cancel after a lost result": (FutureState.CANCELLED, CancelOutcome.NOT_FOUND),
    "cancel ignored (0.2 s deadline)": (FutureState.CANCELLED, CancelOutcome.TIMED_OUT),
    "graph: cancel 'double'": (FutureState.CANCELLED, CancelOutcome.CONFIRMED),
    "graph: sibling 'load'": (FutureState.CANCELLED, CancelOutcome.BY_SCHEDULER),
}


def test_every_phase_ends_as_scripted():
    rows, raced, stats = run_demo()
    seen = {row.label: (row.future.state, row.future.cancel_outcome) for row in rows}
    assert {label: seen[label] for label in EXPECTED} == EXPECTED
    assert raced.cancel_outcome is CancelOutcome.RESULT_RACED
    assert stats["protocol_errors"] == 0 and stats["io_errors"] == 0
    assert stats["in_flight"] == 0


def test_cli_demo_prints_the_table_and_writes_a_path_diagram(tmp_path, capsys):
    assert cli_main(["demo", "--diagram-out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for label, (state, outcome) in EXPECTED.items():
        line = next(line for line in out.splitlines() if line.startswith(label))
        assert state.value in line and outcome.value in line
    diagram = (tmp_path / "result_raced_path.mmd").read_text()
    assert "stateDiagram" in diagram
