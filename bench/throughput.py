"""2. Throughput with many callers, 5 ms injected at the emulator's sign (a realistic HSM round
trip): signs/s at 1, 4, 16 and 64 threads for (a) the PKCS#11 module from C, with MaxConnections 1,
4, 20 (the default) and 64 and with the connection cache disabled, and for (d) the bare httpx client
(one keep-alive connection per thread). Target: (a) at 16 threads reaches 0.8x of (d)."""

from __future__ import annotations

from typing import Any, Callable

from harness import PKCS11_MODULE, Figure, Lab

from pkcs11_compat.loadgen import binary as loadgen
from pkcs11_compat.loadgen import run as run_loadgen

from bare_client import BareSigner, signer_rate, token

MEASUREMENT = "2. throughput"
THREADS = (1, 4, 16, 64)
SETTINGS: dict[str, dict[str, Any]] = {
    "MaxConnections 1": {"MaxConnections": 1}, "MaxConnections 4": {"MaxConnections": 4},
    "MaxConnections 20": {"MaxConnections": 20}, "MaxConnections 64": {"MaxConnections": 64},
    "cache disabled": {"Disable": True},
}
LATENCY_MS = 5.0
TARGET = 0.8


def bare_rate(lab: Lab, threads: int, seconds: float) -> float:
    bearer = token(lab.info)
    return signer_rate([BareSigner(lab.info, lab.names, bearer) for _ in range(threads)], "RSA", seconds)


def module_rate(lab: Lab, threads: int, seconds: float, cache: dict[str, Any]) -> float:
    conf = lab.conf(f"throughput-{threads}.conf", ConnectionCache=cache)
    result = run_loadgen([str(loadgen("p11load")), str(PKCS11_MODULE), lab.labels["RSA"], "rsa-pss", str(threads),
                          f"t{seconds}"], {**lab.env, "MHSM_PKCS11_CONF": conf})
    return result["signs"] / result["seconds"]


def run(lab: Lab, seconds: float, tick: Callable[[], None]) -> tuple[list[Figure], dict[str, dict[int, float]]]:
    lab.latency(LATENCY_MS)
    curves: dict[str, dict[int, float]] = {"(d) bare httpx": {}}
    try:
        for threads in THREADS:
            curves["(d) bare httpx"][threads] = bare_rate(lab, threads, seconds)
            tick()
            for setting, cache in SETTINGS.items():
                curves.setdefault(f"(a) module, {setting}", {})[threads] = module_rate(lab, threads, seconds, cache)
                tick()
    finally:
        lab.latency(0)
    figures = []
    for name, curve in curves.items():
        for threads, rate in curve.items():
            base = curves["(d) bare httpx"][threads]
            gated = name == "(a) module, MaxConnections 20" and threads == 16
            figures.append(Figure(MEASUREMENT, f"{name}, {threads} threads", round(rate, 1), "signs/s",
                                  f"(d) bare httpx, {threads} threads", round(base, 1), round(rate / base, 3),
                                  f">= {TARGET}x" if gated else "", rate / base >= TARGET if gated else None,
                                  f"{LATENCY_MS:g} ms injected per sign"))
    return figures, curves
