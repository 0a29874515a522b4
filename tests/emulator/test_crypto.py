"""Conformance checks 8, 9, 10 and 17 (reference §9): signatures made by the emulator verify locally,
in the formats clients rely on (DigestInfo added by the service, PSS salt = digest length, raw r‖s)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import uuid
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.keyvault.keys.crypto import SignatureAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from tests.conftest import Emulator

HASHES = {"256": (hashlib.sha256, hashes.SHA256()), "384": (hashlib.sha384, hashes.SHA384()),
          "512": (hashlib.sha512, hashes.SHA512())}
EC_CASES = [("P-256", "ES256", "256"), ("P-256K", "ES256K", "256"), ("P-384", "ES384", "384"),
            ("P-521", "ES512", "512")]
CURVES = {"P-256": ec.SECP256R1(), "P-256K": ec.SECP256K1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _rsa_public(key: Any) -> rsa.RSAPublicKey:
    return rsa.RSAPublicNumbers(int.from_bytes(key.key.e, "big"), int.from_bytes(key.key.n, "big")).public_key()


def _ec_public(key: Any) -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicNumbers(int.from_bytes(key.key.x, "big"), int.from_bytes(key.key.y, "big"),
                                         CURVES[key.key.crv]).public_key()


@pytest.mark.parametrize("bits", ["256", "384", "512"])
@pytest.mark.parametrize("family", ["RS", "PS"])
def test_rsa_signatures_verify_locally(emulator: Emulator, api_version: str, key_name: str, family: str,
                                       bits: str) -> None:
    key = emulator.key_client(api_version=api_version).create_rsa_key(key_name, size=2048, hardware_protected=True)
    alg = SignatureAlgorithm(f"{family}{bits}")
    hasher, hash_alg = HASHES[bits]
    digest = hasher(b"the quick brown fox").digest()
    result = emulator.crypto_client(key, api_version=api_version).sign(alg, digest)
    assert result.key_id == key.id and len(result.signature) == 256
    # The SDK's local verifier (the key was handed over, so this needs no network)...
    local = emulator.crypto_client(key, api_version=api_version)
    assert local.verify(alg, digest, result.signature).is_valid
    # ...and cryptography, with the exact padding the service promises.
    pad = padding.PKCS1v15() if family == "RS" else padding.PSS(padding.MGF1(hash_alg), hash_alg.digest_size)
    _rsa_public(key).verify(result.signature, digest, pad, utils.Prehashed(hash_alg))


@pytest.mark.parametrize("curve, alg_name, bits", EC_CASES)
def test_ecdsa_signatures_are_raw_r_s(emulator: Emulator, api_version: str, key_name: str, curve: str,
                                      alg_name: str, bits: str) -> None:
    key = emulator.key_client(api_version=api_version).create_ec_key(key_name, curve=curve, hardware_protected=True)
    hasher, hash_alg = HASHES[bits]
    digest = hasher(b"jumps over the lazy dog").digest()
    alg = SignatureAlgorithm(alg_name)
    result = emulator.crypto_client(key, api_version=api_version).sign(alg, digest)
    size = {"P-256": 32, "P-256K": 32, "P-384": 48, "P-521": 66}[curve]
    assert len(result.signature) == 2 * size
    assert emulator.crypto_client(key, api_version=api_version).verify(alg, digest, result.signature).is_valid
    r, s = int.from_bytes(result.signature[:size], "big"), int.from_bytes(result.signature[size:], "big")
    _ec_public(key).verify(utils.encode_dss_signature(r, s), digest, ec.ECDSA(utils.Prehashed(hash_alg)))


@pytest.mark.parametrize("alg, length", [("RS256", 31), ("PS384", 32), ("RS512", 65)])
def test_wrong_digest_length_is_400(emulator: Emulator, api_version: str, key_name: str, alg: str,
                                    length: int) -> None:
    key = emulator.key_client(api_version=api_version).create_rsa_key(key_name, size=2048)
    with pytest.raises(HttpResponseError) as refused:
        emulator.crypto_client(key.id, api_version=api_version).sign(SignatureAlgorithm(alg), b"x" * length)
    assert refused.value.status_code == 400 and refused.value.error.code == "BadParameter"


@pytest.mark.parametrize("length, status", [(35, 200), (36, 200), (245, 200), (246, 400), (0, 400)])
def test_rsnull_signs_the_callers_bytes(emulator: Emulator, api_version: str, key_name: str, length: int,
                                        status: int) -> None:
    """RSNULL (listed by the service for raw PKCS#1 v1.5): any block that leaves room for the padding."""
    key = emulator.key_client(api_version=api_version).create_rsa_key(key_name, size=2048)
    block = bytes(range(256))[:length]
    with emulator.http() as http:
        response = http.post(f"/keys/{key_name}/sign", params={"api-version": api_version},
                             json={"alg": "RSNULL", "value": _b64(block)})
    assert response.status_code == status, response.text
    if status == 200:
        signature = base64.urlsafe_b64decode(response.json()["value"] + "==")
        assert _rsa_public(key).recover_data_from_signature(signature, padding.PKCS1v15(), None) == block
    else:
        assert "1 to (modulus length - 11) bytes" in response.json()["error"]["message"]


def test_remote_verify_returns_a_boolean(emulator: Emulator, api_version: str, key_name: str) -> None:
    key = emulator.key_client(api_version=api_version).create_ec_key(key_name, curve="P-256")
    digest = hashlib.sha256(b"remote").digest()
    signature = emulator.crypto_client(key, api_version=api_version).sign(SignatureAlgorithm.es256, digest).signature
    with emulator.http() as http:
        def verify(sig: bytes) -> Any:
            return http.post(f"/keys/{key_name}/{key.properties.version}/verify", params={"api-version": api_version},
                             json={"alg": "ES256", "digest": _b64(digest), "value": _b64(sig)})

        good, bad = verify(signature), verify(bytes(64))
    assert good.status_code == 200 and good.json() == {"alg": "ES256", "kid": key.id, "value": True}
    assert bad.status_code == 200 and bad.json() == {"alg": "ES256", "kid": key.id, "value": False}


def test_versionless_sign_without_read_access(emulator: Emulator, api_version: str, key_name: str) -> None:
    """A CryptographyClient for `.../keys/n` that may not read the key signs through `POST /keys/n//sign`."""
    key = emulator.key_client(api_version=api_version).create_ec_key(key_name, curve="P-256")
    access = emulator.access_client("admin")
    role = access.set_role_definition("/", role_name=f"sign-only-{uuid.uuid4()}", permissions=[
        _permission(["Microsoft.KeyVault/managedHsm/keys/sign/action"])])
    assignment = access.create_role_assignment(f"/keys/{key_name}", role.id,
                                               emulator.principal("nobody")["object_id"])
    try:
        urls: list[str] = []
        client = emulator.crypto_client(f"{emulator.url}/keys/{key_name}", name="nobody", api_version=api_version)
        digest = hashlib.sha256(b"versionless").digest()
        result = client.sign(SignatureAlgorithm.es256, digest,
                             raw_request_hook=lambda r: urls.append(r.http_request.url))
        assert any(f"/keys/{key_name}//sign" in u for u in urls), urls
        assert result.key_id == f"{emulator.url}/keys/{key_name}"  # the SDK echoes the id it was given
        r, s = int.from_bytes(result.signature[:32], "big"), int.from_bytes(result.signature[32:], "big")
        _ec_public(key).verify(utils.encode_dss_signature(r, s), digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    finally:
        access.delete_role_assignment(f"/keys/{key_name}", assignment.name)
        access.delete_role_definition("/", role.name)


def _permission(data_actions: list[str]) -> Any:
    from azure.keyvault.administration import KeyVaultPermission

    return KeyVaultPermission(data_actions=data_actions)


@pytest.mark.parametrize("state", ["disabled", "not-yet-valid", "expired"])
def test_unusable_key_refuses_sign_but_verifies(emulator: Emulator, api_version: str, key_name: str,
                                                state: str) -> None:
    client = emulator.key_client(api_version=api_version)
    key = client.create_rsa_key(key_name, size=2048)
    digest = hashlib.sha256(b"lifetime").digest()
    signature = emulator.crypto_client(key, api_version=api_version).sign(SignatureAlgorithm.rs256, digest).signature
    now = dt.datetime.now(dt.timezone.utc)
    changes = {"disabled": {"enabled": False}, "not-yet-valid": {"not_before": now + dt.timedelta(hours=1)},
               "expired": {"expires_on": now - dt.timedelta(seconds=1)}}[state]
    client.update_key_properties(key_name, **changes)
    with pytest.raises(HttpResponseError) as refused:
        emulator.crypto_client(key.id, api_version=api_version).sign(SignatureAlgorithm.rs256, digest)
    assert refused.value.status_code == 403
    assert refused.value.error.code == "Forbidden"
    assert refused.value.error.innererror["code"] in ("KeyDisabled", "KeyNotYetValid", "KeyExpired")
    with emulator.http() as http:
        verified = http.post(f"/keys/{key_name}/{key.properties.version}/verify", params={"api-version": api_version},
                             json={"alg": "RS256", "digest": _b64(digest), "value": _b64(signature)})
    assert verified.status_code == 200 and verified.json()["value"] is True


@pytest.mark.parametrize("body, status, fragment", [
    ({"alg": "RS257", "value": _b64(bytes(32))}, 400, "Invalid algorithm"),
    ({"alg": "ES256", "value": _b64(bytes(32))}, 400, "cannot be used"),
    ({"alg": "RS256", "value": "not base64!"}, 400, "base64url"),
    ({"alg": "RS256"}, 400, "'value'"),
    ({"alg": 256, "value": _b64(bytes(32))}, 400, "Invalid algorithm"),
])
def test_sign_bad_input(emulator: Emulator, api_version: str, key_name: str, body: dict[str, Any], status: int,
                        fragment: str) -> None:
    emulator.key_client(api_version=api_version).create_rsa_key(key_name, size=2048)
    with emulator.http() as http:
        response = http.post(f"/keys/{key_name}/sign", params={"api-version": api_version}, json=body)
        assert response.status_code == status and fragment in response.json()["error"]["message"]
        good = http.post(f"/keys/{key_name}/sign", params={"api-version": api_version},
                         json={"alg": "RS256", "value": _b64(bytes(32))})
    assert good.status_code == 200 and good.json()["kid"].startswith(f"{emulator.url}/keys/{key_name}/")


def test_ec_curve_and_algorithm_must_match(emulator: Emulator, key_name: str) -> None:
    emulator.key_client().create_ec_key(key_name, curve="P-256K")
    with emulator.http() as http:
        response = http.post(f"/keys/{key_name}/sign", params={"api-version": "7.5"},
                             json={"alg": "ES256", "value": _b64(bytes(32))})
    assert response.status_code == 400 and "P-256K" in response.json()["error"]["message"]


def test_key_ops_restrict_operations(emulator: Emulator, key_name: str) -> None:
    emulator.key_client().create_rsa_key(key_name, size=2048, key_operations=["verify"])
    with emulator.http() as http:
        response = http.post(f"/keys/{key_name}/sign", params={"api-version": "7.5"},
                             json={"alg": "RS256", "value": _b64(bytes(32))})
    assert response.status_code == 400 and "key_ops" in response.json()["error"]["message"]


def test_unknown_key_sign_is_404(emulator: Emulator, key_name: str) -> None:
    with emulator.http() as http:
        response = http.post(f"/keys/{key_name}/{'0' * 32}/sign", params={"api-version": "7.5"},
                             json={"alg": "RS256", "value": _b64(bytes(32))})
    assert response.status_code == 404 and response.json()["error"]["code"] == "KeyNotFound"


@pytest.mark.parametrize("count", [1, 64, 128])
def test_rng_in_range(emulator: Emulator, api_version: str, count: int) -> None:
    first = emulator.key_client(api_version=api_version).get_random_bytes(count)
    second = emulator.key_client(api_version=api_version).get_random_bytes(count)
    assert len(first) == len(second) == count
    assert count < 16 or first != second


def test_rng_out_of_range(emulator: Emulator, api_version: str) -> None:
    text = "GetRandomBytesRequest: count cannot be greater than 128 or less than 1 (Activity ID: "
    with pytest.raises(HttpResponseError) as refused:
        emulator.key_client(api_version=api_version).get_random_bytes(129)
    assert refused.value.status_code == 400 and refused.value.error.code == "BadParameter"
    assert refused.value.error.message.startswith(text)
    with emulator.http() as http:  # the SDK refuses counts below 1 itself, so send those raw
        for count in (0, -1, "8", None):
            response = http.post("/rng", params={"api-version": api_version}, json={"count": count})
            assert response.status_code == 400 and response.json()["error"]["message"].startswith(text)
