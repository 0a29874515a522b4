"""The core's credential chain against the emulator's Entra ID and managed-identity endpoints, over
real TLS: a service principal from the environment or from the PIN, both managed identities, the
tenant learnt from the HSM's challenge, refresh of short-lived tokens, token-endpoint outages, the
errors an operator sees (naming what was tried, never the secret) and one token for many threads.

Counters are process-wide, so this module runs its own emulator: no other module's requests or
"*" faults land between a test's reset and its assertions.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from mhsm_core import config as config_module
from mhsm_core.credentials import CLIENT_ID_ENV, CLIENT_SECRET_ENV
from mhsm_core.errors import AuthenticationError
from mhsm_core.hsm import Hsm, Library
from mhsm_core.keys import HsmKey
from mhsm_emulator.admin_client import EmulatorAdmin
from tests.conftest import Emulator, start_emulator
from tests.core.conftest import write_conf

IMDS_HOST_ENV = "AZURE_POD_IDENTITY_AUTHORITY_HOST"
DIGEST = hashlib.sha256(b"credentials").digest()


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """A permissive emulator of this module's own, so counter values and token faults are ours alone."""
    emulator = start_emulator(tmp_path_factory.mktemp("emulator-credentials"), "--scenario", "permissive")
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="module")
def admin(private: Emulator) -> Iterator[EmulatorAdmin]:
    client = private.admin
    yield client
    client.close()


def _scrub_env(monkeypatch: pytest.MonkeyPatch, emulator: Emulator) -> None:
    """Trust this emulator's CA and start with no IMDS host in the environment.

    credentials.py sets AZURE_POD_IDENTITY_AUTHORITY_HOST with os.environ.setdefault, which outlives
    the test: set-then-delete through monkeypatch makes it absent now and removed again at teardown,
    whoever set it in between.
    """
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", emulator.info["ca_file"])
    monkeypatch.setenv("SSL_CERT_FILE", emulator.info["ca_file"])
    monkeypatch.setenv(IMDS_HOST_ENV, "unset-by-test")
    monkeypatch.delenv(IMDS_HOST_ENV)


def _wait_idle(admin: EmulatorAdmin, timeout: float = 5.0) -> None:
    """A request still in flight from the previous test would be counted in this one."""
    deadline = time.monotonic() + timeout
    while admin.counters()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def _clean(private: Emulator, admin: EmulatorAdmin, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts with zeroed counters, no fault and no latency, and leaves no fault pending."""
    _scrub_env(monkeypatch, private)
    _wait_idle(admin)
    admin.reset()
    yield
    admin.reset(counters=False)


def _label() -> str:
    return f"cred-{uuid.uuid4().hex[:12]}"


def _make_key(hsm: Hsm) -> HsmKey:
    label = _label()
    return hsm.keys.create("EC", curve="P-256", private_attributes={"CKA_LABEL": label},
                           public_attributes={"CKA_LABEL": label})


def _sign(hsm: Hsm, key: HsmKey) -> bytes:
    return hsm.keys.sign(key, "ES256", DIGEST)


def _by_principal(admin: EmulatorAdmin) -> dict[str, int]:
    return dict(admin.counters()["requests"]["by_principal"])


def _first_success(call: Callable[[], Any], within: float) -> float:
    """Seconds until `call` first succeeds, retrying on AuthenticationError; the last error if it never does."""
    started = time.monotonic()
    while True:
        try:
            call()
            return time.monotonic() - started
        except AuthenticationError:
            if time.monotonic() - started > within:
                raise
            time.sleep(0.25)


@contextmanager
def _short_lived_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, library_for: Callable[..., Library],
                        lifetime: int) -> Iterator[tuple[EmulatorAdmin, Hsm, HsmKey]]:
    """An emulator of its own minting tokens that live `lifetime` seconds, a library on it and a key."""
    emulator = start_emulator(tmp_path / f"tokens-{lifetime}s", "--token-lifetime", str(lifetime))
    try:
        _scrub_env(monkeypatch, emulator)
        admin = emulator.admin
        hsm = library_for(emulator, "keygen").hsm(0)
        yield admin, hsm, _make_key(hsm)
        admin.close()
    finally:
        emulator.stop()


def _library_without_tenant(emulator: Emulator, path: Path, **overrides: Any) -> Library:
    """The emulator's configuration without auth.tenantId, as a real deployment's file has none.

    write_conf merges sections, so it cannot remove a field: the field is dropped here.
    """
    conf = write_conf(emulator, path, **overrides)
    document = json.loads(conf.read_text())
    document["auth"].pop("tenantId", None)
    conf.write_text(json.dumps(document))
    return Library(config_module.load(conf))


# -- service principals ---------------------------------------------------------------------------

def test_service_principal_from_environment(private: Emulator, admin: EmulatorAdmin,
                                            library_for: Callable[..., Library]) -> None:
    """MHSM_CLIENT_ID/SECRET alone are enough: every request reaches the HSM as that principal."""
    hsm = library_for(private, "keygen").hsm(0)
    key = _make_key(hsm)
    _sign(hsm, key)
    counters = admin.counters()
    assert set(counters["requests"]["by_principal"]) == {"keygen"}
    assert counters["signs"]["by_principal"] == {"keygen": 1}
    assert counters["tokens_issued"]["by_endpoint"] == {"entra": 1}


def test_pin_carried_principal_without_environment(private: Emulator, admin: EmulatorAdmin,
                                                   library_for: Callable[..., Library]) -> None:
    """`<client-id>:<client-secret>` as the PIN is a complete credential: it creates and signs."""
    hsm = library_for(private, None).hsm(0)
    keygen = private.principal("keygen")
    assert hsm.login(f"{keygen['client_id']}:{keygen['client_secret']}") is True
    key = _make_key(hsm)
    _sign(hsm, key)
    counters = admin.counters()
    assert set(counters["requests"]["by_principal"]) == {"keygen"}
    assert counters["signs"]["by_principal"] == {"keygen": 1}


def test_pin_principal_wins_over_environment_and_logout_returns_to_it(
        private: Emulator, admin: EmulatorAdmin, library_for: Callable[..., Library]) -> None:
    """The PIN comes first in the chain; logging out drops its token, not the environment's principal."""
    hsm = library_for(private, "tls-offload").hsm(0)
    keygen = private.principal("keygen")
    hsm.login(f"{keygen['client_id']}:{keygen['client_secret']}")
    key = _make_key(hsm)
    _sign(hsm, key)
    assert set(_by_principal(admin)) == {"keygen"}
    hsm.logout()
    admin.reset()
    _sign(hsm, key)
    assert _by_principal(admin) == {"tls-offload": 1}


def test_empty_pin_keeps_the_environment_principal(private: Emulator, admin: EmulatorAdmin,
                                                   library_for: Callable[..., Library]) -> None:
    """The official deployment lines log in with `pin-value=`: that must not drop the credential."""
    hsm = library_for(private, "tls-offload").hsm(0)
    assert hsm.login("") is True
    assert hsm.login("not-a-principal") is False  # no ':': not a principal, so the front end can refuse it
    assert hsm.login("") is True
    key = _make_key(hsm)
    _sign(hsm, key)
    assert set(_by_principal(admin)) == {"tls-offload"}


# -- managed identities ---------------------------------------------------------------------------

@pytest.mark.parametrize("identity", ["system-assigned", "user-assigned"])
def test_managed_identity_lists_and_signs(private: Emulator, admin: EmulatorAdmin,
                                          library_for: Callable[..., Library], identity: str) -> None:
    """msi.identityMSI with an empty MSIClientID is the system-assigned identity, with a client id the
    user-assigned one; the HSM sees each as its own principal, reached through IMDS."""
    key = _make_key(library_for(private, "keygen").hsm(0))
    admin.reset()
    client_id = "" if identity == "system-assigned" else private.info["managed_identities"][identity]["client_id"]
    msi = {"identityMSI": True, "MSIClientID": client_id, "IMDSEndpoint": private.info["identity_url"]}
    hsm = library_for(private, None, msi=msi).hsm(0)
    [found] = hsm.keys.find(label=key.label)
    assert found.kid == key.kid
    _sign(hsm, found)
    counters = admin.counters()
    assert set(counters["requests"]["by_principal"]) == {identity}
    assert counters["signs"]["by_principal"] == {identity: 1}
    assert counters["tokens_issued"]["by_principal"] == {identity: 1}
    assert counters["tokens_issued"]["by_endpoint"] == {"imds": 1}


# -- tenant discovery ------------------------------------------------------------------------------

def test_tenant_is_learnt_from_the_challenge(private: Emulator, admin: EmulatorAdmin,
                                             library_for: Callable[..., Library], tmp_path: Path) -> None:
    """Without auth.tenantId the tenant comes from the HSM's 401 challenge (whose host is Azure's real
    login host, not the configured authority): one anonymous call, however many calls follow."""
    library_for(private, "keygen")  # sets the principal's environment variables
    hsm = _library_without_tenant(private, tmp_path / "no-tenant.json",
                                  auth={"authority": private.info["authority"]}).hsm(0)
    assert hsm.config.auth.tenant_id is None
    key = _make_key(hsm)
    for _ in range(3):
        _sign(hsm, key)
    assert hsm.tenant() == private.info["tenant_id"]
    counters = admin.counters()
    assert counters["requests"]["by_principal"]["anonymous"] == 1
    assert counters["requests"]["by_status"]["401"] == 1
    assert counters["tokens_issued"]["by_endpoint"] == {"entra": 1}


# -- refresh and outages ---------------------------------------------------------------------------

def test_short_lived_token_is_refreshed_before_it_expires(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          library_for: Callable[..., Library]) -> None:
    """Tokens living 4 s, signing for 10 s: the cache refreshes ahead of expiry, so no call fails and
    the HSM never even sees an expired token."""
    with _short_lived_tokens(tmp_path, monkeypatch, library_for, 4) as (admin, hsm, key):
        admin.reset()
        failures: list[str] = []
        signed = 0
        stop = time.monotonic() + 10.0
        while time.monotonic() < stop:
            try:
                _sign(hsm, key)
                signed += 1
            except Exception as exc:  # every kind of failure counts, and is reported
                failures.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.02)
        counters = admin.counters()
    assert failures == []
    assert signed > 50
    assert counters["tokens_issued"]["total"] >= 2
    assert "401" not in counters["requests"]["by_status"]


@pytest.mark.parametrize("outage", [1, 6])
def test_short_token_outage_is_survived(private: Emulator, admin: EmulatorAdmin,
                                        library_for: Callable[..., Library], outage: int) -> None:
    """A burst of 503s from the token endpoint (what a reload during a login-service hiccup meets) is
    retried within RetryBudget, with fresh MSAL objects (MSAL would replay the 503); the caller never
    notices and exactly one token is issued."""
    admin.inject("token_outage", count=outage)
    hsm = library_for(private, "keygen").hsm(0)
    key = _make_key(hsm)
    _sign(hsm, key)
    counters = admin.counters()
    assert counters["faults_injected"] == {"token_outage": outage}
    assert counters["tokens_issued"]["total"] == 1


def test_managed_identity_outage_is_survived(private: Emulator, admin: EmulatorAdmin,
                                             library_for: Callable[..., Library]) -> None:
    """The same for the managed identity's endpoint (IMDS answering 503 a few times)."""
    key = _make_key(library_for(private, "keygen").hsm(0))
    admin.reset()
    admin.inject("token_outage", count=4)
    msi = {"identityMSI": True, "MSIClientID": "", "IMDSEndpoint": private.info["identity_url"]}
    hsm = library_for(private, None, msi=msi).hsm(0)
    [found] = hsm.keys.find(label=key.label)
    _sign(hsm, found)
    counters = admin.counters()
    assert counters["faults_injected"] == {"token_outage": 4}
    assert counters["tokens_issued"]["by_endpoint"] == {"imds": 1}


def test_long_token_outage_names_the_credential_and_recovers(private: Emulator, admin: EmulatorAdmin,
                                                             library_for: Callable[..., Library]) -> None:
    """An outage longer than RetryBudget is an AuthenticationError, raised once the budget is spent,
    that says which credential failed and why, without its secret; once the outage ends the same
    library works."""
    keygen = private.principal("keygen")
    admin.inject("token_outage", count=200)
    hsm = library_for(private, "keygen", options={"RetryBudget": 2}).hsm(0)
    started = time.monotonic()
    with pytest.raises(AuthenticationError) as failed:
        hsm.keys.keys()
    spent = time.monotonic() - started
    message = str(failed.value)
    assert f"service principal {keygen['client_id']} (from environment)" in message
    assert "503" in message
    assert keygen["client_secret"] not in message
    counters = admin.counters()
    assert counters["faults_injected"]["token_outage"] >= 2  # it did retry...
    assert spent < 2 + 5  # ...and gave up once the budget was spent (plus one attempt's time)
    assert counters["tokens_issued"]["total"] == 0
    assert counters["requests"]["total"] == 0  # no token, so nothing was sent to the HSM
    admin.reset(counters=False)  # the outage ends
    recovered_after = _first_success(lambda: hsm.keys.keys(refresh=True), within=12.0)
    assert recovered_after < 3.0
    assert admin.counters()["tokens_issued"]["total"] == 1


def test_wrong_secret_is_not_retried(private: Emulator, admin: EmulatorAdmin,
                                     library_for: Callable[..., Library], monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused secret is final: one request to Entra, an error at once, not after the budget."""
    library_for(private, "keygen")
    monkeypatch.setenv(CLIENT_SECRET_ENV, f"wrong-{uuid.uuid4().hex}")
    hsm = Library.load().hsm(0)
    started = time.monotonic()
    with pytest.raises(AuthenticationError, match="AADSTS7000215"):
        hsm.keys.keys()
    assert time.monotonic() - started < 2.0


def test_forked_child_refreshes_ahead_of_expiry_without_waiting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, library_for: Callable[..., Library]) -> None:
    """In a forked child (an nginx worker), a token inside its refresh window (the last fifth of a
    6 s life) is refreshed by a background thread: with the token endpoint slowed to 0.8 s, no sign
    waits for it, and the child moves to the new token before the old one expires. The parent
    started no thread."""
    with _short_lived_tokens(tmp_path, monkeypatch, library_for, 6) as (admin, hsm, key):
        threads_before = threading.active_count()
        admin.set_latency("token", fixed_ms=800)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: sign until it holds a new token, report the slowest sign
            os.close(read)
            slowest, signed, first = 0.0, 0, hsm.tokens.get()
            try:
                stop, changed_at = time.monotonic() + 10.0, None
                while time.monotonic() < stop and (changed_at is None or time.monotonic() < changed_at + 0.3):
                    started = time.monotonic()
                    _sign(hsm, key)
                    slowest = max(slowest, time.monotonic() - started)
                    signed += 1
                    if changed_at is None and hsm.tokens.get() != first:
                        changed_at = time.monotonic()
                    time.sleep(0.02)
                os.write(write, json.dumps({"slowest": slowest, "signed": signed,
                                            "changed": changed_at is not None}).encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            report = pipe.read()
        os.waitpid(pid, 0)
        counters = admin.counters()
    assert report, "the child failed to sign"
    result = json.loads(report)
    assert threading.active_count() == threads_before
    assert result["changed"], result  # the child did refresh
    assert counters["tokens_issued"]["total"] >= 2
    assert result["slowest"] < 0.6, result  # and no sign waited for the 0.8 s token endpoint


def test_no_credential_says_what_to_set(private: Emulator, admin: EmulatorAdmin,
                                        library_for: Callable[..., Library]) -> None:
    """No PIN, no environment, no managed identity: the error lists the three ways to provide one."""
    hsm = library_for(private, None).hsm(0)
    with pytest.raises(AuthenticationError) as failed:
        hsm.keys.keys()
    message = str(failed.value)
    for hint in (CLIENT_ID_ENV, CLIENT_SECRET_ENV, "<client-id>:<client-secret>", "msi.identityMSI"):
        assert hint in message
    assert "tried no credential" not in message  # nothing was tried; the message must not claim otherwise
    counters = admin.counters()
    assert counters["requests"]["total"] == 0 and counters["tokens_issued"]["total"] == 0


def test_wrong_secret_reports_entra_code_but_never_the_secret(
        private: Emulator, library_for: Callable[..., Library], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """Entra's AADSTS7000215 reaches the operator, for the environment's and the PIN's principal; the
    wrong secret appears neither in the error nor in a debug-level log file."""
    logs = tmp_path / "logs"
    keygen = private.principal("keygen")
    wrong = f"wrong-{uuid.uuid4().hex}"
    library_for(private, "keygen", log={"directory": str(logs), "flags": {"SendToFile": True},
                                        "module": {"FunctionLevelTrace": True}})
    monkeypatch.setenv(CLIENT_SECRET_ENV, wrong)
    hsm = Library.load().hsm(0)
    with pytest.raises(AuthenticationError) as from_env:
        hsm.keys.keys()
    assert "AADSTS7000215" in str(from_env.value) and "(from environment)" in str(from_env.value)
    assert wrong not in str(from_env.value)

    pin_secret = f"pin-{uuid.uuid4().hex}"
    monkeypatch.delenv(CLIENT_ID_ENV)
    monkeypatch.delenv(CLIENT_SECRET_ENV)
    hsm = Library.load().hsm(0)
    hsm.login(f"{keygen['client_id']}:{pin_secret}")
    with pytest.raises(AuthenticationError) as from_pin:
        hsm.keys.keys()
    assert "AADSTS7000215" in str(from_pin.value) and "(from PIN)" in str(from_pin.value)
    assert pin_secret not in str(from_pin.value)

    written = "".join(p.read_text() for p in logs.glob("MHSM-PKCS11-*.log"))
    assert "AADSTS7000215" in written  # the log did record the failure...
    assert wrong not in written and pin_secret not in written  # ...but neither secret


def test_concurrent_first_use_fetches_one_token(private: Emulator, admin: EmulatorAdmin,
                                                library_for: Callable[..., Library]) -> None:
    """16 threads sign at once through a library that holds no token yet, with a slow token endpoint:
    one of them fetches, the others wait for that token instead of stampeding Entra."""
    key = _make_key(library_for(private, "keygen").hsm(0))
    hsm = library_for(private, "keygen").hsm(0)
    admin.reset()
    admin.set_latency("token", fixed_ms=300)
    barrier = threading.Barrier(16)
    errors: list[Exception] = []

    def worker() -> None:
        try:
            barrier.wait(timeout=10)
            _sign(hsm, key)
        except Exception as exc:  # reported below, with the thread's failure
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    counters = admin.counters()
    assert counters["tokens_issued"]["total"] == 1
    assert counters["signs"]["total"] == 16
