"""nginx serving an RSA-2048 and an EC P-256 key four ways, each on its own pair of ports:

- "provider": nginx 1.30 (sid, .cache/sid-nginx) with `store:pkcs11:object=...` through mhsm.so;
- "engine": Debian 12's nginx 1.22 with the libp11 engine loading our PKCS#11 module (the official
  library's documented deployment);
- "pkcs11-provider": nginx 1.30 with sid's pkcs11-provider loading our PKCS#11 module;
- "local": the same nginx with the keys in local files (nginx 1.30 and 1.22).
Every nginx has 4 workers, no session cache and no tickets: every handshake is a full one. Each
server also answers `GET /ping` (no key operation) for the latency of a plain request on a
connection that is already open.
"""

from __future__ import annotations

import datetime as dt
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from harness import PKCS11_MODULE, REPO, Lab

SID = REPO / ".cache" / "sid-nginx"
SID_NGINX = [str(SID / "run"), str(SID / "root" / "usr" / "sbin" / "nginx")]
DEBIAN_NGINX = ["/usr/sbin/nginx"]
SID_PKCS11_PROVIDER = SID / "root" / "usr" / "lib" / "x86_64-linux-gnu" / "ossl-modules" / "pkcs11.so"
WORKERS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _certificate(public_key: Any, path: Path) -> None:
    """A certificate for `public_key`, issued by a throw-away local CA (clients here do not verify)."""
    ca = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(public_key)
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1)).sign(ca, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


class Server:
    """One running nginx for one path."""

    def __init__(self, lab: Lab, path: str, workdir: Path) -> None:
        self.path, self.dir = path, workdir
        workdir.mkdir(parents=True, exist_ok=True)
        command, env, keys = self._setup(lab, path)
        self.ports = {kind: _free_port() for kind in keys}
        servers = "".join(f"""
    server {{ listen 127.0.0.1:{self.ports[kind]} ssl; ssl_certificate {workdir}/{kind}.crt;
             ssl_certificate_key "{key}"; ssl_protocols TLSv1.2 TLSv1.3;
             location = /ping {{ return 200 "ok\\n"; }} }}""" for kind, key in keys.items())
        conf = workdir / "nginx.conf"
        conf.write_text(f"worker_processes {WORKERS};\ndaemon off;\npid {workdir}/nginx.pid;\n"
                        f"error_log {workdir}/error.log warn;\nevents {{ worker_connections 512; }}\n"
                        f"http {{ access_log off; ssl_session_cache off; ssl_session_tickets off;\n"
                        f"keepalive_requests 1000000; keepalive_timeout 300s;{servers}\n}}\n")
        self.process = subprocess.Popen([*command, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")],
                                        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while len(self.workers()) < WORKERS or any(socket.socket().connect_ex(("127.0.0.1", p)) for p in self.ports.values()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                self.process.wait()
                log = workdir / "error.log"
                raise RuntimeError(f"nginx for {path} did not start: {log.read_text()[-2000:] if log.exists() else ''}")
            time.sleep(0.1)

    def _setup(self, lab: Lab, path: str) -> tuple[list[str], dict[str, str], dict[str, str]]:
        keys: dict[str, str] = {}
        if path.startswith("local"):
            for kind, key in (("RSA", rsa.generate_private_key(65537, 2048)), ("EC", ec.generate_private_key(ec.SECP256R1()))):
                (self.dir / f"{kind}.key").write_bytes(key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
                _certificate(key.public_key(), self.dir / f"{kind}.crt")
                keys[kind] = str(self.dir / f"{kind}.key")
            env = {**lab.env, "OPENSSL_CONF": "/dev/null"}
            return (DEBIAN_NGINX if "1.22" in path else SID_NGINX), env, keys
        for kind, public_key in lab.public_keys().items():
            _certificate(public_key, self.dir / f"{kind}.crt")
        if path == "provider":
            keys = {kind: f"store:pkcs11:object={label}" for kind, label in lab.labels.items()}
            return SID_NGINX, {**lab.env, "OPENSSL_CONF": lab.openssl_cnf()}, keys
        if path == "engine":
            cnf = self.dir / "engine.cnf"
            cnf.write_text((REPO / "conf" / "openssl-engine.cnf").read_text()
                           .replace("/usr/lib/libmhsm-pkcs11.so", str(PKCS11_MODULE)))
            keys = {kind: f"engine:pkcs11:pkcs11:object={label};type=private;pin-value="
                    for kind, label in lab.labels.items()}
            return DEBIAN_NGINX, {**lab.env, "OPENSSL_CONF": str(cnf)}, keys
        if path == "pkcs11-provider":
            cnf = self.dir / "pkcs11-provider.cnf"
            cnf.write_text(f"""openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
[provider_sect]
default = default_sect
pkcs11 = pkcs11_sect
[default_sect]
activate = 1
[pkcs11_sect]
module = {SID_PKCS11_PROVIDER}
pkcs11-module-path = {PKCS11_MODULE}
pkcs11-module-quirks = no-deinit
pkcs11-module-load-behavior = early
# our module has no digest mechanisms (as the official library): hash locally
pkcs11-module-block-operations = digest
activate = 1
""")
            keys = {kind: f"store:pkcs11:object={label};type=private" for kind, label in lab.labels.items()}
            return SID_NGINX, {**lab.env, "OPENSSL_CONF": str(cnf)}, keys
        raise ValueError(path)

    def workers(self) -> list[int]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == self.process.pid:
                    found.append(int(stat.parent.name))
            except (OSError, ValueError, IndexError):
                continue
        return found

    def worker_rss_mb(self) -> float:
        """The workers' mean resident size."""
        sizes = []
        for pid in self.workers():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes.append(int(line.split()[1]) / 1024)
        return sum(sizes) / len(sizes)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGQUIT)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


VERSIONS = {"provider": "nginx 1.30.6 / OpenSSL 3.6.5 (sid)", "pkcs11-provider": "nginx 1.30.6 / OpenSSL 3.6.5 (sid), pkcs11-provider 1.3.0",
            "engine": "nginx 1.22.1 / OpenSSL 3.0.19 (Debian 12), libp11 0.4.12", "local 1.30": "nginx 1.30.6 / OpenSSL 3.6.5 (sid)",
            "local 1.22": "nginx 1.22.1 / OpenSSL 3.0.19 (Debian 12)"}
