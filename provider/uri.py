"""RFC 7512 `pkcs11:` URIs: parse what a user writes, and write the URI of each object we list.

Written by hand: neither cryptography nor any PKCS#11 binding on PyPI parses these URIs, and the
grammar is a few lines (attributes separated by `;` in the path and `&` in the query, values
percent-encoded).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, unquote_to_bytes

from mhsm_core.errors import InvalidArgument

SCHEME = "pkcs11:"
OBJECT_TYPES = ("private", "public", "cert", "secret-key", "data")
# RFC 7512 §2.3 attributes that describe the token, slot or library. Tools such as p11tool print
# them in every URI; they are accepted so such URIs can be pasted, and do not narrow the search
# (`token` and `slot-id` choose the HSM).
DESCRIPTIVE = ("manufacturer", "serial", "model", "library-manufacturer", "library-description",
               "library-version", "slot-manufacturer", "slot-description")
SELECTING = ("object", "id", "type", "token", "slot-id")
QUERY = ("pin-value", "pin-source")
# RFC 7512 pchar characters that need no escaping in a value we write.
SAFE = ":[]@!$'()*+,=&-._~"


@dataclass(frozen=True)
class Pkcs11Uri:
    text: str
    object: str | None = None
    id: bytes | None = None
    type: str | None = None
    token: str | None = None
    slot_id: int | None = None
    pin_value: str | None = None
    pin_source: str | None = None

    @property
    def names_an_object(self) -> bool:
        return self.object is not None or self.id is not None

    def pin(self) -> str | None:
        """The PIN the URI carries: pin-value, else the first line of the pin-source file."""
        if self.pin_value is not None:
            return self.pin_value
        if self.pin_source is None:
            return None
        path = self.pin_source.removeprefix("file:")
        try:
            return (Path(path).read_text().splitlines() or [""])[0].strip()
        except OSError as exc:
            raise InvalidArgument(f"pin-source {self.pin_source}: cannot read it ({exc.strerror})") from None


def _shown(text: str) -> str:
    """The URI as an error line quotes it: as written, or escaped if it holds a line break or other
    control character (an error is one line in a host's log)."""
    return text if text.isprintable() else repr(text)


def parse(text: str) -> Pkcs11Uri:
    """Parse a pkcs11: URI; an unknown or repeated attribute, or a bad value, raises InvalidArgument."""
    if not text.lower().startswith(SCHEME):
        raise InvalidArgument(f"{text!r} is not a pkcs11: URI")
    shown = _shown(text)
    path, _, query = text[len(SCHEME):].partition("?")
    found: dict[str, str] = {}
    for part, separator, allowed, where in ((path, ";", SELECTING + DESCRIPTIVE, "path"),
                                            (query, "&", QUERY, "query (after ?)")):
        for item in filter(None, part.split(separator)):
            name, sep, value = item.partition("=")
            if not sep:
                raise InvalidArgument(f"{shown}: {item!r} has no value (attributes are written name=value)")
            if name not in allowed:
                raise InvalidArgument(f"{shown}: unknown attribute {name!r} in the {where}; this provider "
                                      f"understands {', '.join(SELECTING)} and, after ?, {', '.join(QUERY)}")
            if name in found:
                raise InvalidArgument(f"{shown}: attribute '{name}' is given twice")
            found[name] = value
    kind = unquote(found["type"]) if "type" in found else None
    if kind is not None and kind not in OBJECT_TYPES:
        raise InvalidArgument(f"{shown}: type={kind!r} is not one of {', '.join(OBJECT_TYPES)}")
    slot = found.get("slot-id")
    if slot is not None and not slot.isdigit():
        raise InvalidArgument(f"{shown}: slot-id={slot!r} is not a decimal number")
    return Pkcs11Uri(text, object=_text(found, "object"),
                     id=unquote_to_bytes(found["id"]) if "id" in found else None, type=kind,
                     token=_text(found, "token"), slot_id=int(slot) if slot is not None else None,
                     pin_value=_text(found, "pin-value"), pin_source=_text(found, "pin-source"))


def _text(found: dict[str, str], name: str) -> str | None:
    return unquote(found[name]) if name in found else None


def build(token: str, label: str | None, key_id: bytes | None, kind: str) -> str:
    """The URI that names exactly one object (what `openssl storeutl pkcs11:` prints)."""
    parts = [f"token={quote(token, safe=SAFE)}"]
    if label is not None:
        parts.append(f"object={quote(label, safe=SAFE)}")
    if key_id:
        parts.append("id=" + "".join(f"%{b:02X}" for b in key_id))
    parts.append(f"type={kind}")
    return SCHEME + ";".join(parts)
