"""Conformance check 16 (reference §9, §8.3): azure-identity's ManagedIdentityCredential through the
emulator's App Service, IMDS and MSI_ENDPOINT (Azure ML and Cloud Shell) endpoints. Each identity is a
principal of its own: its tokens carry its own object id, the emulator counts its requests under its
name, and its RBAC assignments apply to it alone.

The real IMDS address is never used: every environment points at the emulator's identity listener
(AZURE_POD_IDENTITY_AUTHORITY_HOST for IMDS), and the counters show the emulator served every token.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any, Callable

import httpx
import jwt
import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.identity import ManagedIdentityCredential
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm

from tests.conftest import Emulator

ENVIRONMENTS = ["app_service", "imds", "azure_ml", "cloud_shell"]
IDENTITIES = ["system-assigned", "user-assigned"]
MI_VARIABLES = ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT",
                "AZURE_POD_IDENTITY_AUTHORITY_HOST", "AZURE_CLIENT_ID")
RESOURCE = "https://managedhsm.azure.net"
SCOPE = f"{RESOURCE}/.default"
CRYPTO_USER_ID = ("Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/"
                  "21dbd100-6940-42c2-9190-5d6cb909625b")
DIGEST = hashlib.sha256(b"managed identity").digest()

# Cloud Shell has only the signed-in user's identity: azure-identity refuses a client_id there.
CASES = [(e, i) for e in ENVIRONMENTS for i in IDENTITIES if (e, i) != ("cloud_shell", "user-assigned")]


def _environment(emulator: Emulator, monkeypatch: pytest.MonkeyPatch, environment: str) -> dict[str, str]:
    """Exactly this protocol's variables, as emulator.json gives them, and no other MI variable."""
    for name in MI_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    variables = emulator.info["managed_identities"]["environments"][environment]
    for name, value in variables.items():
        assert "169.254.169.254" not in value
        monkeypatch.setenv(name, value)
    return variables


def _credential(emulator: Emulator, monkeypatch: pytest.MonkeyPatch, environment: str,
                identity: str) -> ManagedIdentityCredential:
    _environment(emulator, monkeypatch, environment)
    if identity == "user-assigned":
        return ManagedIdentityCredential(client_id=emulator.info["managed_identities"][identity]["client_id"])
    return ManagedIdentityCredential()


def test_environments_point_at_the_emulator(permissive: Emulator) -> None:
    """emulator.json describes every protocol with the variables azure-identity reads (§8.3)."""
    environments = permissive.info["managed_identities"]["environments"]
    base = permissive.info["identity_url"]
    assert base.startswith("http://127.0.0.1:")
    assert set(environments["app_service"]) == {"IDENTITY_ENDPOINT", "IDENTITY_HEADER"}
    assert environments["imds"] == {"AZURE_POD_IDENTITY_AUTHORITY_HOST": base}
    assert set(environments["azure_ml"]) == {"MSI_ENDPOINT", "MSI_SECRET"}
    assert set(environments["cloud_shell"]) == {"MSI_ENDPOINT"}
    for variables in environments.values():
        for name in ("IDENTITY_ENDPOINT", "MSI_ENDPOINT"):
            assert variables.get(name, base).startswith(base)


@pytest.mark.parametrize("environment, identity", CASES)
def test_managed_identity_signs_as_its_own_principal(permissive: Emulator, monkeypatch: pytest.MonkeyPatch,
                                                     trust: Callable[[Emulator], Emulator], api_version: str,
                                                     environment: str, identity: str, key_name: str) -> None:
    """Check 16: each protocol yields a token for the expected identity, minted by this protocol's
    endpoint; the HSM accepts it and counts the sign under that identity's name."""
    trust(permissive)
    key = permissive.key_client("keygen", api_version=api_version).create_ec_key(key_name, curve="P-256")
    credential = _credential(permissive, monkeypatch, environment, identity)
    before = permissive.admin.counters()
    client = CryptographyClient(key.id, credential, verify_challenge_resource=False, api_version=api_version)
    signature = client.sign(SignatureAlgorithm.es256, DIGEST).signature
    assert client.verify(SignatureAlgorithm.es256, DIGEST, signature).is_valid
    after = permissive.admin.counters()

    assert after["signs"]["by_principal"][identity] == before["signs"]["by_principal"].get(identity, 0) + 1
    assert after["signs"]["by_key"][key_name] == 1
    issued = after["tokens_issued"]
    assert issued["by_endpoint"][environment] == before["tokens_issued"]["by_endpoint"].get(environment, 0) + 1
    assert issued["by_principal"][identity] == before["tokens_issued"]["by_principal"].get(identity, 0) + 1
    assert issued["total"] == before["tokens_issued"]["total"] + 1, "one token, from this protocol only"
    for other in {"keygen", "tls-offload", "admin", "nobody", *IDENTITIES} - {identity}:
        assert after["signs"]["by_principal"].get(other, 0) == before["signs"]["by_principal"].get(other, 0)


@pytest.mark.parametrize("environment, identity", CASES)
def test_token_carries_the_identity(permissive: Emulator, monkeypatch: pytest.MonkeyPatch, environment: str,
                                    identity: str) -> None:
    """The token's oid is the identity's object id (what RBAC authorizes by), for the HSM's audience
    and tenant, and distinct from every other principal's."""
    token = _credential(permissive, monkeypatch, environment, identity).get_token(SCOPE)
    claims = jwt.decode(token.token, options={"verify_signature": False})
    expected = permissive.info["managed_identities"][identity]
    assert claims["oid"] == expected["object_id"] and claims["appid"] == expected["client_id"]
    assert claims["aud"] == RESOURCE and claims["tid"] == permissive.info["tenant_id"]
    others = {p["object_id"] for p in permissive.info["principals"].values()} | {
        permissive.info["managed_identities"][i]["object_id"] for i in IDENTITIES if i != identity}
    assert claims["oid"] not in others and len(others) == 5
    assert token.expires_on > claims["iat"] + 3000


def test_identities_are_distinct_principals_under_rbac(granular: Emulator, monkeypatch: pytest.MonkeyPatch,
                                                       trust: Callable[[Emulator], Emulator], api_version: str,
                                                       key_name: str) -> None:
    """In the granular scenario both identities may only read: a per-key Crypto User assignment for the
    user-assigned one lets it sign that key (through App Service and IMDS alike), while the
    system-assigned one, through the same protocols, is still refused."""
    trust(granular)
    key = granular.key_client("keygen", api_version=api_version).create_ec_key(key_name, curve="P-256")
    user = granular.info["managed_identities"]["user-assigned"]["object_id"]
    assignment = granular.access_client("admin", api_version=api_version).create_role_assignment(
        f"/keys/{key_name}", CRYPTO_USER_ID, user)
    assert assignment.properties.principal_id == user

    for environment in ("app_service", "imds", "azure_ml"):
        signer = CryptographyClient(key.id, _credential(granular, monkeypatch, environment, "user-assigned"),
                                    verify_challenge_resource=False, api_version=api_version)
        assert len(signer.sign(SignatureAlgorithm.es256, DIGEST).signature) == 64
        refused = CryptographyClient(key.id, _credential(granular, monkeypatch, environment, "system-assigned"),
                                     verify_challenge_resource=False, api_version=api_version)
        with pytest.raises(HttpResponseError) as denied:
            refused.sign(SignatureAlgorithm.es256, DIGEST)
        assert denied.value.status_code == 403 and denied.value.error.code == "AccessDenied"
        assert f"keys/sign/action on '/keys/{key_name}'" in denied.value.error.message
        names = [k.name for k in KeyClient(granular.url, _credential(granular, monkeypatch, environment,
                                                                     "system-assigned"),
                                           verify_challenge_resource=False,
                                           api_version=api_version).list_properties_of_keys()]
        assert key_name in names, "both identities hold the read role at /keys"
    counters = granular.admin.counters()
    assert counters["signs"]["by_key"][key_name] == 3
    assert counters["requests"]["by_operation_principal"]["sign"]["system-assigned"] >= 3
    assert "system-assigned" not in counters["signs"]["by_principal"]


# -- what the endpoints refuse -----------------------------------------------------------------------

def _get(url: str, **kwargs: Any) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=10.0) as http:
        return http.request(kwargs.pop("method", "GET"), url, **kwargs)


def test_endpoints_check_their_protocols_secrets(permissive: Emulator) -> None:
    """IMDS needs `Metadata: true`, App Service `X-IDENTITY-HEADER`, Azure ML the `secret` header and
    Cloud Shell `Metadata: true`; without them no token is minted. Every refusal is in the protocol's
    own error shape (App Service's is `statusCode`/`message`, the one MSAL reads)."""
    environments = permissive.info["managed_identities"]["environments"]
    app, ml = environments["app_service"], environments["azure_ml"]
    imds = environments["imds"]["AZURE_POD_IDENTITY_AUTHORITY_HOST"] + "/metadata/identity/oauth2/token"
    before = permissive.admin.counters()["tokens_issued"]["total"]

    no_metadata = _get(imds, params={"api-version": "2018-02-01", "resource": RESOURCE})
    assert no_metadata.status_code == 400
    assert no_metadata.json() == {"error": "invalid_request",
                                  "error_description": "Required metadata header not specified"}
    for header in ({}, {"X-IDENTITY-HEADER": "wrong"}):
        refused = _get(app["IDENTITY_ENDPOINT"], params={"api-version": "2019-08-01", "resource": RESOURCE},
                       headers=header)
        assert refused.status_code == 401 and refused.json()["statusCode"] == 401 and refused.json()["message"]
    for header in ({}, {"secret": "wrong"}):
        refused = _get(ml["MSI_ENDPOINT"], params={"api-version": "2017-09-01", "resource": RESOURCE},
                       headers=header)
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
    cloud_shell = _get(environments["cloud_shell"]["MSI_ENDPOINT"], method="POST", data={"resource": RESOURCE})
    assert cloud_shell.status_code == 400 and cloud_shell.json()["error"] == "invalid_request"
    no_resource = _get(imds, params={"api-version": "2018-02-01"}, headers={"Metadata": "true"})
    assert no_resource.status_code == 400 and "resource" in no_resource.json()["error_description"]
    assert permissive.admin.counters()["tokens_issued"]["total"] == before

    # The control: each protocol, done right on the wire, gets the token shape azure-identity needs.
    imds_ok = _get(imds, params={"api-version": "2018-02-01", "resource": RESOURCE}, headers={"Metadata": "true"})
    assert imds_ok.status_code == 200 and {"access_token", "expires_in"} <= set(imds_ok.json())
    app_ok = _get(app["IDENTITY_ENDPOINT"], params={"api-version": "2019-08-01", "resource": RESOURCE},
                  headers={"X-IDENTITY-HEADER": app["IDENTITY_HEADER"], "Metadata": "true"})
    assert app_ok.status_code == 200 and {"access_token", "expires_on"} <= set(app_ok.json())
    ml_ok = _get(ml["MSI_ENDPOINT"], params={"api-version": "2017-09-01", "resource": RESOURCE},
                 headers={"secret": ml["MSI_SECRET"]})
    assert ml_ok.status_code == 200 and {"access_token", "expires_on"} <= set(ml_ok.json())
    shell_ok = _get(environments["cloud_shell"]["MSI_ENDPOINT"], method="POST", data={"resource": RESOURCE},
                    headers={"Metadata": "true"})
    assert shell_ok.status_code == 200 and {"access_token", "expires_on"} <= set(shell_ok.json())
    assert permissive.admin.counters()["tokens_issued"]["total"] == before + 4


@pytest.mark.parametrize("environment, message", [("imds", "Identity not found"),
                                                  ("app_service", "Unable to load the proper Managed Identity."),
                                                  ("azure_ml", "Identity not found")])
@pytest.mark.parametrize("who", ["unknown", "service principal"])
def test_unknown_client_id_is_refused(permissive: Emulator, monkeypatch: pytest.MonkeyPatch, environment: str,
                                      message: str, who: str) -> None:
    """A client id that is no managed identity here (a random one, or a service principal's) gets no
    token, and azure-identity's error carries the endpoint's reason."""
    _environment(permissive, monkeypatch, environment)
    client_id = str(uuid.uuid4()) if who == "unknown" else permissive.principal("tls-offload")["client_id"]
    before = permissive.admin.counters()["tokens_issued"]["total"]
    with pytest.raises(ClientAuthenticationError) as refused:
        ManagedIdentityCredential(client_id=client_id).get_token(SCOPE)
    assert message in str(refused.value)
    assert permissive.admin.counters()["tokens_issued"]["total"] == before
