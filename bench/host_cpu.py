"""9. What a signature costs the host: CPU per sign of a C host through (a) the PKCS#11 module
(p11load) and (b) the provider (evpload), sequential, against the floor client (bench/floor_client.py)
in the same run; and signs/s with 16 threads and 5 ms injected at the HSM, module against floor.
Targets: CPU per sign <= 2.0x the floor; 16-thread rate >= 0.85x the floor's, RSA-2048 PSS and EC P-256.
"""

from __future__ import annotations

import time
from typing import Callable

from harness import PKCS11_MODULE, Figure, Lab

from pkcs11_compat.loadgen import binary as loadgen
from pkcs11_compat.loadgen import run as run_loadgen

from bare_client import signer_rate, token
from floor_client import FloorSigner

MEASUREMENT = "9. host CPU per sign"
CPU_TARGET, RATE_TARGET = 2.0, 0.85
THREADS, LATENCY_MS = 16, 5.0
SHAPES = {"RSA": ("RSA-2048 PSS", "rsa-pss"), "EC": ("EC P-256", "ecdsa")}


def floor_cpu_us(lab: Lab, kind: str, count: int) -> float:
    """CPU microseconds per sign of the floor client in this (otherwise idle) process."""
    signer = FloorSigner(lab.info, lab.names, token(lab.info))
    try:
        signer.sign(kind)
        began = time.process_time()
        for _ in range(count):
            assert signer.sign(kind)
        return (time.process_time() - began) / count * 1e6
    finally:
        signer.close()


def floor_rate(lab: Lab, kind: str, threads: int, seconds: float) -> float:
    bearer = token(lab.info)
    return signer_rate([FloorSigner(lab.info, lab.names, bearer) for _ in range(threads)], kind, seconds)


def host(lab: Lab, kind: str, via: str, threads: int, amount: str) -> dict[str, float]:
    """One run of a C load generator: its signs, seconds and CPU seconds (timed part only)."""
    mechanism = SHAPES[kind][1]
    if via == "module":
        argv = [str(loadgen("p11load")), str(PKCS11_MODULE), lab.labels[kind], mechanism, str(threads), amount]
        env = lab.env
    else:
        argv = [str(loadgen("evpload")), f"pkcs11:object={lab.labels[kind]}", mechanism, str(threads), amount]
        env = {**lab.env, "OPENSSL_CONF": lab.openssl_cnf()}
    result = run_loadgen(argv, env)
    return {"signs": result["signs"], "seconds": result["seconds"], "cpu": result["cpu_seconds"]}


def run(lab: Lab, count: int, seconds: float, tick: Callable[[], None]) -> list[Figure]:
    figures = []
    for kind, (shape, _) in SHAPES.items():
        floor = floor_cpu_us(lab, kind, count)
        figures.append(Figure(MEASUREMENT, f"{shape} CPU per sign, floor client", round(floor, 1), "µs",
                              note=f"{count} signs, sequential"))
        for via, name in (("module", "(a) PKCS#11 module, C"), ("provider", "(b) provider, EVP_DigestSign, C")):
            result = host(lab, kind, via, 1, str(count))
            cpu = result["cpu"] / result["signs"] * 1e6
            figures.append(Figure(MEASUREMENT, f"{shape} CPU per sign, {name}", round(cpu, 1), "µs",
                                  "floor client", round(floor, 1), round(cpu / floor, 3), f"<= {CPU_TARGET}x",
                                  cpu / floor <= CPU_TARGET, f"{result['signs']} signs, sequential"))
        tick()
    lab.latency(LATENCY_MS)
    try:
        for kind, (shape, _) in SHAPES.items():
            base = floor_rate(lab, kind, THREADS, seconds)
            result = host(lab, kind, "module", THREADS, f"t{seconds}")
            rate = result["signs"] / result["seconds"]
            figures.append(Figure(MEASUREMENT, f"{shape} {THREADS} threads, floor client", round(base, 1), "signs/s",
                                  note=f"{LATENCY_MS:g} ms injected per sign"))
            figures.append(Figure(MEASUREMENT, f"{shape} {THREADS} threads, (a) PKCS#11 module, C", round(rate, 1),
                                  "signs/s", "floor client", round(base, 1), round(rate / base, 3),
                                  f">= {RATE_TARGET}x", rate / base >= RATE_TARGET,
                                  f"{LATENCY_MS:g} ms injected per sign; host used "
                                  f"{result['cpu'] / result['seconds']:.2f} cores"))
            tick()
    finally:
        lab.latency(0)
    return figures
