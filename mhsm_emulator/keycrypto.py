"""Real keys and the service's signature formats, all through `cryptography`.

The facts encoded here are the ones a client relies on: RS* take a bare digest and the service adds
the DigestInfo; PS* use MGF1 with the same hash and salt = digest length; ES* return raw r‖s.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

RSA_SIZES = (2048, 3072, 4096)
CURVES: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-256K": ec.SECP256K1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}
CURVE_BYTES = {"P-256": 32, "P-256K": 32, "P-384": 48, "P-521": 66}

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class SignatureAlgorithm:
    """One JWS signature algorithm as the service implements it."""

    name: str
    family: str  # "RS", "PS", "ES", or "RSNULL" (no hash: the caller's bytes are signed as they are)
    hash: hashes.HashAlgorithm | None
    curve: str | None = None  # ES* are tied to one curve

    def accepts(self, value: bytes, key: "PrivateKey") -> bool:
        """A digest of the hash's length; for RSNULL, 1 to k-11 bytes (what PKCS#1 v1.5 padding leaves)."""
        if self.hash is None:
            return 1 <= len(value) <= (key.key_size + 7) // 8 - 11
        return len(value) == self.hash.digest_size


SIGNATURE_ALGORITHMS: dict[str, SignatureAlgorithm] = {
    alg.name: alg
    for alg in (
        SignatureAlgorithm("RS256", "RS", hashes.SHA256()),
        SignatureAlgorithm("RS384", "RS", hashes.SHA384()),
        SignatureAlgorithm("RS512", "RS", hashes.SHA512()),
        SignatureAlgorithm("PS256", "PS", hashes.SHA256()),
        SignatureAlgorithm("PS384", "PS", hashes.SHA384()),
        SignatureAlgorithm("PS512", "PS", hashes.SHA512()),
        SignatureAlgorithm("ES256", "ES", hashes.SHA256(), "P-256"),
        SignatureAlgorithm("ES256K", "ES", hashes.SHA256(), "P-256K"),
        SignatureAlgorithm("ES384", "ES", hashes.SHA384(), "P-384"),
        SignatureAlgorithm("ES512", "ES", hashes.SHA512(), "P-521"),
        SignatureAlgorithm("RSNULL", "RSNULL", None),
    )
}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode base64url with or without padding; raise ValueError on anything else."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def generate(kty: str, size: int | None, crv: str | None) -> PrivateKey:
    if kty == "RSA-HSM":
        return rsa.generate_private_key(public_exponent=65537, key_size=size or 2048)
    return ec.generate_private_key(CURVES[crv or "P-256"])


def to_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def from_pem(pem: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey))
    return key


def public_jwk(key: PrivateKey, crv: str | None) -> dict[str, str]:
    """The public half in JWK form; `n`, `x` and `y` at their exact lengths (no leading zero byte)."""
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.public_key().public_numbers()
        n_len = (numbers.n.bit_length() + 7) // 8
        e_len = (numbers.e.bit_length() + 7) // 8
        return {"n": b64url(numbers.n.to_bytes(n_len, "big")), "e": b64url(numbers.e.to_bytes(e_len, "big"))}
    assert crv is not None
    point = key.public_key().public_numbers()
    size = CURVE_BYTES[crv]
    return {"crv": crv, "x": b64url(point.x.to_bytes(size, "big")), "y": b64url(point.y.to_bytes(size, "big"))}


def sign(key: PrivateKey, alg: SignatureAlgorithm, digest: bytes, crv: str | None) -> bytes:
    if alg.hash is None:
        assert isinstance(key, rsa.RSAPrivateKey)
        return _sign_unhashed(key, digest)
    prehashed = utils.Prehashed(alg.hash)
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(digest, _rsa_padding(alg), prehashed)
    der = key.sign(digest, ec.ECDSA(prehashed))
    r, s = utils.decode_dss_signature(der)
    size = CURVE_BYTES[crv or "P-256"]
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def verify(key: PrivateKey, alg: SignatureAlgorithm, digest: bytes, signature: bytes, crv: str | None) -> bool:
    public = key.public_key()
    try:
        if alg.hash is None:
            assert isinstance(public, rsa.RSAPublicKey)
            return public.recover_data_from_signature(signature, padding.PKCS1v15(), None) == digest
        prehashed = utils.Prehashed(alg.hash)
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, digest, _rsa_padding(alg), prehashed)
        else:
            size = CURVE_BYTES[crv or "P-256"]
            if len(signature) != 2 * size:
                return False
            der = utils.encode_dss_signature(int.from_bytes(signature[:size], "big"),
                                             int.from_bytes(signature[size:], "big"))
            public.verify(der, digest, ec.ECDSA(prehashed))
    except (InvalidSignature, ValueError):
        return False
    return True


def _sign_unhashed(key: rsa.RSAPrivateKey, data: bytes) -> bytes:
    """RSNULL: PKCS#1 v1.5 type-1 padding around the caller's bytes, then the RSA private operation
    (RFC 8017 §8.2.1 without the DigestInfo). `cryptography` always adds a DigestInfo when it signs,
    so the padding is built here; the modular exponentiation is not constant-time, which a test
    emulator can afford."""
    size = (key.key_size + 7) // 8
    encoded = b"\x00\x01" + b"\xff" * (size - 3 - len(data)) + b"\x00" + data
    numbers = key.private_numbers()
    return pow(int.from_bytes(encoded, "big"), numbers.d, numbers.public_numbers.n).to_bytes(size, "big")


def _rsa_padding(alg: SignatureAlgorithm) -> padding.AsymmetricPadding:
    if alg.family == "PS":
        assert alg.hash is not None
        return padding.PSS(mgf=padding.MGF1(alg.hash), salt_length=alg.hash.digest_size)
    return padding.PKCS1v15()
