"""The standard tools against the module: OpenSC's pkcs11-tool, GnuTLS's p11tool, and p11-kit's proxy.

Every command must exit 0; signatures made through the module are verified with `openssl`.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import REPO, start_emulator
from tests.pkcs11.conftest import P11, Pair, make_pair, p11_for

P11_KIT_PROXY = "/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so"
MODULES_DIR = Path("/etc/pkcs11/modules")


def test_pkcs11_tool_lists_slots_mechanisms_and_objects(p11: P11, pairs: dict[str, Pair]) -> None:
    slots = p11.tool("-L").stdout
    assert "token label        : localhsm" in slots and "login required" not in slots, "libp11 must not prompt"
    mechanisms = p11.tool("-M").stdout
    for name in ("RSA-PKCS-KEY-PAIR-GEN", "ECDSA-KEY-PAIR-GEN", "RSA-PKCS-PSS", "SHA384-RSA-PKCS-PSS", "ECDSA-SHA512"):
        assert re.search(rf"^\s+{name},", mechanisms, re.M), name
    assert "SHA256," not in mechanisms.replace("ECDSA-SHA256,", "").replace("RSA", ""), "no digest mechanisms"
    # The Entra credential, not a PIN, opens the HSM: both objects are visible without C_Login.
    for login in (False, True):
        listed = p11.tool("-O", login=login).stdout
        assert listed.count(pairs["EC"].label) == 2 and "never extractable" in listed


@pytest.mark.parametrize("kind, key_type, mechanism, extra", [
    ("RSA", "rsa:3072", "SHA256-RSA-PKCS", []),
    ("RSA", "rsa:2048", "SHA384-RSA-PKCS-PSS", ["--salt-len", "-1"]),
    ("EC", "EC:secp521r1", "ECDSA-SHA512", ["--signature-format", "openssl"]),
])
def test_pkcs11_tool_keypairgen_then_sign_verifies_with_openssl(p11: P11, tmp_path: Path, kind: str, key_type: str,
                                                                 mechanism: str, extra: list[str]) -> None:
    pair = make_pair(p11, tmp_path, key_type)
    data, signature, public = tmp_path / "data", tmp_path / "sig", tmp_path / "pub.der"
    data.write_bytes(uuid.uuid4().bytes * 100)
    public.write_bytes(pair.public_der)
    before = p11.signs()
    p11.tool("--sign", "--id", pair.id_hex, "-m", mechanism, "-i", str(data), "-o", str(signature), *extra, login=True)
    assert p11.signs() == before + 1
    digest = "-" + re.search(r"SHA(\d+)", mechanism).group(0).lower()  # type: ignore[union-attr]
    pss = ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest"] if "PSS" in mechanism else []
    verified = p11.run("openssl", "dgst", digest, "-verify", str(public), "-keyform", "DER", *pss,
                       "-signature", str(signature), str(data))
    assert "Verified OK" in verified.stdout


@pytest.fixture
def own_token(tmp_path: Path) -> Iterator[P11]:
    """An emulator of its own: `--test` walks every key and pairs them by CKA_ID, so other tests' keys
    (some made without an id) would be paired wrongly."""
    emulator = start_emulator(tmp_path / "hsm")
    try:
        yield p11_for(emulator)
    finally:
        emulator.stop()


def test_pkcs11_tool_test_suite_passes(own_token: P11, tmp_path: Path) -> None:
    p11 = own_token
    for key_type in ("rsa:2048", "rsa:3072", "EC:prime256v1"):
        make_pair(p11, tmp_path, key_type)
    out = p11.tool("--test", login=True).stdout
    assert "No errors" in out, out
    assert out.count("RSA-PKCS: OK") >= 3 and "C_GenerateRandom" in out


def test_pkcs11_tool_fork_and_threads(p11: P11) -> None:
    forked = p11.tool("--test-fork")
    assert "C_Initialize in forked child" in forked.stdout + forked.stderr
    threads = p11.tool("--test-threads", "IN", "--test-threads", "ILGISLT0", "--test-threads", "ILGISLT0", login=True)
    lines = threads.stdout + threads.stderr
    assert lines.count("C_GetTokenInfo") >= 2 and "returned CKR_OK" in lines
    for rv in re.findall(r"rv:(CKR_\w+)", lines):
        assert rv in ("CKR_OK", "CKR_CRYPTOKI_ALREADY_INITIALIZED"), lines


def test_p11tool_lists_and_test_signs(p11: P11, pairs: dict[str, Pair]) -> None:
    tokens = p11.run("p11tool", "--provider", p11.module, "--list-tokens").stdout
    url = re.search(r"URL: (pkcs11:\S*token=localhsm)", tokens)
    assert url, tokens
    listed = p11.run("p11tool", "--provider", p11.module, "--login", f"--set-pin={p11.pin}", "--list-all",
                     url.group(1)).stdout
    assert pairs["RSA"].label in listed and "Private key (EC/ECDSA-SECP256R1)" in listed
    for kind, expected in (("RSA", "RSA-SHA256"), ("EC", "ECDSA-SHA256")):
        out = p11.run("p11tool", "--provider", p11.module, "--login", f"--set-pin={p11.pin}", "--test-sign",
                      f"{url.group(1)};object={pairs[kind].label}")
        text = out.stdout + out.stderr
        assert f"Signing using {expected}... ok" in text and "Verifying against public key in the token... ok" in text


@pytest.fixture
def registered(p11: P11, tmp_path: Path) -> Iterator[str]:
    """The sample p11-kit module file, installed (with the module's real path) where p11-kit looks."""
    name = f"mhsm-test-{uuid.uuid4().hex[:8]}"
    sample = (REPO / "conf" / "p11-kit" / "mhsm.module").read_text()
    MODULES_DIR.mkdir(parents=True, exist_ok=True)
    target = MODULES_DIR / f"{name}.module"
    target.write_text(sample.replace("/usr/lib/libmhsm-pkcs11.so", p11.module))
    try:
        yield name
    finally:
        target.unlink()


def test_p11_kit_lists_and_proxies_the_module(p11: P11, pairs: dict[str, Pair], registered: str, tmp_path: Path) -> None:
    assert shutil.which("p11-kit"), "p11-kit is installed by make setup"
    modules = p11.run("p11-kit", "list-modules").stdout
    assert re.search(rf"^{registered}:", modules, re.M) and "token: localhsm" in modules
    via_proxy = ["pkcs11-tool", "--module", P11_KIT_PROXY, "--token-label", "localhsm"]
    assert "localhsm" in p11.run(*via_proxy, "-L").stdout
    data, signature, public = tmp_path / "data", tmp_path / "sig", tmp_path / "pub.der"
    data.write_bytes(b"through the p11-kit proxy")
    public.write_bytes(pairs["RSA"].public_der)
    p11.run(*via_proxy, "--login", "--pin", p11.pin, "--sign", "--id", pairs["RSA"].id_hex, "-m", "SHA256-RSA-PKCS",
            "-i", str(data), "-o", str(signature))
    verified = p11.run("openssl", "dgst", "-sha256", "-verify", str(public), "-keyform", "DER", "-signature",
                       str(signature), str(data))
    assert "Verified OK" in verified.stdout


@pytest.mark.parametrize("algorithm, size", [("RSA", ["--bits", "2048"]), ("ECDSA", ["--curve", "secp256r1"])])
def test_p11tool_generates_key_pairs(p11: P11, algorithm: str, size: list[str]) -> None:
    name = f"p11tool-{uuid.uuid4().hex[:8]}"
    out = p11.run("p11tool", "--provider", p11.module, "--login", f"--set-pin={p11.pin}",
                  f"--generate-privkey={algorithm}", *size, "--label", name, "pkcs11:token=localhsm")
    assert "BEGIN PUBLIC KEY" in out.stdout
    listed = p11.tool("-O", "--login", "--pin", p11.pin).stdout
    assert listed.count(f"label:      {name}") == 2, "a private and a public object"


def test_hostile_python_environment_is_ignored(p11: P11) -> None:
    """The module never reads PYTHONHOME/PYTHONPATH: a broken value must not break (or exit) the host."""
    env = {**p11.env, "PYTHONHOME": "/nonexistent", "PYTHONPATH": "/nonexistent", "PYTHONSTARTUP": "/nonexistent"}
    result = p11.run("pkcs11-tool", "--module", p11.module, "-L", env=env)
    assert "token label        : localhsm" in result.stdout
