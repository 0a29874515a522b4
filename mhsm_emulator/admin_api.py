"""The admin interface for tests and benchmarks: latency, fault injection, counters, reset.

Served on its own loopback port and guarded by its own secret (`Authorization: Bearer <admin_secret>`),
so nothing a data-plane client holds can steer the emulator.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .control import ANY, FAULT_KINDS, OPERATIONS, TOKEN, Control, Fault


def _control(request: Request) -> Control:
    return request.app.state.control


def _authorized(request: Request) -> bool:
    expected = f"Bearer {request.app.state.admin_secret}".encode()
    return hmac.compare_digest(request.headers.get("authorization", "").encode(), expected)


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    body = json.loads(raw) if raw else {}
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body


def guarded(handler: Any) -> Any:
    async def endpoint(request: Request) -> Response:
        if not _authorized(request):
            return JSONResponse({"error": "admin secret missing or wrong"}, status_code=401)
        try:
            return await handler(request)
        except (ValueError, TypeError, KeyError) as exc:
            return JSONResponse({"error": f"bad request: {exc}"}, status_code=400)

    return endpoint


@guarded
async def counters(request: Request) -> Response:
    return JSONResponse(_control(request).snapshot())


def _operation(body: dict[str, Any], also: frozenset[str] = frozenset()) -> str:
    """A known operation name, so that a typo ("sing") is refused instead of never matching."""
    operation = str(body.get("operation", ANY))
    if operation not in OPERATIONS | also | {ANY}:
        raise ValueError(f"unknown operation {operation!r}; use * or one of {', '.join(sorted(OPERATIONS | also))}")
    return operation


@guarded
async def latency(request: Request) -> Response:
    body = await _body(request)
    _control(request).set_latency(_operation(body, frozenset({TOKEN})), float(body.get("fixed_ms", 0)),
                                  float(body.get("jitter_ms", 0)))
    return JSONResponse({"ok": True})


@guarded
async def faults(request: Request) -> Response:
    body = await _body(request)
    kind = body["kind"]
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; use one of {', '.join(FAULT_KINDS)}")
    retry_after = body.get("retry_after")
    fault = Fault(kind, int(retry_after) if retry_after is not None else None, float(body.get("stall_seconds", 10.0)))
    operation = TOKEN if kind == "token_outage" else _operation(body)
    count = int(body.get("count", 1))
    if count < 1:  # would queue nothing while the caller believes a fault is pending
        raise ValueError(f"count must be at least 1, not {count}")
    _control(request).inject(operation, fault, count)
    return JSONResponse({"ok": True, "pending": _control(request).pending()})


@guarded
async def reset(request: Request) -> Response:
    body = await _body(request)
    _control(request).reset(counters=bool(body.get("counters", True)), faults=bool(body.get("faults", True)),
                            latency=bool(body.get("latency", True)))
    return JSONResponse({"ok": True})


async def health(request: Request) -> Response:
    return JSONResponse({"ok": True})


ROUTES: list[Route] = [
    Route("/health", health, methods=["GET"]),
    Route("/counters", counters, methods=["GET"]),
    Route("/latency", latency, methods=["POST"]),
    Route("/faults", faults, methods=["POST"]),
    Route("/reset", reset, methods=["POST"]),
]
