"""What every benchmark shares: an emulator with two keys, the environments and configurations a
host needs, the C load generators, percentiles, and the figures they report.

Every figure is a ratio of two things measured in the same run (see docs/performance.md): the
absolute times on a shared 2-core machine move from run to run, the ratios much less.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from unittest import mock

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # runs as a script from a checkout
from mhsm_emulator import launcher  # noqa: E402
from mhsm_emulator.admin_client import EmulatorAdmin  # noqa: E402

BUILD = REPO / "build"
BIN = Path(sys.executable).parent
PKCS11_MODULE = BUILD / "libmhsm-pkcs11.so"
PROVIDER = BUILD / "mhsm.so"


@dataclass
class Figure:
    """One measured figure against its baseline, from the same run."""

    measurement: str  # e.g. "1. sign latency"
    name: str
    value: float
    unit: str
    baseline_name: str = ""
    baseline: float | None = None
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used so far (what a profile of the run starts from)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


class Lab:
    """One emulator with an RSA-2048 and an EC P-256 key, and what hosts need to use them."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="mhsm-bench-"))
        self.emulator = launcher.start(self.tmp / "hsm")
        self.info = self.emulator.info
        self.admin = EmulatorAdmin(self.info["admin_url"], self.info["admin_secret"])
        who = self.info["principals"]["keygen"]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("MHSM_", "OPENSSL_", "PYTHON"))}
        self.env.update(MHSM_PKCS11_CONF=self.conf(), MHSM_CLIENT_ID=who["client_id"],
                        MHSM_CLIENT_SECRET=who["client_secret"])
        self.labels = {"RSA": "bench-rsa", "EC": "bench-ec"}
        self.names = {}
        for kind, args in (("RSA", ["--RSA", "2K"]), ("EC", ["--EC", "P256"])):
            out = subprocess.run([str(BIN / "mhsm_p11_create_key"), *args, "--label", self.labels[kind]],
                                 env=self.env, capture_output=True, text=True, check=True).stdout
            self.names[kind] = out.strip().splitlines()[-1].split(": ")[1]

    def conf(self, name: str = "mhsm-pkcs11.conf", **changes: Any) -> str:
        """The emulator's configuration with `changes` ({"ConnectionCache": {...}, "options": {...}})."""
        document = json.loads(Path(self.info["conf_file"]).read_text())
        for section, values in changes.items():
            document.setdefault(section, {}).update(values)
        path = self.tmp / name
        path.write_text(json.dumps(document))
        return str(path)

    def openssl_cnf(self, name: str = "openssl.cnf", conf: str | None = None) -> str:
        """conf/openssl-mhsm.cnf pointed at this build and configuration."""
        text = (REPO / "conf" / "openssl-mhsm.cnf").read_text()
        text = text.replace("/usr/lib/x86_64-linux-gnu/ossl-modules/mhsm.so", str(PROVIDER))
        text = text.replace("mhsm-conf = /etc/mhsm-pkcs11.conf", f"mhsm-conf = {conf or self.env['MHSM_PKCS11_CONF']}")
        (self.tmp / name).write_text(text)
        return str(self.tmp / name)

    def public_keys(self) -> dict[str, Any]:
        """The keys' public parts, read through the core (for the servers' certificates)."""
        from mhsm_core.hsm import Library

        with mock.patch.dict(os.environ, self.env):
            hsm = Library.load().hsm(0)
            return {kind: hsm.keys.find(label=label)[0].public_key for kind, label in self.labels.items()}

    def signs(self) -> int:
        return int(self.admin.counters()["signs"]["total"])

    def latency(self, ms: float) -> None:
        self.admin.set_latency("sign", fixed_ms=ms)

    def close(self) -> None:
        self.emulator.stop(timeout=10)
        shutil.rmtree(self.tmp, ignore_errors=True)


def write_results(figures: list[Figure], path: Path, meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**meta, "figures": [asdict(f) for f in figures]}, indent=2) + "\n")
