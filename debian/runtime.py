#!/usr/bin/python3
"""The package's Python runtime, derived from the one list there is: pyproject.toml's
[project].dependencies (what the core and the front ends import).

Every distribution that list pulls in comes from one of two places:
  - Debian, as a Depends line, for those in DEBIAN below: the compiled ones that must link the
    system's libraries (cryptography -> the system libcrypto, so a host has one OpenSSL), cffi's
    backend (the shims are generated with Debian's python3-cffi) and pure ones whose bookworm
    version is new enough. The build fails if a bookworm version no longer satisfies a requirement.
  - PyPI, pinned by this build's resolution, into the private directory PRIVATE, for the rest
    (bookworm's azure-identity 1.13.0b2 lacks get_token_info and disable_instance_discovery;
    requests 2.28 lacks the adapter hook credentials.py uses, urllib3 1.26 its IP-host handling). Those in FROM_SOURCE are compiled
    here against Debian's libraries instead of taking PyPI's binary wheel.
docs/install.md says why the line is drawn there.

Commands (run by debian/rules with Debian's /usr/bin/python3):
  runtime.py embed-args                -> the shims' --python-home/--python-path build options
  runtime.py resolve OUT               -> OUT/depends (the ${mhsm:Depends} value) and OUT/private.txt
  runtime.py install OUT DIR           -> installs OUT/private.txt into DIR (compiled, as the package ships it)
  runtime.py scripts DIR               -> writes the [project.scripts] tools into DIR
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
PYTHON = "/usr/bin/python3.11"
PRIVATE = "/usr/lib/mhsm-tls-offload"
DEBIAN_SITE = "/usr/lib/python3/dist-packages"
# The embedded interpreter's sys.path, and the tools': Debian's standard library, the private
# directory (it wins over a python3-* package of the same name), then Debian's packages. Not
# /usr/local: what an administrator pip-installs there must not change what a TLS server runs.
SYS_PATH = ("/usr/lib/python3.11", "/usr/lib/python3.11/lib-dynload", PRIVATE, DEBIAN_SITE)

DEBIAN = {
    "cryptography": "python3-cryptography",
    "cffi": "python3-cffi-backend",
    "pyyaml": "python3-yaml",
    "pyjwt": "python3-jwt",
    "idna": "python3-idna",
    "charset-normalizer": "python3-charset-normalizer",
    "certifi": "python3-certifi",
    "six": "python3-six",
    "tqdm": "python3-tqdm",
}
# Taken from Debian whatever version requirement says: Debian's certifi is patched to return the
# system's CA bundle (/etc/ssl/certs, kept current by ca-certificates), not a copy of its own.
ANY_VERSION = {"certifi"}
# PyPI's pycurl wheel bundles its own libcurl and OpenSSL (a second OpenSSL in the host), and
# bookworm's python3-pycurl is linked to libcurl3-gnutls: built here against libcurl4-openssl-dev.
FROM_SOURCE = {"pycurl"}
# The tools that belong to the emulator, not to the package.
NOT_SHIPPED_SCRIPTS = {"mhsm-emulator"}


def project() -> dict:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def resolve_with_pip(roots: list[str], report: Path) -> dict[str, dict]:
    """pip's resolution of `roots` from PyPI alone (Debian's installed packages ignored): name ->
    its report entry (version and Requires-Dist)."""
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
                    "--no-warn-conflicts", "--report", str(report), *roots], check=True,
                   env={**os.environ, "PIP_BREAK_SYSTEM_PACKAGES": "1"})
    entries = json.loads(report.read_text())["install"]
    return {canonicalize_name(e["metadata"]["name"]): e["metadata"] for e in entries}


def applies(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in (extras or {""}))


def debian_version(name: str) -> str:
    for dist in importlib.metadata.distributions(path=[DEBIAN_SITE]):
        if canonicalize_name(dist.metadata["Name"]) == name:
            return dist.version
    raise SystemExit(f"runtime.py: {DEBIAN[name]} is not installed: it is in debian/control's Build-Depends "
                     f"(apt-get install {DEBIAN[name]})")


def split(roots: list[str], resolved: dict[str, dict]) -> tuple[list[str], dict[str, str]]:
    """Walk the requirements from the roots: (Debian packages, {private distribution: version}).
    A Debian package's own dependencies are Debian's business, so the walk stops there."""
    debian: dict[str, list[tuple[Requirement, str]]] = {}
    private: dict[str, str] = {}
    queue = [(Requirement(r), "pyproject.toml", set()) for r in roots]
    seen: set[tuple[str, frozenset[str]]] = set()
    while queue:
        requirement, wanted_by, extras = queue.pop()
        if not applies(requirement, extras):
            continue
        name = canonicalize_name(requirement.name)
        if name in DEBIAN:
            debian.setdefault(name, []).append((requirement, wanted_by))
            continue
        if (name, frozenset(requirement.extras)) in seen:
            continue
        seen.add((name, frozenset(requirement.extras)))
        metadata = resolved[name]
        private[name] = metadata["version"]
        queue += [(Requirement(r), name, set(requirement.extras)) for r in metadata.get("requires_dist", [])]
    for name, wants in sorted(debian.items()):
        version = debian_version(name)
        for requirement, wanted_by in wants:
            if name not in ANY_VERSION and not requirement.specifier.contains(version, prereleases=True):
                raise SystemExit(f"runtime.py: bookworm's {DEBIAN[name]} {version} does not satisfy "
                                 f"'{requirement}' ({wanted_by}): take {name} from PyPI (drop it from DEBIAN)")
    return sorted(DEBIAN[n] for n in debian), private


def resolve(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    roots = project()["dependencies"]
    debian, private = split(roots, resolve_with_pip(roots, out / "pip-report.json"))
    (out / "depends").write_text(", ".join(debian) + "\n")
    (out / "private.txt").write_text("".join(f"{n}=={v}\n" for n, v in sorted(private.items())))
    print(f"Debian: {', '.join(debian)}\nprivate: {', '.join(f'{n} {v}' for n, v in sorted(private.items()))}")


def install(out: Path, target: Path) -> None:
    """The private distributions, byte-compiled with unchecked hashes: a packaged file never changes,
    and a host running as root must not write __pycache__ files that dpkg does not know."""
    pins = (out / "private.txt").read_text().split()
    binary = [p for p in pins if canonicalize_name(p.split("==")[0]) not in FROM_SOURCE]
    source = [p for p in pins if p not in binary]
    env = {**os.environ, "PIP_BREAK_SYSTEM_PACKAGES": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    common = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--ignore-installed", "--no-compile",
              "--target", str(target)]
    if binary:
        subprocess.run([*common, "--only-binary", ":all:", *binary], check=True, env=env)
    if source:
        subprocess.run([*common, "--no-binary", ",".join(sorted(FROM_SOURCE)), *source], check=True, env=env)
    for leftover in ("bin", "share"):  # the private distributions' console scripts and docs: not shipped
        shutil.rmtree(target / leftover, ignore_errors=True)


def scripts(target: Path) -> None:
    """One file per tool: the packaged interpreter, isolated (-I: no PYTHON* variables, no user site,
    not the current directory), with the embedded shims' sys.path."""
    target.mkdir(parents=True, exist_ok=True)
    for name, entry in project()["scripts"].items():
        if name in NOT_SHIPPED_SCRIPTS:
            continue
        module, function = entry.split(":")
        path = target / name
        path.write_text(f"#!{PYTHON} -I\n# {name}, from the mhsm-tls-offload package.\nimport sys\n\n"
                        f"sys.path[:] = {list(SYS_PATH)!r}\nfrom {module} import {function}\n\n"
                        f"sys.exit({function}())\n")
        path.chmod(0o755)


def embed_args() -> None:
    print(" ".join(["--python-home", "/usr", *(f"--python-path={p}" for p in SYS_PATH)]))


def main() -> None:
    command, *args = sys.argv[1:] or ["help"]
    if command == "embed-args":
        embed_args()
    elif command == "resolve":
        resolve(Path(args[0]))
    elif command == "install":
        install(Path(args[0]), Path(args[1]))
    elif command == "scripts":
        scripts(Path(args[0]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
