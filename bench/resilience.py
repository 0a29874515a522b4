"""6. Resilience under load: handshakes per second and failed handshakes through the provider while
the emulator answers 1 % of signs with 503, and then while every sign stalls for 2 s.
Targets: 0 failed handshakes with the 503s; back to at least half the normal rate within 1 s after
the stall ends."""

from __future__ import annotations

import threading
import time
from typing import Callable

from harness import Figure, Lab

import nginx_paths
import tls_load

MEASUREMENT = "6. resilience"
STALL_S = 2.0


def _one_percent_503(lab: Lab, stop: threading.Event) -> int:
    """Inject one 503 per 100 signs, for as long as the load runs; returns how many were injected."""
    injected, next_at = 0, lab.signs() + 100
    while not stop.wait(0.02):
        if lab.signs() >= next_at:
            lab.admin.inject("unavailable", "sign", count=1)
            injected, next_at = injected + 1, next_at + 100
    return injected


def run(lab: Lab, seconds: float, tick: Callable[[], None]) -> list[Figure]:
    server = nginx_paths.Server(lab, "provider", lab.tmp / "resilience")
    try:
        port = server.ports["EC"]
        calm = tls_load.load(port, "TLS 1.3", seconds=seconds)
        tick()
        stop, injected = threading.Event(), [0]
        injector = threading.Thread(target=lambda: injected.__setitem__(0, _one_percent_503(lab, stop)))
        injector.start()
        noisy = tls_load.load(port, "TLS 1.3", seconds=seconds)
        stop.set()
        injector.join()
        tick()
        # The stall: for STALL_S every sign hangs (the HSM answers after STALL_S); then it is lifted.
        timer = threading.Timer(1.0, lambda: lab.admin.inject("stall", "sign", count=100000, stall_seconds=STALL_S))
        lifted_at: list[float] = []

        def lift() -> None:
            lab.admin.reset(counters=False, faults=True, latency=False)
            lifted_at.append(time.time())

        lifter = threading.Timer(1.0 + STALL_S, lift)
        timer.start()
        lifter.start()
        stalled = tls_load.load(port, "TLS 1.3", seconds=1.0 + STALL_S + 3.0)
        timer.join()
        lifter.join()
        tick()
    finally:
        server.stop()
    normal = calm["rate"]
    after = [began for began, ok in stalled["events"] if ok and began >= lifted_at[0]]
    recovery = _recovery(after, lifted_at[0], normal)
    return [
        Figure(MEASUREMENT, "handshakes/s with 1 % 503s", round(noisy["rate"], 1), "handshakes/s",
               "handshakes/s, no faults", round(normal, 1), round(noisy["rate"] / normal, 3), "0 failed",
               noisy["failed"] == 0, f"{noisy['failed']} failed of {noisy['ok'] + noisy['failed']}; "
                                     f"{injected[0]} 503s injected (retried by the core)"),
        Figure(MEASUREMENT, "recovery after a 2 s stall", round(recovery, 3), "s", "", None, None, "<= 1 s",
               recovery <= 1.0, f"{stalled['failed']} failed handshakes during and after the stall"),
    ]


def _recovery(starts: list[float], lifted: float, normal_rate: float) -> float:
    """Seconds from the end of the stall until handshakes started at >= half the normal rate,
    over a 0.25 s window."""
    window = 0.25
    for index, began in enumerate(starts):
        in_window = sum(1 for t in starts[index:] if t < began + window)
        if in_window / window >= normal_rate / 2:
            return max(0.0, began - lifted)
    return float("inf")
