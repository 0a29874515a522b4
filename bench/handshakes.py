"""3. nginx handshakes per second with new TLS sessions, 4 workers, TLS 1.3 and 1.2, RSA-2048 and
EC P-256: the HSM key through our provider (store:), through the libp11 engine and our PKCS#11
module, through pkcs11-provider loading our PKCS#11 module, against a local key file.
Target: our provider reaches 0.5x of the local key file (same nginx) at 0 ms injected latency."""

from __future__ import annotations

from typing import Callable

from harness import Figure, Lab, cpu_seconds

import nginx_paths
import tls_load

MEASUREMENT = "3. nginx handshakes/s"
PATHS = ("local 1.30", "provider", "pkcs11-provider", "local 1.22", "engine")
BASELINE = {"provider": "local 1.30", "pkcs11-provider": "local 1.30", "engine": "local 1.22"}
TARGET = 0.5


def run(lab: Lab, seconds: float, tick: Callable[[], None]) -> list[Figure]:
    rates: dict[tuple[str, str, str], float] = {}
    cores: dict[tuple[str, str, str], str] = {}
    failures: dict[str, str] = {}
    for path in PATHS:
        try:
            server = nginx_paths.Server(lab, path, lab.tmp / f"nginx-{path.replace(' ', '-')}")
        except RuntimeError as exc:  # reported as a figure that could not be taken, with the reason
            failures[path] = str(exc).splitlines()[-1][:300]
            tick()
            continue
        try:
            for kind in ("RSA", "EC"):
                for version in tls_load.VERSIONS:
                    processes = {"emulator": [lab.emulator.process.pid], "nginx workers": server.workers()}
                    before = {name: cpu_seconds(pids) for name, pids in processes.items()}
                    result = tls_load.load(server.ports[kind], version, seconds=seconds)
                    rates[(path, kind, version)] = result["rate"]
                    # where the two cores went: CPU-seconds per second of each side of the HSM call
                    cores[(path, kind, version)] = ", ".join(
                        f"{name} {(cpu_seconds(pids) - before[name]) / result['seconds']:.2f} cores"
                        for name, pids in processes.items())
                    if result["failed"]:
                        failures[path] = f"{result['failed']} failed handshakes"
        finally:
            server.stop()
        tick()
    figures = []
    for (path, kind, version), rate in rates.items():
        base_path = BASELINE.get(path)
        base = rates.get((base_path, kind, version)) if base_path else None
        gated = path == "provider"
        figures.append(Figure(MEASUREMENT, f"{path}, {kind}, {version}", round(rate, 1), "handshakes/s",
                              f"{base_path}, {kind}, {version}" if base_path else "", round(base, 1) if base else None,
                              round(rate / base, 3) if base else None, f">= {TARGET}x" if gated else "",
                              (rate / base >= TARGET) if gated and base else None,
                              f"{nginx_paths.VERSIONS[path]}; {cores[(path, kind, version)]}"
                              + (f"; {failures[path]}" if path in failures else "")))
    for path, reason in failures.items():
        if not any(key[0] == path for key in rates):
            figures.append(Figure(MEASUREMENT, f"{path}: not measured", float("nan"), "", note=reason))
    return figures


