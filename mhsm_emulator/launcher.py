"""Start `mhsm-emulator serve` as a real process and wait until it serves; for tests, demo and bench."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Running:
    """A running emulator process and what its emulator.json says."""

    state_dir: Path
    process: subprocess.Popen[bytes]
    info: dict[str, Any]

    def stop(self, timeout: float = 5.0) -> float:
        """SIGTERM, as a supervisor would; returns how long the process took to exit."""
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise
        return time.monotonic() - started


def start(state_dir: Path, *args: str, timeout: float = 30.0) -> Running:
    """Run the emulator with `args` on `state_dir` and wait for the emulator.json it publishes when ready."""
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "emulator.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "mhsm_emulator.cli", "serve", "--state-dir", str(state_dir),
                                    *args], stdout=log, stderr=subprocess.STDOUT)
    info_file, deadline = state_dir / "emulator.json", time.monotonic() + timeout
    while not info_file.exists():
        if process.poll() is not None:
            raise RuntimeError(f"the emulator exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the emulator did not publish {info_file} within {timeout:.0f} s; see {log_path}")
        time.sleep(0.05)
    return Running(state_dir, process, json.loads(info_file.read_text()))
