"""Benchmarks that print ratios measured in one run (``futurefsm bench ...``).

Absolute times on a shared machine mean little; each figure is a ratio of two
measurements taken side by side in the same process, best of several repeats.
"""
