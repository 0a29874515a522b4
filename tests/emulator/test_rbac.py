"""Conformance checks 14 and 15 (reference §9): local RBAC as §7 describes it, driven through
Microsoft's KeyVaultAccessControlClient (and bare HTTPS where the status code itself is the point),
in the permissive, granular and empty setups."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any, Callable, Iterator

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.keyvault.administration import KeyVaultDataAction, KeyVaultPermission, KeyVaultRoleScope
from azure.keyvault.administration._internal import http_challenge_cache as role_challenges
from azure.keyvault.keys._shared import http_challenge_cache as key_challenges
from azure.keyvault.keys.crypto import SignatureAlgorithm

from tests.conftest import Emulator, start_emulator

PREFIX = "Microsoft.KeyVault/managedHsm/"
DEFINITIONS = "/providers/Microsoft.Authorization/roleDefinitions"
ASSIGNMENTS = "/providers/Microsoft.Authorization/roleAssignments"
BUILT_IN = {
    "Managed HSM Administrator": "a290e904-7015-4bba-90c8-60543313cdb4",
    "Managed HSM Crypto Officer": "515eb02d-2335-4d2d-92f2-b1cbdf9c3778",
    "Managed HSM Crypto User": "21dbd100-6940-42c2-9190-5d6cb909625b",
    "Managed HSM Policy Administrator": "4bd23610-cdcf-4971-bdee-bdc562cc28e4",
}
# The live dump of Crypto User (reference §7.3), prefix omitted.
CRYPTO_USER_ACTIONS = {
    "roleDefinitions/read/action", "roleAssignments/read/action", "keys/read/action", "keys/write/action",
    "keys/delete", "keys/create", "keys/rotate/action", "keys/import/action", "keys/release/action",
    "keys/backup/action", "keys/restore/action", "keys/encrypt/action", "keys/decrypt/action", "keys/wrap/action",
    "keys/unwrap/action", "keys/sign/action", "keys/verify/action", "keys/derive/action", "rng/action"}
DEFINITION_ID = "Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/{}"
CRYPTO_USER_ID = DEFINITION_ID.format(BUILT_IN["Managed HSM Crypto User"])
DIGEST = hashlib.sha256(b"rbac").digest()


def _where(action: str, scope: str) -> str:
    """How the service names the scope: quoted for key actions (`keys/create on '/keys'`), bare for the
    role API (`roleAssignments/read/action on /`), as the real messages in reference §6 show."""
    return f" on {scope} " if action.startswith(("roleAssignments/", "roleDefinitions/")) else f" on '{scope}' "


def _denied(call: Callable[[], Any], action: str, scope: str | None = None) -> None:
    """`call` fails with 403 AccessDenied naming the action (and the scope, when given)."""
    with pytest.raises(HttpResponseError) as refused:
        call()
    assert refused.value.status_code == 403 and refused.value.error.code == "AccessDenied"
    expected = f"Not authorized to access {PREFIX}{action}"
    if scope is not None:
        expected += _where(action, scope)
    assert expected in refused.value.error.message
    assert "(Activity ID: " in refused.value.error.message


def _sign(emulator: Emulator, key_id: str, principal: str, api_version: str) -> bytes:
    return emulator.crypto_client(key_id, principal, api_version=api_version).sign(SignatureAlgorithm.es256,
                                                                                   DIGEST).signature


@pytest.fixture(scope="module")
def empty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """The empty scenario: only the admin holds roles, so every grant below is the test's own."""
    emulator = start_emulator(tmp_path_factory.mktemp("empty"), "--scenario", "empty")
    # A port can be reused by a later emulator; never let a stale cached challenge (another tenant) apply.
    for cache in (key_challenges, role_challenges):
        cache.remove_challenge_for_url(emulator.url)
    try:
        yield emulator
    finally:
        emulator.stop()


# -- check 14 ----------------------------------------------------------------------------------------

def test_permissive_scenario(permissive: Emulator, api_version: str, key_name: str,
                             trust: Callable[[Emulator], Emulator]) -> None:
    """Check 14 as §7.5 puts it: Crypto User at /keys lets keygen create and tls-offload list, read and
    sign every key; the admin manages roles but can neither create nor sign."""
    trust(permissive)
    key = permissive.key_client("keygen", api_version=api_version).create_ec_key(key_name, curve="P-256")
    other = permissive.key_client("tls-offload", api_version=api_version).create_ec_key(f"{key_name}-tls",
                                                                                        curve="P-256")
    tls = permissive.key_client("tls-offload", api_version=api_version)
    assert {key_name, f"{key_name}-tls"} <= {p.name for p in tls.list_properties_of_keys()}
    assert tls.get_key(key_name).id == key.id
    for key_id in (key.id, other.id):
        assert len(_sign(permissive, key_id, "tls-offload", api_version)) == 64
    _denied(lambda: _sign(permissive, key.id, "admin", api_version), "keys/sign/action", f"/keys/{key_name}")
    _denied(lambda: permissive.key_client("admin", api_version=api_version).create_ec_key(f"{key_name}-a"),
            "keys/create", "/keys")
    admin = permissive.access_client("admin", api_version=api_version)
    assert {d.role_name for d in admin.list_role_definitions(KeyVaultRoleScope.GLOBAL)} >= set(BUILT_IN)


def test_principal_without_assignment_gets_access_denied(emulator: Emulator, api_version: str,
                                                         key_name: str) -> None:
    """Check 14: "nobody" is authenticated but holds no role. Every call is 403 AccessDenied in the
    service's shape, checked before the key is looked up (a missing key is 403 too, not 404)."""
    emulator.key_client("keygen", api_version=api_version).create_ec_key(key_name, curve="P-256")
    params = {"api-version": api_version}
    before = emulator.admin.counters()
    calls = {
        ("GET", f"/keys/{key_name}"): ("keys/read/action", f"/keys/{key_name}"),
        ("GET", f"/keys/no-such-key-{uuid.uuid4().hex}"): ("keys/read/action", None),
        ("GET", "/keys"): ("keys/read/action", "/keys"),
        ("POST", f"/keys/{key_name}//sign"): ("keys/sign/action", f"/keys/{key_name}"),
        ("POST", f"/keys/{key_name}-new/create"): ("keys/create", "/keys"),
        ("POST", "/rng"): ("rng/action", "/"),
        ("GET", DEFINITIONS): ("roleDefinitions/read/action", "/"),
        ("GET", f"/keys{ASSIGNMENTS}"): ("roleAssignments/read/action", "/keys"),
    }
    bodies = {"sign": {"alg": "ES256", "value": "AAAA"}, "create": {"kty": "EC-HSM", "crv": "P-256"},
              "rng": {"count": 8}}
    with emulator.http("nobody") as http:
        for (method, path), (action, scope) in calls.items():
            body = next((b for suffix, b in bodies.items() if path.endswith(suffix)), None)
            response = http.request(method, path, params=params, json=body)
            assert response.status_code == 403, (method, path, response.text)
            assert response.headers["content-type"] == "application/json; charset=utf-8"
            error = response.json()["error"]
            assert set(error) == {"code", "message"} and error["code"] == "AccessDenied"
            assert error["message"].startswith(f"Not authorized to access {PREFIX}{action} on ")
            if scope is not None:
                assert _where(action, scope) in error["message"]
            assert error["message"].endswith(f"(Activity ID: {response.headers['x-ms-request-id']})")
    _denied(lambda: emulator.key_client("nobody", api_version=api_version).create_ec_key(f"{key_name}-x"),
            "keys/create", "/keys")
    _denied(lambda: list(emulator.access_client("nobody", api_version=api_version).list_role_definitions(
        KeyVaultRoleScope.GLOBAL)), "roleDefinitions/read/action")
    after = emulator.admin.counters()
    assert after["requests"]["by_operation_principal"]["sign"]["nobody"] == \
        before["requests"]["by_operation_principal"].get("sign", {}).get("nobody", 0) + 1, "counted as nobody's"
    assert after["signs"]["by_principal"].get("nobody", 0) == before["signs"]["by_principal"].get("nobody", 0)


# -- check 15: the role API --------------------------------------------------------------------------

def test_built_in_roles_are_listed_with_their_real_ids(emulator: Emulator, api_version: str) -> None:
    client = emulator.access_client("admin", api_version=api_version)
    definitions = {d.role_name: d for d in client.list_role_definitions(KeyVaultRoleScope.GLOBAL)}
    for name, guid in BUILT_IN.items():
        role = definitions[name]
        assert role.name == guid and role.id == DEFINITION_ID.format(guid)
        assert role.role_type == "AKVBuiltInRole" and role.assignable_scopes == [KeyVaultRoleScope.GLOBAL]
        assert role.type == "Microsoft.Authorization/roleDefinitions"
        assert client.get_role_definition(KeyVaultRoleScope.GLOBAL, guid).role_name == name
    user = {a.removeprefix(PREFIX) for a in definitions["Managed HSM Crypto User"].permissions[0].data_actions}
    assert user == CRYPTO_USER_ACTIONS
    for name in ("Managed HSM Administrator", "Managed HSM Crypto Officer", "Managed HSM Policy Administrator"):
        actions = definitions[name].permissions[0].data_actions
        assert KeyVaultDataAction.SIGN_HSM_KEY not in actions and KeyVaultDataAction.CREATE_HSM_KEY not in actions


def test_built_in_roles_cannot_be_changed_or_deleted(emulator: Emulator, api_version: str) -> None:
    client = emulator.access_client("admin", api_version=api_version)
    with pytest.raises(HttpResponseError) as changed:
        client.set_role_definition(KeyVaultRoleScope.GLOBAL, name=BUILT_IN["Managed HSM Crypto User"],
                                   permissions=[KeyVaultPermission(data_actions=[KeyVaultDataAction.READ_HSM_KEY])])
    assert changed.value.status_code == 400 and changed.value.error.code == "BadParameter"
    assert changed.value.error.message.startswith("Cannot re-use the name/GUID matching that of a built-in role. "
                                                  "Please use a unique role ID. (Activity ID: ")
    for name, guid in BUILT_IN.items():
        with pytest.raises(HttpResponseError) as deleted:
            client.delete_role_definition(KeyVaultRoleScope.GLOBAL, guid)
        assert deleted.value.status_code == 400 and deleted.value.error.code == "BadParameter", name
    user = client.get_role_definition(KeyVaultRoleScope.GLOBAL, BUILT_IN["Managed HSM Crypto User"])
    assert {a.removeprefix(PREFIX) for a in user.permissions[0].data_actions} == CRYPTO_USER_ACTIONS, "unchanged"


def test_unknown_definition_and_assignment_are_404(emulator: Emulator, api_version: str) -> None:
    client = emulator.access_client("admin", api_version=api_version)
    with pytest.raises(ResourceNotFoundError) as definition:
        client.get_role_definition(KeyVaultRoleScope.GLOBAL, str(uuid.uuid4()))
    assert definition.value.error.code == "RoleDefinitionNotFound"
    assert definition.value.error.message.startswith("Requested role definition not found (Activity ID: ")
    for scope in (KeyVaultRoleScope.GLOBAL, KeyVaultRoleScope.KEYS):
        with pytest.raises(ResourceNotFoundError) as assignment:
            client.get_role_assignment(scope, str(uuid.uuid4()))
        assert assignment.value.error.code == "RoleAssignmentNotFound"
        assert assignment.value.error.message.startswith("Requested role assignment not found (Activity ID: ")
    # An assignment naming a role definition that does not exist (decision in docs/emulator.md).
    with pytest.raises(ResourceNotFoundError) as dangling:
        client.create_role_assignment(KeyVaultRoleScope.KEYS, DEFINITION_ID.format(uuid.uuid4()),
                                      emulator.principal("nobody")["object_id"])
    assert dangling.value.error.code == "RoleDefinitionNotFound"
    # The SDK's deletes swallow 404 (deleting is idempotent for it); the service still answers 404.
    assert client.delete_role_definition(KeyVaultRoleScope.GLOBAL, str(uuid.uuid4())) is None
    assert client.delete_role_assignment(KeyVaultRoleScope.KEYS, str(uuid.uuid4())) is None
    with emulator.http("admin") as http:
        for path, code in ((f"{DEFINITIONS}/{uuid.uuid4()}", "RoleDefinitionNotFound"),
                           (f"{ASSIGNMENTS}/{uuid.uuid4()}", "RoleAssignmentNotFound"),
                           (f"/keys{ASSIGNMENTS}/{uuid.uuid4()}", "RoleAssignmentNotFound")):
            response = http.delete(path, params={"api-version": api_version})
            assert response.status_code == 404 and response.json()["error"]["code"] == code, path


def test_role_api_on_the_wire(emulator: Emulator, api_version: str) -> None:
    """The status codes and bodies §7.4 records: PUT of a custom role 201 with type CustomRole and
    assignableScopes ["/"], DELETE 200 with the object, then 404; an assignment PUT 201 with the
    scope's id, a second PUT of the same name 409; repeated slashes in the scope collapse."""
    guid = str(uuid.uuid4())
    params = {"api-version": api_version}
    role = {"properties": {"roleName": f"TLS Library User Read Role {guid[:8]}",
                           "description": "Grant Read access to keys",
                           "permissions": [{"dataActions": [f"{PREFIX}keys/read/action"]}]}}
    with emulator.http("admin") as http:
        created = http.put(f"{DEFINITIONS}/{guid}", params=params, json=role)
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["id"] == DEFINITION_ID.format(guid) and body["name"] == guid
        assert body["type"] == "Microsoft.Authorization/roleDefinitions"
        assert body["properties"]["type"] == "CustomRole" and body["properties"]["assignableScopes"] == ["/"]
        assert body["properties"]["permissions"][0]["dataActions"] == [f"{PREFIX}keys/read/action"]
        assert http.get(f"//{DEFINITIONS}/{guid}", params=params).json()["properties"]["roleName"] == \
            role["properties"]["roleName"]

        name = str(uuid.uuid4())
        # A principal id no token carries, so nothing else in the shared emulator is affected.
        grant = {"properties": {"principalId": str(uuid.uuid4()), "roleDefinitionId": DEFINITION_ID.format(guid)}}
        assigned = http.put(f"/keys{ASSIGNMENTS}/{name}", params=params, json=grant)
        assert assigned.status_code == 201, assigned.text
        assert assigned.json() == {"id": f"{ASSIGNMENTS}/{name}", "name": name,
                                   "type": "Microsoft.Authorization/roleAssignments",
                                   "properties": grant["properties"] | {"scope": "/keys"}}
        again = http.put(f"/keys{ASSIGNMENTS}/{name}", params=params, json=grant)
        assert again.status_code == 409 and again.json()["error"]["code"] == "RoleAssignmentExists"
        removed = http.delete(f"/keys{ASSIGNMENTS}/{name}", params=params)
        assert removed.status_code == 200 and removed.json()["name"] == name

        deleted = http.delete(f"{DEFINITIONS}/{guid}", params=params)
        assert deleted.status_code == 200 and deleted.json()["name"] == guid
        gone = http.get(f"{DEFINITIONS}/{guid}", params=params)
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "RoleDefinitionNotFound"
        built_in = http.put(f"{DEFINITIONS}/{BUILT_IN['Managed HSM Crypto User']}", params=params, json=role)
        assert built_in.status_code == 400 and built_in.json()["error"]["code"] == "BadParameter"
        assert http.delete(f"{DEFINITIONS}/{BUILT_IN['Managed HSM Administrator']}",
                           params=params).status_code == 400


def test_assignments_are_listed_per_scope(emulator: Emulator, api_version: str) -> None:
    """Listing at / returns every scope's assignments (the admin's roles at /, the scenario's at /keys);
    at /keys those at /keys and below. Listing is checked at the URL's scope, so Crypto User at /keys
    may list /keys but not /."""
    admin = emulator.access_client("admin", api_version=api_version)
    oids = {name: emulator.principal(name)["object_id"] for name in ("admin", "keygen", "tls-offload")}
    top = [a.properties for a in admin.list_role_assignments(KeyVaultRoleScope.GLOBAL)]
    admin_roles = {p.role_definition_id.rsplit("/", 1)[-1] for p in top if p.principal_id == oids["admin"]}
    assert admin_roles == {BUILT_IN["Managed HSM Administrator"], BUILT_IN["Managed HSM Crypto Officer"]}
    assert {"/", "/keys"} <= {p.scope for p in top}
    keys = [a.properties for a in admin.list_role_assignments(KeyVaultRoleScope.KEYS)]
    assert all(p.scope == "/keys" or p.scope.startswith("/keys/") for p in keys)
    keys = [p for p in keys if p.scope == "/keys"]
    by_principal = {p.principal_id: p.role_definition_id for p in keys}
    assert by_principal[oids["keygen"]] == CRYPTO_USER_ID
    tls_role = by_principal[oids["tls-offload"]]
    if emulator.info["scenario"] == "permissive":
        assert tls_role == CRYPTO_USER_ID
    else:
        assert tls_role == DEFINITION_ID.format(emulator.info["roles"]["TLS Library User Read Role"])
    keygen = emulator.access_client("keygen", api_version=api_version)
    assert oids["keygen"] in {a.properties.principal_id for a in keygen.list_role_assignments(KeyVaultRoleScope.KEYS)}
    _denied(lambda: list(keygen.list_role_assignments(KeyVaultRoleScope.GLOBAL)), "roleAssignments/read/action", "/")
    _denied(lambda: keygen.create_role_assignment(KeyVaultRoleScope.KEYS, CRYPTO_USER_ID,
                                                  emulator.principal("nobody")["object_id"]),
            "roleAssignments/write/action", "/keys")


def test_granular_scenario_through_the_role_api(granular: Emulator, api_version: str, key_name: str,
                                                trust: Callable[[Emulator], Emulator]) -> None:
    """Check 15, the official granular recipe (§7.5): the admin's custom read role (201, CustomRole)
    exists and is tls-offload's at /keys, so it lists and reads every key; a per-key Crypto User
    assignment lets it sign with that key only, and allows neither create (not even a new version
    of its own key) nor other keys; removing the assignment takes the right away again."""
    trust(granular)
    admin = granular.access_client("admin", api_version=api_version)
    role = admin.set_role_definition(KeyVaultRoleScope.GLOBAL, role_name=f"Read only {key_name}",
                                     description="Grant Read access to keys",
                                     permissions=[KeyVaultPermission(data_actions=[KeyVaultDataAction.READ_HSM_KEY])])
    assert role.role_type == "CustomRole" and role.assignable_scopes == ["/"]
    assert role.id == DEFINITION_ID.format(role.name)
    assert admin.get_role_definition(KeyVaultRoleScope.GLOBAL, role.name).role_name == role.role_name
    scenario_role = granular.info["roles"]["TLS Library User Read Role"]
    read_role = admin.get_role_definition(KeyVaultRoleScope.GLOBAL, scenario_role)
    assert read_role.role_type == "CustomRole"
    assert read_role.permissions[0].data_actions == [KeyVaultDataAction.READ_HSM_KEY]

    keygen = granular.key_client("keygen", api_version=api_version)
    mine = keygen.create_ec_key(key_name, curve="P-256")
    other = keygen.create_ec_key(f"{key_name}-other", curve="P-256")
    tls_keys = granular.key_client("tls-offload", api_version=api_version)
    tls = granular.principal("tls-offload")["object_id"]
    assert {key_name, f"{key_name}-other"} <= {p.name for p in tls_keys.list_properties_of_keys()}
    assert tls_keys.get_key(f"{key_name}-other").id == other.id, "the read role at /keys reads every key"
    _denied(lambda: _sign(granular, mine.id, "tls-offload", api_version), "keys/sign/action", f"/keys/{key_name}")

    per_key = admin.create_role_assignment(f"/keys/{key_name}", CRYPTO_USER_ID, tls)
    assert per_key.properties.scope == f"/keys/{key_name}" and per_key.properties.principal_id == tls
    assert per_key.role_assignment_id == f"{ASSIGNMENTS}/{per_key.name}"
    listed = admin.list_role_assignments(f"/keys/{key_name}")
    assert [a.name for a in listed] == [per_key.name]
    assert admin.get_role_assignment(f"/keys/{key_name}", per_key.name).properties.role_definition_id == CRYPTO_USER_ID

    before = granular.admin.counters()["signs"]["by_key"].get(key_name, 0)
    assert len(_sign(granular, mine.id, "tls-offload", api_version)) == 64
    assert granular.admin.counters()["signs"]["by_key"][key_name] == before + 1
    _denied(lambda: _sign(granular, other.id, "tls-offload", api_version), "keys/sign/action",
            f"/keys/{key_name}-other")
    _denied(lambda: tls_keys.create_ec_key(f"{key_name}-x"), "keys/create", "/keys")
    _denied(lambda: tls_keys.create_ec_key(key_name, curve="P-256"), "keys/create", "/keys")
    _denied(lambda: list(granular.access_client("tls-offload", api_version=api_version).list_role_assignments(
        KeyVaultRoleScope.KEYS)), "roleAssignments/read/action", "/keys")
    _denied(lambda: _sign(granular, mine.id, "admin", api_version), "keys/sign/action")

    admin.delete_role_assignment(f"/keys/{key_name}", per_key.name)
    assert list(admin.list_role_assignments(f"/keys/{key_name}")) == []
    _denied(lambda: _sign(granular, mine.id, "tls-offload", api_version), "keys/sign/action")
    admin.delete_role_definition(KeyVaultRoleScope.GLOBAL, role.name)
    with pytest.raises(ResourceNotFoundError):
        admin.get_role_definition(KeyVaultRoleScope.GLOBAL, role.name)


# -- evaluation: wildcards, notDataActions, case, defunct assignments --------------------------------

def _grant(emulator: Emulator, scope: str, role_id: str, principal: str, api_version: str) -> Any:
    return emulator.access_client("admin", api_version=api_version).create_role_assignment(
        scope, role_id, emulator.principal(principal)["object_id"])


def test_not_data_actions_and_wildcards(empty: Emulator, api_version: str, key_name: str,
                                        trust: Callable[[Emulator], Emulator]) -> None:
    """A custom role granting keys/* except sign: everything else under keys/ works, sign is refused,
    rng (not under keys/) too. notDataActions only trims that role: a second role that grants sign
    on one key makes that sign work."""
    trust(empty)
    admin = empty.access_client("admin", api_version=api_version)
    role = admin.set_role_definition(KeyVaultRoleScope.GLOBAL, role_name=f"All but sign {key_name}", permissions=[
        KeyVaultPermission(data_actions=[f"{PREFIX}keys/*"], not_data_actions=[KeyVaultDataAction.SIGN_HSM_KEY])])
    assert role.permissions[0].not_data_actions == [KeyVaultDataAction.SIGN_HSM_KEY]
    keygen = empty.key_client("keygen", api_version=api_version)
    _denied(lambda: keygen.create_ec_key(f"{key_name}-before"), "keys/create", "/keys")
    assignment = _grant(empty, KeyVaultRoleScope.KEYS, role.id, "keygen", api_version)
    try:
        key = keygen.create_ec_key(key_name, curve="P-256")
        assert key_name in {p.name for p in keygen.list_properties_of_keys()}
        updated = keygen.update_key_properties(key_name, tags={"wild": "card"})
        assert updated.properties.tags == {"wild": "card"}
        _denied(lambda: _sign(empty, key.id, "keygen", api_version), "keys/sign/action", f"/keys/{key_name}")
        verified = empty.crypto_client(key.id, "keygen", api_version=api_version).verify(
            SignatureAlgorithm.es256, DIGEST, bytes(64))
        assert verified.is_valid is False, "verify is allowed (keys/verify/action matches keys/*)"
        with empty.http("keygen") as http:
            rng = http.post("/rng", params={"api-version": api_version}, json={"count": 4})
        assert rng.status_code == 403 and "rng/action" in rng.json()["error"]["message"]

        per_key = _grant(empty, f"/keys/{key_name}", CRYPTO_USER_ID, "keygen", api_version)
        assert len(_sign(empty, key.id, "keygen", api_version)) == 64, "another role's grant is not denied"
        admin.delete_role_assignment(f"/keys/{key_name}", per_key.name)
        _denied(lambda: _sign(empty, key.id, "keygen", api_version), "keys/sign/action")
    finally:
        admin.delete_role_assignment(KeyVaultRoleScope.KEYS, assignment.name)
        admin.delete_role_definition(KeyVaultRoleScope.GLOBAL, role.name)
    _denied(lambda: keygen.get_key(key_name), "keys/read/action")


@pytest.mark.parametrize("action", [f"{PREFIX}keys/read/action", "microsoft.keyvault/managedHSM/KEYS/READ/ACTION",
                                    f"{PREFIX}keys/*/action", f"{PREFIX}*"])
def test_data_actions_match_case_insensitively_and_by_wildcard(empty: Emulator, action: str, key_name: str,
                                                               trust: Callable[[Emulator], Emulator]) -> None:
    """A role listing read in any case, or through a wildcard, lets "nobody" list and read keys."""
    trust(empty)
    admin = empty.access_client("admin")
    # Nobody may create keys in the empty scenario: keygen gets Crypto User just long enough to make one.
    creator = _grant(empty, KeyVaultRoleScope.KEYS, CRYPTO_USER_ID, "keygen", "7.5")
    try:
        empty.key_client("keygen").create_ec_key(key_name, curve="P-256")
    finally:
        admin.delete_role_assignment(KeyVaultRoleScope.KEYS, creator.name)
    reader = empty.key_client("nobody")
    _denied(lambda: reader.get_key(key_name), "keys/read/action")
    role = admin.set_role_definition(KeyVaultRoleScope.GLOBAL, role_name=f"Reader {key_name}",
                                     permissions=[KeyVaultPermission(data_actions=[action])])
    assignment = _grant(empty, KeyVaultRoleScope.KEYS, role.id, "nobody", "7.5")
    try:
        assert reader.get_key(key_name).name == key_name
        assert key_name in {p.name for p in reader.list_properties_of_keys()}
        if not action.endswith("/*"):
            _denied(lambda: reader.create_ec_key(f"{key_name}-x"), "keys/create", "/keys")
    finally:
        admin.delete_role_assignment(KeyVaultRoleScope.KEYS, assignment.name)
        admin.delete_role_definition(KeyVaultRoleScope.GLOBAL, role.name)
    _denied(lambda: reader.get_key(key_name), "keys/read/action")


def test_deleting_a_custom_role_makes_its_assignments_defunct(empty: Emulator, api_version: str, key_name: str,
                                                              trust: Callable[[Emulator], Emulator]) -> None:
    """§7.1: deleting a custom role leaves its assignments in place, but they grant nothing."""
    trust(empty)
    admin = empty.access_client("admin", api_version=api_version)
    role = admin.set_role_definition(KeyVaultRoleScope.GLOBAL, role_name=f"Lister {key_name}",
                                     permissions=[KeyVaultPermission(data_actions=[KeyVaultDataAction.READ_HSM_KEY])])
    assignment = _grant(empty, KeyVaultRoleScope.KEYS, role.id, "nobody", api_version)
    reader = empty.key_client("nobody", api_version=api_version)
    assert isinstance(list(reader.list_properties_of_keys()), list)
    admin.delete_role_definition(KeyVaultRoleScope.GLOBAL, role.name)
    try:
        still = admin.get_role_assignment(KeyVaultRoleScope.KEYS, assignment.name)
        assert still.properties.role_definition_id == role.id
        _denied(lambda: list(reader.list_properties_of_keys()), "keys/read/action", "/keys")
    finally:
        admin.delete_role_assignment(KeyVaultRoleScope.KEYS, assignment.name)


def test_empty_scenario_grants_only_the_admin(empty: Emulator, api_version: str) -> None:
    """The empty scenario: the admin's two roles at /, nothing else (the tests above clean up after
    themselves); assignments only go to /, /keys or /keys/<name>."""
    admin = empty.access_client("admin", api_version=api_version)
    assert [a.properties.principal_id for a in admin.list_role_assignments(KeyVaultRoleScope.KEYS)] == []
    assert {a.properties.principal_id for a in admin.list_role_assignments(KeyVaultRoleScope.GLOBAL)} == \
        {empty.principal("admin")["object_id"]}
    for principal in ("keygen", "tls-offload"):
        client = empty.key_client(principal, api_version=api_version)
        _denied(lambda c=client: list(c.list_properties_of_keys()), "keys/read/action", "/keys")
    with pytest.raises(HttpResponseError) as bad_scope:
        admin.create_role_assignment("/secrets", CRYPTO_USER_ID, empty.principal("nobody")["object_id"])
    assert bad_scope.value.status_code == 400 and bad_scope.value.error.code == "BadParameter"
