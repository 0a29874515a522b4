"""Keys on one HSM: find by attributes (with a cache), read the public part, create, sign, retag.

Finding and its caches are in lookup.py. A signature coming back from the HSM is verified with the
cached public key before anyone sees it.
"""

from __future__ import annotations

import base64
import dataclasses
import uuid
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from . import signing, tags
from .config import Options
from .errors import AccessDenied, HsmError, InvalidArgument, KeyMismatch, NotFound
from .lookup import KeyLookup, Query
from .transport import Call, HsmTransport

RSA_SIZES = (2048, 3072, 4096)
CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-256K": ec.SECP256K1(), "P-384": ec.SECP384R1(),
                                       "P-521": ec.SECP521R1()}
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class HsmKey:
    """One key version as the library sees it: the public part, its limits, and its stored attributes."""

    name: str
    version: str
    kid: str
    kty: str  # "RSA" or "EC"
    size: int  # RSA modulus bits, or EC field bits
    curve: str | None
    public_key: PublicKey = field(repr=False)
    key_ops: tuple[str, ...]
    enabled: bool
    not_before: int | None
    expires: int | None
    tags: dict[str, str] = field(repr=False)
    private_attributes: dict[str, Any] = field(repr=False)
    public_attributes: dict[str, Any] = field(repr=False)

    @property
    def description(self) -> str:
        return describe(self.kty, self.size, self.curve)

    @property
    def label(self) -> str | None:
        return self.private_attributes.get("CKA_LABEL")

    @property
    def key_id(self) -> bytes | None:
        return self.private_attributes.get("CKA_ID")

    @classmethod
    def from_bundle(cls, bundle: dict[str, Any]) -> "HsmKey":
        jwk, attributes = bundle["key"], bundle.get("attributes", {})
        kid = jwk["kid"]
        name, version = kid.rstrip("/").split("/")[-2:]
        public: PublicKey
        if jwk["kty"].startswith("RSA"):
            n = int.from_bytes(b64url_decode(jwk["n"]), "big")
            public = rsa.RSAPublicNumbers(int.from_bytes(b64url_decode(jwk["e"]), "big"), n).public_key()
            kty, size, curve = "RSA", n.bit_length(), None
        else:
            curve = jwk["crv"]
            public = ec.EllipticCurvePublicNumbers(int.from_bytes(b64url_decode(jwk["x"]), "big"),
                                                   int.from_bytes(b64url_decode(jwk["y"]), "big"),
                                                   CURVES[curve]).public_key()
            kty, size = "EC", public.curve.key_size
        claimed = (bundle.get("tags") or {}).get(tags.KEY_TYPE)
        if claimed is not None and claimed != describe(kty, size, curve):
            raise KeyMismatch(f"key {name}: its tag {tags.KEY_TYPE} says '{claimed}' but the key is "
                              f"{describe(kty, size, curve)}; it is not used until the tag is corrected or removed")
        private_attributes, public_attributes = tags.attributes_of(name, bundle.get("tags"))
        return cls(name, version, kid, kty, size, curve, public, tuple(jwk.get("key_ops", ())),
                   attributes.get("enabled", True), attributes.get("nbf"), attributes.get("exp"),
                   dict(bundle.get("tags") or {}), private_attributes, public_attributes)


class KeyStore:
    """The keys of one HSM. Thread-safe; shared by every session of every front end."""

    def __init__(self, transport: HsmTransport, options: Options) -> None:
        self._transport = transport
        self._lookup = KeyLookup(transport, options, HsmKey.from_bundle)
        # (kid, algorithm) -> the sign call and the start of its body, made once per key version
        self._sign_calls: dict[tuple[str, str], tuple[Call, bytes]] = {}

    # -- reading (mhsm_core/lookup.py) -----------------------------------------------------------

    def get(self, name: str) -> HsmKey:
        """The latest version of a key, by name."""
        return self._lookup.get(name)

    def keys(self, refresh: bool = False, include_foreign: bool = False) -> list[HsmKey]:
        """Every key the library can use (by default only those with p11_ tags), with public parts."""
        return self._lookup.keys(refresh, include_foreign)

    def find(self, *, label: str | None = None, key_id: bytes | None = None, kty: str | None = None,
             side: str = "private", include_foreign: bool = False) -> list[HsmKey]:
        """Keys whose stored attributes match; `side` picks the private or the public object's attributes."""
        return self._lookup.find(Query(label, key_id, kty, side, include_foreign))

    def invalidate(self, name: str | None = None) -> None:
        self._lookup.invalidate(name)

    # -- changing ------------------------------------------------------------------------------

    def create(self, kty: str, *, size: int | None = None, curve: str | None = None,
               private_attributes: dict[str, Any] | None = None, public_attributes: dict[str, Any] | None = None,
               key_ops: tuple[str, ...] = ("sign", "verify"), not_before: int | None = None,
               expires: int | None = None, own_tags: dict[str, str] | None = None) -> HsmKey:
        """Create a key named `p11-<32 hex>`, as the official tool names them; `own_tags` are kept
        as they are, beside the attribute tags (a front end's marks, e.g. a session key's owner)."""
        body: dict[str, Any] = {"key_ops": list(key_ops)}
        if kty == "RSA":
            if size not in RSA_SIZES:
                raise InvalidArgument(f"RSA keys are 2048, 3072 or 4096 bits, not {size}")
            body |= {"kty": "RSA-HSM", "key_size": size, "public_exponent": 65537}
        elif kty == "EC":
            if curve not in CURVES:
                raise InvalidArgument(f"EC keys use P-256, P-256K, P-384 or P-521, not {curve}")
            body |= {"kty": "EC-HSM", "crv": curve}
        else:
            raise InvalidArgument(f"key type {kty} is not RSA or EC")
        attributes: dict[str, Any] = {"enabled": True, "exportable": False}
        if not_before is not None:
            attributes["nbf"] = not_before
        if expires is not None:
            attributes["exp"] = expires
        body["attributes"] = attributes
        body["tags"] = tags.merge({**(own_tags or {}), **tags.key_type_tag(describe(kty, size, curve))},
                                  private_attributes or {}, public_attributes or {})
        name = f"p11-{uuid.uuid4().hex}"
        key = HsmKey.from_bundle(self._transport.request("POST", f"/keys/{name}/create", "create key", json=body).body)
        self.invalidate()
        self._lookup.remember(key)
        return key

    def set_attributes(self, key: HsmKey, private: dict[str, Any], public: dict[str, Any]) -> HsmKey:
        """Change stored attributes (CKA_LABEL, CKA_ID, ...) by updating the key's tags."""
        new_tags = tags.merge(key.tags, private, public)
        bundle = self._transport.request("PATCH", f"/keys/{key.name}/{key.version}", "update key",
                                         json={"tags": new_tags}).body
        updated = HsmKey.from_bundle(bundle)
        self.invalidate(key.name)
        return updated

    def destroy(self, key: HsmKey) -> None:
        """Delete a key and purge it, so nothing is left soft-deleted (the name can never be reused
        anyway). A purge the identity may not do (Crypto User has no `deletedKeys/delete`) raises
        AccessDenied with the key deleted but recoverable until the HSM's retention ends."""
        self.invalidate(key.name)
        try:
            self._transport.request("DELETE", f"/keys/{key.name}", "delete key")
        except NotFound:
            pass  # already gone
        self._transport.request("DELETE", f"/deletedkeys/{key.name}", "purge key")

    def adopt(self, name: str, label: str, key_id: bytes | None = None) -> HsmKey:
        """Give an existing key (not made by this library) the p11_ tags, so it can be found by label."""
        key = self.get(name)
        private: dict[str, Any] = {"CKA_LABEL": label} | ({"CKA_ID": key_id} if key_id else {})
        typed = dataclasses.replace(key, tags=tags.key_type_tag(key.description) | key.tags)
        return self.set_attributes(typed, private, dict(private))

    # -- signing -------------------------------------------------------------------------------

    def sign(self, key: HsmKey, algorithm: str, digest: bytes) -> bytes:
        """Sign a digest with the key's version; returns the HSM's raw signature, checked locally."""
        prepared = self._sign_calls.get((key.kid, algorithm))
        if prepared is None:
            call = self._transport.prepare("POST", f"/keys/{key.name}/{key.version}/sign", "sign")
            prepared = self._sign_calls[(key.kid, algorithm)] = (call, b'{"alg":"%s","value":"' % algorithm.encode())
        call, head = prepared
        try:
            response = self._transport.send(call, head + base64.urlsafe_b64encode(digest).rstrip(b"=") + b'"}')
        except (NotFound, AccessDenied):
            self.invalidate(key.name)
            raise
        signature = b64url_decode(response.body["value"])
        if not signing.verify(key.public_key, algorithm, digest, signature):
            raise HsmError(f"sign: the HSM's {algorithm} signature does not verify with the public key of "
                           f"{key.name}", request_id=response.request_id, operation="sign")
        return signature

    def random(self, count: int) -> bytes:
        """Random bytes from the HSM, in requests of at most 128 bytes (the service's limit)."""
        out = bytearray()
        while len(out) < count:
            chunk = min(128, count - len(out))
            out += b64url_decode(self._transport.request("POST", "/rng", "rng", json={"count": chunk}).body["value"])
        return bytes(out)


def describe(kty: str, size: int, curve: str | None) -> str:
    """A key's type and curve or size as the KEY_TYPE tag holds them: "EC P-256", "RSA 2048"."""
    return f"{kty} {curve or size}"
