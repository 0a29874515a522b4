"""1. Sign latency, one caller: p50 and p99 of an RSA-2048 PSS and an EC P-256 sign through
(a) the PKCS#11 module from C, (b) the provider through EVP_DigestSign from C, (c) the core from
Python, against (d) the bare httpx client. Target: (a) and (b) within 1.25x of (d) (p50)."""

from __future__ import annotations

import os
import time
from typing import Callable
from unittest import mock

from harness import PKCS11_MODULE, Figure, Lab, percentile

from pkcs11_compat.loadgen import binary as loadgen
from pkcs11_compat.loadgen import run as run_loadgen

from bare_client import DIGEST, BareSigner, token

MEASUREMENT = "1. sign latency"
TARGET = 1.25


def core_latencies(lab: Lab, kind: str, count: int) -> list[float]:
    from mhsm_core import signing
    from mhsm_core.hsm import Library

    with mock.patch.dict(os.environ, lab.env):
        hsm = Library.load().hsm(0)
        [key] = hsm.keys.find(label=lab.labels[kind])
        algorithm, value = signing.pss(DIGEST, "SHA256") if kind == "RSA" else signing.ecdsa(DIGEST, "P-256")
        hsm.keys.sign(key, algorithm, value)  # warm: token, connection
        times = []
        for _ in range(count):
            began = time.perf_counter()
            hsm.keys.sign(key, algorithm, value)
            times.append((time.perf_counter() - began) * 1e6)
    return times


def bare_latencies(lab: Lab, kind: str, count: int) -> list[float]:
    signer = BareSigner(lab.info, lab.names, token(lab.info))
    try:
        signer.sign(kind)
        times = []
        for _ in range(count):
            began = time.perf_counter()
            assert signer.sign(kind)
            times.append((time.perf_counter() - began) * 1e6)
        return times
    finally:
        signer.close()


def run(lab: Lab, count: int, tick: Callable[[], None]) -> list[Figure]:
    figures = []
    for kind, mechanism in (("RSA", "rsa-pss"), ("EC", "ecdsa")):
        paths = {
            "(a) PKCS#11 module, C": lambda: run_loadgen(
                [str(loadgen("p11load")), str(PKCS11_MODULE), lab.labels[kind], mechanism, "1", str(count)],
                lab.env)["latencies_us"],
            "(b) provider, EVP_DigestSign, C": lambda: run_loadgen(
                [str(loadgen("evpload")), f"pkcs11:object={lab.labels[kind]}", mechanism, "1", str(count)],
                {**lab.env, "OPENSSL_CONF": lab.openssl_cnf()})["latencies_us"],
            "(c) core, Python": lambda: core_latencies(lab, kind, count),
            "(d) bare httpx": lambda: bare_latencies(lab, kind, count),
        }
        measured = {}
        for name, measure in paths.items():
            measured[name] = measure()
            tick()
        baseline = measured["(d) bare httpx"]
        base50, base99 = percentile(baseline, 0.5) / 1000, percentile(baseline, 0.99) / 1000
        shape = "RSA-2048 PSS" if kind == "RSA" else "EC P-256"
        for name, values in measured.items():
            p50, p99 = percentile(values, 0.5) / 1000, percentile(values, 0.99) / 1000
            gated = name[:3] in ("(a)", "(b)")
            figures.append(Figure(MEASUREMENT, f"{shape} p50 {name}", round(p50, 3), "ms", "(d) bare httpx p50",
                                  round(base50, 3), round(p50 / base50, 3), f"<= {TARGET}x" if gated else "",
                                  p50 / base50 <= TARGET if gated else None, f"{len(values)} signs"))
            figures.append(Figure(MEASUREMENT, f"{shape} p99 {name}", round(p99, 3), "ms", "(d) bare httpx p99",
                                  round(base99, 3), round(p99 / base99, 3)))
    return figures
