"""docs/race-kit.md runs as written: its Python blocks, in order, in one namespace.

The guide's flag-based future is found out (the flag-soup race, in 4 steps), the
report it shows is the one the kit prints, its harness is under 80 lines, and the
fixed future passes ``assert_race_free`` in the guide's own pytest form.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from futurefsm.testing import Action
from futurefsm.testing.guide import generated, section, walkthrough_report

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "race-kit.md"
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def blocks(kind: str) -> list[str]:
    """The guide's fenced blocks of ``kind``, in order."""
    return [
        body for lang, body in _BLOCK.findall(GUIDE.read_text(encoding="utf-8")) if lang == kind
    ]


@pytest.fixture(scope="module")
def guide() -> dict[str, Any]:
    """Every Python block of the guide, run in order in one namespace."""
    namespace: dict[str, Any] = {"__name__": "race_kit_guide"}
    for number, code in enumerate(blocks("python"), start=1):
        exec(compile(code, f"{GUIDE}:block{number}", "exec"), namespace)
    return namespace


def test_the_guide_finds_the_flag_soup_race(guide: dict[str, Any]) -> None:
    report = guide["report"]
    race = [f for f in report.findings if f.invariant.name == "one_terminal_state"]
    assert [f.steps for f in race] == [4]
    assert [str(m) for m in race[0].moves] == [
        "sent(f0)",
        "cancel(f0)",
        "result_success(f0)",
        "confirm_canceled(f0)",
    ]
    assert {"callbacks_run_once", "waiters_notified_once", "contract_state"} <= report.invariants


def _without_summary(text: str) -> str:
    """A generated report without its summary line (its counts and time vary)."""
    lines = text.strip().splitlines()
    return "\n".join(line for line in lines if not line.startswith("race kit on "))


def test_the_guide_shows_what_the_kit_prints(guide: dict[str, Any]) -> None:
    shown = section(GUIDE.read_text(encoding="utf-8"), "walkthrough-report")
    assert _without_summary(shown) == _without_summary(walkthrough_report(guide))


@pytest.mark.parametrize("name", ["universal", "contract", "actions", "action-parameters"])
def test_the_guides_tables_are_the_codes(name: str) -> None:
    # Regenerate with: python -m futurefsm.testing.guide
    assert section(GUIDE.read_text(encoding="utf-8"), name) == generated()[name]


def test_the_action_reference_lists_every_parameter() -> None:
    shown = section(GUIDE.read_text(encoding="utf-8"), "action-parameters")
    for field in dataclasses.fields(Action):
        assert f"| `{field.name}` |" in shown
    assert shown.count("|  |") == 0, "a parameter without a docstring"


def test_the_guides_harness_is_under_80_lines() -> None:
    harness = next(b for b in blocks("python") if "class FlagHarness" in b)
    contract = next(b for b in blocks("python") if "Contract.from_transitions" in b)
    lines = len(harness.splitlines())
    print(f"harness {lines} lines, contract {len(contract.splitlines())} lines")
    assert lines + len(contract.splitlines()) < 80
    assert f"### Its harness ({lines} lines)" in GUIDE.read_text(encoding="utf-8")


def test_the_guides_pytest_form_passes_on_the_fixed_future(guide: dict[str, Any]) -> None:
    guide["test_the_flag_future_keeps_its_promises"]()


def test_the_guides_pytest_form_fails_on_the_broken_future(guide: dict[str, Any]) -> None:
    with pytest.raises(AssertionError, match="one_terminal_state") as caught:
        guide["assert_race_free"](
            guide["FlagHarness"], contract=guide["FLAG_CONTRACT"], futures=1, depth=4
        )
    assert "4. confirm_canceled(f0)" in str(caught.value)
