"""PKCS#11 attributes ⇄ Managed HSM key tags, with the official prefixes `p11_pri_` and `p11_pub_`.

A key holds at most 15 tags, so only what cannot be read off the key itself is stored; everything
else (type, size, curve, modulus, point, sign/verify from key_ops, start/end dates from nbf/exp,
sensitivity) is derived. The table is in docs/key-model.md; `STORED` is its source of truth.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable

from .errors import InvalidArgument

PRIVATE, PUBLIC = "p11_pri_", "p11_pub_"
MAX_TAGS, MAX_TAG_LENGTH = 15, 256


@dataclass(frozen=True)
class Codec:
    encode: Callable[[Any], str]
    decode: Callable[[str], Any]
    kind: type


def _bool_decode(text: str) -> bool:
    return text.lower() == "true"


TEXT = Codec(lambda v: v, lambda s: s, str)
HEX = Codec(lambda v: bytes(v).hex(), bytes.fromhex, bytes)
BOOL = Codec(lambda v: "true" if v else "false", _bool_decode, bool)

# Attribute name -> codec, per object. 12 tags at most, plus KEY_TYPE: 13, leaving 2 of the 15 for the owner.
STORED: dict[str, dict[str, Codec]] = {
    PRIVATE: {"CKA_LABEL": TEXT, "CKA_ID": HEX, "CKA_SUBJECT": HEX, "CKA_MODIFIABLE": BOOL,
              "CKA_ALWAYS_AUTHENTICATE": BOOL, "CKA_DERIVE": BOOL},
    PUBLIC: {"CKA_LABEL": TEXT, "CKA_ID": HEX, "CKA_SUBJECT": HEX, "CKA_MODIFIABLE": BOOL,
             "CKA_PRIVATE": BOOL, "CKA_TRUSTED": BOOL},
}


# The key's type and curve or size ("EC P-256", "RSA 2048"), written when the library creates or adopts a key.
# It is derived data, kept only so a search by CKA_KEY_TYPE can be decided from the listing without
# fetching every key; the key itself stays the truth, and a key whose tag disagrees is refused.
KEY_TYPE = PRIVATE + "CKA_KEY_TYPE"


def key_type_tag(description: str) -> dict[str, str]:
    return {KEY_TYPE: description}


def is_stored(prefix: str, attribute: str) -> bool:
    return attribute in STORED[prefix]


def to_tags(private: dict[str, Any], public: dict[str, Any]) -> dict[str, str]:
    """Tags for the given attribute values; refuses values the service could not hold."""
    tags: dict[str, str] = {}
    for prefix, values in ((PRIVATE, private), (PUBLIC, public)):
        for name, value in values.items():
            codec = STORED[prefix].get(name)
            if codec is None:
                raise InvalidArgument(f"{name} is not stored in key tags (see docs/key-model.md)")
            if not isinstance(value, codec.kind):
                raise InvalidArgument(f"{name} must be {codec.kind.__name__}, got {type(value).__name__}")
            text = codec.encode(value)
            if len(text) > MAX_TAG_LENGTH:
                raise InvalidArgument(f"{name} is too long to store in a key tag ({len(text)} > {MAX_TAG_LENGTH} "
                                      "characters once encoded)")
            tags[prefix + name] = text
    return tags


def from_tags(tags: dict[str, str] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(private attributes, public attributes) stored in a key's tags; undecodable tags are skipped."""
    out: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
    for tag, text in (tags or {}).items():
        for side, prefix in enumerate((PRIVATE, PUBLIC)):
            codec = STORED[prefix].get(tag[len(prefix):]) if tag.startswith(prefix) else None
            if codec is not None:
                try:
                    out[side][tag[len(prefix):]] = codec.decode(text)
                except ValueError:
                    pass
    return out


def attributes_of(name: str, tags: dict[str, str] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a key named `name` with these tags shows as its two objects' attributes: the stored ones,
    and a CKA_ID unique to the key where none is stored (see default_key_id)."""
    private, public = from_tags(tags)
    # PKCS#11 hosts find a key again by its id (pkcs11-tool --label, pkcs11-provider after a fork),
    # and keys made without --id would otherwise all share the empty one.
    stored_id = private.get("CKA_ID") or public.get("CKA_ID") or default_key_id(name)
    private.setdefault("CKA_ID", stored_id)
    public.setdefault("CKA_ID", stored_id)
    return private, public


def default_key_id(name: str) -> bytes:
    """The CKA_ID of a key stored without one: the 16 bytes its `p11-<32 hex>` name carries, or
    for another name the first 16 bytes of its SHA-256."""
    suffix = name[4:] if name.startswith("p11-") else ""
    if len(suffix) == 32 and all(c in "0123456789abcdef" for c in suffix.lower()):
        return bytes.fromhex(suffix)
    return hashlib.sha256(name.encode()).digest()[:16]


def name_of_default_id(key_id: bytes | None) -> str | None:
    """The name of the key this id would be the default id of (`p11-<32 hex>`), if it can be one."""
    return f"p11-{key_id.hex()}" if key_id is not None and len(key_id) == 16 else None


def is_library_key(tags: dict[str, str] | None) -> bool:
    """Keys this library (or the official one) made carry p11_ tags; others are not found by default."""
    return any(t.startswith("p11_") for t in (tags or {}))


def merge(existing: dict[str, str] | None, private: dict[str, Any], public: dict[str, Any]) -> dict[str, str]:
    """The key's tags with some attributes changed, keeping the owner's other tags; checks the 15-tag limit."""
    tags = dict(existing or {})
    tags.update(to_tags(private, public))
    if len(tags) > MAX_TAGS:
        raise InvalidArgument(f"the key would carry {len(tags)} tags; Managed HSM allows {MAX_TAGS}")
    return tags
