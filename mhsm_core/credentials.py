"""The credential chain, through azure-identity, and a token cache in front of it.

Order: a service principal handed over as the PIN (`<client-id>:<client-secret>`, our extension),
then `MHSM_CLIENT_ID` / `MHSM_CLIENT_SECRET`, then the managed identity when the config enables it
(user-assigned when `msi.MSIClientID` is set, system-assigned otherwise). Only explicit credential
classes are used, never DefaultAzureCredential: it would spawn `az` and other processes.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import requests
from azure.core.exceptions import ClientAuthenticationError
from azure.core.pipeline.transport import RequestsTransport
from azure.identity import ClientSecretCredential, CredentialUnavailableError, ManagedIdentityCredential

from .config import Config
from .errors import AuthenticationError

SCOPE = "https://managedhsm.azure.net/.default"
DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
CLIENT_ID_ENV, CLIENT_SECRET_ENV = "MHSM_CLIENT_ID", "MHSM_CLIENT_SECRET"
CHALLENGE_TENANT = re.compile(r'authorization(?:_uri)?="?https://[^/"]+/([^/",\s]+)', re.IGNORECASE)
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

    While a token is still valid but inside the refresh window, one caller refreshes it and the others
    keep using the valid one; once it has expired, the others wait for the refresh.
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
        self._pid = os.getpid()
        self._abandoned: list[Any] = []
        # The CA file is read now, once, as the transport does (see _ContextAdapter).
        options = config.options
        self._ca_context = (ssl.create_default_context(cafile=options.ca_file)
                            if options.ca_file and not options.disable_tls_authentication else None)

    def _connection(self, verify: Any) -> dict[str, Any]:
        """azure-identity keyword arguments for how to reach the authority / identity endpoint."""
        if self._ca_context is None:
            return {"connection_verify": verify}
        session = requests.Session()
        session.mount("https://", _ContextAdapter(self._ca_context))
        return {"transport": RequestsTransport(session=session, session_owner=False)}

    def set_principal(self, principal: ServicePrincipal | None) -> None:
        """Log-in with a PIN-carried principal (or log-out): drop the credentials and token of the last one."""
        with self._lock:
            self._principal, self._credentials, self._token = principal, None, None
            self._expires_at = self._refresh_at = 0.0

    def get(self, force_refresh: bool = False) -> str:
        now = time.time()
        token = self._token
        if token and not force_refresh and now < self._refresh_at:
            return token
        if token and not force_refresh and now < self._expires_at:
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

    def _refresh(self, keep_on_failure: bool) -> str:
        try:
            info = self._fetch()
        except AuthenticationError:
            if keep_on_failure and self._token:
                log.warning("token refresh failed; using the current token until it expires")
                return self._token
            raise
        lifetime = max(1.0, info.expires_on - time.time())
        self._token, self._expires_at = info.token, float(info.expires_on)
        # Refresh when 5 minutes (or a fifth of a short lifetime) remain, as Azure's SDKs do.
        self._refresh_at = self._expires_at - min(300.0, lifetime / 5)
        return info.token

    def _fetch(self) -> Any:
        failures: list[str] = []
        for name, credential in self._chain():
            try:
                return credential.get_token_info(SCOPE)
            except (ClientAuthenticationError, CredentialUnavailableError, ValueError) as exc:
                failures.append(f"{name}: {_first_line(str(exc))}")
        if not failures:
            raise AuthenticationError(f"could not get a token for Managed HSM: no credential configured; set "
                                      f"{CLIENT_ID_ENV} and {CLIENT_SECRET_ENV}, log in with the PIN "
                                      "'<client-id>:<client-secret>', or enable msi.identityMSI in the configuration")
        raise AuthenticationError("could not get a token for Managed HSM; tried " + "; ".join(failures))

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
