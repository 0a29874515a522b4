"""`make demo`: nginx serving HTTPS with keys that never leave the (emulated) Managed HSM.

1. start the Managed HSM + Entra ID emulator (real HTTPS on loopback);
2. make an RSA-2048 and an EC P-256 key with `mhsm_p11_create_key`, as the official tool does;
3. make their self-signed certificates with `openssl req -x509`, signing through the mhsm provider;
4. start nginx >= 1.29 (from .cache/sid-nginx, fetched by `make setup`) with
   `ssl_certificate_key "store:pkcs11:object=<label>"`;
5. fetch a page over TLS 1.3 and TLS 1.2 from each server with curl, verifying the certificate;
6. show what the HSM did, and stop everything.

It uses only what a user has: the emulator's mhsm-pkcs11.conf and a service principal.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mhsm_emulator import launcher
from mhsm_emulator.admin_client import EmulatorAdmin

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SID = REPO / ".cache" / "sid-nginx"
NGINX = [str(SID / "run"), str(SID / "root" / "usr" / "sbin" / "nginx")]


def say(step: str, text: str) -> None:
    print(f"{step:10} {text}", flush=True)


def run(*argv: str, env: dict[str, str]) -> str:
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise SystemExit(f"demo: {' '.join(argv[:3])}... failed:\n{result.stdout}{result.stderr}")
    return result.stdout + result.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def openssl_cnf(tmp: Path, conf_file: str) -> Path:
    """conf/openssl-mhsm.cnf with this checkout's provider and the emulator's configuration."""
    text = (REPO / "conf" / "openssl-mhsm.cnf").read_text()
    text = text.replace("/usr/lib/x86_64-linux-gnu/ossl-modules/mhsm.so", str(REPO / "build" / "mhsm.so"))
    text = text.replace("mhsm-conf = /etc/mhsm-pkcs11.conf", f"mhsm-conf = {conf_file}")
    (tmp / "openssl.cnf").write_text(text)
    return tmp / "openssl.cnf"


def nginx_conf(tmp: Path, servers: dict[str, int]) -> Path:
    blocks = "".join(f"""
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {tmp / label}.crt;
        ssl_certificate_key "store:pkcs11:object={label}";
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{ return 200 "hello from nginx; the TLS key {label} never left the HSM\\n"; }}
    }}""" for label, port in servers.items())
    conf = tmp / "nginx.conf"
    conf.write_text(f"user nobody nogroup;\nworker_processes 2;\ndaemon off;\npid {tmp}/nginx.pid;\nenv OPENSSL_CONF;\n"
                    f"events {{}}\nhttp {{\n    access_log off;\n{blocks}\n}}\n")
    return conf


def curl(port: int, cert: Path, tls: str) -> tuple[str, str]:
    """One HTTPS request that verifies the certificate; returns (protocol and cipher, body)."""
    flags = ["--tlsv1.3"] if tls == "1.3" else ["--tlsv1.2", "--tls-max", "1.2"]
    env = {**os.environ, "OPENSSL_CONF": "/dev/null"}  # a plain client: no provider, no HSM
    result = subprocess.run(["curl", "-sS", "-v", *flags, "--cacert", str(cert), f"https://localhost:{port}/"],
                            capture_output=True, text=True, timeout=60, env=env)
    if result.returncode != 0:
        raise SystemExit(f"demo: curl to port {port} failed:\n{result.stderr}")
    session = re.search(r"SSL connection using (\S+ / \S+)", result.stderr)
    return session[1] if session else "?", result.stdout.strip()


def main() -> int:
    if not (SID / "run").exists():
        raise SystemExit(f"demo: {SID} is missing; `make setup` fetches nginx >= 1.29 there")
    with tempfile.TemporaryDirectory(prefix="mhsm-demo-") as name:
        tmp = Path(name)
        emulator = launcher.start(tmp / "hsm")
        nginx = None
        try:
            info = emulator.info
            principal = info["principals"]["keygen"]
            env = {**os.environ, "MHSM_PKCS11_CONF": info["conf_file"], "MHSM_CLIENT_ID": principal["client_id"],
                   "MHSM_CLIENT_SECRET": principal["client_secret"]}
            say("emulator", f"{info['url']}  (HSM '{info['hsm_name']}'; MHSM_PKCS11_CONF={info['conf_file']})")
            for flag, value, label in (("--RSA", "2K", "demoRsaKey"), ("--EC", "P256", "demoEcKey")):
                out = run(str(BIN / "mhsm_p11_create_key"), flag, value, "--label", label, env=env)
                say("key", f"{label}: {out.splitlines()[-1]}")
            env["OPENSSL_CONF"] = str(openssl_cnf(tmp, info["conf_file"]))
            for label in ("demoRsaKey", "demoEcKey"):
                run("openssl", "req", "-new", "-x509", "-key", f"pkcs11:object={label}", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-days", "1",
                    "-out", str(tmp / f"{label}.crt"), env=env)
                say("cert", f"{label}.crt made by `openssl req -x509 -key pkcs11:object={label}` (signed in the HSM)")
            servers = {"demoRsaKey": free_port(), "demoEcKey": free_port()}
            conf = nginx_conf(tmp, servers)
            version = run(*NGINX, "-v", env=env).strip()
            nginx = subprocess.Popen([*NGINX, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            for label, port in servers.items():
                deadline = time.monotonic() + 30
                while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
                    if nginx.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"demo: nginx did not start:\n{(tmp / 'error.log').read_text()}")
                    time.sleep(0.1)
                say("nginx", f'{version.split(": ")[-1]} on :{port} with ssl_certificate_key "store:pkcs11:object={label}"')
            admin = EmulatorAdmin(info["admin_url"], info["admin_secret"])
            before = int(admin.counters()["signs"]["total"])
            for label, port in servers.items():
                for tls in ("1.3", "1.2"):
                    session, body = curl(port, tmp / f"{label}.crt", tls)
                    say("https", f"curl --tlsv{tls} --cacert {label}.crt -> {session}, certificate verified: {body!r}")
            signs = int(admin.counters()["signs"]["total"]) - before
            say("hsm", f"{signs} signatures made in the HSM for the 4 handshakes; no private key left it")
            if signs != 4:
                raise SystemExit(f"demo: expected 4 HSM signatures, the emulator counted {signs}")
            say("result", "OK: nginx served HTTPS with Managed HSM keys through the mhsm provider")
            return 0
        finally:
            if nginx is not None:
                nginx.send_signal(signal.SIGQUIT)  # graceful stop, as `nginx -s quit` sends
                try:
                    nginx.wait(30)
                except subprocess.TimeoutExpired:
                    nginx.kill()
                    nginx.wait()
            emulator.stop(timeout=10)
            shutil.rmtree(tmp / "hsm", ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
