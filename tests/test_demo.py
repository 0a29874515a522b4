"""`make demo` is part of the suite: it must keep working from a fresh clone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_demo_serves_https_with_hsm_keys() -> None:
    result = subprocess.run([sys.executable, str(REPO / "demo" / "demo.py")], capture_output=True, text=True,
                            timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert sum("certificate verified" in line for line in lines) == 4, result.stdout
    assert sum("TLSv1.3" in line for line in lines) == 2 and sum("TLSv1.2" in line for line in lines) == 2
    assert "4 signatures made in the HSM" in result.stdout and "result     OK" in result.stdout
