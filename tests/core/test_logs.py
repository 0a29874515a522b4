"""Every log flag on, at the most verbose level, including the official `IncludePINs`: create, find and
sign (with the environment's principal and with a PIN-carried one), through the core and through
the PKCS#11 module. No secret, token or PIN may appear in any log file or stream."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

from tests.conftest import REPO, Emulator
from tests.core.conftest import write_conf
from tests.core.test_tools import env_for

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.")
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


def test_no_secret_token_or_pin_in_any_log(permissive: Emulator, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    conf = write_conf(permissive, tmp_path / "verbose.conf", log={**EVERY_FLAG, "directory": str(logs)})
    env = env_for(permissive, conf=str(conf))
    other = permissive.principal("tls-offload")
    pin = f"{other['client_id']}:{other['client_secret']}"
    label = f"logs-{uuid.uuid4().hex[:8]}"
    core = subprocess.run([sys.executable, "-c", SCRIPT, label, pin], env=env, capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert core.returncode == 0 and "done" in core.stdout, core.stderr[-3000:]
    module = REPO / "build" / "libmhsm-pkcs11.so"
    assert module.exists(), "make setup builds the PKCS#11 module"
    data = tmp_path / "data"
    data.write_bytes(b"logs through the module")
    through_module = subprocess.run(
        ["pkcs11-tool", "--module", str(module), "--login", "--pin", pin, "--sign", "--label", label,
         "-m", "ECDSA-SHA256", "-i", str(data), "-o", str(tmp_path / "sig")],
        env=env, capture_output=True, text=True, timeout=120)
    assert through_module.returncode == 0, through_module.stderr[-3000:]

    files = sorted(logs.glob("MHSM-PKCS11-*.log"))
    assert len(files) >= 2, "one file per process"
    written = {str(f): f.read_text() for f in files}
    written |= {"core stdout": core.stdout, "core stderr": core.stderr, "module stdout": through_module.stdout,
                "module stderr": through_module.stderr}
    everything = "\n".join(written.values())
    # The logs did record the work (so this test can fail), with process and thread ids...
    assert re.search(r"pid=\d+ tid=\d+ DEBUG", everything)
    assert "POST" in everything and "/sign" in everything and "C_Sign" in everything
    # ...and no secret, PIN or token, whatever the flags said.
    secrets = [permissive.principal(p)["client_secret"] for p in ("keygen", "tls-offload")] + [pin]
    tokens = [permissive.token("keygen"), permissive.token("tls-offload")]
    for where, text in written.items():
        for secret in secrets + tokens:
            assert secret not in text, f"a secret leaked into {where}"
        assert not JWT.search(text), f"a JWT leaked into {where}: {JWT.search(text)}"
