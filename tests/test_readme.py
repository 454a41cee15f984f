"""The README's commands run as written from a checkout (issue 24): futurefsm is not on
PyPI, and after the first command (which makes ``.venv``) every command goes through
``.venv/bin/``, where the installed tools are."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"```(?:bash|sh)\n(.*?)```", re.DOTALL)
_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")


def _commands() -> list[str]:
    """Every shell command of the README's bash blocks, continuation lines joined and
    ``&&`` chains split, in order."""
    commands = []
    for block in _BLOCK.findall(README.read_text(encoding="utf-8")):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip().rstrip("&").strip()
            if line and not line.startswith("#"):
                commands.extend(part.strip() for part in line.split("&&"))
    return commands


def _extras(command: str) -> set[str]:
    """The extras of an editable install command: ``-e '.[a,b]'`` -> {a, b}."""
    found = re.search(r"-e '\.\[([a-z,]+)\]'", command)
    assert found, command
    return set(found.group(1).split(","))


def test_the_first_commands_install_and_test_then_everything_runs_from_the_venv() -> None:
    commands = _commands()
    assert commands[0] == "python3 -m venv .venv"
    assert commands[1].startswith(".venv/bin/pip install -e '.[")
    assert commands[2:4] == [".venv/bin/futurefsm demo", ".venv/bin/python -m pytest -q"]
    # CI installs what the README tells a newcomer to, and runs the same test command.
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    installs = [
        line for line in ci.splitlines() if line.startswith(".venv/bin/python -m pip install")
    ]
    assert _extras(installs[-1]) == _extras(commands[1]), (installs[-1], commands[1])
    assert ci.rstrip().splitlines()[-1] == commands[3]
    for command in commands[1:]:
        words = shlex.split(command)
        if words[0] == "export":  # a shell builtin setting the environment
            assert all(_ASSIGNMENT.match(word) for word in words[1:]), command
            continue
        while words and _ASSIGNMENT.match(words[0]):  # VAR=value before the program
            words.pop(0)
        assert words[0].startswith(".venv/bin/"), f"README: {command!r} needs .venv/bin/"


def test_the_readme_does_not_install_from_pypi() -> None:
    text = README.read_text(encoding="utf-8")
    assert "pip install futurefsm" not in text and "pip install 'futurefsm[" not in text
    assert "not on PyPI" in text
