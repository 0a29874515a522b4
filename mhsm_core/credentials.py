"""The credential chain, through azure-identity, and a token cache in front of it.

Order: a service principal handed over as the PIN (`<client-id>:<client-secret>`, our extension),
then `MHSM_CLIENT_ID` / `MHSM_CLIENT_SECRET`, then the managed identity when the config enables it
(user-assigned when `msi.MSIClientID` is set, system-assigned otherwise). Only explicit credential
classes are used, never DefaultAzureCredential: it would spawn `az` and other processes.
"""

from __future__ import annotations

import logging
import os
import random
import re
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import requests
from azure.core.exceptions import AzureError, ClientAuthenticationError, ServiceRequestError, ServiceResponseError
from azure.core.pipeline.transport import RequestsTransport
from azure.identity import ClientSecretCredential, CredentialUnavailableError, ManagedIdentityCredential

from .config import Config
from .errors import AuthenticationError

SCOPE = "https://managedhsm.azure.net/.default"
DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
CLIENT_ID_ENV, CLIENT_SECRET_ENV = "MHSM_CLIENT_ID", "MHSM_CLIENT_SECRET"
CHALLENGE_TENANT = re.compile(r'authorization(?:_uri)?="?https://[^/"]+/([^/",\s]+)', re.IGNORECASE)
# How azure-identity and MSAL put the login service's status in their messages.
HTTP_STATUS = re.compile(r"\b(?:HTTP Error:?|status(?: code)?:?)\s*(\d{3})\b", re.IGNORECASE)
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# OAuth 2.0 error codes (RFC 6749 §5.2 and Entra's) that mean "try again": MSAL's managed-identity
# client reports an identity endpoint's 503 by its code alone, without the status.
TRANSIENT_OAUTH = re.compile(r"\((?:temporarily_unavailable|service_unavailable|server_error)\)")
BACKOFF_BASE, BACKOFF_CAP = 0.25, 4.0
EARLY_REFRESH_PAUSE = 2.0  # seconds between attempts to refresh a still-valid token that failed to refresh
log = logging.getLogger("mhsm.credentials")


@dataclass(frozen=True)
class ServicePrincipal:
    client_id: str
    client_secret: str
    source: str  # "PIN" or "environment"

    def __repr__(self) -> str:  # the secret must never reach a log line
        return f"ServicePrincipal(client_id={self.client_id!r}, source={self.source!r})"


def principal_from_pin(pin: str) -> ServicePrincipal | None:
    """A PIN of the form `<client-id>:<client-secret>` names a service principal; anything else does not."""
    client_id, sep, secret = pin.partition(":")
    return ServicePrincipal(client_id.strip(), secret, "PIN") if sep and client_id.strip() and secret else None


def principal_from_env() -> ServicePrincipal | None:
    client_id, secret = os.environ.get(CLIENT_ID_ENV, "").strip(), os.environ.get(CLIENT_SECRET_ENV, "")
    return ServicePrincipal(client_id, secret, "environment") if client_id and secret else None


class _ContextAdapter(requests.adapters.HTTPAdapter):
    """Verifies with an SSLContext built once, never with a CA *path*.

    Given `connection_verify=<path>`, requests re-reads the file on every new connection, so a forked
    worker that cannot read `options.CAFile` (or a refresh after it is gone) could not get a token.
    A `REQUESTS_CA_BUNDLE` from the environment is ignored too: `CAFile` replaces the trust store.
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        super().__init__()

    def build_connection_pool_key_attributes(self, request: Any, verify: Any, cert: Any = None) -> Any:
        host_params, _ = super().build_connection_pool_key_attributes(request, True, None)
        return host_params, {"ssl_context": self._context, "cert_reqs": "CERT_REQUIRED"}

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        conn.cert_reqs, conn.ca_certs, conn.ca_cert_dir = "CERT_REQUIRED", None, None


def tenant_from_challenge(header: str | None) -> str | None:
    """The tenant is the first path segment of the challenge's `authorization` URL; its host is not used."""
    match = CHALLENGE_TENANT.search(header or "")
    return match.group(1) if match else None


class TokenCache:
    """Bearer tokens for the HSM: cached, refreshed ahead of expiry, fetched by one caller at a time.

    While a token is still valid but inside the refresh window, nobody waits for the refresh: in a
    forked child (an nginx worker) a short-lived thread refreshes it; in the process that loaded the
    library (a master that will fork, where no Python thread may be started) the first caller tries
    once and everybody else keeps using the valid token. Once the token has expired, callers wait
    for one refresh, which retries a login service's transient failures (429, 5xx, connection
    errors) within `options.RetryBudget` seconds, as the HSM transport does.
    """

    def __init__(self, config: Config, tenant: Callable[[], str], principal: ServicePrincipal | None = None) -> None:
        self._config = config
        self._tenant = tenant
        self._principal = principal
        self._lock = threading.Lock()
        self._credentials: list[tuple[str, Any]] | None = None
        self._token: str | None = None
        self._expires_at = 0.0
        self._refresh_at = 0.0
        self._pid = self._origin_pid = os.getpid()
        self._lock_pid = self._origin_pid
        self._refreshing = False  # a background refresh is under way (forked children only)
        self._abandoned: list[Any] = []
        # The CA file is read now, once, as the transport does (see _ContextAdapter).
        options = config.options
        self._ca_context = (ssl.create_default_context(cafile=options.ca_file)
                            if options.ca_file and not options.disable_tls_authentication else None)

    def _connection(self, verify: Any) -> dict[str, Any]:
        """azure-identity keyword arguments: how to reach the authority / identity endpoint, and no
        retries of azure-core's own (they would multiply ours, and MSAL replays a 5xx it has seen for
        a while anyway: `_fetch` retries with fresh credential objects, within the budget)."""
        extra: dict[str, Any] = {"retry_total": 0}
        if self._ca_context is None:
            return {"connection_verify": verify, **extra}
        session = requests.Session()
        session.mount("https://", _ContextAdapter(self._ca_context))
        return {"transport": RequestsTransport(session=session, session_owner=False), **extra}

    def _after_fork(self) -> None:
        """A forked child: a lock the parent's refresh thread held would stay held here forever."""
        if self._lock_pid != os.getpid():
            self._lock, self._lock_pid, self._refreshing = threading.Lock(), os.getpid(), False

    def set_principal(self, principal: ServicePrincipal | None) -> None:
        """Log-in with a PIN-carried principal (or log-out): drop the credentials and token of the last one."""
        self._after_fork()
        with self._lock:
            self._principal, self._credentials, self._token = principal, None, None
            self._expires_at = self._refresh_at = 0.0

    def get(self, force_refresh: bool = False) -> str:
        now = time.time()
        token = self._token
        if token and not force_refresh and now < self._refresh_at:
            return token
        self._after_fork()
        if token and not force_refresh and now < self._expires_at:
            if os.getpid() != self._origin_pid:
                self._refresh_in_background()
                return token
            if not self._lock.acquire(blocking=False):
                return token  # somebody is refreshing; this one is still good
            try:
                return self._refresh(keep_on_failure=True)
            finally:
                self._lock.release()
        with self._lock:
            if self._token and not force_refresh and time.time() < self._refresh_at:
                return self._token  # refreshed while we waited
            if force_refresh:
                if self._token is not token and self._token:
                    return self._token  # another caller already replaced the refused token
                # The HSM refused this token: azure-identity would hand back its cached copy, so start afresh.
                self._credentials = None
            return self._refresh(keep_on_failure=False)

    def _refresh_in_background(self) -> None:
        """Start one short-lived refresh thread, unless one is running (forked children only: see the class)."""
        if self._refreshing or not self._lock.acquire(blocking=False):
            return  # one is running, or a caller holds the lock for a refresh of its own
        try:
            if self._refreshing:
                return
            self._refreshing = True
        finally:
            self._lock.release()
        threading.Thread(target=self._background_refresh, name="mhsm-token-refresh", daemon=True).start()

    def _background_refresh(self) -> None:
        try:
            with self._lock:
                if time.time() >= self._refresh_at:
                    self._refresh(keep_on_failure=True)
        except Exception:  # the current token stays in use; the next caller after the pause tries again
            log.exception("background token refresh failed")
        finally:
            self._refreshing = False

    def _refresh(self, keep_on_failure: bool) -> str:
        """Fetch a token. With a valid one in hand (keep_on_failure) try once and keep it on failure;
        without, retry transient failures within the budget."""
        try:
            info = self._fetch(retry=not keep_on_failure)
        except AuthenticationError:
            if keep_on_failure and self._token:
                log.warning("token refresh failed; using the current token until it expires")
                self._refresh_at = min(self._expires_at, time.time() + EARLY_REFRESH_PAUSE)
                return self._token
            raise
        lifetime = max(1.0, info.expires_on - time.time())
        self._token, self._expires_at = info.token, float(info.expires_on)
        # Refresh when 5 minutes (or a fifth of a short lifetime) remain, as Azure's SDKs do.
        self._refresh_at = self._expires_at - min(300.0, lifetime / 5)
        return info.token

    def _fetch(self, retry: bool = True) -> Any:
        """One token from the first credential that gives one. When every credential failed and one of
        them for a transient reason, try again with backoff until `options.RetryBudget` is spent."""
        deadline = time.monotonic() + (self._config.options.retry_budget if retry else 0.0)
        attempt = 0
        while True:
            attempt += 1
            failures, wait = self._try_chain()
            if not isinstance(failures, list):
                return failures
            if not failures:
                raise AuthenticationError(f"could not get a token for Managed HSM: no credential configured; set "
                                          f"{CLIENT_ID_ENV} and {CLIENT_SECRET_ENV}, log in with the PIN "
                                          "'<client-id>:<client-secret>', or enable msi.identityMSI in the "
                                          "configuration")
            message = "could not get a token for Managed HSM; tried " + "; ".join(failures)
            delay = wait if wait is not None else random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** attempt))
            if wait is False or time.monotonic() + delay > deadline:
                raise AuthenticationError(message)
            log.warning("%s; retry %d in %.2fs", message, attempt, delay)
            time.sleep(delay)
            # MSAL remembers a 5xx it was given and replays it for a while: start with fresh objects.
            self._abandoned.append(self._credentials)
            self._credentials = None

    def _try_chain(self) -> tuple[Any, Any]:
        """(token info, None) on success; else (failure lines, the wait before a retry: a float from a
        Retry-After, None for the usual backoff, False when no failure was transient)."""
        failures: list[str] = []
        transient, retry_after = False, None
        for name, credential in self._chain():
            try:
                return credential.get_token_info(SCOPE), None
            except (AzureError, CredentialUnavailableError, ValueError) as exc:
                failures.append(f"{name}: {_first_line(str(exc))}")
                if _is_transient(exc):
                    transient = True
                    retry_after = retry_after if retry_after is not None else _retry_after(exc)
        return failures, (retry_after if transient else False)

    def _chain(self) -> list[tuple[str, Any]]:
        if self._pid != os.getpid():
            # A forked child: the credentials' HTTP sessions hold the parent's sockets. Abandon them
            # (never close them) and build new ones; the cached token itself stays valid.
            self._abandoned.append(self._credentials)
            self._credentials, self._pid = None, os.getpid()
        if self._credentials is None:
            self._credentials = []
            options = self._config.options
            verify: Any = False if options.disable_tls_authentication else (options.ca_file or True)
            authority = self._config.auth.authority
            custom = authority.rstrip("/") != DEFAULT_AUTHORITY
            # A PIN-carried principal stands alone: falling back to the environment's would hide a
            # wrong PIN behind another identity.
            principals = [self._principal] if self._principal else [p for p in (principal_from_env(),) if p]
            for principal in principals:
                credential = ClientSecretCredential(
                    self._tenant(), principal.client_id, principal.client_secret, authority=authority,
                    disable_instance_discovery=custom, **self._connection(verify))
                self._credentials.append((f"service principal {principal.client_id} (from {principal.source})",
                                          credential))
            if self._config.msi.enabled and not self._principal:
                self._credentials.append(self._managed_identity(verify))
        return self._credentials

    def _managed_identity(self, verify: Any) -> tuple[str, Any]:
        msi = self._config.msi
        if msi.imds_endpoint:
            # azure-identity's documented knob for a non-default IMDS host.
            os.environ.setdefault("AZURE_POD_IDENTITY_AUTHORITY_HOST", msi.imds_endpoint)
        if msi.client_id:
            return (f"user-assigned managed identity {msi.client_id}",
                    ManagedIdentityCredential(client_id=msi.client_id, **self._connection(verify)))
        return "system-assigned managed identity", ManagedIdentityCredential(**self._connection(verify))


# How requests (under azure-identity) says it could not connect: the host, the port and the reason.
UNREACHABLE = re.compile(r"HTTPS?ConnectionPool\(host='(?P<host>[^']+)', port=(?P<port>\d+)\).*?"
                         r"(?:\[Errno -?\d+\] (?P<reason>[^'\")]+)|(?P<timeout>timed out))")


def _first_line(text: str) -> str:
    """The first line of an identity library's error; a failed connection said in one short phrase
    (requests' own text is a page of nested reprs)."""
    unreachable = UNREACHABLE.search(text)
    if unreachable:
        reason = (unreachable["reason"] or unreachable["timeout"]).strip().lower()
        return f"cannot reach the login service at {unreachable['host']}:{unreachable['port']} ({reason})"
    return text.strip().splitlines()[0] if text.strip() else "failed"


def _chain_of(exc: BaseException) -> list[BaseException]:
    """The exception and what caused it: azure-identity wraps the pipeline's error (which has the
    response) in its own."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 8:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _status(exc: BaseException) -> int | None:
    for link in _chain_of(exc):
        status = getattr(getattr(link, "response", None), "status_code", None) or getattr(link, "status_code", None)
        if isinstance(status, int):
            return status
        found = HTTP_STATUS.search(str(link))
        if found:
            return int(found.group(1))
    return None


def _is_transient(exc: Exception) -> bool:
    """A failure worth retrying: the login service (or identity endpoint) overloaded, briefly down, or
    not reachable now. A refused secret or an unknown tenant is not."""
    status = _status(exc)
    if status is not None:
        return status in TRANSIENT_STATUSES
    return any(isinstance(link, (ServiceRequestError, ServiceResponseError))
               or UNREACHABLE.search(str(link)) or TRANSIENT_OAUTH.search(str(link)) for link in _chain_of(exc))


def _retry_after(exc: Exception) -> float | None:
    responses = [getattr(link, "response", None) for link in _chain_of(exc)]
    headers = next((r.headers for r in responses if getattr(r, "headers", None)), {})
    try:
        value = headers.get("Retry-After") or headers.get("retry-after")
        return min(BACKOFF_CAP, max(0.0, float(value))) if value is not None else None
    except (TypeError, ValueError):
        return None
