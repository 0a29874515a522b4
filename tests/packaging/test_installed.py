"""The installed package, driven by the hosts Debian 12 operators run, with the checkout hidden.

Version N is installed, /etc/mhsm-pkcs11.conf edited to name the emulator (the operator's edit),
N+1 installed over it; every host then uses the installed files only: the shipped samples as they
are (the OpenSSL configurations unchanged; the host configurations with only ports and file names
replaced), the keys made with the installed mhsm_p11_create_key, and the principal from the
environment. Each host serves TLS 1.3 and 1.2 with an RSA and an EC key; every handshake is
verified against its certificate and the emulator counts exactly one sign per handshake. The last
test purges the package and finds nothing of it left.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

from tests.conftest import REPO
from tests.nginx import CASES, QUIET, LocalCA, Nginx, free_port, handshake, write_conf
from tests.packaging.conftest import CONF, PACKAGE, SID, UPGRADE_VERSION, Installed, hidden, installed_packages, run

DOC = Path("/usr/share/doc") / PACKAGE
MODULE = Path("/usr/lib/libmhsm-pkcs11.so")
PROVIDER = Path("/usr/lib/x86_64-linux-gnu/ossl-modules/mhsm.so")
TOOLS = ("mhsm_p11_create_key", "mhsm_p11_list_keys", "mhsm_p11_validate_config_file", "mhsm_p11_uri2pem",
         "mhsm_p11_bench")
# default first: the core's own local crypto (Debian's cryptography uses this libcrypto) must not
# be offered mhsm's key managers, which a first-loaded mhsm would be for every RSA/EC key.
PROVIDER_ARGS = ["-provider", "default", "-provider", "mhsm"]


@dataclass
class Keys:
    """An RSA and an EC key made with the installed tool, their certificates and URI PEM files."""

    labels: dict[str, str]
    public: dict[str, Any]
    certs: dict[str, Path]
    ders: dict[str, bytes]
    uri_pems: dict[str, Path]
    ca_file: Path
    tmp: Path


@pytest.fixture(scope="module")
def keys(installed: Installed, tmp_path_factory: pytest.TempPathFactory) -> Keys:
    tmp = tmp_path_factory.mktemp("pkg-keys")
    ca = LocalCA(tmp)
    found = Keys({}, {}, {}, {}, {}, ca.file, tmp)
    for kind, args in (("RSA", ["--RSA", "2K"]), ("EC", ["--EC", "P256"])):
        label = found.labels[kind] = f"pkg-{kind.lower()}-{os.urandom(4).hex()}"
        run(hidden(["mhsm_p11_create_key", *args, "--label", label], tmp), env=installed.env)
        pem = run(hidden(["openssl", "pkey", *PROVIDER_ARGS, "-in", f"pkcs11:object={label}", "-pubout"], tmp),
                  env=installed.env).stdout
        found.public[kind] = serialization.load_pem_public_key(pem.encode())
        found.uri_pems[kind] = tmp / f"{kind}-uri.pem"
        run(hidden(["mhsm_p11_uri2pem", f"pkcs11:object={label}", "-o", str(found.uri_pems[kind])], tmp),
            env=installed.env)
        found.certs[kind] = tmp / f"{kind}.crt"
        found.ders[kind] = ca.issue(found.public[kind], found.certs[kind]).public_bytes(serialization.Encoding.DER)
    os.chmod(tmp, 0o700)  # the hosts' workers may not read what their master read
    return found


def signs(installed: Installed) -> int:
    return int(installed.emulator.admin.counters()["signs"]["total"])


def serve_cases(installed: Installed, keys: Keys, ports: dict[str, int], check: Any = None) -> int:
    """Every case once per port; each handshake verified and counted as one HSM sign."""
    before = signs(installed)
    for kind, version in CASES:
        cert, response = handshake(ports[kind], kind, version, keys.ca_file, "localhost")
        assert cert == keys.ders[kind], f"{kind} served another certificate"
        assert response.startswith(("HTTP/1.1 200", "HTTP/1.0 200")), response[:200]
        if check:
            check(response)
    assert signs(installed) - before == len(CASES), "one HSM sign per handshake"
    return len(CASES)


def children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(stat.parent.name))
        except (OSError, IndexError):
            continue
    return found


def uid_of(pid: int) -> int:
    """The real uid of `pid`; -1 if it has just exited."""
    try:
        line = next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith("Uid:"))
    except OSError:
        return -1
    return int(line.split()[1])


def openssl_copies(pid: int) -> set[str]:
    """The mapped files that carry OpenSSL's own code (its providers' source paths), other than
    OpenSSL's loadable modules: one is the system's libcrypto; the cryptography wheel would add its own."""
    mapped = {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
              if line.split()[-1].startswith("/") and "/ossl-modules/" not in line}
    return {path for path in mapped if os.path.isfile(path) and b"providers/implementations/" in Path(path).read_bytes()}


def wait_for_port(port: int, process: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{what} exited: {process.communicate()[0][-3000:]}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{what} did not listen on {port}")


def start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """A host in a session of its own, so that stop() can end its children too."""
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def stop(process: subprocess.Popen[str], sig: int) -> str:
    """Ask the host to stop (`sig`), then end what is left of its process group; its output."""
    process.send_signal(sig)
    try:
        return process.communicate(timeout=20)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.communicate()[0]


# --- the package itself ---------------------------------------------------------------------------


def test_upgrade_keeps_the_edited_configuration(installed: Installed) -> None:
    assert run(["dpkg-query", "-W", "-f", "${Version}", PACKAGE]).stdout == UPGRADE_VERSION
    assert installed.conf_after_upgrade == installed.conf_before, "the operator's /etc/mhsm-pkcs11.conf survived"
    assert installed.conf_mode == 0o600


def test_layout_and_no_build_path(installed: Installed) -> None:
    """The installed layout, and no path of the build machine in any installed file."""
    expected = [MODULE, PROVIDER, *(Path("/usr/bin") / t for t in TOOLS), CONF, DOC / "p11-kit" / "mhsm.module",
                *(DOC / n for n in ("openssl-mhsm.cnf", "openssl-engine.cnf", "nginx-engine.conf", "nginx-uri-pem.conf",
                                    "nginx.conf", "haproxy.cfg", "apache-mhsm.conf", "nginx.service.d-mhsm.conf"))]
    assert [str(p) for p in expected if str(p) not in installed.files] == []
    assert not Path("/etc/pkcs11/modules/mhsm.module").exists(), "the p11-kit module is a sample, not activated"
    build_paths = (str(REPO).encode(), str(installed.debs.version.parent.parent / "source").encode(), b"/.venv/")
    leaks = [path for path in installed.files if os.path.isfile(path) and not os.path.islink(path)
             and any(b in Path(path).read_bytes() for b in build_paths)]
    assert leaks == []


def test_tools_with_the_checkout_hidden(installed: Installed, keys: Keys) -> None:
    """Inside the namespace the checkout is empty; the installed tools list the keys they made."""
    assert run(hidden(["ls", "-A", str(REPO)], keys.tmp)).stdout.split() == [".cache"]
    listed = run(hidden(["mhsm_p11_list_keys", "--json"], keys.tmp), env=installed.env).stdout
    assert all(label in listed for label in keys.labels.values())
    out = run(hidden(["mhsm_p11_validate_config_file", "--file", str(CONF), "--check-connection"], keys.tmp),
              env=installed.env)
    assert out.returncode == 0


def test_bench_tool(installed: Installed, keys: Keys) -> None:
    """mhsm_p11_bench signs through the installed module with the packaged load generator."""
    before = signs(installed)
    out = run(hidden(["mhsm_p11_bench", "--label", keys.labels["EC"], "--mechanism", "ecdsa", "--threads", "2",
                      "--count", "6", "--no-sweep"], keys.tmp), env=installed.env).stdout
    assert "6 signatures" in out and "0 errors" in out, out
    assert signs(installed) - before == 6


def test_openssl_cli_finds_the_provider_by_name(installed: Installed, keys: Keys) -> None:
    """`openssl req` and `openssl pkeyutl` with `-provider mhsm` and no path; each signature verified."""
    before, tmp = signs(installed), keys.tmp
    data = tmp / "data"
    data.write_bytes(b"signed in the HSM through the installed provider")
    for kind, label in keys.labels.items():
        cert = tmp / f"{kind}-self.crt"
        run(hidden(["openssl", "req", *PROVIDER_ARGS, "-new", "-x509", "-key", f"pkcs11:object={label}",
                    "-subj", f"/CN={label}", "-out", str(cert)], tmp), env=installed.env)
        issued = x509.load_pem_x509_certificate(cert.read_bytes())
        issued.verify_directly_issued_by(issued)
        assert issued.public_key() == keys.public[kind]
        sig = tmp / f"{kind}.sig"
        run(hidden(["openssl", "pkeyutl", *PROVIDER_ARGS, "-sign", "-rawin", "-digest", "sha256",
                    "-inkey", f"pkcs11:object={label}", "-in", str(data), "-out", str(sig)], tmp), env=installed.env)
        if kind == "EC":
            keys.public[kind].verify(sig.read_bytes(), data.read_bytes(), ec.ECDSA(hashes.SHA256()))
        else:
            keys.public[kind].verify(sig.read_bytes(), data.read_bytes(), padding.PKCS1v15(), hashes.SHA256())
    assert signs(installed) - before == 4


# --- nginx ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["engine", "uri-pem", "store"])
def test_nginx(installed: Installed, keys: Keys, tmp_path: Path, path: str) -> None:
    """Debian 12's nginx 1.22 with the official engine line and with a PEM-wrapped URI; sid's
    nginx >= 1.29 with `store:`. 4 workers as www-data; the installed OpenSSL configurations as shipped."""
    key_for = {"engine": lambda kind: f"engine:pkcs11:pkcs11:object={keys.labels[kind]};type=private;pin-value=",
               "uri-pem": lambda kind: str(keys.uri_pems[kind]),
               "store": lambda kind: f"store:pkcs11:object={keys.labels[kind]}"}[path]
    ports = {kind: free_port() for kind in keys.labels}
    conf = write_conf(tmp_path, {k: (ports[k], keys.certs[k], key_for(k)) for k in keys.labels}, ("OPENSSL_CONF",))
    conf.write_text("user www-data;\n" + conf.read_text())
    cnf = DOC / ("openssl-engine.cnf" if path == "engine" else "openssl-mhsm.cnf")
    binary = [str(SID / "run"), str(SID / "root" / "usr" / "sbin" / "nginx")] if path == "store" else ["/usr/sbin/nginx"]
    os.chmod(tmp_path, 0o700)
    nginx = Nginx(tmp_path, conf, {**installed.env, "OPENSSL_CONF": str(cnf)}, hidden(binary, tmp_path))
    try:
        workers = nginx.wait_for_workers()
        assert nginx.users() == {pwd.getpwnam("www-data").pw_uid}
        serve_cases(installed, keys, ports)
        if path != "store":  # sid's nginx brings sid's libcrypto: one OpenSSL there too, but not the system's
            assert {os.path.realpath(p) for w in workers for p in openssl_copies(w)} == \
                {os.path.realpath("/usr/lib/x86_64-linux-gnu/libcrypto.so.3")}, "one OpenSSL in the process"
    finally:
        nginx.stop()
    log = nginx.log.read_text()
    assert not any(f"[{level}]" in log for level in QUIET), log


# --- HAProxy --------------------------------------------------------------------------------------


def haproxy_cfg(tmp: Path, keys: Keys, ports: dict[str, int]) -> Path:
    """The shipped sample's global and defaults sections as they are, but for the stats socket's
    path; one frontend per key with the certificate + URI PEM the sample describes."""
    sample = (DOC / "haproxy.cfg").read_text()
    head = sample.split("\nfrontend ")[0].replace("/run/haproxy/admin.sock", str(tmp / "admin.sock"))
    frontends = []
    for kind in keys.labels:
        pem = tmp / f"{kind}.pem"
        pem.write_text(keys.certs[kind].read_text() + keys.uri_pems[kind].read_text())
        frontends.append(f"\nfrontend {kind.lower()}\n\tbind 127.0.0.1:{ports[kind]} ssl crt {pem}\n"
                         f"\thttp-request return status 200 content-type text/plain string ok\n")
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(head + "".join(frontends))
    return cfg


def test_haproxy_sample_has_debians_global_section() -> None:
    """Every line of the global section Debian ships is in the sample's, unchanged."""
    shipped = Path("/usr/share/doc/haproxy/examples/haproxy.cfg")
    source = shipped if shipped.exists() else Path("/etc/haproxy/haproxy.cfg")
    def global_lines(text: str) -> list[str]:
        section = text.split("\nglobal\n", 1)[1] if not text.startswith("global") else text.split("\n", 1)[1]
        return [l.strip() for l in section.split("\ndefaults")[0].splitlines() if l.strip() and not l.strip().startswith("#")]
    ours = global_lines((DOC / "haproxy.cfg").read_text())
    assert [line for line in global_lines(source.read_text()) if line not in ours] == []


def test_haproxy(installed: Installed, keys: Keys, tmp_path: Path) -> None:
    """Debian's HAProxy 2.6: chroot /var/lib/haproxy, user haproxy, 2 threads, `ssl-provider mhsm`."""
    ports = {kind: free_port() for kind in keys.labels}
    cfg = haproxy_cfg(tmp_path, keys, ports)
    os.chmod(tmp_path, 0o700)
    process = start(hidden(["/usr/sbin/haproxy", "-db", "-f", str(cfg)], tmp_path), installed.env)
    try:
        for port in ports.values():
            wait_for_port(port, process, "haproxy")
        assert os.readlink(f"/proc/{process.pid}/root") == "/var/lib/haproxy"
        assert uid_of(process.pid) == pwd.getpwnam("haproxy").pw_uid
        assert len(list(Path(f"/proc/{process.pid}/task").iterdir())) >= 2
        serve_cases(installed, keys, ports)
    finally:
        output = stop(process, signal.SIGUSR1)  # soft stop
    # Debian's `log /dev/log` lines stay; with no syslog daemon here, their one ALERT is expected.
    alerts = [l for l in output.splitlines() if "ALERT" in l and "failed in logger" not in l]
    assert alerts == [], output


# --- Apache ---------------------------------------------------------------------------------------


def apache_conf(tmp: Path, keys: Keys, ports: dict[str, int]) -> Path:
    """The event MPM, mod_ssl, www-data, and the shipped virtual host once per key (its ports and
    file names replaced). The page served is the package's own copyright file."""
    sample = (DOC / "apache-mhsm.conf").read_text()
    vhost = sample[sample.index("<VirtualHost"):]
    hosts = "".join(vhost.replace("*:443", f"127.0.0.1:{ports[kind]}")
                    .replace("/etc/ssl/certs/tls.example.com.crt", str(keys.certs[kind]))
                    .replace("/etc/ssl/private/tlsKey-uri.pem", str(keys.uri_pems[kind])) for kind in keys.labels)
    modules = "/usr/lib/apache2/modules"
    conf = tmp / "apache2.conf"
    conf.write_text(f"""ServerRoot {tmp}
ServerName localhost
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule ssl_module {modules}/mod_ssl.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule dir_module {modules}/mod_dir.so
User www-data
Group www-data
PidFile {tmp}/apache2.pid
Mutex file:{tmp} default
ErrorLog {tmp}/error.log
LogLevel warn
DocumentRoot {DOC}
DirectoryIndex copyright
<Directory {DOC}>
    Require all granted
</Directory>
{''.join(f'Listen 127.0.0.1:{ports[kind]}{chr(10)}' for kind in keys.labels)}{hosts}""")
    return conf


def test_apache(installed: Installed, keys: Keys, tmp_path: Path) -> None:
    """Debian's Apache 2.4, event MPM, children as www-data, SSLCertificateKeyFile on a PEM-wrapped
    URI; the same again after a graceful restart (the parent loads the keys again)."""
    ports = {kind: free_port() for kind in keys.labels}
    conf = apache_conf(tmp_path, keys, ports)
    os.chmod(tmp_path, 0o700)
    env = {**installed.env, "OPENSSL_CONF": str(DOC / "openssl-mhsm.cnf")}
    process = start(hidden(["/usr/sbin/apache2", "-f", str(conf), "-DFOREGROUND"], tmp_path), env)
    try:
        for port in ports.values():
            wait_for_port(port, process, "apache2")
        first = new_children(process.pid, set())
        deadline = time.monotonic() + 10  # a child just forked is root until it drops to www-data
        while {uid_of(pid) for pid in first} != {pwd.getpwnam("www-data").pw_uid}:
            assert time.monotonic() < deadline, {pid: uid_of(pid) for pid in first}
            time.sleep(0.1)
            first = children(process.pid)
        serve_cases(installed, keys, ports, assert_page)
        process.send_signal(signal.SIGUSR1)  # apache2ctl graceful
        new_children(process.pid, first)
        serve_cases(installed, keys, ports, assert_page)
    finally:
        stop(process, signal.SIGWINCH)  # graceful-stop
    log = (tmp_path / "error.log").read_text()
    assert not re.search(r":(error|crit|alert|emerg)\]", log), log


def new_children(pid: int, old: set[int]) -> set[int]:
    """Wait until `pid` has children that are not in `old`; those."""
    deadline = time.monotonic() + 30
    while not (found := children(pid) - old):
        assert time.monotonic() < deadline, f"no new children of {pid}"
        time.sleep(0.1)
    return found


def assert_page(response: str) -> None:
    assert "mhsm-tls-offload" in response, response[:300]


# --- purge ----------------------------------------------------------------------------------------


def test_purge_removes_everything(installed: Installed) -> None:
    """Last: `apt-get purge` leaves no file of the package, no configuration and no log directory."""
    installed.machine.apt("purge", PACKAGE)
    assert PACKAGE not in installed_packages()
    left = [p for p in installed.files if os.path.lexists(p)]
    own_dirs = [d for d in installed.dirs if f"/{PACKAGE}" in d and os.path.exists(d)]
    assert left == [] and own_dirs == []
    assert not CONF.exists() and not Path("/var/log/mhsm-pkcs11").exists()
