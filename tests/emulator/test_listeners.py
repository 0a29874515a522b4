"""Every listener answers an unknown path with a 404 in its own error shape (never a 500), and the
login listener serves the multi-tenant OpenID metadata MSAL reads for `organizations` and `common`."""

from __future__ import annotations

import ssl

import httpx
import pytest

from tests.conftest import Emulator


@pytest.mark.parametrize("listener", ["authority", "identity_url", "admin_url"])
def test_unknown_path_is_404(permissive: Emulator, listener: str) -> None:
    verify = ssl.create_default_context(cafile=permissive.info["ca_file"])
    with httpx.Client(verify=verify, trust_env=False, timeout=10) as http:
        for method in ("GET", "POST"):
            response = http.request(method, f"{permissive.info[listener]}/no/such/path")
            assert response.status_code == 404, (listener, method, response.text)
            assert "error" in response.json()


def test_data_plane_unknown_path_is_404(permissive: Emulator) -> None:
    with permissive.http("keygen") as http:
        response = http.get("/no/such/path", params={"api-version": "7.6"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "NotFound"


@pytest.mark.parametrize("tenant", ["organizations", "common"])
def test_multi_tenant_openid_configuration(permissive: Emulator, tenant: str) -> None:
    """What `az login`/`az logout` read first: Entra's metadata for the tenant aliases, whose issuer
    is the `{tenantid}` template."""
    authority = permissive.info["authority"]
    verify = ssl.create_default_context(cafile=permissive.info["ca_file"])
    response = httpx.get(f"{authority}/{tenant}/v2.0/.well-known/openid-configuration", verify=verify,
                         trust_env=False)
    assert response.status_code == 200
    body = response.json()
    assert body["issuer"] == f"{authority}/{{tenantid}}/v2.0"
    assert body["token_endpoint"] == f"{authority}/{tenant}/oauth2/v2.0/token"
