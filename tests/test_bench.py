"""`make bench` and `mhsm_p11_bench` still work end to end. Each measurement runs once on a tiny
count; nothing here is timed or compared with a target (that is what `make bench` reports)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, Emulator

MEASUREMENTS = ("1. sign latency", "2. throughput", "3. nginx handshakes/s", "4. cold start", "5. memory",
                "6. resilience", "7. key lookup", "8. HAProxy nbthread 1, 20 ms HSM", "9. host CPU per sign",
                "10. nginx worker CPU per handshake", "11. blocking workers")


def test_every_measurement_runs_and_reports(tmp_path: Path) -> None:
    out, plot = tmp_path / "latest.json", tmp_path / "throughput.png"
    result = subprocess.run([sys.executable, "run.py", "--quick", "--out", str(out), "--plot", str(plot)],
                            cwd=REPO / "bench", capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {"date", "commit", "machine", "python", "openssl_cli", "nginx_store", "nginx_debian"} <= report.keys()
    figures = report["figures"]
    assert {f["measurement"] for f in figures} == set(MEASUREMENTS)
    not_measured = [f for f in figures if f["name"].endswith("not measured")]
    assert not not_measured, not_measured  # every path ran, pkcs11-provider included
    for figure in figures:
        # /proc counts other processes' CPU in 10 ms ticks: a quick run's worker CPU may round to 0.
        ticked = figure["measurement"] == "10. nginx worker CPU per handshake" and figure["value"] == 0
        assert math.isfinite(figure["value"]) and figure["value"] > 0 or figure["unit"] == "s" or ticked, figure
        if figure["baseline"]:  # the ratio is of the unrounded values (each rounded to 3 decimals)
            slack = 0.0005 * figure["ratio"] + 0.0005 + 0.01 * figure["value"]
            assert abs(figure["ratio"] * figure["baseline"] - figure["value"]) <= slack, figure
    paths = {f["name"].split(",")[0] for f in figures if f["measurement"] == "3. nginx handshakes/s"}
    assert paths == {"local 1.30", "provider", "pkcs11-provider", "local 1.22", "engine"}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "blocking.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 6. resilience |" in result.stdout


def test_mhsm_p11_bench_reports_and_recommends(permissive: Emulator, tmp_path: Path) -> None:
    who = permissive.principal("keygen")
    env = {"PATH": "/usr/bin:/bin", "MHSM_PKCS11_CONF": permissive.info["conf_file"],
           "MHSM_CLIENT_ID": who["client_id"], "MHSM_CLIENT_SECRET": who["client_secret"]}
    tools = Path(sys.executable).parent
    label = f"bench-{tmp_path.name[-8:]}"
    subprocess.run([str(tools / "mhsm_p11_create_key"), "--EC", "P256", "--label", label], env=env, check=True,
                   capture_output=True, timeout=60)
    result = subprocess.run([str(tools / "mhsm_p11_bench"), "--label", label, "--mechanism", "ecdsa", "--threads", "2",
                             "--count", "20", "--sweep-seconds", "0.3"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.match(rf"{label} ecdsa, 2 threads, MaxConnections 20: 20 signatures in .* 0 errors; latency p50 ", lines[0])
    assert [line.split(":")[0].strip() for line in lines[2:4]] == ["MaxConnections   1", "MaxConnections   2"]
    assert re.match(r'Recommended: "ConnectionCache": \{"MaxConnections": [12]\}', lines[-1]), lines
    missing = subprocess.run([str(tools / "mhsm_p11_bench"), "--label", "no-such-key", "--count", "1", "--no-sweep"],
                             env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "no private key labelled no-such-key" in missing.stderr, missing.stderr
