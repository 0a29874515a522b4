"""What a `pkcs11:` URI names: the HSMs, the keys, and the handles the C side holds for them.

A handle is a small integer standing for (slot, key version, private or public side). The same
object always gets the same handle, so nginx re-opening its keys on every reload does not grow
anything. Handles are plain numbers, so they mean the same in a forked worker.
"""

from __future__ import annotations

import base64
import itertools
import re
import threading
from dataclasses import dataclass

from mhsm_core import config as config_module
from mhsm_core.errors import InvalidArgument, NotFound
from mhsm_core.hsm import Hsm, Library
from mhsm_core.keys import HsmKey

from . import uri as uri_module

# OpenSSL's OSSL_STORE_INFO_* numbers, as OSSL_STORE_expect() passes them.
EXPECT_NAME, EXPECT_PUBKEY, EXPECT_PKEY = 1, 3, 4
PEM_LABEL = "MHSM PKCS11 URI"
PEM_BLOCK = re.compile(rf"-----BEGIN {PEM_LABEL}-----\s*(?P<body>[A-Za-z0-9+/=\s]*?)-----END {PEM_LABEL}-----")


@dataclass(frozen=True)
class KeyObject:
    """One side of one HSM key version, as OpenSSL sees it."""

    slot: int
    hsm: Hsm
    key: HsmKey
    side: str  # "private" or "public"

    @property
    def data_type(self) -> str:
        return self.key.kty  # "RSA" or "EC": the keymgmt that loads it

    @property
    def uri(self) -> str:
        attributes = self.key.private_attributes if self.side == "private" else self.key.public_attributes
        return uri_module.build(self.hsm.name, attributes.get("CKA_LABEL"), attributes.get("CKA_ID"), self.side)

    @property
    def description(self) -> str:
        shape = f"RSA {self.key.size}" if self.key.kty == "RSA" else f"EC {self.key.curve}"
        return f"{shape} {self.side} key {self.key.name} in {self.hsm.name} (slot {self.slot})"


@dataclass
class Listing:
    """One open store: what it found, in the order it hands objects out."""

    objects: list[KeyObject]
    names_only: bool
    position: int = 0


class Stores:
    """The provider's state in one process: the core library, open stores and key handles."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conf: str | None = None
        self._pin_source: str | None = None
        self._library: Library | None = None
        self._handles: dict[int, KeyObject] = {}
        self._handle_of: dict[tuple[int, str, str, str], int] = {}
        self._listings: dict[int, Listing] = {}
        self._numbers = itertools.count(1)

    def configure(self, conf: str, pin_source: str) -> None:
        """The provider section's `mhsm-conf` and `mhsm-pin-source` (empty: not set)."""
        self._conf, self._pin_source = conf or None, pin_source or None

    def library(self) -> Library:
        """The core, loaded on first use (in nginx: in the master, before the fork)."""
        with self._lock:
            if self._library is None:
                library = Library(config_module.load(self._conf, flag="mhsm-conf in the provider section"))
                if self._pin_source:
                    pin = uri_module.Pkcs11Uri("", pin_source=self._pin_source).pin()
                    for hsm in library.hsms.values():
                        _login(hsm, pin or "", "mhsm-pin-source")
                self._library = library
            return self._library

    # -- stores ----------------------------------------------------------------------------------

    def open(self, text: str) -> int:
        """Find what the URI names; an unknown label or attribute fails here, with its reason."""
        uri = uri_module.parse(text)
        hsms = self._hsms(uri)
        pin = uri.pin()
        if pin is not None:
            for _, hsm in hsms:
                _login(hsm, pin, "the URI's PIN")
        found = [obj for slot, hsm in hsms for obj in self._objects(slot, hsm, uri)]
        found.sort(key=lambda obj: obj.side != "private")  # the private key first: nginx keeps the first key
        if uri.names_an_object and not found and uri.type in (None, "private", "public"):
            raise NotFound(f"no {uri.type + ' ' if uri.type else ''}key {_describe(uri)} in {', '.join(h.name for _, h in hsms)}; "
                           "list what there is with: openssl storeutl pkcs11:")
        number = next(self._numbers)
        with self._lock:
            self._listings[number] = Listing(found, names_only=not uri.names_an_object)
        return number

    def next(self, number: int, expect: int) -> tuple[str, KeyObject, int] | None:
        """The next object OpenSSL wants: ("name", obj, 0) or ("key", obj, handle); None at the end."""
        listing = self._listings[number]
        while listing.position < len(listing.objects):
            obj = listing.objects[listing.position]
            listing.position += 1
            if listing.names_only:
                return "name", obj, 0
            if expect in (0, EXPECT_NAME) or (expect, obj.side) in ((EXPECT_PKEY, "private"), (EXPECT_PUBKEY, "public")):
                return "key", obj, self.handle(obj)
        return None

    def close(self, number: int) -> None:
        with self._lock:
            self._listings.pop(number, None)

    def handle(self, obj: KeyObject) -> int:
        identity = (obj.slot, obj.key.name, obj.key.version, obj.side)
        with self._lock:
            if identity not in self._handle_of:
                self._handle_of[identity] = next(self._numbers)
            number = self._handle_of[identity]
            self._handles[number] = obj
            return number

    def object(self, handle: int) -> KeyObject:
        try:
            return self._handles[handle]
        except KeyError:
            raise InvalidArgument(f"no key behind handle {handle}") from None

    def decode(self, pem: bytes) -> KeyObject:
        """The private key a PEM-wrapped URI names (what nginx < 1.29 reads as its key file)."""
        match = PEM_BLOCK.search(pem.decode("ascii", "replace"))
        if not match:
            raise InvalidArgument(f"not a '{PEM_LABEL}' PEM block")
        try:
            text = base64.b64decode("".join(match["body"].split()), validate=True).decode("utf-8")
        except ValueError:
            raise InvalidArgument(f"the '{PEM_LABEL}' PEM block does not hold a base64 URI") from None
        number = self.open(text)
        try:
            found = self.next(number, EXPECT_PKEY)
        finally:
            self.close(number)
        if found is None or found[0] != "key":
            raise NotFound(f"{text} names no private key")
        return found[1]

    # -- helpers ---------------------------------------------------------------------------------

    def _hsms(self, uri: uri_module.Pkcs11Uri) -> list[tuple[int, Hsm]]:
        hsms = [(slot, hsm) for slot, hsm in self.library().hsms.items()
                if (uri.slot_id is None or slot == uri.slot_id) and (uri.token is None or hsm.name == uri.token)]
        if not hsms:
            known = ", ".join(f"token={h.name} (slot-id={s})" for s, h in self.library().hsms.items())
            raise NotFound(f"{uri.text}: no configured HSM matches; the configuration has {known}")
        return hsms

    @staticmethod
    def _objects(slot: int, hsm: Hsm, uri: uri_module.Pkcs11Uri) -> list[KeyObject]:
        sides = {None: ("private", "public"), "private": ("private",), "public": ("public",)}.get(uri.type, ())
        if not uri.names_an_object:
            return [KeyObject(slot, hsm, key, side) for key in hsm.keys.keys() for side in sides]
        return [KeyObject(slot, hsm, key, side) for side in sides
                for key in hsm.keys.find(label=uri.object, key_id=uri.id, side=side)]


def _login(hsm: Hsm, pin: str, source: str) -> None:
    if not hsm.login(pin):
        raise InvalidArgument(f"{source} is not '<client-id>:<client-secret>' of a service principal (an empty "
                              "PIN uses MHSM_CLIENT_ID/MHSM_CLIENT_SECRET or the managed identity)")


def _describe(uri: uri_module.Pkcs11Uri) -> str:
    parts = ([f"labelled '{uri.object}'"] if uri.object is not None else []) + \
            ([f"with id {uri.id.hex()}"] if uri.id is not None else [])
    return " and ".join(parts)


def pem(text: str) -> str:
    """The PEM block that wraps a URI, for `ssl_certificate_key /path/key.pem`."""
    body = base64.b64encode(text.encode("utf-8")).decode("ascii")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "\n".join([f"-----BEGIN {PEM_LABEL}-----", *lines, f"-----END {PEM_LABEL}-----", ""])

