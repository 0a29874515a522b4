"""Conformance check 13 (reference §9) and every fault-injection knob of the admin interface, each
observed from the client side: through azure-keyvault-keys where the SDK's reaction is the point
(retries, Retry-After), and through bare httpx where the wire is (resets, stalls, latency).

The counters are process-wide, so this module runs its own emulator: nothing else in the session
can add a request between a test's "before" and "after", and faults injected for "*" cannot leak
into other modules' tests.
"""

from __future__ import annotations

import base64
import hashlib
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

import httpx
import pytest
from azure.keyvault.keys import KeyVaultKey
from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

from mhsm_emulator.admin_client import EmulatorAdmin
from tests.conftest import Emulator, start_emulator

API = {"api-version": "7.5"}
DIGEST = hashlib.sha256(b"fault injection").digest()
TRANSPORT_ERRORS = (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError, httpx.WriteError)


@dataclass
class Signer:
    """One RSA key and a warmed-up CryptographyClient for it (challenge cached, token held)."""

    key: KeyVaultKey
    client: CryptographyClient


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """A private emulator, so that counter deltas and "*" faults concern this module only."""
    emulator = start_emulator(tmp_path_factory.mktemp("emulator-faults"), "--scenario", "permissive")
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(autouse=True)
def _clean(emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Trust this emulator's CA (both TLS stacks, §8.4), and start every test with no fault,
    no latency and zeroed counters; put the CA variables back afterwards."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", emu.info["ca_file"])
    monkeypatch.setenv("SSL_CERT_FILE", emu.info["ca_file"])
    emu.admin.reset()
    yield
    emu.admin.reset(counters=False)  # a failed test must not leave a fault pending for the next one


@pytest.fixture(scope="module")
def signer(emu: Emulator) -> Signer:
    """Created and warmed once: the first sign of a fresh client also costs a challenge round trip
    and a token, which would blur the exact request counts check 13 is about."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REQUESTS_CA_BUNDLE", emu.info["ca_file"])
        key = emu.key_client().create_rsa_key("faults-rsa", size=2048, hardware_protected=True)
        client = emu.crypto_client(key)
        client.sign(SignatureAlgorithm.ps256, DIGEST)
    return Signer(key, client)


def _verify_ps256(key: KeyVaultKey, signature: bytes) -> None:
    jwk: Any = key.key  # JsonWebKey's fields are set dynamically
    public = rsa.RSAPublicNumbers(int.from_bytes(jwk.e, "big"), int.from_bytes(jwk.n, "big")).public_key()
    public.verify(signature, DIGEST, padding.PSS(padding.MGF1(hashes.SHA256()), 32), utils.Prehashed(hashes.SHA256()))


def _ca(emu: Emulator) -> ssl.SSLContext:
    """Trust exactly this emulator's CA, as the core library will (§8.4)."""
    return ssl.create_default_context(cafile=emu.info["ca_file"])


def _sign_body() -> dict[str, str]:
    return {"alg": "PS256", "value": base64.urlsafe_b64encode(DIGEST).rstrip(b"=").decode()}


def _rng(http: httpx.Client) -> httpx.Response:
    return http.post("/rng", params=API, json={"count": 1})


def _requests(counters: dict[str, Any], operation: str) -> int:
    return int(counters["requests"]["by_operation"].get(operation, 0))


def _status(counters: dict[str, Any], status: int) -> int:
    return int(counters["requests"]["by_status"].get(str(status), 0))


def _wait_idle(admin: EmulatorAdmin, timeout: float = 5.0) -> None:
    """Wait until no request is in flight, so a stalled or delayed one cannot bleed into the next test."""
    deadline = time.monotonic() + timeout
    while admin.counters()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert admin.counters()["in_flight"] == 0


# -- check 13 and the SDK's retries --------------------------------------------------------------

def test_check13_two_throttles_with_retry_after_are_retried(emu: Emulator, signer: Signer) -> None:
    """Two 429s with Retry-After: 1 cost the SDK two 1 s waits, then the third attempt signs."""
    admin = emu.admin
    before = admin.counters()
    admin.inject("throttle", "sign", count=2, retry_after=1)
    started = time.monotonic()
    result = signer.client.sign(SignatureAlgorithm.ps256, DIGEST)
    elapsed = time.monotonic() - started
    after = admin.counters()
    _verify_ps256(signer.key, result.signature)
    assert elapsed >= 1.9, f"the SDK did not honour Retry-After ({elapsed:.2f} s)"
    assert _requests(after, "sign") - _requests(before, "sign") == 3
    assert after["faults_injected"].get("throttle", 0) - before["faults_injected"].get("throttle", 0) == 2
    assert _status(after, 429) - _status(before, 429) == 2
    assert _status(after, 200) - _status(before, 200) == 1
    assert after["signs"]["total"] - before["signs"]["total"] == 1
    assert after["faults_pending"] == {}


def test_throttle_answer_on_the_wire(emu: Emulator, signer: Signer) -> None:
    """What the SDK reacted to above: 429, the Retry-After header, and the service's error shape."""
    emu.admin.inject("throttle", "sign", count=1, retry_after=7)
    with emu.http() as http:
        response = http.post(f"/keys/{signer.key.name}/sign", params=API, json=_sign_body())
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    error = response.json()["error"]
    assert error["code"] == "Throttled"
    assert error["message"].endswith(f"(Activity ID: {response.headers['x-ms-request-id']})")


@pytest.mark.parametrize("kind, status, retry_after", [
    ("unavailable", 503, 1),
    ("unavailable", 503, None),
    ("error", 500, None),
])
def test_server_errors_are_retried(emu: Emulator, signer: Signer, kind: str, status: int,
                                   retry_after: int | None) -> None:
    """503 (with or without Retry-After) and 500 are transient to the SDK: one retry, then success."""
    admin = emu.admin
    admin.inject(kind, "sign", count=1, retry_after=retry_after)
    started = time.monotonic()
    result = signer.client.sign(SignatureAlgorithm.ps256, DIGEST)
    elapsed = time.monotonic() - started
    counters = admin.counters()
    _verify_ps256(signer.key, result.signature)
    assert _requests(counters, "sign") == 2  # the failed attempt and its retry
    assert _status(counters, status) == 1 and _status(counters, 200) == 1
    assert counters["faults_injected"] == {kind: 1}
    if retry_after is not None:
        assert elapsed >= retry_after - 0.1, "Retry-After on a 503 was not honoured"


def test_server_error_headers_on_the_wire(emu: Emulator) -> None:
    """503 carries Retry-After only when asked to; 500 never does; both use the service's error shape."""
    admin = emu.admin
    with emu.http() as http:
        admin.inject("unavailable", "rng", retry_after=3)
        with_header = _rng(http)
        admin.inject("unavailable", "rng")
        without = _rng(http)
        admin.inject("error", "rng")
        internal = _rng(http)
    assert (with_header.status_code, with_header.headers.get("retry-after")) == (503, "3")
    assert (without.status_code, without.headers.get("retry-after")) == (503, None)
    assert (internal.status_code, internal.headers.get("retry-after")) == (500, None)
    assert [r.json()["error"]["code"] for r in (with_header, without, internal)] == \
        ["ServiceUnavailable", "ServiceUnavailable", "InternalError"]


@pytest.mark.parametrize("kind, message", [("token_expired", "Token is expired"),
                                           ("token_rejected", "the token was rejected")])
def test_token_faults(emu: Emulator, signer: Signer, kind: str, message: str) -> None:
    """A token refused as expired or invalid is a 401 with a fresh challenge; the SDK answers the
    challenge by authorizing again and repeating the call, so the sign still succeeds."""
    admin = emu.admin
    admin.inject(kind, "sign")
    with emu.http() as http:
        refused = http.post(f"/keys/{signer.key.name}/sign", params=API, json=_sign_body())
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith('Bearer authorization="https://login.microsoftonline.com/')
    assert message in refused.json()["error"]["message"]
    admin.reset()
    admin.inject(kind, "sign")
    result = signer.client.sign(SignatureAlgorithm.ps256, DIGEST)
    _verify_ps256(signer.key, result.signature)
    counters = admin.counters()
    assert _requests(counters, "sign") == 2 and _status(counters, 401) == 1
    assert counters["faults_injected"] == {kind: 1}


def test_token_outage(emu: Emulator) -> None:
    """The Entra token endpoint answers 503 temporarily_unavailable once, then issues tokens again;
    azure-identity rides out a single outage."""
    admin = emu.admin
    principal = emu.principal("keygen")
    form = {"grant_type": "client_credentials", "client_id": principal["client_id"],
            "client_secret": principal["client_secret"], "scope": "https://managedhsm.azure.net/.default"}
    url = f"{emu.info['authority']}/{emu.info['tenant_id']}/oauth2/v2.0/token"
    admin.inject("token_outage")
    with httpx.Client(verify=_ca(emu), trust_env=False) as http:
        down = http.post(url, data=form)
        up = http.post(url, data=form)
    assert down.status_code == 503
    assert down.json()["error"] == "temporarily_unavailable" and down.json()["error_codes"] == [50196]
    assert up.status_code == 200 and up.json()["access_token"]
    admin.inject("token_outage")
    assert emu.credential("keygen").get_token("https://managedhsm.azure.net/.default").token
    counters = admin.counters()
    assert counters["faults_injected"] == {"token_outage": 2}
    assert counters["tokens_issued"]["by_endpoint"] == {"entra": 2}


def test_challenge_call_does_not_consume_a_fault(emu: Emulator) -> None:
    """Faults hit authenticated calls only: the SDK's bodiless first call must not eat them."""
    admin = emu.admin
    admin.inject("throttle", "rng", retry_after=1)
    with emu.http(None) as anonymous:
        challenged = _rng(anonymous)
    assert challenged.status_code == 401 and challenged.content == b""
    assert admin.counters()["faults_pending"] == {"rng": ["throttle"]}
    with emu.http() as http:
        assert _rng(http).status_code == 429
    assert admin.counters()["faults_pending"] == {}


# -- transport-level faults, seen through bare httpx --------------------------------------------

def test_reset_breaks_the_connection_then_the_next_request_reconnects(emu: Emulator) -> None:
    """`reset` aborts the TCP connection: the client sees a transport error, not an HTTP status,
    and its next request opens a new connection and succeeds."""
    admin = emu.admin
    with emu.http() as http:
        assert _rng(http).status_code == 200  # one pooled keep-alive connection
        accepted = admin.counters()["connections_accepted"]
        admin.inject("reset", "rng")
        with pytest.raises(TRANSPORT_ERRORS):
            _rng(http)
        after_reset = _rng(http)
    counters = admin.counters()
    assert after_reset.status_code == 200
    assert counters["connections_accepted"] == accepted + 1
    assert counters["faults_injected"] == {"reset": 1}
    assert counters["requests"]["by_status"].get("reset") == 1  # counted as what the client saw
    assert "500" not in counters["requests"]["by_status"]


def test_sdk_retries_a_reset_get(emu: Emulator, signer: Signer) -> None:
    """A GET is idempotent, so azure-core retries it over a new connection after a reset."""
    admin = emu.admin
    client = emu.key_client()
    client.get_key(signer.key.name)  # warm: challenge and token
    before = admin.counters()
    admin.inject("reset", "get")
    assert client.get_key(signer.key.name).id == signer.key.id
    after = admin.counters()
    assert _requests(after, "get") - _requests(before, "get") == 2
    assert after["connections_accepted"] > before["connections_accepted"]


def test_stall_delays_the_answer(emu: Emulator) -> None:
    """`stall` holds the answer for stall_seconds and then sends it; a client with a shorter read
    timeout gives up instead."""
    admin = emu.admin
    with emu.http() as http:
        _rng(http)
        admin.inject("stall", "rng", stall_seconds=1.5)
        started = time.monotonic()
        stalled = _rng(http)
        elapsed = time.monotonic() - started
    assert stalled.status_code == 200 and elapsed >= 1.5
    headers = {"Authorization": f"Bearer {emu.token('keygen')}"}
    with httpx.Client(base_url=emu.url, headers=headers, verify=_ca(emu), trust_env=False,
                      timeout=httpx.Timeout(10.0, read=0.5)) as impatient:
        _rng(impatient)
        admin.inject("stall", "rng", stall_seconds=1.5)
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            _rng(impatient)
        assert time.monotonic() - started < 1.4
    assert admin.counters()["faults_injected"] == {"stall": 2}
    _wait_idle(admin)


def test_latency_is_added_and_removed(emu: Emulator, signer: Signer) -> None:
    """set_latency delays only the operation named; 0 takes the delay away. The server's own
    x-ms-server-latency header shows the delay without the client's noise."""
    admin = emu.admin
    url = f"/keys/{signer.key.name}/sign"
    with emu.http() as http:
        http.post(url, params=API, json=_sign_body())
        admin.set_latency("sign", 50)
        for _ in range(3):
            started = time.monotonic()
            delayed = http.post(url, params=API, json=_sign_body())
            assert delayed.status_code == 200
            assert time.monotonic() - started >= 0.05
            assert int(delayed.headers["x-ms-server-latency"]) >= 50
        other = _rng(http)
        assert int(other.headers["x-ms-server-latency"]) < 50  # rng was not delayed
        admin.set_latency("sign", 0)
        fast = [http.post(url, params=API, json=_sign_body()) for _ in range(5)]
    assert all(r.status_code == 200 for r in fast)
    assert min(int(r.headers["x-ms-server-latency"]) for r in fast) < 50


def test_wildcard_faults_hit_any_operation(emu: Emulator, signer: Signer) -> None:
    """A fault for "*" is taken by whatever authenticated operation comes next, in order; a fault
    for a named operation waits for that operation."""
    admin = emu.admin
    admin.inject("unavailable", "*", count=3)
    with emu.http() as http:
        got = http.get(f"/keys/{signer.key.name}", params=API)
        listed = http.get("/keys", params=API)
        rng = _rng(http)
        recovered = _rng(http)
        admin.inject("throttle", "sign")
        untouched = http.get(f"/keys/{signer.key.name}", params=API)
        pending = admin.counters()["faults_pending"]
    assert [r.status_code for r in (got, listed, rng)] == [503, 503, 503]
    assert recovered.status_code == 200
    assert untouched.status_code == 200 and pending == {"sign": ["throttle"]}
    counters = admin.counters()
    assert counters["faults_injected"] == {"unavailable": 3}
    assert counters["requests"]["by_operation"] == {"get": 2, "list": 1, "rng": 2}


def test_peak_concurrency(emu: Emulator) -> None:
    """Eight clients held 200 ms each at the same moment: the single event loop serves them all
    at once, and peak_concurrent_requests says so."""
    admin = emu.admin
    token = emu.token("keygen")
    clients = [httpx.Client(base_url=emu.url, headers={"Authorization": f"Bearer {token}"}, verify=_ca(emu),
                            trust_env=False, timeout=30.0) for _ in range(8)]
    try:
        for client in clients:
            assert _rng(client).status_code == 200  # connect and handshake before the burst
        admin.set_latency("rng", 200)
        barrier = threading.Barrier(len(clients))
        statuses: list[int] = []

        def burst(client: httpx.Client) -> None:
            barrier.wait()
            statuses.append(_rng(client).status_code)

        threads = [threading.Thread(target=burst, args=(c,)) for c in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        for client in clients:
            client.close()
    counters = admin.counters()
    assert statuses == [200] * 8
    assert counters["peak_concurrent_requests"] >= 8
    assert counters["connections_accepted"] == 8  # keep-alive: no reconnects during the burst
    assert counters["in_flight"] == 0


def test_reset_clears_counters_faults_and_latency(emu: Emulator, signer: Signer) -> None:
    """reset() returns the control plane to its start state; partial resets keep what is not named."""
    admin = emu.admin
    url = f"/keys/{signer.key.name}/sign"
    with emu.http() as http:
        assert http.post(url, params=API, json=_sign_body()).status_code == 200
        admin.set_latency("rng", 300)
        admin.inject("throttle", "sign", count=5)
        admin.reset(counters=False, latency=False)
        kept = admin.counters()
        assert kept["faults_pending"] == {} and kept["signs"]["total"] == 1
        assert int(_rng(http).headers["x-ms-server-latency"]) >= 300  # latency survived
        admin.inject("throttle", "sign", count=5)
        admin.reset()
        cleared = admin.counters()
        signed = http.post(url, params=API, json=_sign_body())
        quick = _rng(http)
    assert cleared["requests"]["total"] == 0 and cleared["requests"]["by_status"] == {}
    assert cleared["signs"]["total"] == 0 and cleared["tokens_issued"]["total"] == 0
    assert cleared["faults_injected"] == {} and cleared["faults_pending"] == {}
    assert cleared["connections_accepted"] == 0 and cleared["peak_concurrent_requests"] == 0
    assert signed.status_code == 200  # no throttle left
    assert int(quick.headers["x-ms-server-latency"]) < 300  # no latency left


# -- the admin interface's own guard -------------------------------------------------------------

def test_admin_refuses_a_wrong_or_missing_secret(emu: Emulator) -> None:
    """Only the admin secret steers the emulator; a data-plane token is not enough."""
    admin_url = emu.info["admin_url"]
    for header in ({"Authorization": "Bearer not-the-secret"}, {},
                   {"Authorization": f"Bearer {emu.token('admin')}"},
                   {"Authorization": emu.info["admin_secret"]}):  # the secret without the scheme
        with httpx.Client(base_url=admin_url, headers=header, trust_env=False) as http:
            assert http.get("/counters").status_code == 401
            assert http.post("/faults", json={"kind": "throttle", "operation": "sign"}).status_code == 401
            assert http.post("/latency", json={"operation": "sign", "fixed_ms": 500}).status_code == 401
            assert http.post("/reset", json={}).status_code == 401
    with EmulatorAdmin(admin_url, "wrong") as wrong, pytest.raises(httpx.HTTPStatusError) as refused:
        wrong.counters()
    assert refused.value.response.status_code == 401
    with httpx.Client(base_url=admin_url, trust_env=False) as http:
        assert http.get("/health").json() == {"ok": True}  # the one unguarded call
    counters = emu.admin.counters()
    assert counters["faults_pending"] == {}  # nothing refused took effect


@pytest.mark.parametrize("body, fragment", [
    ({"kind": "bogus", "operation": "sign"}, "unknown fault kind 'bogus'"),
    ({"operation": "sign"}, "kind"),
    ({"kind": "throttle", "count": "many"}, "many"),
    ({"kind": "throttle", "count": 0}, "count"),
    ({"kind": "throttle", "count": -1}, "count"),
    ({"kind": "throttle", "operation": "sing"}, "unknown operation 'sing'"),
])
def test_admin_refuses_bad_fault_requests(emu: Emulator, body: dict[str, Any], fragment: str) -> None:
    """A fault request that cannot be honoured is refused with 400, not silently queued or dropped:
    a test that believes a fault is pending when none is would pass for the wrong reason."""
    with httpx.Client(base_url=emu.info["admin_url"], trust_env=False,
                      headers={"Authorization": f"Bearer {emu.info['admin_secret']}"}) as http:
        response = http.post("/faults", json=body)
    assert response.status_code == 400
    assert fragment in response.json()["error"]
    assert emu.admin.counters()["faults_pending"] == {}
