"""Errors reach nginx's error log on the provider path, with logging as conf/mhsm-pkcs11.conf
ships it: the provider hands the reason to OpenSSL's error queue, which nginx prints in its own
line, so the library's stderr line stays silent for it (one line, not two). The unknown label, the
bad URI and the HSM down are in test_nginx.py; here the credential, and that no secret is logged."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from tests.conftest import ours, with_sample_logging
from tests.provider.conftest import Hsm
from tests.provider.test_nginx import sid_nginx, start

WRONG_SECRET = "not-the-secret-" + os.urandom(6).hex()


@pytest.mark.parametrize("fault, expected", [
    ("no credential", r"no credential configured; set MHSM_CLIENT_ID and MHSM_CLIENT_SECRET"),
    ("wrong secret", r"AADSTS7000215"),
])
def test_a_credential_fault_is_one_line(hsm: Hsm, tmp_path: Path, fault: str, expected: str) -> None:
    env = with_sample_logging(hsm.env, tmp_path)
    if fault == "no credential":
        del env["MHSM_CLIENT_ID"], env["MHSM_CLIENT_SECRET"]
    else:
        env["MHSM_CLIENT_SECRET"] = WRONG_SECRET
    nginx, _, _ = start(dataclasses.replace(hsm, env=env), tmp_path / "nginx",
                        {"EC": f"store:pkcs11:object={hsm.labels['EC']}"}, sid_nginx(), kinds=("EC",))
    assert nginx.process.wait(60) != 0
    stderr, log = nginx.process.stdout.read() if nginx.process.stdout else "", nginx.log.read_text()
    [line] = [line for line in log.splitlines() if "[emerg]" in line]
    assert "cannot load certificate key" in line and re.search(expected, line), line
    assert ours(log) == ours(stderr) == [], "said once, by nginx"
    for secret in (hsm.env["MHSM_CLIENT_SECRET"], WRONG_SECRET):
        assert secret not in log and secret not in stderr
