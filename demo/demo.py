"""`make demo`: the emulator, two keys made with `mhsm_p11_create_key`, listed, signed through the core,
verified with the public keys, and everything stopped again.

It uses only what a user has: the emulator's mhsm-pkcs11.conf (MHSM_PKCS11_CONF) and a service
principal in MHSM_CLIENT_ID / MHSM_CLIENT_SECRET. The provider issue extends it to nginx.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mhsm_emulator import launcher

BIN = Path(sys.executable).parent


def create_key(kind: str, value: str, label: str) -> str:
    out = subprocess.run([str(BIN / "mhsm_p11_create_key"), f"--{kind}", value, "--label", label],
                         capture_output=True, text=True, check=True).stdout
    return next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("Key Name: "))


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="mhsm-demo-") as tmp:
        emulator = launcher.start(Path(tmp))
        info = emulator.info
        try:
            principal = info["principals"]["keygen"]
            os.environ.update(MHSM_PKCS11_CONF=info["conf_file"], MHSM_CLIENT_ID=principal["client_id"],
                              MHSM_CLIENT_SECRET=principal["client_secret"])
            print(f"emulator   {info['url']}  (HSM '{info['hsm_name']}'; MHSM_PKCS11_CONF={info['conf_file']})")
            rsa_name = create_key("RSA", "2K", "demoRsaKey")
            ec_name = create_key("EC", "P256", "demoEcKey")
            print(f"created    {rsa_name} (RSA 2048, label demoRsaKey) and {ec_name} (EC P-256, label demoEcKey)")
            listing = json.loads(subprocess.run([str(BIN / "mhsm_p11_list_keys"), "--json"], capture_output=True,
                                                text=True, check=True).stdout)
            print(f"listed     {len(listing)} keys: " + ", ".join(f"{k['label']}={k['name']}" for k in listing))

            from mhsm_core import signing
            from mhsm_core.hsm import Library

            hsm = Library.load().hsm(0)
            digest = hashlib.sha256(b"hello from make demo").digest()
            for label, choose in (("demoRsaKey", lambda key: signing.pss(digest, "SHA256")),
                                  ("demoEcKey", lambda key: signing.ecdsa(digest, key.curve))):
                [key] = hsm.keys.find(label=label)
                algorithm, sized = choose(key)
                signature = hsm.keys.sign(key, algorithm, sized)
                ok = signing.verify(key.public_key, algorithm, sized, signature)
                print(f"signed     {label:10} {algorithm}: {len(signature)}-byte signature, verified with the "
                      f"public key: {'yes' if ok else 'NO'}")
                if not ok:
                    return 1
            print("result     OK: keys made in the HSM emulator by mhsm_p11_create_key, signed through mhsm_core")
            return 0
        finally:
            emulator.stop(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
