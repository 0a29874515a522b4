"""4. Cold start: wall time from process start to exit of one `openssl pkeyutl -sign` with a
pkcs11: key through the provider, and of one `pkcs11-tool --sign` through the PKCS#11 module,
against the same openssl command with a local key file. Target: <= 0.5 s added (median of runs)."""

from __future__ import annotations

import hashlib
import statistics
import subprocess
import time
from typing import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from harness import PKCS11_MODULE, Figure, Lab

MEASUREMENT = "4. cold start"
TARGET_S = 0.5


def wall(argv: list[str], env: dict[str, str], runs: int) -> float:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {(result.stdout + result.stderr).strip()[-1500:]}")
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def run(lab: Lab, runs: int, tick: Callable[[], None]) -> list[Figure]:
    digest, local = lab.tmp / "digest", lab.tmp / "local.pem"
    digest.write_bytes(hashlib.sha256(b"cold").digest())
    (lab.tmp / "data").write_bytes(b"cold")
    local.write_bytes(rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    sign = ["openssl", "pkeyutl", "-sign", "-pkeyopt", "digest:sha256", "-in", str(digest), "-out", str(lab.tmp / "sig")]
    baseline = wall([*sign, "-inkey", str(local)], {**lab.env, "OPENSSL_CONF": "/dev/null"}, runs)
    tick()
    provider = wall([*sign, "-inkey", f"pkcs11:object={lab.labels['RSA']}"], {**lab.env, "OPENSSL_CONF": lab.openssl_cnf()},
                    runs)
    tick()
    # pkcs11-tool --sign picks its key by --id (OpenSC 0.23 ignores --label there); a key made
    # without --id has the id its p11-<32 hex> name carries
    module = wall(["pkcs11-tool", "--module", str(PKCS11_MODULE), "--sign", "--id", lab.names["RSA"][4:], "-m",
                   "SHA256-RSA-PKCS", "-i", str(lab.tmp / "data"), "-o", str(lab.tmp / "sig")], lab.env, runs)
    tick()
    figures = []
    for name, seconds in (("openssl pkeyutl -sign, provider key", provider), ("pkcs11-tool --sign, module", module)):
        figures.append(Figure(MEASUREMENT, name, round(seconds, 3), "s", "openssl pkeyutl -sign, local key file",
                              round(baseline, 3), round(seconds / baseline, 2), f"<= +{TARGET_S} s",
                              seconds - baseline <= TARGET_S, f"added {seconds - baseline:.3f} s; median of {runs}"))
    return figures
