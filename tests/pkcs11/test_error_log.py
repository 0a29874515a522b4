"""Errors reach nginx's error log on the engine path, with logging as conf/mhsm-pkcs11.conf ships
it. libp11 passes on only a return code (`PKCS#11 module::Function failed`), so the module writes
the reason to stderr, one line naming the cause and the fix, and nginx logs its stderr: a worker's
and a reloading master's go to the error log, a first start's (before nginx has opened its log) to
nginx's own stderr, i.e. the terminal or systemd's journal. Only `SendErrorsToStdErr: false` stops it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from tests.conftest import ours, start_emulator, with_sample_logging
from tests.nginx import CASES, free_port, handshake
from tests.pkcs11.conftest import P11, make_pair, p11_for
from tests.pkcs11.test_nginx_engine import start


def sample_logging(p11: P11, tmp: Path, **changes: object) -> P11:
    return dataclasses.replace(p11, env=with_sample_logging(p11.env, tmp, **changes))


WRONG_SECRET = "not-the-secret-" + os.urandom(6).hex()


@pytest.mark.parametrize("fault, expected", [
    ("no credential", r"no credential configured; set MHSM_CLIENT_ID and MHSM_CLIENT_SECRET"),
    ("wrong secret", r"AADSTS7000215"),
    ("unreachable HSM", r"cannot reach the HSM at https://127\.0\.0\.1:\d+ .*; check the HSM name or endpoint"),
])
def test_a_failed_start_says_why_once(p11: P11, pairs: dict, tmp_path: Path, fault: str, expected: str) -> None:
    host = sample_logging(p11, tmp_path, **({"endpoint": f"https://127.0.0.1:{free_port()}/"}
                                            if fault == "unreachable HSM" else {}))
    env = dict(host.env)
    if fault == "no credential":
        del env["MHSM_CLIENT_ID"], env["MHSM_CLIENT_SECRET"]
    elif fault == "wrong secret":
        env["MHSM_CLIENT_SECRET"] = WRONG_SECRET
    nginx, _, _ = start(dataclasses.replace(host, env=env), {"RSA": pairs["RSA"]}, tmp_path)
    assert nginx.process.wait(60) != 0
    stderr = nginx.process.stdout.read() if nginx.process.stdout else ""
    [line] = ours(stderr)
    assert re.search(expected, line) and "C_FindObjectsInit" in line, line
    assert "[emerg]" in nginx.log.read_text()
    for secret in (p11.env["MHSM_CLIENT_SECRET"], WRONG_SECRET):
        assert secret not in stderr and secret not in nginx.log.read_text()


def test_an_explicit_setting_silences_it(p11: P11, pairs: dict, tmp_path: Path) -> None:
    host = sample_logging(p11, tmp_path, endpoint=f"https://127.0.0.1:{free_port()}/", SendErrorsToStdErr=False)
    nginx, _, _ = start(host, {"RSA": pairs["RSA"]}, tmp_path)
    assert nginx.process.wait(60) != 0
    stderr = nginx.process.stdout.read() if nginx.process.stdout else ""
    assert ours(stderr) == [] and "PKCS#11 module::Device error" in stderr, stderr


def test_the_hsm_lost_while_serving_is_one_line_in_the_error_log(tmp_path: Path) -> None:
    """The worker's C_Sign fails: its line is in nginx's error log, once, with the cause and the fix."""
    emulator = start_emulator(tmp_path / "state")
    try:
        p11 = sample_logging(p11_for(emulator), tmp_path)
        pairs = {"EC": make_pair(p11, tmp_path, "EC:prime256v1")}
        (tmp_path / "serve").mkdir()
        nginx, ports, ca_file = start(p11, pairs, tmp_path / "serve")
        try:
            nginx.wait_for_workers()
            port, version = ports["EC"][0], CASES[2][1]
            assert handshake(port, "EC", version, ca_file, "localhost")[0] == ports["EC"][1]
            emulator.stop()
            with pytest.raises(OSError):
                handshake(port, "EC", version, ca_file, "localhost")
        finally:
            nginx.stop()
        log = nginx.log.read_text()
        [line] = ours(log)
        assert "C_Sign" in line and re.search(r"cannot reach the HSM .*; check the HSM name or endpoint", line), line
        assert p11.env["MHSM_CLIENT_SECRET"] not in log
    finally:
        emulator.stop()
