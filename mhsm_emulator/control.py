"""What tests and benchmarks steer and observe: injected latency, injected faults and counters.

Kept in memory only: it describes this run of the emulator, not the HSM's state.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from typing import Any

# Faults a data-plane operation can be given; `token_outage` hits the token endpoints instead.
DATA_PLANE_FAULTS = ("throttle", "error", "unavailable", "reset", "stall", "token_expired", "token_rejected")
TOKEN_FAULTS = ("token_outage",)
FAULT_KINDS = DATA_PLANE_FAULTS + TOKEN_FAULTS
ANY = "*"
# Names of the data-plane operations, for latency and faults; "token" is the token endpoints.
OPERATIONS = frozenset({
    "create", "get", "list", "list_versions", "update", "delete", "get_deleted", "list_deleted", "recover",
    "purge", "sign", "verify", "rng", "unmodeled",
    *(f"role_{kind}_{verb}" for kind in ("definitions", "assignments") for verb in ("read", "write", "delete"))})
TOKEN = "token"


async def sleep_at_least(seconds: float) -> None:
    """Wait at least `seconds`: uvloop's timers run on a cached millisecond clock and can fire up
    to ~1 ms early, and an injected delay is a promise callers measure against."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        await asyncio.sleep(remaining)


@dataclass(frozen=True)
class Fault:
    kind: str
    retry_after: int | None = None
    stall_seconds: float = 10.0


@dataclass(frozen=True)
class Latency:
    fixed_ms: float
    jitter_ms: float = 0.0

    def seconds(self) -> float:
        return (self.fixed_ms + random.uniform(0.0, self.jitter_ms)) / 1000.0


class Control:
    def __init__(self) -> None:
        self.in_flight = 0
        self.reset()

    def reset(self, counters: bool = True, faults: bool = True, latency: bool = True) -> None:
        if faults:
            self._faults: dict[str, deque[Fault]] = defaultdict(deque)
        if latency:
            self._latency: dict[str, Latency] = {}
        if counters:
            self.requests: Counter[tuple[str, str]] = Counter()
            self.statuses: Counter[str] = Counter()
            self.signs: Counter[tuple[str, str, str]] = Counter()
            self.tokens: Counter[tuple[str, str]] = Counter()
            self.faults_injected: Counter[str] = Counter()
            self.connections_accepted = 0
            self.peak_concurrent = 0

    # -- latency and faults --------------------------------------------------------------------

    def set_latency(self, operation: str, fixed_ms: float, jitter_ms: float = 0.0) -> None:
        if fixed_ms <= 0 and jitter_ms <= 0:
            self._latency.pop(operation, None)
        else:
            self._latency[operation] = Latency(fixed_ms, jitter_ms)

    def latency_for(self, operation: str) -> float:
        setting = self._latency.get(operation) or self._latency.get(ANY)
        return setting.seconds() if setting else 0.0

    def inject(self, operation: str, fault: Fault, count: int) -> None:
        self._faults[operation].extend([fault] * count)

    def take_fault(self, operation: str, kinds: tuple[str, ...]) -> Fault | None:
        """Consume the next pending fault of one of `kinds` for this operation (or for any)."""
        for key in (operation, ANY):
            queue = self._faults.get(key)
            if queue and queue[0].kind in kinds:
                fault = queue.popleft()
                self.faults_injected[fault.kind] += 1
                return fault
        return None

    def pending(self) -> dict[str, list[str]]:
        return {op: [f.kind for f in queue] for op, queue in self._faults.items() if queue}

    # -- counters ------------------------------------------------------------------------------

    def enter(self) -> None:
        self.in_flight += 1
        self.peak_concurrent = max(self.peak_concurrent, self.in_flight)

    def leave(self, status: str) -> None:
        """`status` is the HTTP status sent, or "reset" when the connection was aborted instead."""
        self.in_flight -= 1
        self.statuses[status] += 1

    def snapshot(self) -> dict[str, Any]:
        def nested(counter: Counter[tuple[str, ...]], outer: int, inner: int) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = defaultdict(dict)
            for key, n in counter.items():
                out[key[outer]][key[inner]] = out[key[outer]].get(key[inner], 0) + n
            return dict(out)

        def by(counter: Counter[tuple[str, ...]], index: int) -> dict[str, int]:
            out: Counter[str] = Counter()
            for key, n in counter.items():
                out[key[index]] += n
            return dict(out)

        return {
            "requests": {"total": sum(self.requests.values()), "by_operation": by(self.requests, 0),
                         "by_principal": by(self.requests, 1), "by_operation_principal": nested(self.requests, 0, 1),
                         "by_status": dict(self.statuses)},
            "signs": {"total": sum(self.signs.values()), "by_principal": by(self.signs, 0),
                      "by_key": by(self.signs, 1), "by_algorithm": by(self.signs, 2)},
            "tokens_issued": {"total": sum(self.tokens.values()), "by_principal": by(self.tokens, 0),
                              "by_endpoint": by(self.tokens, 1)},
            "connections_accepted": self.connections_accepted,
            "peak_concurrent_requests": self.peak_concurrent,
            "in_flight": self.in_flight,
            "faults_injected": dict(self.faults_injected),
            "faults_pending": self.pending(),
        }
