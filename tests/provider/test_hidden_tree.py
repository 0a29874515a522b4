"""The provider signs with nothing left to read: nginx loads the keys, then every directory the
embedded Python imports from is hidden from it, and only then do its workers sign for the first
time (RSA and EC, TLS 1.3 and 1.2). Any module the signing path imported late would be missing."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.nginx import NGINX, PRIVATE_MOUNTS, hide_python_tree, serve_rounds
from tests.provider.conftest import BIN, Hsm
from tests.provider.test_nginx import assert_clean, start


def test_workers_sign_with_the_python_tree_hidden(hsm: Hsm, tmp_path: Path) -> None:
    keys = {}
    for kind, label in hsm.labels.items():
        pem = tmp_path / f"{kind}-uri.pem"
        subprocess.run([str(BIN / "mhsm_p11_uri2pem"), f"pkcs11:object={label};type=private", "-o", str(pem)],
                       check=True, timeout=60)
        keys[kind] = str(pem)
    nginx, ports, ca_file = start(hsm, tmp_path, keys, PRIVATE_MOUNTS + NGINX)
    try:
        nginx.wait_for_workers()
        assert hide_python_tree(nginx.process.pid)
        before = hsm.signs()
        done = sum(serve_rounds(nginx, ports, ca_file, reloads=0, per_case=2) for _ in range(3))
        assert done == 24 and hsm.signs() - before == done, "one HSM sign per handshake"
    finally:
        nginx.stop()
    assert_clean(nginx)
