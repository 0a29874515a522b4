"""The role-definition and role-assignment REST API (reference §7.4) that KeyVaultAccessControlClient uses.

`{scope}` is a raw path in front of `/providers/Microsoft.Authorization/...`, and clients send it
with repeated slashes (`///providers/...`), so this one endpoint parses the path itself.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from . import rbac
from .dataplane import Hsm, json_body, json_response
from .errors import ServiceError, bad_parameter

ROLE_PATH = re.compile(r"^(?P<scope>.*?)/providers/Microsoft\.Authorization/"
                       r"(?P<kind>roleDefinitions|roleAssignments)(?:/(?P<name>[^/]+))?/?$", re.IGNORECASE)
VERBS = {"GET": "read", "PUT": "write", "DELETE": "delete"}
KEY_SCOPE = re.compile(r"^/keys(/[0-9a-z-]{1,127})?$")
PRINCIPAL_FILTER = re.compile(r"principalId\s+eq\s+'([^']+)'", re.IGNORECASE)
ROLE_NAME_FILTER = re.compile(r"roleName\s+eq\s+'([^']+)'", re.IGNORECASE)


def _definition_not_found() -> ServiceError:
    return ServiceError(404, "RoleDefinitionNotFound", "Requested role definition not found")


def _assignment_not_found() -> ServiceError:
    return ServiceError(404, "RoleAssignmentNotFound", "Requested role assignment not found")


def _string_list(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_parameter(f"Property '{field}' must be an array of strings.")
    return value


def _role_from_body(guid: str, body: dict[str, Any]) -> rbac.RoleDefinition:
    props = body.get("properties")
    if not isinstance(props, dict) or not isinstance(props.get("roleName"), str) or not props["roleName"]:
        raise bad_parameter("Property 'properties.roleName' is required.")
    scopes = props.get("assignableScopes")
    if scopes is not None and [rbac.normalize_scope(s) for s in _string_list(scopes, "assignableScopes")] != ["/"]:
        raise bad_parameter("Role definitions can only be created with assignableScopes [\"/\"].")
    permissions = props.get("permissions") or []
    if not isinstance(permissions, list) or not all(isinstance(p, dict) for p in permissions):
        raise bad_parameter("Property 'properties.permissions' must be an array of objects.")
    lists: dict[str, list[str]] = {"dataActions": [], "notDataActions": [], "actions": [], "notActions": []}
    for permission in permissions:
        for field, merged in lists.items():
            merged.extend(_string_list(permission.get(field), f"permissions.{field}"))
    for action in lists["dataActions"] + lists["notDataActions"]:
        if not action.lower().startswith(rbac.PREFIX.lower()):
            raise bad_parameter(f"Invalid data action '{action}': data actions start with {rbac.PREFIX}")
    description = props.get("description") if isinstance(props.get("description"), str) else ""
    return rbac.RoleDefinition(guid, props["roleName"], lists["dataActions"], lists["notDataActions"], description,
                               actions=lists["actions"], not_actions=lists["notActions"])


async def _definitions(request: Request, hsm: Hsm, guid: str | None) -> Response:
    roles = hsm.store.role_definitions()
    if request.method == "GET" and guid is None:
        wanted = ROLE_NAME_FILTER.search(request.query_params.get("$filter", ""))
        found = [r.to_json() for r in roles.values() if not wanted or r.role_name == wanted.group(1)]
        return json_response({"value": found})  # recorded lists of roles have no nextLink member
    assert guid is not None
    if request.method == "PUT":
        if guid in rbac.BUILTIN_ROLES:
            raise bad_parameter("Cannot re-use the name/GUID matching that of a built-in role. "
                                "Please use a unique role ID.")
        role = _role_from_body(guid, await json_body(request))
        hsm.store.put_role(role)
        return json_response(role.to_json(), status=201)
    role = roles.get(guid)
    if role is None:
        raise _definition_not_found()
    if request.method == "DELETE":
        if role.builtin:
            raise bad_parameter("Built-in role definitions cannot be deleted.")
        hsm.store.delete_role(guid)  # its assignments stay, and are defunct
    return json_response(role.to_json())


def _listed(assigned: str, listed: str, at_scope_only: bool) -> bool:
    """A list at `/` returns the assignments of every scope (what a live HSM answers the Azure CLI's
    unscoped `role assignment list`); at `/keys` those at `/keys` and below; `atScope()` only the
    URL's own."""
    if at_scope_only:
        return assigned == listed
    return listed == "/" or assigned == listed or assigned.startswith(listed + "/")


async def _assignments(request: Request, hsm: Hsm, scope: str, name: str | None) -> Response:
    if request.method == "GET" and name is None:
        query = request.query_params.get("$filter", "")
        wanted = PRINCIPAL_FILTER.search(query)
        found = [a.to_json() for a in hsm.store.assignments.values()
                 if _listed(rbac.normalize_scope(a.scope), scope, "atscope()" in query.lower())
                 and (not wanted or a.principal_id.lower() == wanted.group(1).lower())]
        return json_response({"value": found})
    assert name is not None
    existing = hsm.store.assignments.get(name.lower())
    if request.method == "PUT":
        props = (await json_body(request)).get("properties")
        if not isinstance(props, dict) or not isinstance(props.get("principalId"), str) \
                or not isinstance(props.get("roleDefinitionId"), str):
            raise bad_parameter("Properties 'principalId' and 'roleDefinitionId' are required strings.")
        if scope != "/" and not KEY_SCOPE.fullmatch(scope):
            raise bad_parameter(f"Invalid scope '{scope}': use /, /keys or /keys/<key name>.")
        guid = rbac.definition_guid(props["roleDefinitionId"])
        if guid not in hsm.store.role_definitions():
            raise _definition_not_found()
        if existing is not None:
            raise ServiceError(409, "RoleAssignmentExists", "The role assignment already exists.")
        assignment = hsm.store.assign(scope, props["principalId"], guid, name=name)
        return json_response(assignment.to_json(), status=201)
    if existing is None:
        raise _assignment_not_found()
    if request.method == "DELETE":
        hsm.store.unassign(name)
    return json_response(existing.to_json())


async def role_api(request: Request) -> Response:
    """Catch-all data-plane endpoint: role API paths, else the service's 404."""
    hsm: Hsm = request.app.state.hsm
    match = ROLE_PATH.match(re.sub("/+", "/", request.url.path))
    if match is None or (request.method != "GET" and match["name"] is None):
        return ServiceError(404, "NotFound", "The requested resource was not found.").response(
            request.state.request_id)
    scope = rbac.normalize_scope(match["scope"] or "/")
    kind, name = match["kind"].lower(), match["name"]
    verb = VERBS[request.method]
    if kind == "roledefinitions":
        guid = name.lower() if name else None
        return await hsm.run(request, f"role_definitions_{verb}", f"roleDefinitions/{verb}/action", scope,
                             lambda req, h: _definitions(req, h, guid))
    return await hsm.run(request, f"role_assignments_{verb}", f"roleAssignments/{verb}/action", scope,
                         lambda req, h: _assignments(req, h, scope, name))
