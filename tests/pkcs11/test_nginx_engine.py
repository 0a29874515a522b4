"""Debian 12's nginx 1.22 with the libp11 engine and the official deployment line, on our module.

The master (root) loads the keys; 4 workers running as `nobody` (nginx's default user) sign. The
workers cannot read the configuration, the CA file or the credentials' files (pytest's directories
are root-only): what the master read before forking must stay usable. nginx gets no CA bundle
variable (SSL_CERT_FILE...): the module trusts the emulator through its configuration's CAFile only.
`ssl_engine pkcs11;` is not needed: the `engine:` prefix loads the engine OPENSSL_CONF declares.
Every handshake is checked against the certificate, and the emulator must have counted exactly one
sign per handshake (no session cache, no tickets: every handshake is a full one).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pwd
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import REPO
from tests.pkcs11.conftest import P11, Pair

NGINX = "/usr/sbin/nginx"
WORKERS, RELOADS, PER_CASE = 4, 5, 2
CASES = [("RSA", ssl.TLSVersion.TLSv1_3), ("RSA", ssl.TLSVersion.TLSv1_2), ("EC", ssl.TLSVersion.TLSv1_3),
         ("EC", ssl.TLSVersion.TLSv1_2)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalCA:
    """A local CA that certifies the HSM keys' public parts (the CA's own key is a local file)."""

    def __init__(self, directory: Path) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mhsm test CA")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                     .not_valid_after(now + dt.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.file = directory / "ca.pem"
        self.file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, pair: Pair, path: Path) -> x509.Certificate:
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
                .issuer_name(self.cert.subject).public_key(pair.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                .sign(self.key, hashes.SHA256()))
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert


def openssl_conf(p11: P11, path: Path) -> Path:
    """The sample conf/openssl-engine.cnf, pointed at the built module."""
    sample = (REPO / "conf" / "openssl-engine.cnf").read_text()
    path.write_text(sample.replace("/usr/lib/libmhsm-pkcs11.so", p11.module))
    return path


class Nginx:
    def __init__(self, prefix: Path, conf: Path, env: dict[str, str]) -> None:
        self.prefix, self.conf, self.env = prefix, conf, env
        self.log = prefix / "error.log"
        self.process = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(self.log)], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def workers(self) -> set[int]:
        found = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid:
                found.add(int(stat.parent.name))
        return found

    def wait_for_workers(self, not_in: set[int] = frozenset()) -> set[int]:  # type: ignore[assignment]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"nginx exited: {self.log.read_text() if self.log.exists() else ''}"
            now = self.workers()
            if len(now) == WORKERS and not now & not_in:
                return now
            time.sleep(0.1)
        raise AssertionError(f"workers did not come up: {self.log.read_text()}")

    def users(self) -> set[int]:
        """The real uids the workers run as."""
        uids = set()
        for pid in self.workers():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("Uid:"):
                    uids.add(int(line.split()[1]))
        return uids

    def reload(self) -> None:
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGQUIT)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def served(p11: P11, pairs: dict[str, Pair], tmp_path: Path) -> Iterator[tuple[Nginx, dict[str, tuple[int, bytes]], Path]]:
    ca = LocalCA(tmp_path)
    ports, servers = {}, []
    for kind, pair in pairs.items():
        cert = ca.issue(pair, tmp_path / f"{kind}.crt")
        ports[kind] = (free_port(), cert.public_bytes(serialization.Encoding.DER))
        servers.append(f"""
    server {{
        listen 127.0.0.1:{ports[kind][0]} ssl;
        ssl_certificate {tmp_path / f'{kind}.crt'};
        ssl_certificate_key "engine:pkcs11:pkcs11:object={pair.label};type=private;pin-value=";
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{ return 200 "ok"; }}
    }}""")
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""
worker_processes {WORKERS};
daemon off;
pid {tmp_path / 'nginx.pid'};
error_log {tmp_path / 'error.log'} info;
env OPENSSL_CONF;
env MHSM_PKCS11_CONF;
env MHSM_CLIENT_ID;
env MHSM_CLIENT_SECRET;
events {{ worker_connections 64; }}
http {{
    access_log off;
    ssl_session_cache off;
    ssl_session_tickets off;
{''.join(servers)}
}}
""")
    env = {k: v for k, v in p11.env.items() if k not in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    env["OPENSSL_CONF"] = str(openssl_conf(p11, tmp_path / "openssl.cnf"))
    os.chmod(tmp_path, 0o700)  # the workers (nobody) may not read anything the master read
    nginx = Nginx(tmp_path, conf, env)
    try:
        yield nginx, ports, ca.file
    finally:
        nginx.stop()


def handshake(port: int, kind: str, version: ssl.TLSVersion, ca_file: Path, name: str) -> tuple[bytes, str]:
    """One full handshake (no resumption), the chain and `name` verified, and a GET; returns the
    server's certificate (DER) and the response."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.minimum_version = context.maximum_version = version
    if version == ssl.TLSVersion.TLSv1_2:  # the key signs the ECDHE parameters
        context.set_ciphers({"RSA": "ECDHE-RSA-AES128-GCM-SHA256", "EC": "ECDHE-ECDSA-AES128-GCM-SHA256"}[kind])
    with (socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
          context.wrap_socket(raw, server_hostname=name) as tls):
        assert tls.version() == {ssl.TLSVersion.TLSv1_3: "TLSv1.3", ssl.TLSVersion.TLSv1_2: "TLSv1.2"}[version]
        cipher = (tls.cipher() or ("",))[0]
        assert cipher.startswith("TLS_" if version == ssl.TLSVersion.TLSv1_3 else f"ECDHE-{kind.replace('EC', 'ECDSA')}-")
        tls.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        response = b""
        while chunk := tls.recv(4096):
            response += chunk
        return tls.getpeercert(binary_form=True) or b"", response.decode()


def test_nginx_libp11_engine_official_line(p11: P11, served: tuple[Nginx, dict[str, tuple[int, bytes]], Path]) -> None:
    nginx, ports, ca_file = served
    workers = nginx.wait_for_workers()
    assert nginx.users() == {pwd.getpwnam("nobody").pw_uid}, "the workers dropped root"
    before, done = p11.signs(), 0
    for round_ in range(RELOADS + 1):
        for kind, version in CASES:
            for name in ("localhost", "127.0.0.1")[:PER_CASE]:  # the DNS and the IP subjectAltName
                port, expected_cert = ports[kind]
                cert, response = handshake(port, kind, version, ca_file, name)
                assert cert == expected_cert and response.startswith("HTTP/1.1 200") and response.endswith("ok")
                done += 1
        if round_ < RELOADS:
            nginx.reload()
            workers = nginx.wait_for_workers(not_in=workers)
    assert done == (RELOADS + 1) * len(CASES) * PER_CASE == 48
    assert p11.signs() - before == done, "one HSM sign per handshake"
    log = nginx.log.read_text()
    assert not any(f"[{level}]" in log for level in ("emerg", "alert", "crit", "error", "warn")), log


def test_openssl_engine_sample_csr(p11: P11, pairs: dict[str, Pair], tmp_path: Path) -> None:
    """The sample engine configuration with the openssl CLI: the engine loads and initialises the
    module, and the documented CSR command signs with each HSM key (one HSM sign per CSR)."""
    env = {**p11.env, "OPENSSL_CONF": str(openssl_conf(p11, tmp_path / "openssl.cnf"))}
    tested = p11.run("openssl", "engine", "-t", "pkcs11", env=env).stdout
    assert "(pkcs11)" in tested and "[ available ]" in tested, tested
    for kind, pair in pairs.items():
        before = p11.signs()
        out = tmp_path / f"{kind}.csr"
        p11.run("openssl", "req", "-new", "-engine", "pkcs11", "-keyform", "engine", "-key",
                f"pkcs11:object={pair.label};type=private;pin-value=", "-subj", "/CN=tls.example.com",
                "-sha256", "-out", str(out), env=env)
        csr = x509.load_pem_x509_csr(out.read_bytes())
        assert csr.is_signature_valid
        assert csr.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo) == pair.public_der
        assert p11.signs() - before == 1


def test_nginx_sample_conf(p11: P11, pairs: dict[str, Pair], tmp_path: Path) -> None:
    """conf/nginx-engine.conf as shipped, only its port, certificate and key label replaced, serves
    verified TLS 1.3 and 1.2 with the HSM key."""
    ca, port = LocalCA(tmp_path), free_port()
    expected = ca.issue(pairs["RSA"], tmp_path / "tls.crt").public_bytes(serialization.Encoding.DER)
    sample = (REPO / "conf" / "nginx-engine.conf").read_text()
    for old, new in (("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;"),
                     ("/etc/nginx/tls.example.com.crt", str(tmp_path / "tls.crt")),
                     ("object=tlsKey;", f"object={pairs['RSA'].label};")):
        assert sample.count(old) == 1, old
        sample = sample.replace(old, new)
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"worker_processes {WORKERS};\ndaemon off;\npid {tmp_path / 'nginx.pid'};\n"
                    f"error_log {tmp_path / 'error.log'} info;\n{sample}")
    (tmp_path / "logs").mkdir()  # the default access log, under the prefix
    env = {k: v for k, v in p11.env.items() if k not in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    env["OPENSSL_CONF"] = str(openssl_conf(p11, tmp_path / "openssl.cnf"))
    os.chmod(tmp_path, 0o700)
    nginx = Nginx(tmp_path, conf, env)
    try:
        nginx.wait_for_workers()
        before = p11.signs()
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            cert, response = handshake(port, "RSA", version, ca.file, "localhost")
            assert cert == expected and response.startswith("HTTP/1.1 200") and "never left the HSM" in response
        assert p11.signs() - before == 2
    finally:
        nginx.stop()
    log = nginx.log.read_text()
    assert not any(f"[{level}]" in log for level in ("emerg", "alert", "crit", "error", "warn")), log
