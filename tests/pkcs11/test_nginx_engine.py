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

import os
import pwd
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.conftest import REPO
from tests.nginx import CASES, NGINX, QUIET, WORKERS, LocalCA, Nginx, free_port, handshake, serve_rounds, write_conf
from tests.pkcs11.conftest import P11, Pair

RELOADS, PER_CASE = 5, 2

def openssl_conf(p11: P11, path: Path) -> Path:
    """The sample conf/openssl-engine.cnf, pointed at the built module."""
    sample = (REPO / "conf" / "openssl-engine.cnf").read_text()
    path.write_text(sample.replace("/usr/lib/libmhsm-pkcs11.so", p11.module))
    return path


def start(p11: P11, pairs: dict[str, Pair], tmp_path: Path,
          command: list[str] = NGINX) -> tuple[Nginx, dict[str, tuple[int, bytes]], Path]:
    """nginx with one server per key kind, each on the official `engine:pkcs11:` line."""
    ca, ports, keys = LocalCA(tmp_path), {}, {}
    for kind, pair in pairs.items():
        cert = ca.issue(pair.public_key(), tmp_path / f"{kind}.crt")
        ports[kind] = (free_port(), cert.public_bytes(serialization.Encoding.DER))
        keys[kind] = (ports[kind][0], tmp_path / f"{kind}.crt",
                      f"engine:pkcs11:pkcs11:object={pair.label};type=private;pin-value=")
    conf = write_conf(tmp_path, keys, ("OPENSSL_CONF", "MHSM_PKCS11_CONF", "MHSM_CLIENT_ID", "MHSM_CLIENT_SECRET"))
    env = {k: v for k, v in p11.env.items() if k not in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    env["OPENSSL_CONF"] = str(openssl_conf(p11, tmp_path / "openssl.cnf"))
    os.chmod(tmp_path, 0o700)  # the workers (nobody) may not read anything the master read
    return Nginx(tmp_path, conf, env, command), ports, ca.file


@pytest.fixture
def served(p11: P11, pairs: dict[str, Pair], tmp_path: Path) -> Iterator[tuple[Nginx, dict[str, tuple[int, bytes]], Path]]:
    nginx, ports, ca_file = start(p11, pairs, tmp_path)
    try:
        yield nginx, ports, ca_file
    finally:
        nginx.stop()


def test_nginx_libp11_engine_official_line(p11: P11, served: tuple[Nginx, dict[str, tuple[int, bytes]], Path]) -> None:
    nginx, ports, ca_file = served
    nginx.wait_for_workers()
    assert nginx.users() == {pwd.getpwnam("nobody").pw_uid}, "the workers dropped root"
    before = p11.signs()
    done = serve_rounds(nginx, ports, ca_file, RELOADS, PER_CASE)
    assert done == (RELOADS + 1) * len(CASES) * PER_CASE == 48
    assert p11.signs() - before == done, "one HSM sign per handshake"
    log = nginx.log.read_text()
    assert not any(f"[{level}]" in log for level in QUIET), log


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
    expected = ca.issue(pairs["RSA"].public_key(), tmp_path / "tls.crt").public_bytes(serialization.Encoding.DER)
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
    assert not any(f"[{level}]" in log for level in QUIET), log
