"""Fork: a child signs with a core its parent initialised, and the parent still works after.

As in nginx, the configuration and the CA file are gone by the time the child runs (a worker that
dropped privileges could not read them): what the parent read must be enough, also when the child
needs a token the parent never fetched. The child must open its own connections, never write on
the parent's: after the child, the parent keeps signing on the connection it already had.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Callable

from mhsm_core import signing
from mhsm_core.hsm import Hsm, Library
from mhsm_core.keys import HsmKey
from tests.conftest import REPO, Emulator
from tests.core.conftest import write_conf

ALGORITHM, DIGEST = signing.ecdsa(hashlib.sha256(b"fork").digest(), "P-256")


def in_child(work: Callable[[], bool]) -> int:
    """Fork; the child runs `work` and reports only through its exit status (0: it returned True)."""
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through its exit status only
        try:
            os._exit(0 if work() else 3)
        except BaseException:
            os._exit(4)
    return child


def exit_status(child: int) -> int:
    _, status = os.waitpid(child, 0)
    assert os.WIFEXITED(status), f"child {child} did not exit: status {status}"
    return os.WEXITSTATUS(status)


def signs_and_verifies(hsm: Hsm, key: HsmKey, times: int = 1) -> bool:
    return all(signing.verify(key.public_key, ALGORITHM, DIGEST, hsm.keys.sign(key, ALGORITHM, DIGEST))
               for _ in range(times))


def make_key(hsm: Hsm) -> HsmKey:
    label = f"fork-{uuid.uuid4().hex[:8]}"
    return hsm.keys.create("EC", curve="P-256", private_attributes={"CKA_LABEL": label},
                           public_attributes={"CKA_LABEL": label})


def unreadable_later(emulator: Emulator, tmp_path: Path) -> dict[str, Any]:
    """Configuration overrides pointing at a copy of the CA that the test deletes before forking."""
    ca_copy = tmp_path / "ca.pem"
    shutil.copy(emulator.info["ca_file"], ca_copy)
    return {"options": {"CAFile": str(ca_copy)}}


def take_away_config_and_ca(library: Library) -> None:
    Path(library.config.options.ca_file or "").unlink()
    Path(library.config.path).unlink()


def test_child_signs_with_the_parents_core_and_the_parent_carries_on(
        permissive: Emulator, library_for: Callable[..., Library], tmp_path: Path) -> None:
    library = library_for(permissive, **unreadable_later(permissive, tmp_path))
    hsm = library.hsm(0)
    key = make_key(hsm)
    assert signs_and_verifies(hsm, key)
    take_away_config_and_ca(library)
    before = permissive.admin.counters()

    assert exit_status(in_child(lambda: signs_and_verifies(hsm, key))) == 0
    middle = permissive.admin.counters()
    assert middle["signs"]["total"] == before["signs"]["total"] + 1, "the child's signature was made by the HSM"
    assert middle["connections_accepted"] > before["connections_accepted"], "the child opened its own connection"
    assert middle["tokens_issued"]["total"] == before["tokens_issued"]["total"], "the parent's token was enough"

    assert signs_and_verifies(hsm, key, times=3)
    after = permissive.admin.counters()
    assert after["signs"]["total"] == middle["signs"]["total"] + 3
    assert after["connections_accepted"] == middle["connections_accepted"], \
        "the parent signed on its pooled connection: the child neither used nor closed it"


def test_workers_sign_concurrently_then_the_master_signs(
        permissive: Emulator, library_for: Callable[..., Library], tmp_path: Path) -> None:
    """Four workers, as an nginx master forks them, each signing several times at once."""
    library = library_for(permissive, **unreadable_later(permissive, tmp_path))
    hsm = library.hsm(0)
    key = make_key(hsm)
    assert signs_and_verifies(hsm, key)
    take_away_config_and_ca(library)
    before = permissive.admin.counters()

    children = [in_child(lambda: signs_and_verifies(hsm, key, times=5)) for _ in range(4)]
    assert [exit_status(child) for child in children] == [0, 0, 0, 0]
    middle = permissive.admin.counters()
    assert middle["signs"]["total"] == before["signs"]["total"] + 4 * 5
    assert middle["connections_accepted"] >= before["connections_accepted"] + 4, "a connection per worker"
    assert middle["tokens_issued"]["total"] == before["tokens_issued"]["total"]

    assert signs_and_verifies(hsm, key, times=2)
    after = permissive.admin.counters()
    assert after["signs"]["total"] == middle["signs"]["total"] + 2
    assert after["connections_accepted"] == middle["connections_accepted"]


def test_child_fetches_the_first_token_and_tenant_without_config_or_ca(
        permissive: Emulator, library_for: Callable[..., Library], tmp_path: Path) -> None:
    """The parent only loaded the library (no call at all, no tenant configured): the child learns the
    tenant from the HSM's challenge and gets the first token with the CA file already gone."""
    key = make_key(library_for(permissive).hsm(0))  # also puts keygen's credentials in the environment
    conf = write_conf(permissive, tmp_path / "no-tenant.conf", **unreadable_later(permissive, tmp_path))
    document = json.loads(conf.read_text())
    del document["auth"]["tenantId"]  # as in a real deployment's file
    conf.write_text(json.dumps(document))
    library = Library.load(str(conf))
    assert library.config.auth.tenant_id is None
    hsm = library.hsm(0)
    take_away_config_and_ca(library)
    before = permissive.admin.counters()

    def find_and_sign() -> bool:
        [found] = hsm.keys.find(label=key.label)
        return found.name == key.name and signs_and_verifies(hsm, found)

    assert exit_status(in_child(find_and_sign)) == 0
    after = permissive.admin.counters()
    assert after["tokens_issued"]["total"] == before["tokens_issued"]["total"] + 1, "the child got its own token"
    assert after["signs"]["total"] == before["signs"]["total"] + 1


def test_child_refreshes_a_refused_token_without_the_ca(
        permissive: Emulator, library_for: Callable[..., Library], tmp_path: Path) -> None:
    """The HSM refuses the inherited token (as after expiry): the child gets a new one from the
    authority, trusting the CA the parent read, not the file that is gone."""
    library = library_for(permissive, **unreadable_later(permissive, tmp_path))
    hsm = library.hsm(0)
    key = make_key(hsm)
    take_away_config_and_ca(library)
    permissive.admin.inject("token_expired", operation="sign", count=1)
    before = permissive.admin.counters()

    assert exit_status(in_child(lambda: signs_and_verifies(hsm, key))) == 0
    after = permissive.admin.counters()
    assert after["tokens_issued"]["total"] == before["tokens_issued"]["total"] + 1
    assert after["signs"]["total"] == before["signs"]["total"] + 1
    assert signs_and_verifies(hsm, key), "the parent's own token is still accepted"


# A worker that exits the normal way (atexit handlers, interpreter teardown, garbage collection of
# everything it inherited) rather than os._exit: still nothing may be written on the parent's sockets.
EXITING_CHILD = """
import gc, hashlib, json, os, sys
from mhsm_core import signing
from mhsm_core.hsm import Library
from mhsm_emulator.admin_client import EmulatorAdmin
admin = EmulatorAdmin(sys.argv[1], sys.argv[2])
library = Library.load()
hsm = library.hsm(0)
label = sys.argv[3]
key = hsm.keys.create("EC", curve="P-256", private_attributes={"CKA_LABEL": label}, public_attributes={"CKA_LABEL": label})
algorithm, digest = signing.ecdsa(hashlib.sha256(b"exit").digest(), "P-256")
hsm.keys.sign(key, algorithm, digest)
child = os.fork()
if child == 0:
    ok = signing.verify(key.public_key, algorithm, digest, hsm.keys.sign(key, algorithm, digest))
    del hsm, library, key
    gc.collect()
    sys.exit(0 if ok else 3)
_, status = os.waitpid(child, 0)
middle = admin.counters()
for _ in range(3):
    assert signing.verify(key.public_key, algorithm, digest, hsm.keys.sign(key, algorithm, digest))
after = admin.counters()
print(json.dumps({"child": os.waitstatus_to_exitcode(status),
                  "new_connections": after["connections_accepted"] - middle["connections_accepted"],
                  "signs": after["signs"]["total"] - middle["signs"]["total"]}))
"""


def test_child_exiting_normally_leaves_the_parents_connection_alone(permissive: Emulator, tmp_path: Path) -> None:
    conf = write_conf(permissive, tmp_path / "exit.conf")
    who = permissive.principal("keygen")
    env = {**os.environ, "MHSM_PKCS11_CONF": str(conf), "MHSM_CLIENT_ID": who["client_id"],
           "MHSM_CLIENT_SECRET": who["client_secret"]}
    result = subprocess.run([sys.executable, "-c", EXITING_CHILD, permissive.info["admin_url"],
                             permissive.info["admin_secret"], f"fork-{uuid.uuid4().hex[:8]}"],
                            env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout) == {"child": 0, "new_connections": 0, "signs": 3}
