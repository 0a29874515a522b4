"""pycurl is linked to Debian's libcurl and the system OpenSSL, and a real C host signing through
the PKCS#11 module or the provider maps exactly one libssl and one libcrypto. The PyPI wheel would
bring its own libcurl and OpenSSL: a second OpenSSL in nginx's process, next to the one nginx and
the provider use."""

from __future__ import annotations

import re
import ssl
import subprocess
import uuid
from pathlib import Path

import pycurl
import pytest

from mhsm_core.hsm import Library
from pkcs11_compat.loadgen import binary
from tests.conftest import REPO, Emulator
from tests.core.test_tools import env_for
from tests.provider.conftest import openssl_cnf

SYSTEM_LIBS = "/lib/x86_64-linux-gnu/"
PKCS11_MODULE = REPO / "build" / "libmhsm-pkcs11.so"


def test_pycurl_links_the_system_libcurl_and_openssl() -> None:
    module = Path(pycurl.__file__).parent
    [extension] = module.glob("_pycurl*.so") or [Path(pycurl.__file__)]
    linked = dict(re.findall(r"^\s*(\S+) => (\S+)", subprocess.run(["ldd", str(extension)], capture_output=True,
                                                                      text=True, check=True).stdout, re.M))
    assert linked["libcurl.so.4"] == SYSTEM_LIBS + "libcurl.so.4"
    assert linked["libssl.so.3"] == SYSTEM_LIBS + "libssl.so.3"
    assert linked["libcrypto.so.3"] == SYSTEM_LIBS + "libcrypto.so.3"
    assert f"OpenSSL/{ssl.OPENSSL_VERSION.split()[1]}" in pycurl.version


def _mapped_openssl(pid: int) -> dict[str, set[str]]:
    """Every file the process maps whose name is a libssl or libcrypto, by library."""
    found: dict[str, set[str]] = {"libssl": set(), "libcrypto": set()}
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = line.split(maxsplit=5)[-1] if len(line.split()) >= 6 else ""
        name = Path(path).name
        for lib in found:
            if name.startswith(lib + ".so") or name.startswith(lib + "-"):
                found[lib].add(str(Path(path).resolve()))
    return found


@pytest.mark.parametrize("host", ["p11load", "evpload"])
def test_a_signing_c_host_maps_one_openssl(permissive: Emulator, tmp_path: Path, host: str) -> None:
    """While a C host signs (through the module, or through OpenSSL and the provider), its memory map
    holds one libssl and one libcrypto, the system's: pycurl's libcurl uses them too."""
    env = env_for(permissive)
    label = f"link-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        Library.load().hsm(0).keys.create("EC", curve="P-256", private_attributes={"CKA_LABEL": label},
                                          public_attributes={"CKA_LABEL": label})
    if host == "p11load":
        argv = [str(binary("p11load")), str(PKCS11_MODULE), label, "ecdsa", "2", "t3"]
    else:
        env["OPENSSL_CONF"] = str(openssl_cnf(env["MHSM_PKCS11_CONF"], tmp_path / "openssl.cnf"))
        argv = [str(binary("evpload")), f"pkcs11:object={label}", "ecdsa", "2", "t3"]
    before = permissive.admin.counters()["signs"]["total"]
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    try:
        for line in process.stderr:  # "progress DONE ERRORS" every 200 ms once signing runs
            fields = line.split()
            if fields[:1] == ["progress"] and int(fields[1]) > 0:
                break
        else:
            pytest.fail(f"{host} never signed: {process.communicate()}")
        assert int(fields[2]) == 0, line
        mapped = _mapped_openssl(process.pid)
    finally:
        process.communicate(timeout=60)
    assert process.returncode == 0
    system = {lib: {str(Path(SYSTEM_LIBS, f"{lib}.so.3").resolve())} for lib in ("libssl", "libcrypto")}
    assert mapped == system, mapped
    assert permissive.admin.counters()["signs"]["total"] > before
