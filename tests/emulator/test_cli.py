"""The `mhsm-emulator serve` command line is a contract (docs/emulator.md): other tools start the
emulator by these flags and read what it publishes. These tests hold it to that contract with real
processes: exit codes and usage on bad flags, the files it writes, its certificate, a fast and clean
SIGTERM, state that survives a restart, and the effect of each flag.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import ssl
import stat
import subprocess
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from azure.core.exceptions import HttpResponseError
from azure.identity import ManagedIdentityCredential
from azure.keyvault.administration import KeyVaultRoleScope
from azure.keyvault.keys.crypto import SignatureAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

from tests.conftest import EMULATOR, REPO, Emulator, start_emulator

HSM_NAME = "contoso-tls-01"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
SCOPE = "https://managedhsm.azure.net/.default"
PRINCIPALS = ("tls-offload", "keygen", "admin")
IDENTITIES = ("system-assigned", "user-assigned")


def _trust(monkeypatch: pytest.MonkeyPatch, emu: Emulator) -> None:
    """Point both TLS stacks at this emulator's CA for the current test only (§8.4)."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", emu.info["ca_file"])
    monkeypatch.setenv("SSL_CERT_FILE", emu.info["ca_file"])


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].rstrip("/"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _claims(token: str) -> dict[str, Any]:
    """The JWT's payload, unverified: the tests only need to see whom a token names."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _entra_token(emu: Emulator, principal: str) -> httpx.Response:
    p = emu.principal(principal)
    with httpx.Client(verify=ssl.create_default_context(cafile=emu.info["ca_file"]), trust_env=False) as http:
        return http.post(f"{emu.info['authority']}/{emu.info['tenant_id']}/oauth2/v2.0/token",
                         data={"grant_type": "client_credentials", "client_id": p["client_id"],
                               "client_secret": p["client_secret"], "scope": SCOPE})


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """One emulator with a non-default HSM name, so that everything derived from the name
    (certificate SAN, hsm_host, the conf's resourceName) is shown to follow the flag."""
    emulator = start_emulator(tmp_path_factory.mktemp("cli-served"), "--hsm-name", HSM_NAME)
    try:
        yield emulator
    finally:
        emulator.stop()


# -- bad flags -----------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, complaint", [
    (["serve", "--state-dir", "{dir}", "--bogus"], "unrecognized arguments: --bogus"),
    (["--bogus"], "serve"),
    (["serve", "--state-dir", "{dir}", "--port", "70000"], "--port"),
    (["serve", "--state-dir", "{dir}", "--port", "-1"], "--port"),
    (["serve", "--state-dir", "{dir}", "--port", "http"], "--port"),
    (["serve", "--state-dir", "{dir}", "--scenario", "bogus"], "--scenario"),
    (["serve", "--state-dir", "{dir}", "--hsm-name", "a--b"], "--hsm-name"),
    (["serve", "--state-dir", "{dir}", "--hsm-name", "ab"], "--hsm-name"),
    (["serve", "--state-dir", "{dir}", "--token-lifetime", "0"], "--token-lifetime"),
    (["serve"], "--state-dir"),
    ([], "serve"),
])
def test_bad_flags_exit_2_with_usage_and_start_nothing(tmp_path: Path, flags: list[str], complaint: str) -> None:
    """A tool that starts the emulator with a typo must learn so at once, from the exit code and
    the message, and find no half-made state dir behind."""
    state_dir = tmp_path / "state"
    args = [f.format(dir=state_dir) for f in flags]
    done = subprocess.run([*EMULATOR, *args], capture_output=True, text=True, cwd=REPO, timeout=30)
    assert done.returncode == 2
    assert done.stderr.startswith("usage: mhsm-emulator")
    assert complaint in done.stderr
    assert done.stdout == ""
    assert not state_dir.exists()


# -- what `serve` publishes ----------------------------------------------------------------------

def test_emulator_json(served: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """emulator.json is private (0600: it holds secrets), complete, and what it says works: each
    principal's secret gets a token naming that principal, each managed-identity environment gets
    azure-identity a token for the identity it names."""
    path = served.state_dir / "emulator.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    info = json.loads(path.read_text())
    assert info == served.info
    assert not list(served.state_dir.glob(".*.tmp"))  # written by rename, nothing left half-done
    assert re.fullmatch(r"https://127\.0\.0\.1:\d+", info["url"])
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", info["admin_url"])
    assert re.fullmatch(r"https://127\.0\.0\.1:\d+", info["authority"]) and info["authority"] != info["url"]
    assert UUID.fullmatch(info["tenant_id"])
    assert Path(info["ca_file"]).read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert info["hsm_name"] == HSM_NAME and info["hsm_host"] == f"{HSM_NAME}.managedhsm.azure.net"
    assert info["pid"] == served.process.pid
    ids = []
    for name in PRINCIPALS:
        principal = info["principals"][name]
        assert UUID.fullmatch(principal["client_id"]) and UUID.fullmatch(principal["object_id"])
        assert len(principal["client_secret"]) >= 20
        ids += [principal["client_id"], principal["object_id"]]
        token = _entra_token(served, name)
        assert token.status_code == 200, token.text
        claims = _claims(token.json()["access_token"])
        assert (claims["oid"], claims["tid"]) == (principal["object_id"], info["tenant_id"])
    identities = info["managed_identities"]
    for name in IDENTITIES:
        assert UUID.fullmatch(identities[name]["client_id"]) and UUID.fullmatch(identities[name]["object_id"])
        ids += [identities[name]["client_id"], identities[name]["object_id"]]
    assert len(set(ids)) == len(ids)  # every identity is its own principal
    environments = identities["environments"]
    assert set(environments) == {"app_service", "imds", "azure_ml", "cloud_shell"}
    for protocol, variables in environments.items():
        assert all(v.startswith(info["identity_url"]) for k, v in variables.items() if "ENDPOINT" in k
                   or "HOST" in k), protocol
        wanted = [("system-assigned", None)]
        if protocol != "cloud_shell":  # Cloud Shell has no user-assigned identities
            wanted.append(("user-assigned", identities["user-assigned"]["client_id"]))
        for name, client_id in wanted:
            with monkeypatch.context() as env:
                for variable, value in variables.items():
                    env.setenv(variable, value)
                credential = ManagedIdentityCredential(client_id=client_id) if client_id \
                    else ManagedIdentityCredential()
                token = credential.get_token(SCOPE).token
            assert _claims(token)["oid"] == identities[name]["object_id"], (protocol, name)


def test_pkcs11_conf(served: Emulator) -> None:
    """mhsm-pkcs11.conf is the official JSON format, so the official library's parser accepts it,
    plus our documented extension fields that point a client at this emulator."""
    path = served.state_dir / "mhsm-pkcs11.conf"
    assert Path(served.info["conf_file"]) == path
    conf = json.loads(path.read_text())
    token = conf["tokens"][0]
    assert len(conf["tokens"]) == 1
    assert (token["slotid"], token["protocol"], token["uri"], token["resourceName"], token["resourceType"]) == \
        (0, "https://", "managedhsm.azure.net", HSM_NAME, "mhsm")
    assert token["endpoint"] == served.url + "/"
    assert conf["options"]["CAFile"] == served.info["ca_file"]
    assert conf["options"]["DisableTLSAuthentication"] is False
    assert conf["auth"] == {"authority": served.info["authority"], "tenantId": served.info["tenant_id"]}
    assert conf["msi"]["IMDSEndpoint"] == served.info["identity_url"]
    for section in ("msi", "log", "ConnectionCache"):  # the official sections are all there
        assert section in conf
    assert conf["ConnectionCache"] == {"Disable": False, "MaxConnections": 20}


@pytest.mark.parametrize("listener", ["url", "authority"])
@pytest.mark.parametrize("name", ["127.0.0.1", "localhost", f"{HSM_NAME}.managedhsm.azure.net"])
def test_certificate_verifies_for_every_name(served: Emulator, listener: str, name: str) -> None:
    """Clients reach the emulator by IP, by localhost, or by the HSM's real host name mapped to
    loopback; the one certificate must verify for each against ca_file alone."""
    context = ssl.create_default_context(cafile=served.info["ca_file"])
    with socket.create_connection(("127.0.0.1", _port(served.info[listener])), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            cert: Any = tls.getpeercert()
    sans = {value for _, value in cert["subjectAltName"]}
    assert name in sans


@pytest.mark.parametrize("name, cafile", [("other-hsm.managedhsm.azure.net", True), ("127.0.0.1", False)])
def test_certificate_is_really_checked(served: Emulator, name: str, cafile: bool) -> None:
    """The check above means something: a name the certificate lacks, or trust without ca_file, fails."""
    context = ssl.create_default_context(cafile=served.info["ca_file"]) if cafile else ssl.create_default_context()
    with socket.create_connection(("127.0.0.1", _port(served.url)), timeout=10) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            context.wrap_socket(raw, server_hostname=name)


def test_hsm_name_sets_names_but_kid_follows_the_url(served: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """--hsm-name names the HSM, but a kid is built from the Host the client called, so the SDK's
    CryptographyClient calls back to where the emulator actually listens."""
    _trust(monkeypatch, served)
    key = served.key_client().create_ec_key("cli-kid-host", curve="P-256")
    assert key.id.startswith(f"{served.url}/keys/cli-kid-host/")
    assert HSM_NAME not in key.id
    with served.http() as http:  # called by its real name, the kid carries that name
        by_name = http.get("/keys/cli-kid-host", params={"api-version": "7.5"},
                           headers={"Host": f"{HSM_NAME}.managedhsm.azure.net"})
    assert by_name.json()["key"]["kid"].startswith(f"https://{HSM_NAME}.managedhsm.azure.net/keys/cli-kid-host/")


# -- process lifecycle ---------------------------------------------------------------------------

def test_sigterm_stops_fast_and_unpublishes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM ends the process in under a second, exit code 0, even with a client's keep-alive
    connection open, and emulator.json disappears so nobody connects to a dead emulator."""
    emu = start_emulator(tmp_path / "state")
    try:
        _trust(monkeypatch, emu)
        with emu.http() as http:
            assert http.post("/rng", params={"api-version": "7.5"}, json={"count": 1}).status_code == 200
            took = emu.stop()
    finally:
        emu.stop()
    assert took < 1.0
    assert emu.process.returncode == 0
    assert not (emu.state_dir / "emulator.json").exists()
    with socket.socket() as probe:  # and the port is free again
        assert probe.connect_ex(("127.0.0.1", _port(emu.url))) != 0


def test_restart_keeps_keys_principals_tenant_and_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys made before a restart sign after it with the same private key; principals, secrets,
    tenant, CA and token-signing key are unchanged, so clients and their cached tokens keep working.
    A later start with other --scenario/--hsm-name keeps the state dir's own, and says so."""
    state_dir = tmp_path / "state"
    first = start_emulator(state_dir)
    try:
        _trust(monkeypatch, first)
        client = first.key_client()
        rsa_v1 = client.create_rsa_key("cli-restart-rsa", size=2048, tags={"round": "1"})
        rsa_v2 = client.create_rsa_key("cli-restart-rsa", size=2048, tags={"round": "2"})
        ec_key = client.create_ec_key("cli-restart-ec", curve="P-384")
        client.create_ec_key("cli-restart-gone", curve="P-256")
        client.begin_delete_key("cli-restart-gone").wait()
        old_token = first.token("keygen")
        ca_before = Path(first.info["ca_file"]).read_bytes()
    finally:
        first.stop()
    second = start_emulator(state_dir, "--scenario", "empty", "--hsm-name", "elsewhere")
    try:
        _trust(monkeypatch, second)
        for field in ("tenant_id", "principals", "ca_file", "hsm_name", "scenario", "admin_secret"):
            assert second.info[field] == first.info[field], field
        before, after = first.info["managed_identities"], second.info["managed_identities"]
        for name in IDENTITIES:
            assert after[name] == before[name], name
        for protocol, secret in (("app_service", "IDENTITY_HEADER"), ("azure_ml", "MSI_SECRET")):
            assert after["environments"][protocol][secret] == before["environments"][protocol][secret]
        assert Path(second.info["ca_file"]).read_bytes() == ca_before
        assert "keeping it" in (state_dir / "emulator.log").read_text()
        client = second.key_client()
        versions = [p.version for p in client.list_properties_of_key_versions("cli-restart-rsa")]
        assert versions == [rsa_v1.properties.version, rsa_v2.properties.version]
        assert client.get_key("cli-restart-ec").key.x == ec_key.key.x
        assert client.get_key("cli-restart-rsa", rsa_v1.properties.version).properties.tags == {"round": "1"}
        assert second.key_client("admin").get_deleted_key("cli-restart-gone").name == "cli-restart-gone"
        latest = client.get_key("cli-restart-rsa")
        assert latest.key.n == rsa_v2.key.n and latest.properties.version == rsa_v2.properties.version
        digest = os.urandom(32)
        signature = second.crypto_client(latest).sign(SignatureAlgorithm.ps256, digest).signature
        public = rsa.RSAPublicNumbers(int.from_bytes(rsa_v2.key.e, "big"),
                                      int.from_bytes(rsa_v2.key.n, "big")).public_key()  # from before the restart
        public.verify(signature, digest, padding.PSS(padding.MGF1(hashes.SHA256()), 32),
                      utils.Prehashed(hashes.SHA256()))
        with httpx.Client(base_url=second.url, headers={"Authorization": f"Bearer {old_token}"}, trust_env=False,
                          verify=ssl.create_default_context(cadata=ca_before.decode())) as http:
            assert http.get("/keys/cli-restart-ec", params={"api-version": "7.5"}).status_code == 200
    finally:
        second.stop()


def test_port_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--port puts the HSM exactly there (tools that write a fixed endpoint into a config rely on it)."""
    port = _free_port()
    emu = start_emulator(tmp_path / "state", "--port", str(port))
    try:
        _trust(monkeypatch, emu)
        assert emu.url == f"https://127.0.0.1:{port}"
        assert json.loads((emu.state_dir / "mhsm-pkcs11.conf").read_text())["tokens"][0]["endpoint"] == \
            f"https://127.0.0.1:{port}/"
        with emu.http() as http:
            assert http.post("/rng", params={"api-version": "7.5"}, json={"count": 1}).status_code == 200
    finally:
        emu.stop()


def test_port_in_use_fails_without_publishing(tmp_path: Path) -> None:
    """A taken --port is an error the starter sees (non-zero exit), not a silent move elsewhere."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        state_dir = tmp_path / "state"
        done = subprocess.run([*EMULATOR, "serve", "--state-dir", str(state_dir), "--port", str(port)],
                              capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode != 0
    assert "Address already in use" in done.stderr or "in use" in done.stderr.lower()
    assert not (state_dir / "emulator.json").exists()


def test_empty_scenario_has_only_the_admin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--scenario empty assigns roles to the admin only: keygen is refused with 403 AccessDenied on
    create, and the role API shows no other assignment."""
    emu = start_emulator(tmp_path / "state", "--scenario", "empty")
    try:
        _trust(monkeypatch, emu)
        assert emu.info["scenario"] == "empty"
        with pytest.raises(HttpResponseError) as refused:
            emu.key_client("keygen").create_rsa_key("cli-empty", size=2048)
        error = refused.value.error
        assert refused.value.status_code == 403 and error is not None
        assert error.code == "AccessDenied"
        assert "keys/create on '/keys'" in str(error.message)
        with pytest.raises(HttpResponseError) as unlisted:
            next(iter(emu.key_client("tls-offload").list_properties_of_keys()))
        assert unlisted.value.status_code == 403
        access = emu.access_client("admin")
        admin_oid = emu.principal("admin")["object_id"]
        at_root = list(access.list_role_assignments(KeyVaultRoleScope.GLOBAL))
        at_keys = list(access.list_role_assignments(KeyVaultRoleScope.KEYS))
    finally:
        emu.stop()
    assert len(at_root) == 2 and {a.properties.principal_id for a in at_root} == {admin_oid}
    assert at_keys == []


def test_default_hsm_name_and_scenario(tmp_path: Path) -> None:
    """Without flags the HSM is `localhsm` in the permissive scenario, as documented."""
    emu = start_emulator(tmp_path / "state")
    try:
        info = emu.info
    finally:
        emu.stop()
    assert (info["hsm_name"], info["scenario"]) == ("localhsm", "permissive")
    assert info["hsm_host"] == "localhsm.managedhsm.azure.net"

