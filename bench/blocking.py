"""11. What a worker that blocks while the HSM answers costs: nginx (4 workers, our provider, new
sessions) with 0, 1, 5 and 20 ms injected at the HSM's sign: handshakes/s, and the p99 latency of a
plain request (`GET /ping`, no key operation) on a keep-alive connection opened before the load,
while the handshakes run. The same plain request against a local key file under the same load is
the baseline. No target: the figures say how many workers a given HSM round trip needs.
"""

from __future__ import annotations

import multiprocessing
import socket
import ssl
import time
from typing import Any, Callable

from harness import Figure, Lab, percentile

import nginx_paths
import tls_load

MEASUREMENT = "11. blocking workers"
LATENCIES_MS = (0, 1, 5, 20)
KINDS = ("RSA", "EC")
PING = b"GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\n"


def _probe(port: int, ready: Any, stop: Any, out: Any) -> None:
    """In its own process (the handshake load forks its clients; a prober thread here would be
    forked with them): one kept-alive TLS connection sending GET /ping back to back, each answer
    timed, the times sent back when told to stop."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30), server_hostname="localhost")

    def ping() -> None:
        sock.sendall(PING)
        data = b""
        while not data.endswith(b"ok\n"):
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("nginx closed the keep-alive connection")
            data += chunk

    ping()  # open and warm before the load starts
    ready.set()
    times = []
    while not stop.is_set():
        began = time.perf_counter()
        ping()
        times.append((time.perf_counter() - began) * 1000)
        stop.wait(0.002)
    sock.close()
    out.send(times)


def case(port: int, seconds: float) -> tuple[dict[str, float], float, int]:
    """Handshakes for `seconds` with the prober running: the load's result, the plain p99 (ms) and
    how many plain requests were timed."""
    context = multiprocessing.get_context("fork")
    ready, stop = context.Event(), context.Event()
    receive, send = context.Pipe(duplex=False)
    prober = context.Process(target=_probe, args=(port, ready, stop, send))
    prober.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the plain-request prober could not connect")
        result = tls_load.load(port, "TLS 1.3", seconds=seconds)
    finally:
        stop.set()
    times = receive.recv() if receive.poll(30) else []
    prober.join(30)
    return result, percentile(times, 0.99), len(times)


Curves = dict[str, dict[int, tuple[float, float]]]  # kind -> injected ms -> (handshakes/s, plain p99 ms)


def run(lab: Lab, seconds: float, tick: Callable[[], None]) -> tuple[list[Figure], Curves]:
    figures: list[Figure] = []
    curves: Curves = {}
    local = nginx_paths.Server(lab, "local 1.30", lab.tmp / "blocking-local")
    try:
        baseline = {kind: case(local.ports[kind], seconds) for kind in KINDS}
    finally:
        local.stop()
    tick()
    server = nginx_paths.Server(lab, "provider", lab.tmp / "blocking-provider")
    try:
        for kind in KINDS:
            result, p99, count = baseline[kind]
            figures.append(Figure(MEASUREMENT, f"local key, {kind}: plain request p99", round(p99, 3), "ms",
                                  note=f"{count} requests; {result['rate']:.0f} handshakes/s alongside"))
            for ms in LATENCIES_MS:
                lab.latency(ms)
                result, p99, count = case(server.ports[kind], seconds)
                curves.setdefault(kind, {})[ms] = (result["rate"], p99)
                figures.append(Figure(MEASUREMENT, f"provider, {kind}, {ms} ms at the HSM: handshakes/s",
                                      round(result["rate"], 1), "handshakes/s",
                                      note=f"{nginx_paths.WORKERS} workers; {result['failed']} failed"))
                figures.append(Figure(MEASUREMENT, f"provider, {kind}, {ms} ms at the HSM: plain request p99",
                                      round(p99, 3), "ms", f"local key, {kind}: plain request p99",
                                      round(baseline[kind][1], 3), round(p99 / baseline[kind][1], 3),
                                      note=f"{count} requests on one kept-alive connection"))
                tick()
    finally:
        lab.latency(0)
        server.stop()
    return figures, curves
