"""The provider signs with nothing left to read: nginx 1.22 loads the keys (PEM-wrapped URIs),
then every directory the embedded Python imports from is hidden from it, and only then do its
workers sign for the first time (RSA and EC, TLS 1.3 and 1.2). Any module the signing path
imported late would be missing."""

from __future__ import annotations

from pathlib import Path

from tests.nginx import NGINX, PRIVATE_MOUNTS, serve_hidden
from tests.provider.conftest import Hsm
from tests.provider.test_nginx import assert_clean, pem_wrapped_keys, start


def test_workers_sign_with_the_python_tree_hidden(hsm: Hsm, tmp_path: Path) -> None:
    nginx, ports, ca_file = start(hsm, tmp_path, pem_wrapped_keys(hsm, tmp_path), PRIVATE_MOUNTS + NGINX)
    try:
        serve_hidden(nginx, ports, ca_file, hsm.emulator)
    finally:
        nginx.stop()
    assert_clean(nginx)
