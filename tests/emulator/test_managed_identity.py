"""Conformance check 16 (reference §9, §8.3): azure-identity's ManagedIdentityCredential through the
emulator's App Service, IMDS and MSI_ENDPOINT endpoints. Each identity is a principal of its own:
the emulator counts its requests under its name, and its RBAC assignments apply to it alone.

The real IMDS address is never used: every environment points at the emulator.
"""

from __future__ import annotations

import hashlib
from typing import Callable

import pytest
from azure.identity import ManagedIdentityCredential
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm

from tests.conftest import Emulator

ENVIRONMENTS = ["app_service", "imds", "azure_ml", "cloud_shell"]
MI_VARIABLES = ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT",
                "AZURE_POD_IDENTITY_AUTHORITY_HOST")
DIGEST = hashlib.sha256(b"managed identity").digest()


def _credential(emulator: Emulator, monkeypatch: pytest.MonkeyPatch, environment: str,
                identity: str) -> ManagedIdentityCredential:
    for name in MI_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in emulator.info["managed_identities"]["environments"][environment].items():
        monkeypatch.setenv(name, value)
    if identity == "user-assigned":
        return ManagedIdentityCredential(client_id=emulator.info["managed_identities"][identity]["client_id"])
    return ManagedIdentityCredential()


# Cloud Shell has only the signed-in user's identity: azure-identity refuses a client_id there.
CASES = [(e, i) for e in ENVIRONMENTS for i in ("system-assigned", "user-assigned")
         if (e, i) != ("cloud_shell", "user-assigned")]


@pytest.mark.parametrize("environment, identity", CASES)
def test_managed_identity_signs_as_its_own_principal(permissive: Emulator, monkeypatch: pytest.MonkeyPatch,
                                                     trust: Callable[[Emulator], Emulator], api_version: str,
                                                     environment: str, identity: str, key_name: str) -> None:
    trust(permissive)
    key = permissive.key_client("keygen", api_version=api_version).create_ec_key(key_name, curve="P-256")
    credential = _credential(permissive, monkeypatch, environment, identity)
    before = permissive.admin.counters()["signs"]["by_principal"].get(identity, 0)
    client = CryptographyClient(key.id, credential, verify_challenge_resource=False, api_version=api_version)
    assert client.verify(SignatureAlgorithm.es256, DIGEST, client.sign(SignatureAlgorithm.es256, DIGEST).signature).is_valid
    assert permissive.admin.counters()["signs"]["by_principal"][identity] == before + 1


def test_identities_are_distinct_principals_under_rbac(granular: Emulator, monkeypatch: pytest.MonkeyPatch,
                                                       trust: Callable[[Emulator], Emulator], key_name: str) -> None:
    """In the granular scenario both identities may only read: a per-key Crypto User assignment for the
    user-assigned one lets it sign that key, while the system-assigned one is still refused."""
    trust(granular)
    key = granular.key_client("keygen").create_ec_key(key_name, curve="P-256")
    user = granular.info["managed_identities"]["user-assigned"]["object_id"]
    granular.access_client("admin").create_role_assignment(
        f"/keys/{key_name}",
        "Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/21dbd100-6940-42c2-9190-5d6cb909625b",
        user)
    signer = CryptographyClient(key.id, _credential(granular, monkeypatch, "imds", "user-assigned"),
                                verify_challenge_resource=False)
    assert len(signer.sign(SignatureAlgorithm.es256, DIGEST).signature) == 64
    refused = CryptographyClient(key.id, _credential(granular, monkeypatch, "imds", "system-assigned"),
                                 verify_challenge_resource=False)
    with pytest.raises(Exception) as denied:
        refused.sign(SignatureAlgorithm.es256, DIGEST)
    assert "AccessDenied" in str(denied.value) or getattr(denied.value, "status_code", None) == 403
    names = [k.name for k in KeyClient(granular.url, _credential(granular, monkeypatch, "imds", "system-assigned"),
                                       verify_challenge_resource=False).list_properties_of_keys()]
    assert key_name in names, "both identities hold the read role at /keys"
