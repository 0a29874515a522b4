"""The session-wide log scan (tests/logscan.py) finds what it looks for: it can fail."""

from __future__ import annotations

from pathlib import Path

from tests import logscan


def test_scan_finds_a_secret_a_jwt_and_a_bearer(tmp_path: Path) -> None:
    secret = "scan-test-secret-0123456789"
    logscan.remember(secret)
    (tmp_path / "clean.log").write_text("C_Sign: CKR_OK\nAuthorization: Bearer ***\n")
    (tmp_path / "a.log").write_text(f"client secret {secret}\n")
    (tmp_path / "b.log").write_text("token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTYifQ.sig\n")
    (tmp_path / "c.log").write_text("Authorization: Bearer abcdefghijkl\n")
    try:
        leaks = logscan.scan([tmp_path])
    finally:  # the session's own scan covers pytest's directories: leave nothing planted there
        for planted in tmp_path.glob("*.log"):
            planted.unlink()
    assert {line.split(":")[0].rsplit("/", 1)[1] for line in leaks} == {"a.log", "b.log", "c.log"}, leaks
    assert not any(secret in line for line in leaks), "the report itself shows no secret"
