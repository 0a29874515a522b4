"""When a failed call to the HSM gets another attempt, and how long it waits first: time first,
count second.

A call may take `options.RetryBudget` seconds, back-offs included (and no longer than the caller's
own timeout). Inside that time 429, 5xx, connection resets and timeouts are retried after a pause
that grows from `BACKOFF_BASE` to `BACKOFF_CAP` with "equal jitter" (a random point in the upper
half of the step), or after the `Retry-After` the service sent when that is longer.

Why equal jitter and not full jitter: full jitter may draw pauses near zero several times in a
row, so a call could spend its `MaxRetries` within a few milliseconds of an outage that lasts a
second; the lower half bounds how quickly the retries are used up. With the default schedule ten
retries cover at least 3.75 s (`min_covered`), so a burst of refusals lasting up to 2 s passes
whatever the request rate, and MaxRetries only caps a pathological run. Past the budget a call
fails at once: a pause that would end after the deadline is not slept on.

Kept apart from how the bytes move (transport.py) so it can be tested alone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
BACKOFF_BASE, BACKOFF_CAP = 0.1, 1.0  # seconds: the first step, and the largest
MIN_ATTEMPT = 0.05  # seconds: an attempt with less time than this left is not started
DEFAULT_MAX_RETRIES = 10


@dataclass(frozen=True)
class RetryPolicy:
    budget: float  # seconds for all attempts of one call
    max_retries: int
    request_timeout: float  # seconds for one attempt
    base: float = BACKOFF_BASE
    cap: float = BACKOFF_CAP
    rand: Callable[[], float] = random.random

    def step(self, retry: int) -> float:
        """The un-jittered pause before retry number `retry` (1, 2, ...)."""
        return min(self.cap, self.base * 2 ** (retry - 1))

    def min_covered(self, retries: int) -> float:
        """The least time `retries` retries can spend pausing (every jitter at its low end)."""
        return sum(self.step(r) / 2 for r in range(1, retries + 1))

    def begin(self, now: float, timeout: float | None = None) -> "Attempts":
        """The retry state of one call starting at `now`; `timeout` is the caller's own limit, if any."""
        deadline = now + self.budget
        if timeout is not None:
            deadline = min(deadline, now + timeout)
        return Attempts(self, now, deadline, timeout)


class Attempts:
    """One call's attempts: how long the next may take, and whether (and when) there is a next."""

    __slots__ = ("policy", "started", "deadline", "timeout", "retries")

    def __init__(self, policy: RetryPolicy, started: float, deadline: float, timeout: float | None) -> None:
        self.policy, self.started, self.deadline, self.timeout = policy, started, deadline, timeout
        self.retries = 0

    def attempt_timeout(self, now: float) -> float:
        """Seconds the attempt starting now may take: RequestTimeout; a retry also ends with the
        budget, and every attempt with the caller's timeout (the first attempt is always made, even
        with RetryBudget 0)."""
        limit = self.policy.request_timeout
        if self.retries or self.timeout is not None:
            limit = min(limit, self.deadline - now)
        return max(limit, 0.001)

    def pause(self, now: float, retry_after: float | None = None) -> float | None:
        """The pause before the next attempt, or None when the call must fail now (MaxRetries
        spent, or the pause plus a useful attempt would not fit before the deadline)."""
        if self.retries >= self.policy.max_retries:
            return None
        step = self.policy.step(self.retries + 1)
        delay = step / 2 + self.policy.rand() * step / 2
        if retry_after is not None:
            delay = max(delay, retry_after)
        if now + delay + MIN_ATTEMPT > self.deadline:
            return None
        self.retries += 1
        return delay


def retry_after_seconds(value: str | None) -> float | None:
    """A `Retry-After` in seconds (the service sends delta-seconds); None when absent or not a number."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
