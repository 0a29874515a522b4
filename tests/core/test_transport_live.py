"""The core's transport against the emulator's injected faults, over real TLS: what retries survive
(429 with Retry-After, 503, 500, resets, stalls, a refused token), where the budget ends and what
the error then says, the connection cache's reuse and bounds, TLS verification, and an HSM that
cannot be reached.

Counters are process-wide and "*" faults hit whoever calls next, so this module runs its own
emulator and zeroes it before every test.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mhsm_core import config as config_module
from mhsm_core.errors import AuthenticationError, HsmError, HsmUnavailable
from mhsm_core.hsm import Hsm, Library
from mhsm_core.keys import HsmKey
from mhsm_emulator.admin_client import EmulatorAdmin
from tests.conftest import Emulator, start_emulator
from tests.core.conftest import write_conf

DIGEST = hashlib.sha256(b"transport").digest()
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """An emulator of this module's own: faults and counters concern these tests only."""
    emulator = start_emulator(tmp_path_factory.mktemp("emulator-transport"), "--scenario", "permissive")
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="module")
def admin(private: Emulator) -> Iterator[EmulatorAdmin]:
    client = private.admin
    yield client
    client.close()


def _wait_idle(admin: EmulatorAdmin, timeout: float = 5.0) -> None:
    """A stalled request outlives the test that timed out on it; it must not count in the next one
    (peak_concurrent_requests in particular)."""
    deadline = time.monotonic() + timeout
    while admin.counters()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert admin.counters()["in_flight"] == 0


@pytest.fixture(autouse=True)
def _clean(private: Emulator, admin: EmulatorAdmin, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Trust this emulator's CA; start idle, with zeroed counters, no fault and no latency; leave no
    fault pending for the next test even when this one fails."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", private.info["ca_file"])
    monkeypatch.setenv("SSL_CERT_FILE", private.info["ca_file"])
    _wait_idle(admin)
    admin.reset()
    yield
    admin.reset(counters=False)


def _sign(hsm: Hsm, key: HsmKey) -> bytes:
    return hsm.keys.sign(key, "ES256", DIGEST)


def _ready(private: Emulator, admin: EmulatorAdmin, library_for: Callable[..., Library],
           **overrides: Any) -> tuple[Hsm, HsmKey]:
    """A library with a key, a token and a pooled connection, then zeroed counters: what follows
    counts only the requests under test (no token fetch, no first connection)."""
    hsm = library_for(private, "keygen", **overrides).hsm(0)
    label = f"transport-{uuid.uuid4().hex[:12]}"
    key = hsm.keys.create("EC", curve="P-256", private_attributes={"CKA_LABEL": label})
    _sign(hsm, key)
    admin.reset()
    return hsm, key


def _requests(counters: dict[str, Any], operation: str) -> int:
    return int(counters["requests"]["by_operation"].get(operation, 0))


def _status(counters: dict[str, Any], status: int) -> int:
    return int(counters["requests"]["by_status"].get(str(status), 0))


def _other_ca(path: Path) -> Path:
    """A self-signed CA that signed nothing the emulator presents."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Some other CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _library_without_tenant(emulator: Emulator, path: Path, **overrides: Any) -> Library:
    """A real deployment's file has no auth.tenantId, so the HSM (its challenge) is the first thing
    the library talks to; write_conf merges sections and cannot drop the field, so it is dropped here."""
    conf = write_conf(emulator, path, **overrides)
    document = json.loads(conf.read_text())
    document["auth"].pop("tenantId", None)
    conf.write_text(json.dumps(document))
    return Library(config_module.load(conf))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- retries ------------------------------------------------------------------------------------

def test_two_throttles_honour_retry_after(private: Emulator, admin: EmulatorAdmin,
                                          library_for: Callable[..., Library]) -> None:
    """Two 429s with Retry-After: 1 are waited out (not replaced by a shorter backoff); the third
    attempt signs."""
    hsm, key = _ready(private, admin, library_for)
    admin.inject("throttle", "sign", count=2, retry_after=1)
    started = time.monotonic()
    _sign(hsm, key)
    elapsed = time.monotonic() - started
    counters = admin.counters()
    assert elapsed >= 2.0
    assert _requests(counters, "sign") == 3
    assert _status(counters, 429) == 2 and counters["signs"]["total"] == 1


def test_unavailable_and_internal_error_are_retried(private: Emulator, admin: EmulatorAdmin,
                                                    library_for: Callable[..., Library]) -> None:
    """503, 503, 500 in a row: all transient, all retried with backoff; the fourth attempt signs."""
    hsm, key = _ready(private, admin, library_for)
    admin.inject("unavailable", "sign", count=2)
    admin.inject("error", "sign", count=1)
    _sign(hsm, key)
    counters = admin.counters()
    assert _requests(counters, "sign") == 4
    assert _status(counters, 503) == 2 and _status(counters, 500) == 1
    assert counters["faults_injected"] == {"unavailable": 2, "error": 1}


def test_connection_reset_is_retried_on_a_new_connection(private: Emulator, admin: EmulatorAdmin,
                                                         library_for: Callable[..., Library]) -> None:
    """A TCP RST mid-request drops the pooled connection; the retry opens a new one and signs."""
    hsm, key = _ready(private, admin, library_for)
    _sign(hsm, key)
    assert admin.counters()["connections_accepted"] == 0  # the warm connection is reused
    admin.inject("reset", "sign", count=1)
    _sign(hsm, key)
    counters = admin.counters()
    assert counters["faults_injected"] == {"reset": 1}
    assert counters["connections_accepted"] >= 1
    assert counters["signs"]["total"] == 2


def test_stalled_answer_times_out_and_is_retried(private: Emulator, admin: EmulatorAdmin,
                                                 library_for: Callable[..., Library]) -> None:
    """An answer held for 2 s against RequestTimeout 0.5: the attempt is abandoned and the retry signs
    long before the stalled answer would have come."""
    hsm, key = _ready(private, admin, library_for, options={"RequestTimeout": 0.5})
    admin.inject("stall", "sign", count=1, stall_seconds=2.0)
    started = time.monotonic()
    _sign(hsm, key)
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 1.8
    counters = admin.counters()
    assert counters["faults_injected"] == {"stall": 1}
    assert counters["signs"]["total"] >= 1


def test_unavailable_past_max_retries_reports_the_request_id(private: Emulator, admin: EmulatorAdmin,
                                                              library_for: Callable[..., Library]) -> None:
    """MaxRetries 2 means three attempts; the error then carries the status and the x-ms-request-id of
    the last answer, which support needs to find the call in the service's logs."""
    hsm, key = _ready(private, admin, library_for, options={"MaxRetries": 2})
    admin.inject("unavailable", "sign", count=20)
    with pytest.raises(HsmUnavailable) as failed:
        _sign(hsm, key)
    error = failed.value
    message = str(error)
    assert error.status == 503 and error.code == "ServiceUnavailable" and error.operation == "sign"
    assert "HTTP 503" in message
    assert error.request_id and re.fullmatch(UUID, error.request_id)
    assert f"x-ms-request-id {error.request_id}" in message
    # The service repeats its request id in the message as the Activity ID: the same answer's id.
    activity = re.search(rf"Activity ID: ({UUID})", message)
    assert activity and activity.group(1) == error.request_id
    assert _requests(admin.counters(), "sign") == 3


def test_retry_budget_bounds_the_call(private: Emulator, admin: EmulatorAdmin,
                                      library_for: Callable[..., Library]) -> None:
    """RetryBudget 1 s with up to 20 retries: the budget, not the retry count, ends the call."""
    hsm, key = _ready(private, admin, library_for, options={"RetryBudget": 1, "MaxRetries": 20})
    admin.inject("unavailable", "sign", count=20)
    started = time.monotonic()
    with pytest.raises(HsmUnavailable) as failed:
        _sign(hsm, key)
    elapsed = time.monotonic() - started
    assert failed.value.status == 503
    assert elapsed < 1.5
    assert 1 <= _requests(admin.counters(), "sign") < 21


def test_retry_after_beyond_the_budget_fails_at_once(private: Emulator, admin: EmulatorAdmin,
                                                     library_for: Callable[..., Library]) -> None:
    """A Retry-After longer than what is left of the budget is not slept on only to fail later."""
    hsm, key = _ready(private, admin, library_for, options={"RetryBudget": 1})
    admin.inject("throttle", "sign", count=1, retry_after=5)
    started = time.monotonic()
    with pytest.raises(HsmUnavailable) as failed:
        _sign(hsm, key)
    assert time.monotonic() - started < 0.5
    assert failed.value.status == 429 and "HTTP 429" in str(failed.value)
    assert _requests(admin.counters(), "sign") == 1


def test_rejected_token_is_replaced_once(private: Emulator, admin: EmulatorAdmin,
                                         library_for: Callable[..., Library]) -> None:
    """A 401 on a token the cache still thinks valid (revoked, clock skew): one fresh token from
    Entra, one retry, success; a second 401 in a row is reported, not retried forever."""
    hsm, key = _ready(private, admin, library_for)
    old = hsm.tokens.get()
    admin.inject("token_rejected", "sign", count=1)
    _sign(hsm, key)
    counters = admin.counters()
    assert _requests(counters, "sign") == 2 and _status(counters, 401) == 1
    assert counters["tokens_issued"]["total"] == 1
    assert hsm.tokens.get() != old

    admin.reset()
    admin.inject("token_rejected", "sign", count=2)
    with pytest.raises(HsmError) as failed:
        _sign(hsm, key)
    assert failed.value.status == 401
    counters = admin.counters()
    assert _requests(counters, "sign") == 2 and counters["tokens_issued"]["total"] == 1


# -- connection cache -----------------------------------------------------------------------------

@pytest.mark.parametrize("disable", [True, False])
def test_connection_cache(private: Emulator, admin: EmulatorAdmin, library_for: Callable[..., Library],
                          disable: bool) -> None:
    """ConnectionCache.Disable: a new TLS connection per request; by default one connection serves
    them all."""
    hsm = library_for(private, "keygen", ConnectionCache={"Disable": disable}).hsm(0)
    key = hsm.keys.create("EC", curve="P-256")
    for _ in range(5):
        _sign(hsm, key)
    counters = admin.counters()
    assert counters["requests"]["total"] == 6
    assert counters["connections_accepted"] == (6 if disable else 1)


@pytest.mark.parametrize("max_connections", [2, 8])
def test_max_connections_bounds_concurrency(private: Emulator, admin: EmulatorAdmin,
                                            library_for: Callable[..., Library], max_connections: int) -> None:
    """8 threads signing against 100 ms of latency: the pool never lets more than MaxConnections
    requests be in flight at once, and a large enough pool lets them all run together."""
    hsm, key = _ready(private, admin, library_for, ConnectionCache={"MaxConnections": max_connections})
    admin.set_latency("sign", fixed_ms=100)
    barrier = threading.Barrier(8)
    errors: list[Exception] = []

    def worker() -> None:
        try:
            barrier.wait(timeout=10)
            for _ in range(3):
                _sign(hsm, key)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    counters = admin.counters()
    assert counters["signs"]["total"] == 24
    if max_connections == 2:
        assert counters["peak_concurrent_requests"] <= 2
        assert counters["connections_accepted"] <= 2
    else:
        assert counters["peak_concurrent_requests"] >= 6


# -- TLS ------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_tls_verification_is_on_by_default(private: Emulator, admin: EmulatorAdmin,
                                           library_for: Callable[..., Library], tmp_path: Path) -> None:
    """A CAFile that did not sign the emulator's certificate: the HSM is refused (the first contact
    of a deployment without auth.tenantId) and so is the authority; DisableTLSAuthentication is the
    only way past it."""
    other = str(_other_ca(tmp_path / "other-ca.pem"))
    library_for(private, "keygen")  # the principal's environment variables
    hsm = _library_without_tenant(private, tmp_path / "wrong-ca.json", options={"CAFile": other}).hsm(0)
    with pytest.raises(HsmUnavailable) as refused:
        hsm.keys.keys()
    assert "ssl certificate problem" in str(refused.value).lower() and "options.CAFile" in str(refused.value)

    with_tenant = library_for(private, "keygen", options={"CAFile": other}).hsm(0)
    with pytest.raises(AuthenticationError) as untrusted_authority:
        with_tenant.keys.keys()
    assert "certificate_verify_failed" in str(untrusted_authority.value).lower()
    assert admin.counters()["tokens_issued"]["total"] == 0

    insecure = _library_without_tenant(private, tmp_path / "insecure.json",
                                       options={"CAFile": other, "DisableTLSAuthentication": True}).hsm(0)
    key = insecure.keys.create("EC", curve="P-256")
    _sign(insecure, key)
    assert admin.counters()["signs"]["total"] == 1


def test_unreachable_endpoint_fails_within_the_budget(private: Emulator, library_for: Callable[..., Library]) -> None:
    """Nothing listens at the endpoint: refused connections are retried until the budget is spent,
    then an HsmUnavailable names the URL."""
    port = _closed_port()
    hsm = library_for(private, "keygen", options={"RetryBudget": 2, "MaxRetries": 20},
                      tokens=[{"slotid": 0, "resourceName": "localhsm",
                               "endpoint": f"https://127.0.0.1:{port}/"}]).hsm(0)
    started = time.monotonic()
    with pytest.raises(HsmUnavailable) as failed:
        hsm.keys.keys()
    elapsed = time.monotonic() - started
    assert elapsed < 2.5
    assert f"https://127.0.0.1:{port}" in str(failed.value) and "libcurl error 7: " in str(failed.value)
    assert re.search(rf"x-ms-client-request-id {UUID}\)", str(failed.value))  # named though no answer came


# -- a burst of refusals ------------------------------------------------------------------------------

def test_a_two_second_burst_of_refusals_passes_with_the_defaults(private: Emulator, admin: EmulatorAdmin,
                                                                 library_for: Callable[..., Library]) -> None:
    """The HSM answers every sign 503 for 2 s, 4 threads signing all along: with the default
    MaxRetries and RetryBudget no call fails, and the ones that met the burst waited it out."""
    hsm, key = _ready(private, admin, library_for)
    admin.inject("unavailable", "sign", count=100000)
    lifted = threading.Timer(2.0, lambda: admin.reset(counters=False, faults=True, latency=False))
    errors: list[Exception] = []
    longest = [0.0]
    stop = time.monotonic() + 2.6

    def worker() -> None:
        while time.monotonic() < stop:
            began = time.monotonic()
            try:
                _sign(hsm, key)
            except Exception as exc:  # reported below
                errors.append(exc)
                return
            longest[0] = max(longest[0], time.monotonic() - began)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    lifted.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    lifted.join()
    assert errors == []
    counters = admin.counters()
    assert _status(counters, 503) >= 4 * 5  # every thread met the burst, several times over
    assert counters["signs"]["total"] >= 4 and longest[0] >= 1.5


# -- libcurl's trace -----------------------------------------------------------------------------------

def _hex_rows(text: str) -> bytes:
    """The bytes a DisplayAsHex trace shows, row after row."""
    rows = [line for line in text.splitlines() if re.match(r"  [0-9a-f]{4}: ", line)]
    return b"".join(bytes.fromhex(row[8:55]) for row in rows)  # the 16 bytes' 47 columns after the offset


@pytest.mark.parametrize("as_hex", [False, True])
def test_curl_verbose_trace_is_logged_and_scrubbed(private: Emulator, admin: EmulatorAdmin,
                                                   library_for: Callable[..., Library], tmp_path: Path,
                                                   as_hex: bool) -> None:
    """log.module.curl Level Verbose: libcurl's trace (connection text, headers, bodies) reaches our
    log, with DisplayAsHex as a hex dump, and the bearer token appears in neither form."""
    logs = tmp_path / "logs"
    hsm, key = _ready(private, admin, library_for, log={
        "directory": str(logs), "module": {"curl": {"Level": "Verbose", "DisplayAsHex": as_hex}},
        "flags": {"SendToFile": True}})
    _sign(hsm, key)
    token = hsm.tokens.get()
    [file] = logs.iterdir()
    text = file.read_text()
    shown = _hex_rows(text).decode("latin-1") if as_hex else text
    assert "mhsm.curl" in text and admin.counters()["signs"]["total"] == 1
    assert re.search(r"POST /keys/[^ ]+/sign\?api-version=7\.5 HTTP/1\.1", shown)
    assert "HTTP/1.1 200" in shown and "x-ms-request-id:" in shown.lower()
    assert "Authorization: Bearer ***" in shown
    for where in (text, shown, _hex_rows(text).hex()):
        assert token not in where and token.encode().hex() not in where and token[:40] not in where
    library_for(private, "keygen")  # back to the default log settings for the tests that follow


# -- proxies ---------------------------------------------------------------------------------------------

class ConnectProxy:
    """A CONNECT-only HTTP proxy on loopback that records each tunnel's target. Test glue: Debian has
    no small packaged proxy that says which tunnels it opened."""

    def __init__(self) -> None:
        import socketserver

        self.targets: list[str] = []
        proxy = self

        class Tunnel(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = self.request.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                method, target = head.split(b" ")[:2]
                if method != b"CONNECT":
                    self.request.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                    return
                proxy.targets.append(target.decode())
                host, port = target.decode().rsplit(":", 1)
                with socket.create_connection((host, int(port))) as upstream:
                    self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    pump(self.request, upstream)

        def pump(a: socket.socket, b: socket.socket) -> None:
            import selectors

            with selectors.DefaultSelector() as selector:
                selector.register(a, selectors.EVENT_READ, b)
                selector.register(b, selectors.EVENT_READ, a)
                while True:
                    for ready, _ in selector.select():
                        data = ready.fileobj.recv(65536)  # type: ignore[union-attr]
                        if not data:
                            return
                        ready.data.sendall(data)

        socketserver.ThreadingTCPServer.daemon_threads = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Tunnel)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_https_proxy_and_no_proxy_are_honoured(private: Emulator, admin: EmulatorAdmin,
                                               library_for: Callable[..., Library],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTPS_PROXY sends the HSM traffic through a CONNECT tunnel, NO_PROXY naming the host goes
    direct again, and the lower-case https_proxy works as libcurl reads it; every sign is counted."""
    from urllib.parse import urlsplit

    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    hsm, key = _ready(private, admin, library_for)
    hsm_at = f"{urlsplit(private.url).hostname}:{urlsplit(private.url).port}"
    proxy = ConnectProxy()
    try:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        _sign(hsm, key)
        assert proxy.targets == [hsm_at]
        monkeypatch.setenv("NO_PROXY", urlsplit(private.url).hostname or "")
        _sign(hsm, key)
        assert proxy.targets == [hsm_at]  # direct: no new tunnel
        monkeypatch.delenv("HTTPS_PROXY")
        monkeypatch.delenv("NO_PROXY")
        monkeypatch.setenv("https_proxy", proxy.url)
        _sign(hsm, key)
        assert proxy.targets == [hsm_at, hsm_at]
    finally:
        proxy.close()
    assert admin.counters()["signs"]["total"] == 3
