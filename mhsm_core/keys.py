"""Keys on one HSM: find by attributes (with a cache), read the public part, create, sign, retag.

The cache keeps what was found for `options.KeyCacheTTL` seconds and what was not found for
`options.NegativeCacheTTL`; a 404 or 403 on a key drops it at once. A signature coming back from the
HSM is verified with the cached public key before anyone sees it.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from . import signing, tags
from .config import Options
from .errors import AccessDenied, HsmError, InvalidArgument, NotFound
from .transport import Call, HsmTransport

RSA_SIZES = (2048, 3072, 4096)
CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-256K": ec.SECP256K1(), "P-384": ec.SECP384R1(),
                                       "P-521": ec.SECP521R1()}
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


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
        private_attributes, public_attributes = tags.from_tags(bundle.get("tags"))
        # A key stored without CKA_ID still gets one, unique to the key: PKCS#11 hosts find a key
        # again by its id (pkcs11-tool --label, pkcs11-provider after a fork), and keys made without
        # --id would otherwise all share the empty one.
        stored_id = private_attributes.get("CKA_ID") or public_attributes.get("CKA_ID") or default_key_id(name)
        private_attributes.setdefault("CKA_ID", stored_id)
        public_attributes.setdefault("CKA_ID", stored_id)
        return cls(name, version, kid, kty, size, curve, public, tuple(jwk.get("key_ops", ())),
                   attributes.get("enabled", True), attributes.get("nbf"), attributes.get("exp"),
                   dict(bundle.get("tags") or {}), private_attributes, public_attributes)


class KeyStore:
    """The keys of one HSM. Thread-safe; shared by every session of every front end."""

    def __init__(self, transport: HsmTransport, options: Options) -> None:
        self._transport = transport
        self._ttl = options.key_cache_ttl
        self._negative_ttl = options.negative_cache_ttl
        self._lock = threading.Lock()
        self._listing: tuple[float, list[dict[str, Any]]] | None = None
        self._keys: dict[str, tuple[float, HsmKey]] = {}
        self._misses: dict[tuple[Any, ...], float] = {}
        # (kid, algorithm) -> the sign call and the start of its body, made once per key version
        self._sign_calls: dict[tuple[str, str], tuple[Call, bytes]] = {}

    # -- reading -------------------------------------------------------------------------------

    def get(self, name: str) -> HsmKey:
        """The latest version of a key, by name."""
        now = time.monotonic()
        cached = self._keys.get(name.lower())
        if cached and cached[0] > now:
            return cached[1]
        try:
            bundle = self._transport.request("GET", f"/keys/{name}/", "get key").body
        except (NotFound, AccessDenied):
            self.invalidate(name)
            raise
        key = HsmKey.from_bundle(bundle)
        with self._lock:
            self._keys[name.lower()] = (now + self._ttl, key)
        return key

    def _list(self, refresh: bool) -> list[dict[str, Any]]:
        now = time.monotonic()
        if not refresh and self._listing and self._listing[0] > now:
            return self._listing[1]
        items: list[dict[str, Any]] = []
        params: dict[str, Any] = {"maxresults": 25}
        path = "/keys"
        while True:
            page = self._transport.request("GET", path, "list keys", params=params).body
            items.extend(page.get("value", []))
            next_link = page.get("nextLink")
            if not next_link:
                break
            # Follow the opaque link, but with our own api-version (the SDKs do the same).
            path, params = _split_next_link(next_link)
        with self._lock:
            self._listing = (now + self._ttl, items)
        return items

    def keys(self, refresh: bool = False, include_foreign: bool = False) -> list[HsmKey]:
        """Every key the library can use (by default only those with p11_ tags), with public parts."""
        found = []
        for item in self._list(refresh):
            if include_foreign or tags.is_library_key(item.get("tags")):
                name = item["kid"].rstrip("/").split("/")[-1]
                try:
                    found.append(self.get(name))
                except (NotFound, AccessDenied):
                    continue
        return found

    def find(self, *, label: str | None = None, key_id: bytes | None = None, kty: str | None = None,
             side: str = "private", include_foreign: bool = False) -> list[HsmKey]:
        """Keys whose stored attributes match; `side` picks the private or the public object's attributes."""
        signature = (label, key_id, kty, side, include_foreign)
        now = time.monotonic()
        if self._misses.get(signature, 0) > now:
            return []
        for refresh in (False, True):  # a miss in the cached listing re-lists once: the key may be new
            matches = [k for k in self.keys(refresh, include_foreign) if _matches(k, label, key_id, kty, side)]
            if matches:
                return matches
        with self._lock:
            self._misses[signature] = now + self._negative_ttl
        return []

    def invalidate(self, name: str | None = None) -> None:
        with self._lock:
            if name is None:
                self._keys.clear()
            else:
                self._keys.pop(name.lower(), None)
            self._listing = None
            self._misses.clear()

    # -- changing ------------------------------------------------------------------------------

    def create(self, kty: str, *, size: int | None = None, curve: str | None = None,
               private_attributes: dict[str, Any] | None = None, public_attributes: dict[str, Any] | None = None,
               key_ops: tuple[str, ...] = ("sign", "verify"), not_before: int | None = None,
               expires: int | None = None) -> HsmKey:
        """Create a key named `p11-<32 hex>`, as the official tool names them."""
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
        body["tags"] = tags.merge({}, private_attributes or {}, public_attributes or {})
        name = f"p11-{uuid.uuid4().hex}"
        key = HsmKey.from_bundle(self._transport.request("POST", f"/keys/{name}/create", "create key", json=body).body)
        self.invalidate()
        with self._lock:
            self._keys[name.lower()] = (time.monotonic() + self._ttl, key)
        return key

    def set_attributes(self, key: HsmKey, private: dict[str, Any], public: dict[str, Any]) -> HsmKey:
        """Change stored attributes (CKA_LABEL, CKA_ID, ...) by updating the key's tags."""
        new_tags = tags.merge(key.tags, private, public)
        bundle = self._transport.request("PATCH", f"/keys/{key.name}/{key.version}", "update key",
                                         json={"tags": new_tags}).body
        updated = HsmKey.from_bundle(bundle)
        self.invalidate(key.name)
        return updated

    def adopt(self, name: str, label: str, key_id: bytes | None = None) -> HsmKey:
        """Give an existing key (not made by this library) the p11_ tags, so it can be found by label."""
        key = self.get(name)
        private: dict[str, Any] = {"CKA_LABEL": label} | ({"CKA_ID": key_id} if key_id else {})
        return self.set_attributes(key, private, dict(private))

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


def default_key_id(name: str) -> bytes:
    """The CKA_ID of a key stored without one: the 16 bytes its `p11-<32 hex>` name carries, or
    for another name the first 16 bytes of its SHA-256."""
    suffix = name[4:] if name.startswith("p11-") else ""
    if len(suffix) == 32 and all(c in "0123456789abcdef" for c in suffix.lower()):
        return bytes.fromhex(suffix)
    return hashlib.sha256(name.encode()).digest()[:16]


def _matches(key: HsmKey, label: str | None, key_id: bytes | None, kty: str | None, side: str) -> bool:
    attributes = key.private_attributes if side == "private" else key.public_attributes
    return ((label is None or attributes.get("CKA_LABEL") == label)
            and (key_id is None or attributes.get("CKA_ID") == key_id)
            and (kty is None or key.kty == kty))


def _split_next_link(link: str) -> tuple[str, dict[str, Any]]:
    """Path and query of a nextLink; the host is ours, so a token never goes to a host a link names."""
    parts = urlsplit(link)
    params = {k: v for k, v in parse_qsl(parts.query) if k != "api-version"}
    return parts.path, params
