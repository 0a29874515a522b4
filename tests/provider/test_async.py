"""Signatures inside OpenSSL ASYNC jobs (provider/csrc/async.c): first driven directly by a C program
(asyncjobs.c), then by HAProxy 2.6 with `ssl-mode-async` and `nbthread 1`, where the one thread goes
on with other handshakes while the HSM answers.

The C program counts the jobs paused at once, frees wait contexts whose jobs are paused (what
SSL_free does when a client has left), forks with jobs paused, compares a failure's error line
inside and outside a job, and checks that inside a job nothing but the signature is offered to
Python: a store open there is refused (so the HAProxy handshakes, which all succeed, prove that
nothing libssl asks of a key in the job reached Python on the job's small stack).

For HAProxy, load comes from the C client (bench/csrc/tlsload.c), which verifies every server chain and name
and wants an HTTP 200 after each handshake. Each test asserts outcomes, never speed: no failed
handshake, one HSM sign counted per handshake, several signs in flight at once at the HSM from a
single HAProxy thread (and exactly one without ssl-mode-async, the control), and after the load no
wait fd left open and no signing thread beyond the pool's bound.
"""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
import ssl
import struct
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from cryptography.hazmat.primitives import serialization

from pkcs11_compat import loadgen
from tests.conftest import start_emulator
from tests.haproxy import POOL_THREAD, Haproxy, crt_file, eventfds, threads
from tests.nginx import LocalCA
from tests.provider.conftest import BIN, Hsm, make_hsm, openssl_env, provider_cnf

CLIENTS = 32
POOL_MAX = 32  # MHSM_POOL_MAX_THREADS in provider/csrc/async.c
ASYNCJOBS_C = Path(__file__).with_name("asyncjobs.c")
REQUEST_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class Site:
    """An emulator with an RSA and an EC key, their crt files, and HAProxy serving them."""

    def __init__(self, hsm: Hsm, directory: Path) -> None:
        self.hsm, self.dir = hsm, directory
        ca = LocalCA(directory)
        self.ca_file = ca.file
        self.crts = {}
        for kind, label in hsm.labels.items():
            cert = ca.issue(hsm.public_keys[kind], directory / f"{kind}.crt")
            self.crts[kind] = crt_file(cert.public_bytes(serialization.Encoding.PEM),
                                       f"pkcs11:object={label};type=private", BIN / "mhsm_p11_uri2pem",
                                       directory / f"{kind}.pem")
        self.env = openssl_env(hsm, provider_cnf(hsm, directory / "openssl.cnf"))

    def haproxy(self, name: str, async_mode: bool = True) -> Haproxy:
        return Haproxy(self.dir / name, self.crts, self.env, async_mode=async_mode)

    def load(self, haproxy: Haproxy, amount: str, clients: int = CLIENTS) -> dict[str, Any]:
        """`clients` C clients making full handshakes (RSA and EC alternately) for tSECONDS or a COUNT."""
        ports = ",".join(str(haproxy.ports[kind]) for kind in ("RSA", "EC"))
        return loadgen.run([str(loadgen.binary("tlsload")), ports, str(self.ca_file), "handshake", str(clients),
                            amount], self.hsm.env)

    def counters(self) -> dict[str, Any]:
        return self.hsm.emulator.admin.counters()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("haproxy-async")
    emulator = start_emulator(directory / "hsm")
    try:
        hsm = make_hsm(emulator, directory / "mhsm-pkcs11.conf", "async")
        # Retries enough that injected faults never exhaust a sign's budget (what the fault test relies on).
        conf = Path(hsm.env["MHSM_PKCS11_CONF"])
        document = json.loads(conf.read_text())
        document["options"].update(MaxRetries=6, RetryBudget=20)
        conf.write_text(json.dumps(document))
        yield Site(hsm, directory)
    finally:
        emulator.stop()


@pytest.fixture(autouse=True)
def _fresh_emulator(site: Site) -> None:
    site.hsm.emulator.admin.reset()
    site.hsm.emulator.admin.set_latency("sign", fixed_ms=20)


@pytest.fixture(scope="module")
def asyncjobs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary = tmp_path_factory.mktemp("asyncjobs") / "asyncjobs"
    built = subprocess.run(["gcc", "-Wall", "-Wextra", "-Werror", "-O1", str(ASYNCJOBS_C), "-o", str(binary),
                            "-lcrypto"], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    return binary


def jobs(site: Site, binary: Path, scenario: str, kind: str, count: int) -> list[dict[str, str]]:
    """Run one scenario; its key=value lines (a fork scenario prints the child's line too)."""
    result = subprocess.run([str(binary), scenario, str(site.crts[kind]), str(count)],
                            env=site.env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return [dict(field.split("=", 1) for field in shlex.split(line) if "=" in field)
            for line in result.stdout.splitlines()]


@pytest.mark.parametrize("kind", ["RSA", "EC"])
def test_one_thread_pauses_many_jobs(site: Site, asyncjobs: Path, kind: str) -> None:
    site.hsm.emulator.admin.set_latency("sign", fixed_ms=200)
    [line] = jobs(site, asyncjobs, "paused", kind, 16)
    assert line["threads_before"] == "1", "no thread of ours before the first job"
    assert line["paused"] == "16" and line["verified"] == "16", line
    assert 1 < int(line["threads"]) <= 1 + 16 and line["eventfds"] == "0", line
    counted = site.counters()
    assert counted["signs"]["total"] == 16 and counted["peak_concurrent_requests"] == 16


def test_wait_contexts_freed_while_paused(site: Site, asyncjobs: Path) -> None:
    """SSL_free with the job paused: the signs still finish, and each eventfd is closed exactly once
    (pipes made afterwards take the freed numbers and must stay open)."""
    site.hsm.emulator.admin.set_latency("sign", fixed_ms=300)
    [line] = jobs(site, asyncjobs, "abandon", "EC", 16)
    assert line == {"threads_before": "1", "paused": "16", "eventfds_during": "16", "eventfds_after": "0",
                    "pipes_intact": "32"}
    assert site.counters()["signs"]["total"] == 16


def test_fork_with_jobs_paused(site: Site, asyncjobs: Path) -> None:
    """The child never touches the parent's pool: a job it inherited paused fails at once with a clear
    line, its own jobs get a pool of its own; the parent's jobs finish."""
    child, parent = jobs(site, asyncjobs, "fork", "EC", 8)
    assert child["threads_at_fork"] == "1" and child["inherited_finished"] == "1" and child["inherited_ok"] == "0"
    assert child["error"] == "the process forked while this signature was in flight; the child cannot finish it"
    assert child["verified"] == "8" and 1 < int(child["threads"]) <= 9, child
    assert parent["first"] == "8" and parent["paused_at_fork"] == "8" and parent["verified"] == "8", parent
    assert parent["child_status"] == "0"
    assert site.counters()["signs"]["total"] == 24


def test_a_failure_inside_a_job_reads_as_outside(site: Site, asyncjobs: Path) -> None:
    site.hsm.emulator.admin.inject("unavailable", operation="sign", count=100)  # more than any retry budget
    [line] = jobs(site, asyncjobs, "errors", "RSA", 1)
    assert line["verified"] == "0" and line["sync_ok"] == "0" and line["eventfds"] == "0"
    assert "HTTP 503" in line["async_error"] and "x-ms-request-id" in line["async_error"], line
    assert REQUEST_ID.sub("ID", line["async_error"]) == REQUEST_ID.sub("ID", line["sync_error"])


def test_inside_a_job_only_signatures_reach_python(site: Site, asyncjobs: Path) -> None:
    [line] = jobs(site, asyncjobs, "inside", "RSA", 1)
    assert line["finished"] == "1" and line["store_opened"] == "0", line
    assert line["store_error"] == "refused to run Python inside an OpenSSL ASYNC job (only signatures are made there)"
    assert line["bits"] == "2048" and line["can_sign"] == "1" and line["eq"] == "1" and line["sign_init"] == "1"
    assert line["threads"] == "1"


def assert_drained(pid: int) -> dict[str, int]:
    """Once the clients are gone: no wait fd open, the pool within its bound; returns the threads."""
    deadline = time.monotonic() + 10
    while eventfds(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert eventfds(pid) == 0, "an eventfd outlived its connection"
    names = threads(pid)
    assert set(names) <= {"haproxy", POOL_THREAD} and names["haproxy"] == 1, names
    assert names.get(POOL_THREAD, 0) <= POOL_MAX, names
    return names


def test_one_thread_has_many_signs_in_flight(site: Site) -> None:
    haproxy = site.haproxy("many")
    try:
        worker = haproxy.wait_for_worker()
        assert threads(worker) == {"haproxy": 1}, "no signing thread before the first handshake"
        result = site.load(haproxy, "t2")
        counted = site.counters()
        assert result["errors"] == 0 and result["signs"] > CLIENTS, result["errors"]
        assert counted["signs"]["total"] == result["signs"], "one HSM sign per verified handshake"
        assert set(counted["signs"]["by_algorithm"]) == {"PS256", "ES256"}
        assert counted["peak_concurrent_requests"] > 1, "ssl-mode-async kept several signs in flight"
        first = assert_drained(worker)
        assert first.get(POOL_THREAD, 0) >= 2
        again = site.load(haproxy, str(4 * CLIENTS))
        assert again["errors"] == 0 and again["signs"] == 4 * CLIENTS
        assert assert_drained(worker) == first, "a second round reuses the pool"
    finally:
        haproxy.stop()
    assert haproxy.process.returncode == 0, haproxy.log.read_text()


def test_without_async_one_sign_at_a_time(site: Site) -> None:
    """The control: the same HAProxy without ssl-mode-async never has two signs in flight."""
    haproxy = site.haproxy("control", async_mode=False)
    try:
        result = site.load(haproxy, str(CLIENTS))
        assert result["errors"] == 0 and result["signs"] == CLIENTS
        assert site.counters()["peak_concurrent_requests"] == 1
        assert threads(haproxy.wait_for_worker()) == {"haproxy": 1}
    finally:
        haproxy.stop()


@pytest.mark.parametrize("fault", ["unavailable", "reset"])
def test_faults_while_jobs_are_paused(site: Site, fault: str) -> None:
    """503s and connection resets hit signs whose jobs are paused: retried, and no handshake fails."""
    haproxy = site.haproxy(f"fault-{fault}")
    try:
        worker = haproxy.wait_for_worker()
        results: list[dict[str, Any]] = []
        loader = threading.Thread(target=lambda: results.append(site.load(haproxy, str(8 * CLIENTS))))
        loader.start()
        while site.counters()["in_flight"] == 0:
            time.sleep(0.01)
        site.hsm.emulator.admin.inject(fault, operation="sign", count=12)
        loader.join()
        counted = site.counters()
        assert counted["faults_injected"][fault] == 12, counted["faults_injected"]
        assert results[0]["errors"] == 0 and results[0]["signs"] == 8 * CLIENTS
        assert counted["signs"]["total"] == results[0]["signs"]
        assert_drained(worker)
    finally:
        haproxy.stop()


def _hello(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    """A connection that has sent its ClientHello (the server starts signing) and waits."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    tls = context.wrap_socket(raw, server_hostname="localhost", do_handshake_on_connect=False)
    tls.setblocking(False)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return tls


def _leave(tls: ssl.SSLSocket) -> None:
    """Reset the connection (SO_LINGER 0: an RST, not a FIN)."""
    tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    tls.close()


def test_clients_that_leave_mid_sign(site: Site) -> None:
    """Clients gone while their signs are in flight: the signs finish, the fds close, HAProxy serves on."""
    site.hsm.emulator.admin.set_latency("sign", fixed_ms=500)
    haproxy = site.haproxy("leave")
    try:
        worker = haproxy.wait_for_worker()
        context = ssl.create_default_context(cafile=str(site.ca_file))
        for round_ in (1, 2):
            hellos = [_hello(port, context) for port in haproxy.ports.values() for _ in range(8)]
            deadline = time.monotonic() + 10
            while site.counters()["in_flight"] < len(hellos) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert site.counters()["in_flight"] == len(hellos), "all 16 signs in flight at once"
            for tls in hellos:
                _leave(tls)
            while site.counters()["signs"]["total"] < 16 * round_ and time.monotonic() < deadline:
                time.sleep(0.05)
            assert site.counters()["signs"]["total"] == 16 * round_, "every abandoned sign ran to its end"
            assert_drained(worker)
        site.hsm.emulator.admin.set_latency("sign", fixed_ms=20)
        result = site.load(haproxy, str(CLIENTS))
        assert result["errors"] == 0 and result["signs"] == CLIENTS
        assert haproxy.workers() == {worker}, "the worker did not crash"
    finally:
        haproxy.stop()
    assert haproxy.process.returncode == 0, haproxy.log.read_text()


def test_reloads_with_signs_in_flight(site: Site) -> None:
    """SIGUSR2 reloads while signs are paused: the old worker finishes them; the master, which loads
    the keys again and forks the new worker, never starts a signing thread; no handshake fails."""
    site.hsm.emulator.admin.set_latency("sign", fixed_ms=100)
    haproxy = site.haproxy("reload")
    try:
        workers = [haproxy.wait_for_worker()]
        results: list[dict[str, Any]] = []
        loader = threading.Thread(target=lambda: results.append(site.load(haproxy, "640", clients=16)))
        loader.start()
        for reload_ in (1, 2):
            while site.counters()["signs"]["total"] < 160 * reload_ or not site.counters()["in_flight"]:
                time.sleep(0.01)
            workers.append(haproxy.reload())
            assert threads(haproxy.process.pid) == {"haproxy": 1}, "the master, which forks, signs nothing"
        loader.join()
        assert results[0]["errors"] == 0 and results[0]["signs"] == 640, results[0]["errors"]
        assert site.counters()["signs"]["total"] == results[0]["signs"]
        deadline = time.monotonic() + 20
        while haproxy.workers() != {workers[-1]} and time.monotonic() < deadline:
            time.sleep(0.1)
        assert haproxy.workers() == {workers[-1]}, "the old workers finished and exited"
        assert_drained(workers[-1])
        assert "exited with code" not in haproxy.log.read_text().replace("exited with code 0", "")
    finally:
        haproxy.stop()
