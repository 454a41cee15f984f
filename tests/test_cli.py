"""The ``futurefsm`` command as a new user meets it: version, -v, help, errors, demo."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import futurefsm
from futurefsm import Client
from futurefsm.cli import _parser
from futurefsm.cli import main as cli_main
from futurefsm.scheduler_stub import sample_tasks as tasks

DEADLINE = 10.0
ROOT = Path(__file__).resolve().parents[1]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"futurefsm {futurefsm.__version__}\n"


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["scheduler"], 0),
        (["scheduler", "-v"], 1),
        (["-v", "scheduler"], 1),
        (["scheduler", "--verbose"], 1),
        (["scheduler", "-vv"], 2),
        (["-vv", "status", "tcp://127.0.0.1:1"], 2),
        (["status", "tcp://127.0.0.1:1", "-v"], 1),
        (["demo", "-v"], 1),
        (["diagrams", "-v"], 1),
        (["bench", "fsm", "-v"], 1),
    ],
)
def test_verbose_before_or_after_the_command(argv: list[str], level: int) -> None:
    assert _parser().parse_args(argv).verbose == level


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("scheduler", ["(default: tcp://127.0.0.1:5555)", "(default: 4)"]),
        ("status", ["(default: 5.0)"]),
        ("diagrams", ["(default: diagrams)"]),
    ],
)
def test_help_shows_defaults(
    command: str, shown: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        cli_main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for default in shown:
        assert default in text
    assert "(default: None)" not in text and "(default: False)" not in text


def test_diagram_out_onto_a_file_is_an_error_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "taken"
    target.write_text("mine")
    assert cli_main(["demo", "--diagram-out", str(target)]) == 2
    captured = capsys.readouterr()
    expected = f"futurefsm demo: --diagram-out {target}: is a file; expected a directory\n"
    assert captured.err == expected
    assert captured.out == ""  # refused before the demo ran
    assert target.read_text() == "mine"


def test_demo_leaves_no_temporary_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert cli_main(["demo"]) == 0
    assert list(tmp_path.iterdir()) == []
    out = capsys.readouterr().out
    assert "path of the raced future: pending -sent-> running" in out
    assert out.rstrip().splitlines()[-2].endswith("-recv_result-> cancelled [RESULT_RACED]")


def test_scheduler_process_with_v_logs_cancels_and_answers_status(tmp_path: Path) -> None:
    """A real ``futurefsm scheduler -v`` process: INFO lines for a cancel and its
    answer, and ``futurefsm status`` (another process) reads its counters."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # The task ends at once but its result is held back: it counts as running for the
    # cancel, and no worker is left busy when the scheduler stops.
    behaviour = tmp_path / "held.json"
    behaviour.write_text('{"result_delay": 60}')
    args = ["scheduler", "-v", "--address", "tcp://127.0.0.1:0", "--behaviour", str(behaviour)]
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "futurefsm", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert scheduler.stdout is not None
        line = scheduler.stdout.readline()
        address = line.split()[-1]
        assert address.startswith("tcp://127.0.0.1:") and not address.endswith(":0"), line
        with Client(address, cancel_timeout=DEADLINE) as client:
            future = client.submit(tasks.noop)
            end = time.monotonic() + DEADLINE
            while future.state.value != "running" and time.monotonic() < end:
                time.sleep(0.002)
            assert future.cancel()
            status = subprocess.run(
                [sys.executable, "-m", "futurefsm", "status", address],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
                check=False,
            )
        assert status.returncode == 0, status.stderr
        rows = dict(line.rsplit(None, 1) for line in status.stdout.splitlines()[1:])
        assert {key.strip(): int(value) for key, value in rows.items()}["cancels"] == 1
    finally:
        scheduler.send_signal(signal.SIGTERM)
        _, err = scheduler.communicate(timeout=60)
    assert scheduler.returncode == 0, err
    task_id = future.task_id.hex()
    assert f"INFO futurefsm.scheduler_stub: cancel (force) of {task_id}" in err
    assert f"INFO futurefsm.scheduler_stub: cancel of {task_id}: canceled" in err
    assert "Traceback" not in err
