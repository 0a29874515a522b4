#!/usr/bin/env python3
"""One C_Sign through `libmhsm-pkcs11.so` next to the same sign made directly through the core.

Why: the PKCS#11 front end must add nothing a user could notice on top of the HSM round trip. Both
sides sign the same SHA-256 digest with the same RSA-2048 key on one emulator, in one run, so the
ratio holds whatever the machine. The module runs in a C host of its own (pkcs11-tool would spend
its time in process start-up), here python-pkcs11 in a child process: the handle lookup, the
SignInit/Sign pair and the cffi crossing are all in the timed loop.

    bench/pkcs11_sign.py --count 300 [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from a checkout
from mhsm_core.hsm import Library  # noqa: E402
from mhsm_core.signing import pkcs1  # noqa: E402
from mhsm_emulator import launcher  # noqa: E402

DIGEST = hashlib.sha256(b"pkcs11 bench").digest()
DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420") + DIGEST
# The child: sign `count` times through the module, print per-call milliseconds as JSON.
CHILD = """
import json, sys, time, pkcs11
from pkcs11 import Mechanism, ObjectClass
module, pin, label, count, data = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), bytes.fromhex(sys.argv[5])
token = pkcs11.lib(module).get_token(token_label="localhsm")
with token.open(user_pin=pin) as session:
    key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
    key.sign(data, mechanism=Mechanism.RSA_PKCS)
    times = []
    for _ in range(count):
        start = time.perf_counter()
        key.sign(data, mechanism=Mechanism.RSA_PKCS)
        times.append((time.perf_counter() - start) * 1000)
print(json.dumps(times))
"""


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"p50_ms": round(statistics.median(ordered), 3), "p90_ms": round(ordered[int(len(ordered) * 0.9)], 3),
            "mean_ms": round(statistics.fmean(ordered), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    module = REPO / "build" / "libmhsm-pkcs11.so"
    with tempfile.TemporaryDirectory() as state:
        emulator = launcher.start(Path(state))
        try:
            who = emulator.info["principals"]["keygen"]
            env = {**os.environ, "MHSM_PKCS11_CONF": emulator.info["conf_file"], "MHSM_CLIENT_ID": who["client_id"],
                   "MHSM_CLIENT_SECRET": who["client_secret"]}
            os.environ.update(env)
            hsm = Library.load().hsm(0)
            key = hsm.keys.create("RSA", size=2048, private_attributes={"CKA_LABEL": "bench"},
                                  public_attributes={"CKA_LABEL": "bench"})
            algorithm, digest = pkcs1(DIGEST, "SHA256")
            hsm.keys.sign(key, algorithm, digest)
            core = []
            for _ in range(args.count):
                start = time.perf_counter()
                hsm.keys.sign(key, algorithm, digest)
                core.append((time.perf_counter() - start) * 1000)
            child = subprocess.run([sys.executable, "-c", CHILD, str(module), "", "bench", str(args.count),
                                    DIGEST_INFO.hex()], env=env, capture_output=True, text=True, check=True)
            through_module = json.loads(child.stdout)
        finally:
            emulator.stop()
    result = {"count": args.count, "core": summary(core), "module": summary(through_module)}
    result["ratio_p50"] = round(result["module"]["p50_ms"] / result["core"]["p50_ms"], 3)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
