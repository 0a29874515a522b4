"""7. Key lookup: one cold search by label against the number of keys on the HSM (10, 100, 1000), with
5 ms injected per request, by this checkout's core and by the core before mhsm_core/lookup.py
(BASELINE, taken from git with `git archive`), each in a fresh process as a host starts: time and
requests. Target: ceil(N / 25) list calls and one GET, whatever N."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable
from unittest import mock

from harness import REPO, Figure, Lab
from mhsm_emulator import launcher
from mhsm_emulator.admin_client import EmulatorAdmin
from tests.keyfill import fill, library_name, library_tags  # the checkout's, on the path harness sets

MEASUREMENT = "7. key lookup"
# The last commit whose search read every library key (a GET each) and then filtered by label.
BASELINE = "a1da91f"
COUNTS = (10, 100, 1000)
LATENCY_MS = 5.0
TARGET = "target"
# What a host does on its first search, in a process of its own; prints where the core came from.
SEARCH = """
import json, sys, time
import mhsm_core
from mhsm_core.hsm import Library
hsm = Library.load().hsm(0)
hsm.tokens.get()
began = time.perf_counter()
found = hsm.keys.find(label=sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - began, "found": len(found), "core": mhsm_core.__file__}))
"""


def baseline_core(directory: Path) -> Path | None:
    """The baseline's mhsm_core, unpacked under `directory`; None outside a git checkout holding it."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", BASELINE, "mhsm_core"], capture_output=True)
    if archive.returncode != 0:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive.stdout, check=True)
    return directory


def search(code: Path, env: dict[str, str], admin: EmulatorAdmin, cwd: Path) -> tuple[float, int]:
    """(seconds, requests) of one cold search by `code`'s core."""
    admin.reset(faults=False, latency=False)
    result = subprocess.run([sys.executable, "-c", SEARCH, TARGET], env={**env, "PYTHONPATH": str(code)}, cwd=cwd,
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"the search failed: {result.stderr.strip()[-1500:]}")
    out = json.loads(result.stdout)
    if out["found"] != 1 or not out["core"].startswith(str(code)):
        raise RuntimeError(f"the search by {code} found {out['found']} keys with the core at {out['core']}")
    by_operation = admin.counters()["requests"]["by_operation"]
    return out["seconds"], by_operation.get("list", 0) + by_operation.get("get", 0)


def run(lab: Lab, runs: int, tick: Callable[[], None], counts: tuple[int, ...] = COUNTS) -> list[Figure]:
    old = baseline_core(lab.tmp / "baseline")
    emulator = launcher.start(lab.tmp / "lookup-hsm")
    admin = EmulatorAdmin(emulator.info["admin_url"], emulator.info["admin_secret"])
    who = emulator.info["principals"]["keygen"]
    env = {**lab.env, "MHSM_PKCS11_CONF": emulator.info["conf_file"], "MHSM_CLIENT_ID": who["client_id"],
           "MHSM_CLIENT_SECRET": who["client_secret"]}
    figures: list[Figure] = []
    try:
        with mock.patch.dict(os.environ, env):
            from mhsm_core.hsm import Library

            token = Library.load().hsm(0).tokens.get()
        held = 0
        for count in counts:
            keys: dict[str, dict[str, str]] = {library_name(): library_tags(TARGET)} if held == 0 else {}
            keys |= {library_name(): library_tags(f"other-{held + i}") for i in range(count - held - len(keys))}
            fill(emulator.info, token, keys)
            held = count
            admin.set_latency("*", fixed_ms=LATENCY_MS)
            measured: dict[str, Any] = {}
            for name, code in (("new", REPO), ("old", old)):
                if code is not None:
                    samples = [search(code, env, admin, lab.tmp) for _ in range(runs)]
                    measured[name] = (statistics.median(s for s, _ in samples), samples[0][1])
            admin.set_latency("*", fixed_ms=0)
            figures += _figures(count, runs, measured)
            tick()
    finally:
        admin.close()
        emulator.stop(timeout=10)
    return figures


def _figures(count: int, runs: int, measured: dict[str, Any]) -> list[Figure]:
    seconds, requests = measured["new"]
    expected = math.ceil(count / 25) + 1
    old_name = f"list and GET every key ({BASELINE})"
    old_seconds, old_requests = measured.get("old", (None, None))
    note = f"median of {runs}; {LATENCY_MS:g} ms per request" + ("" if old_seconds else f"; {BASELINE} not in git")
    return [Figure(MEASUREMENT, f"{count} keys, cold search time", round(seconds, 3), "s", old_name,
                   round(old_seconds, 3) if old_seconds else None,
                   _ratio(seconds, old_seconds), "", None, note),
            Figure(MEASUREMENT, f"{count} keys, requests", requests, "requests", old_name, old_requests,
                   _ratio(requests, old_requests), f"= {expected}", requests == expected,
                   "list calls + GETs")]


def _ratio(value: float, baseline: float | None) -> float | None:
    """Four significant digits: the new code's ratios are small, and two decimals would say 0."""
    return float(f"{value / baseline:.4g}") if baseline else None
