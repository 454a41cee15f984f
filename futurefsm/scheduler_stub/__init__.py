"""A real ZeroMQ scheduler for tests, the demo and benchmarks (docs/scheduler.md).

``SchedulerStub`` binds a ROUTER socket and runs the tasks it receives on worker
threads; ``Behaviour`` scripts its faults (late, lost, duplicated results; every way a
cancel can be answered; silence). ``sample_tasks`` holds importable task functions and
the gates that let a test decide when a task finishes.
"""

from .behaviour import DEFAULT_BEHAVIOUR, Behaviour, BehaviourSource, OnCancel
from .stub import LogRecord, SchedulerStub
from .workers import WORKER_DIED_REASON

__all__ = [
    "DEFAULT_BEHAVIOUR",
    "WORKER_DIED_REASON",
    "Behaviour",
    "BehaviourSource",
    "LogRecord",
    "OnCancel",
    "SchedulerStub",
]
