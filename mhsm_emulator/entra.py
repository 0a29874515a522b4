"""Entra ID, as much of it as a client-secret credential touches (reference §8.2).

MSAL reads the tenant's OpenID configuration, then posts a client-credentials grant to the v2 token
endpoint. Errors use Entra's shape: `{"error", "error_description": "AADSTS…", "error_codes": [...]}`.
"""

from __future__ import annotations

import hmac
import time
import uuid
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .control import TOKEN_FAULTS, Control, sleep_at_least
from .store import Principal, Store
from .tokens import TokenAuthority

DEFAULT_SCOPE_SUFFIX = "/.default"


def entra_error(status: int, error: str, code: int, text: str) -> JSONResponse:
    trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    return JSONResponse({"error": error,
                         "error_description": f"AADSTS{code}: {text} Trace ID: {trace} Correlation ID: "
                                              f"{correlation} Timestamp: {stamp}",
                         "error_codes": [code], "timestamp": stamp, "trace_id": trace,
                         "correlation_id": correlation}, status_code=status)


@dataclass
class Issuer:
    """Mints tokens for every token endpoint (Entra and managed identity) and counts them."""

    store: Store
    tokens: TokenAuthority
    control: Control

    async def outage(self, endpoint: str) -> bool:
        delay = self.control.latency_for("token")
        if delay:
            await sleep_at_least(delay)
        return self.control.take_fault("token", TOKEN_FAULTS) is not None

    def issue(self, principal: Principal, audience: str, endpoint: str) -> tuple[str, int]:
        self.control.tokens[(principal.name, endpoint)] += 1
        return self.tokens.mint(audience.removesuffix(DEFAULT_SCOPE_SUFFIX).rstrip("/") or audience,
                                principal.object_id, principal.client_id)


def _issuer(request: Request) -> Issuer:
    return request.app.state.issuer


def _authority(request: Request) -> str:
    return f"https://{request.headers.get('host', '')}"


def _unknown_tenant(tenant: str) -> JSONResponse:
    return entra_error(400, "invalid_tenant", 90002,
                       f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID.")


# Tenant aliases Entra serves metadata for; their issuer is the `{tenantid}` template (what MSAL,
# and so `az login`/`az logout`, read first).
MULTI_TENANT = ("organizations", "common")


async def openid_configuration(request: Request) -> Response:
    issuer, tenant = _issuer(request), request.path_params["tenant"]
    if tenant != issuer.tokens.tenant_id and tenant not in MULTI_TENANT:
        return _unknown_tenant(tenant)
    base = f"{_authority(request)}/{tenant}"
    return JSONResponse({
        "issuer": f"{_authority(request)}/{{tenantid}}/v2.0" if tenant in MULTI_TENANT else f"{base}/v2.0",
        "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
        "token_endpoint": f"{base}/oauth2/v2.0/token",
        "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
        "jwks_uri": f"{base}/discovery/v2.0/keys",
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "tenant_region_scope": "local",
    })


async def jwks(request: Request) -> Response:
    return JSONResponse(_issuer(request).tokens.jwks())


async def instance_discovery(request: Request) -> Response:
    """Answer MSAL's instance discovery, so clients without `disable_instance_discovery` work too."""
    host = request.headers.get("host", "")
    return JSONResponse({"tenant_discovery_endpoint":
                         f"https://{host}/{{tenant}}/v2.0/.well-known/openid-configuration",
                         "api-version": "1.1",
                         "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}]})


async def token(request: Request) -> Response:
    issuer, tenant = _issuer(request), request.path_params["tenant"]
    if await issuer.outage("entra"):
        return entra_error(503, "temporarily_unavailable", 50196, "The service is temporarily unavailable.")
    if tenant != issuer.tokens.tenant_id:
        return _unknown_tenant(tenant)
    form = await request.form()
    if form.get("grant_type") != "client_credentials":
        return entra_error(400, "unsupported_grant_type", 70003,
                           "The app requested an unsupported grant type; only client_credentials is served.")
    client_id = str(form.get("client_id", ""))
    principal = issuer.store.principal_by_client_id(client_id)
    if principal is None or principal.kind != "service-principal":
        return entra_error(400, "unauthorized_client", 700016,
                           f"Application with identifier '{client_id}' was not found in the directory.")
    if not hmac.compare_digest(str(form.get("client_secret", "")).encode(), principal.client_secret.encode()):
        return entra_error(401, "invalid_client", 7000215, "Invalid client secret provided.")
    scopes = str(form.get("scope", "")).split()
    if len(scopes) != 1 or not scopes[0].endswith(DEFAULT_SCOPE_SUFFIX):
        return entra_error(400, "invalid_scope", 1002012,
                           "The provided value for scope is not valid. Client credential flows must have a "
                           "scope value with /.default suffixed to the resource identifier.")
    access_token, expires_at = issuer.issue(principal, scopes[0], "entra")
    lifetime = expires_at - int(time.time())
    return JSONResponse({"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime,
                         "access_token": access_token})


async def subscriptions(request: Request) -> Response:
    """The one Resource Manager call `az login --allow-no-subscriptions` makes: this tenant has no
    subscriptions (a Managed HSM's data plane needs none), so the CLI signs in at tenant level.
    Served here because the emulator's custom cloud names this listener as its Resource Manager."""
    if not request.headers.get("authorization", "").lower().startswith("bearer "):
        return JSONResponse({"error": {"code": "AuthenticationFailed",
                                       "message": "Authentication failed. The 'Authorization' header is missing."}},
                            status_code=401)
    return JSONResponse({"value": []})


async def directory_objects(request: Request) -> Response:
    """Microsoft Graph's `directoryObjects/getByIds`, which the Azure CLI calls to name the principals
    of role assignments: the emulator's service principals and managed identities, by object id."""
    issuer = _issuer(request)
    try:
        wanted = {str(i).lower() for i in (await request.json()).get("ids", [])}
    except (ValueError, AttributeError, TypeError):
        return JSONResponse({"error": {"code": "BadRequest", "message": "The body must be {\"ids\": [...]}."}},
                            status_code=400)
    found = [{"@odata.type": "#microsoft.graph.servicePrincipal", "id": p.object_id, "appId": p.client_id,
              "displayName": p.name, "servicePrincipalNames": [p.client_id]}
             for p in issuer.store.principals.values() if p.object_id.lower() in wanted]
    return JSONResponse({"value": found})


async def not_found(request: Request, exc: Exception) -> Response:
    """Unknown paths answer 404 in Entra's error shape (not the data plane's)."""
    status = getattr(exc, "status_code", 404)
    return entra_error(status, "invalid_request", 900561 if status == 405 else 90011,
                       f"The endpoint {request.method} {request.url.path} does not exist.")


ROUTES: list[Route] = [
    Route("/common/discovery/instance", instance_discovery, methods=["GET"]),
    Route("/{tenant}/v2.0/.well-known/openid-configuration", openid_configuration, methods=["GET"]),
    Route("/{tenant}/discovery/v2.0/keys", jwks, methods=["GET"]),
    Route("/{tenant}/oauth2/v2.0/token", token, methods=["POST"]),
    Route("/subscriptions", subscriptions, methods=["GET"]),
    Route("/v1.0/directoryObjects/getByIds", directory_objects, methods=["POST"]),
]
