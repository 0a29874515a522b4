"""Conformance checks 4-7, 11, 12 and 18 (reference §9), through azure-keyvault-keys, in both RBAC
scenarios and both api-versions; plus the keys API's answers to bad input."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.keyvault.keys import KeyCurveName, KeyOperation, KeyType

from tests.conftest import Emulator

VERSION = re.compile(r"^[0-9a-f]{32}$")
CURVE_BYTES = {"P-256": 32, "P-256K": 32, "P-384": 48, "P-521": 66}
READ_ONLY = ("created_on", "updated_on", "recoverable_days", "recovery_level")




def _check_bundle(emulator: Emulator, key: Any, name: str) -> None:
    base, version = key.id.rsplit("/", 1)
    assert base == f"{emulator.url}/keys/{name}"
    assert VERSION.fullmatch(version)
    assert key.key_type.endswith("-HSM")
    assert key.properties.exportable is False
    for attribute in READ_ONLY:
        assert getattr(key.properties, attribute) is not None, attribute
    assert key.properties.recoverable_days == 90


@pytest.mark.parametrize("size", [2048, 3072, 4096])
def test_create_rsa_hsm(emulator: Emulator, api_version: str, key_name: str, size: int) -> None:
    client = emulator.key_client(api_version=api_version)
    nbf, exp = int(time.time()) - 60, int(time.time()) + 86400
    import datetime as dt

    key = client.create_rsa_key(key_name, size=size, hardware_protected=True, tags={"purpose": "tls"},
                                key_operations=[KeyOperation.sign, KeyOperation.verify],
                                not_before=dt.datetime.fromtimestamp(nbf, dt.timezone.utc),
                                expires_on=dt.datetime.fromtimestamp(exp, dt.timezone.utc), exportable=False)
    _check_bundle(emulator, key, key_name)
    assert key.key_type == KeyType.rsa_hsm
    assert len(key.key.n) == size // 8  # exact modulus length, no leading zero byte
    assert int.from_bytes(key.key.e, "big") == 65537
    assert sorted(key.key_operations) == ["sign", "verify"]
    assert key.properties.tags == {"purpose": "tls"}
    assert int(key.properties.not_before.timestamp()) == nbf
    assert int(key.properties.expires_on.timestamp()) == exp


def test_plain_rsa_is_stored_as_rsa_hsm(emulator: Emulator, api_version: str, key_name: str) -> None:
    key = emulator.key_client(api_version=api_version).create_rsa_key(key_name, size=2048)
    assert key.key_type == KeyType.rsa_hsm


@pytest.mark.parametrize("curve", ["P-256", "P-256K", "P-384", "P-521"])
def test_create_ec_hsm(emulator: Emulator, api_version: str, key_name: str, curve: str) -> None:
    key = emulator.key_client(api_version=api_version).create_ec_key(
        key_name, curve=KeyCurveName(curve), hardware_protected=True, tags={"curve": curve})
    _check_bundle(emulator, key, key_name)
    assert key.key_type == KeyType.ec_hsm
    assert key.key.crv == curve
    assert len(key.key.x) == len(key.key.y) == CURVE_BYTES[curve]
    # Both api-versions here are 7.5 or later, where an EC key made without key_ops can also derive.
    assert sorted(key.key_operations) == ["deriveKey", "sign", "verify"]


def test_get_latest_and_by_version(emulator: Emulator, api_version: str, key_name: str) -> None:
    client = emulator.key_client(api_version=api_version)
    first = client.create_ec_key(key_name, curve="P-256")
    second = client.create_ec_key(key_name, curve="P-256")  # creating again adds a version
    assert first.properties.version != second.properties.version
    assert client.get_key(key_name).id == second.id  # the SDK sends /keys/n/
    assert client.get_key(key_name, first.properties.version).id == first.id
    with emulator.http() as http:  # /keys/n with no trailing slash
        bare = http.get(f"/keys/{key_name}", params={"api-version": api_version})
    assert bare.status_code == 200 and bare.json()["key"]["kid"] == second.id
    versions = [p.version for p in client.list_properties_of_key_versions(key_name)]
    assert versions == [first.properties.version, second.properties.version]
    assert client.get_key(key_name.upper()).id == second.id  # names are case-insensitive


def test_unknown_key_and_version_are_key_not_found(emulator: Emulator, api_version: str, key_name: str) -> None:
    client = emulator.key_client(api_version=api_version)
    with pytest.raises(ResourceNotFoundError) as missing:
        client.get_key(key_name)
    assert missing.value.error.code == "KeyNotFound"
    client.create_ec_key(key_name, curve="P-256")
    with pytest.raises(ResourceNotFoundError) as missing_version:
        client.get_key(key_name, "0" * 32)
    assert missing_version.value.error.code == "KeyNotFound"
    assert "(Activity ID: " in missing_version.value.error.message


@pytest.fixture(scope="module")
def listed_keys(request: pytest.FixtureRequest) -> dict[str, list[str]]:
    """27 keys per scenario, created once, named so that they list together."""
    made: dict[str, list[str]] = {}
    for scenario in ("permissive", "granular"):
        emu: Emulator = request.getfixturevalue(scenario)
        import os

        os.environ["REQUESTS_CA_BUNDLE"] = os.environ["SSL_CERT_FILE"] = emu.info["ca_file"]
        client = emu.key_client()
        made[scenario] = [client.create_ec_key(f"zz-list-{i:02d}", curve="P-256").name for i in range(27)]
    return made


@pytest.mark.parametrize("page", [1, 2, 25])
def test_list_pages_follow_next_link(emulator: Emulator, api_version: str, listed_keys: dict[str, list[str]],
                                     page: int) -> None:
    expected = listed_keys[emulator.info["scenario"]]
    urls: list[str] = []
    client = emulator.key_client(api_version=api_version)
    names = [p.name for p in client.list_properties_of_keys(
        max_page_size=page, raw_request_hook=lambda r: urls.append(r.http_request.url))]
    assert [n for n in names if n.startswith("zz-list-")] == expected
    assert len(names) == len(set(names))
    assert len(urls) >= -(-len(names) // page)  # one request per page, and the null link stopped it
    assert all(f"api-version={api_version}" in u for u in urls)
    assert any("skiptoken" in u for u in urls[1:]) or len(urls) == 1


def test_list_rejects_out_of_range_maxresults(emulator: Emulator, api_version: str) -> None:
    with emulator.http() as http:
        for bad in ("0", "26", "x"):
            response = http.get("/keys", params={"api-version": api_version, "maxresults": bad})
            assert response.status_code == 400 and response.json()["error"]["code"] == "BadParameter"


def test_update_tags_key_ops_enabled(emulator: Emulator, api_version: str, key_name: str) -> None:
    client = emulator.key_client(api_version=api_version)
    old = client.create_rsa_key(key_name, size=2048, tags={"a": "1"})
    new = client.create_rsa_key(key_name, size=2048, tags={"a": "1"})
    updated = client.update_key_properties(key_name, enabled=False, tags={"b": "2"},
                                           key_operations=[KeyOperation.verify])  # PATCH /keys/n/
    assert updated.id == new.id
    assert updated.properties.enabled is False
    assert updated.properties.tags == {"b": "2"}
    assert updated.key_operations == ["verify"]
    assert updated.properties.updated_on >= new.properties.updated_on
    untouched = client.get_key(key_name, old.properties.version)
    assert untouched.properties.enabled is True and untouched.properties.tags == {"a": "1"}
    restored = client.update_key_properties(key_name, new.properties.version, enabled=True)
    assert restored.properties.enabled is True and restored.properties.tags == {"b": "2"}


def test_tag_limits(emulator: Emulator, api_version: str, key_name: str) -> None:
    client = emulator.key_client(api_version=api_version)
    fifteen = {f"t{i}": "v" for i in range(15)}
    assert client.create_ec_key(key_name, curve="P-256", tags=fifteen).properties.tags == fifteen
    longest = {"n" * 256: "v" * 256}
    assert client.create_ec_key(key_name, curve="P-256", tags=longest).properties.tags == longest
    for bad in ({f"t{i}": "v" for i in range(16)}, {"n" * 257: "v"}, {"n": "v" * 257}):
        with pytest.raises(HttpResponseError) as refused:
            client.create_ec_key(key_name, curve="P-256", tags=bad)
        assert refused.value.status_code == 400 and refused.value.error.code == "BadParameter"
    with pytest.raises(HttpResponseError) as refused_update:
        client.update_key_properties(key_name, tags={f"t{i}": "v" for i in range(16)})
    assert refused_update.value.status_code == 400


def test_soft_delete_cycle(emulator: Emulator, api_version: str, key_name: str) -> None:
    keygen = emulator.key_client("keygen", api_version=api_version)
    officer = emulator.key_client("admin", api_version=api_version)  # Crypto Officer: deleted-key actions
    created = keygen.create_ec_key(key_name, curve="P-384")
    deleted = keygen.begin_delete_key(key_name).result()
    assert deleted.recovery_id == f"{emulator.url}/deletedkeys/{key_name}"
    assert deleted.scheduled_purge_date is not None and deleted.deleted_date is not None
    purge_after = deleted.scheduled_purge_date - deleted.deleted_date
    assert purge_after.total_seconds() == 90 * 86400
    with pytest.raises(ResourceNotFoundError):
        keygen.get_key(key_name)
    assert officer.get_deleted_key(key_name).id == created.id
    assert key_name in [k.name for k in officer.list_deleted_keys()]
    with pytest.raises(ResourceExistsError) as conflict:
        keygen.create_ec_key(key_name, curve="P-384")
    assert conflict.value.status_code == 409
    assert conflict.value.error.code == "Conflict"
    officer.begin_recover_deleted_key(key_name).wait()
    assert keygen.get_key(key_name).id == created.id
    keygen.begin_delete_key(key_name).wait()
    with emulator.http("admin") as http:
        purged = http.delete(f"/deletedkeys/{key_name}", params={"api-version": api_version})
    assert purged.status_code == 204 and purged.content == b""
    with pytest.raises(ResourceNotFoundError):
        officer.get_deleted_key(key_name)
    assert keygen.create_ec_key(key_name, curve="P-384").id != created.id  # the name is free again


@pytest.mark.parametrize("query", [{}, {"api-version": "2099-01-01"}, {"api-version": ""}])
def test_missing_or_unknown_api_version(emulator: Emulator, query: dict[str, str]) -> None:
    with emulator.http() as http:
        response = http.get("/keys", params=query)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "BadParameter"
    assert response.headers["x-ms-request-id"]


@pytest.mark.parametrize("body, fragment", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"kty": 5}', "kty"),
    (b'{"kty": "RSA-HSM", "key_size": "2048"}', "key_size"),
    (b'{"kty": "RSA-HSM", "key_size": 1024}', "key_size"),
    (b'{"kty": "EC-HSM", "crv": "P-192"}', "crv"),
    (b'{"kty": "EC-HSM", "key_ops": ["encrypt"]}', "encrypt"),
    (b'{"kty": "EC-HSM", "key_ops": "sign"}', "key_ops"),
    (b'{"kty": "EC-HSM", "attributes": {"enabled": "yes"}}', "enabled"),
    (b'{"kty": "EC-HSM", "attributes": {"exp": "tomorrow"}}', "exp"),
    (b'{"kty": "EC-HSM", "tags": {"a": 1}}', "tags"),
    (b'{"kty": "EC-HSM", "attributes": {"exportable": true}}', "Exportable keys must have release policy"),
    (b'{"kty": "EC-HSM", "release_policy": {"data": "e30"}}', "Non-exportable keys must not have release policy"),
])
def test_create_bad_input(emulator: Emulator, api_version: str, key_name: str, body: bytes, fragment: str) -> None:
    with emulator.http() as http:
        response = http.post(f"/keys/{key_name}/create", params={"api-version": api_version}, content=body,
                             headers={"Content-Type": "application/json"})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "BadParameter" and fragment in error["message"]
        assert http.post(f"/keys/{key_name}/create", params={"api-version": api_version},
                         json={"kty": "EC-HSM"}).status_code == 200  # and the emulator keeps serving


@pytest.mark.parametrize("name", ["bad_name", "a" * 128, "dot.name"])
def test_key_name_rules(emulator: Emulator, name: str) -> None:
    with emulator.http() as http:
        response = http.post(f"/keys/{name}/create", params={"api-version": "7.5"}, json={"kty": "EC-HSM"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "BadParameter"


def test_every_response_has_service_headers(emulator: Emulator) -> None:
    with emulator.http() as http:
        ok = http.get("/keys", params={"api-version": "7.5"}, headers={"x-ms-client-request-id": "abc"})
        missing = http.get("/no/such/path", params={"api-version": "7.5"})
    for response in (ok, missing):
        assert re.fullmatch(r"[0-9a-f-]{36}", response.headers["x-ms-request-id"])
        assert response.headers["content-type"].startswith("application/json")
        assert response.headers["x-content-type-options"] == "nosniff"
    assert ok.headers["x-ms-client-request-id"] == "abc"
    assert missing.status_code == 404
    assert missing.json()["error"]["message"].endswith(f"(Activity ID: {missing.headers['x-ms-request-id']})")
