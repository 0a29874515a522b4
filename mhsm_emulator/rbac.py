"""Managed HSM local RBAC: the built-in roles as the live service dumps them, and their evaluation.

Evaluation (reference §7.1): a request is allowed when one of the caller's assignments has a scope
equal to or above the target (`/` ⊇ `/keys` ⊇ `/keys/<name>`, with `/` ≡ `/keys` for key actions)
and its role lists the action in `dataActions` and not in that same permission's `notDataActions`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

PREFIX = "Microsoft.KeyVault/managedHsm/"
DEFINITION_ID_PREFIX = "Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/"
TLS_READ_ROLE = "TLS Library User Read Role"


@dataclass
class RoleDefinition:
    """A role definition; built-ins are constants, custom ones are stored."""

    guid: str
    role_name: str
    data_actions: list[str]
    not_data_actions: list[str] = field(default_factory=list)
    description: str = ""
    builtin: bool = False
    actions: list[str] = field(default_factory=list)
    not_actions: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return DEFINITION_ID_PREFIX + self.guid

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.guid,
            "type": "Microsoft.Authorization/roleDefinitions",
            "properties": {
                "assignableScopes": ["/"],
                "description": self.description,
                "permissions": [{"actions": self.actions, "notActions": self.not_actions,
                                 "dataActions": self.data_actions, "notDataActions": self.not_data_actions}],
                "roleName": self.role_name,
                "type": "AKVBuiltInRole" if self.builtin else "CustomRole",
            },
        }

    def allows(self, action: str) -> bool:
        wanted = PREFIX + action
        return (any(_pattern(p).fullmatch(wanted) for p in self.data_actions)
                and not any(_pattern(p).fullmatch(wanted) for p in self.not_data_actions))


@dataclass
class RoleAssignment:
    name: str
    scope: str
    principal_id: str
    role_definition_id: str

    @property
    def id(self) -> str:
        """`/providers/.../<name>` whatever the scope: a live HSM answers an assignment made at `/keys`
        with that id and `"scope": "/keys"` (seen through the Azure CLI)."""
        return f"/providers/Microsoft.Authorization/roleAssignments/{self.name}"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "type": "Microsoft.Authorization/roleAssignments",
                "properties": {"principalId": self.principal_id, "roleDefinitionId": self.role_definition_id,
                               "scope": self.scope}}


def _actions(*names: str) -> list[str]:
    return [PREFIX + n for n in names]


# Data actions from a live Managed HSM's dump (reference §7.3), not from the docs' table.
BUILTIN_ROLES: dict[str, RoleDefinition] = {
    r.guid: r
    for r in (
        RoleDefinition("a290e904-7015-4bba-90c8-60543313cdb4", "Managed HSM Administrator", _actions(
            "roleAssignments/delete/action", "roleAssignments/read/action", "roleAssignments/write/action",
            "roleDefinitions/read/action", "roleDefinitions/write/action", "roleDefinitions/delete/action",
            "securitydomain/download/action", "securitydomain/download/read", "securitydomain/upload/action",
            "securitydomain/upload/read", "securitydomain/transferkey/read",
            "backup/start/action", "restore/start/action", "backup/status/action", "restore/status/action",
            "settings/read/action", "settings/write/action"), builtin=True),
        RoleDefinition("515eb02d-2335-4d2d-92f2-b1cbdf9c3778", "Managed HSM Crypto Officer", _actions(
            "roleAssignments/delete/action", "roleAssignments/read/action", "roleAssignments/write/action",
            "roleDefinitions/read/action", "roleDefinitions/write/action", "roleDefinitions/delete/action",
            "keys/deletedKeys/read/action", "keys/deletedKeys/delete", "keys/deletedKeys/recover/action",
            "keys/export/action"), builtin=True),
        RoleDefinition("21dbd100-6940-42c2-9190-5d6cb909625b", "Managed HSM Crypto User", _actions(
            "roleDefinitions/read/action", "roleAssignments/read/action",
            "keys/read/action", "keys/write/action", "keys/delete", "keys/create",
            "keys/rotate/action", "keys/import/action", "keys/release/action", "keys/backup/action",
            "keys/restore/action", "keys/encrypt/action", "keys/decrypt/action", "keys/wrap/action",
            "keys/unwrap/action", "keys/sign/action", "keys/verify/action", "keys/derive/action",
            "rng/action"), builtin=True),
        RoleDefinition("4bd23610-cdcf-4971-bdee-bdc562cc28e4", "Managed HSM Policy Administrator", _actions(
            "roleDefinitions/read/action", "roleDefinitions/write/action", "roleDefinitions/delete/action",
            "roleAssignments/read/action", "roleAssignments/write/action", "roleAssignments/delete/action"),
            builtin=True),
        RoleDefinition("2c18b078-7c48-4d3a-af88-5a3a1b3f82b3", "Managed HSM Crypto Auditor", _actions(
            "roleAssignments/read/action", "roleDefinitions/read/action", "keys/read/action",
            "keys/deletedKeys/read/action"), builtin=True),
        RoleDefinition("33413926-3206-4cdd-b39a-83574fe37a17", "Managed HSM Crypto Service Encryption User",
                       _actions("keys/read/action", "keys/wrap/action", "keys/unwrap/action"), builtin=True),
        RoleDefinition("21dbd100-6940-42c2-9190-5d6cb909625c", "Managed HSM Crypto Service Release User",
                       _actions("keys/release/action"), builtin=True),
        RoleDefinition("7b127d3c-77bd-4e3e-bbe0-dbb8971fa7f8", "Managed HSM Backup User", _actions(
            "backup/start/action", "backup/status/action", "keys/backup/action"), builtin=True),
        RoleDefinition("6efe6056-5259-49d2-8b3d-d3d73544b20b", "Managed HSM Restore User", _actions(
            "keys/restore/action", "restore/start/action", "restore/status/action"), builtin=True),
    )
}

ADMINISTRATOR = "a290e904-7015-4bba-90c8-60543313cdb4"
CRYPTO_OFFICER = "515eb02d-2335-4d2d-92f2-b1cbdf9c3778"
CRYPTO_USER = "21dbd100-6940-42c2-9190-5d6cb909625b"


@lru_cache(maxsize=512)
def _pattern(action: str) -> re.Pattern[str]:
    """Data actions compare case-insensitively and may end in `*` wildcards."""
    return re.compile(".*".join(re.escape(part) for part in action.split("*")), re.IGNORECASE)


def normalize_scope(scope: str) -> str:
    """`//keys/` → `/keys`; scopes compare case-insensitively (names are case-insensitive)."""
    parts = [p for p in scope.split("/") if p]
    return "/" + "/".join(parts).lower() if parts else "/"


def definition_guid(role_definition_id: str) -> str:
    return role_definition_id.rstrip("/").rsplit("/", 1)[-1].lower()


def scope_covers(assigned: str, target: str, action: str) -> bool:
    assigned, target = normalize_scope(assigned), normalize_scope(target)
    if action.startswith(("keys/", "rng/")):
        # For key actions the HSM root and the key collection are the same scope.
        assigned = "/keys" if assigned == "/" else assigned
        target = "/keys" if target == "/" else target
    return assigned == "/" or target == assigned or target.startswith(assigned + "/")


def is_allowed(assignments: list[RoleAssignment], definitions: dict[str, RoleDefinition],
               action: str, target_scope: str) -> bool:
    for assignment in assignments:
        role = definitions.get(definition_guid(assignment.role_definition_id))
        if role is not None and scope_covers(assignment.scope, target_scope, action) and role.allows(action):
            return True
    return False
