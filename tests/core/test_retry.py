"""The retry policy alone (mhsm_core/retry.py), with the clock and the jitter in the test's hands:
time ends a call before the count does, the default count lets a 2 s burst of refusals pass at
any request rate, Retry-After is honoured, and nothing is slept on that would end past the budget."""

from __future__ import annotations

import pytest

from mhsm_core.config import Options
from mhsm_core.retry import DEFAULT_MAX_RETRIES, MIN_ATTEMPT, RetryPolicy, retry_after_seconds


def policy(budget: float = 20.0, retries: int = DEFAULT_MAX_RETRIES, jitter: float = 0.0,
           timeout: float = 15.0) -> RetryPolicy:
    return RetryPolicy(budget, retries, timeout, rand=lambda: jitter)


def refused_for(p: RetryPolicy, seconds: float, attempt_cost: float = 0.0) -> bool:
    """Every attempt is refused until `seconds` have passed: does some attempt land after that?"""
    now = 0.0
    attempts = p.begin(now)
    while True:
        now += attempt_cost
        if now >= seconds:
            return True
        delay = attempts.pause(now)
        if delay is None:
            return False
        now += delay


@pytest.mark.parametrize("jitter", [0.0, 0.5, 1.0])
def test_default_passes_a_two_second_burst_whatever_the_draw(jitter: float) -> None:
    """The worst draw (every pause at its low end) still spans 2 s with the default MaxRetries; the
    shipped default is the one the configuration gives."""
    assert Options().max_retries == DEFAULT_MAX_RETRIES
    assert policy().min_covered(DEFAULT_MAX_RETRIES) >= 2.0
    assert refused_for(policy(jitter=jitter), 2.0)
    assert refused_for(policy(jitter=jitter), 2.0, attempt_cost=0.001)  # fast refusals: a high rate


def test_the_old_count_of_four_did_not() -> None:
    """What the soak met: four quick retries are spent long before a 2 s outage ends."""
    assert not refused_for(policy(retries=4), 2.0)


def test_pauses_grow_within_their_jitter_band_up_to_the_cap() -> None:
    low, high = policy(jitter=0.0).begin(0.0), policy(jitter=1.0).begin(0.0)
    lows = [low.pause(0.0) for _ in range(8)]
    highs = [high.pause(0.0) for _ in range(8)]
    assert lows == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5, 0.5, 0.5, 0.5])
    assert highs == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0])


def test_retry_after_is_honoured_when_longer_than_the_backoff() -> None:
    attempts = policy().begin(0.0)
    assert attempts.pause(0.0, retry_after=1.0) == pytest.approx(1.0)
    assert attempts.pause(1.0, retry_after=0.0) == pytest.approx(0.1)  # shorter: the backoff stands


def test_budget_ends_the_call_before_the_count() -> None:
    """RetryBudget 1 s with 20 retries allowed: no pause that ends past the budget is granted."""
    p = policy(budget=1.0, retries=20, jitter=1.0)
    now, attempts = 0.0, p.begin(0.0)
    while (delay := attempts.pause(now)) is not None:
        now += delay
    assert now + MIN_ATTEMPT <= 1.0
    assert attempts.retries < 20


def test_retry_after_beyond_the_budget_fails_at_once() -> None:
    assert policy(budget=1.0).begin(0.0).pause(0.0, retry_after=5.0) is None


def test_max_retries_is_a_ceiling() -> None:
    attempts = policy(retries=2).begin(0.0)
    assert attempts.pause(0.0) is not None and attempts.pause(0.2) is not None
    assert attempts.pause(0.5) is None


def test_attempt_timeouts_stay_inside_the_budget_and_the_callers_timeout() -> None:
    """The first attempt gets RequestTimeout even with RetryBudget 0; a retry only what is left of
    the budget; a caller's timeout bounds every attempt and the whole call."""
    assert policy(budget=0.0, timeout=15.0).begin(0.0).attempt_timeout(0.0) == 15.0
    assert policy(budget=0.0).begin(0.0).pause(0.0) is None
    attempts = policy(budget=3.0, timeout=15.0).begin(0.0)
    attempts.pause(0.0)
    assert attempts.attempt_timeout(1.0) == pytest.approx(2.0)
    caller = policy(budget=20.0, timeout=15.0).begin(0.0, timeout=0.5)
    assert caller.attempt_timeout(0.0) == pytest.approx(0.5)
    assert caller.pause(0.3, retry_after=0.3) is None


@pytest.mark.parametrize(("header", "seconds"), [("2", 2.0), ("0.2", 0.2), ("-1", 0.0), (None, None),
                                                 ("Wed, 21 Oct 2015 07:28:00 GMT", None)])
def test_retry_after_header(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header) == seconds
