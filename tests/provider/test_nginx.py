"""nginx serving TLS with HSM keys through the provider.

- nginx >= 1.29 (Debian sid's build, run from .cache/sid-nginx with its own loader: `make setup`
  fetches it) with `ssl_certificate_key "store:pkcs11:object=<label>"`;
- Debian 12's nginx 1.22 with a PEM-wrapped URI (mhsm_p11_uri2pem) as a plain key file.

As with the engine: the master (root) loads the keys, 4 workers running as `nobody` sign and can
read neither the configurations nor the credentials; every handshake is a full one, verified
against the certificate, and the emulator counts exactly one sign per handshake, through 5 reloads.
Then the faults: a bad label, a bad URI attribute, a bad PIN, and the HSM down at start-up and
while serving; each is one clear line in nginx's log, and serving resumes when the HSM is back.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.conftest import REPO, start_emulator
from tests.nginx import CASES, NGINX, QUIET, LocalCA, Nginx, free_port, handshake, serve_rounds, write_conf
from tests.provider.conftest import BIN, Hsm, make_hsm, provider_cnf, short_conf

SID = REPO / ".cache" / "sid-nginx"
SID_NGINX = [str(SID / "run"), str(SID / "root" / "usr" / "sbin" / "nginx")]
RELOADS, PER_CASE = 5, 2


def start(hsm: Hsm, tmp: Path, key_for: dict[str, str], command: list[str],
          kinds: tuple[str, ...] = ("RSA", "EC")) -> tuple[Nginx, dict[str, tuple[int, bytes]], Path]:
    """nginx with one server per key kind; `key_for[kind]` is its ssl_certificate_key value."""
    tmp.mkdir(exist_ok=True)
    ca, ports, keys = LocalCA(tmp), {}, {}
    for kind in kinds:
        cert = ca.issue(hsm.public_keys[kind], tmp / f"{kind}.crt")
        ports[kind] = (free_port(), cert.public_bytes(serialization.Encoding.DER))
        keys[kind] = (ports[kind][0], tmp / f"{kind}.crt", key_for[kind])
    conf = write_conf(tmp, keys, ("OPENSSL_CONF",))
    env = {**hsm.env, "OPENSSL_CONF": str(provider_cnf(hsm, tmp / "openssl.cnf"))}
    os.chmod(tmp, 0o700)  # the workers (nobody) may not read anything the master read
    return Nginx(tmp, conf, env, command), ports, ca.file


def sid_nginx() -> list[str]:
    assert (SID / "run").exists(), f"{SID} is missing: `make setup` fetches nginx >= 1.29 there"
    return SID_NGINX


def assert_clean(nginx: Nginx) -> None:
    log = nginx.log.read_text()
    assert not any(f"[{level}]" in log for level in QUIET), log


def run_cases(hsm: Hsm, nginx: Nginx, ports: dict[str, tuple[int, bytes]], ca_file: Path) -> int:
    nginx.wait_for_workers()
    assert nginx.users() == {pwd.getpwnam("nobody").pw_uid}, "the workers dropped root"
    before = hsm.signs()
    done = serve_rounds(nginx, ports, ca_file, RELOADS, PER_CASE)
    assert done == (RELOADS + 1) * len(CASES) * PER_CASE == 48
    assert hsm.signs() - before == done, "one HSM sign per handshake"
    return done


def test_nginx_store_uri(hsm: Hsm, tmp_path: Path) -> None:
    """nginx 1.30 with `store:pkcs11:object=<label>`: TLS 1.3 RSA-PSS and ECDSA, TLS 1.2 RSA and ECDSA."""
    keys = {kind: f"store:pkcs11:object={label}" for kind, label in hsm.labels.items()}
    nginx, ports, ca_file = start(hsm, tmp_path, keys, sid_nginx())
    try:
        run_cases(hsm, nginx, ports, ca_file)
    finally:
        nginx.stop()
    assert_clean(nginx)


def pem_wrapped_keys(hsm: Hsm, tmp: Path) -> dict[str, str]:
    """A PEM file wrapping each key's URI (mhsm_p11_uri2pem), for hosts without store: keys."""
    keys = {}
    for kind, label in hsm.labels.items():
        pem = tmp / f"{kind}-uri.pem"
        subprocess.run([str(BIN / "mhsm_p11_uri2pem"), f"pkcs11:object={label};type=private", "-o", str(pem)],
                       check=True, timeout=60)
        keys[kind] = str(pem)
    return keys


def test_nginx_122_pem_wrapped_uri(hsm: Hsm, tmp_path: Path) -> None:
    """Debian 12's nginx 1.22 (no store:) reads a PEM file that wraps the URI: the same handshakes."""
    nginx, ports, ca_file = start(hsm, tmp_path, pem_wrapped_keys(hsm, tmp_path), NGINX)
    try:
        run_cases(hsm, nginx, ports, ca_file)
    finally:
        nginx.stop()
    assert_clean(nginx)


def failed_start(hsm: Hsm, tmp: Path, key: str) -> str:
    """Start nginx with one bad key line; it must exit at once and say why in one line."""
    nginx, _, _ = start(hsm, tmp, {"RSA": key}, sid_nginx(), kinds=("RSA",))
    try:
        assert nginx.process.wait(60) != 0
    finally:
        nginx.stop()
    [line] = [line for line in nginx.log.read_text().splitlines() if "[emerg]" in line]
    return line


@pytest.mark.parametrize("uri, expected", [
    ("pkcs11:object=no-such-label", r"no key labelled 'no-such-label' in localhsm"),
    ("pkcs11:object={label};colour=blue", r"unknown attribute 'colour'"),
    ("pkcs11:object={label}?pin-value=not-a-principal", r"is not '<client-id>:<client-secret>'"),
    ("pkcs11:object={label}?pin-value=00000000-0000-0000-0000-000000000000:wrong", r"AADSTS|authenticat|credential"),
])
def test_nginx_bad_key_lines(hsm: Hsm, tmp_path: Path, uri: str, expected: str) -> None:
    line = failed_start(hsm, tmp_path, "store:" + uri.format(label=hsm.labels["RSA"]))
    assert "cannot load certificate key" in line and re.search(expected, line), line


def test_nginx_hsm_down_at_start_and_while_serving(tmp_path: Path) -> None:
    """HSM down at start-up: nginx refuses to start, saying the HSM is unreachable, within the
    configured budget. Down while serving: handshakes fail fast (no hang, no crash, workers stay);
    back on the same port: handshakes succeed again with the same workers."""
    emulator = start_emulator(tmp_path / "state")
    hsm = make_hsm(emulator, tmp_path / "mhsm-pkcs11.conf", "down")
    port = int(emulator.url.rsplit(":", 1)[1].strip("/"))
    emulator.stop()
    began = time.monotonic()
    line = failed_start(hsm, tmp_path / "start", f"store:pkcs11:object={hsm.labels['RSA']}")
    assert time.monotonic() - began < 60 and "cannot load certificate key" in line, line
    assert re.search(r"unreachable|connect|refused", line, re.IGNORECASE), line

    emulator = start_emulator(tmp_path / "state", "--port", str(port))
    try:
        hsm.emulator = emulator
        short_conf(emulator, tmp_path / "mhsm-pkcs11.conf")  # its Entra ID port is a new one
        keys = {kind: f"store:pkcs11:object={label}" for kind, label in hsm.labels.items()}
        nginx, ports, ca_file = start(hsm, tmp_path / "serve", keys, sid_nginx())
        try:
            workers = nginx.wait_for_workers()
            assert handshake(ports["RSA"][0], "RSA", CASES[0][1], ca_file, "localhost")[0] == ports["RSA"][1]
            emulator.stop()
            began = time.monotonic()
            with pytest.raises(OSError):  # the handshake fails (the server cannot sign), and promptly
                handshake(ports["EC"][0], "EC", CASES[2][1], ca_file, "localhost")
            assert time.monotonic() - began < 30
            emulator = start_emulator(tmp_path / "state", "--port", str(port))
            hsm.emulator = emulator
            for kind, version in CASES:
                cert, response = handshake(ports[kind][0], kind, version, ca_file, "localhost")
                assert cert == ports[kind][1] and response.endswith("ok")
            assert nginx.workers() == workers, "no worker crashed"
        finally:
            nginx.stop()
        errors = [line for line in nginx.log.read_text().splitlines() if "[crit]" in line or "[error]" in line]
        assert errors and all("alert" not in line for line in errors)
        assert any(re.search(r"unreachable|connect|refused", line, re.IGNORECASE) for line in errors), errors
    finally:
        emulator.stop()

