"""The package as an operator gets it: built once per session from a copy of the sources, installed
with apt, and driven with the checkout hidden.

Machine state the tests change, and how it is put back (as root, on the machine that runs them):
  - packages: every package installed during the session (the hosts HAProxy and Apache when they
    were missing, the package's Debian dependencies, the package itself) is purged at the end;
  - services: while apt runs, a policy-rc.d that exits 101 stops it from starting apache2 or
    haproxy (one already there is left as it is);
  - files: any file at a path the package installs that existed before (a hand-copied module) is
    saved and put back after the purge.
The hosts run inside a mount namespace where an empty tmpfs covers the checkout (chmod does not
stop root); only .cache/sid-nginx, the nginx >= 1.29 that is not a Debian 12 package, is mounted
back in. Nothing of the checkout's .venv or build/ is reachable from the hosts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import REPO, Emulator

PACKAGE = "mhsm-tls-offload"
VERSION, UPGRADE_VERSION = "0.1.0", "0.1.0+upgrade1"
HOSTS = ("haproxy", "apache2")  # Debian packages the tests drive that `make setup` does not install
POLICY_RC = Path("/usr/sbin/policy-rc.d")
SID = REPO / ".cache" / "sid-nginx"
APT = ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=300", "-o", "Dpkg::Options::=--force-confdef",
       "-o", "Dpkg::Options::=--force-confold"]
# The mount namespace's script: keep sid's nginx, cover the checkout, put sid's nginx back, run argv.
HIDE = ('set -e; mount --bind "$0" "$1"; mount -t tmpfs -o mode=755 hidden "$2"; mkdir -p "$3"; '
        'mount --move "$1" "$3"; shift 3; exec "$@"')


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure its output is the assertion message."""
    kwargs.setdefault("timeout", 600)
    # Not the emulator's CA that other tests export (pip and apt reach PyPI and Debian with the system's).
    env = {k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE")}
    env["DEBIAN_FRONTEND"] = "noninteractive"
    result = subprocess.run(argv, capture_output=True, text=True, env=kwargs.pop("env", env), **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{argv[:4]} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def installed_packages() -> set[str]:
    out = run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Package}\n"]).stdout
    return {line.split()[1] for line in out.splitlines() if line.startswith("ii")}


def deb_paths(deb: Path) -> tuple[list[str], list[str]]:
    """(files and links, directories) a .deb installs, as absolute paths."""
    files, dirs = [], []
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                path = "/" + member.name.lstrip("./")
                if path != "/":
                    (dirs if member.isdir() else files).append(path)
    return files, dirs


@dataclass
class Machine:
    """What the session found, so that it can be put back."""

    packages: set[str]
    policy_rc_added: bool = False
    saved: dict[str, Path] = field(default_factory=dict)  # path -> its copy

    def apt(self, *args: str) -> None:
        if not POLICY_RC.exists():
            POLICY_RC.write_text("#!/bin/sh\n# mhsm-tls-offload tests: apt starts no service\nexit 101\n")
            POLICY_RC.chmod(0o755)
            self.policy_rc_added = True
        run([*APT, *args])

    def restore(self) -> None:
        added = sorted(installed_packages() - self.packages)
        if added:
            self.apt("purge", *added)
        for path, copy in self.saved.items():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(copy, path)
        if self.policy_rc_added:
            POLICY_RC.unlink()


@dataclass
class Debs:
    version: Path
    upgrade: Path
    build_seconds: float


@pytest.fixture(scope="session")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    assert os.geteuid() == 0, "the packaging tests install a package: run them as root"
    packages = installed_packages()
    assert PACKAGE not in packages, (f"{PACKAGE} is installed on this machine; the packaging tests install and purge "
                                     f"it: remove it first (apt-get purge {PACKAGE})")
    found = Machine(packages)
    try:
        missing = [host for host in HOSTS if host not in packages]
        if missing:
            found.apt("install", "--no-install-recommends", *missing)
        yield found
    finally:
        found.restore()


@pytest.fixture(scope="session")
def debs(machine: Machine, tmp_path_factory: pytest.TempPathFactory) -> Debs:
    """Both versions, built by debian/rules from a copy of the sources (tracked and new files, no
    .venv, build/ or .cache): the build needs nothing that `make setup` made."""
    del machine
    tmp = tmp_path_factory.mktemp("deb")
    source, dist = tmp / "source", tmp / "dist"
    listed = run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO).stdout.split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    start = time.monotonic()
    run(["dpkg-checkbuilddeps"], cwd=source)
    run(["debian/rules", "binary", f"DIST={dist}"], cwd=source)
    seconds = time.monotonic() - start
    run(["debian/rules", "binary", f"DIST={dist}", f"MHSM_DEB_VERSION={UPGRADE_VERSION}"], cwd=source)
    return Debs(dist / f"{PACKAGE}_{VERSION}_amd64.deb", dist / f"{PACKAGE}_{UPGRADE_VERSION}_amd64.deb", seconds)


def hidden(argv: list[str], tmp: Path) -> list[str]:
    """`argv` in a mount namespace where the checkout is an empty tmpfs (but for sid's nginx)."""
    save = tmp / "sid-save"
    save.mkdir(exist_ok=True)
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", HIDE, str(SID), str(save), str(REPO),
            str(SID), *argv]


@dataclass
class Installed:
    """The package installed (version N, an edited configuration, then N+1 over it)."""

    debs: Debs
    machine: Machine
    emulator: Emulator
    env: dict[str, str]  # a host's environment: the principal only (the configuration is /etc's)
    conf_before: bytes
    conf_after_upgrade: bytes
    conf_mode: int
    files: list[str]
    dirs: list[str]


CONF = Path("/etc/mhsm-pkcs11.conf")


@pytest.fixture(scope="session")
def installed(machine: Machine, debs: Debs, permissive: Emulator) -> Iterator[Installed]:
    files, dirs = deb_paths(debs.version)
    for path in files:
        if os.path.lexists(path):
            copy = debs.version.parent / "saved" / path.lstrip("/")
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, copy, follow_symlinks=False)
            machine.saved[path] = copy
    machine.apt("install", str(debs.version))
    # The operator's edit: /etc/mhsm-pkcs11.conf now names the emulator.
    edited = Path(permissive.info["conf_file"]).read_bytes()
    CONF.write_bytes(edited)
    machine.apt("install", str(debs.upgrade))
    who = permissive.principal("keygen")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "MHSM_CLIENT_ID": who["client_id"],
           "MHSM_CLIENT_SECRET": who["client_secret"]}
    try:
        yield Installed(debs, machine, permissive, env, edited, CONF.read_bytes(), CONF.stat().st_mode & 0o777,
                        files, dirs)
    finally:
        if PACKAGE in installed_packages():
            machine.apt("purge", PACKAGE)
