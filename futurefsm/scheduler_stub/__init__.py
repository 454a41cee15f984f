"""futurefsm's scheduler: a real ZeroMQ scheduler (docs/scheduler.md), and the fault
scripting that makes it a stub for tests.

Its parts, one module each:

- ``stub.py``: ``SchedulerStub``, the ROUTER server (poll loop, lifecycle), built
  from ``tasks.py`` (task handling: fires task events, carries out the table's
  effects) and ``outbound.py`` (sending, batching answers);
- ``task_table.py``: a task's lifecycle, one literal (state, event) -> (next state,
  effects) table, sans-I/O; ``SchedulerStub._apply`` is the only code that sets a
  task's state;
- ``records.py``: a task's data and how a client's graphs hang together;
- ``workers.py``, ``processes.py``, ``running.py``: the worker pool (processes, or
  threads) and what runs a task;
- ``behaviour.py``: the fault scripting, ``Behaviour`` (late, lost, duplicated
  results; every way a cancel can be answered; silence) -- the only "stub" part;
- ``observe.py``: counters (``stats()``, ``futurefsm status``) and the message log;
- ``peers.py``, ``security.py``: client liveness, CurveZMQ;
- ``sample_tasks.py``: importable task functions and the gates that let a test decide
  when a task finishes.

The name ``SchedulerStub`` is kept (``from futurefsm.scheduler_stub import
SchedulerStub, Behaviour`` is how engines and tests reach it); without a Behaviour it
scripts no fault and is the scheduler ``futurefsm scheduler`` and ``Client()`` run.
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
