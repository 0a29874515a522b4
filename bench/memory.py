"""5. Memory: the resident size an nginx worker has with the HSM key (provider, store:) against the
same nginx with a local key file, after 1,000 handshakes on each. Target: <= 40 MB more."""

from __future__ import annotations

from typing import Callable

from harness import Figure, Lab

import nginx_paths
import tls_load

MEASUREMENT = "5. memory"
TARGET_MB = 40.0


def run(lab: Lab, handshakes: int, tick: Callable[[], None]) -> list[Figure]:
    sizes = {}
    for path in ("local 1.30", "provider"):
        server = nginx_paths.Server(lab, path, lab.tmp / f"memory-{path.replace(' ', '-')}")
        try:
            result = tls_load.load(server.ports["RSA"], "TLS 1.3", count=handshakes)
            assert result["failed"] == 0, f"{result['failed']} failed handshakes on {path}"
            sizes[path] = server.worker_rss_mb()
        finally:
            server.stop()
        tick()
    added = sizes["provider"] - sizes["local 1.30"]
    return [Figure(MEASUREMENT, "nginx worker RSS, HSM key (provider)", round(sizes["provider"], 1), "MB",
                   "nginx worker RSS, local key file", round(sizes["local 1.30"], 1),
                   round(sizes["provider"] / sizes["local 1.30"], 2), f"<= +{TARGET_MB:g} MB", added <= TARGET_MB,
                   f"added {added:.1f} MB after {handshakes} handshakes (mean of 4 workers)")]
