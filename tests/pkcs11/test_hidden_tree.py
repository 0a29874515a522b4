"""The PKCS#11 module signs with nothing left to read: nginx (libp11 engine, the official line)
loads the keys, then every directory the embedded Python imports from is hidden from it, and only
then do its workers initialise the module again (libp11 does after fork) and sign for the first
time (RSA and EC, TLS 1.3 and 1.2). Any module that path imported late would be missing."""

from __future__ import annotations

from pathlib import Path

from tests.nginx import NGINX, PRIVATE_MOUNTS, QUIET, serve_hidden
from tests.pkcs11.conftest import P11, Pair
from tests.pkcs11.test_nginx_engine import start


def test_workers_sign_with_the_python_tree_hidden(p11: P11, pairs: dict[str, Pair], tmp_path: Path) -> None:
    nginx, ports, ca_file = start(p11, pairs, tmp_path, PRIVATE_MOUNTS + NGINX)
    try:
        serve_hidden(nginx, ports, ca_file, p11.emulator)
    finally:
        nginx.stop()
    log = nginx.log.read_text()
    assert not any(f"[{level}]" in log for level in QUIET), log
