"""The Managed HSM keys API (reference §2–§5): create, read, list, update, soft delete and crypto.

Choices where the service's behaviour is not documented are marked "Decision:" and listed in
docs/emulator.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import uuid
from typing import Any, Callable, Iterable, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import keycrypto
from .dataplane import Hsm, api_version_at_least, base_url, json_body, json_response, operation
from .errors import ServiceError, bad_parameter, key_not_found
from .store import DEFAULT_RECOVERABLE_DAYS, KeyRecord, KeyVersion

KEY_NAME = re.compile(r"^[0-9a-zA-Z-]{1,127}$")
KTY = {"RSA": "RSA-HSM", "RSA-HSM": "RSA-HSM", "EC": "EC-HSM", "EC-HSM": "EC-HSM"}
# key_ops is a set to the service: recordings show the same key's operations in a different order
# on every read. We answer them in one fixed order.
KEY_OPS_ORDER = ("encrypt", "decrypt", "sign", "verify", "unwrapKey", "wrapKey", "deriveKey", "import", "export")
EC_KEY_OPS = {"sign", "verify", "deriveKey", "import", "export"}
RSA_DEFAULT_KEY_OPS = ["encrypt", "decrypt", "sign", "verify", "unwrapKey", "wrapKey"]
# What an EC-HSM key made without key_ops gets: verify and sign up to 7.4, and deriveKey too from
# 7.5 on (recordings of the same SDK test at 7.4, 7.5, 7.6 and 2025-07-01 against live HSMs).
EC_DEFAULT_KEY_OPS = (["sign", "verify"], ["sign", "verify", "deriveKey"])
EC_DERIVE_SINCE = "7.5-preview.1"
MAX_TAGS, MAX_TAG_LENGTH = 15, 256
MAX_PAGE = 25

T = TypeVar("T")


# -- validation --------------------------------------------------------------------------------

def _key_name(name: str) -> str:
    if not KEY_NAME.fullmatch(name):
        raise bad_parameter(f"The key name '{name}' is invalid: use 1-127 characters from 0-9, a-z, A-Z and '-'.")
    return name


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional_int(container: dict[str, Any], field: str, where: str) -> int | None:
    value = container.get(field)
    if value is not None and not _is_int(value):
        raise bad_parameter(f"Property '{where}{field}' must be an integer (Unix time in seconds).")
    return value


def _optional_bool(container: dict[str, Any], field: str, where: str) -> bool | None:
    value = container.get(field)
    if value is not None and not isinstance(value, bool):
        raise bad_parameter(f"Property '{where}{field}' must be a boolean.")
    return value


def _tags(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise bad_parameter("Property 'tags' must be an object of string names to string values.")
    if len(value) > MAX_TAGS:
        raise bad_parameter(f"A key can have at most {MAX_TAGS} tags; the request has {len(value)}.")
    for name, text in value.items():
        if len(name) > MAX_TAG_LENGTH or len(text) > MAX_TAG_LENGTH:
            raise bad_parameter(f"Tag names and values are limited to {MAX_TAG_LENGTH} characters; "
                                f"tag '{name[:40]}' exceeds it.")
    return dict(value)


def _key_ops(value: Any, kty: str, request: Request) -> list[str]:
    if value is None:
        if kty == "RSA-HSM":
            return list(RSA_DEFAULT_KEY_OPS)
        return list(EC_DEFAULT_KEY_OPS[api_version_at_least(request, EC_DERIVE_SINCE)])
    if not isinstance(value, list) or not all(isinstance(op, str) for op in value):
        raise bad_parameter("Property 'key_ops' must be an array of strings.")
    for op in value:
        if op not in KEY_OPS_ORDER:
            raise bad_parameter(f"Invalid key operation '{op}'. Allowed: {', '.join(KEY_OPS_ORDER)}.")
        if kty == "EC-HSM" and op not in EC_KEY_OPS:
            raise bad_parameter(f"Key operation '{op}' is not supported by EC keys.")
        if kty == "RSA-HSM" and op == "deriveKey":
            raise bad_parameter("Key operation 'deriveKey' is not supported by RSA keys.")
    return [op for op in KEY_OPS_ORDER if op in value]


def _attributes(body: dict[str, Any]) -> dict[str, Any]:
    attributes = body.get("attributes")
    if attributes is None:
        return {}
    if not isinstance(attributes, dict):
        raise bad_parameter("Property 'attributes' must be an object.")
    out: dict[str, Any] = {}
    for field in ("enabled", "exportable"):
        if attributes.get(field) is not None:
            out[field] = _optional_bool(attributes, field, "attributes.")
    for field in ("nbf", "exp"):
        if field in attributes:  # an explicit null clears the limit
            out[field] = _optional_int(attributes, field, "attributes.")
    return out


def _b64_field(body: dict[str, Any], field: str) -> bytes:
    value = body.get(field)
    if not isinstance(value, str):
        raise bad_parameter(f"Property '{field}' is required and must be a base64url string.")
    try:
        return keycrypto.b64url_decode(value)
    except ValueError:
        raise bad_parameter(f"Property '{field}' is not valid base64url.") from None


# -- rendering ---------------------------------------------------------------------------------

def _kid(request: Request, version: KeyVersion, versioned: bool = True) -> str:
    kid = f"{base_url(request)}/keys/{version.name}"
    return f"{kid}/{version.version}" if versioned else kid


def _recovery_level(days: int) -> str:
    """`Recoverable+Purgeable` at the 90-day default, `CustomizedRecoverable+Purgeable` below it
    (recordings of HSMs made with 7 days show the latter)."""
    return "Recoverable+Purgeable" if days == DEFAULT_RECOVERABLE_DAYS else "CustomizedRecoverable+Purgeable"


def _attributes_json(version: KeyVersion, days: int) -> dict[str, Any]:
    out: dict[str, Any] = {"enabled": version.enabled}
    if version.nbf is not None:
        out["nbf"] = version.nbf
    if version.exp is not None:
        out["exp"] = version.exp
    out |= {"created": version.created, "updated": version.updated, "recoveryLevel": _recovery_level(days),
            "recoverableDays": days, "exportable": False}
    return out


def _bundle(request: Request, hsm: Hsm, version: KeyVersion) -> dict[str, Any]:
    key = {"kid": _kid(request, version), "kty": version.kty, "key_ops": list(version.key_ops),
           **keycrypto.public_jwk(version.private_key, version.crv)}
    out: dict[str, Any] = {"key": key, "attributes": _attributes_json(version, hsm.store.recoverable_days)}
    if version.tags:
        out["tags"] = dict(version.tags)
    return out


def _item(request: Request, hsm: Hsm, version: KeyVersion, versioned: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"kid": _kid(request, version, versioned),
                           "attributes": _attributes_json(version, hsm.store.recoverable_days)}
    if version.tags:
        out["tags"] = dict(version.tags)
    return out


def _deleted(request: Request, record: KeyRecord, body: dict[str, Any]) -> dict[str, Any]:
    return {"recoveryId": f"{base_url(request)}/deletedkeys/{record.latest.name}", **body,
            "deletedDate": record.deleted_date, "scheduledPurgeDate": record.scheduled_purge_date}


def _page(request: Request, items: list[T], marker: Callable[[T], int],
          render: Callable[[T], dict[str, Any]]) -> Response:
    """One page, in creation order, and while more remain an absolute `nextLink` carrying
    `maxresults` and an opaque `$skiptoken` but no api-version (the client adds its own); the last
    page has no `nextLink` member at all. All as recorded from a live HSM."""
    raw = request.query_params.get("maxresults")
    if raw is None:
        size = MAX_PAGE
    elif raw.isdigit() and 1 <= int(raw) <= MAX_PAGE:
        size = int(raw)
    else:
        raise bad_parameter(f"Invalid maxresults '{raw}': it must be an integer between 1 and {MAX_PAGE}.")
    after = -1
    token = request.query_params.get("$skiptoken")
    if token:
        try:
            after = int(json.loads(keycrypto.b64url_decode(token))["after"])
        except (ValueError, KeyError, TypeError):
            raise bad_parameter("Invalid $skiptoken.") from None
    remaining = [item for item in items if marker(item) > after]
    page = remaining[:size]
    body: dict[str, Any] = {"value": [render(item) for item in page]}
    if len(remaining) > size:
        skip = keycrypto.b64url(json.dumps({"after": marker(page[-1])}).encode())
        body["nextLink"] = f"{base_url(request)}{request.url.path}?maxresults={size}&$skiptoken={skip}"
    return json_response(body)


# -- lookups -----------------------------------------------------------------------------------

def _live(hsm: Hsm, request: Request) -> KeyRecord:
    name = request.path_params["name"]
    record = hsm.store.find(name)
    if record is None or record.deleted:
        raise key_not_found(f"{base_url(request)}/keys/{name}")
    return record


def _deleted_record(hsm: Hsm, request: Request) -> KeyRecord:
    name = request.path_params["name"]
    record = hsm.store.find(name)
    if record is None or not record.deleted:
        raise key_not_found(f"{base_url(request)}/deletedkeys/{name}")
    return record


def _version(hsm: Hsm, request: Request) -> KeyVersion:
    """The version a path names; an absent or empty version segment means the latest."""
    record = _live(hsm, request)
    wanted = request.path_params.get("version", "").lower()
    if not wanted:
        return record.latest
    for version in record.versions:
        if version.version == wanted:
            return version
    raise key_not_found(f"{base_url(request)}/keys/{request.path_params['name']}/{wanted}")


def _check_usable(version: KeyVersion, op: str, *, lifetime: bool) -> None:
    """key_ops always; enabled/nbf/exp only for operations the service does not exempt (verify is)."""
    now = time.time()
    if lifetime:
        for refused, inner, text in ((not version.enabled, "KeyDisabled", "a disabled key"),
                                     (version.nbf is not None and now < version.nbf, "KeyNotYetValid",
                                      "a key that is not yet valid"),
                                     (version.exp is not None and now >= version.exp, "KeyExpired",
                                      "an expired key")):
            if refused:
                raise ServiceError(403, "Forbidden", f"Operation {op} is not allowed on {text}.", inner=inner)
    if op not in version.key_ops:
        # Decision: the service's error for a key_ops violation is undocumented; we answer 400 BadParameter.
        raise bad_parameter(f"Operation {op} is not allowed by this key's key_ops ({', '.join(version.key_ops)}).")


def _algorithm(body: dict[str, Any], version: KeyVersion) -> keycrypto.SignatureAlgorithm:
    name = body.get("alg")
    alg = keycrypto.SIGNATURE_ALGORITHMS.get(name) if isinstance(name, str) else None
    if alg is None:
        raise bad_parameter(f"Invalid algorithm '{name}'. Supported: {', '.join(keycrypto.SIGNATURE_ALGORITHMS)}.")
    if (alg.family == "ES") != (version.kty == "EC-HSM") or (alg.curve and alg.curve != version.crv):
        raise bad_parameter(f"Algorithm {alg.name} cannot be used with a {version.kty} key"
                            f"{' on curve ' + version.crv if version.crv else ''}.")
    return alg


def _digest(body: dict[str, Any], field: str, alg: keycrypto.SignatureAlgorithm, version: KeyVersion) -> bytes:
    digest = _b64_field(body, field)
    if not alg.accepts(digest, version.private_key):
        expected = f"{alg.hash.digest_size} bytes" if alg.hash else "1 to (modulus length - 11) bytes"
        raise bad_parameter(f"Invalid digest length {len(digest)} for {alg.name}: expected {expected}.")
    return digest


# -- operations --------------------------------------------------------------------------------

@operation("create", "keys/create", "/keys")
async def create_key(request: Request, hsm: Hsm) -> Response:
    name = _key_name(request.path_params["name"])
    body = await json_body(request)
    kty = KTY.get(body.get("kty")) if isinstance(body.get("kty"), str) else None
    if kty is None:
        if body.get("kty") in ("oct", "oct-HSM"):
            raise bad_parameter("The emulator does not model symmetric (oct-HSM) keys.")
        raise bad_parameter(f"Property 'kty' is required and must be one of {', '.join(KTY)}.")
    size = crv = None
    if kty == "RSA-HSM":
        size = body.get("key_size", 2048)
        if size not in keycrypto.RSA_SIZES or not _is_int(size):
            raise bad_parameter(f"Invalid key_size {size!r} for RSA-HSM: use 2048, 3072 or 4096.")
        exponent = body.get("public_exponent", 65537)
        if exponent != 65537 or not _is_int(exponent):
            raise bad_parameter(f"Invalid public_exponent {exponent!r}: only 65537 is supported.")
    else:
        crv = body.get("crv", "P-256")
        if crv not in keycrypto.CURVES:
            raise bad_parameter(f"Invalid crv {crv!r} for EC-HSM: use {', '.join(keycrypto.CURVES)}.")
    key_ops = _key_ops(body.get("key_ops"), kty, request)
    attributes = _attributes(body)
    tags = _tags(body.get("tags"))
    exportable, policy = attributes.get("exportable", False), body.get("release_policy")
    if exportable and policy is None:
        raise bad_parameter("Exportable keys must have release policy")
    if not exportable and policy is not None:
        raise bad_parameter("Non-exportable keys must not have release policy")
    if exportable:
        raise bad_parameter("The emulator does not model exportable keys or key release.")
    record = hsm.store.find(name)
    if record is not None and record.deleted:
        raise ServiceError(409, "Conflict",
                           f"Key {record.latest.name} is currently in a deleted but recoverable state, and its name "
                           "cannot be reused; in this state, the key can only be recovered or purged.",
                           inner="ObjectIsDeletedButRecoverable")
    private_key = await asyncio.to_thread(keycrypto.generate, kty, size, crv)
    now = int(time.time())
    version = KeyVersion(name=record.latest.name if record else name, version=uuid.uuid4().hex, kty=kty, crv=crv,
                         size=size, key_ops=key_ops, enabled=attributes.get("enabled", True),
                         nbf=attributes.get("nbf"), exp=attributes.get("exp"), created=now, updated=now, tags=tags,
                         seq=hsm.store.next_seq(), private_key=private_key)
    hsm.store.add_version(version)
    return json_response(_bundle(request, hsm, version))


@operation("get", "keys/read/action", "/keys/{name}")
async def get_key(request: Request, hsm: Hsm) -> Response:
    return json_response(_bundle(request, hsm, _version(hsm, request)))


def _first_seq(record: KeyRecord) -> int:
    return record.versions[0].seq


@operation("list", "keys/read/action", "/keys")
async def list_keys(request: Request, hsm: Hsm) -> Response:
    live = sorted((r for r in hsm.store.keys.values() if not r.deleted), key=_first_seq)
    return _page(request, live, _first_seq, lambda r: _item(request, hsm, r.latest, versioned=False))


@operation("list_versions", "keys/read/action", "/keys/{name}")
async def list_versions(request: Request, hsm: Hsm) -> Response:
    """A name with no live key lists no versions: 200 with an empty list, as a live HSM answers."""
    record = hsm.store.find(request.path_params["name"])
    versions = record.versions if record is not None and not record.deleted else []
    return _page(request, versions, lambda v: v.seq, lambda v: _item(request, hsm, v, versioned=True))


@operation("update", "keys/write/action", "/keys/{name}")
async def update_key(request: Request, hsm: Hsm) -> Response:
    version = _version(hsm, request)
    body = await json_body(request)
    key_ops = _key_ops(body["key_ops"], version.kty, request) if body.get("key_ops") is not None else version.key_ops
    attributes = _attributes(body)
    tags = _tags(body["tags"]) if "tags" in body and body["tags"] is not None else version.tags
    if body.get("release_policy") is not None:
        raise bad_parameter("Non-exportable keys must not have release policy")
    version.key_ops, version.tags = key_ops, tags
    version.enabled = attributes.get("enabled", version.enabled)
    version.nbf = attributes["nbf"] if "nbf" in attributes else version.nbf
    version.exp = attributes["exp"] if "exp" in attributes else version.exp
    version.updated = int(time.time())
    hsm.store.save_version(version)
    return json_response(_bundle(request, hsm, version))


@operation("delete", "keys/delete", "/keys/{name}")
async def delete_key(request: Request, hsm: Hsm) -> Response:
    record = _live(hsm, request)
    hsm.store.soft_delete(record)
    return json_response(_deleted(request, record, _bundle(request, hsm, record.latest)))


@operation("get_deleted", "keys/deletedKeys/read/action", "/keys/{name}")
async def get_deleted_key(request: Request, hsm: Hsm) -> Response:
    record = _deleted_record(hsm, request)
    return json_response(_deleted(request, record, _bundle(request, hsm, record.latest)))


@operation("list_deleted", "keys/deletedKeys/read/action", "/keys")
async def list_deleted_keys(request: Request, hsm: Hsm) -> Response:
    deleted = sorted((r for r in hsm.store.keys.values() if r.deleted), key=_first_seq)
    return _page(request, deleted, _first_seq,
                 lambda r: _deleted(request, r, _item(request, hsm, r.latest, versioned=False)))


@operation("recover", "keys/deletedKeys/recover/action", "/keys/{name}")
async def recover_key(request: Request, hsm: Hsm) -> Response:
    record = _deleted_record(hsm, request)
    hsm.store.recover(record)
    return json_response(_bundle(request, hsm, record.latest))


@operation("purge", "keys/deletedKeys/delete", "/keys/{name}")
async def purge_key(request: Request, hsm: Hsm) -> Response:
    hsm.store.purge(_deleted_record(hsm, request))
    return Response(status_code=204)


@operation("sign", "keys/sign/action", "/keys/{name}")
async def sign(request: Request, hsm: Hsm) -> Response:
    version = _version(hsm, request)
    body = await json_body(request)
    _check_usable(version, "sign", lifetime=True)
    alg = _algorithm(body, version)
    digest = _digest(body, "value", alg, version)
    signature = keycrypto.sign(version.private_key, alg, digest, version.crv)
    hsm.control.signs[(request.state.principal, version.name, alg.name)] += 1
    # Recorded sign answers carry alg, kid and value.
    return json_response({"alg": alg.name, "kid": _kid(request, version), "value": keycrypto.b64url(signature)})


@operation("verify", "keys/verify/action", "/keys/{name}")
async def verify(request: Request, hsm: Hsm) -> Response:
    version = _version(hsm, request)
    body = await json_body(request)
    _check_usable(version, "verify", lifetime=False)
    alg = _algorithm(body, version)
    digest = _digest(body, "digest", alg, version)
    signature = _b64_field(body, "value")
    valid = keycrypto.verify(version.private_key, alg, digest, signature, version.crv)
    return json_response({"alg": alg.name, "kid": _kid(request, version), "value": valid})


@operation("unmodeled", "keys/read/action", "/keys/{name}")
async def unmodeled(request: Request, hsm: Hsm) -> Response:
    raise bad_parameter(f"The emulator does not model the '{request.path_params['op']}' operation.")


@operation("rng", "rng/action", "/")
async def rng(request: Request, hsm: Hsm) -> Response:
    count = (await json_body(request)).get("count")
    if not _is_int(count) or not 1 <= count <= 128:
        raise bad_parameter("GetRandomBytesRequest: count cannot be greater than 128 or less than 1")
    return json_response({"value": keycrypto.b64url(os.urandom(count))})


def _routes(path: str, endpoint: Callable[..., Any], methods: list[str], variants: Iterable[str]) -> list[Route]:
    return [Route(path.format(v=v), endpoint, methods=methods) for v in variants]


# Empty or missing version segments mean "latest" (the SDK sends `/keys/n/` and `/keys/n//sign`).
# Sign comes first: Starlette tries routes in order, and signing is nearly all the traffic.
ROUTES: list[Route] = [
    *_routes("/keys/{{name}}{v}/sign", sign, ["POST"], ("/{version}", "/", "")),
    Route("/keys", list_keys, methods=["GET"]),
    Route("/keys/", list_keys, methods=["GET"]),  # what the .NET SDK sends
    Route("/keys/{name}/create", create_key, methods=["POST"]),
    Route("/keys/{name}/versions", list_versions, methods=["GET"]),
    *_routes("/keys/{{name}}{v}", get_key, ["GET"], ("", "/", "/{version}")),
    *_routes("/keys/{{name}}{v}", update_key, ["PATCH"], ("", "/", "/{version}")),
    Route("/keys/{name}", delete_key, methods=["DELETE"]),
    *_routes("/keys/{{name}}{v}/verify", verify, ["POST"], ("", "/", "/{version}")),
    Route("/keys/{name}/{version}/{op}", unmodeled, methods=["POST"]),
    Route("/deletedkeys", list_deleted_keys, methods=["GET"]),
    Route("/deletedkeys/", list_deleted_keys, methods=["GET"]),
    Route("/deletedkeys/{name}", get_deleted_key, methods=["GET"]),
    Route("/deletedkeys/{name}", purge_key, methods=["DELETE"]),
    Route("/deletedkeys/{name}/recover", recover_key, methods=["POST"]),
    Route("/rng", rng, methods=["POST"]),
]
