#!/usr/bin/env python3
"""How fast is the emulator? Signs per second over real HTTPS (RSA-2048 PS256 and EC P-256 ES256),
with latency percentiles and the emulator's own CPU per sign.

Why: tests, the demo and every benchmark drive signatures through the emulator, so its throughput
and its per-request cost bound what they can measure. The client is bare httpx over keep-alive
(one client per thread), so no SDK cost is counted; the client shares the machine's cores, so the
figure that does not depend on the client is signs per emulator CPU-second ("per core"), taken from
the emulator process's own user+system time over each point.

    bench/emulator_speed.py --count 2000 --concurrency 1,16 --keys rsa,ec --json out.json

Reported per key type and concurrency: signs/s, signs per emulator CPU-second, p50/p99; the p50 of
`POST /rng` (count 1), a trivial authenticated call, as the per-request overhead; and a local
`cryptography` RSA-2048 PS256 sign for comparison with what the signing itself costs.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import os
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout
from mhsm_emulator import launcher  # noqa: E402

API = {"api-version": "7.5"}
DIGEST = hashlib.sha256(b"emulator speed").digest()
_VALUE = base64.urlsafe_b64encode(DIGEST).rstrip(b"=").decode()
# key type: (key name, create body, sign body)
KEYS = {
    "rsa": ("bench-rsa-2048", {"kty": "RSA-HSM", "key_size": 2048}, {"alg": "PS256", "value": _VALUE}),
    "ec": ("bench-ec-p256", {"kty": "EC-HSM", "crv": "P-256"}, {"alg": "ES256", "value": _VALUE}),
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc: fields 14 and 15 of stat, in ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def token(info: dict[str, Any], tls: ssl.SSLContext) -> str:
    """Client-credentials grant for the keygen principal at the emulator's Entra v2 token endpoint."""
    principal = info["principals"]["keygen"]
    response = httpx.post(f"{info['authority']}/{info['tenant_id']}/oauth2/v2.0/token", verify=tls, trust_env=False,
                          data={"grant_type": "client_credentials", "client_id": principal["client_id"],
                                "client_secret": principal["client_secret"],
                                "scope": "https://managedhsm.azure.net/.default"})
    response.raise_for_status()
    return str(response.json()["access_token"])


def client(info: dict[str, Any], tls: ssl.SSLContext, bearer: str) -> httpx.Client:
    """One keep-alive HTTPS connection's worth of client; trust_env=False so no proxy or CA variable interferes."""
    return httpx.Client(base_url=info["url"], headers={"Authorization": f"Bearer {bearer}"}, verify=tls,
                        trust_env=False, timeout=30.0)


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile in milliseconds (samples are seconds)."""
    ordered = sorted(samples)
    return 1000.0 * ordered[max(0, math.ceil(p / 100.0 * len(ordered)) - 1)]


def run_signs(info: dict[str, Any], tls: ssl.SSLContext, bearer: str, kid_path: str, sign_body: dict[str, str],
              count: int, threads: int) -> dict[str, Any]:
    """`count` signs split over `threads` threads, each with its own warmed-up client."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    barrier = threading.Barrier(threads + 1)
    shares = [count // threads + (1 if i < count % threads else 0) for i in range(threads)]

    def worker(share: int) -> None:
        mine: list[float] = []
        failed = 0
        with client(info, tls, bearer) as http:
            http.post(f"{kid_path}/sign", params=API, json=sign_body)  # connect + TLS handshake, not timed
            barrier.wait(timeout=120)  # a thread that cannot connect breaks the barrier, not hangs
            for _ in range(share):
                started = time.perf_counter()
                try:
                    ok = http.post(f"{kid_path}/sign", params=API, json=sign_body).status_code == 200
                except httpx.HTTPError:
                    ok = False
                mine.append(time.perf_counter() - started)
                failed += not ok
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    workers = [threading.Thread(target=worker, args=(share,)) for share in shares]
    for w in workers:
        w.start()
    barrier.wait(timeout=120)
    started, cpu_before = time.perf_counter(), cpu_seconds(info["pid"])
    for w in workers:
        w.join()
    elapsed, cpu = time.perf_counter() - started, cpu_seconds(info["pid"]) - cpu_before
    return {"concurrency": threads, "count": count, "seconds": round(elapsed, 3),
            "signs_per_second": round(count / elapsed, 1), "emulator_cpu_seconds": round(cpu, 3),
            "signs_per_core_second": round(count / cpu, 1) if cpu > 0 else None,
            "p50_ms": round(percentile(latencies, 50), 3),
            "p99_ms": round(percentile(latencies, 99), 3), "errors": errors[0]}


def rng_overhead(info: dict[str, Any], tls: ssl.SSLContext, bearer: str, count: int) -> float:
    """p50 of `POST /rng` (count 1): TLS-wrapped HTTP, token check, RBAC and JSON, and no crypto."""
    with client(info, tls, bearer) as http:
        http.post("/rng", params=API, json={"count": 1}).raise_for_status()
        samples = []
        for _ in range(count):
            started = time.perf_counter()
            http.post("/rng", params=API, json={"count": 1}).raise_for_status()
            samples.append(time.perf_counter() - started)
    return round(percentile(samples, 50), 3)


def local_sign(count: int) -> float:
    """p50 of an RSA-2048 PS256 sign of a prehashed SHA-256 digest with `cryptography`, in process."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pss = padding.PSS(padding.MGF1(hashes.SHA256()), 32)
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        key.sign(DIGEST, pss, utils.Prehashed(hashes.SHA256()))
        samples.append(time.perf_counter() - started)
    return round(percentile(samples, 50), 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="signs per concurrency point (default 2000)")
    parser.add_argument("--concurrency", default="1,16", help="comma-separated thread counts (default 1,16)")
    parser.add_argument("--keys", default="rsa,ec", help="comma-separated key types: rsa, ec (default both)")
    parser.add_argument("--state-dir", type=Path, help="emulator state dir (default: a temporary one)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here as JSON")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    kinds = [k.strip() for k in args.keys.split(",") if k.strip()]
    if args.count < 1 or not levels or min(levels) < 1:
        parser.error("--count and every --concurrency value must be at least 1")
    if not kinds or not set(kinds) <= set(KEYS):
        parser.error(f"--keys takes {', '.join(KEYS)}")

    with tempfile.TemporaryDirectory(prefix="mhsm-bench-") as scratch:
        emulator = launcher.start(args.state_dir or Path(scratch) / "state", timeout=60)
        info = emulator.info
        try:
            tls = ssl.create_default_context(cafile=info["ca_file"])
            bearer = token(info, tls)
            points = []
            for kind in kinds:
                name, create, sign_body = KEYS[kind]
                with client(info, tls, bearer) as http:
                    created = http.post(f"/keys/{name}/create", params=API, json=create)
                    created.raise_for_status()
                kid_path = httpx.URL(created.json()["key"]["kid"]).path
                points += [{"key": kind, **run_signs(info, tls, bearer, kid_path, sign_body, args.count, n)}
                           for n in levels]
            overhead = rng_overhead(info, tls, bearer, min(args.count, 1000))
            local = local_sign(min(args.count, 1000))
        finally:
            emulator.stop(timeout=10)

    results = {"keys": {k: KEYS[k][2]["alg"] for k in kinds}, "points": points, "rng_p50_ms": overhead,
               "local_sign_p50_ms": local, "cpus": os.cpu_count(), "python": sys.version.split()[0]}
    print(f"{'key':>4} {'threads':>7} {'signs':>7} {'signs/s':>9} {'per core':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'errors':>6}")
    for p in points:
        per_core = p["signs_per_core_second"] or 0.0
        print(f"{p['key']:>4} {p['concurrency']:>7} {p['count']:>7} {p['signs_per_second']:>9.1f} {per_core:>9.1f} "
              f"{p['p50_ms']:>8.3f} {p['p99_ms']:>8.3f} {p['errors']:>6}")
    print(f"per-request overhead (POST /rng p50): {overhead:.3f} ms; "
          f"local cryptography RSA-2048 PS256 sign p50: {local:.3f} ms")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 1 if any(p["errors"] for p in points) else 0


if __name__ == "__main__":
    sys.exit(main())
