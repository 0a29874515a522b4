"""An OpenSSL signature request, translated into the one Managed HSM algorithm that answers it.

The C side hands over what OpenSSL's own parameter parsing settled on (digest name, padding mode,
PSS salt length and MGF1 digest) and the bytes to sign: a digest, or for raw PKCS#1 v1.5 with no
digest set, the DigestInfo block. ECDSA comes back DER-encoded, as OpenSSL and TLS expect.
"""

from __future__ import annotations

from mhsm_core import signing
from mhsm_core.errors import InvalidArgument

from .stores import KeyObject

# OpenSSL's numbers (include/openssl/rsa.h): padding modes and the special PSS salt lengths.
PKCS1_PADDING, PSS_PADDING = 1, 6
SALTLEN_DIGEST, SALTLEN_AUTO, SALTLEN_MAX, SALTLEN_AUTO_DIGEST_MAX = -1, -2, -3, -4


def pss_salt(saltlen: int, digest_name: str) -> int:
    """Managed HSM's PS* algorithms use salt = digest length. "digest", "auto" (3.0's default when
    signing, whose verifiers detect the length) and 3.2's "auto-digestmax" all allow it; "max" or
    another number would give a signature its verifier rejects, so they are refused."""
    size = signing.HASHES[signing.hash_name(digest_name)].digest_size
    if saltlen in (SALTLEN_DIGEST, SALTLEN_AUTO, SALTLEN_AUTO_DIGEST_MAX, size):
        return size
    shown = "max" if saltlen == SALTLEN_MAX else str(saltlen)
    raise InvalidArgument(f"PSS salt length {shown}: Managed HSM signs with salt = digest length ({size} for "
                          f"{digest_name}); use rsa_pss_saltlen:digest")


def sign(obj: KeyObject, digest_name: str, pad_mode: int, saltlen: int, mgf1: str, data: bytes) -> bytes:
    """Sign `data` with the HSM key; the signature in OpenSSL's format."""
    if obj.side != "private":
        raise InvalidArgument(f"{obj.uri} is a public key object; sign with the private one")
    key = obj.key
    if key.kty == "EC":
        algorithm, value = signing.ecdsa(data, key.curve or "")
        return signing.raw_to_der(obj.hsm.keys.sign(key, algorithm, value))
    if pad_mode == PKCS1_PADDING:
        algorithm, value = (signing.pkcs1(data, digest_name) if digest_name
                            else signing.pkcs1_digest_info(data, (key.size + 7) // 8))
    elif pad_mode == PSS_PADDING:
        if not digest_name:
            raise InvalidArgument("PSS needs a digest: set one (e.g. -pkeyopt digest:sha256)")
        algorithm, value = signing.pss(data, digest_name, mgf1 or None, pss_salt(saltlen, digest_name))
    else:
        raise InvalidArgument(f"RSA padding mode {pad_mode}: Managed HSM signs with PKCS#1 v1.5 or PSS only")
    return obj.hsm.keys.sign(key, algorithm, value)
