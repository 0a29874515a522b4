"""Microsoft's Azure CLI against the emulator: the official docs' RBAC recipes for TLS offload
(docs/tls-offload-library.md, "permissive" and "granular"), and `az keyvault key create/list/sign
--hsm-name`, run unchanged. The assignee can do exactly what the recipe grants and is refused the
rest with 403 AccessDenied; every signature the CLI returns verifies with the key's public half.

The CLI starts in about a second per command, so each approach is one test that runs its recipe
in order. See tests/azure_cli.py for how the CLI is installed and pointed at the emulator.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

from tests.azure_cli import HSM_NAME, AzureCli, ensure_installed
from tests.conftest import Emulator, emulator_for

CRYPTO_USER = "21dbd100-6940-42c2-9190-5d6cb909625b"  # Managed HSM Crypto User's built-in id
DIGEST = hashlib.sha256(b"signed through the Azure CLI").digest()
READ_ROLE = {"roleName": "TLS Library User Read Role", "description": "Grant Read access to keys",
             "actions": [], "notActions": [], "notDataActions": [],
             "dataActions": ["Microsoft.KeyVault/managedHsm/keys/read/action"]}


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AzureCli, Emulator]]:
    """An emulator with only the admin's roles (scenario empty) and a CLI registered to it."""
    az = ensure_installed()
    for emulator in emulator_for(tmp_path_factory, "emulator-az", "--scenario", "empty"):
        azure_cli = AzureCli(az, Path(tmp_path_factory.mktemp("azure-config")), emulator.info)
        azure_cli.register_cloud()
        yield azure_cli, emulator


def _assign(az: AzureCli, emulator: Emulator, role: str, scope: str, principal: str) -> dict[str, Any]:
    return az.run("keyvault", "role", "assignment", "create", "--hsm-name", HSM_NAME, "--role", role,
                  "--scope", scope, "--assignee-object-id", emulator.principal(principal)["object_id"],
                  "--assignee-principal-type", "ServicePrincipal").json()


def _create_key(az: AzureCli, name: str, check: bool = True) -> Any:
    return az.run("keyvault", "key", "create", "--hsm-name", HSM_NAME, "--name", name, "--kty", "RSA-HSM",
                  "--size", "2048", "--ops", "sign", "verify", check=check)


def _sign(az: AzureCli, name: str, check: bool = True) -> Any:
    return az.run("keyvault", "key", "sign", "--hsm-name", HSM_NAME, "--name", name, "--algorithm", "PS256",
                  "--digest", base64.b64encode(DIGEST).decode(), check=check)


def _listed(az: AzureCli) -> set[str]:
    return {k["name"] for k in az.run("keyvault", "key", "list", "--hsm-name", HSM_NAME).json()}


def _verifies(key: dict[str, Any], signed: dict[str, Any]) -> None:
    """The CLI's signature is a PS256 signature by the key it created (standard base64 on both)."""
    jwk = key["key"]
    public = rsa.RSAPublicNumbers(int.from_bytes(base64.b64decode(jwk["e"]), "big"),
                                  int.from_bytes(base64.b64decode(jwk["n"]), "big")).public_key()
    public.verify(base64.b64decode(signed["signature"]), DIGEST,
                  padding.PSS(padding.MGF1(hashes.SHA256()), 32), utils.Prehashed(hashes.SHA256()))
    assert signed["keyId"] == jwk["kid"]


def _refused(result: Any, action: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "AccessDenied" in result.stderr and action in result.stderr, result.stderr[-600:]


def test_permissive_recipe(cli: tuple[AzureCli, Emulator]) -> None:
    """Crypto User at /keys: the TLS principal creates, lists and signs; it cannot grant roles."""
    az, emulator = cli
    az.login("admin")
    assigned = _assign(az, emulator, "Managed HSM Crypto User", "/keys", "nobody")
    assert assigned["scope"] == "/keys" and assigned["roleName"] == "Managed HSM Crypto User"
    assert assigned["id"] == f"/providers/Microsoft.Authorization/roleAssignments/{assigned['name']}"

    signs = emulator.admin.counters()["signs"]["by_principal"].get("nobody", 0)
    az.login("nobody")
    key = _create_key(az, "permissive-tls").json()
    assert key["key"]["kty"] == "RSA-HSM" and sorted(key["key"]["keyOps"]) == ["sign", "verify"]
    assert "permissive-tls" in _listed(az)
    _verifies(key, _sign(az, "permissive-tls").json())
    assert emulator.admin.counters()["signs"]["by_principal"]["nobody"] == signs + 1
    # The role by id, so that the CLI goes straight to the assignment (a name is first looked up).
    _refused(az.run("keyvault", "role", "assignment", "create", "--hsm-name", HSM_NAME, "--role",
                    CRYPTO_USER, "--scope", "/", "--assignee-object-id",
                    emulator.principal("nobody")["object_id"], check=False), "roleAssignments/write/action")


def test_granular_recipe(cli: tuple[AzureCli, Emulator]) -> None:
    """The custom read role at /keys plus Crypto User at /keys/<key>: the TLS principal lists every key
    and signs with its own only; it cannot create keys or sign with another one."""
    az, emulator = cli
    az.login("admin")
    role = az.run("keyvault", "role", "definition", "create", "--hsm-name", HSM_NAME,
                  "--role-definition", json.dumps(READ_ROLE)).json()
    assert role["roleType"] == "CustomRole" and role["assignableScopes"] == ["/"]
    _assign(az, emulator, "Managed HSM Crypto User", "/keys", "keygen")

    az.login("keygen")
    key = _create_key(az, "granular-tls").json()
    _create_key(az, "granular-other")

    az.login("admin")
    _assign(az, emulator, READ_ROLE["roleName"], "/keys", "tls-offload")
    _assign(az, emulator, "Managed HSM Crypto User", "/keys/granular-tls", "tls-offload")
    listed = az.run("keyvault", "role", "assignment", "list", "--hsm-name", HSM_NAME).json()
    tls = emulator.principal("tls-offload")["object_id"]
    assert {(a["roleName"], a["scope"]) for a in listed if a["principalId"] == tls} == \
        {(READ_ROLE["roleName"], "/keys"), ("Managed HSM Crypto User", "/keys/granular-tls")}
    assert {"/", "/keys", "/keys/granular-tls"} <= {a["scope"] for a in listed}, "an unscoped list has every scope"

    az.login("tls-offload")
    assert {"granular-tls", "granular-other"} <= _listed(az)
    _verifies(key, _sign(az, "granular-tls").json())
    _refused(_sign(az, "granular-other", check=False), "keys/sign/action")
    _refused(_create_key(az, "granular-mine", check=False), "keys/create")
    az.run("logout")  # reads the `organizations` metadata of the authority
