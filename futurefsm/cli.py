"""The ``futurefsm`` command: ``demo | scheduler | keygen | status | diagrams | bench``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

__all__ = ["main"]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, argparse.SUPPRESS) or action.option_strings == [
            "-v",
            "--verbose",
        ]:
            return action.help
        return super()._get_help_string(action)


_VERBOSE_HELP = "log more: -v at info level (connects, cancels), -vv at debug level"


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="futurefsm",
        description="Remote-task futures as explicit finite-state machines.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"futurefsm {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help=_VERBOSE_HELP)
    # Every command takes -v too (`futurefsm scheduler -v`); SUPPRESS keeps a command
    # without it from resetting a -v given before the command.
    verbosity = argparse.ArgumentParser(add_help=False)
    verbosity.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help=_VERBOSE_HELP
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=help, description=help, parents=[verbosity], formatter_class=_HelpFormatter
        )

    demo = command(
        "demo", "run tasks on the embedded scheduler stub and cancel them in every phase"
    )
    demo.add_argument(
        "--diagram-out",
        default=None,
        metavar="DIR",
        help="directory to write the raced future's path diagram to (Mermaid); "
        "without it the path is printed as text and nothing is written",
    )

    scheduler = command(
        "scheduler",
        "run futurefsm's scheduler: a real ZeroMQ server that runs tasks on worker "
        "processes, stops a force-cancelled running task by killing its process, drops "
        "the work of clients that go away and, with keys, admits only listed CurveZMQ "
        "clients",
    )
    scheduler.add_argument(
        "--address", default="tcp://127.0.0.1:5555", help="ZeroMQ address to bind"
    )
    scheduler.add_argument(
        "--workers", type=int, default=4, help="tasks run at once, each on a worker process"
    )
    scheduler.add_argument(
        "--threads", action="store_true", help="run tasks on worker threads instead of processes"
    )
    scheduler.add_argument(
        "--log-messages",
        action="store_true",
        help="keep a bounded log of the messages in and out (sizes, no payloads)",
    )
    scheduler.add_argument(
        "--behaviour",
        default=None,
        metavar="FILE.json",
        help="fault scripting, for tests: a Behaviour (late, lost, duplicated results, "
        "scripted cancel answers) applied to every task",
    )
    scheduler.add_argument(
        "--secret-key",
        default=None,
        metavar="FILE",
        help="the scheduler's NAME.key_secret (from `futurefsm keygen`): serve CurveZMQ",
    )
    scheduler.add_argument(
        "--client-keys",
        default=None,
        metavar="DIR",
        help="directory of the public keys (*.key) of the clients allowed to connect",
    )
    scheduler.add_argument(
        "--insecure",
        action="store_true",
        help="allow binding beyond this host without keys (anyone who reaches it runs code)",
    )

    keygen = command(
        "keygen", "write a CurveZMQ keypair: DIR/NAME.key (public), DIR/NAME.key_secret"
    )
    keygen.add_argument("directory", metavar="DIR", help="where to write the key files")
    keygen.add_argument("--name", required=True, help="the keypair's name (file stem)")

    status = command(
        "status",
        "show a running scheduler's clients, queued, running and finished tasks, cancels "
        "and protocol errors",
    )
    status.add_argument("address", help="the scheduler's ZeroMQ address, e.g. tcp://127.0.0.1:5555")
    status.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")
    status.add_argument(
        "--secret-key",
        default=None,
        metavar="FILE",
        help="this client's NAME.key_secret (CurveZMQ)",
    )
    status.add_argument(
        "--server-key", default=None, metavar="FILE", help="the scheduler's public .key (CurveZMQ)"
    )

    diagrams = command("diagrams", "generate the state diagrams and the docs' transition table")
    diagrams.add_argument("--out", default="diagrams", help="output directory")
    diagrams.add_argument(
        "--diff",
        metavar="REV",
        default=None,
        help="instead, print what changed in TRANSITION_TABLE since git revision REV "
        "(Mermaid and a list, as markdown); nothing is written",
    )

    bench = command("bench", "run a benchmark and print ratios")
    bench.add_argument("which", choices=["fsm", "e2e", "engines"], help="which benchmark")
    bench.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``futurefsm`` console script and ``python -m futurefsm``."""
    args = _parser().parse_args(argv)
    levels = (logging.WARNING, logging.INFO, logging.DEBUG)
    logging.basicConfig(
        level=levels[min(args.verbose, len(levels) - 1)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "demo":
        from .demo import main as demo_main

        return demo_main(diagram_out=args.diagram_out)
    if args.command == "scheduler":
        from .scheduler_stub.cli import main as scheduler_main

        return scheduler_main(
            args.address,
            workers=args.workers,
            behaviour_file=args.behaviour,
            threads=args.threads,
            log_messages=args.log_messages,
            secret_key=args.secret_key,
            client_keys=args.client_keys,
            insecure=args.insecure,
        )
    if args.command == "keygen":
        from .scheduler_stub.security import keygen_main

        return keygen_main(args.directory, args.name)
    if args.command == "status":
        from .status import main as status_main

        return status_main(
            args.address,
            timeout=args.timeout,
            secret_key=args.secret_key,
            server_key=args.server_key,
        )
    if args.command == "diagrams" and args.diff is not None:
        from .diagrams import diff_main

        return diff_main(args.diff)
    if args.command == "diagrams":
        from .diagrams import main as diagrams_main

        return diagrams_main(out=args.out)
    if args.which == "engines":
        from .bench.engines import main as bench_engines

        return bench_engines(quick=args.quick)
    if args.which == "fsm":
        from .bench.fsm import main as bench_fsm

        return bench_fsm(quick=args.quick)
    from .bench.e2e import main as bench_e2e

    return bench_e2e(quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
