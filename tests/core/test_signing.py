"""Pure functions of the sign path: algorithm choice, DigestInfo, PSS rules, ECDSA digest sizing, DER."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from mhsm_core import signing
from mhsm_core.errors import InvalidArgument


@pytest.mark.parametrize("name, expected", [("SHA2-256", "SHA256"), ("sha384", "SHA384"), ("SHA-512", "SHA512"),
                                            ("CKM_SHA256", "SHA256")])
def test_hash_names_are_canonical(name: str, expected: str) -> None:
    assert signing.hash_name(name) == expected


def test_sha1_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="SHA-256, SHA-384 and SHA-512"):
        signing.hash_name("SHA1")


@pytest.mark.parametrize("hasher, alg", [(hashlib.sha256, "RS256"), (hashlib.sha384, "RS384"),
                                         (hashlib.sha512, "RS512")])
def test_digest_info_unwrapped(hasher: object, alg: str) -> None:
    digest = hasher(b"m").digest()  # type: ignore[operator]
    name = "SHA" + alg[2:]
    assert signing.pkcs1_digest_info(signing.DIGEST_INFO_PREFIX[name] + digest, 256) == (alg, digest)


@pytest.mark.parametrize("blob", [b"\x00" * 51, signing.DIGEST_INFO_PREFIX["SHA256"] + b"\x00" * 31, b"\x01" * 245])
def test_other_blocks_go_unhashed(blob: bytes) -> None:
    """Anything but a SHA-2 DigestInfo is signed as it is (RSNULL), if PKCS#1 padding leaves room."""
    assert signing.pkcs1_digest_info(blob, 256) == ("RSNULL", blob)


@pytest.mark.parametrize("blob", [b"", b"\x01" * 246])
def test_blocks_that_do_not_fit(blob: bytes) -> None:
    with pytest.raises(InvalidArgument, match="1 to 245 bytes"):
        signing.pkcs1_digest_info(blob, 256)


def test_pss_rules() -> None:
    digest = hashlib.sha384(b"m").digest()
    assert signing.pss(digest, "SHA384", "SHA384", 48) == ("PS384", digest)
    assert signing.pss(digest, "SHA384") == ("PS384", digest)
    with pytest.raises(InvalidArgument, match="salt length 32"):
        signing.pss(digest, "SHA384", "SHA384", 32)
    with pytest.raises(InvalidArgument, match="MGF1"):
        signing.pss(digest, "SHA384", "SHA256", 48)
    with pytest.raises(InvalidArgument, match="48 bytes"):
        signing.pss(digest[:32], "SHA384")


@pytest.mark.parametrize("curve, ec_curve", [("P-256", ec.SECP256R1()), ("P-384", ec.SECP384R1()),
                                             ("P-521", ec.SECP521R1()), ("P-256K", ec.SECP256K1())])
@pytest.mark.parametrize("hash_alg", [hashes.SHA256(), hashes.SHA384(), hashes.SHA512()])
def test_ecdsa_digest_sizing_keeps_the_signed_integer(curve: str, ec_curve: ec.EllipticCurve,
                                                      hash_alg: hashes.HashAlgorithm) -> None:
    """Whatever the digest length, the sized digest signed as the curve's ES* verifies as the original."""
    key = ec.generate_private_key(ec_curve)
    h = hashes.Hash(hash_alg)
    h.update(b"tls 1.2 lets any hash meet any curve")
    digest = h.finalize()
    algorithm, sized = signing.ecdsa(digest, curve)
    assert algorithm == signing.CURVE_ALGORITHM[curve][0] and len(sized) == signing.CURVE_ALGORITHM[curve][1]
    es_hash = signing.HASHES[signing.ALGORITHM_HASH[algorithm]]
    der = key.sign(sized, ec.ECDSA(utils.Prehashed(es_hash)))  # what the HSM does
    key.public_key().verify(der, digest, ec.ECDSA(utils.Prehashed(hash_alg)))  # what the peer checks
    raw = signing.der_to_raw(der, curve)
    assert len(raw) == 2 * signing.CURVE_BYTES[curve]
    assert signing.raw_to_der(raw) == der
    assert signing.verify(key.public_key(), algorithm, sized, raw)
    assert not signing.verify(key.public_key(), algorithm, sized, bytes(len(raw)))


def test_ecdsa_refuses_odd_digest_lengths() -> None:
    with pytest.raises(InvalidArgument):
        signing.ecdsa(b"x" * 10, "P-256")
    with pytest.raises(InvalidArgument):
        signing.ecdsa(b"x" * 32, "P-192")
