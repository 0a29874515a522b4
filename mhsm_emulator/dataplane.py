"""The request pipeline every Managed HSM operation goes through, and the headers every answer carries.

Order matters and follows the service: a bodiless or token-less call is challenged before anything
else is looked at; then injected latency and faults; then local RBAC; then api-version (a caller
without the role gets 403 whatever api-version it names, as the real service answers the Azure CLI);
then the operation itself.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .connections import Connections
from .control import OPERATIONS, Control, Fault, sleep_at_least
from .errors import JSON_TYPE, ServiceError, access_denied, bad_parameter
from .store import Principal, Store
from .tokens import RESOURCE, TokenAuthority, TokenError

# The api-versions recordings of a real Managed HSM show answered, oldest first (the Azure CLI 2.91
# sends 7.6-preview.2; the SDK test suites record the previews and the date-named versions).
API_VERSIONS: tuple[str, ...] = (
    "7.2-preview", "7.2", "7.3", "7.4-preview.1", "7.4", "7.5-preview.1", "7.5", "7.6-preview.1", "7.6-preview.2",
    "7.6", "2025-07-01", "2026-01-01-preview", "2026-03-01-preview")
API_VERSION_RANK = {version: rank for rank, version in enumerate(API_VERSIONS)}
LATEST_API_VERSION = "2025-07-01"
STATUS_FAULTS = ("throttle", "error", "unavailable", "reset", "stall")
TOKEN_FAULTS = ("token_expired", "token_rejected")

Handler = Callable[[Request, "Hsm"], Awaitable[Response]]


def json_response(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=JSON_TYPE)


async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        raise bad_parameter("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise bad_parameter("The request body must be a JSON object.")
    return body


def api_version_at_least(request: Request, oldest: str) -> bool:
    """Whether the (already validated) api-version of the request is `oldest` or newer."""
    return API_VERSION_RANK[request.query_params["api-version"]] >= API_VERSION_RANK[oldest]


def base_url(request: Request) -> str:
    """`https://<Host header>`: the service builds `kid` and `nextLink` from the host it was called on."""
    host = request.headers.get("host", "")
    return "https://" + (host[:-4] if host.endswith(":443") else host)


@dataclass
class Hsm:
    """Everything an operation needs: state, token checks, the control plane and the connections."""

    store: Store
    tokens: TokenAuthority
    control: Control
    connections: Connections

    @property
    def challenge(self) -> str:
        return (f'Bearer authorization="https://login.microsoftonline.com/{self.tokens.tenant_id}", '
                f'resource="{RESOURCE}"')

    async def run(self, request: Request, operation: str, action: str, scope: str, handler: Handler) -> Response:
        principal = "anonymous"
        try:
            caller = self._authenticate(request, operation)
            principal = caller.name if caller else "unknown-principal"
            request.state.principal = principal
            delay = self.control.latency_for(operation)
            if delay:
                await sleep_at_least(delay)
            fault = self.control.take_fault(operation, STATUS_FAULTS)
            if fault is not None:
                injected = await self._apply(fault, request)
                if injected is not None:
                    return injected
            if not self.store.allows(request.state.object_id, action, scope):
                raise access_denied(action, scope)
            self._check_api_version(request)
            return await handler(request, self)
        except ServiceError as error:
            return error.response(request.state.request_id)
        finally:
            self.control.requests[(operation, principal)] += 1

    def _authenticate(self, request: Request, operation: str) -> Principal | None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            # The challenge answers before the body is read: the SDK's first call has no body. A real
            # Managed HSM answers a GET with the two bytes `OK` and anything else with no body, both
            # typed application/json (recordings of .NET, Python and the CLI against live HSMs).
            raise ServiceError(401, None, "", headers={"WWW-Authenticate": self.challenge},
                               raw_body=b"OK" if request.method in ("GET", "HEAD") else b"")
        fault = self.control.take_fault(operation, TOKEN_FAULTS)
        try:
            if fault is not None:
                raise TokenError("Token is expired" if fault.kind == "token_expired"
                                 else "Token validation failed: the token was rejected")
            claims = self.tokens.validate(token.strip())
        except TokenError as exc:
            raise ServiceError(401, None, str(exc), headers={"WWW-Authenticate": self.challenge}) from None
        request.state.object_id = claims["oid"]
        return self.store.principals.get(claims["oid"])

    async def _apply(self, fault: Fault, request: Request) -> Response | None:
        if fault.kind == "stall":
            await sleep_at_least(fault.stall_seconds)
            return None
        if fault.kind == "reset":
            request.state.aborted = True
            self.connections.reset(request.client)
            return Response(b"", status_code=500)
        status, code, message = {
            "throttle": (429, "Throttled", "The request was throttled. Retry after the interval in Retry-After."),
            "error": (500, "InternalError", "An internal error occurred."),
            "unavailable": (503, "ServiceUnavailable", "The service is temporarily unavailable."),
        }[fault.kind]
        headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        return ServiceError(status, code, message, headers=headers).response(request.state.request_id)

    @staticmethod
    def _check_api_version(request: Request) -> None:
        version = request.query_params.get("api-version")
        if not version:
            raise bad_parameter("The 'api-version' query parameter is missing.")
        if version not in API_VERSIONS:
            raise bad_parameter(f"The specified version ({version}) is not recognized. Consider using the "
                                f"latest supported version ({LATEST_API_VERSION}).")


def operation(name: str, action: str, scope: str) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """Make a Starlette endpoint of a handler; `scope` is formatted with the path parameters."""

    assert name in OPERATIONS, name  # the admin interface accepts only known names
    def decorate(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            hsm: Hsm = request.app.state.hsm
            return await hsm.run(request, name, action, scope.format(**request.path_params), handler)

        endpoint.__name__ = handler.__name__
        endpoint.__doc__ = handler.__doc__
        return endpoint

    return decorate


class ServiceHeaders:
    """ASGI wrapper: a request id for every call, the service's response headers, in-flight counting.

    The headers are those of recorded answers of a live Managed HSM; the region and network-info pair
    comes only on successful answers there (a 401 or 404 carries neither)."""

    STATIC = [
        (b"cache-control", b"no-cache"),
        (b"content-security-policy", b"default-src 'self'"),
        (b"strict-transport-security", b"max-age=31536000; includeSubDomains"),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"SAMEORIGIN"),
        (b"x-ms-build-version", b"1.0.mhsm-emulator"),
    ]
    SUCCESS = [
        (b"x-ms-keyvault-network-info", b"conn_type=Ipv4;addr=127.0.0.1;act_addr_fam=Ipv4;"),
        (b"x-ms-keyvault-region", b"local"),
    ]

    def __init__(self, app: ASGIApp, control: Control) -> None:
        self.app = app
        self.control = control

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = str(uuid.uuid4())
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        echo = [(b"x-ms-client-request-id", value) for name, value in scope["headers"]
                if name == b"x-ms-client-request-id"]

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                latency = str(int((time.perf_counter() - started) * 1000)).encode()
                message["headers"] = [*message["headers"], (b"x-ms-request-id", request_id.encode()),
                                      (b"x-ms-server-latency", latency), *echo, *self.STATIC,
                                      *(self.SUCCESS if status < 400 else ())]
            await send(message)

        self.control.enter()
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            self.control.leave("reset" if scope["state"].get("aborted") else str(status))


def not_found(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods answer in the service's error shape."""
    status = getattr(exc, "status_code", 404)
    code, message = ("NotFound", "The requested resource was not found.") if status == 404 else \
        ("MethodNotAllowed", f"The method {request.method} is not allowed on this resource.")
    return ServiceError(status, code, message).response(request.state.request_id)
