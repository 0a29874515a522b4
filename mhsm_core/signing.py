"""Which Azure signature algorithm a request needs, and the formats around it.

Managed HSM signs a bare digest: RS* add the PKCS#1 DigestInfo themselves, PS* use MGF1 with the same
hash and salt = digest length, ES* are tied to one curve and return raw r‖s. Callers bring PKCS#1
DigestInfo blobs, PSS parameters, digests of any size for any curve (TLS 1.2 allows that) and want
DER ECDSA signatures; this module bridges the two, and verifies what the HSM returns.
"""

from __future__ import annotations

import functools

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from .errors import InvalidArgument

HASHES: dict[str, hashes.HashAlgorithm] = {"SHA256": hashes.SHA256(), "SHA384": hashes.SHA384(),
                                           "SHA512": hashes.SHA512()}
# RFC 8017 §9.2 note 1: the DER DigestInfo prefix of each hash. Fixed bytes; no library parses these.
DIGEST_INFO_PREFIX = {
    "SHA256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "SHA384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "SHA512": bytes.fromhex("3051300d060960864801650304020305000440"),
}
CURVE_ALGORITHM = {"P-256": ("ES256", 32), "P-256K": ("ES256K", 32), "P-384": ("ES384", 48), "P-521": ("ES512", 64)}
CURVE_BYTES = {"P-256": 32, "P-256K": 32, "P-384": 48, "P-521": 66}
ALGORITHM_HASH = {"RS256": "SHA256", "RS384": "SHA384", "RS512": "SHA512", "PS256": "SHA256", "PS384": "SHA384",
                  "PS512": "SHA512", "ES256": "SHA256", "ES256K": "SHA256", "ES384": "SHA384", "ES512": "SHA512"}


# What checking each algorithm's signature takes, built once: a few µs a sign otherwise, and the first
# ec.ECDSA() imports cryptography's OpenSSL backend, which must happen at start-up, not in a chrooted worker.
_CHECKS = {algorithm: (padding.PSS(padding.MGF1(HASHES[name]), HASHES[name].digest_size) if algorithm[:2] == "PS"
                       else padding.PKCS1v15(), utils.Prehashed(HASHES[name]), ec.ECDSA(utils.Prehashed(HASHES[name])))
           for algorithm, name in ALGORITHM_HASH.items()}


def hash_name(name: str) -> str:
    """Canonical hash name: libssl says SHA2-256, the openssl CLI sha256, PKCS#11 CKM_SHA256."""
    canonical = name.upper().replace("SHA2-", "SHA").replace("SHA-", "SHA").replace("CKM_", "")
    if canonical not in HASHES:
        raise InvalidArgument(f"unsupported hash {name}: Managed HSM signs SHA-256, SHA-384 and SHA-512 digests")
    return canonical


def pkcs1(digest: bytes, hash_: str) -> tuple[str, bytes]:
    """RSASSA-PKCS1-v1_5 over a digest: the algorithm is RS<bits>."""
    return _rsa("RS", digest, hash_name(hash_))


def pkcs1_digest_info(digest_info: bytes, modulus_bytes: int) -> tuple[str, bytes]:
    """CKM_RSA_PKCS input is usually DigestInfo ‖ digest: for SHA-2 the HSM gets the bare digest and the
    RS algorithm. Any other block (a SHA-1 DigestInfo, TLS 1.0's MD5‖SHA-1) goes as it is with RSNULL,
    which the service lists for raw PKCS#1 v1.5; it fits if it leaves room for the 11 padding bytes."""
    for name, prefix in DIGEST_INFO_PREFIX.items():
        if digest_info.startswith(prefix) and len(digest_info) == len(prefix) + HASHES[name].digest_size:
            return f"RS{name[3:]}", digest_info[len(prefix):]
    if 1 <= len(digest_info) <= modulus_bytes - 11:
        return "RSNULL", digest_info
    raise InvalidArgument(f"CKM_RSA_PKCS input is 1 to {modulus_bytes - 11} bytes for this key, got {len(digest_info)}")


def pss(digest: bytes, hash_: str, mgf1_hash: str | None = None, salt_length: int | None = None) -> tuple[str, bytes]:
    """RSASSA-PSS: only MGF1 with the same hash and salt = digest length exist on the HSM."""
    name = hash_name(hash_)
    size = HASHES[name].digest_size
    if mgf1_hash is not None and hash_name(mgf1_hash) != name:
        raise InvalidArgument(f"PSS with MGF1-{mgf1_hash} over {name}: the HSM requires MGF1 with the same hash")
    if salt_length is not None and salt_length != size:
        raise InvalidArgument(f"PSS salt length {salt_length} over {name}: the HSM requires {size} (the digest length)")
    return _rsa("PS", digest, name)


def _rsa(family: str, digest: bytes, name: str) -> tuple[str, bytes]:
    if len(digest) != HASHES[name].digest_size:
        raise InvalidArgument(f"a {name} digest is {HASHES[name].digest_size} bytes, got {len(digest)}")
    return f"{family}{name[3:]}", digest


def ecdsa(digest: bytes, curve: str) -> tuple[str, bytes]:
    """ECDSA over a digest of any length: the HSM's ES* algorithm fixes the digest length to the curve's.

    ECDSA signs the leftmost n bits of the digest as an integer (SEC 1 §4.1.3), so a longer digest is
    cut to the curve's size and a shorter one padded with leading zero bytes: both keep that integer.
    """
    if curve not in CURVE_ALGORITHM:
        raise InvalidArgument(f"unsupported curve {curve}")
    if not 20 <= len(digest) <= 64:
        raise InvalidArgument(f"an ECDSA digest is 20 to 64 bytes, got {len(digest)}")
    algorithm, size = CURVE_ALGORITHM[curve]
    field_bits = {"P-256": 256, "P-256K": 256, "P-384": 384, "P-521": 521}[curve]
    value = int.from_bytes(digest, "big")
    if len(digest) * 8 > field_bits:
        value >>= len(digest) * 8 - field_bits
    return algorithm, value.to_bytes(size, "big")


def raw_to_der(signature: bytes) -> bytes:
    half = len(signature) // 2
    return utils.encode_dss_signature(int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big"))


def der_to_raw(signature: bytes, curve: str) -> bytes:
    r, s = utils.decode_dss_signature(signature)
    size = CURVE_BYTES[curve]
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


@functools.cache  # once per process: what it imported stays imported, in forked children too
def warm_up() -> None:
    """Sign and verify once with a throwaway local key of each type, every way `verify` checks an
    HSM signature, so that whatever these steps import lazily is imported now (cryptography loads
    its OpenSSL backend at the first `ec.ECDSA()`, for one). The core calls this when it reads the
    configuration, i.e. before a host forks, drops privileges or chroots: after that, the Python
    tree may no longer be readable, and an import on the signing path would fail the sign."""
    digest = bytes(range(32))
    sha256 = utils.Prehashed(hashes.SHA256())
    rsa_key = rsa.generate_private_key(65537, 1024)  # the smallest cryptography makes: it only has to exist
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pkcs1_signature = rsa_key.sign(digest, padding.PKCS1v15(), sha256)
    checks = [
        (rsa_key.public_key(), "RS256", digest, pkcs1_signature),
        (rsa_key.public_key(), "RSNULL", DIGEST_INFO_PREFIX["SHA256"] + digest, pkcs1_signature),
        (rsa_key.public_key(), "PS256", digest,
         rsa_key.sign(digest, padding.PSS(padding.MGF1(hashes.SHA256()), 32), sha256)),
        (ec_key.public_key(), "ES256", digest, der_to_raw(ec_key.sign(digest, ec.ECDSA(sha256)), "P-256")),
    ]
    for public_key, algorithm, data, signature in checks:
        if not verify(public_key, algorithm, data, signature):
            raise RuntimeError(f"the local {algorithm} warm-up signature does not verify")


def verify(public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey, algorithm: str, digest: bytes,
           signature: bytes) -> bool:
    """Check a raw HSM-format signature locally with the public key."""
    if algorithm == "RSNULL":
        assert isinstance(public_key, rsa.RSAPublicKey)
        try:
            return public_key.recover_data_from_signature(signature, padding.PKCS1v15(), None) == digest
        except (InvalidSignature, ValueError):
            return False
    pad, prehashed, ecdsa = _CHECKS[algorithm]
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, digest, pad, prehashed)
        else:
            public_key.verify(raw_to_der(signature), digest, ecdsa)
    except (InvalidSignature, ValueError):
        return False
    return True
