"""Every log flag on, at the most verbose level, including the official `IncludePINs`: create, find and
sign (with the environment's principal and with a PIN-carried one), through the core, through the
console tools and through the PKCS#11 module. No secret, token or PIN may appear in any log file or
stream, and the logs must still record the work (so that these tests can fail)."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.parse
import uuid
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import REPO, Emulator
from tests.core.conftest import write_conf
from tests.core.test_tools import THREE_LINES, env_for, tool
from tests.logscan import JWT, LABELLED

LOG_FILE = re.compile(r"MHSM-PKCS11-(?P<pid>\d+)-\d{8}-\d{6}\.log")
EVERY_FLAG = {
    "directory": "", "level": "debug",
    "module": {"P11Interfaces": True, "FunctionLevelTrace": True, "curl": {"Level": "Verbose", "DisplayAsHex": True}},
    "flags": {"CloseFileAfterWrite": True, "SendToFile": True, "SendToStdOut": True, "SendToStdErr": True,
              "IncludeProcessId": True, "IncludeThreadId": True, "IncludePINs": True},
}
# The core, as a front end drives it: create, find, sign; then log in with a PIN principal and sign again.
SCRIPT = """
import hashlib, sys
from mhsm_core import signing
from mhsm_core.hsm import Library
hsm = Library.load().hsm(0)
label, pin = sys.argv[1], sys.argv[2]
hsm.keys.create("EC", curve="P-256", private_attributes={"CKA_LABEL": label}, public_attributes={"CKA_LABEL": label})
[key] = hsm.keys.find(label=label)
algorithm, digest = signing.ecdsa(hashlib.sha256(b"logs").digest(), "P-256")
hsm.keys.sign(key, algorithm, digest)
assert hsm.login(pin)
hsm.keys.sign(key, algorithm, digest)
print("done")
"""


@pytest.fixture
def verbose(permissive: Emulator, trust: Callable[[Emulator], Emulator], tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A configuration with every log flag on, writing to its own directory, and the environment to use it."""
    trust(permissive)  # for the tokens this process fetches to compare against
    logs = tmp_path / "logs"
    conf = write_conf(permissive, tmp_path / "verbose.conf", log={**EVERY_FLAG, "directory": str(logs)})
    return logs, env_for(permissive, conf=str(conf))


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)


def collect(logs: Path, processes: int, streams: dict[str, str]) -> dict[str, str]:
    """Every log file (one per process, named by its pid, every line carrying that pid) and every stream."""
    files = sorted(logs.iterdir())
    assert len(files) == processes, f"one file per process: {[f.name for f in files]}"
    written = dict(streams)
    for file in files:
        match = LOG_FILE.fullmatch(file.name)
        assert match, file.name
        text = file.read_text()
        assert set(re.findall(r" pid=(\d+) tid=\d+ ", text)) == {match["pid"]}, f"{file.name} holds its own pid only"
        written[file.name] = text
    return written


def assert_no_secret(permissive: Emulator, written: dict[str, str], extra: list[str]) -> None:
    secrets = [permissive.principal(p)["client_secret"] for p in permissive.info["principals"]] + extra
    secrets += [urllib.parse.quote_plus(s) for s in secrets]  # as a form-encoded token request carries it
    tokens = [permissive.token("keygen"), permissive.token("tls-offload")]
    for where, text in written.items():
        for secret in secrets + tokens:
            assert secret not in text, f"a secret leaked into {where}"
        assert not JWT.search(text), f"a JWT leaked into {where}: {JWT.search(text)}"
        assert not LABELLED.search(text), f"a credential leaked into {where}: {LABELLED.search(text)}"


def test_core_create_find_sign_and_pin_login(permissive: Emulator, verbose: tuple[Path, dict[str, str]]) -> None:
    logs, env = verbose
    other = permissive.principal("tls-offload")
    pin = f"{other['client_id']}:{other['client_secret']}"
    core = run([sys.executable, "-c", SCRIPT, f"logs-{uuid.uuid4().hex[:8]}", pin], env)
    assert core.returncode == 0 and "done" in core.stdout, core.stderr[-3000:]
    written = collect(logs, 1, {"stdout": core.stdout, "stderr": core.stderr})
    [text] = [t for name, t in written.items() if name.endswith(".log")]
    # The file recorded the work at debug level with process and thread ids, and so did both streams...
    assert re.search(r"pid=\d+ tid=\d+ DEBUG", text)
    for where in (text, core.stdout, core.stderr):
        assert "/create?" in where and "POST" in where and len(re.findall(r"/sign\?api-version", where)) == 2
        assert "IncludePINs: ignored" in where
    # ...a second token was fetched for the PIN's principal, and still nothing secret was written.
    assert text.count("ClientSecretCredential.get_token_info succeeded") == 2
    assert_no_secret(permissive, written, [pin])


def test_console_tools(permissive: Emulator, verbose: tuple[Path, dict[str, str]]) -> None:
    logs, env = verbose
    name = f"logs-{uuid.uuid4().hex[:8]}"
    created = tool("create", "--EC", "P256", "--label", name, "--id", "0102", env=env)
    assert created.returncode == 0, created.stderr[-3000:]
    # Log lines go to stdout too (SendToStdOut), and the three official lines are still there, whole.
    three = re.search(r"^Key is generated successfully\.\nManaged HSM Key ID: .*\nKey Name: .*\n", created.stdout, re.M)
    assert three and THREE_LINES.match(three.group(0))
    listed = tool("list", env=env)
    assert listed.returncode == 0 and name in listed.stdout
    checked = tool("validate", "--file", env["MHSM_PKCS11_CONF"], "--check-connection", env=env)
    assert checked.returncode == 0 and "answered" in checked.stdout, checked.stdout[-3000:]
    wrong = dict(env, MHSM_CLIENT_SECRET=f"wrong-{uuid.uuid4().hex}")
    refused = tool("create", "--EC", "P256", "--label", name, env=wrong)
    assert refused.returncode == 1 and "AADSTS7000215" in refused.stderr
    streams = {f"{what} {stream}": getattr(result, stream) for what, result in
               (("create", created), ("list", listed), ("validate", checked), ("refused", refused))
               for stream in ("stdout", "stderr")}
    written = collect(logs, 4, streams)
    everything = "\n".join(written.values())
    assert "/create?" in everything and "/keys?" in everything and "AADSTS7000215" in everything
    assert_no_secret(permissive, written, [wrong["MHSM_CLIENT_SECRET"]])


def test_pkcs11_module(permissive: Emulator, verbose: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    logs, env = verbose
    module = REPO / "build" / "libmhsm-pkcs11.so"
    assert module.exists(), "make setup builds the PKCS#11 module"
    name = f"logs-{uuid.uuid4().hex[:8]}"
    quiet = env_for(permissive)  # the key is made without logging; this test is about the module's logs
    assert tool("create", "--EC", "P256", "--label", name, env=quiet).returncode == 0
    data = tmp_path / "data"
    data.write_bytes(b"logs through the module")
    other = permissive.principal("tls-offload")
    pin = f"{other['client_id']}:{other['client_secret']}"
    wrong_pin = f"{other['client_id']}:wrong-{uuid.uuid4().hex}"
    not_a_principal = f"pin-{uuid.uuid4().hex}"

    def sign(with_pin: str) -> subprocess.CompletedProcess[str]:
        return run(["pkcs11-tool", "--module", str(module), "--login", "--pin", with_pin, "--sign", "--label", name,
                    "-m", "ECDSA-SHA256", "-i", str(data), "-o", str(tmp_path / "sig")], env)

    signed, refused, ignored = sign(pin), sign(wrong_pin), sign(not_a_principal)
    assert signed.returncode == 0, signed.stderr[-3000:]
    assert refused.returncode != 0 and "CKR_PIN_INCORRECT" in refused.stderr
    assert ignored.returncode == 0, "a PIN that is not a principal is ignored (the environment's is used)"
    streams = {f"{what} {stream}": getattr(result, stream) for what, result in
               (("signed", signed), ("refused", refused), ("ignored", ignored)) for stream in ("stdout", "stderr")}
    written = collect(logs, 3, streams)
    everything = "\n".join(written.values())
    assert everything.count("C_Sign: CKR_OK") >= 2 * 3, "in both files of the signing runs, and their streams"
    assert "C_Login" in everything and "/sign?" in everything
    assert_no_secret(permissive, written, [pin, wrong_pin, not_a_principal])


ERRORS_BY_DEFAULT = """
import logging
from mhsm_core import log
from mhsm_core.config import Log
log.register_secret("s3cret-value-123")
logger = logging.getLogger("mhsm.test")
logger.warning("a warning")
try:
    raise KeyError("s3cret-value-123")
except KeyError:
    logger.exception("sign: unexpected error")
logger.error("sign: the HSM is unreachable (request %s)", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
logger.error("sign: the HSM is unreachable (request %s)", "11111111-2222-3333-4444-555555555555")
logger.error("handed to the host already", extra=log.HOST_HAS_IT)
log.configure(Log(send_errors_to_stderr=False))
logger.error("silenced")
"""


def test_errors_reach_stderr_by_default_one_line_each() -> None:
    """No configuration read yet, then the official flags all off: errors alone, one line each,
    scrubbed, a repeat (another request id) not said again; `SendErrorsToStdErr: false` silences."""
    result = subprocess.run([sys.executable, "-c", ERRORS_BY_DEFAULT], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "", result.stderr
    assert result.stderr.splitlines() == [
        "mhsm.test: sign: unexpected error: KeyError: '***'",
        "mhsm.test: sign: the HSM is unreachable (request 0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0)",
    ]
