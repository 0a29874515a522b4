"""No log the test suite writes may hold a secret, token or PIN the suite used.

Every emulator the tests start (tests.conftest.start_emulator) gets its mhsm-pkcs11.conf rewritten
so that every module, tool and host using it logs to files at the most verbose setting: level
debug, FunctionLevelTrace, P11Interfaces, curl Verbose, process and thread ids (the stream flags
stay off: tests read what tools print; tests/core/test_logs.py turns those on too). The files go to
one directory per session, which nginx workers running as nobody may write. At the end of the
session `scan` reads every log file there and under pytest's base directory (nginx error logs, the
emulators' logs, the fuzzer's and the soak's module logs) for each principal's client secret (also
form-encoded, as a token request carries it), every `<client-id>:<secret>` PIN, JWTs, and labelled
credentials (`Bearer x`, `client_secret=x`) that were not scrubbed to ***.
"""

from __future__ import annotations

import json
import re
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.")
# A credential's value after its name, unless it was scrubbed to ***.
LABELLED = re.compile(r"(?i)(?:bearer\s+|client_secret=|access_token[\"']?\s*[=:]\s*[\"']?)(?!\*\*\*)[A-Za-z0-9._~+/-]{8,}")
EVERY_FILE_FLAG = {
    "level": "debug",
    "module": {"P11Interfaces": True, "FunctionLevelTrace": True, "curl": {"Level": "Verbose", "DisplayAsHex": True}},
    "flags": {"CloseFileAfterWrite": False, "SendToFile": True, "SendToStdOut": False, "SendToStdErr": False,
              "IncludeProcessId": True, "IncludeThreadId": True},
}
_secrets: set[str] = set()
_directory: Path | None = None


def directory() -> Path:
    """This session's directory for the module's log files (world-writable, sticky, outside pytest's
    own directories, which nginx workers running as nobody cannot enter)."""
    global _directory
    if _directory is None:
        _directory = Path(tempfile.mkdtemp(prefix="mhsm-test-logs-"))
        _directory.chmod(0o1777)
    return _directory


def remember(*secrets: str) -> None:
    """Secrets a test used beyond the emulators' principals (wrong secrets, PINs)."""
    _secrets.update(s for s in secrets if s and len(s) >= 8)


def watch(info: dict[str, Any]) -> None:
    """An emulator just started: remember its principals' secrets and log verbosely to files."""
    for principal in info.get("principals", {}).values():
        secret = principal.get("client_secret")
        if secret:
            remember(secret, f"{principal['client_id']}:{secret}", urllib.parse.quote_plus(secret))
    remember(info.get("admin_secret", ""))
    conf = Path(info["conf_file"])
    document = json.loads(conf.read_text())
    document["log"] = {**EVERY_FILE_FLAG, "directory": str(directory())}
    conf.write_text(json.dumps(document, indent=2))


def log_files(roots: list[Path]) -> list[Path]:
    return [path for root in roots if root.exists() for path in sorted(root.rglob("*.log"))]


def scan(roots: list[Path]) -> list[str]:
    """'<file>: <what leaked>' for every log file under `roots` that holds a secret, token or PIN."""
    found = []
    for path in log_files(roots):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        leaks = [f"secret {s[:3]}…" for s in _secrets if s in text]
        leaks += [f"JWT {m.group(0)[:12]}…" for m in [JWT.search(text)] if m]
        leaks += [f"credential {m.group(0)[:16]}…" for m in [LABELLED.search(text)] if m]
        found += [f"{path}: {leak}" for leak in leaks]
    return found
