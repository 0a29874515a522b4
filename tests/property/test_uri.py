"""RFC 7512 URIs (provider/uri.py), property-based: every text either parses to a value that
writes back to a URI parsing to the same value, or is refused with one line that names the
attribute at fault (or says the text is no pkcs11: URI)."""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st

from mhsm_core.errors import InvalidArgument
from provider import uri

NAMES = uri.SELECTING + uri.DESCRIPTIVE + uri.QUERY + ("colour", "Object", "")
values = st.text(max_size=12) | st.sampled_from(["private", "public", "7", "%41", "a;b", "x&y", "é", "\n"])


def render(parsed: uri.Pkcs11Uri) -> str:
    """The URI a parsed value stands for, every value percent-encoded (written here on purpose:
    uri.build only writes what the provider lists, with a token and a type)."""
    path = [f"{name}={quote(value, safe='')}" for name, value in
            (("object", parsed.object), ("token", parsed.token), ("type", parsed.type)) if value is not None]
    if parsed.id is not None:
        path.append("id=" + "".join(f"%{b:02X}" for b in parsed.id))
    if parsed.slot_id is not None:
        path.append(f"slot-id={parsed.slot_id}")
    query = [f"{name}={quote(value, safe='')}" for name, value in
             (("pin-value", parsed.pin_value), ("pin-source", parsed.pin_source)) if value is not None]
    return uri.SCHEME + ";".join(path) + ("?" + "&".join(query) if query else "")


def same(a: uri.Pkcs11Uri, b: uri.Pkcs11Uri) -> bool:
    return (a.object, a.id, a.type, a.token, a.slot_id, a.pin_value, a.pin_source) == \
           (b.object, b.id, b.type, b.token, b.slot_id, b.pin_value, b.pin_source)


def check(text: str) -> None:
    try:
        parsed = uri.parse(text)
    except InvalidArgument as exc:
        message = str(exc)
        assert "\n" not in message and "\r" not in message, message
        named = [n for n in NAMES if n and f"'{n}" in message or f"{n}=" in message]
        assert named or "is not a pkcs11: URI" in message, message
        return
    again = uri.parse(render(parsed))
    assert same(parsed, again), (text, render(parsed))


@given(st.text(max_size=60))
def test_any_text(text: str) -> None:
    check(text)


@given(st.lists(st.tuples(st.sampled_from(NAMES), values), max_size=6), st.booleans())
def test_attribute_lists(pairs: list[tuple[str, str]], query: bool) -> None:
    """URIs built from attribute lists: known and unknown names, repeated ones, values that need
    escaping, some after `?`."""
    path = ";".join(f"{n}={v}" for n, v in pairs if n not in uri.QUERY)
    after = "&".join(f"{n}={v}" for n, v in pairs if n in uri.QUERY)
    check(uri.SCHEME + path + ("?" + after if query or after else ""))


@given(st.text(min_size=1, max_size=24), st.one_of(st.none(), st.text(max_size=24)),
       st.one_of(st.none(), st.binary(max_size=20)), st.sampled_from(uri.OBJECT_TYPES))
def test_what_the_provider_writes_reads_back(token: str, label: str | None, key_id: bytes | None, kind: str) -> None:
    parsed = uri.parse(uri.build(token, label, key_id, kind))
    assert (parsed.token, parsed.object, parsed.id or None, parsed.type) == (token, label, key_id or None, kind)
