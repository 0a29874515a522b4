"""Conformance checks 1, 2 and 3 (reference §9), and the tokens the data plane must refuse.

The bearer challenge, tenant matching in Microsoft's SDK, and the audience, tenant, issuer, signature
and lifetime checks on every token, in both api-versions and both RBAC scenarios; and the Entra
token endpoint's errors in Entra's own shape.
"""

from __future__ import annotations

import functools
import json
import ssl
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import jwt
import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.identity import ClientSecretCredential
from azure.keyvault.keys import KeyClient
# The SDK caches each authority's challenge for the whole process (reference §8.1, step 6); forgetting
# it is the only way to watch the first, bodiless call of a client again.
from azure.keyvault.keys._shared import http_challenge_cache
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import Emulator, start_emulator

RESOURCE = "https://managedhsm.azure.net"
SCOPE = f"{RESOURCE}/.default"


def _challenge(emulator: Emulator) -> str:
    return (f'Bearer authorization="https://login.microsoftonline.com/{emulator.info["tenant_id"]}", '
            f'resource="{RESOURCE}"')


def _tokens_issued(emulator: Emulator) -> int:
    return emulator.admin.counters()["tokens_issued"]["total"]


# -- check 1: the challenge --------------------------------------------------------------------------

def test_first_bodiless_call_gets_the_exact_challenge(emulator: Emulator, api_version: str) -> None:
    """Check 1 on the wire: 401, exactly the service's header, the service's body (`OK` on a GET, none
    otherwise); answered before the body or the api-version is looked at."""
    with emulator.http(None) as http:
        bodiless = http.get("/keys", params={"api-version": api_version})
        with_body = http.post("/keys/anything/create", params={"api-version": api_version}, content=b"{not json")
        no_version = http.get("/keys")
    for response in (bodiless, with_body, no_version):
        assert response.status_code == 401
        assert response.content == (b"OK" if response.request.method == "GET" else b"")
        assert response.headers["WWW-Authenticate"] == _challenge(emulator)
        assert response.headers["x-ms-request-id"]


def test_sdk_first_call_is_bodiless_then_succeeds(emulator: Emulator, api_version: str, key_name: str) -> None:
    """Check 1 through the SDK: its first call to a new authority carries neither a token nor a body,
    gets the challenge, and the retry with a token for the challenge's tenant creates the key."""
    sent: list[tuple[str, bool, bytes]] = []

    def record(request: Any) -> None:
        http_request = request.http_request
        body = http_request.body or b""
        sent.append((http_request.method, "Authorization" in http_request.headers,
                     body.encode() if isinstance(body, str) else bytes(body)))

    http_challenge_cache.remove_challenge_for_url(emulator.url)
    before = emulator.admin.counters()
    client = emulator.key_client("keygen", api_version=api_version, raw_request_hook=record)
    key = client.create_ec_key(key_name, curve="P-256")
    after = emulator.admin.counters()

    assert key.name == key_name and key.key_type == "EC-HSM"
    assert [(method, authorised) for method, authorised, _ in sent] == [("POST", False), ("POST", True)]
    assert sent[0][2] == b"", "the challenge call has no body"
    assert json.loads(sent[1][2])["crv"] == "P-256", "the retry carries the body"

    def count(snapshot: dict[str, Any], principal: str) -> int:
        return snapshot["requests"]["by_operation_principal"].get("create", {}).get(principal, 0)

    assert count(after, "anonymous") == count(before, "anonymous") + 1
    assert count(after, "keygen") == count(before, "keygen") + 1
    assert after["requests"]["by_status"]["401"] == before["requests"]["by_status"].get("401", 0) + 1
    assert after["tokens_issued"]["by_principal"]["keygen"] == \
        before["tokens_issued"]["by_principal"].get("keygen", 0) + 1

    # The challenge is now cached: a second client for the same authority sends its token at once.
    sent.clear()
    emulator.key_client("keygen", api_version=api_version, raw_request_hook=record).get_key(key_name)
    assert [(method, authorised) for method, authorised, _ in sent] == [("GET", True)]


# -- check 2: tenant mismatch ------------------------------------------------------------------------

def test_tenant_mismatch_and_the_escape_hatch(emulator: Emulator, api_version: str) -> None:
    """Check 2: a credential configured for another tenant is refused by the SDK itself (no token is
    requested); with additionally_allowed_tenants=["*"] it asks for the challenge's tenant and succeeds."""
    who = emulator.principal("keygen")
    other = str(uuid.uuid4())

    def client(**kwargs: Any) -> KeyClient:
        credential = ClientSecretCredential(other, who["client_id"], who["client_secret"],
                                            authority=emulator.info["authority"], disable_instance_discovery=True,
                                            connection_verify=emulator.info["ca_file"], **kwargs)
        return KeyClient(emulator.url, credential, verify_challenge_resource=False, api_version=api_version,
                         connection_verify=emulator.info["ca_file"])

    http_challenge_cache.remove_challenge_for_url(emulator.url)  # the tenant must come from a fresh challenge
    counters = emulator.admin.counters()
    before = counters["tokens_issued"]["by_principal"].get("keygen", 0)
    challenged = counters["requests"]["by_principal"].get("anonymous", 0)
    with pytest.raises(ClientAuthenticationError) as refused:
        list(client().list_properties_of_keys(max_page_size=1))
    assert f"not configured to acquire tokens for tenant {emulator.info['tenant_id']}" in str(refused.value)
    counters = emulator.admin.counters()
    assert counters["requests"]["by_principal"]["anonymous"] == challenged + 1, "one challenge, then nothing"
    assert counters["tokens_issued"]["by_principal"].get("keygen", 0) == before

    keys = list(client(additionally_allowed_tenants=["*"]).list_properties_of_keys(max_page_size=25))
    assert isinstance(keys, list)
    assert emulator.admin.counters()["tokens_issued"]["by_principal"]["keygen"] == before + 1


def test_credential_for_an_unknown_tenant_is_refused(emulator: Emulator) -> None:
    """Asked directly for another tenant, the authority answers as Entra does for an unknown tenant
    (AADSTS90002 on its OpenID configuration), so MSAL refuses before any token request."""
    tenant = str(uuid.uuid4())
    with httpx.Client(verify=ssl.create_default_context(cafile=emulator.info["ca_file"]), trust_env=False) as http:
        configuration = http.get(f"{emulator.info['authority']}/{tenant}/v2.0/.well-known/openid-configuration")
    assert tenant in _entra_error(configuration, 400, "invalid_tenant", 90002)
    who = emulator.principal("keygen")
    credential = ClientSecretCredential(tenant, who["client_id"], who["client_secret"],
                                        authority=emulator.info["authority"], disable_instance_discovery=True,
                                        connection_verify=emulator.info["ca_file"])
    before = _tokens_issued(emulator)
    with pytest.raises(ClientAuthenticationError, match=f"Unable to get authority configuration .*{tenant}"):
        credential.get_token(SCOPE)
    assert _tokens_issued(emulator) == before


# -- check 3 and other audiences ---------------------------------------------------------------------

@pytest.mark.parametrize("audience", ["https://vault.azure.net", "https://management.azure.com",
                                      "https://storage.azure.com"])
def test_token_for_another_audience_gets_401(emulator: Emulator, api_version: str, audience: str) -> None:
    """Check 3 (and its siblings): a genuine token of this tenant, for another resource, gets 401 with
    the challenge and the service's message; the same principal's Managed HSM token is accepted."""
    token = emulator.token("keygen", scope=f"{audience}/.default")
    assert jwt.decode(token, options={"verify_signature": False})["aud"] == audience
    with emulator.http(None) as http:
        response = http.get("/keys", params={"api-version": api_version}, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == _challenge(emulator)
    message = response.json()["error"]["message"]
    assert message.startswith(f"Found token with aud={audience}, but expected aud={RESOURCE} (Activity ID: ")
    assert message.endswith(f"(Activity ID: {response.headers['x-ms-request-id']})")
    with emulator.http("keygen") as http:
        assert http.get("/keys", params={"api-version": api_version}).status_code == 200


def test_sdk_with_a_vault_token_is_refused(emulator: Emulator, api_version: str) -> None:
    """Check 3 through the SDK: a credential that hands out Key Vault tokens whatever it is asked for
    makes the KeyClient fail with 401 (and the service's message) after the challenge round."""
    inner = emulator.credential("keygen")

    class VaultTokens:
        def get_token(self, *scopes: str, **kwargs: Any) -> Any:
            return inner.get_token("https://vault.azure.net/.default")

        def get_token_info(self, *scopes: str, options: Any = None) -> Any:
            return inner.get_token_info("https://vault.azure.net/.default")

    client = KeyClient(emulator.url, VaultTokens(), verify_challenge_resource=False, api_version=api_version,
                       connection_verify=emulator.info["ca_file"])
    http_challenge_cache.remove_challenge_for_url(emulator.url)
    before = emulator.admin.counters()["requests"]["by_status"].get("401", 0)
    with pytest.raises(HttpResponseError) as refused:
        list(client.list_properties_of_keys(max_page_size=1))
    assert refused.value.status_code == 401
    assert "Found token with aud=https://vault.azure.net" in str(refused.value)
    after = emulator.admin.counters()["requests"]["by_status"]["401"]
    assert after == before + 2, "the bodiless challenge, then the one retry with the wrong token"


# -- tokens the data plane must refuse ---------------------------------------------------------------

@functools.cache
def _load_key(path: Path) -> Any:
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def _signing_key(emulator: Emulator) -> Any:
    """The emulator's own RS256 token-signing key, from its state dir."""
    return _load_key(Path(emulator.state_dir) / "token-signing-key.pem")


@functools.cache
def _foreign_key() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _mint(emulator: Emulator, key: Any = None, drop: tuple[str, ...] = (), **claims: Any) -> str:
    """A token as this emulator's Entra mints them, with some claims changed; signed with the
    emulator's own key unless another is given."""
    now = int(time.time())
    body = {"aud": RESOURCE, "iss": f"https://sts.windows.net/{emulator.info['tenant_id']}/", "iat": now,
            "nbf": now, "exp": now + 3600, "tid": emulator.info["tenant_id"],
            "oid": emulator.principal("keygen")["object_id"], "appid": emulator.principal("keygen")["client_id"]}
    body = {k: v for k, v in (body | claims).items() if k not in drop}
    return jwt.encode(body, key or _signing_key(emulator), algorithm="RS256")


REFUSED = {
    # case: (how to build the Authorization header, a fragment of the 401 message or None for an empty body)
    "no scheme": (lambda e: "", None),
    "basic scheme": (lambda e: "Basic a2V5Z2VuOnNlY3JldA==", None),
    "bearer without token": (lambda e: "Bearer", None),
    "garbage": (lambda e: "Bearer not-a-jwt", "Token is not a valid JWT"),
    "other tenant": (lambda e: f"Bearer {_mint(e, tid=str(uuid.uuid4()))}", "Found token for tenant "),
    "other issuer": (lambda e: f"Bearer {_mint(e, iss='https://sts.windows.net/' + str(uuid.uuid4()) + '/')}",
                     "Invalid issuer"),
    "foreign signature": (lambda e: f"Bearer {_mint(e, key=_foreign_key())}", "Signature verification failed"),
    "unsigned": (lambda e: "Bearer " + jwt.encode(jwt.decode(_mint(e), options={"verify_signature": False}), None,
                                                  algorithm="none"), "Token validation failed"),
    "expired": (lambda e: "Bearer " + _mint(e, iat=int(time.time()) - 7200, nbf=int(time.time()) - 7200,
                                            exp=int(time.time()) - 60), "Token is expired"),
    "not yet valid": (lambda e: f"Bearer {_mint(e, nbf=int(time.time()) + 600)}", "not yet valid"),
    "no oid": (lambda e: f"Bearer {_mint(e, drop=('oid',))}", "oid"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unacceptable_tokens_get_401_and_the_service_carries_on(emulator: Emulator, api_version: str,
                                                                case: str) -> None:
    build, fragment = REFUSED[case]
    header = build(emulator)
    with emulator.http(None) as http:
        refused = http.get("/keys", params={"api-version": api_version},
                           headers={"Authorization": header} if header else {})
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == _challenge(emulator), "every 401 carries the challenge"
    if fragment is None:
        assert refused.content == b"OK", "a GET is challenged with the two bytes OK"
    else:
        error = refused.json()["error"]
        assert set(error) == {"message"}, "no code: Key Vault's 'Unauthorized' is not a Managed HSM code"
        assert fragment in error["message"] and error["message"].endswith(
            f"(Activity ID: {refused.headers['x-ms-request-id']})")
    with emulator.http("keygen") as http:
        assert http.get("/keys", params={"api-version": api_version}).status_code == 200


def test_minted_like_the_emulator_is_accepted_with_either_audience_form(emulator: Emulator, api_version: str) -> None:
    """The control for the cases above: the same construction with nothing changed is accepted, with
    and without the audience's trailing slash; a valid token for an oid with no assignment is
    authenticated but gets 403."""
    with emulator.http(None) as http:
        for audience in (RESOURCE, RESOURCE + "/"):
            accepted = http.get("/keys", params={"api-version": api_version},
                                headers={"Authorization": f"Bearer {_mint(emulator, aud=audience)}"})
            assert accepted.status_code == 200 and "value" in accepted.json()
        stranger = http.get("/keys", params={"api-version": api_version},
                            headers={"Authorization": f"Bearer {_mint(emulator, oid=str(uuid.uuid4()))}"})
    assert stranger.status_code == 403 and stranger.json()["error"]["code"] == "AccessDenied"


# -- expiry ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def short_lived(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """An emulator whose tokens live 2 s (`--token-lifetime 2`)."""
    emulator = start_emulator(tmp_path_factory.mktemp("short-lived"), "--scenario", "permissive",
                              "--token-lifetime", "2")
    # A port can be reused by a later emulator; never let a stale cached challenge (another tenant) apply.
    http_challenge_cache.remove_challenge_for_url(emulator.url)
    try:
        yield emulator
    finally:
        emulator.stop()


def test_expired_token_gets_401_and_the_sdk_fetches_a_new_one(short_lived: Emulator,
                                                               trust: Callable[[Emulator], Emulator]) -> None:
    """A real token past its `exp` is refused with the challenge; the SDK, whose token is inside the
    refresh window, fetches a new one for each call and never sees the 401."""
    trust(short_lived)
    token = short_lived.token("keygen")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 2
    headers = {"Authorization": f"Bearer {token}"}
    with short_lived.http(None) as http:
        assert http.get("/keys", params={"api-version": "7.5"}, headers=headers).status_code == 200
        time.sleep(max(0.0, claims["exp"] - time.time()) + 0.2)
        expired = http.get("/keys", params={"api-version": "7.5"}, headers=headers)
    assert expired.status_code == 401 and expired.headers["WWW-Authenticate"] == _challenge(short_lived)
    assert expired.json()["error"]["message"].startswith("Token is expired (Activity ID: ")

    client = short_lived.key_client("keygen")
    before = _tokens_issued(short_lived)
    for _ in range(2):
        assert isinstance(list(client.list_properties_of_keys()), list)
    assert _tokens_issued(short_lived) >= before + 2, "a token this short-lived is refreshed before every call"
    assert short_lived.admin.counters()["requests"]["by_status"]["401"] == 2, \
        "the bare call above and the SDK's one challenge; no refused token from the SDK"


def test_injected_token_expiry_is_recovered_by_the_sdk(permissive: Emulator, api_version: str,
                                                       trust: Callable[[Emulator], Emulator]) -> None:
    """An injected "expired token" 401 carries the challenge, so the SDK authorises again and succeeds."""
    trust(permissive)
    client = permissive.key_client("keygen", api_version=api_version)
    list(client.list_properties_of_keys(max_page_size=1))
    before = permissive.admin.counters()
    permissive.admin.inject("token_expired", "list", count=1)
    assert isinstance(list(client.list_properties_of_keys(max_page_size=25)), list)
    after = permissive.admin.counters()
    assert after["requests"]["by_operation"]["list"] >= before["requests"]["by_operation"]["list"] + 2, \
        "refused, then retried"
    assert after["faults_injected"].get("token_expired", 0) == before["faults_injected"].get("token_expired", 0) + 1
    assert after["requests"]["by_status"]["401"] == before["requests"]["by_status"].get("401", 0) + 1


# -- the Entra token endpoint ------------------------------------------------------------------------

def _token_request(emulator: Emulator, tenant: str | None = None, **form: str) -> httpx.Response:
    who = emulator.principal("keygen")
    body = {"grant_type": "client_credentials", "client_id": who["client_id"], "client_secret": who["client_secret"],
            "client_info": "1", "scope": SCOPE} | form
    url = f"{emulator.info['authority']}/{tenant or emulator.info['tenant_id']}/oauth2/v2.0/token"
    with httpx.Client(verify=ssl.create_default_context(cafile=emulator.info["ca_file"]), trust_env=False) as http:
        return http.post(url, data=body)


def _entra_error(response: httpx.Response, status: int, error: str, code: int) -> str:
    assert response.status_code == status
    body = response.json()
    assert body["error"] == error and body["error_codes"] == [code]
    assert body["error_description"].startswith(f"AADSTS{code}: ")
    assert "Trace ID: " in body["error_description"] and "Correlation ID: " in body["error_description"]
    assert {"timestamp", "trace_id", "correlation_id"} <= set(body)
    assert "access_token" not in body
    return body["error_description"]


def test_token_endpoint_answers_in_entra_shape(emulator: Emulator) -> None:
    ok = _token_request(emulator)
    assert ok.status_code == 200
    body = ok.json()
    assert body["token_type"] == "Bearer" and 3500 <= body["expires_in"] <= 3600 and body["access_token"]
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["aud"] == RESOURCE and claims["oid"] == emulator.principal("keygen")["object_id"]
    assert claims["iss"] == f"https://sts.windows.net/{emulator.info['tenant_id']}/"

    before = _tokens_issued(emulator)
    description = _entra_error(_token_request(emulator, client_secret="wrong-secret"), 401, "invalid_client", 7000215)
    assert description.startswith("AADSTS7000215: Invalid client secret provided.")
    unknown = str(uuid.uuid4())
    assert unknown in _entra_error(_token_request(emulator, client_id=unknown), 400, "unauthorized_client", 700016)
    identity = emulator.info["managed_identities"]["system-assigned"]["client_id"]
    _entra_error(_token_request(emulator, client_id=identity), 400, "unauthorized_client", 700016)
    tenant = str(uuid.uuid4())
    assert tenant in _entra_error(_token_request(emulator, tenant=tenant), 400, "invalid_tenant", 90002)
    _entra_error(_token_request(emulator, scope=RESOURCE), 400, "invalid_scope", 1002012)
    _entra_error(_token_request(emulator, grant_type="password"), 400, "unsupported_grant_type", 70003)
    assert _tokens_issued(emulator) == before, "no refused request mints a token"


def test_wrong_client_secret_through_the_sdk(emulator: Emulator, api_version: str) -> None:
    """azure-identity surfaces Entra's error, and the HSM is never called without a token."""
    who = emulator.principal("keygen")
    credential = ClientSecretCredential(emulator.info["tenant_id"], who["client_id"], "wrong-secret",
                                        authority=emulator.info["authority"], disable_instance_discovery=True,
                                        connection_verify=emulator.info["ca_file"])
    with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
        credential.get_token(SCOPE)
    before = emulator.admin.counters()["requests"]["by_principal"].get("keygen", 0)
    client = KeyClient(emulator.url, credential, verify_challenge_resource=False, api_version=api_version,
                       connection_verify=emulator.info["ca_file"])
    with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
        list(client.list_properties_of_keys(max_page_size=1))
    assert emulator.admin.counters()["requests"]["by_principal"].get("keygen", 0) == before
