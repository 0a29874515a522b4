#!/usr/bin/env python3
"""`make bench`: every measurement of docs/performance.md in one run, with a progress bar, written
to bench/results/latest.json (and the throughput plot to docs/throughput.png).

    bench/run.py [--quick] [--out FILE] [--plot FILE]

--quick runs each measurement once on a tiny count (what `make test` does, to prove they work);
its figures mean nothing and are not written to bench/results/ unless --out says so. The plot of
measurement 11 is written next to the throughput plot, as blocking.png.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import ssl
import subprocess
import sys
from pathlib import Path

from tqdm import tqdm

from harness import REPO, Figure, Lab, write_results

import blocking
import cold_start
import handshakes
import haproxy_async
import host_cpu
import key_lookup
import memory
import nginx_paths
import resilience
import sign_latency
import throughput

# (sign count, throughput s per point, handshake s per case, cold-start runs, memory handshakes, resilience s,
#  HAProxy s per case)
FULL = dict(count=300, seconds=2.0, handshake_seconds=3.0, runs=5, memory=1000, resilience=4.0, haproxy=4.0)
QUICK = dict(count=5, seconds=0.3, handshake_seconds=0.3, runs=1, memory=20, resilience=0.5, haproxy=0.5)
# (key lookup runs per point, keys on the HSM per point)
LOOKUP = {"full": (3, key_lookup.COUNTS), "quick": (1, (10, 30, 60))}
TICKS = (8 + len(throughput.THREADS) * (1 + len(throughput.SETTINGS)) + len(handshakes.PATHS) + 3 + 2 + 3 + 3
         + len(haproxy_async.CASES) + 1 + 2 * len(host_cpu.SHAPES) + 1
         + len(blocking.KINDS) * len(blocking.LATENCIES_MS))


def versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        result = subprocess.run(argv, capture_output=True, text=True)
        return (result.stdout + result.stderr).strip().splitlines()[0] if result.returncode == 0 else "missing"

    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "commit": commit,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                       f"{platform.freedesktop_os_release().get('PRETTY_NAME', platform.system())}",
            "python": platform.python_version(), "openssl_cli": first_line(["openssl", "version"]),
            "python_ssl": ssl.OPENSSL_VERSION, "nginx_store": first_line([*nginx_paths.SID_NGINX, "-v"]),
            "nginx_debian": first_line([*nginx_paths.DEBIAN_NGINX, "-v"])}


def plot(curves: dict[str, dict[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for name, curve in curves.items():
        threads = sorted(curve)
        axes.plot(threads, [curve[t] for t in threads], marker="o", linewidth=2.5 if "bare" in name else 1.5,
                  linestyle="--" if "bare" in name else "-", label=name)
    axes.set_xscale("log", base=2)
    axes.set_xticks(throughput.THREADS, [str(t) for t in throughput.THREADS])
    axes.set_xlabel("calling threads")
    axes.set_ylabel("RSA-2048 PSS signs/s")
    axes.set_title(f"Throughput with {throughput.LATENCY_MS:g} ms injected per sign (one run)")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def plot_blocking(curves: dict[str, dict[int, tuple[float, float]]], path: Path) -> None:
    """Measurement 11: handshakes/s and the plain request's p99 against the HSM's latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rate_axes, p99_axes) = plt.subplots(1, 2, figsize=(10, 4.5))
    for kind, curve in curves.items():
        ms = sorted(curve)
        rate_axes.plot(ms, [curve[m][0] for m in ms], marker="o", label=kind)
        p99_axes.plot(ms, [curve[m][1] for m in ms], marker="o", label=kind)
    rate_axes.set_ylabel("handshakes/s (4 workers)")
    p99_axes.set_ylabel("p99 of a plain keep-alive request, ms")
    for axes in (rate_axes, p99_axes):
        axes.set_xlabel("latency injected at the HSM, ms")
        axes.set_xticks(blocking.LATENCIES_MS)
        axes.grid(True, alpha=0.3)
        axes.legend()
    figure.suptitle("nginx with HSM keys: workers block while the HSM answers (one run)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def table(figures: list[Figure]) -> str:
    rows = ["| Measurement | Figure | Value | Baseline | Ratio | Target | Met |", "|---|---|---|---|---|---|---|"]
    for f in figures:
        value = "n/a" if isinstance(f.value, float) and math.isnan(f.value) else f"{f.value:g} {f.unit}"
        base = f"{f.baseline:g} ({f.baseline_name})" if f.baseline is not None else ""
        met = {True: "yes", False: "**no**", None: ""}[f.met]
        rows.append(f"| {f.measurement} | {f.name} | {value} | {base} | {f.ratio if f.ratio is not None else ''} | "
                    f"{f.target} | {met} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    scale = QUICK if args.quick else FULL
    out = args.out or (None if args.quick else REPO / "bench" / "results" / "latest.json")
    plot_path = args.plot or (None if args.quick else REPO / "docs" / "throughput.png")
    lab = Lab()
    figures: list[Figure] = []
    try:
        with tqdm(total=TICKS, desc="bench", unit="step", file=sys.stderr, dynamic_ncols=True) as bar:
            def tick() -> None:
                bar.update(1)

            bar.set_postfix_str("sign latency")
            figures += sign_latency.run(lab, scale["count"], tick)
            bar.set_postfix_str("throughput")
            found, curves = throughput.run(lab, scale["seconds"], tick)
            figures += found
            bar.set_postfix_str("nginx handshakes")
            figures += handshakes.run(lab, scale["handshake_seconds"], tick)
            bar.set_postfix_str("cold start")
            figures += cold_start.run(lab, scale["runs"], tick)
            bar.set_postfix_str("memory")
            figures += memory.run(lab, scale["memory"], tick)
            bar.set_postfix_str("resilience")
            figures += resilience.run(lab, scale["resilience"], tick)
            bar.set_postfix_str("key lookup")
            lookup_runs, key_counts = LOOKUP["quick" if args.quick else "full"]
            figures += key_lookup.run(lab, lookup_runs, tick, key_counts)
            bar.set_postfix_str("HAProxy async")
            figures += haproxy_async.run(lab, scale["haproxy"], tick)
            bar.set_postfix_str("host CPU per sign")
            figures += host_cpu.run(lab, scale["count"] * 3, scale["seconds"], tick)
            bar.set_postfix_str("blocking workers")
            found, blocking_curves = blocking.run(lab, scale["handshake_seconds"], tick)
            figures += found
    finally:
        lab.close()
    if out:
        write_results(figures, out, versions())
    if plot_path:
        plot(curves, plot_path)
        plot_blocking(blocking_curves, plot_path.with_name("blocking.png"))
    print(table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
