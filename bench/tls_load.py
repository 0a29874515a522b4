"""The handshake load: processes that each open new TLS connections in a loop (no session reuse,
so every handshake is a full one and the server signs once), recording when each started and
whether it succeeded.

A small multi-process driver instead of `openssl s_time -new`: s_time reports only an aggregate
rate, while the resilience measurement needs every failure and when it happened; processes, not
threads, so the client's own TLS work is not serialised by one interpreter.
"""

from __future__ import annotations

import multiprocessing
import socket
import ssl
import time
from typing import Any

VERSIONS = {"TLS 1.3": ssl.TLSVersion.TLSv1_3, "TLS 1.2": ssl.TLSVersion.TLSv1_2}


def _client(port: int, version: str, until: float, count: int) -> list[tuple[float, bool]]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # the server's key is what is timed
    context.minimum_version = context.maximum_version = VERSIONS[version]
    events = []
    while time.time() < until and (not count or len(events) < count):
        began = time.time()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
                    context.wrap_socket(raw, server_hostname="localhost"):
                ok = True
        except OSError:
            ok = False
        events.append((began, ok))
    return events


def load(port: int, version: str, processes: int = 4, seconds: float = 3.0, count: int = 0) -> dict[str, Any]:
    """Handshakes from `processes` clients for `seconds` (or `count` in all); rate = successes/s."""
    until = time.time() + (seconds if not count else 3600)
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        began = time.time()
        parts = pool.starmap(_client, [(port, version, until, -(-count // processes) if count else 0)] * processes)
        elapsed = time.time() - began
    events = sorted(e for part in parts for e in part)
    ok = sum(1 for _, good in events if good)
    return {"ok": ok, "failed": len(events) - ok, "seconds": elapsed, "rate": ok / elapsed, "events": events}
