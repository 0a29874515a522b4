"""The mechanisms the module offers, and sign/verify operations over them.

Raw mechanisms hand the HSM what the caller brings (a DigestInfo, a digest); hash-and-sign ones
hash locally first. PSS parameters are checked against what Managed HSM can do (MGF1 with the same
hash, salt = digest length). Verification is local, with the key's public part.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mhsm_core import signing
from mhsm_core.errors import InvalidArgument
from mhsm_core.keys import HsmKey

from .ck import CKRError, ffi, lib


@dataclass(frozen=True)
class Mechanism:
    kty: str  # "RSA" or "EC"
    family: str  # "keygen", "pkcs1", "pss" or "ecdsa"
    hash: str | None = None  # hash-and-sign: hashed here before the HSM signs


SIGN_FLAGS = lib.CKF_SIGN | lib.CKF_VERIFY | lib.CKF_HW
EC_FLAGS = lib.CKF_EC_F_P | lib.CKF_EC_NAMEDCURVE | lib.CKF_EC_UNCOMPRESS
MECHANISMS: dict[int, Mechanism] = {
    lib.CKM_RSA_PKCS_KEY_PAIR_GEN: Mechanism("RSA", "keygen"),
    lib.CKM_EC_KEY_PAIR_GEN: Mechanism("EC", "keygen"),
    lib.CKM_RSA_PKCS: Mechanism("RSA", "pkcs1"),
    lib.CKM_RSA_PKCS_PSS: Mechanism("RSA", "pss"),
    lib.CKM_ECDSA: Mechanism("EC", "ecdsa"),
    **{getattr(lib, f"CKM_SHA{bits}_RSA_PKCS"): Mechanism("RSA", "pkcs1", f"SHA{bits}") for bits in (256, 384, 512)},
    **{getattr(lib, f"CKM_SHA{bits}_RSA_PKCS_PSS"): Mechanism("RSA", "pss", f"SHA{bits}") for bits in (256, 384, 512)},
    **{getattr(lib, f"CKM_ECDSA_SHA{bits}"): Mechanism("EC", "ecdsa", f"SHA{bits}") for bits in (256, 384, 512)},
}
HASH_MECHANISMS = {lib.CKM_SHA256: "SHA256", lib.CKM_SHA384: "SHA384", lib.CKM_SHA512: "SHA512"}
MGF1 = {lib.CKG_MGF1_SHA256: "SHA256", lib.CKG_MGF1_SHA384: "SHA384", lib.CKG_MGF1_SHA512: "SHA512"}
KEY_BITS = {"RSA": (2048, 4096), "EC": (256, 521)}
PSS_PARAMS_SIZE = ffi.sizeof("CK_RSA_PKCS_PSS_PARAMS")


def mechanisms_for(kty: str) -> list[int]:
    return [m for m, info in MECHANISMS.items() if info.kty == kty and info.family != "keygen"]


def lookup(mechanism_type: int) -> Mechanism:
    found = MECHANISMS.get(mechanism_type)
    if found is None:
        raise CKRError(lib.CKR_MECHANISM_INVALID, f"mechanism 0x{mechanism_type:x} is not supported")
    return found


def info(mechanism_type: int) -> tuple[int, int, int]:
    """(min key bits, max key bits, flags) for C_GetMechanismInfo."""
    mech = lookup(mechanism_type)
    flags = lib.CKF_GENERATE_KEY_PAIR | lib.CKF_HW if mech.family == "keygen" else SIGN_FLAGS
    if mech.kty == "EC":
        flags |= EC_FLAGS
    return *KEY_BITS[mech.kty], flags


def _pss_parameters(parameter: Any, length: int) -> tuple[str, str, int]:
    """(hash, MGF1 hash, salt length) from a CK_RSA_PKCS_PSS_PARAMS."""
    if parameter == ffi.NULL or length != PSS_PARAMS_SIZE:
        raise CKRError(lib.CKR_MECHANISM_PARAM_INVALID, "RSA-PSS needs a CK_RSA_PKCS_PSS_PARAMS")
    params = ffi.cast("CK_RSA_PKCS_PSS_PARAMS *", parameter)
    if params.hashAlg not in HASH_MECHANISMS or params.mgf not in MGF1:
        raise CKRError(lib.CKR_MECHANISM_PARAM_INVALID, "RSA-PSS on Managed HSM uses SHA-256/384/512 with MGF1")
    return HASH_MECHANISMS[params.hashAlg], MGF1[params.mgf], int(params.sLen)


@functools.lru_cache(maxsize=64)  # a host asks the same few at every C_SignInit; a fuzzer cannot grow it
def _pss_problem(mechanism_hash: str | None, hash_: str, mgf1: str, salt_length: int) -> str | None:
    """Why Managed HSM cannot sign with these PSS parameters, or None: settled once per combination,
    not again at each C_SignInit."""
    try:
        signing.pss(b"\0" * signing.HASHES[mechanism_hash or hash_].digest_size, mechanism_hash or hash_, mgf1,
                    salt_length)
    except InvalidArgument as exc:
        return str(exc)
    if mechanism_hash and hash_ != mechanism_hash:
        return f"PSS hashAlg must be {mechanism_hash} for this mechanism"
    return None


@dataclass
class Operation:
    """One active sign or verify operation on a session (PKCS#11 allows one of each)."""

    mechanism: Mechanism
    key: HsmKey
    pss: tuple[str, str, int] | None = None
    hasher: hashes.Hash | None = field(default=None, repr=False)
    updated: bool = False

    @classmethod
    def start(cls, mechanism_type: int, parameter: Any, parameter_length: int, key: HsmKey) -> "Operation":
        mech = lookup(mechanism_type)
        if mech.family == "keygen":
            raise CKRError(lib.CKR_MECHANISM_INVALID, "a key-generation mechanism cannot sign")
        if mech.kty != key.kty:
            raise CKRError(lib.CKR_KEY_TYPE_INCONSISTENT, f"{mech.family} needs an {mech.kty} key, not {key.kty}")
        pss = None
        if mech.family == "pss":
            pss = _pss_parameters(parameter, parameter_length)
            problem = _pss_problem(mech.hash, *pss)
            if problem:
                raise CKRError(lib.CKR_MECHANISM_PARAM_INVALID, problem)
        elif parameter != ffi.NULL and parameter_length:
            raise CKRError(lib.CKR_MECHANISM_PARAM_INVALID, "this mechanism takes no parameter")
        hasher = hashes.Hash(signing.HASHES[mech.hash]) if mech.hash else None
        return cls(mech, key, pss, hasher)

    @property
    def signature_length(self) -> int:
        if self.key.kty == "RSA":
            return (self.key.size + 7) // 8
        return 2 * signing.CURVE_BYTES[self.key.curve or ""]

    def update(self, part: bytes) -> None:
        """Multi-part input; only hash-and-sign mechanisms take it (a raw one signs a single block)."""
        if self.hasher is None:
            raise CKRError(lib.CKR_FUNCTION_NOT_SUPPORTED, "raw mechanisms are single-part; use C_Sign")
        self.hasher.update(part)
        self.updated = True

    def finish_input(self, data: bytes | None) -> bytes:
        """What the raw family signs: the caller's data, or the local hash of it."""
        if self.hasher is None:
            return data or b""
        if data is not None:
            self.hasher.update(data)
        return self.hasher.finalize()

    def hsm_request(self, data: bytes) -> tuple[str, bytes]:
        """(Azure algorithm, digest) for data as `finish_input` returned it."""
        family, hash_ = self.mechanism.family, self.mechanism.hash
        try:
            if family == "pkcs1":
                if hash_ is None:
                    return signing.pkcs1_digest_info(data, self.signature_length)
                return signing.pkcs1(data, hash_)
            if family == "pss":
                assert self.pss is not None
                return signing.pss(data, self.pss[0], self.pss[1], self.pss[2])
            return signing.ecdsa(data, self.key.curve or "")
        except InvalidArgument as exc:
            # Every input refused here has a bad length (a CKM_RSA_PKCS block over k-11 bytes or
            # empty, a digest of the wrong size): PKCS#11 says CKR_DATA_LEN_RANGE for all of them.
            raise CKRError(lib.CKR_DATA_LEN_RANGE, str(exc)) from None

    def verify(self, data: bytes, signature: bytes) -> None:
        """Raises CKR_SIGNATURE_LEN_RANGE or CKR_SIGNATURE_INVALID unless the signature is good."""
        if len(signature) != self.signature_length:
            raise CKRError(lib.CKR_SIGNATURE_LEN_RANGE, f"expected {self.signature_length} bytes")
        if self.mechanism.family == "pkcs1" and self.mechanism.hash is None:
            ok = _recovers(self.key, signature, data)
        else:
            algorithm, digest = self.hsm_request(data)
            ok = signing.verify(self.key.public_key, algorithm, digest, signature)
        if not ok:
            raise CKRError(lib.CKR_SIGNATURE_INVALID)


def _recovers(key: HsmKey, signature: bytes, data: bytes) -> bool:
    """CKM_RSA_PKCS verify takes any block, not only a DigestInfo: compare what the signature recovers."""
    assert isinstance(key.public_key, rsa.RSAPublicKey)
    try:
        return key.public_key.recover_data_from_signature(signature, padding.PKCS1v15(), None) == data
    except (InvalidSignature, ValueError):
        return False
