"""Facts from recordings of real Managed HSM traffic (and the REST spec), checked against the emulator.

One test per fact: a status, a member set, a format, a header or a message text, each with the
repository and file it was read from. Recordings are the Azure SDK teams' own test sessions against
live HSMs; only the facts are carried over. Abbreviations in the citations:

- PY  = Azure/azure-sdk-assets python/sdk/keyvault/azure-keyvault-keys/tests/recordings/
- PYA = Azure/azure-sdk-assets python/sdk/keyvault/azure-keyvault-administration/tests/recordings/
- NET = Azure/azure-sdk-assets net/sdk/keyvault/Azure.Security.KeyVault.Keys/tests/SessionRecords/ManagedHsmLiveTests/
- CLI = Azure/azure-cli src/azure-cli/azure/cli/command_modules/keyvault/tests/latest/recordings/
- JS  = Azure/azure-sdk-for-js sdk/keyvault/keyvault-keys/recordings/

Most recordings come from HSMs made with 7-day soft-delete retention, so most facts are checked on
an emulator started with `--recoverable-days 7`; the 90-day default has its own.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from typing import Any, Iterator

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from tests.conftest import Emulator, emulator_for

VERSION = re.compile(r"^[0-9a-f]{32}$")
ASSIGNMENTS = "/providers/Microsoft.Authorization/roleAssignments"
DEFINITIONS = "/providers/Microsoft.Authorization/roleDefinitions"
CRYPTO_USER_ID = "Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/21dbd100-6940-42c2-9190-5d6cb909625b"
ATTRIBUTES = {"created", "enabled", "exportable", "recoverableDays", "recoveryLevel", "updated"}
SHA256 = hashlib.sha256(b"recorded facts").digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    yield from emulator_for(tmp_path_factory, "emulator-7-days", "--recoverable-days", "7")


@pytest.fixture
def http(hsm: Emulator) -> Iterator[Any]:
    with hsm.http("keygen") as client:
        yield client


@pytest.fixture
def officer(hsm: Emulator) -> Iterator[Any]:
    """Deleted keys need Crypto Officer (Crypto User has no keys/deletedKeys/* action); the admin has it."""
    with hsm.http("admin") as client:
        yield client


def _name() -> str:
    return f"rec-{uuid.uuid4().hex[:12]}"


def _create(http: Any, name: str, body: dict[str, Any], version: str = "7.6") -> dict[str, Any]:
    response = http.post(f"/keys/{name}/create", params={"api-version": version}, json=body)
    assert response.status_code == 200, response.text
    return response.json()


# -- the challenge -----------------------------------------------------------------------------------

def test_challenge_on_a_bodiless_post(hsm: Emulator) -> None:
    # PY test_crypto_client.pyTestCryptoClienttest_ec_verify_local[2025-07-01_mhsm].json: 401, Content-Length 0,
    # Content-Type application/json; charset=utf-8, WWW-Authenticate naming login.microsoftonline.com/<tenant>.
    with hsm.http(None) as anonymous:
        response = anonymous.post(f"/keys/{_name()}/create", params={"api-version": "2025-07-01"})
    assert response.status_code == 401 and response.content == b""
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.headers["www-authenticate"] == (
        f'Bearer authorization="https://login.microsoftonline.com/{hsm.info["tenant_id"]}", '
        'resource="https://managedhsm.azure.net"')


def test_challenge_on_a_get_carries_ok(hsm: Emulator) -> None:
    # NET GetKeyNonExisting.json and PYA test_access_control.pyTestAccessControltest_role_assignment[7.6].json:
    # a token-less GET gets 401 with the two-byte body "OK", typed application/json, and an x-ms-request-id.
    with hsm.http(None) as anonymous:
        response = anonymous.get(f"/keys/{_name()}/", params={"api-version": "7.6"})
    assert response.status_code == 401 and response.content == b"OK"
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.headers["x-ms-request-id"]


# -- create, get, update -----------------------------------------------------------------------------

def test_ec_create_default_key_ops_at_2025_07_01(http: Any) -> None:
    # PY test_crypto_client.pyTestCryptoClienttest_ec_verify_local[2025-07-01_mhsm].json: {"kty":"EC-HSM","crv":...}
    # answers key_ops verify, deriveKey, sign and full-length x/y.
    bundle = _create(http, _name(), {"kty": "EC-HSM", "crv": "P-384"}, "2025-07-01")
    assert set(bundle["key"]["key_ops"]) == {"verify", "deriveKey", "sign"}
    assert bundle["key"]["kty"] == "EC-HSM" and bundle["key"]["crv"] == "P-384"
    assert len(_unb64(bundle["key"]["x"])) == len(_unb64(bundle["key"]["y"])) == 48


def test_ec_create_default_key_ops_at_7_5(http: Any) -> None:
    # PY test_crypto_client.pyTestCryptoClienttest_ec_key_id[7.5_mhsm].json: {"kty":"EC-HSM"} alone answers
    # crv P-256 and key_ops verify, deriveKey, sign.
    bundle = _create(http, _name(), {"kty": "EC-HSM"}, "7.5")
    assert bundle["key"]["crv"] == "P-256"
    assert set(bundle["key"]["key_ops"]) == {"verify", "deriveKey", "sign"}


def test_ec_create_default_key_ops_at_7_4(http: Any) -> None:
    # PY test_crypto_client.pyTestCryptoClienttest_ec_verify_local[7.4_mhsm].json: at 7.4 the same request
    # answers key_ops verify, sign only.
    bundle = _create(http, _name(), {"kty": "EC-HSM", "crv": "P-256"}, "7.4")
    assert set(bundle["key"]["key_ops"]) == {"verify", "sign"}


def test_plain_ec_is_stored_as_ec_hsm(http: Any) -> None:
    # NET GetPropertiesOfKeys.json: {"kty":"EC"} answers kty EC-HSM, crv P-256.
    bundle = _create(http, _name(), {"kty": "EC"}, "2026-03-01-preview")
    assert bundle["key"]["kty"] == "EC-HSM" and bundle["key"]["crv"] == "P-256"


def test_rsa_create_bundle(hsm: Emulator, http: Any) -> None:
    # PY test_key_client.pyTestKeyClienttest_key_crud_operations[7.6_mhsm].json: RSA-HSM 2048 with key_ops and
    # tags answers the same key_ops as a set, e "AQAB", a 256-byte n, a 32-hex version, the tags, and
    # attributes created, enabled, exportable, recoverableDays, recoveryLevel, updated.
    name = _name()
    ops = ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"]
    bundle = _create(http, name, {"kty": "RSA-HSM", "key_size": 2048, "key_ops": ops, "tags": {"purpose": "unit test"}})
    assert set(bundle) == {"attributes", "key", "tags"}
    assert set(bundle["key"]) == {"e", "key_ops", "kid", "kty", "n"}
    assert set(bundle["key"]["key_ops"]) == set(ops) and bundle["key"]["e"] == "AQAB"
    assert len(_unb64(bundle["key"]["n"])) == 256
    base, version = bundle["key"]["kid"].rsplit("/", 1)
    assert base == f"{hsm.url}/keys/{name}"
    assert VERSION.fullmatch(version)
    assert set(bundle["attributes"]) == ATTRIBUTES and bundle["tags"] == {"purpose": "unit test"}


def test_recovery_settings_of_a_7_day_hsm(http: Any) -> None:
    # PY test_key_client.pyTestKeyClienttest_key_crud_operations[7.6_mhsm].json: recoverableDays 7,
    # recoveryLevel "CustomizedRecoverable+Purgeable", exportable false.
    attributes = _create(http, _name(), {"kty": "EC-HSM"})["attributes"]
    assert attributes["recoverableDays"] == 7 and attributes["recoveryLevel"] == "CustomizedRecoverable+Purgeable"
    assert attributes["exportable"] is False


def test_recovery_settings_of_a_90_day_hsm(permissive: Emulator) -> None:
    # CLI test_keyvault_hsm_key.yaml: an HSM at the default answers recoverableDays 90,
    # recoveryLevel "Recoverable+Purgeable".
    with permissive.http("keygen") as http:
        attributes = _create(http, _name(), {"kty": "EC-HSM"})["attributes"]
    assert attributes["recoverableDays"] == 90 and attributes["recoveryLevel"] == "Recoverable+Purgeable"


def test_get_with_trailing_slash_is_the_latest(http: Any) -> None:
    # PY test_key_client.pyTestKeyClienttest_key_crud_operations[7.6_mhsm].json: GET /keys/<n>/ answers the
    # latest version; GET /keys/<n>/<version> that version.
    name = _name()
    first = _create(http, name, {"kty": "EC-HSM"})["key"]["kid"]
    second = _create(http, name, {"kty": "EC-HSM"})["key"]["kid"]
    assert http.get(f"/keys/{name}/", params={"api-version": "7.6"}).json()["key"]["kid"] == second
    version = first.rsplit("/", 1)[1]
    assert http.get(f"/keys/{name}/{version}", params={"api-version": "7.6"}).json()["key"]["kid"] == first


def test_update_latest(http: Any) -> None:
    # PY test_key_client.pyTestKeyClienttest_key_crud_operations[7.6_mhsm].json: PATCH /keys/<n>/ with key_ops,
    # attributes.exp and tags answers them, with "exp" among the attributes.
    name = _name()
    _create(http, name, {"kty": "RSA-HSM"})
    response = http.patch(f"/keys/{name}/", params={"api-version": "7.6"},
                          json={"key_ops": ["decrypt", "encrypt"], "attributes": {"exp": 2524723200},
                                "tags": {"foo": "updated tag"}})
    assert response.status_code == 200
    bundle = response.json()
    assert set(bundle["key"]["key_ops"]) == {"encrypt", "decrypt"} and bundle["tags"] == {"foo": "updated tag"}
    assert bundle["attributes"]["exp"] == 2524723200 and set(bundle["attributes"]) == ATTRIBUTES | {"exp"}


# -- versions and lists ------------------------------------------------------------------------------

def test_versions_of_a_missing_key_are_an_empty_list(http: Any) -> None:
    # NET GetPropertiesOfKeyVersionsNonExisting.json: GET /keys/<missing>/versions answers 200 {"value": []}.
    response = http.get(f"/keys/{_name()}/versions", params={"api-version": "7.6"})
    assert response.status_code == 200 and response.json() == {"value": []}


def test_list_next_link_shape(hsm: Emulator, http: Any) -> None:
    # PY test_key_client.pyTestKeyClienttest_key_list[7.6_mhsm].json: with maxresults=6 every page but the last
    # carries nextLink https://<host>/keys?maxresults=6&$skiptoken=..., no api-version in it.
    for _ in range(7):
        _create(http, _name(), {"kty": "EC-HSM"})
    page = http.get("/keys", params={"api-version": "7.6", "maxresults": 6}).json()
    assert len(page["value"]) == 6
    assert re.fullmatch(re.escape(hsm.url) + r"/keys\?maxresults=6&\$skiptoken=[A-Za-z0-9_-]+", page["nextLink"])


def test_list_last_page_has_no_next_link(http: Any) -> None:
    # PY test_key_client.pyTestKeyClienttest_key_list[7.6_mhsm].json: the last page is {"value": [...]} with no
    # nextLink member at all.
    _create(http, _name(), {"kty": "EC-HSM"})
    link, pages = "/keys?maxresults=25", 0
    while True:
        page = http.get(link, params={"api-version": "7.6"}).json()
        pages += 1
        if "nextLink" not in page:
            break
        assert page["nextLink"], "a page that has more carries a non-empty link"
        link = page["nextLink"].replace(str(http.base_url).rstrip("/"), "")
    assert set(page) == {"value"} and pages >= 1


def test_list_is_in_creation_order(http: Any) -> None:
    # PY test_key_client.pyTestKeyClienttest_key_list[7.6_mhsm].json: keys are listed oldest first (the
    # "created" of consecutive items never decreases), not by name.
    names = [f"rec-order-{tag}-{uuid.uuid4().hex[:6]}" for tag in ("c", "a", "b")]
    for name in names:
        _create(http, name, {"kty": "EC-HSM"})
    listed = []
    link = "/keys"
    while link:
        page = http.get(link, params={"api-version": "7.6"}).json()
        listed += [item["kid"].rsplit("/", 1)[1] for item in page["value"]]
        link = page.get("nextLink", "").replace(str(http.base_url).rstrip("/"), "")
    assert [n for n in listed if n in names] == names


def test_list_item_members(http: Any) -> None:
    # PY test_key_client.pyTestKeyClienttest_key_list[7.6_mhsm].json: an item is {"attributes", "kid"} (and
    # "tags" when it has some), with an unversioned kid.
    name = _name()
    _create(http, name, {"kty": "EC-HSM", "tags": {"t": "v"}})
    items = []
    link = "/keys"
    while link:
        page = http.get(link, params={"api-version": "7.6"}).json()
        items += page["value"]
        link = page.get("nextLink", "").replace(str(http.base_url).rstrip("/"), "")
    mine = next(i for i in items if i["kid"].endswith(f"/keys/{name}"))
    assert set(mine) == {"attributes", "kid", "tags"} and set(mine["attributes"]) == ATTRIBUTES


def test_list_with_trailing_slash(http: Any) -> None:
    # NET GetPropertiesOfKeys.json: the .NET SDK lists with GET /keys/ and gets 200 {"value": [...]}.
    _create(http, _name(), {"kty": "EC-HSM"})
    response = http.get("/keys/", params={"api-version": "2026-03-01-preview"})
    assert response.status_code == 200 and response.json()["value"]


# -- sign and verify ---------------------------------------------------------------------------------

def test_ec_sign_result(http: Any) -> None:
    # PY test_crypto_client.pyTestCryptoClienttest_ec_verify_local[2025-07-01_mhsm].json: sign answers
    # {"alg", "kid", "value"}; the kid is versioned; ES256 gives a raw 64-byte r||s.
    bundle = _create(http, _name(), {"kty": "EC-HSM", "crv": "P-256"}, "2025-07-01")
    kid = bundle["key"]["kid"]
    path = "/" + kid.split("/", 3)[3]
    response = http.post(f"{path}/sign", params={"api-version": "2025-07-01"}, json={"alg": "ES256", "value": _b64(SHA256)})
    assert response.status_code == 200
    result = response.json()
    assert set(result) == {"alg", "kid", "value"} and result["alg"] == "ES256" and result["kid"] == kid
    signature = _unb64(result["value"])
    assert len(signature) == 64
    public = ec.EllipticCurvePublicNumbers(int.from_bytes(_unb64(bundle["key"]["x"]), "big"),
                                           int.from_bytes(_unb64(bundle["key"]["y"]), "big"), ec.SECP256R1()).public_key()
    der = utils.encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    public.verify(der, SHA256, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def test_rsa_sign_and_remote_verify_results(http: Any) -> None:
    # PY test_crypto_client.pyTestCryptoClienttest_sign_and_verify[7.6_mhsm].json: RS256 sign answers
    # {"alg":"RS256","kid","value"}; verify answers {"alg":"RS256","kid","value":true}.
    bundle = _create(http, _name(), {"kty": "RSA-HSM", "key_size": 2048})
    path = "/" + bundle["key"]["kid"].split("/", 3)[3]
    signed = http.post(f"{path}/sign", params={"api-version": "7.6"}, json={"alg": "RS256", "value": _b64(SHA256)}).json()
    assert set(signed) == {"alg", "kid", "value"} and signed["alg"] == "RS256"
    public = rsa.RSAPublicNumbers(65537, int.from_bytes(_unb64(bundle["key"]["n"]), "big")).public_key()
    public.verify(_unb64(signed["value"]), SHA256, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    verified = http.post(f"{path}/verify", params={"api-version": "7.6"},
                         json={"alg": "RS256", "digest": _b64(SHA256), "value": signed["value"]})
    assert verified.status_code == 200
    assert verified.json() == {"alg": "RS256", "kid": bundle["key"]["kid"], "value": True}


# -- delete, deleted keys, recover, purge ------------------------------------------------------------

def test_delete_answers_the_deleted_bundle(hsm: Emulator, http: Any) -> None:
    # PY test_key_client.pyTestKeyClienttest_key_crud_operations[7.6_mhsm].json: DELETE answers attributes, key,
    # tags, deletedDate, recoveryId https://<host>/deletedkeys/<n>, scheduledPurgeDate = deletedDate + 7 days.
    name = _name()
    _create(http, name, {"kty": "EC-HSM", "tags": {"t": "v"}})
    deleted = http.delete(f"/keys/{name}", params={"api-version": "7.6"}).json()
    assert set(deleted) == {"attributes", "deletedDate", "key", "recoveryId", "scheduledPurgeDate", "tags"}
    assert deleted["recoveryId"] == f"{hsm.url}/deletedkeys/{name}"
    assert deleted["scheduledPurgeDate"] - deleted["deletedDate"] == 7 * 86400


def test_deleted_key_is_readable_at_once(http: Any, officer: Any) -> None:
    # PY test_key_client.pyTestKeyClienttest_key_crud_operations[7.6_mhsm].json: GET /deletedkeys/<n> right after
    # the DELETE answers 200 with the same members.
    name = _name()
    _create(http, name, {"kty": "EC-HSM"})
    http.delete(f"/keys/{name}", params={"api-version": "7.6"})
    response = officer.get(f"/deletedkeys/{name}", params={"api-version": "7.6"})
    assert response.status_code == 200
    assert set(response.json()) == {"attributes", "deletedDate", "key", "recoveryId", "scheduledPurgeDate"}


def test_deleted_list_items_and_purge(http: Any, officer: Any) -> None:
    # CLI test_keyvault_hsm_key.yaml: a deleted-key item is {attributes, deletedDate, kid, recoveryId,
    # scheduledPurgeDate} with an unversioned kid; DELETE /deletedkeys/<n> answers 204 with no body.
    name = _name()
    _create(http, name, {"kty": "EC-HSM"})
    http.delete(f"/keys/{name}", params={"api-version": "7.6"})
    items, link = [], "/deletedkeys"
    while link:
        page = officer.get(link, params={"api-version": "7.6"}).json()
        items += page["value"]
        link = page.get("nextLink", "").replace(str(http.base_url).rstrip("/"), "")
    mine = next(i for i in items if i["kid"].endswith(f"/keys/{name}"))
    assert set(mine) == {"attributes", "deletedDate", "kid", "recoveryId", "scheduledPurgeDate"}
    purged = officer.delete(f"/deletedkeys/{name}", params={"api-version": "7.6"})
    assert purged.status_code == 204 and purged.content == b""


def test_deleted_list_with_trailing_slash(officer: Any) -> None:
    # NET GetDeletedKeys.json: the .NET SDK lists deleted keys with GET /deletedkeys/ and gets 200.
    response = officer.get("/deletedkeys/", params={"api-version": "2026-03-01-preview"})
    assert response.status_code == 200 and "value" in response.json()


def test_recover_answers_the_key(http: Any, officer: Any) -> None:
    # NET RecoverDeletedKey.json: POST /deletedkeys/<n>/recover answers 200 with the key bundle
    # {attributes, key}.
    name = _name()
    kid = _create(http, name, {"kty": "EC-HSM"})["key"]["kid"]
    http.delete(f"/keys/{name}", params={"api-version": "7.6"})
    recovered = officer.post(f"/deletedkeys/{name}/recover", params={"api-version": "7.6"})
    assert recovered.status_code == 200 and recovered.json()["key"]["kid"] == kid
    assert set(recovered.json()) == {"attributes", "key"}


def test_random_bytes(http: Any) -> None:
    # CLI test_keyvault_hsm_key_random.yaml: POST /rng {"count": 4} at api-version 7.5-preview.1 answers
    # {"value": <4 bytes, base64url>}.
    response = http.post("/rng", params={"api-version": "7.5-preview.1"}, json={"count": 4})
    assert response.status_code == 200 and set(response.json()) == {"value"}
    assert len(_unb64(response.json()["value"])) == 4


# -- errors ------------------------------------------------------------------------------------------

def test_400_random_bytes_out_of_range(http: Any) -> None:
    # JS browsers/keys_client__create_read_update_and_delete_operations_for_managed_hsm_getrandombytes/
    # recording_returns_an_error_when_bytes_is_out_of_range.json: counts -1, 0 and 129 answer 400 BadParameter
    # "GetRandomBytesRequest: count cannot be greater than 128 or less than 1 (Activity ID: <request id>)".
    for count in (-1, 0, 129):
        response = http.post("/rng", params={"api-version": "7.4-preview.1"}, json={"count": count})
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "BadParameter"
        assert error["message"] == ("GetRandomBytesRequest: count cannot be greater than 128 or less than 1 "
                                    f"(Activity ID: {response.headers['x-ms-request-id']})")


def test_403_access_denied_text(hsm: Emulator) -> None:
    # Azure/azure-cli issue #32719 (CLI output against a live HSM): 403 AccessDenied "Not authorized to access
    # Microsoft.KeyVault/managedHsm/roleAssignments/read/action on / (Activity ID: <guid>)".
    with hsm.http("nobody") as nobody:
        response = nobody.get(ASSIGNMENTS, params={"api-version": "7.6"})
    assert response.status_code == 403
    assert response.json()["error"] == {
        "code": "AccessDenied",
        "message": "Not authorized to access Microsoft.KeyVault/managedHsm/roleAssignments/read/action on / "
                   f"(Activity ID: {response.headers['x-ms-request-id']})"}


def test_403_before_api_version(hsm: Emulator) -> None:
    # Issue 14 of this project, from a live HSM through the Azure CLI: the permission check comes before the
    # api-version check, so a caller without the role gets 403 whatever version it names.
    with hsm.http("nobody") as nobody:
        response = nobody.post(f"/keys/{_name()}/create", params={"api-version": "0.1"}, json={"kty": "EC-HSM"})
    assert response.status_code == 403 and response.json()["error"]["code"] == "AccessDenied"


def test_404_key_not_found_text(hsm: Emulator, http: Any) -> None:
    # NET GetKeyNonExisting.json: 404 KeyNotFound "Key not found: https://<host>/keys/<n> (Activity ID: <id>)",
    # the id being the x-ms-request-id; no x-ms-keyvault-region on the error.
    name = _name()
    response = http.get(f"/keys/{name}/", params={"api-version": "7.6"})
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "KeyNotFound", "message": f"Key not found: {hsm.url}/keys/{name} "
                                         f"(Activity ID: {response.headers['x-ms-request-id']})"}}
    assert "x-ms-keyvault-region" not in response.headers


def test_404_deleted_key_not_found_text(hsm: Emulator, officer: Any) -> None:
    # NET GetDeletedKeyNonExisting.json and RecoverDeletedKeyNonExisting.json: GET /deletedkeys/<n> and
    # POST /deletedkeys/<n>/recover answer 404 KeyNotFound "Key not found: https://<host>/deletedkeys/<n> (...)".
    name = _name()
    for response in (officer.get(f"/deletedkeys/{name}", params={"api-version": "7.6"}),
                     officer.post(f"/deletedkeys/{name}/recover", params={"api-version": "7.6"})):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "KeyNotFound"
        assert response.json()["error"]["message"].startswith(f"Key not found: {hsm.url}/deletedkeys/{name} (")


def test_404_delete_missing_key(hsm: Emulator, http: Any) -> None:
    # NET DeleteKeyNonExisting.json: DELETE /keys/<missing> answers 404 "Key not found: https://<host>/keys/<n>".
    name = _name()
    response = http.delete(f"/keys/{name}", params={"api-version": "7.6"})
    assert response.status_code == 404
    assert response.json()["error"]["message"].startswith(f"Key not found: {hsm.url}/keys/{name} (")


def test_409_recreating_a_deleted_name(http: Any) -> None:
    # Key Vault's soft-delete conflict (Azure/azure-sdk-for-cpp sdk/keyvault/azure-security-keyvault-keys/test/ut/
    # key_client_test_live.cpp GetConflictErrorMsg): 409 Conflict "Key <n> is currently in a deleted but
    # recoverable state, ..." with innererror ObjectIsDeletedButRecoverable. No HSM recording of it was
    # found; docs/emulator.md lists the text as Key Vault's.
    name = _name()
    _create(http, name, {"kty": "EC-HSM"})
    http.delete(f"/keys/{name}", params={"api-version": "7.6"})
    response = http.post(f"/keys/{name}/create", params={"api-version": "7.6"}, json={"kty": "EC-HSM"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "Conflict"
    assert response.json()["error"]["innererror"] == {"code": "ObjectIsDeletedButRecoverable"}


# -- headers and api-versions ------------------------------------------------------------------------

def test_success_headers(http: Any) -> None:
    # PY test_crypto_client.pyTestCryptoClienttest_ec_key_id[7.6_mhsm].json: a 200 carries Cache-Control no-cache,
    # Content-Security-Policy default-src 'self', Strict-Transport-Security "max-age=31536000; includeSubDomains",
    # X-Content-Type-Options nosniff, X-Frame-Options SAMEORIGIN, x-ms-build-version, x-ms-keyvault-region,
    # x-ms-keyvault-network-info "conn_type=Ipv4;addr=<ip>;act_addr_fam=Ipv4;" and an integer x-ms-server-latency.
    headers = http.post("/rng", params={"api-version": "7.6"}, json={"count": 1}).headers
    assert headers["cache-control"] == "no-cache"
    assert headers["content-security-policy"] == "default-src 'self'"
    assert headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
    assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "SAMEORIGIN"
    assert headers["x-ms-build-version"] and headers["x-ms-keyvault-region"]
    assert re.fullmatch(r"conn_type=Ipv4;addr=[0-9.]+;act_addr_fam=Ipv4;", headers["x-ms-keyvault-network-info"])
    assert headers["x-ms-server-latency"].isdigit()


@pytest.mark.parametrize("version", ["7.6-preview.2", "7.5-preview.1", "7.4-preview.1", "2026-01-01-preview"])
def test_preview_api_versions_are_served(http: Any, version: str) -> None:
    # PYA test_access_control.pyTestAccessControltest_role_assignment[7.6-preview.2].json (and the [7.5-preview.1],
    # [7.4-preview.1], [2026-01-01-preview] recordings beside it): live HSMs answer these api-versions with 200.
    assert http.post("/rng", params={"api-version": version}, json={"count": 1}).status_code == 200


# -- role definitions and assignments ----------------------------------------------------------------

def test_role_definitions_list(hsm: Emulator) -> None:
    # PYA test_access_control.pyTestAccessControltest_role_assignment[7.6].json: GET roleDefinitions answers
    # {"value": [...]} without nextLink; built-ins have id Microsoft.KeyVault/providers/.../<guid>, type
    # AKVBuiltInRole, assignableScopes ["/"], and include "Managed HSM Restore User" and "Managed HSM Backup User".
    with hsm.http("admin") as admin:
        body = admin.get(DEFINITIONS, params={"api-version": "7.6"}).json()
    assert set(body) == {"value"}
    names = {r["properties"]["roleName"] for r in body["value"] if r["properties"]["type"] == "AKVBuiltInRole"}
    assert {"Managed HSM Restore User", "Managed HSM Backup User", "Managed HSM Crypto User",
            "Managed HSM Crypto Officer", "Managed HSM Administrator", "Managed HSM Policy Administrator",
            "Managed HSM Crypto Auditor", "Managed HSM Crypto Service Encryption User",
            "Managed HSM Crypto Service Release User"} == names
    role = body["value"][0]
    assert set(role) == {"id", "name", "properties", "type"}
    assert set(role["properties"]) == {"assignableScopes", "description", "permissions", "roleName", "type"}
    assert role["id"] == f"Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/{role['name']}"


def test_role_assignment_lifecycle(hsm: Emulator) -> None:
    # PYA test_access_control.pyTestAccessControltest_role_assignment[7.6].json: PUT at / answers 201
    # {id "/providers/Microsoft.Authorization/roleAssignments/<n>", name, properties {principalId,
    # roleDefinitionId, scope "/"}, type}; GET answers it; DELETE answers 200 with it; the list has no nextLink.
    name, principal = str(uuid.uuid4()), str(uuid.uuid4())
    body = {"properties": {"principalId": principal, "roleDefinitionId": CRYPTO_USER_ID}}
    with hsm.http("admin") as admin:
        created = admin.put(f"{ASSIGNMENTS}/{name}", params={"api-version": "7.6"}, json=body)
        assert created.status_code == 201
        assert created.json() == {"id": f"{ASSIGNMENTS}/{name}", "name": name,
                                  "type": "Microsoft.Authorization/roleAssignments",
                                  "properties": body["properties"] | {"scope": "/"}}
        assert admin.get(f"{ASSIGNMENTS}/{name}", params={"api-version": "7.6"}).json() == created.json()
        assert set(admin.get(ASSIGNMENTS, params={"api-version": "7.6"}).json()) == {"value"}
        deleted = admin.delete(f"{ASSIGNMENTS}/{name}", params={"api-version": "7.6"})
        assert deleted.status_code == 200 and deleted.json() == created.json()


def test_assignment_at_keys_has_a_root_id(hsm: Emulator) -> None:
    # Issue 14 of this project, from a live HSM through the Azure CLI: an assignment made at /keys answers
    # id /providers/Microsoft.Authorization/roleAssignments/<n> with "scope": "/keys".
    name = str(uuid.uuid4())
    body = {"properties": {"principalId": str(uuid.uuid4()), "roleDefinitionId": CRYPTO_USER_ID}}
    with hsm.http("admin") as admin:
        created = admin.put(f"/keys{ASSIGNMENTS}/{name}", params={"api-version": "7.6"}, json=body).json()
        admin.delete(f"{ASSIGNMENTS}/{name}", params={"api-version": "7.6"})
    assert created["id"] == f"{ASSIGNMENTS}/{name}" and created["properties"]["scope"] == "/keys"


def test_unscoped_assignment_list_has_every_scope(hsm: Emulator) -> None:
    # Issue 14 of this project, from a live HSM through the Azure CLI: GET /providers/.../roleAssignments lists
    # the assignments of every scope, not only those at /.
    with hsm.http("admin") as admin:
        scopes = {a["properties"]["scope"] for a in admin.get(ASSIGNMENTS, params={"api-version": "7.6"}).json()["value"]}
    assert {"/", "/keys"} <= scopes


def test_custom_role_delete_answers_it(hsm: Emulator) -> None:
    # PYA test_access_control.pyTestAccessControltest_role_definitions[7.6].json: a custom role is type
    # CustomRole with assignableScopes ["/"]; GET and DELETE answer 200 with it; the list then no longer has it.
    guid = str(uuid.uuid4())
    role = {"properties": {"roleName": f"role-name-{guid[:8]}", "permissions": [
        {"notDataActions": ["Microsoft.KeyVault/managedHsm/keys/read/action"]}]}}
    with hsm.http("admin") as admin:
        created = admin.put(f"{DEFINITIONS}/{guid}", params={"api-version": "7.6"}, json=role)
        assert created.status_code == 201
        body = created.json()
        assert body["properties"]["type"] == "CustomRole" and body["properties"]["assignableScopes"] == ["/"]
        assert admin.get(f"{DEFINITIONS}/{guid}", params={"api-version": "7.6"}).json() == body
        deleted = admin.delete(f"{DEFINITIONS}/{guid}", params={"api-version": "7.6"})
        assert deleted.status_code == 200 and deleted.json() == body
        listed = admin.get(DEFINITIONS, params={"api-version": "7.6"}).json()["value"]
    assert guid not in {r["name"] for r in listed}
