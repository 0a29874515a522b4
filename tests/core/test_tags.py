"""The PKCS#11 attribute ⇄ tag mapper (pure); the service's acceptance is checked in test_keys_live."""

from __future__ import annotations

import pytest

from mhsm_core import tags
from mhsm_core.errors import InvalidArgument

FULL_PRIVATE = {"CKA_LABEL": "L" * 256, "CKA_ID": b"\x01" * 128, "CKA_SUBJECT": b"\x30" * 128,
                "CKA_MODIFIABLE": True, "CKA_ALWAYS_AUTHENTICATE": False, "CKA_DERIVE": False}
FULL_PUBLIC = {"CKA_LABEL": "L" * 256, "CKA_ID": b"\x01" * 128, "CKA_SUBJECT": b"\x30" * 128,
               "CKA_MODIFIABLE": True, "CKA_PRIVATE": False, "CKA_TRUSTED": True}


def test_round_trip_of_the_full_set() -> None:
    encoded = tags.to_tags(FULL_PRIVATE, FULL_PUBLIC)
    assert len(encoded) == 12 <= tags.MAX_TAGS
    assert all(len(k) <= 256 and len(v) <= 256 for k, v in encoded.items())
    assert encoded["p11_pri_CKA_LABEL"] == "L" * 256 and encoded["p11_pub_CKA_ID"] == "01" * 128
    assert tags.from_tags(encoded) == (FULL_PRIVATE, FULL_PUBLIC)
    assert tags.is_library_key(encoded) and not tags.is_library_key({"owner": "me"}) and not tags.is_library_key(None)


def test_values_too_long_or_of_the_wrong_type_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="too long"):
        tags.to_tags({"CKA_ID": b"\x00" * 129}, {})
    with pytest.raises(InvalidArgument, match="must be str"):
        tags.to_tags({"CKA_LABEL": b"bytes"}, {})
    with pytest.raises(InvalidArgument, match="not stored"):
        tags.to_tags({"CKA_MODULUS": b"\x00"}, {})


def test_merge_keeps_owner_tags_and_checks_the_limit() -> None:
    merged = tags.merge({"owner": "team-a", "p11_pri_CKA_LABEL": "old"}, {"CKA_LABEL": "new"}, {})
    assert merged == {"owner": "team-a", "p11_pri_CKA_LABEL": "new"}
    crowded = {f"t{i}": "v" for i in range(4)}
    with pytest.raises(InvalidArgument, match="16 tags"):
        tags.merge(crowded, FULL_PRIVATE, FULL_PUBLIC)


def test_undecodable_tags_are_skipped() -> None:
    assert tags.from_tags({"p11_pri_CKA_ID": "zz", "p11_pri_CKA_LABEL": "ok"}) == ({"CKA_LABEL": "ok"}, {})
