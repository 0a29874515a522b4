"""Fixtures for the provider: keys made with mhsm_p11_create_key in an emulator, and the environment
and openssl.cnf (the shipped sample, pointed at the build) a host process needs to use them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from mhsm_core.hsm import Library
from tests.conftest import REPO, Emulator

PROVIDER = REPO / "build" / "mhsm.so"
BIN = Path(sys.executable).parent


@dataclass
class Hsm:
    """An emulator, a principal's environment, and two keys made with mhsm_p11_create_key."""

    emulator: Emulator
    env: dict[str, str]
    labels: dict[str, str]  # "RSA"/"EC" -> label
    public_keys: dict[str, Any]  # "RSA"/"EC" -> the key's public part, for its certificate

    def signs(self) -> int:
        return int(self.emulator.admin.counters()["signs"]["total"])


def short_conf(emulator: Emulator, conf: Path) -> None:
    """The emulator's mhsm-pkcs11.conf with short timeouts, so that faults end fast."""
    document = json.loads(Path(emulator.info["conf_file"]).read_text())
    document["options"].update(ConnectTimeout=2, RequestTimeout=5, MaxRetries=2, RetryBudget=3)
    conf.write_text(json.dumps(document))


def make_hsm(emulator: Emulator, conf: Path, tag: str) -> Hsm:
    """Two keys in `emulator`, and a principal's environment for it with `conf` (see short_conf)."""
    short_conf(emulator, conf)
    who = emulator.principal("keygen")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MHSM_", "PYTHON", "OPENSSL_")) and k not in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")}
    env.update(MHSM_PKCS11_CONF=str(conf), MHSM_CLIENT_ID=who["client_id"], MHSM_CLIENT_SECRET=who["client_secret"])
    labels = {}
    for kind, args in (("RSA", ["--RSA", "2K"]), ("EC", ["--EC", "P256"])):
        labels[kind] = f"prov-{tag}-{kind.lower()}-{os.urandom(4).hex()}"
        subprocess.run([str(BIN / "mhsm_p11_create_key"), *args, "--label", labels[kind]], env=env, check=True,
                       capture_output=True, timeout=60)
    with mock.patch.dict(os.environ, env):  # the same principal and configuration as the hosts
        hsm = Library.load().hsm(0)
        public_keys = {kind: hsm.keys.find(label=label)[0].public_key for kind, label in labels.items()}
    return Hsm(emulator, env, labels, public_keys)


def provider_cnf(hsm: Hsm, path: Path) -> Path:
    """conf/openssl-mhsm.cnf as shipped, pointed at the built provider and the emulator's conf."""
    return openssl_cnf(hsm.env["MHSM_PKCS11_CONF"], path)


def openssl_cnf(mhsm_conf: str, path: Path) -> Path:
    """conf/openssl-mhsm.cnf as shipped, pointed at the built provider and the configuration `mhsm_conf`."""
    assert PROVIDER.exists(), f"{PROVIDER} is missing: `make setup` builds it"
    text = (REPO / "conf" / "openssl-mhsm.cnf").read_text()
    for old, new in (("/usr/lib/x86_64-linux-gnu/ossl-modules/mhsm.so", str(PROVIDER)),
                     ("mhsm-conf = /etc/mhsm-pkcs11.conf", f"mhsm-conf = {mhsm_conf}")):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def hsm(permissive: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Hsm:
    return make_hsm(permissive, tmp_path_factory.mktemp("provider-hsm") / "mhsm-pkcs11.conf", "ok")


def openssl_env(hsm: Hsm, cnf: Path) -> dict[str, str]:
    """The environment of a host that loads the provider through `cnf`."""
    return {**hsm.env, "OPENSSL_CONF": str(cnf)}
