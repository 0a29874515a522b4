"""Managed-identity token endpoints (reference §8.3), plain HTTP on loopback as the real ones are.

One system-assigned and one user-assigned identity, each its own principal, reachable through the
App Service protocol, the IMDS protocol, and `MSI_ENDPOINT` (Azure ML with a secret, Cloud Shell without).
"""

from __future__ import annotations

import hmac
import time
import uuid
from typing import Any, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .entra import Issuer
from .store import Principal

APP_SERVICE_PATH = "/msi/token"
IMDS_PATH = "/metadata/identity/oauth2/token"
MSI_PATH = "/MSI/token"


def _error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


def _app_service_error(status: int, error: str, description: str) -> JSONResponse:
    """App Service answers errors in its own shape, the one MSAL reads ("statusCode, message"):
    `{"statusCode": 400, "message": "Unable to load the proper Managed Identity.", "correlationId": …}`."""
    return JSONResponse({"statusCode": status, "message": description, "correlationId": str(uuid.uuid4())},
                        status_code=status)


def _identity(issuer: Issuer, client_id: str | None) -> Principal | None:
    if not client_id:
        return issuer.store.principal_named("system-assigned")
    found = issuer.store.principal_by_client_id(client_id)
    return found if found is not None and found.kind == "managed-identity" else None


async def _grant(request: Request, endpoint: str, resource: str | None, client_id: str | None,
                 shape: Any, error: Callable[[int, str, str], JSONResponse] = _error) -> Response:
    issuer: Issuer = request.app.state.issuer
    if await issuer.outage(endpoint):
        return error(503, "service_unavailable", "The managed identity endpoint is temporarily unavailable.")
    if not resource:
        return error(400, "invalid_request", "Required query variable 'resource' is missing")
    principal = _identity(issuer, client_id)
    if principal is None:
        return error(400, "invalid_request", "Unable to load the proper Managed Identity."
                     if error is _app_service_error else "Identity not found")
    access_token, expires_at = issuer.issue(principal, resource, endpoint)
    return JSONResponse(shape(access_token, expires_at, resource, principal))


async def app_service(request: Request) -> Response:
    issuer: Issuer = request.app.state.issuer
    if not hmac.compare_digest(request.headers.get("x-identity-header", "").encode(),
                               issuer.store.meta["identity_header"].encode()):
        return _app_service_error(401, "unauthorized", "The X-IDENTITY-HEADER header is missing or wrong.")
    q = request.query_params
    return await _grant(request, "app_service", q.get("resource"), q.get("client_id"),
                        lambda tok, exp, res, p: {"access_token": tok, "expires_on": str(exp), "resource": res,
                                                  "token_type": "Bearer", "client_id": p.client_id},
                        error=_app_service_error)


async def imds(request: Request) -> Response:
    if request.headers.get("metadata", "").lower() != "true":
        return _error(400, "invalid_request", "Required metadata header not specified")
    q = request.query_params

    def shape(tok: str, exp: int, res: str, p: Principal) -> dict[str, str]:
        now = int(time.time())
        return {"access_token": tok, "client_id": p.client_id, "expires_in": str(exp - now),
                "expires_on": str(exp), "ext_expires_in": str(exp - now), "not_before": str(now),
                "resource": res, "token_type": "Bearer"}

    return await _grant(request, "imds", q.get("resource"), q.get("client_id"), shape)


async def msi_endpoint(request: Request) -> Response:
    """`MSI_ENDPOINT`: a GET with a `secret` header is Azure ML; a form POST is Cloud Shell."""
    issuer: Issuer = request.app.state.issuer

    def shape(tok: str, exp: int, res: str, p: Principal) -> dict[str, Any]:
        now = int(time.time())
        return {"access_token": tok, "expires_in": exp - now, "expires_on": exp, "not_before": now,
                "resource": res, "token_type": "Bearer", "client_id": p.client_id}

    if request.method == "POST":
        if request.headers.get("metadata", "").lower() != "true":
            return _error(400, "invalid_request", "Required metadata header not specified")
        form = await request.form()
        resource = form.get("resource")
        return await _grant(request, "cloud_shell", str(resource) if resource else None, None, shape)
    if not hmac.compare_digest(request.headers.get("secret", "").encode(), issuer.store.meta["msi_secret"].encode()):
        return _error(401, "unauthorized", "The secret header is missing or wrong.")
    q = request.query_params
    return await _grant(request, "azure_ml", q.get("resource"), q.get("clientid") or q.get("client_id"), shape)


ROUTES: list[Route] = [
    Route(APP_SERVICE_PATH, app_service, methods=["GET"]),
    Route(IMDS_PATH, imds, methods=["GET"]),
    Route(MSI_PATH, msi_endpoint, methods=["GET", "POST"]),
]
