"""The baseline every library figure is held against: a bare httpx client that posts the same sign
request to the same emulator, over keep-alive, with a token fetched once (no retries, no key
lookup, no local check of the signature)."""

from __future__ import annotations

import base64
import hashlib
import ssl
import threading
import time
from typing import Any, Protocol

import httpx
from azure.identity import ClientSecretCredential

ALGORITHMS = {"RSA": "PS256", "EC": "ES256"}
DIGEST = hashlib.sha256(b"bench").digest()


def token(info: dict[str, Any]) -> str:
    who = info["principals"]["keygen"]
    credential = ClientSecretCredential(info["tenant_id"], who["client_id"], who["client_secret"],
                                        authority=info["authority"], disable_instance_discovery=True,
                                        connection_verify=info["ca_file"])
    return credential.get_token("https://managedhsm.azure.net/.default").token


class BareSigner:
    """One keep-alive connection; `sign(kind)` is one POST .../sign."""

    def __init__(self, info: dict[str, Any], names: dict[str, str], bearer: str) -> None:
        self.client = httpx.Client(base_url=info["url"], verify=ssl.create_default_context(cafile=info["ca_file"]),
                                   headers={"Authorization": f"Bearer {bearer}"}, trust_env=False, timeout=60)
        self.paths = {}
        for kind, name in names.items():
            kid = self.client.get(f"/keys/{name}", params={"api-version": "7.5"}).json()["key"]["kid"]
            self.paths[kind] = f"/keys/{name}/{kid.rstrip('/').split('/')[-1]}/sign"
        self.body = {kind: {"alg": alg, "value": base64.urlsafe_b64encode(DIGEST).rstrip(b"=").decode()}
                     for kind, alg in ALGORITHMS.items()}

    def sign(self, kind: str) -> bool:
        response = self.client.post(self.paths[kind], params={"api-version": "7.5"}, json=self.body[kind])
        return response.status_code == 200

    def close(self) -> None:
        self.client.close()


class Signer(Protocol):
    def sign(self, kind: str) -> bool: ...

    def close(self) -> None: ...


def signer_rate(signers: list[Signer], kind: str, seconds: float) -> float:
    """Signs/s of one thread per signer, each signing `kind` in a loop for `seconds`; closes them."""
    done = [0] * len(signers)
    stop = time.monotonic() + seconds

    def work(index: int) -> None:
        while time.monotonic() < stop:
            done[index] += signers[index].sign(kind)

    began = time.monotonic()
    pool = [threading.Thread(target=work, args=(i,)) for i in range(len(signers))]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.monotonic() - began
    for signer in signers:
        signer.close()
    return sum(done) / elapsed
