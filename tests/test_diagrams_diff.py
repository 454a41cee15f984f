"""``futurefsm diagrams --diff REV``: what a change of TRANSITION_TABLE changed.

Each test builds a throwaway git repository holding this checkout's
``futurefsm/fsm/table.py``, commits it, edits the working tree's copy (a cell added,
one removed, one retargeted, one outcome changed) and runs the real command in it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from futurefsm.diagrams import (
    TABLE_SOURCE,
    CellChange,
    diff_mermaid,
    plain_table,
    table_diff,
    table_from_source,
)

ROOT = Path(__file__).resolve().parents[1]

# Lines of table.py, as written there, and what the test puts in their place.
ADDED = "    (_S.PENDING, _T.CANCEL_TIMED_OUT): Cell(_S.PENDING, _E.STALE, None),\n"
REMOVED = "    (_S.DONE, _T.SENT): Cell(_S.DONE, _E.STALE, None),\n"
RETARGETED = (
    "    (_S.RUNNING, _T.RECV_CONFIRM_NOT_FOUND): Cell(_S.RUNNING, _E.STALE, None),\n",
    "    (_S.RUNNING, _T.RECV_CONFIRM_NOT_FOUND): Cell(_S.CANCELLED, _E.NONE, _O.NOT_FOUND),\n",
)
OUTCOME = (
    "Cell(_S.CANCELLED, _E.NONE, _O.TIMED_OUT)",
    "Cell(_S.CANCELLED, _E.NONE, _O.CONNECTION_LOST)",
)


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


# The console script, not ``python -m futurefsm``: in the test repository the current
# directory's futurefsm/ (a bare namespace package) would shadow the installed one.
COMMAND = str(Path(sys.executable).parent / "futurefsm")


def run_diff(repo: Path, rev: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [COMMAND, "diagrams", "--diff", rev],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository whose commit has table.py without the ADDED cell; the working
    tree has it back, and the other three edits."""
    table = tmp_path / TABLE_SOURCE
    table.parent.mkdir(parents=True)
    source = (ROOT / TABLE_SOURCE).read_text(encoding="utf-8")
    for line in (ADDED, REMOVED, RETARGETED[0]):
        assert source.count(line) == 1, f"the test's table line moved: {line!r}"
    assert source.count(OUTCOME[0]) == 1
    table.write_text(source.replace(ADDED, ""), encoding="utf-8")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(
        tmp_path,
        "-c",
        "user.name=test",
        "-c",
        "user.email=test@example.invalid",
        "commit",
        "-q",
        "-m",
        "the table",
    )
    changed = source.replace(REMOVED, "").replace(*RETARGETED).replace(*OUTCOME)
    table.write_text(changed, encoding="utf-8")
    return tmp_path


def test_the_diff_shows_exactly_the_changed_cells(repo: Path) -> None:
    done = run_diff(repo, "HEAD")
    assert done.returncode == 0, done.stderr
    listed = sorted(line for line in done.stdout.splitlines() if line.startswith("- "))
    assert listed == sorted(
        [
            "- added: (pending, cancel_timed_out): (no cell) -> pending / stale",
            "- removed: (done, sent): done / stale -> (no cell)",
            "- retargeted: (running, recv_confirm_not_found): running / stale -> "
            "cancelled [NOT_FOUND] / none",
            "- outcome changed: (cancel_requested, cancel_timed_out): cancelled [TIMED_OUT] "
            "/ none -> cancelled [CONNECTION_LOST] / none",
        ]
    )
    mermaid = re.search(r"```mermaid\n(.*?)```", done.stdout, re.DOTALL)
    assert mermaid is not None
    edges = re.findall(r"^    s_(\w+) (?:--|-\.) \"(.*?)\" (?:-->|\.->) s_(\w+)$", mermaid[1], re.M)
    assert sorted(edges) == sorted(
        [
            ("pending", "+ cancel_timed_out (stale)", "pending"),
            ("done", "- sent (stale)", "done"),
            ("running", "was: recv_confirm_not_found (stale)", "running"),
            ("running", "now: recv_confirm_not_found [NOT_FOUND]", "cancelled"),
            (
                "cancel_requested",
                "~ cancel_timed_out: [TIMED_OUT] → [CONNECTION_LOST]",
                "cancelled",
            ),
        ]
    )
    # One style per edge, removed ones dashed: what a pull request shows.
    styles = re.findall(r"^    linkStyle (\d+) (.*)$", mermaid[1], re.M)
    assert [int(n) for n, _ in styles] == list(range(len(edges)))
    assert sum("dasharray" in style for _, style in styles) == 2  # removed, was


def test_an_unchanged_table_says_so_and_draws_nothing(repo: Path) -> None:
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@e.invalid", "commit", "-q", "-m", "2")
    done = run_diff(repo, "HEAD")
    assert done.returncode == 0, done.stderr
    assert "no cell of TRANSITION_TABLE changed" in done.stdout
    assert "```mermaid" not in done.stdout
    # Against the first commit, the ADDED cell is still a change; the rest too.
    assert run_diff(repo, "HEAD~1").stdout.count("\n- ") == 4


def test_an_unknown_revision_is_an_error_naming_it(repo: Path) -> None:
    done = run_diff(repo, "no-such-rev")
    assert done.returncode == 2
    assert "no-such-rev" in done.stderr and done.stdout == ""


def test_outside_a_git_repository_it_says_so(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.fail("git is needed")
    done = run_diff(tmp_path, "HEAD")
    assert done.returncode == 2 and "git rev-parse" in done.stderr


def test_a_table_source_that_does_not_load_is_named() -> None:
    with pytest.raises(ValueError, match=r"old\.py: cannot load it"):
        table_from_source("raise RuntimeError('broken')", "old.py")
    with pytest.raises(ValueError, match=r"old\.py: defines no TRANSITION_TABLE"):
        table_from_source("x = 1", "old.py")


def test_the_current_table_equals_its_own_source() -> None:
    source = (ROOT / TABLE_SOURCE).read_text(encoding="utf-8")
    assert table_from_source(source) == plain_table()
    assert table_diff(plain_table(), plain_table()) == []
    removed = dict(plain_table())
    cell = removed.pop(("running", "sent"))
    assert table_diff(plain_table(), removed) == [
        CellChange("removed", "running", "sent", cell, None)
    ]
    assert "s_running" in diff_mermaid(table_diff(plain_table(), removed))
