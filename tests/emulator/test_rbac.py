"""Conformance checks 14 and 15 (reference §9): local RBAC as §7 describes it, driven through
Microsoft's KeyVaultAccessControlClient, in the permissive and granular TLS-offload setups."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any, Callable

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.keyvault.administration import KeyVaultDataAction, KeyVaultPermission, KeyVaultRoleScope
from azure.keyvault.keys.crypto import SignatureAlgorithm

from tests.conftest import Emulator, start_emulator

BUILT_IN = {
    "Managed HSM Administrator": "a290e904-7015-4bba-90c8-60543313cdb4",
    "Managed HSM Crypto Officer": "515eb02d-2335-4d2d-92f2-b1cbdf9c3778",
    "Managed HSM Crypto User": "21dbd100-6940-42c2-9190-5d6cb909625b",
    "Managed HSM Policy Administrator": "4bd23610-cdcf-4971-bdee-bdc562cc28e4",
}
CRYPTO_USER_ID = f"Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/{BUILT_IN['Managed HSM Crypto User']}"
DIGEST = hashlib.sha256(b"rbac").digest()


def _denied(call: Callable[[], Any], action: str) -> None:
    with pytest.raises(HttpResponseError) as refused:
        call()
    assert refused.value.status_code == 403 and refused.value.error.code == "AccessDenied"
    assert f"Microsoft.KeyVault/managedHsm/{action}" in refused.value.error.message


def _sign(emulator: Emulator, key_id: str, principal: str, api_version: str) -> bytes:
    return emulator.crypto_client(key_id, principal, api_version=api_version).sign(SignatureAlgorithm.es256,
                                                                                   DIGEST).signature


def test_permissive_scenario(permissive: Emulator, api_version: str, key_name: str,
                             trust: Callable[[Emulator], Emulator]) -> None:
    """Check 14: Crypto User at /keys creates and signs; the admin manages roles but cannot sign;
    a principal without any assignment gets 403 AccessDenied with the real shape."""
    trust(permissive)
    key = permissive.key_client("keygen", api_version=api_version).create_ec_key(key_name, curve="P-256")
    assert len(_sign(permissive, key.id, "tls-offload", api_version)) == 64
    _denied(lambda: _sign(permissive, key.id, "admin", api_version), "keys/sign/action")
    with permissive.http("nobody") as http:
        response = http.get(f"/keys/{key_name}", params={"api-version": api_version})
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "AccessDenied" and error["message"].startswith("Not authorized to access ")
    assert f"on '/keys/{key_name}'" in error["message"] and "(Activity ID: " in error["message"]
    _denied(lambda: permissive.key_client("nobody", api_version=api_version).create_ec_key(f"{key_name}-x"),
            "keys/create")


def test_built_in_roles_are_listed_and_immutable(emulator: Emulator, api_version: str) -> None:
    client = emulator.access_client("admin", api_version=api_version)
    definitions = {d.role_name: d for d in client.list_role_definitions(KeyVaultRoleScope.GLOBAL)}
    for name, guid in BUILT_IN.items():
        assert definitions[name].name == guid and definitions[name].role_type == "AKVBuiltInRole"
    user = definitions["Managed HSM Crypto User"].permissions[0].data_actions
    assert KeyVaultDataAction.SIGN_HSM_KEY in user and KeyVaultDataAction.CREATE_HSM_KEY in user
    with pytest.raises(HttpResponseError) as changed:
        client.set_role_definition(KeyVaultRoleScope.GLOBAL, name=BUILT_IN["Managed HSM Crypto User"],
                                   permissions=[KeyVaultPermission(data_actions=[KeyVaultDataAction.READ_HSM_KEY])])
    assert changed.value.status_code == 400
    with pytest.raises(HttpResponseError) as deleted:
        client.delete_role_definition(KeyVaultRoleScope.GLOBAL, BUILT_IN["Managed HSM Crypto Officer"])
    assert deleted.value.status_code == 400


def test_unknown_definition_and_assignment_are_404(emulator: Emulator, api_version: str) -> None:
    client = emulator.access_client("admin", api_version=api_version)
    with pytest.raises(ResourceNotFoundError) as definition:
        client.get_role_definition(KeyVaultRoleScope.GLOBAL, str(uuid.uuid4()))
    assert definition.value.error.code == "RoleDefinitionNotFound"
    with pytest.raises(ResourceNotFoundError) as assignment:
        client.get_role_assignment(KeyVaultRoleScope.GLOBAL, str(uuid.uuid4()))
    assert assignment.value.error.code == "RoleAssignmentNotFound"


def test_granular_scenario_through_the_role_api(granular: Emulator, api_version: str, key_name: str,
                                                trust: Callable[[Emulator], Emulator]) -> None:
    """Check 15: the official granular recipe. A custom role (201, CustomRole); tls-offload reads every
    key through it at /keys but signs only with the key it got Crypto User on, through a per-key
    assignment; the per-key assignment allows neither create nor other keys."""
    trust(granular)
    admin = granular.access_client("admin", api_version=api_version)
    role = admin.set_role_definition(KeyVaultRoleScope.GLOBAL, role_name=f"Read only {key_name}",
                                     description="Grant Read access to keys",
                                     permissions=[KeyVaultPermission(data_actions=[KeyVaultDataAction.READ_HSM_KEY])])
    assert role.role_type == "CustomRole" and role.assignable_scopes == ["/"]
    assert admin.get_role_definition(KeyVaultRoleScope.GLOBAL, role.name).role_name == role.role_name

    keygen = granular.key_client("keygen", api_version=api_version)
    mine = keygen.create_ec_key(key_name, curve="P-256")
    other = keygen.create_ec_key(f"{key_name}-other", curve="P-256")
    tls = granular.principal("tls-offload")["object_id"]
    _denied(lambda: _sign(granular, mine.id, "tls-offload", api_version), "keys/sign/action")

    per_key = admin.create_role_assignment(f"/keys/{key_name}", CRYPTO_USER_ID, tls)
    assert per_key.properties.scope == f"/keys/{key_name}"
    assert len(_sign(granular, mine.id, "tls-offload", api_version)) == 64
    _denied(lambda: _sign(granular, other.id, "tls-offload", api_version), "keys/sign/action")
    _denied(lambda: granular.key_client("tls-offload", api_version=api_version).create_ec_key(f"{key_name}-x"),
            "keys/create")
    names = {p.name for p in granular.key_client("tls-offload", api_version=api_version).list_properties_of_keys()}
    assert {key_name, f"{key_name}-other"} <= names, "the read role at /keys lists every key"

    admin.delete_role_assignment(f"/keys/{key_name}", per_key.name)
    _denied(lambda: _sign(granular, mine.id, "tls-offload", api_version), "keys/sign/action")
    admin.delete_role_definition(KeyVaultRoleScope.GLOBAL, role.name)
    with pytest.raises(ResourceNotFoundError):
        admin.get_role_definition(KeyVaultRoleScope.GLOBAL, role.name)


def test_not_data_actions_and_wildcards(tmp_path: Any, api_version: str,
                                        trust: Callable[[Emulator], Emulator]) -> None:
    """A custom role granting keys/* except sign: everything else works, sign is refused. The empty
    scenario starts with only the admin, so nothing else grants it."""
    emulator = trust(start_emulator(tmp_path / "empty", "--scenario", "empty"))
    try:
        admin = emulator.access_client("admin", api_version=api_version)
        role = admin.set_role_definition(KeyVaultRoleScope.GLOBAL, role_name="All but sign", permissions=[
            KeyVaultPermission(data_actions=["Microsoft.KeyVault/managedHsm/keys/*"],
                               not_data_actions=[KeyVaultDataAction.SIGN_HSM_KEY])])
        keygen = emulator.principal("keygen")["object_id"]
        _denied(lambda: emulator.key_client("keygen", api_version=api_version).create_ec_key("before"), "keys/create")
        admin.create_role_assignment(KeyVaultRoleScope.KEYS, role.id, keygen)
        key = emulator.key_client("keygen", api_version=api_version).create_ec_key("wild", curve="P-256")
        _denied(lambda: _sign(emulator, key.id, "keygen", api_version), "keys/sign/action")
        verified = emulator.crypto_client(key.id, "keygen", api_version=api_version).verify(
            SignatureAlgorithm.es256, DIGEST, bytes(64))
        assert verified.is_valid is False, "verify is allowed (keys/verify/action matches keys/*)"
    finally:
        emulator.stop()
