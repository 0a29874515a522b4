"""Conformance checks 1, 2 and 3 (reference §9), and tokens the data plane must refuse.

The bearer challenge, tenant matching in Microsoft's SDK, and the audience, tenant, signature and
expiry checks on every token, in both api-versions and both RBAC scenarios.
"""

from __future__ import annotations

import time
import uuid
from typing import Callable

import jwt
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import ClientSecretCredential
from azure.keyvault.keys import KeyClient
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import Emulator

RESOURCE = "https://managedhsm.azure.net"


def test_first_bodiless_call_gets_the_challenge(emulator: Emulator, api_version: str) -> None:
    """Check 1: 401, the exact header, an empty body; the SDK's second call (with a token) succeeds."""
    with emulator.http(None) as http:
        response = http.get("/keys", params={"api-version": api_version})
    assert response.status_code == 401 and response.content == b""
    tenant = emulator.info["tenant_id"]
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith(f'Bearer authorization="') and f'/{tenant}", resource="{RESOURCE}"' in challenge
    assert response.headers["x-ms-request-id"]
    before = emulator.admin.counters()["tokens_issued"]["total"]
    client = emulator.key_client("keygen", api_version=api_version)
    list(client.list_properties_of_keys(max_page_size=1))  # challenge, token, retry: all inside the SDK
    assert emulator.admin.counters()["tokens_issued"]["total"] == before + 1


def test_tenant_mismatch_and_the_escape_hatch(emulator: Emulator, api_version: str) -> None:
    """Check 2: a credential for another tenant is refused by the SDK unless it allows every tenant."""
    who = emulator.principal("keygen")
    other = str(uuid.uuid4())

    def client(**kwargs: object) -> KeyClient:
        credential = ClientSecretCredential(other, who["client_id"], who["client_secret"],
                                            authority=emulator.info["authority"], disable_instance_discovery=True,
                                            **kwargs)
        return KeyClient(emulator.url, credential, verify_challenge_resource=False, api_version=api_version)

    with pytest.raises(ClientAuthenticationError, match="tenant"):
        list(client().list_properties_of_keys())
    assert isinstance(list(client(additionally_allowed_tenants=["*"]).list_properties_of_keys()), list)


def test_vault_audience_token_gets_401(emulator: Emulator, api_version: str) -> None:
    """Check 3: a token for https://vault.azure.net is not a Managed HSM token."""
    token = emulator.token("keygen", scope="https://vault.azure.net/.default")
    with emulator.http(None) as http:
        response = http.get("/keys", params={"api-version": api_version}, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401 and "WWW-Authenticate" in response.headers
    message = response.json()["error"]["message"]
    assert "Found token with aud=https://vault.azure.net" in message and f"expected aud={RESOURCE}" in message


def _forged(emulator: Emulator, **claims: object) -> str:
    """A well-formed RS256 token that this emulator did not sign."""
    now = int(time.time())
    body = {"aud": RESOURCE, "iss": f"https://sts.windows.net/{emulator.info['tenant_id']}/", "iat": now, "nbf": now,
            "exp": now + 3600, "tid": emulator.info["tenant_id"], "oid": emulator.principal("keygen")["object_id"]}
    return jwt.encode(body | claims, rsa.generate_private_key(public_exponent=65537, key_size=2048), algorithm="RS256")


@pytest.mark.parametrize("case, fragment", [
    ("garbage", ""),
    ("other tenant", "tenant"),
    ("foreign signature", "ignature"),
    ("basic scheme", ""),
])
def test_unacceptable_tokens_get_401_and_the_service_carries_on(emulator: Emulator, api_version: str, case: str,
                                                                 fragment: str) -> None:
    token = {"garbage": "not-a-jwt", "other tenant": _forged(emulator, tid=str(uuid.uuid4())),
             "foreign signature": _forged(emulator), "basic scheme": ""}[case]
    header = "Basic a2V5Z2VuOnNlY3JldA==" if case == "basic scheme" else f"Bearer {token}"
    with emulator.http(None) as http:
        refused = http.get("/keys", params={"api-version": api_version}, headers={"Authorization": header})
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer ")
        if fragment:
            assert fragment in refused.json()["error"]["message"]
    with emulator.http("keygen") as http:
        assert http.get("/keys", params={"api-version": api_version}).status_code == 200


def test_expired_token_is_refused_and_the_sdk_recovers(permissive: Emulator, api_version: str,
                                                        trust: Callable[[Emulator], Emulator]) -> None:
    """An injected "expired token" 401 carries the challenge, so the SDK authorises again and succeeds."""
    trust(permissive)
    client = permissive.key_client("keygen", api_version=api_version)
    list(client.list_properties_of_keys(max_page_size=1))
    before = permissive.admin.counters()["requests"]["by_operation"].get("list", 0)
    permissive.admin.inject("token_expired", "list", count=1)
    assert isinstance(list(client.list_properties_of_keys(max_page_size=25)), list)
    assert permissive.admin.counters()["requests"]["by_operation"]["list"] >= before + 2, "refused, then retried"


def test_wrong_client_secret_gets_the_entra_error(emulator: Emulator) -> None:
    who = emulator.principal("keygen")
    credential = ClientSecretCredential(emulator.info["tenant_id"], who["client_id"], "wrong-secret",
                                        authority=emulator.info["authority"], disable_instance_discovery=True)
    with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
        credential.get_token(f"{RESOURCE}/.default")
