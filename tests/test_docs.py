"""docs/: the generated page is fresh, every link and anchor resolves, the index is
complete, the stated limits are the code's, and code and tests cite docs/ pages that
exist (not the product spec's sections, which are not in the repository)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from futurefsm import diagrams
from futurefsm.diagrams import DOCS_TRANSITIONS, STATE_MEANINGS, docs_transitions_markdown
from futurefsm.fsm import FutureState
from futurefsm.protocol import MAX_FRAME_BYTES

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
STALE_HINT = "is stale: run `futurefsm diagrams --out diagrams` and commit the result"
# Pages the index links to that other work streams write; each is checked once it exists.
WRITTEN_ELSEWHERE = {"trust-model.md", "race-kit.md"}
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}


def test_docs_transitions_md_equals_fresh_generation() -> None:
    committed = DOCS / DOCS_TRANSITIONS
    assert committed.is_file(), f"docs/{DOCS_TRANSITIONS} is missing: {STALE_HINT}"
    assert committed.read_text(encoding="utf-8") == docs_transitions_markdown(), (
        f"docs/{DOCS_TRANSITIONS} {STALE_HINT}"
    )


def test_the_generated_page_has_every_state_and_the_diagram() -> None:
    assert set(STATE_MEANINGS) == set(FutureState)
    page = docs_transitions_markdown()
    for state in FutureState:
        assert f"| `{state.value}` | {STATE_MEANINGS[state]} |" in page
    assert "| `cancel_requested` | a TaskCancel was sent; no answer yet | True | False |" in page
    assert f"```mermaid\n{diagrams.mermaid()}```" in page
    table = diagrams.transitions_markdown(level=2, diagrams="../diagrams/")
    assert table.split("\n", 4)[4] in page
    assert "(../diagrams/future.svg)" in page


def test_diagrams_main_writes_the_docs_page_beside_a_diagrams_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(diagrams.shutil, "which", lambda name: None)
    (tmp_path / "docs").mkdir()
    assert diagrams.main(out=tmp_path / "diagrams") == 0
    written = (tmp_path / "docs" / DOCS_TRANSITIONS).read_text(encoding="utf-8")
    assert written == docs_transitions_markdown()
    # Any other output directory leaves docs/ alone.
    (tmp_path / "docs" / DOCS_TRANSITIONS).unlink()
    assert diagrams.main(out=tmp_path / "elsewhere") == 0
    assert not (tmp_path / "docs" / DOCS_TRANSITIONS).exists()


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)
    links = [link for link in _LINK.findall(text) if "://" not in link]
    for link in links:
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists() and target.name in WRITTEN_ELSEWHERE:
            continue
        assert target.exists(), f"{page.name}: broken link {link}"
        if anchor:
            assert anchor in _anchors(target), f"{page.name}: no heading #{anchor} in {path}"


def test_the_index_links_every_page() -> None:
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    linked = set(_LINK.findall(index))
    pages = {page.name for page in DOCS.glob("*.md")} - {"README.md"}
    assert pages | WRITTEN_ELSEWHERE <= linked


def test_the_limits_page_states_the_codes_frame_limit() -> None:
    limits = (DOCS / "limits.md").read_text(encoding="utf-8")
    assert MAX_FRAME_BYTES == 64 * 2**20
    assert "64 MiB" in limits and f"{MAX_FRAME_BYTES:,}" in limits
    assert f"exceeds the {MAX_FRAME_BYTES}-byte limit" in limits  # the error's own text


def _sources() -> list[Path]:
    here = Path(__file__).resolve()
    files = [*(ROOT / "futurefsm").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]
    return [path for path in files if path != here] + [ROOT / "README.md"]


def test_citations_point_at_docs_pages_that_exist() -> None:
    spec_citation = re.compile(r"SPEC\s+sections?\s+\d")
    cited: set[str] = set()
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        assert not spec_citation.search(text), f"{path.relative_to(ROOT)} cites the SPEC"
        cited.update(re.findall(r"docs/([\w-]+\.md)", text))
    assert {"transitions.md", "semantics.md", "protocol.md"} <= cited
    for name in cited - WRITTEN_ELSEWHERE:
        assert (DOCS / name).is_file(), f"docs/{name} is cited but missing"
