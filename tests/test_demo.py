"""`make demo` is part of the suite: it must keep working from a fresh clone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_demo_runs_and_verifies() -> None:
    result = subprocess.run([sys.executable, str(REPO / "demo" / "demo.py")], capture_output=True, text=True,
                            timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("verified with the public key: yes") == 2
    assert "result     OK" in result.stdout
