"""The C harness (harness.c) drives the module where tools never go; each scenario is one test.

The harness is compiled here with -Wall -Wextra -Werror, loads the module with dlopen(RTLD_LOCAL)
as PKCS#11 hosts do, and exits with the number of failed checks. Signatures it prints are verified
with `cryptography` against the keys' public parts.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from tests.conftest import Emulator
from tests.core.conftest import write_conf
from tests.pkcs11.conftest import P11, Pair, p11_for

HARNESS_C = Path(__file__).with_name("harness.c")
DIGEST = hashlib.sha256(b"abc").digest()


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary = tmp_path_factory.mktemp("harness") / "harness"
    subprocess.run(["gcc", "-Wall", "-Wextra", "-Werror", "-O1", "-pthread", "-I/usr/include/p11-kit-1",
                    str(HARNESS_C), "-o", str(binary), "-ldl"], check=True, capture_output=True, text=True)
    return binary


def run(harness: Path, p11: P11, scenario: str, pairs: dict[str, Pair]) -> list[str]:
    result = subprocess.run([str(harness), p11.module, scenario, pairs["RSA"].label, pairs["EC"].label],
                            env=p11.env, capture_output=True, text=True, timeout=120)
    lines = result.stdout.splitlines()
    failed = [line for line in lines if line.startswith("FAIL")]
    assert result.returncode == 0 and not failed, "\n".join(failed) + result.stderr[-2000:]
    assert sum(line.startswith("ok ") for line in lines) >= 3, result.stdout
    return lines


def verify_printed(lines: list[str], pairs: dict[str, Pair]) -> int:
    """Check every `sig MECH HEX` line; returns how many there were."""
    count = 0
    for line in lines:
        if not line.startswith("sig "):
            continue
        _, mechanism, value = line.split()
        signature = bytes.fromhex(value)
        if mechanism == "ECDSA":
            r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            pairs["EC"].public_key().verify(utils.encode_dss_signature(r, s), DIGEST,
                                            ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        else:
            pairs["RSA"].public_key().verify(signature, DIGEST, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        count += 1
    return count


@pytest.mark.parametrize("scenario", ["uninitialized", "init", "bad_args", "threads"])
def test_scenario(harness: Path, p11: P11, pairs: dict[str, Pair], scenario: str) -> None:
    run(harness, p11, scenario, pairs)


def test_operation_states_and_signatures(harness: Path, p11: P11, pairs: dict[str, Pair]) -> None:
    lines = run(harness, p11, "sign_states", pairs)
    assert verify_printed(lines, pairs) == 2


def test_fork_child_initializes_and_signs(harness: Path, p11: P11, pairs: dict[str, Pair]) -> None:
    before = p11.signs()
    lines = run(harness, p11, "fork", pairs)
    assert "ok child: signs" in lines and "ok parent signs after fork" in lines
    assert verify_printed(lines, pairs) == 1
    assert p11.signs() - before == 3, "parent before, child, parent after"


def test_hsm_fault_during_sign(harness: Path, permissive: Emulator, pairs: dict[str, Pair], tmp_path: Path) -> None:
    """One 503 on sign with retries off: CKR_DEVICE_ERROR, the request id in the log, then it works again."""
    conf = write_conf(permissive, tmp_path / "no-retries.conf", options={"MaxRetries": 0},
                      log={"flags": {"SendToStdErr": True}})
    p11 = p11_for(permissive)
    p11.env["MHSM_PKCS11_CONF"] = str(conf)
    permissive.admin.inject("unavailable", "sign", count=1)
    result = subprocess.run([str(harness), p11.module, "hsm_fault", pairs["RSA"].label, pairs["EC"].label],
                            env=p11.env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok sign during an HSM fault" in result.stdout and "ok the next sign works" in result.stdout
    [line] = [line for line in result.stderr.splitlines() if "C_Sign: CKR_DEVICE_ERROR" in line]
    assert "HTTP 503" in line and "x-ms-request-id" in line
