"""The core against the emulator over real TLS: create, find by label, sign and verify for every key
type, mechanism family and digest size, in both RBAC scenarios; and the granular scenario's limits."""

from __future__ import annotations

import hashlib
import uuid
from typing import Callable

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from mhsm_core import signing
from mhsm_core.errors import AccessDenied, InvalidArgument, NotFound
from mhsm_core.hsm import Library
from tests.conftest import Emulator

HASHERS = {"SHA256": (hashlib.sha256, hashes.SHA256()), "SHA384": (hashlib.sha384, hashes.SHA384()),
           "SHA512": (hashlib.sha512, hashes.SHA512())}


def _label() -> str:
    return f"core-{uuid.uuid4().hex[:12]}"


@pytest.mark.parametrize("size", [2048, 3072, 4096])
def test_rsa_every_mechanism_and_digest(emulator: Emulator, library_for: Callable[..., Library], size: int) -> None:
    hsm = library_for(emulator, "keygen").hsm(0)
    label = _label()
    created = hsm.keys.create("RSA", size=size, private_attributes={"CKA_LABEL": label, "CKA_ID": b"\x42"},
                              public_attributes={"CKA_LABEL": label, "CKA_ID": b"\x42"})
    assert created.name.startswith("p11-") and len(created.name) == 36 and created.size == size
    [key] = hsm.keys.find(label=label)
    assert key.kid == created.kid and key.key_id == b"\x42" and key.public_attributes["CKA_LABEL"] == label
    public = key.public_key
    for name, (hasher, hash_alg) in HASHERS.items():
        digest = hasher(b"message").digest()
        for algorithm, sized in (signing.pkcs1_digest_info(signing.DIGEST_INFO_PREFIX[name] + digest, key.size // 8),
                                 signing.pss(digest, name, name, hash_alg.digest_size)):
            signature = hsm.keys.sign(key, algorithm, sized)
            assert len(signature) == size // 8
            pad = (padding.PSS(padding.MGF1(hash_alg), hash_alg.digest_size) if algorithm.startswith("PS")
                   else padding.PKCS1v15())
            public.verify(signature, digest, pad, utils.Prehashed(hash_alg))  # type: ignore[union-attr]


@pytest.mark.parametrize("curve", ["P-256", "P-256K", "P-384", "P-521"])
def test_ec_every_digest_size(emulator: Emulator, library_for: Callable[..., Library], curve: str) -> None:
    hsm = library_for(emulator, "keygen").hsm(0)
    label = _label()
    hsm.keys.create("EC", curve=curve, private_attributes={"CKA_LABEL": label}, public_attributes={"CKA_LABEL": label})
    [key] = hsm.keys.find(label=label, kty="EC")
    for name, (hasher, hash_alg) in HASHERS.items():
        digest = hasher(b"message").digest()
        algorithm, sized = signing.ecdsa(digest, curve)
        raw = hsm.keys.sign(key, algorithm, sized)
        der = signing.raw_to_der(raw)
        key.public_key.verify(der, digest, ec.ECDSA(utils.Prehashed(hash_alg)))  # type: ignore[call-arg]


def test_find_misses_and_foreign_keys(emulator: Emulator, library_for: Callable[..., Library]) -> None:
    hsm = library_for(emulator, "keygen").hsm(0)
    assert hsm.keys.find(label=_label()) == []
    foreign = emulator.key_client().create_ec_key(f"foreign-{uuid.uuid4().hex[:8]}", curve="P-256")
    names = [k.name for k in hsm.keys.keys(refresh=True)]
    assert foreign.name not in names  # not made by the library: not found by default
    assert foreign.name in [k.name for k in hsm.keys.keys(refresh=True, include_foreign=True)]
    label = _label()
    adopted = hsm.keys.adopt(foreign.name, label, b"\x07")
    assert adopted.label == label and [k.name for k in hsm.keys.find(label=label)] == [foreign.name]


def test_key_without_id_gets_its_own(emulator: Emulator, library_for: Callable[..., Library]) -> None:
    """Keys made without CKA_ID each get a unique one from their name (what a PKCS#11 host re-finds
    them by); a search for the empty id finds none of them."""
    hsm = library_for(emulator, "keygen").hsm(0)
    made = [hsm.keys.create("EC", curve="P-256", private_attributes={"CKA_LABEL": _label()}) for _ in range(2)]
    ids = [key.key_id for key in made]
    assert ids[0] != ids[1] and ids == [bytes.fromhex(key.name[4:]) for key in made]
    assert [k.name for k in hsm.keys.find(key_id=ids[1])] == [made[1].name]
    assert [k.name for k in hsm.keys.find(key_id=ids[1], side="public")] == [made[1].name]
    assert hsm.keys.find(label=made[0].label, key_id=b"") == []


def test_key_made_elsewhere_is_found_after_a_cached_miss(emulator: Emulator,
                                                         library_for: Callable[..., Library]) -> None:
    first, second = (library_for(emulator, "keygen").hsm(0) for _ in range(2))
    assert first.keys.keys()  # warm the listing cache
    label = _label()
    second.keys.create("EC", curve="P-256", private_attributes={"CKA_LABEL": label},
                       public_attributes={"CKA_LABEL": label})
    assert len(first.keys.find(label=label)) == 1  # a miss in the cached listing lists again


def test_full_tag_set_is_accepted_by_the_service(emulator: Emulator, library_for: Callable[..., Library]) -> None:
    hsm = library_for(emulator, "keygen").hsm(0)
    private = {"CKA_LABEL": "L" * 250 + uuid.uuid4().hex[:6], "CKA_ID": b"\x01" * 128, "CKA_SUBJECT": b"\x30" * 128,
               "CKA_MODIFIABLE": True, "CKA_ALWAYS_AUTHENTICATE": False, "CKA_DERIVE": False}
    public = {"CKA_LABEL": private["CKA_LABEL"], "CKA_ID": b"\x01" * 128, "CKA_SUBJECT": b"\x30" * 128,
              "CKA_MODIFIABLE": True, "CKA_PRIVATE": False, "CKA_TRUSTED": True}
    key = hsm.keys.create("EC", curve="P-256", private_attributes=private, public_attributes=public)
    assert len(key.tags) == 13 and key.tags["p11_pri_CKA_KEY_TYPE"] == "EC P-256"  # the 12, and the type
    again = hsm.keys.get(key.name)
    assert again.private_attributes == private and again.public_attributes == public


def test_set_attributes_updates_tags(emulator: Emulator, library_for: Callable[..., Library]) -> None:
    hsm = library_for(emulator, "keygen").hsm(0)
    old, new = _label(), _label()
    key = hsm.keys.create("EC", curve="P-256", private_attributes={"CKA_LABEL": old},
                          public_attributes={"CKA_LABEL": old})
    updated = hsm.keys.set_attributes(key, {"CKA_LABEL": new, "CKA_ID": b"\x09"}, {"CKA_LABEL": new})
    assert updated.label == new and updated.key_id == b"\x09"
    assert hsm.keys.find(label=old) == [] and [k.name for k in hsm.keys.find(label=new)] == [key.name]


def test_invalid_requests_are_refused_before_the_hsm(emulator: Emulator, library_for: Callable[..., Library]) -> None:
    hsm = library_for(emulator, "keygen").hsm(0)
    with pytest.raises(InvalidArgument):
        hsm.keys.create("RSA", size=1024)
    with pytest.raises(InvalidArgument):
        hsm.keys.create("EC", curve="P-192")
    with pytest.raises(InvalidArgument):
        hsm.keys.create("EC", curve="P-256", private_attributes={"CKA_ID": b"\x00" * 200})


def test_granular_tls_principal(granular: Emulator, library_for: Callable[..., Library]) -> None:
    """tls-offload finds every key (read at /keys) but signs only with the key it was granted."""
    keygen = library_for(granular, "keygen").hsm(0)
    granted_label, other_label = _label(), _label()
    granted = keygen.keys.create("RSA", size=2048, private_attributes={"CKA_LABEL": granted_label},
                                 public_attributes={"CKA_LABEL": granted_label})
    keygen.keys.create("RSA", size=2048, private_attributes={"CKA_LABEL": other_label},
                       public_attributes={"CKA_LABEL": other_label})
    access = granular.access_client("admin")
    crypto_user = "Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/" \
                  "21dbd100-6940-42c2-9190-5d6cb909625b"
    assignment = access.create_role_assignment(f"/keys/{granted.name}", crypto_user,
                                               granular.principal("tls-offload")["object_id"])
    try:
        tls = library_for(granular, "tls-offload").hsm(0)
        digest = hashlib.sha256(b"handshake").digest()
        [key] = tls.keys.find(label=granted_label)
        algorithm, sized = signing.pss(digest, "SHA256")
        assert signing.verify(key.public_key, algorithm, sized, tls.keys.sign(key, algorithm, sized))
        [other] = tls.keys.find(label=other_label)
        with pytest.raises(AccessDenied) as denied:
            tls.keys.sign(other, algorithm, sized)
        assert "keys/sign/action" in str(denied.value) and denied.value.request_id
        with pytest.raises(AccessDenied):
            tls.keys.create("EC", curve="P-256")
    finally:
        access.delete_role_assignment(f"/keys/{granted.name}", assignment.name)


def test_deleted_key_is_not_found(emulator: Emulator, library_for: Callable[..., Library]) -> None:
    hsm = library_for(emulator, "keygen").hsm(0)
    label = _label()
    key = hsm.keys.create("EC", curve="P-256", private_attributes={"CKA_LABEL": label})
    emulator.key_client().begin_delete_key(key.name).wait()
    with pytest.raises(NotFound) as missing:
        hsm.keys.sign(key, "ES256", bytes(32))
    assert missing.value.status == 404 and missing.value.code == "KeyNotFound"
    assert hsm.keys.find(label=label) == []


def test_random_bytes_in_chunks(emulator: Emulator, library_for: Callable[..., Library]) -> None:
    hsm = library_for(emulator, "keygen").hsm(0)
    data = hsm.keys.random(300)
    assert len(data) == 300 and data != bytes(300)
