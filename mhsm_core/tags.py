"""PKCS#11 attributes ⇄ Managed HSM key tags, with the official prefixes `p11_pri_` and `p11_pub_`.

A key holds at most 15 tags, so only what cannot be read off the key itself is stored; everything
else (type, size, curve, modulus, point, sign/verify from key_ops, start/end dates from nbf/exp,
sensitivity) is derived. The table is in docs/key-model.md; `STORED` is its source of truth.
"""

from __future__ import annotations

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

# Attribute name -> codec, per object. 12 tags at most, leaving 3 of the 15 for the owner's own tags.
STORED: dict[str, dict[str, Codec]] = {
    PRIVATE: {"CKA_LABEL": TEXT, "CKA_ID": HEX, "CKA_SUBJECT": HEX, "CKA_MODIFIABLE": BOOL,
              "CKA_ALWAYS_AUTHENTICATE": BOOL, "CKA_DERIVE": BOOL},
    PUBLIC: {"CKA_LABEL": TEXT, "CKA_ID": HEX, "CKA_SUBJECT": HEX, "CKA_MODIFIABLE": BOOL,
             "CKA_PRIVATE": BOOL, "CKA_TRUSTED": BOOL},
}


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
