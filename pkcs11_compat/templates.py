"""Templates that make or change keys: what C_GenerateKeyPair and C_SetAttributeValue accept.

An attribute in a template is one of four things: stored in the key's tags (the core's mapper
decides which), carried by the key itself (size, curve, key_ops, dates), CKA_TOKEN (a token object,
or a session object the module deletes when its session ends), or fixed by what a Managed HSM key
is (sensitive, never extractable). A fixed attribute must have the fixed value
(CKR_ATTRIBUTE_VALUE_INVALID); attributes that contradict each other, within a template or across
the two, are CKR_TEMPLATE_INCONSISTENT; an attribute the module does not know is
CKR_ATTRIBUTE_TYPE_INVALID.
"""

from __future__ import annotations

from typing import Any

from mhsm_core import tags

from .ck import CKRError, lib
from .objects import CURVE_OF_PARAMS, PRIVATE, PUBLIC, SENSITIVE, TAG_NAMES, epoch_of

# Attribute -> the only value a key on the HSM can have.
FIXED = {
    lib.CKA_SENSITIVE: True, lib.CKA_EXTRACTABLE: False, lib.CKA_SIGN_RECOVER: False,
    lib.CKA_VERIFY_RECOVER: False, lib.CKA_COPYABLE: False, lib.CKA_DESTROYABLE: False,
    lib.CKA_WRAP_WITH_TRUSTED: False,
}
# Set by the token only (PKCS#11 2.40, table 10 footnote 2 and 4).
READ_ONLY = {lib.CKA_LOCAL, lib.CKA_ALWAYS_SENSITIVE, lib.CKA_NEVER_EXTRACTABLE, lib.CKA_KEY_GEN_MECHANISM,
             lib.CKA_MODULUS, lib.CKA_EC_POINT, lib.CKA_PUBLIC_KEY_INFO, lib.CKA_ALLOWED_MECHANISMS}
# Boolean attribute -> the Managed HSM key operation it allows, and its default when absent.
OPERATIONS = {
    PRIVATE: {lib.CKA_SIGN: ("sign", True), lib.CKA_DECRYPT: ("decrypt", False), lib.CKA_UNWRAP: ("unwrapKey", False)},
    PUBLIC: {lib.CKA_VERIFY: ("verify", True), lib.CKA_ENCRYPT: ("encrypt", False), lib.CKA_WRAP: ("wrapKey", False)},
}
EC_OPERATIONS = {"sign", "verify"}
# Attributes of the key pair rather than of one object: both templates may give them, and must agree.
PAIR_WIDE = (lib.CKA_START_DATE, lib.CKA_END_DATE, lib.CKA_DERIVE, lib.CKA_TOKEN)
# What C_SetAttributeValue may change (the official library allows label and id).
SETTABLE = {lib.CKA_LABEL, lib.CKA_ID, lib.CKA_SUBJECT}


def _stored(cls: int, template: dict[int, Any]) -> dict[str, Any]:
    prefix = tags.PRIVATE if cls == PRIVATE else tags.PUBLIC
    return {TAG_NAMES[t]: v for t, v in template.items() if t in TAG_NAMES and tags.is_stored(prefix, TAG_NAMES[t])}


def _one(values: list[Any], what: str, same: Any = repr) -> Any:
    """The value both templates agree on (either may omit it); `same` gives what must be equal."""
    distinct = {same(v): v for v in values if v is not None}
    if len(distinct) > 1:
        raise CKRError(lib.CKR_TEMPLATE_INCONSISTENT, f"the public and private templates disagree on {what}")
    return next(iter(distinct.values()), None)


def _check_known(cls: int, template: dict[int, Any], kty: str) -> None:
    prefix = tags.PRIVATE if cls == PRIVATE else tags.PUBLIC
    shape = {lib.CKA_MODULUS_BITS, lib.CKA_PUBLIC_EXPONENT} if kty == "RSA" else {lib.CKA_EC_PARAMS}
    for attribute, value in template.items():
        if attribute in READ_ONLY:
            raise CKRError(lib.CKR_ATTRIBUTE_READ_ONLY, f"attribute 0x{attribute:x} is set by the token")
        if attribute in FIXED:
            if value != FIXED[attribute]:
                raise CKRError(lib.CKR_ATTRIBUTE_VALUE_INVALID,
                               f"attribute 0x{attribute:x} is always {FIXED[attribute]} for a Managed HSM key")
            continue
        known = (attribute in OPERATIONS[cls] or attribute in shape or attribute in PAIR_WIDE
                 or (attribute in TAG_NAMES and tags.is_stored(prefix, TAG_NAMES[attribute])))
        if attribute == lib.CKA_CLASS:
            if value != cls:
                raise CKRError(lib.CKR_TEMPLATE_INCONSISTENT, "CKA_CLASS does not match the template's object")
        elif attribute == lib.CKA_KEY_TYPE:
            if value != (lib.CKK_RSA if kty == "RSA" else lib.CKK_EC):
                raise CKRError(lib.CKR_TEMPLATE_INCONSISTENT, f"CKA_KEY_TYPE does not match the {kty} mechanism")
        elif attribute == lib.CKA_PRIVATE and cls == PRIVATE:
            if not value:
                raise CKRError(lib.CKR_ATTRIBUTE_VALUE_INVALID, "a private key is always CKA_PRIVATE")
        elif not known:
            raise CKRError(lib.CKR_ATTRIBUTE_TYPE_INVALID, f"attribute 0x{attribute:x} cannot be set on this key")


def is_token(public: dict[int, Any], private: dict[int, Any]) -> bool:
    """CKA_TOKEN of the pair: both objects are token objects or both session objects (false when
    absent, as PKCS#11 defaults it); templates that disagree are inconsistent."""
    return bool(_one([public.get(lib.CKA_TOKEN), private.get(lib.CKA_TOKEN)], "CKA_TOKEN"))


def _exponent(value: bytes) -> int:
    """A big-endian CKA_PUBLIC_EXPONENT of any length: 01 00 01 and 00 01 00 01 are both 65537."""
    return int.from_bytes(value, "big")


def key_request(kty: str, public: dict[int, Any], private: dict[int, Any]) -> dict[str, Any]:
    """Keyword arguments of the core's `KeyStore.create` for a C_GenerateKeyPair call.

    Checks run in the order PKCS#11 implies: what no key can have (read-only, unknown, or a fixed
    attribute's other value), then contradictions between attributes, then missing ones, then the
    values the HSM does not make (size, curve, exponent)."""
    _check_known(PUBLIC, public, kty)
    _check_known(PRIVATE, private, kty)
    _check_consistent(public, private)
    request: dict[str, Any] = {}
    if kty == "RSA":
        bits = _one([public.get(lib.CKA_MODULUS_BITS), private.get(lib.CKA_MODULUS_BITS)], "CKA_MODULUS_BITS")
        if bits is None:
            raise CKRError(lib.CKR_TEMPLATE_INCOMPLETE, "an RSA key pair needs CKA_MODULUS_BITS")
        if bits not in (2048, 3072, 4096):
            # PKCS#11 2.40 lists no CKR_KEY_SIZE_RANGE for C_GenerateKeyPair: the size is a template value.
            raise CKRError(lib.CKR_ATTRIBUTE_VALUE_INVALID,
                           f"CKA_MODULUS_BITS: Managed HSM makes 2048, 3072 and 4096-bit RSA keys, not {bits}")
        exponent = _one([public.get(lib.CKA_PUBLIC_EXPONENT), private.get(lib.CKA_PUBLIC_EXPONENT)], "the exponent",
                        same=_exponent)
        if exponent is not None and _exponent(exponent) != 65537:
            raise CKRError(lib.CKR_ATTRIBUTE_VALUE_INVALID, "Managed HSM RSA keys use the public exponent 65537")
        request["size"] = bits
    else:
        params = _one([public.get(lib.CKA_EC_PARAMS), private.get(lib.CKA_EC_PARAMS)], "CKA_EC_PARAMS")
        if params is None:
            raise CKRError(lib.CKR_TEMPLATE_INCOMPLETE, "an EC key pair needs CKA_EC_PARAMS")
        if params not in CURVE_OF_PARAMS:
            raise CKRError(lib.CKR_CURVE_NOT_SUPPORTED, "Managed HSM curves are P-256, P-256K, P-384 and P-521")
        request["curve"] = CURVE_OF_PARAMS[params]
    key_ops = [op for cls, template in ((PRIVATE, private), (PUBLIC, public))
               for attribute, (op, default) in OPERATIONS[cls].items() if template.get(attribute, default)]
    if kty == "EC" and not set(key_ops) <= EC_OPERATIONS:
        raise CKRError(lib.CKR_TEMPLATE_INCONSISTENT, "EC keys on Managed HSM only sign and verify")
    request["key_ops"] = tuple(key_ops)
    start = _one([public.get(lib.CKA_START_DATE), private.get(lib.CKA_START_DATE)], "CKA_START_DATE")
    end = _one([public.get(lib.CKA_END_DATE), private.get(lib.CKA_END_DATE)], "CKA_END_DATE")
    request["not_before"], request["expires"] = epoch_of(start or ""), epoch_of(end or "")
    private_stored, public_stored = _stored(PRIVATE, private), _stored(PUBLIC, public)
    derive = _one([public.get(lib.CKA_DERIVE), private.get(lib.CKA_DERIVE)], "CKA_DERIVE")
    if derive is not None:
        private_stored["CKA_DERIVE"] = derive  # kept once, with the private key; both objects read it
    # Tools often label only one side; the other gets the same label and id, so both objects are found.
    for name in ("CKA_LABEL", "CKA_ID"):
        for mine, other in ((private_stored, public_stored), (public_stored, private_stored)):
            if name not in mine and name in other:
                mine[name] = other[name]
    request["private_attributes"], request["public_attributes"] = private_stored, public_stored
    return request


def _check_consistent(public: dict[int, Any], private: dict[int, Any]) -> None:
    """Attributes that cannot hold together, within a template or across the two."""
    starts = [d for d in (public.get(lib.CKA_START_DATE), private.get(lib.CKA_START_DATE)) if d]
    ends = [d for d in (public.get(lib.CKA_END_DATE), private.get(lib.CKA_END_DATE)) if d]
    if starts and ends and max(starts) > min(ends):
        raise CKRError(lib.CKR_TEMPLATE_INCONSISTENT, "the key pair would start after it ends")


def settable(template: dict[int, Any], current: dict[int, Any]) -> dict[str, Any]:
    """The stored attributes a C_SetAttributeValue template changes (`current`: the object's values)."""
    for attribute in template:
        if attribute not in SETTABLE:
            known = attribute in current or attribute in SENSITIVE
            raise CKRError(lib.CKR_ATTRIBUTE_READ_ONLY if known else lib.CKR_ATTRIBUTE_TYPE_INVALID,
                           f"attribute 0x{attribute:x} cannot be changed")
    return {TAG_NAMES[t]: v for t, v in template.items()}
