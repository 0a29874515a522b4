"""mhsm-pkcs11.conf: the official file loads unchanged, YAML works, and every kind of mistake names its
field path, what was found and what is allowed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mhsm_core import config

REPO = Path(__file__).resolve().parents[2]
# The official library's file, as a public deployment script writes it (anchors §1.6).
OFFICIAL = {
    "tokens": [{"slotid": 0, "protocol": "https://", "uri": "managedhsm.azure.net", "resourceName": "contoso-hsm",
                "resourceType": "mhsm"}],
    "msi": {"identityMSI": True, "MSIClientID": ""},
    "options": {"DisableTLSAuthentication": False},
    "log": {"directory": "/var/log/mhsm-pkcs11",
            "module": {"P11Interfaces": False, "FunctionLevelTrace": False,
                       "curl": {"Level": "Off", "DisplayAsHex": False}},
            "flags": {"CloseFileAfterWrite": False, "SendToFile": False, "SendToStdOut": False,
                      "SendToStdErr": False, "IncludeProcessId": False, "IncludeThreadId": False,
                      "IncludePINs": False}},
    "ConnectionCache": {"Disable": False, "MaxConnections": 20},
}


def _problems(document: object) -> list[str]:
    with pytest.raises(config.ConfigError) as error:
        config.parse(json.dumps(document) if not isinstance(document, str) else document, "test.conf")
    return error.value.problems


def _with(**changes: object) -> dict:
    document = json.loads(json.dumps(OFFICIAL))
    for path, value in changes.items():
        target = document
        *parents, leaf = path.split("__")
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[int(leaf) if leaf.isdigit() else leaf] = value
    return document


def test_official_file_loads_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "mhsm-pkcs11.conf"
    path.write_text(json.dumps(OFFICIAL, indent=2))
    loaded = config.load(path)
    assert loaded.warnings == ()
    token = loaded.tokens[0]
    assert (token.slot_id, token.resource_name, token.base_url) == (0, "contoso-hsm",
                                                                    "https://contoso-hsm.managedhsm.azure.net")
    assert loaded.msi.enabled is True and loaded.msi.client_id == ""
    assert loaded.connection_cache.max_connections == 20 and loaded.connection_cache.disable is False
    assert loaded.options.disable_tls_authentication is False
    assert loaded.auth.tenant_id is None  # learnt from the HSM's challenge


def test_sample_in_conf_loads() -> None:
    loaded = config.load(REPO / "conf" / "mhsm-pkcs11.conf")
    assert loaded.tokens[0].resource_name == "myhsm" and loaded.warnings == ()


def test_yaml_with_comments() -> None:
    loaded = config.parse("# comment\ntokens:\n  - slotid: 3  # the slot\n    resourceName: my-hsm\n"
                          "ConnectionCache: {MaxConnections: 64}\n")
    assert loaded.tokens[0].slot_id == 3 and loaded.connection_cache.max_connections == 64


def test_environment_then_default_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(config.ENV_VAR, raising=False)
    assert config.config_path() == Path("/etc/mhsm-pkcs11.conf")
    monkeypatch.setenv(config.ENV_VAR, str(tmp_path / "x.conf"))
    assert config.config_path() == tmp_path / "x.conf"
    assert config.config_path("/explicit") == Path("/explicit")


def test_missing_file_names_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(config.ENV_VAR, str(tmp_path / "absent.conf"))
    with pytest.raises(config.ConfigError) as error:
        config.load()
    assert config.ENV_VAR in str(error.value) and "absent.conf" in str(error.value)


def test_unknown_fields_warn_but_load() -> None:
    loaded = config.parse(json.dumps(_with(newOfficialField=1, tokens__0__futureKey="x")))
    assert "newOfficialField: unknown field, ignored" in loaded.warnings
    assert "tokens[0].futureKey: unknown field, ignored" in loaded.warnings


@pytest.mark.parametrize("document, expected", [
    (_with(tokens__0__slotid="zero"), 'tokens[0].slotid: expected an integer, got "zero"'),
    (_with(tokens__0__slotid=-1), "tokens[0].slotid: expected 0 or more, got -1"),
    (_with(tokens__0__resourceName="a"), 'tokens[0].resourceName: expected a Managed HSM name'),
    (_with(tokens__0__protocol="http://"), 'tokens[0].protocol: expected "https://" (TLS is required), got "http://"'),
    (_with(tokens__0__resourceType="kv"), 'tokens[0].resourceType: expected one of mhsm, got "kv"'),
    (_with(tokens__0__endpoint="ftp://x"), 'tokens[0].endpoint: expected an https:// URL, got "ftp://x"'),
    (_with(tokens=[]), "tokens: expected a non-empty array of HSM entries"),
    (_with(tokens=[{"slotid": 0}]), "tokens[0].resourceName: missing; set it to the Managed HSM's name"),
    (_with(tokens=[{"resourceName": "abc"}]), "tokens[0].slotid: missing"),
    (_with(tokens=[{"slotid": 0, "resourceName": "abc"}, {"slotid": 0, "resourceName": "def"}]),
     "tokens[1].slotid: slot 0 is used twice"),
    (_with(tokens=["abc"]), 'tokens[0]: expected an object, got "abc"'),
    (_with(msi__identityMSI="yes"), 'msi.identityMSI: expected true or false, got "yes"'),
    (_with(msi__MSIClientID=5), "msi.MSIClientID: expected a string, got 5"),
    (_with(options__DisableTLSAuthentication=1), "options.DisableTLSAuthentication: expected true or false, got 1"),
    (_with(options__CAFile="/no/such/ca.pem"), 'options.CAFile: expected the path of a readable PEM file'),
    (_with(options__RequestTimeout=0), "options.RequestTimeout: expected a number greater than 0, got 0"),
    (_with(options__MaxRetries=50), "options.MaxRetries: expected 0..20, got 50"),
    (_with(ConnectionCache__MaxConnections=0), "ConnectionCache.MaxConnections: expected 1..1024, got 0"),
    (_with(ConnectionCache__Disable="no"), 'ConnectionCache.Disable: expected true or false, got "no"'),
    (_with(ConnectionCache=[]), "ConnectionCache: expected an object, got list"),
    (_with(log__flags__SendToFile="true"), 'log.flags.SendToFile: expected true or false, got "true"'),
    (_with(log__module__curl__Level="Loud"), 'log.module.curl.Level: expected one of Off, Error, Warning, Info, '
                                              'Verbose, got "Loud"'),
    (_with(log__level="chatty"), 'log.level: expected one of debug, info, warning, error, got "chatty"'),
    (_with(auth={"authority": "http://login"}), 'auth.authority: expected an https:// URL, got "http://login"'),
    ("[1, 2]", "expected a JSON object at the top, got list"),
    ("tokens: [unclosed", "not valid JSON or YAML"),
])
def test_each_mistake_names_field_and_fix(document: object, expected: str) -> None:
    problems = _problems(document)
    assert any(p.startswith(expected) for p in problems), problems


def test_all_mistakes_reported_at_once() -> None:
    problems = _problems(_with(tokens__0__slotid="zero", ConnectionCache__MaxConnections=0, msi__identityMSI=1))
    assert len(problems) == 3


def test_include_pins_is_ignored_with_a_warning() -> None:
    loaded = config.parse(json.dumps(_with(log__flags__IncludePINs=True)))
    assert any("IncludePINs" in w and "never logged" in w for w in loaded.warnings)


def test_extensions() -> None:
    loaded = config.parse(json.dumps(_with(
        tokens__0__endpoint="https://127.0.0.1:8443/", auth={"authority": "https://127.0.0.1:9443/", "tenantId": "t1"},
        options={"ConnectTimeout": 2, "RequestTimeout": 3.5, "MaxRetries": 0, "RetryBudget": 0, "KeyCacheTTL": 0,
                 "NegativeCacheTTL": 0}, msi={"identityMSI": False, "IMDSEndpoint": "http://127.0.0.1:9"})))
    assert loaded.tokens[0].base_url == "https://127.0.0.1:8443"
    assert loaded.auth.authority == "https://127.0.0.1:9443" and loaded.auth.tenant_id == "t1"
    assert (loaded.options.connect_timeout, loaded.options.request_timeout, loaded.options.max_retries) == (2, 3.5, 0)
    assert loaded.msi.imds_endpoint == "http://127.0.0.1:9"
