"""The ``futurefsm`` command: ``demo | scheduler | diagrams | bench``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="futurefsm",
        description="Remote-task futures as explicit finite-state machines.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="run tasks on the embedded scheduler stub and cancel them in every phase"
    )
    demo.add_argument(
        "--diagram-out",
        default=None,
        help="where to write the example path diagram (default: a temporary directory)",
    )

    scheduler = commands.add_parser("scheduler", help="run a scheduler stub")
    scheduler.add_argument(
        "--address", default="tcp://127.0.0.1:5555", help="ZeroMQ address to bind"
    )
    scheduler.add_argument("--workers", type=int, default=4, help="worker threads")
    scheduler.add_argument(
        "--behaviour", default=None, metavar="FILE.json", help="Behaviour to apply to every task"
    )

    diagrams = commands.add_parser("diagrams", help="generate the state diagrams")
    diagrams.add_argument("--out", default="diagrams", help="output directory")

    bench = commands.add_parser("bench", help="run a benchmark and print ratios")
    bench.add_argument("which", choices=["fsm", "e2e"], help="which benchmark")
    bench.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``futurefsm`` console script and ``python -m futurefsm``."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "demo":
        from .demo import main as demo_main

        return demo_main(diagram_out=args.diagram_out)
    if args.command == "scheduler":
        from .scheduler_stub.cli import main as scheduler_main

        return scheduler_main(args.address, workers=args.workers, behaviour_file=args.behaviour)
    if args.command == "diagrams":
        from .diagrams import main as diagrams_main

        return diagrams_main(out=args.out)
    if args.which == "fsm":
        from .bench.fsm import main as bench_fsm

        return bench_fsm(quick=args.quick)
    from .bench.e2e import main as bench_e2e

    return bench_e2e(quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
