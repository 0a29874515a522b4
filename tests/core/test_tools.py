"""The key tools as users run them: real processes, against the emulator over TLS.

`mhsm_p11_create_key` must print the official three lines byte for byte and nothing else on stdout;
every failure is one sentence on stderr with exit 1 (argparse's usage errors exit 2).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import Emulator
from tests.core.conftest import write_conf

THREE_LINES = re.compile(r"\AKey is generated successfully\.\n"
                         r"Managed HSM Key ID: (?P<kid>https://\S+/keys/(?P<name>p11-[0-9a-f]{32})/[0-9a-f]{32})\n"
                         r"Key Name: (?P=name)\n\Z")


def tool(name: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    module = {"create": "create_key", "list": "list_keys", "validate": "validate_config"}[name]
    return subprocess.run([sys.executable, "-m", f"mhsm_core.tools.{module}", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def env_for(emulator: Emulator, principal: str | None = "keygen", conf: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MHSM_", "AZURE_", "IDENTITY_", "MSI_"))}
    env["MHSM_PKCS11_CONF"] = conf or emulator.info["conf_file"]
    if principal:
        who = emulator.principal(principal)
        env.update(MHSM_CLIENT_ID=who["client_id"], MHSM_CLIENT_SECRET=who["client_secret"])
    return env


def label() -> str:
    return f"tool-{uuid.uuid4().hex[:10]}"


@pytest.mark.parametrize("kind", [("--RSA", "2K"), ("--RSA", "3K"), ("--EC", "P256"), ("--EC", "P256K"),
                                  ("--EC", "P384"), ("--EC", "P521")])
def test_create_key_prints_the_three_official_lines(permissive: Emulator, kind: tuple[str, str]) -> None:
    name = label()
    result = tool("create", *kind, "--label", name, env=env_for(permissive))
    assert result.returncode == 0, result.stderr
    match = THREE_LINES.match(result.stdout)
    assert match, repr(result.stdout)
    assert match["kid"].startswith(permissive.url + "/keys/")
    key = permissive.key_client().get_key(match["name"])
    assert key.properties.tags["p11_pri_CKA_LABEL"] == name and key.properties.tags["p11_pub_CKA_LABEL"] == name
    expected = {"2K": 2048, "3K": 3072}.get(kind[1])
    if expected:
        assert len(key.key.n) * 8 == expected
    else:
        assert key.key.crv == {"P256": "P-256", "P256K": "P-256K", "P384": "P-384", "P521": "P-521"}[kind[1]]


def test_create_key_rsa_4k_with_id_and_conf_flag(permissive: Emulator, tmp_path: Path) -> None:
    conf = write_conf(permissive, tmp_path / "elsewhere.conf")
    env = env_for(permissive)
    env["MHSM_PKCS11_CONF"] = "/nonexistent/mhsm-pkcs11.conf"  # --conf wins over the variable
    result = tool("create", "--RSA", "4K", "--label", label(), "--id", "0a1B", "--conf", str(conf), env=env)
    match = THREE_LINES.match(result.stdout)
    assert result.returncode == 0 and match, result.stderr
    tags = permissive.key_client().get_key(match["name"]).properties.tags
    assert tags["p11_pri_CKA_ID"] == "0a1b" and tags["p11_pub_CKA_ID"] == "0a1b"


@pytest.mark.parametrize("identity", ["system-assigned", "user-assigned"])
def test_create_key_with_managed_identity(permissive: Emulator, tmp_path: Path, identity: str) -> None:
    """--identity uses the managed identity (user-assigned when MSIClientID is set), not the environment."""
    managed = permissive.info["managed_identities"]
    msi = {"identityMSI": False, "MSIClientID": managed[identity]["client_id"] if identity == "user-assigned" else ""}
    conf = write_conf(permissive, tmp_path / "msi.conf", msi=msi)
    env = env_for(permissive, principal=None, conf=str(conf))
    env.update(managed["environments"]["app_service"])
    before = permissive.admin.counters()["requests"]["by_principal"].get(identity, 0)
    result = tool("create", "--EC", "P256", "--label", label(), "--identity", env=env)
    assert result.returncode == 0 and THREE_LINES.match(result.stdout), result.stderr
    after = permissive.admin.counters()["requests"]["by_principal"].get(identity, 0)
    assert after > before, "the key was made as the managed identity"


def test_create_key_without_arguments_prints_usage(permissive: Emulator) -> None:
    result = tool("create", env=env_for(permissive))
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.startswith("usage: mhsm_p11_create_key") and "--RSA" in result.stderr


@pytest.mark.parametrize("args, fragment", [
    (["--RSA", "1K", "--label", "x"], "invalid choice: '1K'"),
    (["--RSA", "2K", "--EC", "P256", "--label", "x"], "not allowed with argument"),
    (["--EC", "P256"], "the following arguments are required: --label"),
    (["--EC", "P256", "--label", "x", "--id", "zz"], "'zz' is not hexadecimal"),
])
def test_create_key_usage_errors(permissive: Emulator, args: list[str], fragment: str) -> None:
    result = tool("create", *args, env=env_for(permissive))
    assert result.returncode == 2 and result.stdout == "" and fragment in result.stderr


def _one_sentence(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1 and result.stdout == "", result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def test_create_key_missing_conf(permissive: Emulator) -> None:
    line = _one_sentence(tool("create", "--EC", "P256", "--label", "x", "--conf", "/nonexistent.conf",
                              env=env_for(permissive)))
    assert "/nonexistent.conf" in line and "cannot read" in line


def test_create_key_bad_conf_names_the_field(permissive: Emulator, tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text(json.dumps({"tokens": [{"slotid": "zero", "resourceName": "x"}]}))
    line = _one_sentence(tool("create", "--EC", "P256", "--label", "x", "--conf", str(bad), env=env_for(permissive)))
    assert 'tokens[0].slotid: expected an integer, got "zero"' in line


def test_create_key_without_credentials(permissive: Emulator) -> None:
    line = _one_sentence(tool("create", "--EC", "P256", "--label", "x", env=env_for(permissive, principal=None)))
    assert "MHSM_CLIENT_ID" in line and "identityMSI" in line


def test_create_key_wrong_secret_never_echoes_it(permissive: Emulator) -> None:
    env = env_for(permissive)
    env["MHSM_CLIENT_SECRET"] = secret = f"wrong-{uuid.uuid4().hex}"
    line = _one_sentence(tool("create", "--EC", "P256", "--label", "x", env=env))
    assert "AADSTS7000215" in line and secret not in line


def test_create_key_forbidden_names_role_and_scope(granular: Emulator) -> None:
    """tls-offload may read and sign, not create: the sentence names the role to assign and where."""
    line = _one_sentence(tool("create", "--EC", "P256", "--label", "x", env=env_for(granular, "tls-offload")))
    assert "keys/create" in line and "Managed HSM Crypto User" in line and "at /keys" in line


def test_create_key_hsm_unreachable(permissive: Emulator, tmp_path: Path) -> None:
    conf = write_conf(permissive, tmp_path / "down.conf", options={"MaxRetries": 0, "ConnectTimeout": 2},
                      tokens=[{"slotid": 0, "resourceName": "down", "endpoint": "https://127.0.0.1:9/"}])
    line = _one_sentence(tool("create", "--EC", "P256", "--label", "x", "--conf", str(conf), env=env_for(permissive)))
    assert "127.0.0.1:9" in line or "down" in line


def test_list_keys_table_and_json(permissive: Emulator) -> None:
    name = label()
    created = THREE_LINES.match(tool("create", "--EC", "P384", "--label", name, "--id", "c0ffee",
                                     env=env_for(permissive)).stdout)
    assert created
    rows = json.loads(tool("list", "--json", env=env_for(permissive)).stdout)
    [row] = [r for r in rows if r["label"] == name]
    assert row == {**row, "id": "c0ffee", "type": "EC", "curve": "P-384", "size": None, "name": created["name"],
                   "enabled": True}
    table = tool("list", env=env_for(permissive)).stdout.splitlines()
    assert table[0].split()[:4] == ["SLOT", "LABEL", "ID", "TYPE"]
    assert any(name in line and "c0ffee" in line and "P-384" in line for line in table[1:])


def test_validate_config_file(permissive: Emulator, tmp_path: Path) -> None:
    good = permissive.info["conf_file"]
    ok = tool("validate", "--file", good, env=env_for(permissive))
    assert ok.returncode == 0 and f"SUCCESS: Parsing {good}" in ok.stdout
    connected = tool("validate", "--file", good, "--check-connection", env=env_for(permissive))
    assert connected.returncode == 0 and "answered" in connected.stdout, connected.stdout + connected.stderr
    bad = tmp_path / "bad.conf"
    bad.write_text(json.dumps({"tokens": [{"slotid": "zero"}], "ConnectionCache": {"MaxConnections": 0}}))
    broken = tool("validate", "--file", str(bad), env=env_for(permissive))
    assert broken.returncode != 0 and "SUCCESS" not in broken.stdout
    assert "tokens[0].slotid" in broken.stdout and "ConnectionCache.MaxConnections" in broken.stdout
    env = env_for(permissive)
    env["MHSM_CLIENT_SECRET"] = "wrong-secret-value"
    refused = tool("validate", "--file", good, "--check-connection", env=env)
    assert refused.returncode != 0 and "ERROR: slot 0" in refused.stdout and "wrong-secret-value" not in refused.stdout
