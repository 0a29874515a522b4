"""The tag mapper (mhsm_core/tags.py), property-based: attribute values either become tags that read
back as the same values, or are refused with one line that names the attribute; any tags a key
carries read without an error (what cannot be decoded is skipped), and never more than 15 tags."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from mhsm_core import tags
from mhsm_core.errors import InvalidArgument

KINDS = {tags.TEXT.kind: st.text(max_size=300), bytes: st.binary(max_size=140), bool: st.booleans()}
wrong = st.integers() | st.none() | st.floats(allow_nan=False) | st.binary(max_size=4) | st.text(max_size=4)


def side(prefix: str) -> st.SearchStrategy[dict[str, Any]]:
    """Attributes of one object: stored ones with values of their kind (or of another), and unknown names."""
    stored = {name: KINDS[codec.kind] | wrong for name, codec in tags.STORED[prefix].items()}
    return st.fixed_dictionaries({}, optional={**stored, "CKA_MODULUS": wrong, "CKA_LABEL ": st.text(max_size=3)})


@given(side(tags.PRIVATE), side(tags.PUBLIC))
def test_attributes_round_trip_or_name_the_attribute(private: dict[str, Any], public: dict[str, Any]) -> None:
    try:
        written = tags.to_tags(private, public)
    except InvalidArgument as exc:
        message = str(exc)
        assert "\n" not in message, message
        assert any(message.startswith(name) for name in [*private, *public]), message
        return
    assert all(len(value) <= tags.MAX_TAG_LENGTH for value in written.values())
    assert tags.from_tags(written) == (private, public)


@given(st.dictionaries(st.sampled_from([tags.PRIVATE + n for n in tags.STORED[tags.PRIVATE]]
                                       + [tags.PUBLIC + n for n in tags.STORED[tags.PUBLIC]]) | st.text(max_size=12),
                       st.text(max_size=20), max_size=20))
def test_any_tags_read(found: dict[str, str]) -> None:
    """Tags someone else wrote (the official library, a user, the portal) never break a listing."""
    private, public = tags.from_tags(found)
    for prefix, values in ((tags.PRIVATE, private), (tags.PUBLIC, public)):
        for name, value in values.items():
            assert isinstance(value, tags.STORED[prefix][name].kind)


@given(st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=16),
       side(tags.PRIVATE), side(tags.PUBLIC))
def test_merge_keeps_the_limit(existing: dict[str, str], private: dict[str, Any], public: dict[str, Any]) -> None:
    try:
        merged = tags.merge(existing, private, public)
    except InvalidArgument as exc:
        assert "\n" not in str(exc) and ("tags" in str(exc) or any(str(exc).startswith(n) for n in [*private, *public]))
        return
    assert len(merged) <= tags.MAX_TAGS
    assert {k: v for k, v in merged.items() if k in existing and k not in tags.to_tags(private, public)} == \
           {k: v for k, v in existing.items() if k not in tags.to_tags(private, public)}
