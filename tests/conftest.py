"""Hypothesis profiles: ``ci`` (the default), ``dev`` and ``thorough``.

Pick one with ``HYPOTHESIS_PROFILE=thorough .venv/bin/python -m pytest``. Each test
sizes its own run as a multiple of the profile's ``max_examples`` (see
``futurefsm.testing.budget.examples``), so the profile scales every test at once.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,  # shared CI runners stall; a deadline there only adds flakes
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    max_examples=1000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    max_examples=20,
    deadline=None,
    print_blob=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
