"""Fixtures for the PKCS#11 module: the built .so, and the environment a host process needs.

Every test here drives `build/libmhsm-pkcs11.so` from a real host (pkcs11-tool, p11tool, p11-kit,
python-pkcs11, PyKCS11, a C harness, nginx with the libp11 engine) against a running emulator.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import REPO, Emulator

MODULE = REPO / "build" / "libmhsm-pkcs11.so"


@dataclass
class P11:
    """What a PKCS#11 host needs to use the module as one principal of one emulator."""

    emulator: Emulator
    module: str
    env: dict[str, str]  # the process environment: MHSM_PKCS11_CONF and the principal
    pin: str  # the same principal as a `<client-id>:<client-secret>` PIN

    def run(self, *argv: str, check: bool = True, timeout: float = 120, **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run a host command with this environment; on failure the output is in the assertion."""
        env = kwargs.pop("env", self.env)
        result = subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=timeout, **kwargs)
        if check:
            assert result.returncode == 0, f"{argv} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        return result

    def tool(self, *args: str, login: bool = False, check: bool = True) -> subprocess.CompletedProcess[str]:
        """pkcs11-tool against the module, logged in with the principal's PIN if asked."""
        extra = ["--login", "--pin", self.pin] if login else []
        return self.run("pkcs11-tool", "--module", self.module, *extra, *args, check=check)

    def signs(self) -> int:
        """The emulator's count of signs so far (every principal, every key)."""
        return int(self.emulator.admin.counters()["signs"]["total"])


def p11_for(emulator: Emulator, principal: str = "keygen") -> P11:
    assert MODULE.exists(), f"{MODULE} is missing: `make setup` builds it"
    who = emulator.principal(principal)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MHSM_", "PYTHON"))}
    env.update(MHSM_PKCS11_CONF=emulator.info["conf_file"], MHSM_CLIENT_ID=who["client_id"],
               MHSM_CLIENT_SECRET=who["client_secret"])
    return P11(emulator, str(MODULE), env, f"{who['client_id']}:{who['client_secret']}")


@pytest.fixture
def p11(permissive: Emulator) -> Iterator[P11]:
    yield p11_for(permissive)


def label(prefix: str = "t") -> str:
    """A label no other test uses (the session emulators are shared)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class Pair:
    """A key pair made through the module: its label, id, and public key (DER SubjectPublicKeyInfo)."""

    label: str
    id_hex: str
    public_der: bytes

    def public_key(self) -> Any:
        from cryptography.hazmat.primitives.serialization import load_der_public_key

        return load_der_public_key(self.public_der)


def make_pair(p11: P11, tmp: Path, key_type: str) -> Pair:
    """`pkcs11-tool --keypairgen` (the module's C_GenerateKeyPair), then the public key read back through it."""
    # A random CKA_ID: other tests make keys in the same emulator, and a shared id would make
    # `--read-object --id` pick whichever key the HSM lists first.
    name, id_hex = label(key_type.split(":")[0].lower()), secrets.token_hex(8)
    p11.tool("--keypairgen", "--key-type", key_type, "--label", name, "--id", id_hex, login=True)
    der = tmp / f"{name}.der"
    p11.tool("--read-object", "--type", "pubkey", "--id", id_hex, "-o", str(der))
    return Pair(name, id_hex, der.read_bytes())


@pytest.fixture(scope="module")
def pairs(permissive: Emulator, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pair]:
    """One RSA-2048 and one EC P-256 pair, shared by a test module."""
    tmp = tmp_path_factory.mktemp("pairs")
    p11 = p11_for(permissive)
    return {"RSA": make_pair(p11, tmp, "rsa:2048"), "EC": make_pair(p11, tmp, "EC:prime256v1")}
