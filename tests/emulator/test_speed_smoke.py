"""bench/emulator_speed.py still runs end to end: it starts the emulator, gets a token, creates a key,
signs at each concurrency, writes its JSON and stops the emulator. Timing is not asserted: this
proves the benchmark works, not how fast this machine is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

BENCH = REPO / "bench" / "emulator_speed.py"


def test_bench_runs_and_reports(tmp_path: Path) -> None:
    out, state_dir = tmp_path / "speed.json", tmp_path / "state"
    done = subprocess.run([sys.executable, str(BENCH), "--count", "20", "--concurrency", "1,4", "--json", str(out),
                           "--state-dir", str(state_dir)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert [(p["key"], p["concurrency"]) for p in results["points"]] == [("rsa", 1), ("rsa", 4), ("ec", 1), ("ec", 4)]
    for point in results["points"]:
        assert point["count"] == 20
        assert point["signs_per_second"] > 0 and point["emulator_cpu_seconds"] > 0
        assert point["errors"] == 0
        assert 0 < point["p50_ms"] <= point["p99_ms"]
    assert results["rng_p50_ms"] > 0 and results["local_sign_p50_ms"] > 0
    assert "signs/s" in done.stdout  # the table was printed
    assert not (state_dir / "emulator.json").exists()  # the emulator was stopped, and cleanly
