"""The official library's connection cache (one pool per HSM), bounded timeouts, retries with
backoff within a budget, and fork awareness.

- Pool size is `ConnectionCache.MaxConnections`; `ConnectionCache.Disable` turns keep-alive off.
- TLS verification is on unless `options.DisableTLSAuthentication`; `options.CAFile` replaces the
  trust store (the emulator's CA in tests).
- 429, 503, other 5xx, resets and timeouts are retried with exponential backoff and jitter,
  honouring `Retry-After`, within `options.RetryBudget` seconds and `options.MaxRetries` retries.
- After a fork the child abandons the parent's client without closing it: closing would write TLS
  close_notify records on sockets the parent still uses. It builds its own on first use.
"""

from __future__ import annotations

import logging
import os
import random
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

import httpx

from .config import ConnectionCache, Options
from .errors import AccessDenied, BadRequest, HsmError, HsmUnavailable, NotFound

API_VERSION = "7.5"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
BACKOFF_BASE, BACKOFF_CAP = 0.25, 4.0
log = logging.getLogger("mhsm.transport")


@dataclass(frozen=True)
class Response:
    status: int
    body: Any
    request_id: str | None


def tls_context(options: Options) -> ssl.SSLContext | bool:
    """The trust decision, made once (the worker of a forked server may not read the CA file later)."""
    if options.disable_tls_authentication:
        log.warning("TLS verification of the HSM is DISABLED by options.DisableTLSAuthentication")
        return False
    if options.ca_file:
        return ssl.create_default_context(cafile=options.ca_file)
    return ssl.create_default_context()


class ClientPool:
    """`size` httpx clients of one connection each, lent to one caller at a time, newest first.

    Why not one httpx.Client with max_connections=size: httpcore's pool takes one lock around
    every request and every response close, and under it checks each idle connection with a
    select() call. With 16 signing threads a profile spent a third of the time waiting on that
    lock and the module reached half the signing rate of a client per thread (docs/performance.md).
    Here a caller holds its client's only connection alone: nothing is shared but this list.
    """

    def __init__(self, factory: Callable[[], httpx.Client], size: int) -> None:
        self._factory, self._size = factory, size
        self._idle: list[httpx.Client] = []
        self._made = 0
        self._available = threading.Condition()

    @contextmanager
    def client(self) -> Iterator[httpx.Client]:
        with self._available:
            while not self._idle and self._made >= self._size:
                self._available.wait()
            if self._idle:
                client = self._idle.pop()
            else:
                client, self._made = None, self._made + 1
        if client is None:
            try:
                client = self._factory()
            except BaseException:
                with self._available:
                    self._made -= 1
                    self._available.notify()
                raise
        try:
            yield client
        finally:
            with self._available:
                self._idle.append(client)
                self._available.notify()


class HsmTransport:
    """Sends authenticated JSON requests to one HSM and turns failures into typed errors."""

    def __init__(self, base_url: str, options: Options, cache: ConnectionCache,
                 bearer: Callable[[bool], str]) -> None:
        """`bearer(force_refresh)` returns an access token for the HSM audience."""
        self.base_url = base_url.rstrip("/")
        self._options = options
        self._cache = cache
        self._bearer = bearer
        self._verify = tls_context(options)
        self._lock = threading.Lock()
        self._pool: ClientPool | None = None
        self._pid = os.getpid()
        self._abandoned: list[ClientPool] = []

    def _new_client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, verify=self._verify,
            timeout=httpx.Timeout(self._options.request_timeout, connect=self._options.connect_timeout),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=0 if self._cache.disable else 1),
            headers={"Connection": "close"} if self._cache.disable else None)

    def _http(self) -> ClientPool:
        if self._pool is not None and self._pid == os.getpid():
            return self._pool
        with self._lock:
            if self._pid != os.getpid():
                # A forked child: keep a reference so the parent's sockets are never closed from here.
                if self._pool is not None:
                    self._abandoned.append(self._pool)
                self._pool, self._pid = None, os.getpid()
            if self._pool is None:
                self._pool = ClientPool(self._new_client, self._cache.max_connections)
            return self._pool

    def challenge(self) -> str | None:
        """Send the bodiless, token-less call the service answers with its `WWW-Authenticate` challenge."""
        try:
            with self._http().client() as http:
                response = http.get("/keys", params={"api-version": API_VERSION, "maxresults": 1})
        except httpx.HTTPError as exc:
            raise HsmUnavailable(f"cannot reach the HSM at {self.base_url}: {exc}", operation="challenge") from None
        return response.headers.get("www-authenticate")

    def request(self, method: str, path: str, operation: str, *, json: Any = None,
                params: dict[str, Any] | None = None) -> Response:
        """One logical call; retried within the budget; raises HsmError subclasses."""
        query = {"api-version": API_VERSION, **(params or {})}
        deadline = time.monotonic() + self._options.retry_budget
        attempt, refreshed = 0, False
        while True:
            attempt += 1
            failure: HsmError
            retry_after: float | None = None
            try:
                bearer = self._bearer(False)
                with self._http().client() as http:
                    response = http.request(method, path, json=json, params=query,
                                            headers={"Authorization": f"Bearer {bearer}"})
            except httpx.TransportError as exc:
                failure = HsmUnavailable(f"{operation}: cannot reach the HSM at {self.base_url} "
                                         f"({type(exc).__name__}: {exc})", operation=operation)
            else:
                request_id = response.headers.get("x-ms-request-id")
                if response.status_code < 400:
                    body = response.json() if response.content else None
                    return Response(response.status_code, body, request_id)
                if response.status_code == 401 and not refreshed:
                    refreshed = True  # a token the HSM refused: get a fresh one, once
                    self._bearer(True)
                    continue
                failure = self._error(response, operation)
                if response.status_code not in RETRY_STATUSES:
                    raise failure
                retry_after = _retry_after(response.headers.get("retry-after"))
            delay = retry_after if retry_after is not None else _backoff(attempt)
            if attempt > self._options.max_retries or time.monotonic() + delay > deadline:
                raise failure
            log.warning("%s: %s; retry %d in %.2fs", operation, failure, attempt, delay)
            time.sleep(delay)

    @staticmethod
    def _error(response: httpx.Response, operation: str) -> HsmError:
        try:
            error = response.json().get("error") or {}
        except ValueError:
            error = {}
        code = error.get("code") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        status = response.status_code
        kind = {400: BadRequest, 401: HsmError, 403: AccessDenied, 404: NotFound, 409: BadRequest}.get(
            status, HsmUnavailable if status in RETRY_STATUSES else HsmError)
        text = message or response.reason_phrase or "error"
        return kind(f"{operation}: {text}", status=status, code=code,
                    request_id=response.headers.get("x-ms-request-id"), operation=operation)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _backoff(attempt: int) -> float:
    """Exponential backoff with full jitter, so many workers do not retry in step."""
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1)))
