"""Finding keys by their PKCS#11 attributes at the cost of the listing, not of a request per key.

The REST API finds a key by its name only; a label or an id is found by listing `/keys`, 25 keys a
page. Each listed item carries the key's tags, and the tags hold the label and the id
(docs/key-model.md), so the listing alone decides which keys match and only those are fetched:
`ceil(N / 25)` list calls and one GET per match, cold. An id that is a key's own name (keys made
without CKA_ID read back the 16 bytes of their `p11-<32 hex>` name) goes straight to that key.

What was listed and fetched is kept for `options.KeyCacheTTL` seconds, and a search that found
nothing for `options.NegativeCacheTTL`. Lookups made at the same time (nginx loading its keys at
start-up, threads in C_FindObjects) share one listing and one GET per key.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Hashable, TypeVar
from urllib.parse import parse_qsl, urlsplit

from . import tags
from .config import Options
from .errors import AccessDenied, KeyMismatch, NotFound
from .transport import HsmTransport

if TYPE_CHECKING:
    from .keys import HsmKey

log = logging.getLogger("mhsm.keys")
PAGE_SIZE = 25  # the service's largest page
T = TypeVar("T")


@dataclass(frozen=True)
class Listed:
    """One key as the listing shows it: its name and what its tags say."""

    name: str
    tags: dict[str, str]
    private: dict[str, Any]
    public: dict[str, Any]

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> "Listed":
        name = item["kid"].rstrip("/").split("/")[-1]
        item_tags = dict(item.get("tags") or {})
        return cls(name, item_tags, *tags.attributes_of(name, item_tags))


@dataclass(frozen=True)
class Query:
    """What a search asks for; `side` picks the private or the public object's attributes."""

    label: str | None = None
    key_id: bytes | None = None
    kty: str | None = None
    side: str = "private"
    include_foreign: bool = False

    def named_key(self) -> str | None:
        return tags.name_of_default_id(self.key_id)

    def _attributes_match(self, key_tags: dict[str, str], attributes: dict[str, Any]) -> bool:
        return ((self.include_foreign or tags.is_library_key(key_tags))
                and (self.label is None or attributes.get("CKA_LABEL") == self.label)
                and (self.key_id is None or attributes.get("CKA_ID") == self.key_id))

    def may_match(self, item: Listed) -> bool:
        """Whether the listed key is worth fetching. Label and id decide; the type tag decides only a
        search by type alone, so that a label's key whose type tag is wrong is fetched and reported."""
        if not self._attributes_match(item.tags, item.private if self.side == "private" else item.public):
            return False
        claimed = item.tags.get(tags.KEY_TYPE)
        by_type_only = self.kty is not None and self.label is None and self.key_id is None
        return not (by_type_only and claimed is not None and claimed.split(" ")[0] != self.kty)

    def matches(self, key: "HsmKey") -> bool:
        attributes = key.private_attributes if self.side == "private" else key.public_attributes
        return self._attributes_match(key.tags, attributes) and (self.kty is None or key.kty == self.kty)


class SingleFlight:
    """Calls made with the same key while one is running wait for it and share its result.

    Hand-written because no library offers it for threads; a fork (nginx's master forks with the
    caches warm) drops calls in flight in the parent, which the child would wait for forever.
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._calls: dict[Hashable, Future[Any]] = {}

    def do(self, key: Hashable, call: Callable[[], T]) -> T:
        if self._pid != os.getpid():  # a forked child: the calls in flight, and the lock, were the parent's
            self._pid, self._lock, self._calls = os.getpid(), threading.Lock(), {}
        with self._lock:
            running = self._calls.get(key)
            if running is None:
                future: Future[Any] = Future()
                self._calls[key] = future
        if running is not None:
            return running.result()
        try:
            future.set_result(call())
        except BaseException as exc:
            future.set_exception(exc)
        finally:
            with self._lock:
                self._calls.pop(key, None)
        return future.result()


class KeyLookup:
    """The reading half of a KeyStore: keys by name, listing, search, and their caches."""

    def __init__(self, transport: HsmTransport, options: Options, parse: Callable[[dict[str, Any]], "HsmKey"]) -> None:
        self._transport = transport
        self._parse = parse
        self._ttl = options.key_cache_ttl
        self._negative_ttl = options.negative_cache_ttl
        self._lock = threading.Lock()
        self._flight = SingleFlight()
        self._generation = 0  # bumped by invalidate, so a listing begun before it is not kept
        self._listing: tuple[float, list[Listed]] | None = None
        self._keys: dict[str, tuple[float, HsmKey]] = {}
        self._absent: dict[str, float] = {}  # names a direct GET found missing
        self._misses: dict[Query, float] = {}

    # -- one key -------------------------------------------------------------------------------

    def get(self, name: str) -> "HsmKey":
        """The latest version of a key, by name; a 404 or 403 drops what is cached about it."""
        try:
            return self._get(name)
        except (NotFound, AccessDenied):
            self.invalidate(name)
            raise

    def _get(self, name: str) -> "HsmKey":
        cached = self._keys.get(name.lower())
        if cached and cached[0] > time.monotonic():
            return cached[1]
        return self._flight.do(("get", name.lower()), lambda: self._fetch(name))

    def _fetch(self, name: str) -> "HsmKey":
        began = time.monotonic()
        key = self._parse(self._transport.request("GET", f"/keys/{name}/", "get key").body)
        self.remember(key, began)
        return key

    def remember(self, key: "HsmKey", now: float | None = None) -> None:
        with self._lock:
            self._keys[key.name.lower()] = ((time.monotonic() if now is None else now) + self._ttl, key)
            self._absent.pop(key.name.lower(), None)

    def _probe(self, name: str) -> "HsmKey | None":
        """The key of that name, or None if there is none; a miss is remembered like a failed search,
        and keeps the listing (the name was a guess, not a key that went away)."""
        now = time.monotonic()
        if self._absent.get(name.lower(), 0) > now:
            return None
        try:
            return self._get(name)
        except NotFound:
            with self._lock:
                self._absent[name.lower()] = now + self._negative_ttl
            return None

    # -- the listing ---------------------------------------------------------------------------

    def _listed(self, refresh: bool) -> tuple[list[Listed], bool]:
        """The listing, and whether it was fetched just now (a miss in a cached one is worth a re-list)."""
        cached = self._listing
        if not refresh and cached and cached[0] > time.monotonic():
            return cached[1], False
        return self._flight.do("list", self._fetch_listing), True

    def _fetch_listing(self) -> list[Listed]:
        began, generation = time.monotonic(), self._generation
        items: list[Listed] = []
        path, params = "/keys", {"maxresults": PAGE_SIZE}
        while True:
            page = self._transport.request("GET", path, "list keys", params=params).body
            items.extend(Listed.from_item(item) for item in page.get("value", []))
            next_link = page.get("nextLink")
            if not next_link:
                break
            # Follow the opaque link, but with our own api-version (the SDKs do the same).
            path, params = _split_next_link(next_link)
        with self._lock:
            if generation == self._generation:
                self._listing = (began + self._ttl, items)
        return items

    def keys(self, refresh: bool = False, include_foreign: bool = False) -> list["HsmKey"]:
        """Every key the library can use (by default only those with p11_ tags), with public parts."""
        listed, _ = self._listed(refresh)
        return self._fetch_all([i for i in listed if include_foreign or tags.is_library_key(i.tags)])[0]

    def _fetch_all(self, listed: list[Listed]) -> tuple[list["HsmKey"], list[KeyMismatch]]:
        """The listed keys that can be read; the ones refused for their tags are logged and returned apart."""
        found, refused = [], []
        for item in listed:
            try:
                found.append(self._get(item.name))
            except (NotFound, AccessDenied):  # deleted since the listing, or not ours to read
                continue
            except KeyMismatch as exc:
                log.warning("%s", exc)
                refused.append(exc)
        return found, refused

    # -- search --------------------------------------------------------------------------------

    def find(self, query: Query) -> list["HsmKey"]:
        """Keys matching the query: the key an id names, else the listed keys whose tags match."""
        now = time.monotonic()
        if self._misses.get(query, 0) > now:
            return []
        named = query.named_key()
        if named is not None:
            key = self._probe(named)
            if key is not None and query.matches(key):
                return [key]
        refused: list[KeyMismatch] = []
        for refresh in (False, True):  # a miss in a cached listing re-lists once: the key may be new
            listed, fresh = self._listed(refresh)
            fetched, refused = self._fetch_all([item for item in listed if query.may_match(item)])
            matches = [key for key in fetched if query.matches(key)]
            if matches:
                return matches
            if fresh:
                break
        if refused:  # the only keys that answer the search are ones whose tags lie: say so, do not hide them
            raise KeyMismatch("; ".join(str(exc) for exc in refused))
        with self._lock:
            self._misses[query] = now + self._negative_ttl
        return []

    def invalidate(self, name: str | None = None) -> None:
        with self._lock:
            if name is None:
                self._keys.clear()
            else:
                self._keys.pop(name.lower(), None)
            self._generation += 1
            self._listing = None
            self._misses.clear()
            self._absent.clear()


def _split_next_link(link: str) -> tuple[str, dict[str, Any]]:
    """Path and query of a nextLink; the host is ours, so a token never goes to a host a link names."""
    parts = urlsplit(link)
    params = {k: v for k, v in parse_qsl(parts.query) if k != "api-version"}
    return parts.path, params
