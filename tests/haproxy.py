"""HAProxy 2.6 (Debian 12) as a test and benchmark host: master-worker, `nbthread 1`, one TLS
frontend per HSM key (a crt file holding the certificate and the PEM-wrapped URI, as
hosts-hotpath-packaging §1 has it) answering every HTTP request itself, with or without
`ssl-mode-async`. Shared by tests/provider/test_haproxy_async.py and bench/haproxy_async.py."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.nginx import free_port

HAPROXY = "/usr/sbin/haproxy"
POOL_THREAD = "mhsm-sign"  # the name the provider gives its signing threads


def crt_file(certificate_pem: bytes, uri: str, uri2pem: Path, path: Path) -> Path:
    """HAProxy's `crt` file: the certificate, then the key as mhsm_p11_uri2pem wraps its URI."""
    wrapped = subprocess.run([str(uri2pem), uri], check=True, capture_output=True, timeout=60).stdout
    path.write_bytes(certificate_pem + wrapped)
    return path


class Haproxy:
    """A running HAProxy master and its worker; `ports[kind]` serves the crt file `crts[kind]`."""

    def __init__(self, directory: Path, crts: dict[str, Path], env: dict[str, str], *, async_mode: bool) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir, self.log = directory, directory / "haproxy.log"
        self.ports = {kind: free_port() for kind in crts}
        frontends = "".join(f"""
frontend fe_{kind.lower()}
    bind 127.0.0.1:{self.ports[kind]} ssl crt {crt}
    http-request return status 200 content-type text/plain string ok
""" for kind, crt in crts.items())
        self.conf = directory / "haproxy.cfg"
        self.conf.write_text(f"""global
    nbthread 1
    maxconn 2000
    hard-stop-after 30s
{"    ssl-mode-async" if async_mode else ""}
    log stderr format short local0 notice
defaults
    mode http
    log global
    option dontlognull
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
{frontends}""")
        self.process = subprocess.Popen([HAPROXY, "-W", "-db", "-f", str(self.conf)], env=env,
                                        stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        self.wait_for_worker()

    def workers(self) -> set[int]:
        """The master's children (more than one just after a reload, while the old one drains)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return {int(pid) for pid in children.read_text().split()}
        except OSError:
            return set()

    def loads(self) -> int:
        """How many times the master has loaded its configuration (start-up, then each reload)."""
        return self.log.read_text().count("Loading success.")

    def wait_for_worker(self, not_in: frozenset[int] = frozenset(), loads: int = 1) -> int:
        """The worker serving now (one not in `not_in`), once the master has loaded the configuration
        `loads` times and every port accepts connections."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"haproxy exited: {self.log.read_text()}"
            fresh = self.workers() - not_in
            if fresh and self.loads() >= loads and all(_accepts(port) for port in self.ports.values()):
                return max(fresh)
            time.sleep(0.1)
        raise AssertionError(f"haproxy did not start: {self.log.read_text()}")

    def reload(self) -> int:
        """SIGUSR2: the master re-executes, loads the keys again and forks a new worker; the old one
        finishes its connections. Returns the new worker, once the master has finished loading (a
        signal sent before that would not be a reload of its own)."""
        old, loads = frozenset(self.workers()), self.loads()
        self.process.send_signal(signal.SIGUSR2)
        return self.wait_for_worker(old, loads + 1)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def threads(pid: int) -> dict[str, int]:
    """The process's threads by name."""
    names: dict[str, int] = {}
    for comm in Path(f"/proc/{pid}/task").glob("*/comm"):
        try:
            name = comm.read_text().strip()
        except OSError:
            continue
        names[name] = names.get(name, 0) + 1
    return names


def eventfds(pid: int) -> int:
    """How many eventfds the process holds open (the provider's wait fds are its only ones)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += fd.readlink() == Path("anon_inode:[eventfd]")
        except OSError:
            continue
    return count
