"""3. nginx handshakes per second with new TLS sessions, 4 workers, TLS 1.3 and 1.2, RSA-2048 and
EC P-256: the HSM key through our provider (store:), through the libp11 engine and our PKCS#11
module, through pkcs11-provider loading our PKCS#11 module, against a local key file.
Target: our provider reaches 0.5x of the local key file (same nginx) at 0 ms injected latency.

10. From the same runs, the nginx workers' CPU per handshake with the HSM key against the local key
file: what moving the private-key operation to the HSM costs the web server itself (the emulator's
own CPU is the HSM's, in Azure on a real deployment). Targets for our provider: <= 1.0x RSA-2048,
<= 1.6x EC P-256."""

from __future__ import annotations

from typing import Callable

from harness import Figure, Lab, cpu_seconds

import nginx_paths
import tls_load

MEASUREMENT = "3. nginx handshakes/s"
PATHS = ("local 1.30", "provider", "pkcs11-provider", "local 1.22", "engine")
BASELINE = {"provider": "local 1.30", "pkcs11-provider": "local 1.30", "engine": "local 1.22"}
TARGET = 0.5
CPU_MEASUREMENT = "10. nginx worker CPU per handshake"
CPU_TARGETS = {"RSA": 1.0, "EC": 1.6}


def run(lab: Lab, seconds: float, tick: Callable[[], None]) -> list[Figure]:
    rates: dict[tuple[str, str, str], float] = {}
    cores: dict[tuple[str, str, str], str] = {}
    worker_ms: dict[tuple[str, str, str], float] = {}  # nginx workers' CPU ms per successful handshake
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
                    used = {name: cpu_seconds(pids) - before[name] for name, pids in processes.items()}
                    cores[(path, kind, version)] = ", ".join(
                        f"{name} {used[name] / result['seconds']:.2f} cores" for name in processes)
                    worker_ms[(path, kind, version)] = used["nginx workers"] / max(result["ok"], 1) * 1000
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
    for (path, kind, version), ms in worker_ms.items():
        base_path = BASELINE.get(path)
        base = worker_ms.get((base_path, kind, version)) if base_path else None
        gated = path == "provider" and base is not None
        figures.append(Figure(CPU_MEASUREMENT, f"{path}, {kind}, {version}", round(ms, 3), "ms",
                              f"{base_path}, {kind}, {version}" if base_path else "", round(base, 3) if base else None,
                              round(ms / base, 3) if base else None, f"<= {CPU_TARGETS[kind]}x" if gated else "",
                              (ms / base <= CPU_TARGETS[kind]) if gated and base else None,
                              f"{nginx_paths.WORKERS} workers, new sessions"))
    for path, reason in failures.items():
        if not any(key[0] == path for key in rates):
            figures.append(Figure(MEASUREMENT, f"{path}: not measured", float("nan"), "", note=reason))
    return figures


