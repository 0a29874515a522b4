"""`make demo`: start the emulator, make an RSA and an EC key, sign with each, verify, stop.

For now the keys and signatures go through Microsoft's own SDK; as the core, the PKCS#11 module
and the provider land, the demo moves onto them (and, last, onto nginx with a `store:` key).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def start(state_dir: Path) -> tuple[subprocess.Popen[bytes], dict]:
    process = subprocess.Popen([sys.executable, "-m", "mhsm_emulator.cli", "serve", "--state-dir", str(state_dir)],
                               stdout=subprocess.DEVNULL, stderr=open(state_dir / "emulator.log", "wb"))
    info_file = state_dir / "emulator.json"
    deadline = time.monotonic() + 30
    while not info_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"demo: the emulator did not start; see {state_dir / 'emulator.log'}")
        time.sleep(0.05)
    return process, json.loads(info_file.read_text())


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="mhsm-demo-") as tmp:
        state_dir = Path(tmp)
        process, info = start(state_dir)
        try:
            os.environ["REQUESTS_CA_BUNDLE"] = os.environ["SSL_CERT_FILE"] = info["ca_file"]
            from azure.identity import ClientSecretCredential
            from azure.keyvault.keys import KeyClient
            from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm

            p = info["principals"]["keygen"]
            credential = ClientSecretCredential(info["tenant_id"], p["client_id"], p["client_secret"],
                                                authority=info["authority"], disable_instance_discovery=True)
            keys = KeyClient(info["url"], credential, verify_challenge_resource=False)
            print(f"emulator   {info['url']}  (HSM '{info['hsm_name']}', tenant {info['tenant_id']})")
            digest = hashlib.sha256(b"hello from make demo").digest()
            for key, alg in ((keys.create_rsa_key("demo-rsa", size=2048, hardware_protected=True),
                              SignatureAlgorithm.ps256),
                             (keys.create_ec_key("demo-ec", curve="P-256", hardware_protected=True),
                              SignatureAlgorithm.es256)):
                remote = CryptographyClient(key.id, credential, verify_challenge_resource=False)
                signature = remote.sign(alg, digest).signature
                local = CryptographyClient(key, credential, verify_challenge_resource=False)  # public key only
                ok = local.verify(alg, digest, signature).is_valid
                print(f"key        {key.name:9} {key.key_type.value}  {alg.value}: {len(signature)}-byte signature, "
                      f"verified locally: {'yes' if ok else 'NO'}")
                if not ok:
                    return 1
            print("result     OK: keys made in the HSM emulator, signatures verified with the public keys")
            return 0
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
