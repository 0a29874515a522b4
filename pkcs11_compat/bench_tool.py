"""`mhsm_p11_bench`: how fast does this machine sign with a Managed HSM key through the PKCS#11
module, and which `ConnectionCache.MaxConnections` suits it?

Signs with the key labelled --label and the chosen mechanism for --duration seconds (or --count
signatures) from --threads C threads, through `libmhsm-pkcs11.so` as a C host calls it; shows a
live progress bar with the rate; then prints p50/p95/p99 latency, signs per second and errors.
Unless --no-sweep, a short run per MaxConnections value (with a copy of the configuration) finds
the smallest value that reaches 95 % of the best rate, and recommends it.

Uses MHSM_PKCS11_CONF and MHSM_CLIENT_ID / MHSM_CLIENT_SECRET (or --pin), like every other tool.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mhsm_core import config as config_module
from mhsm_core.tools.common import fail

from . import loadgen

MODULE = loadgen.REPO / "build" / "libmhsm-pkcs11.so"
SWEEP = (1, 2, 4, 8, 16, 20, 32, 64)
ENOUGH = 0.95


def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] / 1000 if ordered else float("nan")


def sign_run(args: argparse.Namespace, env: dict[str, str], amount: str, label: str) -> dict[str, Any]:
    total = None if amount.startswith("t") else int(amount)
    argv = [str(loadgen.binary("p11load")), args.module, args.label, args.mechanism, str(args.threads), amount]
    if args.pin:
        argv.append(args.pin)
    with tqdm(total=total, desc=label, unit="sign", file=sys.stderr, dynamic_ncols=True, leave=False) as bar:
        def tick(done: int, errors: int) -> None:
            bar.update(done - bar.n)
            bar.set_postfix(errors=errors)

        return loadgen.run(argv, env, tick)


def report(result: dict[str, Any]) -> str:
    latencies = result["latencies_us"]
    return (f"{result['signs']} signatures in {result['seconds']:.1f} s: {result['signs'] / result['seconds']:.1f} signs/s, "
            f"{result['errors']} errors; latency p50 {percentile(latencies, 0.5):.2f} ms, "
            f"p95 {percentile(latencies, 0.95):.2f} ms, p99 {percentile(latencies, 0.99):.2f} ms")


def sweep(args: argparse.Namespace, env: dict[str, str], conf: Path) -> int:
    """Short runs with MaxConnections from SWEEP (up to the thread count); the recommended value."""
    document = json.loads(conf.read_text()) if conf.suffix != ".yaml" else None
    if document is None:
        raise ValueError(f"the sweep copies {conf} and needs its JSON form")
    rates: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="mhsm-bench-") as tmp:
        for value in [v for v in SWEEP if v <= max(args.threads, 1)] or [1]:
            document.setdefault("ConnectionCache", {}).update(MaxConnections=value, Disable=False)
            copy = Path(tmp) / f"max{value}.conf"
            copy.write_text(json.dumps(document))
            result = sign_run(args, {**env, "MHSM_PKCS11_CONF": str(copy)}, f"t{args.sweep_seconds}",
                              f"MaxConnections {value}")
            rates[value] = result["signs"] / result["seconds"]
            print(f"  MaxConnections {value:>3}: {rates[value]:8.1f} signs/s, {result['errors']} errors")
    best = max(rates.values())
    return min(v for v, rate in rates.items() if rate >= ENOUGH * best)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mhsm_p11_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True, help="CKA_LABEL of the private key to sign with")
    parser.add_argument("--mechanism", choices=("rsa-pss", "rsa-pkcs", "ecdsa"), default="rsa-pss")
    parser.add_argument("--threads", type=int, default=16, help="concurrent callers (1..256; default 16)")
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--duration", type=float, default=10.0, help="seconds to sign for (default 10)")
    amount.add_argument("--count", type=int, help="signatures to make instead of a duration")
    parser.add_argument("--pin", help="C_Login PIN, <client-id>:<client-secret> (default: the environment's)")
    parser.add_argument("--module", default=str(MODULE), help=f"the PKCS#11 module (default {MODULE})")
    parser.add_argument("--no-sweep", dest="sweep", action="store_false", help="skip the MaxConnections sweep")
    parser.add_argument("--sweep-seconds", type=float, default=2.0, help="length of each sweep run (default 2)")
    args = parser.parse_args(argv)
    if not 1 <= args.threads <= 256:
        parser.error("--threads must be 1..256")
    try:
        conf = config_module.config_path()
        config = config_module.load()
        env = dict(os.environ)
        result = sign_run(args, env, str(args.count) if args.count else f"t{args.duration}", "signing")
        print(f"{args.label} {args.mechanism}, {args.threads} threads, MaxConnections "
              f"{config.connection_cache.max_connections}: {report(result)}")
        if args.sweep:
            print(f"MaxConnections sweep at {args.threads} threads, {args.sweep_seconds:g} s each:")
            best = sweep(args, env, conf)
            print(f"Recommended: \"ConnectionCache\": {{\"MaxConnections\": {best}}} (the smallest value within "
                  f"{100 - ENOUGH * 100:.0f} % of the best rate at {args.threads} threads)")
    except Exception as exc:  # one sentence with the fix, as every tool
        fail(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
