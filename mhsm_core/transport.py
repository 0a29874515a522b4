"""HTTPS to one HSM on libcurl (pycurl): the official library's connection cache, timeouts, TLS
verification, proxies, retries within a budget (retry.py), and fork awareness.

Why libcurl: a sign request through httpx cost the host 1.1 ms of CPU, most of it in the HTTP
library and with the GIL held; a prepared libcurl handle costs about a sixth of that and runs the
network wait and TLS with the GIL released (docs/performance.md, figure 9).

- `ConnectionCache.MaxConnections` prepared easy handles of one connection each (MAXCONNECTS 1),
  lent to one caller at a time; `ConnectionCache.Disable`: a new connection for every request.
- `options.CAFile` (or the system trust store) is read once, here, into memory and handed to
  libcurl as a blob: a forked worker that has dropped privileges or chrooted never reads it again.
- HTTPS_PROXY / https_proxy, ALL_PROXY and NO_PROXY / no_proxy are honoured as libcurl does.
- `log.module.curl.Level` `Verbose` sends libcurl's trace to our log (hex with `DisplayAsHex`),
  scrubbed like every other line; `Info` sends only its informational text.
- After a fork the child never touches the parent's handles: it leaks them on purpose (their
  clean-up would read from and write a TLS close_notify on sockets the parent still uses) and
  builds its own on first use.
"""

from __future__ import annotations

import ctypes
import itertools
import json as jsonlib
import logging
import os
import re
import ssl
import threading
import time
import uuid
import weakref
from typing import Any, Callable
from urllib.parse import urlencode

import pycurl

from . import log as log_module
from .config import ConnectionCache, Log, Options
from .errors import AccessDenied, BadRequest, HsmError, HsmUnavailable, NotFound
from .retry import RETRY_STATUSES, Attempts, RetryPolicy, retry_after_seconds

API_VERSION = "7.5"
USER_AGENT = f"mhsm-tls-offload/0.1 {pycurl.version.split()[1]}"
JSON_HEADERS = [b"Content-Type: application/json", b"Accept: application/json", b"Expect:"]
# libcurl results that no retry can change: a certificate or URL that is wrong stays wrong.
FATAL_CURL_ERRORS = frozenset({pycurl.E_PEER_FAILED_VERIFICATION, pycurl.E_SSL_CACERT_BADFILE,
                               pycurl.E_SSL_CERTPROBLEM, pycurl.E_URL_MALFORMAT, pycurl.E_UNSUPPORTED_PROTOCOL})
ELAPSED = re.compile(r" after \d+ (?:ms|milliseconds)(?: with \d+ (?:out of -?\d+ )?bytes received)?")
log = logging.getLogger("mhsm.transport")
curl_log = logging.getLogger("mhsm.curl")


class Response:
    """A decoded answer: status, JSON body, and the raw header lines (parsed only when asked)."""

    __slots__ = ("status", "body", "headers")

    def __init__(self, status: int, body: Any, headers: list[bytes]) -> None:
        self.status, self.body, self.headers = status, body, headers

    def header(self, name: str) -> str | None:
        """The last value of a header of the last response (a proxy's CONNECT answer comes first)."""
        wanted = name.lower().encode() + b":"
        for line in reversed(self.headers):
            if line[:len(wanted)].lower() == wanted:
                return line[len(wanted):].strip().decode("latin-1")
            if line.startswith(b"HTTP/"):
                break
        return None

    @property
    def request_id(self) -> str | None:
        return self.header("x-ms-request-id")

    @property
    def reason(self) -> str:
        for line in reversed(self.headers):
            if line.startswith(b"HTTP/"):
                return line.split(b" ", 2)[-1].strip().decode("latin-1") if line.count(b" ") >= 2 else ""
        return ""


class Call:
    """A request made ready once (method, URL, what it is called in errors) and sent many times."""

    __slots__ = ("method", "url", "operation")

    def __init__(self, method: str, url: str, operation: str) -> None:
        self.method, self.url, self.operation = method, url.encode(), operation


def trust_store(options: Options) -> bytes | None:
    """The PEM bytes of the CAs to trust, read now and never again; None when verification is off."""
    if options.disable_tls_authentication:
        log.warning("TLS verification of the HSM is DISABLED by options.DisableTLSAuthentication")
        return None
    path = options.ca_file or ssl.get_default_verify_paths().cafile
    try:
        with open(path, "rb") as pem:
            return pem.read()
    except (OSError, TypeError) as exc:
        where = "options.CAFile" if options.ca_file else "the system trust store"
        raise HsmError(f"cannot read {where} ({path}: {getattr(exc, 'strerror', exc)}); set options.CAFile to a "
                       "readable PEM file of the CAs that issued the HSM's certificate") from None


class _Handle:
    """One prepared easy handle: its connection, and the buffers its callbacks fill."""

    __slots__ = ("curl", "body", "headers", "method")

    def __init__(self, curl: pycurl.Curl) -> None:
        self.curl, self.body, self.headers, self.method = curl, [], [], ""
        curl.setopt(pycurl.WRITEFUNCTION, self.body.append)
        curl.setopt(pycurl.HEADERFUNCTION, self.headers.append)


class HandlePool:
    """`size` handles, made on first need, lent newest first (a warm connection is reused first).

    A caller holds its handle's only connection alone, so nothing is shared but this list and no
    lock is held while a request runs.
    """

    def __init__(self, factory: Callable[[], _Handle], size: int) -> None:
        self._factory, self._size = factory, size
        self._idle: list[_Handle] = []
        self.made: list[_Handle] = []
        self._available = threading.Condition()

    def acquire(self) -> _Handle:
        with self._available:
            while not self._idle and len(self.made) >= self._size:
                self._available.wait()
            if self._idle:
                return self._idle.pop()
            handle = self._factory()
            self.made.append(handle)
            return handle

    def release(self, handle: _Handle) -> None:
        with self._available:
            self._idle.append(handle)
            self._available.notify()


_LIVE: "weakref.WeakSet[HsmTransport]" = weakref.WeakSet()
_KEPT: list[Any] = []  # what forked children inherited and must never free


def _abandon(handles: list[_Handle]) -> None:
    """Make inherited handles immortal: freeing one runs curl_easy_cleanup, which reads from and writes a
    close_notify on a connection the parent still uses, and even a module-level list is emptied when
    the interpreter shuts down. A reference the interpreter does not know about is never dropped."""
    for handle in handles:
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(handle.curl))
    _KEPT.extend(handles)


def _after_fork_in_child() -> None:
    """Runs in a forked child before anything else (os.register_at_fork): drop the parent's pools
    without taking a lock another thread of the parent may have held at the fork."""
    for transport in list(_LIVE):
        transport._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


class HsmTransport:
    """Sends authenticated JSON requests to one HSM and turns failures into typed errors."""

    def __init__(self, base_url: str, options: Options, cache: ConnectionCache,
                 bearer: Callable[[bool], str], log_settings: Log | None = None) -> None:
        """`bearer(force_refresh)` returns an access token for the HSM audience."""
        self.base_url = base_url.rstrip("/")
        self._options, self._cache = options, cache
        self._bearer = bearer
        self._policy = RetryPolicy(options.retry_budget, options.max_retries, options.request_timeout)
        self._ca = trust_store(options)
        curl = log_settings.curl_level.lower() if log_settings else "off"
        self._trace = curl in ("info", "verbose")
        self._trace_all = curl == "verbose"
        self._hex = bool(log_settings and log_settings.curl_display_as_hex)
        self._debug = log.isEnabledFor(logging.DEBUG)  # FunctionLevelTrace: every request, as httpx logged them
        self._lock = threading.Lock()
        self._pool: HandlePool | None = None
        self._pid = os.getpid()
        self._token: str | None = None
        self._authorization = b""
        # x-ms-client-request-id of each call: a random prefix and a counter, cheaper than a uuid4 a call.
        self._id_prefix = str(uuid.uuid4())[:-8]
        self._calls = itertools.count(1)
        _LIVE.add(self)

    # -- handles -------------------------------------------------------------------------------

    def _new_handle(self) -> _Handle:
        curl = pycurl.Curl()
        handle = _Handle(curl)
        options = self._options
        curl.setopt(pycurl.NOSIGNAL, 1)  # threads: no SIGALRM for timeouts
        curl.setopt(pycurl.MAXCONNECTS, 1)
        curl.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        curl.setopt(pycurl.SSLVERSION, pycurl.SSLVERSION_TLSv1_2)
        curl.setopt(pycurl.CONNECTTIMEOUT_MS, int(options.connect_timeout * 1000))
        curl.setopt(pycurl.TCP_KEEPALIVE, 1)
        curl.setopt(pycurl.USERAGENT, USER_AGENT)
        if self._cache.disable:
            curl.setopt(pycurl.FORBID_REUSE, 1)
            curl.setopt(pycurl.FRESH_CONNECT, 1)
        if self._ca is None:
            curl.setopt(pycurl.SSL_VERIFYPEER, 0)
            curl.setopt(pycurl.SSL_VERIFYHOST, 0)
        else:
            curl.setopt(pycurl.CAINFO_BLOB, self._ca)
            curl.unsetopt(pycurl.CAINFO)  # no file: not the built-in bundle path, not a CA directory
            curl.unsetopt(pycurl.CAPATH)
        if self._trace:
            curl.setopt(pycurl.VERBOSE, 1)
            curl.setopt(pycurl.DEBUGFUNCTION, self._curl_trace)
        return handle

    def _handles(self) -> HandlePool:
        pool = self._pool
        if pool is not None and self._pid == os.getpid():
            return pool
        with self._lock:
            if self._pid != os.getpid():  # forked without the at-fork hook (it runs only in CPython's fork)
                self._forked()
            if self._pool is None:
                self._pool = HandlePool(self._new_handle, self._cache.max_connections)
            return self._pool

    def _forked(self) -> None:
        if self._pool is not None:
            _abandon(self._pool.made)
        self._pool, self._pid, self._lock = None, os.getpid(), threading.Lock()

    def _curl_trace(self, kind: int, data: bytes) -> None:
        """libcurl's verbose trace, scrubbed before anything else (a hex dump would hide a token
        from the scrubber); TLS records are binary noise and are left out."""
        if kind in (pycurl.INFOTYPE_SSL_DATA_IN, pycurl.INFOTYPE_SSL_DATA_OUT):
            return
        if kind != pycurl.INFOTYPE_TEXT and not self._trace_all:
            return
        text = log_module.scrub(data.decode("latin-1"))
        prefix = {pycurl.INFOTYPE_TEXT: "*", pycurl.INFOTYPE_HEADER_IN: "<", pycurl.INFOTYPE_HEADER_OUT: ">",
                  pycurl.INFOTYPE_DATA_IN: "<=", pycurl.INFOTYPE_DATA_OUT: "=>"}.get(kind, "?")
        if self._hex:  # one record per chunk, as `curl --trace` prints it
            raw = text.encode("latin-1")
            rows = [f"  {offset:04x}: {raw[offset:offset + 16].hex(' '):<47} "
                    + "".join(chr(b) if 32 <= b < 127 else "." for b in raw[offset:offset + 16])
                    for offset in range(0, len(raw), 16)]
            curl_log.info("%s %d bytes\n%s", prefix, len(raw), "\n".join(rows))
        else:
            for line in text.splitlines():
                curl_log.info("%s %s", prefix, line)

    # -- requests ------------------------------------------------------------------------------

    def prepare(self, method: str, path: str, operation: str, params: dict[str, Any] | None = None) -> Call:
        """A request to send many times (the sign of one key): its URL is built once."""
        query = urlencode({"api-version": API_VERSION, **(params or {})})
        return Call(method, f"{self.base_url}{path}?{query}", operation)

    def challenge(self) -> str | None:
        """Send the bodiless, token-less call the service answers with its `WWW-Authenticate` challenge."""
        call = self.prepare("GET", "/keys", "challenge", {"maxresults": 1})
        attempts = self._policy.begin(time.monotonic())
        pool = self._handles()
        handle = pool.acquire()
        try:
            status, failure, _ = self._perform(handle, call, None, list(JSON_HEADERS), attempts, None)
            if failure is not None:
                raise failure
            return Response(status, None, handle.headers[:]).header("www-authenticate")
        finally:
            pool.release(handle)

    def request(self, method: str, path: str, operation: str, *, json: Any = None,
                params: dict[str, Any] | None = None, timeout: float | None = None) -> Response:
        """One logical call; retried within the budget; raises HsmError subclasses."""
        body = jsonlib.dumps(json, separators=(",", ":")).encode() if json is not None else None
        return self.send(self.prepare(method, path, operation, params), body, timeout=timeout)

    def send(self, call: Call, body: bytes | None = None, *, timeout: float | None = None) -> Response:
        """Send a prepared call with a JSON body; retried within RetryBudget (and `timeout`, the
        caller's limit in seconds); raises HsmError subclasses naming the request ids."""
        attempts = self._policy.begin(time.monotonic(), timeout)
        client_id = f"{self._id_prefix}{next(self._calls) & 0xFFFFFFFF:08x}"
        refreshed = False
        while True:
            token = self._bearer(False)
            if token is not self._token:  # rebuilt only when the token changes
                self._token, self._authorization = token, f"Authorization: Bearer {token}".encode()
            headers = [self._authorization, *JSON_HEADERS, f"x-ms-client-request-id: {client_id}".encode()]
            retry_after: float | None = None
            pool = self._handles()
            handle = pool.acquire()
            try:
                status, failure, retryable = self._perform(handle, call, body, headers, attempts, client_id)
                if failure is None:
                    data = b"".join(handle.body)
                    response = Response(status, None, handle.headers[:])
                    if status < 400:
                        response.body = jsonlib.loads(data) if data else None
                        return response
                    if status == 401 and not refreshed:
                        refreshed = True  # a token the HSM refused: get a fresh one, once
                        self._bearer(True)
                        continue
                    failure = self._error(response, data, call.operation, client_id)
                    retryable = status in RETRY_STATUSES
                    retry_after = retry_after_seconds(response.header("retry-after"))
            finally:
                pool.release(handle)
            delay = attempts.pause(time.monotonic(), retry_after) if retryable else None
            if delay is None:
                raise failure
            log.warning("%s: %s; retry %d in %.2fs", call.operation, failure, attempts.retries, delay)
            time.sleep(delay)

    def _perform(self, handle: _Handle, call: Call, body: bytes | None, headers: list[bytes],
                 attempts: Attempts, client_id: str | None) -> tuple[int, HsmError | None, bool]:
        """One attempt on one handle: (status, None, _) with the answer in the handle's buffers, or
        (0, the error, whether a retry may help) when no answer came. The GIL is released while
        libcurl waits."""
        curl = handle.curl
        handle.body.clear()
        handle.headers.clear()
        if call.method != handle.method:
            curl.setopt(pycurl.HTTPGET if call.method == "GET" else pycurl.POST, 1)
            curl.setopt(pycurl.CUSTOMREQUEST, call.method if call.method not in ("GET", "POST") else None)
            handle.method = call.method
        if call.method != "GET":
            curl.setopt(pycurl.POSTFIELDS, body or b"")
        curl.setopt(pycurl.URL, call.url)
        curl.setopt(pycurl.HTTPHEADER, headers)
        curl.setopt(pycurl.TIMEOUT_MS, int(attempts.attempt_timeout(time.monotonic()) * 1000))
        try:
            curl.perform()
            if self._debug:
                log.debug("%s %s: HTTP %s", call.method, call.url.decode(), curl.getinfo(pycurl.RESPONSE_CODE))
        except pycurl.error as exc:
            code, message = exc.args[0], str(exc.args[1]) if len(exc.args) > 1 else ""
            # libcurl says how long it tried ("after 3 ms"): noise that would make one error two lines.
            message = ELAPSED.sub("", message)
            if code == pycurl.E_PEER_FAILED_VERIFICATION:
                trusted = "options.CAFile" if self._options.ca_file else "the system trust store"
                text = (f"the HSM at {self.base_url} presented a certificate that does not verify against {trusted} "
                        f"(libcurl error {code}: {message}); set options.CAFile to the CA that issued it")
            else:
                text = f"cannot reach the HSM at {self.base_url} (libcurl error {code}: {message})"
            failure = HsmUnavailable(f"{call.operation}: {text}", operation=call.operation,
                                     client_request_id=client_id)
            return 0, failure, code not in FATAL_CURL_ERRORS
        return curl.getinfo(pycurl.RESPONSE_CODE), None, False

    @staticmethod
    def _error(response: Response, data: bytes, operation: str, client_id: str) -> HsmError:
        try:
            error = jsonlib.loads(data).get("error") or {}
        except (ValueError, AttributeError):
            error = {}
        code = error.get("code") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        status = response.status
        kind = {400: BadRequest, 401: HsmError, 403: AccessDenied, 404: NotFound, 409: BadRequest}.get(
            status, HsmUnavailable if status in RETRY_STATUSES else HsmError)
        return kind(f"{operation}: {message or response.reason or 'error'}", status=status, code=code,
                    request_id=response.request_id, operation=operation, client_request_id=client_id)
