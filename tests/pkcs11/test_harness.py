"""The C harness (harness.c) drives the module where tools never go; each scenario is one test.

The harness is compiled here with -Wall -Wextra -Werror, loads the module with dlopen(RTLD_LOCAL)
as PKCS#11 hosts do, prints one line per check and exits with the number of failed checks (a crash
is a negative return code). Signatures it prints are verified here with `cryptography` against the
keys' public parts as pkcs11-tool read them, and the number it asked for against the emulator's
counter. The HSM-fault tests inject faults through the emulator's admin interface first.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from mhsm_emulator.admin_client import EmulatorAdmin
from pkcs11_compat.build import FORWARDED, HAND_WRITTEN, header_declarations, prototypes
from tests.conftest import Emulator, start_emulator
from tests.core.conftest import write_conf
from tests.pkcs11.conftest import P11, Pair, p11_for

HARNESS_C = Path(__file__).with_name("harness.c")
ALL_FUNCTIONS = list(prototypes(header_declarations()))  # the 68 of the system's pkcs11.h, as the build reads them
HASHES = {"SHA1": hashes.SHA1, "SHA256": hashes.SHA256, "SHA384": hashes.SHA384}


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary = tmp_path_factory.mktemp("harness") / "harness"
    built = subprocess.run(["gcc", "-Wall", "-Wextra", "-Werror", "-O1", "-pthread", "-I/usr/include/p11-kit-1",
                            str(HARNESS_C), "-o", str(binary), "-ldl"], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    return binary


def run(harness: Path, p11: P11, scenario: str, pairs: dict[str, Pair],
        extra_signs: int | None = 0) -> tuple[list[str], str]:
    """Run one scenario; every check must pass, the signatures must verify, and the emulator must have
    made as many signatures as the harness asked for, plus `extra_signs` (None: the caller counts)."""
    before = p11.signs()
    result = subprocess.run([str(harness), p11.module, scenario, pairs["RSA"].label, pairs["EC"].label],
                            env=p11.env, capture_output=True, text=True, timeout=120)
    lines = result.stdout.splitlines()
    failed = [line for line in lines if line.startswith("FAIL")]
    assert result.returncode == 0 and not failed, "\n".join(
        [f"{scenario} exited {result.returncode}", *failed, result.stdout[-3000:], result.stderr[-3000:]])
    assert sum(line.startswith("ok ") for line in lines) >= 3, result.stdout
    verify_printed(lines, pairs)
    if extra_signs is not None:
        assert p11.signs() - before == asked(lines) + extra_signs, "signatures the HSM made vs. the harness asked for"
    return lines, result.stderr


def asked(lines: list[str]) -> int:
    """How many signatures the harness asked the HSM for and got."""
    [count] = [int(line.split()[1]) for line in lines if line.startswith("signatures ")]
    return count


def verify_printed(lines: list[str], pairs: dict[str, Pair]) -> int:
    """Check every `sig MECH HASH HEX` and `pub ...` line; returns how many signatures there were."""
    count = 0
    for line in lines:
        kind, *fields = line.split()
        if kind == "pub":
            check_public(fields, pairs)
        if kind != "sig":
            continue
        mechanism, hash_name, value = fields
        signature, algorithm = bytes.fromhex(value), HASHES[hash_name]()
        digest = hashlib.new(hash_name.lower(), b"abc").digest()
        prehashed = utils.Prehashed(algorithm)
        if mechanism == "ECDSA":
            half = len(signature) // 2
            r, s = int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
            public: Any = pairs["EC"].public_key()
            public.verify(utils.encode_dss_signature(r, s), digest, ec.ECDSA(prehashed))
        elif mechanism == "PSS":
            pss = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=algorithm.digest_size)
            pairs["RSA"].public_key().verify(signature, digest, pss, prehashed)
        else:
            assert mechanism == "RSA_PKCS", line
            pairs["RSA"].public_key().verify(signature, digest, padding.PKCS1v15(), prehashed)
        count += 1
    return count


def check_public(fields: list[str], pairs: dict[str, Pair]) -> None:
    """The public key as the module's attributes give it equals the one pkcs11-tool read."""
    if fields[0] == "RSA":
        numbers = pairs["RSA"].public_key().public_numbers()
        assert isinstance(pairs["RSA"].public_key(), rsa.RSAPublicKey)
        assert (int(fields[1], 16), int(fields[2], 16)) == (numbers.n, numbers.e)
    else:
        point = pairs["EC"].public_key().public_bytes(serialization.Encoding.X962,
                                                      serialization.PublicFormat.UncompressedPoint)
        assert bytes.fromhex(fields[1]) == bytes([0x04, len(point)]) + point, "CKA_EC_POINT is a DER OCTET STRING"


def signatures(lines: list[str]) -> int:
    return sum(line.startswith("sig ") for line in lines)


def test_every_entry_refuses_before_initialize(harness: Path, p11: P11, pairs: dict[str, Pair]) -> None:
    lines, _ = run(harness, p11, "uninitialized", pairs)
    refused = {line.split(": ")[1] for line in lines if line.startswith("ok before C_Initialize: ")}
    assert refused == set(ALL_FUNCTIONS) - {"C_Initialize", "C_GetFunctionList"}


def test_initialize_finalize(harness: Path, p11: P11, pairs: dict[str, Pair]) -> None:
    lines, _ = run(harness, p11, "init", pairs)
    unsupported = {line.split(": ")[1] for line in lines if line.startswith("ok not supported: ")}
    assert unsupported == set(ALL_FUNCTIONS) - set(FORWARDED) - set(HAND_WRITTEN), "what the module does not implement"
    assert "ok round 3: the session died with C_Finalize" in lines


def test_bad_arguments_and_handles(harness: Path, p11: P11, pairs: dict[str, Pair]) -> None:
    lines, _ = run(harness, p11, "bad_args", pairs)
    assert "ok CKA_PRIVATE_EXPONENT of a private key" in lines and "ok the session still signs" in lines


def test_login_state(harness: Path, p11: P11, pairs: dict[str, Pair]) -> None:
    lines, _ = run(harness, p11, "login", pairs)
    assert signatures(lines) == 1


def test_operation_states_and_signatures(harness: Path, p11: P11, pairs: dict[str, Pair]) -> None:
    lines, _ = run(harness, p11, "sign_states", pairs)
    assert signatures(lines) == 6, "RSA_PKCS, ECDSA over SHA-256 and SHA-384, PSS, RSA_PKCS over SHA-1, multi-part"
    assert sum(line.startswith("pub ") for line in lines) == 2


def _session_keys_left(emulator: Emulator, lines: list[str]) -> tuple[set[str], set[str]]:
    """(labels of the harness's session keys still live, those soft-deleted), as keygen (Crypto User)
    and the admin (Crypto Officer, who may read deleted keys) see the HSM."""
    made = {line.split()[1] for line in lines if line.startswith("session-key ")}
    assert len(made) == 3, lines
    officer = emulator.key_client("admin")
    live = {(k.tags or {}).get("p11_pri_CKA_LABEL") for k in emulator.key_client("keygen").list_properties_of_keys()}
    deleted = {(k.properties.tags or {}).get("p11_pri_CKA_LABEL") for k in officer.list_deleted_keys()}
    return made & live, made & deleted


def test_conformance_and_session_objects(harness: Path, p11: P11, pairs: dict[str, Pair]) -> None:
    """C_SeedRandom, template contradictions and a 4-byte exponent as PKCS#11 2.40 says; session
    keys made in a read-only session, shared by the application's sessions, and gone once their
    session, C_CloseAllSessions or C_Finalize ends them. As a Crypto User (no purge right) they are
    deleted, and stay soft-deleted, as docs/pkcs11.md says."""
    lines, stderr = run(harness, p11, "conformance", pairs)
    live, deleted = _session_keys_left(p11.emulator, lines)
    assert not live, "a session key outlived its session"
    assert len(deleted) == 3


def test_session_objects_are_purged_when_the_identity_may(harness: Path, tmp_path: Path,
                                                           pairs: dict[str, Pair]) -> None:
    """With the right to purge (Crypto Officer at /keys beside Crypto User), nothing is left at all."""
    from azure.keyvault.administration import KeyVaultRoleScope

    emulator = start_emulator(tmp_path / "purge", "--scenario", "permissive")
    try:
        officer_role = emulator.info.get("roles", {}).get("Managed HSM Crypto Officer",
                                                          "515eb02d-2335-4d2d-92f2-b1cbdf9c3778")
        emulator.access_client("admin").create_role_assignment(
            KeyVaultRoleScope.KEYS, f"Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/{officer_role}",
            emulator.principal("keygen")["object_id"])
        lines, _ = run(harness, p11_for(emulator), "conformance", pairs, extra_signs=None)
        live, deleted = _session_keys_left(emulator, lines)
    finally:
        emulator.stop()
    assert not live and not deleted, (live, deleted)


def test_threads(harness: Path, p11: P11, pairs: dict[str, Pair]) -> None:
    lines, _ = run(harness, p11, "threads", pairs)
    for name in ("8 threads on 8 sessions", "every signature verified", "4 threads on one session",
                 "4 threads opening a session per sign"):
        assert f"ok {name}" in lines
    assert "signatures 128" in lines


def test_fork_while_threads_sign(harness: Path, p11: P11, pairs: dict[str, Pair]) -> None:
    """Six children forked while four threads of the parent sign: each initialises and signs (none
    inherits a lock held at fork time), and the threads never see an error."""
    lines, _ = run(harness, p11, "fork_threads", pairs)
    assert "ok every child initialised and signed while the parent's threads signed" in lines


def test_fork_child_initializes_and_signs(harness: Path, p11: P11, pairs: dict[str, Pair]) -> None:
    lines, _ = run(harness, p11, "fork", pairs)
    assert "ok child: signs" in lines and "ok parent: the sign goes on" in lines
    assert "signatures 3" in lines, "parent before, child, parent after"
    assert signatures(lines) == 2


# -- HSM faults ------------------------------------------------------------------------------------

def _wait_idle(admin: EmulatorAdmin, timeout: float = 10.0) -> None:
    """A stalled request outlives the sign that timed out on it; let it finish before counting."""
    deadline = time.monotonic() + timeout
    while admin.counters()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture
def admin(permissive: Emulator) -> Iterator[EmulatorAdmin]:
    """The shared emulator's admin interface; no fault is left pending for other tests, even on failure."""
    client = permissive.admin
    _wait_idle(client)
    client.reset(counters=False, latency=False)
    yield client
    _wait_idle(client)
    client.reset(counters=False, latency=False)
    client.close()


def fault_p11(emulator: Emulator, tmp_path: Path, **options: Any) -> P11:
    """The principal's P11 with its own configuration: these options, and the log on stderr."""
    conf = write_conf(emulator, tmp_path / "harness.conf", options=options, log={"flags": {"SendToStdErr": True}})
    p11 = p11_for(emulator)
    p11.env["MHSM_PKCS11_CONF"] = str(conf)
    return p11


# kind, options, faults per sign, what the log line says (None: no HTTP answer at all)
FAULTS = [
    pytest.param("unavailable", {"MaxRetries": 0}, 1, "HTTP 503", id="503"),
    pytest.param("error", {"MaxRetries": 0}, 1, "HTTP 500", id="500"),
    pytest.param("throttle", {"MaxRetries": 0}, 1, "HTTP 429", id="429"),
    pytest.param("reset", {"MaxRetries": 0}, 1, None, id="reset"),
    pytest.param("stall", {"MaxRetries": 0, "RequestTimeout": 1}, 1, None, id="stall"),
    pytest.param("unavailable", {"MaxRetries": 2}, 3, "HTTP 503", id="503-past-2-retries"),
]


@pytest.mark.parametrize("kind,options,per_sign,said", FAULTS)
def test_hsm_fault_during_sign(harness: Path, permissive: Emulator, admin: EmulatorAdmin, pairs: dict[str, Pair],
                               tmp_path: Path, kind: str, options: dict[str, Any], per_sign: int,
                               said: str | None) -> None:
    """Faults past the retry budget in a single-part and a multi-part sign: CKR_DEVICE_ERROR, the
    operation ended, the HSM's request id in the log; then both kinds of sign work again."""
    p11 = fault_p11(permissive, tmp_path, **options)
    # libcurl re-sends once, on a new connection, a request whose kept-alive connection died before
    # any answer (not one of our retries): the single-part sign, on the warm connection, meets two resets.
    admin.inject(kind, "sign", count=2 * per_sign + (kind == "reset"), stall_seconds=2.0)
    before = p11.signs()
    lines, stderr = run(harness, p11, "hsm_fault", pairs, extra_signs=None)
    _wait_idle(admin)  # a stalled request outlives the sign that timed out on it
    assert p11.signs() - before == asked(lines), "no failed sign was made after all"
    assert not admin.counters()["faults_pending"].get("sign"), "every injected fault was met"
    assert signatures(lines) == 2
    for function in ("C_Sign", "C_SignFinal"):
        [logged] = [line for line in stderr.splitlines() if f"{function}: CKR_DEVICE_ERROR" in line]
        if said:
            assert said in logged and "x-ms-request-id" in logged, logged
    if per_sign > 1:
        assert "retry 2" in stderr and "retry 3" not in stderr


def test_hsm_faults_within_the_retry_budget(harness: Path, permissive: Emulator, admin: EmulatorAdmin,
                                            pairs: dict[str, Pair], tmp_path: Path) -> None:
    """A 503 and a 429 before the first sign, with 2 retries allowed: the caller sees only CKR_OK.
    (Faults queue up in the emulator: the first sign meets both, the multi-part one none.)"""
    p11 = fault_p11(permissive, tmp_path, MaxRetries=2)
    admin.inject("unavailable", "sign", count=1)
    admin.inject("throttle", "sign", count=1, retry_after=0)
    lines, stderr = run(harness, p11, "hsm_retried", pairs)
    assert not admin.counters()["faults_pending"].get("sign")
    assert signatures(lines) == 4
    assert "CKR_DEVICE_ERROR" not in stderr and "retry 2" in stderr and "retry 3" not in stderr


def test_hsm_fault_during_find(harness: Path, permissive: Emulator, admin: EmulatorAdmin, pairs: dict[str, Pair],
                               tmp_path: Path) -> None:
    """A 503 on the key listing: C_FindObjectsInit gives CKR_DEVICE_ERROR and leaves no search active."""
    p11 = fault_p11(permissive, tmp_path, MaxRetries=0)
    admin.inject("unavailable", "list", count=1)
    lines, stderr = run(harness, p11, "find_fault", pairs)
    assert not admin.counters()["faults_pending"].get("list")
    [logged] = [line for line in stderr.splitlines() if "C_FindObjectsInit: CKR_DEVICE_ERROR" in line]
    assert "HTTP 503" in logged and "x-ms-request-id" in logged
    assert signatures(lines) == 1


def test_fresh_initialize_during_a_token_outage(harness: Path, permissive: Emulator, admin: EmulatorAdmin,
                                                pairs: dict[str, Pair], tmp_path: Path) -> None:
    """A process that starts (C_Initialize, find, sign) while the login service answers 503 four
    times, as nginx's master does on `nginx -s reload`: the token fetch is retried within the
    budget and every sign succeeds."""
    p11 = fault_p11(permissive, tmp_path)
    before = admin.counters()["faults_injected"].get("token_outage", 0)
    admin.inject("token_outage", count=4)
    _, stderr = run(harness, p11, "hsm_retried", pairs)
    assert admin.counters()["faults_injected"].get("token_outage", 0) - before == 4, "the outage was met"
    assert "retry" in stderr and "503" in stderr, stderr[-2000:]
