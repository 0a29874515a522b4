"""Fork: a child signs with a core its parent initialised, and the parent still works after.

As in nginx, the configuration and the CA file are gone by the time the child runs (a worker that
dropped privileges could not read them): what the parent read must be enough. The child must open
its own connections, never write on the parent's.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

from mhsm_core import signing
from mhsm_core.hsm import Library
from tests.conftest import Emulator


def test_child_signs_with_the_parents_core_and_the_parent_carries_on(
        permissive: Emulator, library_for: Callable[..., Library], tmp_path: Path) -> None:
    ca_copy = tmp_path / "ca.pem"
    shutil.copy(permissive.info["ca_file"], ca_copy)
    library = library_for(permissive, options={"CAFile": str(ca_copy)})
    hsm = library.hsm(0)
    label = f"fork-{uuid.uuid4().hex[:8]}"
    key = hsm.keys.create("EC", curve="P-256", private_attributes={"CKA_LABEL": label},
                          public_attributes={"CKA_LABEL": label})
    algorithm, digest = signing.ecdsa(hashlib.sha256(b"fork").digest(), "P-256")
    assert signing.verify(key.public_key, algorithm, digest, hsm.keys.sign(key, algorithm, digest))
    ca_copy.unlink()
    Path(os.environ["MHSM_PKCS11_CONF"]).unlink()
    before = permissive.admin.counters()

    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through its exit status only
        try:
            signature = hsm.keys.sign(key, algorithm, digest)
            os._exit(0 if signing.verify(key.public_key, algorithm, digest, signature) else 3)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(child, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status}"
    middle = permissive.admin.counters()
    assert middle["signs"]["total"] == before["signs"]["total"] + 1
    assert middle["connections_accepted"] > before["connections_accepted"], "the child opened its own connection"
    assert middle["tokens_issued"]["total"] == before["tokens_issued"]["total"], "the parent's token was enough"

    for _ in range(3):  # the parent's pooled connections were not disturbed by the child
        assert signing.verify(key.public_key, algorithm, digest, hsm.keys.sign(key, algorithm, digest))
    after = permissive.admin.counters()
    assert after["signs"]["total"] == middle["signs"]["total"] + 3
