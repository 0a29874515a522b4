"""The embedded runtime is a build parameter: a .so built with `--python-home` and `--python-path`
carries those paths and none of the checkout or the venv that built it (what a package needs: its
.so files must work with the build tree gone)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

INSTALLED = ["/usr/lib/python3.11", "/usr/lib/python3.11/lib-dynload", "/usr/lib/mhsm-test-offload/site-packages"]


def test_a_shim_built_for_installed_paths_names_only_those(tmp_path: Path) -> None:
    args = ["--python-home", "/usr"] + [arg for path in INSTALLED for arg in ("--python-path", path)]
    built = subprocess.run([sys.executable, "-m", "provider.build", str(tmp_path), *args], cwd=REPO,
                           capture_output=True, text=True, timeout=300, check=True).stdout.strip()
    strings = subprocess.run(["strings", built], capture_output=True, text=True, check=True).stdout.splitlines()
    assert all(path in strings for path in INSTALLED)
    assert not [s for s in strings if str(REPO) in s or sys.prefix in s]  # the checkout, the venv
