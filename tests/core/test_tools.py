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
from typing import Callable

import pytest

from tests.conftest import Emulator
from tests.core.conftest import write_conf

THREE_LINES = re.compile(r"\AKey is generated successfully\.\n"
                         r"Managed HSM Key ID: (?P<kid>https://\S+/keys/(?P<name>p11-[0-9a-f]{32})/[0-9a-f]{32})\n"
                         r"Key Name: (?P=name)\n\Z")


SCRIPTS = {"create": "mhsm_p11_create_key", "list": "mhsm_p11_list_keys", "validate": "mhsm_p11_validate_config_file"}
BIN = Path(sys.executable).parent
# Trust comes from the configuration's options.CAFile only, as on a host whose system store lacks the CA.
CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE", "SSL_CERT_DIR")


def tool(name: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The console script users run (`mhsm_p11_create_key`, ...), installed in the virtualenv."""
    return subprocess.run([str(BIN / SCRIPTS[name]), *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(autouse=True)
def _sdk_trusts_the_emulator(request: pytest.FixtureRequest, trust: Callable[[Emulator], Emulator]) -> None:
    """The checks made with Microsoft's SDK in this process trust the emulator the test uses (another
    session emulator may have started since, with its own CA)."""
    for name in ("permissive", "granular"):
        if name in request.fixturenames:
            trust(request.getfixturevalue(name))


def env_for(emulator: Emulator, principal: str | None = "keygen", conf: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MHSM_", "AZURE_", "IDENTITY_", "MSI_")) and k not in CA_VARIABLES}
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
    assert match["kid"] == key.id, "the Key ID names the version the HSM made"
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


@pytest.mark.parametrize("identity, environment_principal", [("system-assigned", None), ("user-assigned", None),
                                                             ("system-assigned", "keygen")])
def test_create_key_with_managed_identity(permissive: Emulator, tmp_path: Path, identity: str,
                                          environment_principal: str | None) -> None:
    """--identity uses the managed identity (user-assigned when MSIClientID is set), even when the
    environment also names a service principal, and even when the file leaves identityMSI false."""
    managed = permissive.info["managed_identities"]
    msi = {"identityMSI": False, "MSIClientID": managed[identity]["client_id"] if identity == "user-assigned" else ""}
    conf = write_conf(permissive, tmp_path / "msi.conf", msi=msi)
    env = env_for(permissive, principal=environment_principal, conf=str(conf))
    env.update(managed["environments"]["app_service"])
    before = permissive.admin.counters()["requests"]["by_principal"]
    result = tool("create", "--EC", "P256", "--label", label(), "--identity", env=env)
    assert result.returncode == 0 and THREE_LINES.match(result.stdout), result.stderr
    after = permissive.admin.counters()["requests"]["by_principal"]
    assert after.get(identity, 0) > before.get(identity, 0), "the key was made as the managed identity"
    assert after.get("keygen", 0) == before.get("keygen", 0), "not as the environment's principal"


def test_create_key_without_arguments_prints_usage(permissive: Emulator) -> None:
    """As the official tool: no arguments shows the usage (and, being no key, exits non-zero)."""
    before = permissive.admin.counters()["requests"]["total"]
    result = tool("create", env=env_for(permissive))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("usage: mhsm_p11_create_key")
    assert all(flag in result.stderr for flag in ("--RSA", "--EC", "--label", "--id", "--identity", "--conf"))
    assert permissive.admin.counters()["requests"]["total"] == before, "usage never contacts the HSM"


def test_create_key_help_documents_every_option(permissive: Emulator) -> None:
    result = tool("create", "--help", env=env_for(permissive))
    assert result.returncode == 0 and result.stderr == ""
    for text in ("--RSA {2K,3K,4K}", "--EC {P256,P256K,P384,P521}", "--label", "--id", "--identity", "--conf"):
        assert text in result.stdout, text


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


def test_create_key_conf_from_the_environment_missing(permissive: Emulator) -> None:
    env = env_for(permissive, conf="/nonexistent/mhsm-pkcs11.conf")
    line = _one_sentence(tool("create", "--EC", "P256", "--label", "x", env=env))
    assert "/nonexistent/mhsm-pkcs11.conf" in line and "MHSM_PKCS11_CONF" in line


def test_create_key_unparsable_conf_is_one_line(permissive: Emulator, tmp_path: Path) -> None:
    """A JSON syntax error is one line naming where it is, not the YAML parser's caret drawing."""
    broken = tmp_path / "broken.conf"
    broken.write_text('{\n  "tokens": [ { "slotid": 0 \n')
    line = _one_sentence(tool("create", "--EC", "P256", "--label", "x", "--conf", str(broken), env=env_for(permissive)))
    assert str(broken) in line and "not valid JSON" in line and "line 3" in line


def test_create_key_unknown_slot(permissive: Emulator) -> None:
    line = _one_sentence(tool("create", "--EC", "P256", "--label", "x", "--slot", "7", env=env_for(permissive)))
    assert "no token with slot id 7" in line and "unexpected" not in line


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
    assert "cannot reach the HSM at https://127.0.0.1:9" in line
    assert "check the HSM name or endpoint in the configuration" in line


def test_list_keys_table_and_json(permissive: Emulator) -> None:
    name = label()
    created = THREE_LINES.match(tool("create", "--EC", "P384", "--label", name, "--id", "c0ffee",
                                     env=env_for(permissive)).stdout)
    assert created
    rows = json.loads(tool("list", "--json", env=env_for(permissive)).stdout)
    [row] = [r for r in rows if r["label"] == name]
    assert row == {**row, "id": "c0ffee", "type": "EC", "curve": "P-384", "size": None, "name": created["name"],
                   "enabled": True}
    rsa_name = label()
    rsa = THREE_LINES.match(tool("create", "--RSA", "2K", "--label", rsa_name, env=env_for(permissive)).stdout)
    assert rsa
    rows = json.loads(tool("list", "--json", env=env_for(permissive)).stdout)
    [rsa_row] = [r for r in rows if r["label"] == rsa_name]
    assert rsa_row == {**rsa_row, "id": rsa["name"][4:], "type": "RSA", "size": 2048, "curve": None, "name": rsa["name"]}
    assert rsa_row["version"] == rsa["kid"].rsplit("/", 1)[1]
    listing = tool("list", env=env_for(permissive))
    assert listing.returncode == 0 and listing.stderr == ""
    table = listing.stdout.splitlines()
    assert table[0].split() == ["SLOT", "LABEL", "ID", "TYPE", "SIZE", "CURVE", "NAME", "ENABLED", "EXPIRES"]
    assert len(table) == len(rows) + 1, "one line per key"
    [ec_line] = [line for line in table[1:] if name in line]
    assert ec_line.split() == ["0", name, "c0ffee", "EC", "P-384", created["name"], "True"]
    [rsa_line] = [line for line in table[1:] if rsa_name in line]
    assert rsa_line.split() == ["0", rsa_name, rsa["name"][4:], "RSA", "2048", rsa["name"], "True"]


def test_list_keys_errors_are_one_sentence(permissive: Emulator, granular: Emulator) -> None:
    line = _one_sentence(tool("list", env=env_for(permissive, principal=None)))
    assert "no credential configured" in line
    # `nobody` holds no role: listing needs keys/read/action at /keys.
    line = _one_sentence(tool("list", env=env_for(granular, "nobody")))
    assert "at scope /keys" in line and "assign it" in line


def test_validate_config_file(permissive: Emulator, tmp_path: Path) -> None:
    good = permissive.info["conf_file"]
    ok = tool("validate", "--file", good, env=env_for(permissive))
    assert ok.returncode == 0 and f"SUCCESS: Parsing {good}" in ok.stdout
    connected = tool("validate", "--file", good, "--check-connection", env=env_for(permissive))
    assert connected.returncode == 0 and "answered" in connected.stdout, connected.stdout + connected.stderr
    bad = tmp_path / "bad.conf"
    bad.write_text(json.dumps({"tokens": [{"slotid": "zero"}], "ConnectionCache": {"MaxConnections": 0}}))
    broken = tool("validate", "--file", str(bad), env=env_for(permissive))
    assert broken.returncode == 1 and "SUCCESS" not in broken.stdout
    problems = broken.stdout.splitlines()
    assert all(line.startswith(f"ERROR: {bad}: ") for line in problems), problems
    # every problem, each once: the slot id, the missing resource name, the pool size
    assert sum("tokens[0].slotid" in line for line in problems) == 1
    assert sum("tokens[0].resourceName" in line for line in problems) == 1
    assert sum("ConnectionCache.MaxConnections: expected 1..1024, got 0" in line for line in problems) == 1
    env = env_for(permissive)
    env["MHSM_CLIENT_SECRET"] = "wrong-secret-value"
    refused = tool("validate", "--file", good, "--check-connection", env=env)
    assert refused.returncode != 0 and "ERROR: slot 0" in refused.stdout and "wrong-secret-value" not in refused.stdout


def test_validate_config_file_unreadable_unparsable_and_usage(permissive: Emulator, tmp_path: Path) -> None:
    missing = tool("validate", "--file", str(tmp_path / "none.conf"), env=env_for(permissive))
    assert missing.returncode == 1 and missing.stdout.splitlines() == [
        f"ERROR: {tmp_path / 'none.conf'}: cannot read the configuration (No such file or directory); "
        "set MHSM_PKCS11_CONF or pass the file's path (it came from --file)"]
    garbled = tmp_path / "garbled.conf"
    garbled.write_text("{ this is not json")
    unparsable = tool("validate", "--file", str(garbled), env=env_for(permissive))
    assert unparsable.returncode == 1 and len(unparsable.stdout.splitlines()) == 1
    assert unparsable.stdout.startswith(f"ERROR: {garbled}: not valid JSON or YAML: ") and "line 1 column 3" in unparsable.stdout
    usage = tool("validate", env=env_for(permissive))
    assert usage.returncode == 2 and usage.stdout == "" and "required: --file" in usage.stderr


def test_validate_config_file_warns_about_unknown_fields(permissive: Emulator, tmp_path: Path) -> None:
    """A newer official file still parses: unknown fields are warnings, and the verdict is SUCCESS."""
    conf = write_conf(permissive, tmp_path / "newer.conf", options={"SomeFutureOption": True})
    result = tool("validate", "--file", str(conf), env=env_for(permissive))
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    assert lines[-1] == f"SUCCESS: Parsing {conf}"
    assert any(line.startswith("WARNING: ") and "SomeFutureOption" in line for line in lines[:-1])


def test_validate_config_file_unreachable_hsm(permissive: Emulator, tmp_path: Path) -> None:
    conf = write_conf(permissive, tmp_path / "down.conf", options={"MaxRetries": 0, "ConnectTimeout": 2},
                      tokens=[{"slotid": 0, "resourceName": "down", "endpoint": "https://127.0.0.1:9/"}])
    result = tool("validate", "--file", str(conf), "--check-connection", env=env_for(permissive))
    parsed, checked = result.stdout.splitlines()
    assert result.returncode == 1 and parsed == f"SUCCESS: Parsing {conf}"
    assert checked.startswith("ERROR: slot 0: list keys: cannot reach the HSM at https://127.0.0.1:9")
