"""nginx as a test host: a local CA for the HSM keys' certificates, a running nginx, and a verified
TLS handshake. Shared by the PKCS#11 engine tests and the provider tests."""

from __future__ import annotations

import datetime as dt
import ipaddress
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from embedding.build import build_runtime

NGINX = ["/usr/sbin/nginx"]
WORKERS = 4
CASES = [("RSA", ssl.TLSVersion.TLSv1_3), ("RSA", ssl.TLSVersion.TLSv1_2), ("EC", ssl.TLSVersion.TLSv1_3),
         ("EC", ssl.TLSVersion.TLSv1_2)]
QUIET = ("emerg", "alert", "crit", "error", "warn")  # levels a clean run never logs
# nginx in a mount namespace of its own, so a test can hide directories from it alone: the master
# runs as root, which file modes do not stop, but an empty mount over a directory does.
PRIVATE_MOUNTS = ["unshare", "--mount", "--propagation", "private"]


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

    def issue(self, public_key: Any, path: Path) -> x509.Certificate:
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
                .issuer_name(self.cert.subject).public_key(public_key)
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                .sign(self.key, hashes.SHA256()))
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert


class Nginx:
    def __init__(self, prefix: Path, conf: Path, env: dict[str, str], command: list[str] = NGINX) -> None:
        self.prefix, self.conf, self.env = prefix, conf, env
        self.log = prefix / "error.log"
        self.process = subprocess.Popen([*command, "-p", str(prefix), "-c", str(conf), "-e", str(self.log)], env=env,
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


def hide_python_tree(pid: int) -> list[str]:
    """Mount an empty tmpfs over every directory the embedded Python imports from (the stdlib, the
    venv, the checkout: the .so's built-in sys.path), in the mount namespace of `pid` only; the
    mounts go when its processes exit. Returns the directories, each checked empty from inside."""
    tree = sorted({p for p in build_runtime().paths if Path(p).is_dir()}, key=len, reverse=True)  # inner first
    for directory in tree:
        subprocess.run(["nsenter", "-t", str(pid), "-m", "mount", "-t", "tmpfs", "-o", "ro,size=4k", "hidden",
                        directory], check=True, timeout=10)
    for directory in tree:
        # empty, or gone (inside a directory hidden after it)
        listing = subprocess.run(["nsenter", "-t", str(pid), "-m", "ls", "-A", directory], capture_output=True,
                                 text=True, timeout=10).stdout
        assert listing == "", f"{directory} is still visible to nginx: {listing}"
    return tree


def serve_hidden(nginx: Nginx, ports: dict[str, tuple[int, bytes]], ca_file: Path, emulator: Any) -> None:
    """Hide the Python tree from a started nginx (see hide_python_tree), then 24 verified handshakes,
    the workers' first, each one HSM sign as the emulator counts them; then, for each kind, one
    whose sign meets an expired token (a token refresh in a worker) and one that is throttled (a
    retry): those paths may not import anything either."""
    nginx.wait_for_workers()
    assert hide_python_tree(nginx.process.pid)
    before = signs(emulator)
    done = sum(serve_rounds(nginx, ports, ca_file, reloads=0, per_case=2) for _ in range(3))
    assert done == 24 and signs(emulator) - before == done, "one HSM sign per handshake"
    for fault in ("token_expired", "throttle"):
        for kind, version in CASES[::2]:  # RSA and EC, TLS 1.3
            hit = emulator.admin.counters()["faults_injected"].get(fault, 0)
            emulator.admin.inject(fault, "sign", retry_after=0)
            assert handshake(ports[kind][0], kind, version, ca_file, "localhost")[0] == ports[kind][1], (fault, kind)
            assert emulator.admin.counters()["faults_injected"].get(fault, 0) == hit + 1, (fault, kind)


def signs(emulator: Any) -> int:
    return int(emulator.admin.counters()["signs"]["total"])


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


def write_conf(directory: Path, keys: dict[str, tuple[int, Path, str]], env_names: tuple[str, ...]) -> Path:
    """An nginx.conf with one TLS server per key kind: {kind: (port, certificate, ssl_certificate_key value)}.

    No session cache and no tickets, so every handshake is a full one and signs once.
    """
    servers = "".join(f"""
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key "{key}";
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{ return 200 "ok"; }}
    }}""" for port, cert, key in keys.values())
    env = "".join(f"env {name};\n" for name in env_names)
    conf = directory / "nginx.conf"
    conf.write_text(f"""
worker_processes {WORKERS};
daemon off;
pid {directory / 'nginx.pid'};
error_log {directory / 'error.log'} info;
{env}events {{ worker_connections 64; }}
http {{
    access_log off;
    ssl_session_cache off;
    ssl_session_tickets off;
{servers}
}}
""")
    return conf


def serve_rounds(nginx: Nginx, ports: dict[str, tuple[int, bytes]], ca_file: Path, reloads: int,
                 per_case: int) -> int:
    """Every case's handshakes (verified, each against the expected certificate) in `reloads + 1`
    rounds with an `nginx -s reload` between them; returns how many handshakes succeeded."""
    workers, done = nginx.wait_for_workers(), 0
    for round_ in range(reloads + 1):
        for kind, version in CASES:
            for name in ("localhost", "127.0.0.1")[:per_case]:  # the DNS and the IP subjectAltName
                port, expected_cert = ports[kind]
                cert, response = handshake(port, kind, version, ca_file, name)
                assert cert == expected_cert and response.startswith("HTTP/1.1 200") and response.endswith("ok")
                done += 1
        if round_ < reloads:
            nginx.reload()
            workers = nginx.wait_for_workers(not_in=workers)
    return done
