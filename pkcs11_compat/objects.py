"""Each HSM key as two PKCS#11 objects (private key, public key), and the attribute encodings.

Attribute values are Python values here (bool, int, str, bytes, a list of mechanisms); `encode` and
`decode` turn them into the bytes a CK_ATTRIBUTE carries. Stored attributes come from the key's
tags through the core's mapper; the rest are read off the key (docs/key-model.md has the table).
"""

from __future__ import annotations

import datetime
import sys
import threading
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mhsm_core.keys import HsmKey

from .ck import CKRError, ffi, lib
from .mechanisms import mechanisms_for

ULONG_SIZE = ffi.sizeof("CK_ULONG")
PRIVATE, PUBLIC = lib.CKO_PRIVATE_KEY, lib.CKO_PUBLIC_KEY

BOOLEAN = {getattr(lib, n) for n in (
    "CKA_TOKEN", "CKA_PRIVATE", "CKA_MODIFIABLE", "CKA_COPYABLE", "CKA_DESTROYABLE", "CKA_DERIVE", "CKA_LOCAL",
    "CKA_SENSITIVE", "CKA_DECRYPT", "CKA_SIGN", "CKA_SIGN_RECOVER", "CKA_UNWRAP", "CKA_EXTRACTABLE",
    "CKA_ALWAYS_SENSITIVE", "CKA_NEVER_EXTRACTABLE", "CKA_WRAP_WITH_TRUSTED", "CKA_ALWAYS_AUTHENTICATE",
    "CKA_ENCRYPT", "CKA_VERIFY", "CKA_VERIFY_RECOVER", "CKA_WRAP", "CKA_TRUSTED")}
NUMBER = {lib.CKA_CLASS, lib.CKA_KEY_TYPE, lib.CKA_MODULUS_BITS, lib.CKA_KEY_GEN_MECHANISM}
DATE = {lib.CKA_START_DATE, lib.CKA_END_DATE}
TEXT = {lib.CKA_LABEL}
MECHANISM_LIST = {lib.CKA_ALLOWED_MECHANISMS}
# The private parts: asking for them gets CKR_ATTRIBUTE_SENSITIVE, because they never leave the HSM.
SENSITIVE = {lib.CKA_PRIVATE_EXPONENT, lib.CKA_PRIME_1, lib.CKA_PRIME_2, lib.CKA_EXPONENT_1, lib.CKA_EXPONENT_2,
             lib.CKA_COEFFICIENT, lib.CKA_VALUE}

# DER of each curve's named-curve OID (RFC 5480 §2.1.1.1; SEC 2 for secp256k1): fixed bytes, and
# `cryptography` has no public DER encoder for an OID.
EC_PARAMS = {
    "P-256": bytes.fromhex("06082a8648ce3d030107"),
    "P-384": bytes.fromhex("06052b81040022"),
    "P-521": bytes.fromhex("06052b81040023"),
    "P-256K": bytes.fromhex("06052b8104000a"),
}
CURVE_OF_PARAMS = {v: k for k, v in EC_PARAMS.items()}
# The tag that makes an HSM key a session object (CKA_TOKEN false) of one module instance: its value
# names the instance, whose sessions alone see the key; the module deletes the key when the session
# that made it ends. Not a `p11_pri_`/`p11_pub_` tag: it describes the object's life, not an attribute.
SESSION_TAG = "p11_session"
# Attribute name (as the core's tag mapper spells it) of each attribute id that can be stored.
TAG_NAMES = {getattr(lib, n): n for n in ("CKA_LABEL", "CKA_ID", "CKA_SUBJECT", "CKA_MODIFIABLE",
                                          "CKA_ALWAYS_AUTHENTICATE", "CKA_DERIVE", "CKA_PRIVATE", "CKA_TRUSTED")}


def encode(attribute: int, value: Any) -> bytes:
    if attribute in BOOLEAN:
        return b"\x01" if value else b"\x00"
    if attribute in NUMBER:
        return int(value).to_bytes(ULONG_SIZE, sys.byteorder)
    if attribute in MECHANISM_LIST:
        return b"".join(m.to_bytes(ULONG_SIZE, sys.byteorder) for m in value)
    if attribute in TEXT or attribute in DATE:
        return value.encode("utf-8")
    return bytes(value)


def decode(attribute: int, raw: bytes) -> Any:
    """A template value as a Python value; a malformed one is CKR_ATTRIBUTE_VALUE_INVALID."""
    if attribute in BOOLEAN:
        if len(raw) != 1:
            raise CKRError(lib.CKR_ATTRIBUTE_VALUE_INVALID, f"a CK_BBOOL is 1 byte, got {len(raw)}")
        return raw != b"\x00"
    if attribute in NUMBER:
        if len(raw) != ULONG_SIZE:
            raise CKRError(lib.CKR_ATTRIBUTE_VALUE_INVALID, f"a CK_ULONG is {ULONG_SIZE} bytes, got {len(raw)}")
        return int.from_bytes(raw, sys.byteorder)
    if attribute in MECHANISM_LIST:
        if len(raw) % ULONG_SIZE:
            raise CKRError(lib.CKR_ATTRIBUTE_VALUE_INVALID, "a mechanism list is a CK_ULONG array")
        return [int.from_bytes(raw[i:i + ULONG_SIZE], sys.byteorder) for i in range(0, len(raw), ULONG_SIZE)]
    if attribute in TEXT or attribute in DATE:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CKRError(lib.CKR_ATTRIBUTE_VALUE_INVALID, "a label must be UTF-8") from None
        if attribute in DATE and text and not (len(text) == 8 and text.isdigit()):
            raise CKRError(lib.CKR_ATTRIBUTE_VALUE_INVALID, f"a CK_DATE is YYYYMMDD, got {text!r}")
        return text
    return bytes(raw)


def ck_date(epoch: int | None) -> str:
    if epoch is None:
        return ""
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y%m%d")


def epoch_of(date: str) -> int | None:
    if not date:
        return None
    day = datetime.datetime.strptime(date, "%Y%m%d").replace(tzinfo=datetime.timezone.utc)
    return int(day.timestamp())


def _der_octet_string(data: bytes) -> bytes:
    """DER OCTET STRING around an EC point (CKA_EC_POINT's format); up to 65535 bytes."""
    n = len(data)
    length = bytes([n]) if n < 0x80 else bytes([0x81, n]) if n < 0x100 else bytes([0x82, n >> 8, n & 0xFF])
    return b"\x04" + length + data


def attributes(key: HsmKey, cls: int) -> dict[int, Any]:
    """Every attribute of the private or public object of `key` (sensitive ones excluded)."""
    private = cls == PRIVATE
    stored = key.private_attributes if private else key.public_attributes
    ops = set(key.key_ops)
    spki = key.public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    rsa_key = isinstance(key.public_key, rsa.RSAPublicKey)
    values: dict[int, Any] = {
        lib.CKA_CLASS: cls, lib.CKA_TOKEN: SESSION_TAG not in key.tags, lib.CKA_PRIVATE: True if private else stored.get("CKA_PRIVATE", False),
        lib.CKA_MODIFIABLE: stored.get("CKA_MODIFIABLE", True), lib.CKA_COPYABLE: False,
        lib.CKA_DESTROYABLE: False, lib.CKA_LABEL: stored.get("CKA_LABEL", ""), lib.CKA_ID: stored.get("CKA_ID", b""),
        lib.CKA_SUBJECT: stored.get("CKA_SUBJECT", b""), lib.CKA_KEY_TYPE: lib.CKK_RSA if rsa_key else lib.CKK_EC,
        lib.CKA_START_DATE: ck_date(key.not_before), lib.CKA_END_DATE: ck_date(key.expires),
        lib.CKA_DERIVE: key.private_attributes.get("CKA_DERIVE", False), lib.CKA_LOCAL: True,
        lib.CKA_KEY_GEN_MECHANISM: lib.CKM_RSA_PKCS_KEY_PAIR_GEN if rsa_key else lib.CKM_EC_KEY_PAIR_GEN,
        lib.CKA_ALLOWED_MECHANISMS: mechanisms_for(key.kty), lib.CKA_PUBLIC_KEY_INFO: spki,
    }
    if rsa_key:
        numbers = key.public_key.public_numbers()
        values[lib.CKA_MODULUS] = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
        values[lib.CKA_PUBLIC_EXPONENT] = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
        values[lib.CKA_MODULUS_BITS] = key.size
    else:
        values[lib.CKA_EC_PARAMS] = EC_PARAMS[key.curve or ""]
        point = key.public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        values[lib.CKA_EC_POINT] = _der_octet_string(point)
    if private:
        values.update({
            lib.CKA_SENSITIVE: True, lib.CKA_EXTRACTABLE: False, lib.CKA_ALWAYS_SENSITIVE: True,
            lib.CKA_NEVER_EXTRACTABLE: True, lib.CKA_SIGN: "sign" in ops, lib.CKA_SIGN_RECOVER: False,
            lib.CKA_DECRYPT: "decrypt" in ops, lib.CKA_UNWRAP: "unwrapKey" in ops, lib.CKA_WRAP_WITH_TRUSTED: False,
            lib.CKA_ALWAYS_AUTHENTICATE: stored.get("CKA_ALWAYS_AUTHENTICATE", False),
        })
    else:
        values.update({
            lib.CKA_VERIFY: "verify" in ops, lib.CKA_VERIFY_RECOVER: False, lib.CKA_ENCRYPT: "encrypt" in ops,
            lib.CKA_WRAP: "wrapKey" in ops, lib.CKA_TRUSTED: stored.get("CKA_TRUSTED", False),
        })
    return values


@dataclass(frozen=True)
class ObjectRef:
    """What a handle names: one side of one key on one slot."""

    slot_id: int
    key_name: str
    cls: int


class Handles:
    """Object handles, stable for the life of the process (across C_Finalize and fork alike)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_ref: dict[ObjectRef, int] = {}
        self._by_handle: dict[int, ObjectRef] = {}

    def handle(self, ref: ObjectRef) -> int:
        with self._lock:
            found = self._by_ref.get(ref)
            if found is None:
                found = len(self._by_ref) + 1
                self._by_ref[ref] = found
                self._by_handle[found] = ref
            return found

    def ref(self, handle: int) -> ObjectRef:
        found = self._by_handle.get(handle)
        if found is None:
            raise CKRError(lib.CKR_OBJECT_HANDLE_INVALID, f"no object has handle {handle}")
        return found
