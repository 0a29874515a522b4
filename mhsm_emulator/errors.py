"""The service's error shape, so that clients parse our failures exactly as they parse Azure's."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse, Response

JSON_TYPE = "application/json; charset=utf-8"


class ServiceError(Exception):
    """A failure the data plane reports as `{"error": {"code", "message", "innererror"?}}`.

    Managed HSM ends every message with ` (Activity ID: <request id>)`; the id is added when the
    response is rendered, because the raising code does not know it.
    """

    def __init__(
        self,
        status: int,
        code: str | None,
        message: str,
        *,
        inner: str | None = None,
        headers: dict[str, str] | None = None,
        raw_body: bytes | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.inner = inner
        self.headers = headers or {}
        self.raw_body = raw_body

    def response(self, request_id: str) -> Response:
        if self.raw_body is not None:
            return Response(self.raw_body, status_code=self.status, headers=self.headers, media_type=JSON_TYPE)
        error: dict[str, Any] = {"message": f"{self.message} (Activity ID: {request_id})"}
        if self.code is not None:
            error = {"code": self.code, **error}
        if self.inner:
            error["innererror"] = {"code": self.inner}
        return JSONResponse({"error": error}, status_code=self.status, headers=self.headers,
                            media_type=JSON_TYPE)


def bad_parameter(message: str) -> ServiceError:
    return ServiceError(400, "BadParameter", message)


def key_not_found(url: str) -> ServiceError:
    """Managed HSM names the key by its URL, `…/keys/<name>` or `…/deletedkeys/<name>` (the Key Vault
    text "A key with (name/id) … was not found in this key vault" is not what an HSM says)."""
    return ServiceError(404, "KeyNotFound", f"Key not found: {url}")


def access_denied(action: str, scope: str) -> ServiceError:
    """The service quotes a key scope (`keys/create on '/keys'`) but not a role-API one
    (`roleAssignments/read/action on /`), as the real messages in the reference (§6) show."""
    where = scope if action.startswith(("roleAssignments/", "roleDefinitions/")) else f"'{scope}'"
    return ServiceError(403, "AccessDenied",
                        f"Not authorized to access Microsoft.KeyVault/managedHsm/{action} on {where}")
