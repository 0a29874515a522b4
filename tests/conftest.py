"""Shared fixtures: real emulator processes over real HTTPS, and Microsoft's SDKs pointed at them."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from mhsm_emulator import launcher
from mhsm_emulator.admin_client import EmulatorAdmin
from tests import logscan

REPO = Path(__file__).resolve().parent.parent
EMULATOR = [sys.executable, "-m", "mhsm_emulator.cli"]  # the command line, for tests of its flags
# The SDK's default api-version, and the older one every conformance check runs with too.
API_VERSIONS = ["2025-07-01", "7.5"]


class Emulator(launcher.Running):
    """A running emulator, with Microsoft's SDK clients and bare httpx pointed at it."""

    @property
    def url(self) -> str:
        return self.info["url"]

    @property
    def admin(self) -> EmulatorAdmin:
        return EmulatorAdmin(self.info["admin_url"], self.info["admin_secret"])

    def principal(self, name: str) -> dict[str, str]:
        return self.info["principals"][name]

    def credential(self, name: str, **kwargs: Any) -> Any:
        from azure.identity import ClientSecretCredential

        p = self.principal(name)
        kwargs.setdefault("connection_verify", self.info["ca_file"])
        return ClientSecretCredential(self.info["tenant_id"], p["client_id"], p["client_secret"],
                                      authority=self.info["authority"], disable_instance_discovery=True, **kwargs)

    def key_client(self, name: str = "keygen", api_version: str | None = None, **kwargs: Any) -> Any:
        from azure.keyvault.keys import KeyClient

        extra = {"api_version": api_version} if api_version else {}
        return KeyClient(self.url, self.credential(name), verify_challenge_resource=False,
                         connection_verify=self.info["ca_file"], **extra, **kwargs)

    def crypto_client(self, key: Any, name: str = "keygen", api_version: str | None = None) -> Any:
        from azure.keyvault.keys.crypto import CryptographyClient

        extra = {"api_version": api_version} if api_version else {}
        return CryptographyClient(key, self.credential(name), verify_challenge_resource=False,
                                  connection_verify=self.info["ca_file"], **extra)

    def access_client(self, name: str = "admin", api_version: str | None = None) -> Any:
        from azure.keyvault.administration import KeyVaultAccessControlClient

        extra = {"api_version": api_version} if api_version else {}
        return KeyVaultAccessControlClient(self.url, self.credential(name), verify_challenge_resource=False,
                                           connection_verify=self.info["ca_file"], **extra)

    def token(self, name: str, scope: str = "https://managedhsm.azure.net/.default") -> str:
        return self.credential(name).get_token(scope).token

    def http(self, name: str | None = "keygen") -> Any:
        """A bare httpx client to the data plane, with a bearer token for `name` (None: no token)."""
        import ssl

        import httpx

        headers = {"Authorization": f"Bearer {self.token(name)}"} if name else {}
        return httpx.Client(base_url=self.url, headers=headers, verify=ssl.create_default_context(cafile=self.info["ca_file"]),
                            trust_env=False,
                            timeout=30.0)


def start_emulator(state_dir: Path, *args: str, timeout: float = 30.0) -> Emulator:
    """Start `mhsm-emulator serve` and wait until it has published emulator.json."""
    running = launcher.start(state_dir, *args, timeout=timeout)
    logscan.watch(running.info)  # every log the suite writes is verbose, and scanned at the end
    return Emulator(running.state_dir, running.process, running.info)


def emulator_for(tmp_path_factory: pytest.TempPathFactory, name: str, *args: str) -> Iterator[Emulator]:
    """Body of a fixture that owns an emulator of its own: `yield from emulator_for(factory, "name", ...)`."""
    emulator = start_emulator(tmp_path_factory.mktemp(name), *args)
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="session", autouse=True)
def _trust_nothing_from_the_environment() -> Iterator[None]:
    """CI images export CA variables globally; each test sets the ones it means to use."""
    saved = {k: os.environ.pop(k) for k in list(os.environ)
             if k in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE", "AZURE_AUTHORITY_HOST",
                      "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT",
                      "AZURE_POD_IDENTITY_AUTHORITY_HOST", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET",
                      "AZURE_TENANT_ID", "HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")}
    yield
    os.environ.update(saved)


def _session_emulator(tmp_path_factory: pytest.TempPathFactory, scenario: str) -> Iterator[Emulator]:
    emulator = start_emulator(tmp_path_factory.mktemp(f"emulator-{scenario}"), "--scenario", scenario)
    # Both TLS stacks the SDKs use must trust the emulator's CA (reference §8.4).
    os.environ["REQUESTS_CA_BUNDLE"] = os.environ["SSL_CERT_FILE"] = emulator.info["ca_file"]
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="session")
def permissive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    yield from _session_emulator(tmp_path_factory, "permissive")


@pytest.fixture(scope="session")
def granular(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    yield from _session_emulator(tmp_path_factory, "granular")


@pytest.fixture(params=["permissive", "granular"])
def emulator(request: pytest.FixtureRequest) -> Emulator:
    """Each conformance check runs against both RBAC scenarios."""
    emu: Emulator = request.getfixturevalue(request.param)
    os.environ["REQUESTS_CA_BUNDLE"] = os.environ["SSL_CERT_FILE"] = emu.info["ca_file"]
    return emu


@pytest.fixture
def trust(monkeypatch: pytest.MonkeyPatch) -> Callable[[Emulator], Emulator]:
    """`trust(emu)`: both TLS stacks the SDKs use trust this emulator's CA for the rest of the test."""

    def trusting(emu: Emulator) -> Emulator:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", emu.info["ca_file"])
        monkeypatch.setenv("SSL_CERT_FILE", emu.info["ca_file"])
        return emu

    return trusting


@pytest.fixture(params=API_VERSIONS)
def api_version(request: pytest.FixtureRequest) -> str:
    return request.param


_names = iter(range(10**9))


@pytest.fixture
def key_name(request: pytest.FixtureRequest) -> str:
    """A key name unique in the session, readable in the emulator's state."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:80].strip("-")
    return f"{base}-{next(_names)}".replace("--", "-")


def with_sample_logging(env: dict[str, str], tmp: Path, **changes: object) -> dict[str, str]:
    """`env` with its MHSM_PKCS11_CONF rewritten under `tmp`: the `log` section as
    conf/mhsm-pkcs11.conf ships it, short timeouts, and `changes` ({"endpoint": ...} for the
    token, any other name for a log flag, e.g. SendErrorsToStdErr=False)."""
    import json

    import yaml

    document = json.loads(Path(env["MHSM_PKCS11_CONF"]).read_text())
    document["log"] = yaml.safe_load((REPO / "conf" / "mhsm-pkcs11.conf").read_text())["log"]
    document["options"].update(ConnectTimeout=2, RequestTimeout=5, MaxRetries=1, RetryBudget=2)
    if "endpoint" in changes:
        document["tokens"][0]["endpoint"] = changes.pop("endpoint")
    document["log"]["flags"].update(changes)
    conf = tmp / "mhsm-pkcs11-sample-log.conf"
    conf.write_text(json.dumps(document))
    return {**env, "MHSM_PKCS11_CONF": str(conf)}


def ours(text: str) -> list[str]:
    """The lines the library's default error channel wrote (`mhsm.<part>: ...`)."""
    return [line for line in text.splitlines() if line.startswith("mhsm.")]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any log it wrote holds a secret, token or PIN it used (tests/logscan.py)."""
    roots = [logscan.directory(), Path(session.config._tmp_path_factory.getbasetemp())]  # type: ignore[attr-defined]
    leaks = logscan.scan(roots)
    if leaks:
        print("\nsecrets in the logs the suite wrote:\n  " + "\n  ".join(leaks[:50]))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    else:
        print(f"\nlog scan: no secret, token or PIN in the {len(logscan.log_files(roots))} log files under "
              f"{', '.join(map(str, roots))}")
