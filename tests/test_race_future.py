"""The race machine over ``TaskFuture`` on the in-memory transport (docs/race-kit.md).

User calls from several threads race inbound messages and local events; see
``futurefsm.testing.race`` for the rules and the invariants checked after every step.
"""

from __future__ import annotations

from hypothesis import settings

from futurefsm.testing import FutureRaceMachine, make_race_machine
from futurefsm.testing.budget import examples

# Up to three futures: concurrent.futures.wait/as_completed over several, callbacks
# that cancel a sibling, bulk expiry and connection loss.
FutureRaceMachine.TestCase.settings = settings(
    max_examples=examples(7), stateful_step_count=30, deadline=None
)
TestFutureRaceMachine = FutureRaceMachine.TestCase

# One future and longer runs: deeper histories of a single future (cancel, refusal,
# cancel again, duplicates) with more calls waiting on it at once.
SingleFutureRaceMachine = make_race_machine(max_futures=1, name="SingleFutureRaceMachine")
SingleFutureRaceMachine.TestCase.settings = settings(
    max_examples=examples(3), stateful_step_count=50, deadline=None
)
TestSingleFutureRaceMachine = SingleFutureRaceMachine.TestCase
