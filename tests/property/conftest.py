"""Hypothesis for the parsers: derandomized (the same examples on every run, so a failure in CI
replays anywhere) and without per-example deadlines (the machine is shared)."""

from hypothesis import HealthCheck, settings

settings.register_profile("suite", derandomize=True, deadline=None, max_examples=300,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")
