"""The core's exceptions. Each carries what an operator needs: the HSM's status, error code and
request id, and a sentence that says what to do. Front ends map them to their own codes."""

from __future__ import annotations


class MhsmError(Exception):
    """Base of every error the core raises on purpose."""


class HsmError(MhsmError):
    """The HSM answered with an error, or could not be reached within the retry budget."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 request_id: str | None = None, operation: str = "", client_request_id: str | None = None) -> None:
        self.status = status
        self.code = code
        self.request_id = request_id
        self.client_request_id = client_request_id  # what we sent: names a call that got no answer
        self.operation = operation
        detail = ", ".join(p for p in (f"HTTP {status}" if status else "", code or "",
                                       f"x-ms-request-id {request_id}" if request_id else "",
                                       f"x-ms-client-request-id {client_request_id}" if client_request_id else "")
                           if p)
        super().__init__(f"{message} ({detail})" if detail else message)


class HsmUnavailable(HsmError):
    """Network failures, timeouts, 429 and 5xx that outlasted the retry budget."""


class AccessDenied(HsmError):
    """403: the identity lacks a role; the message names the action and the scope."""


class NotFound(HsmError):
    """404: no such key or version."""


class BadRequest(HsmError):
    """400 or 409: the HSM refused the request's content."""


class AuthenticationError(MhsmError):
    """No credential could get a token; the message lists what was tried and why each failed."""


class InvalidArgument(MhsmError):
    """A caller passed something the core cannot use (wrong digest length, unknown mechanism...)."""


class KeyMismatch(InvalidArgument):
    """A key's tags say one type or curve and the key is another (tags edited by hand): the key is
    not used, since a host would pick a mechanism, or a certificate, for a key it is not."""
