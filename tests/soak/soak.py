"""The soak: nginx serving full TLS handshakes through both HSM paths while the emulator injects
every fault it has, nginx reloads, and finally the HSM is stopped and started again.

    python -m tests.soak.soak [--seconds 180] [--mix issue|today]

Two servers, 4 workers each (running as nobody): nginx 1.30 with `store:` keys through the provider,
and Debian's nginx 1.22 with the libp11 engine on the PKCS#11 module. Four client processes (one per
server and key type) open new connections in a loop (bench/tls_load.py), so every handshake signs.

Phases, each on one timeline:
  faults    every fault kind the emulator has, in bursts (see MIXES), with reloads between them
            (one while the token service is down). The bar: 0 failed handshakes.
  down      the HSM stopped: a handshake must fail within the configured time (ConnectTimeout +
            RetryBudget, measured by a probe client), never hang;
  back      the HSM started again on the same port: the same workers serve again.
Printed: handshakes ok/failed per phase and path, faults injected by kind, retries the module logged.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))  # the benchmarks' emulator lab, nginx servers and TLS load
import nginx_paths  # noqa: E402
import tls_load  # noqa: E402
from harness import Lab  # noqa: E402

from mhsm_emulator import launcher  # noqa: E402
from mhsm_emulator.admin_client import EmulatorAdmin  # noqa: E402
from tests.logscan import EVERY_FILE_FLAG  # noqa: E402

# Short timeouts, so the "down" phase ends fast; the retry budget is what a burst must fit in.
OPTIONS = {"ConnectTimeout": 1, "RequestTimeout": 5, "RetryBudget": 8}  # MaxRetries: the default
PATHS = ("provider", "engine")
TLS = "TLS 1.3"


@dataclass(frozen=True)
class Burst:
    """`count` faults of `kind` queued at once on `operation` (one at a time when `serial`)."""

    kind: str
    count: int
    operation: str = "sign"
    retry_after: int | None = None
    stall_seconds: float = 10.0
    serial: bool = False  # a second 401 in one call is a real failure: queue these one by one


# "today": bursts no call can meet more than MaxRetries times (the transport's retry count), so the
# zero-failure bar holds whatever the request rate; "issue": issue 13's mix, where one burst is 20
# refusals spread over 8 workers: it passes once retries are bounded by time (RetryBudget) only.
MIXES: dict[str, list[Burst | str]] = {
    "today": [Burst("unavailable", 4), Burst("token_expired", 2, serial=True), Burst("throttle", 4, retry_after=1),
              "outage-reload", Burst("reset", 3), Burst("token_rejected", 1, serial=True), Burst("error", 3),
              Burst("stall", 2, stall_seconds=1.0), "reload", Burst("unavailable", 4, operation="*")],
    "issue": [Burst("unavailable", 20), Burst("throttle", 10, retry_after=1), "reload", Burst("reset", 5),
              Burst("error", 5), Burst("stall", 3, stall_seconds=1.0), Burst("token_expired", 3, serial=True),
              Burst("token_rejected", 2, serial=True), "outage-reload", Burst("unavailable", 20, operation="*"),
              "reload", "reload", "reload"],
}


@dataclass
class Phase:
    name: str
    began: float
    ended: float = 0.0


@dataclass
class Report:
    phases: list[Phase] = field(default_factory=list)
    events: dict[str, list[tuple[float, bool]]] = field(default_factory=dict)  # "provider RSA" -> events
    faults: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    reloads: int = 0
    causes: dict[str, int] = field(default_factory=dict)  # the module's logged sign errors, faults phase
    down_failures: list[float] = field(default_factory=list)  # seconds each probe took to fail, HSM down
    same_workers: bool = False
    notes: list[str] = field(default_factory=list)
    logs: Path | None = None  # the module's log files
    secrets: list[str] = field(default_factory=list)  # the principals' client secrets (for a log scan)

    def count(self, phase: Phase, path: str | None = None) -> tuple[int, int]:
        ok = failed = 0
        for name, events in self.events.items():
            if path is None or name.startswith(path):
                for began, good in events:
                    if phase.began <= began < phase.ended:
                        ok, failed = ok + good, failed + (not good)
        return ok, failed

    def lines(self) -> list[str]:
        out = []
        for phase in self.phases:
            per_path = ", ".join(f"{p} {'/'.join(map(str, self.count(phase, p)))}" for p in PATHS)
            ok, failed = self.count(phase)
            out.append(f"{phase.name:7} {phase.ended - phase.began:5.1f} s: {ok} handshakes ok, {failed} failed "
                       f"(ok/failed: {per_path})")
        out.append(f"faults injected: {json.dumps(self.faults, sort_keys=True)}; reloads: {self.reloads}; "
                   f"retries logged by the module: {self.retries}")
        if self.causes:
            out.append(f"sign errors the module logged under faults, by cause: {json.dumps(self.causes, sort_keys=True)}")
        if self.down_failures:
            out.append(f"HSM down: probes failed in {', '.join(f'{s:.1f}' for s in self.down_failures)} s "
                       f"(limit {limit():.0f} s); the same workers served again: {self.same_workers}")
        return out + self.notes


LOGGED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ERROR .*?(?:C_Sign|py_sign): (.*)$", re.M)
CAUSE = re.compile(r"\(HTTP (\d{3})|(cannot reach the HSM)")


def causes(text: str, phase: Phase) -> dict[str, int]:
    """The module's sign errors logged during `phase`, by HTTP status (or "unreachable")."""
    found: dict[str, int] = {}
    for stamp, millis, message in LOGGED.findall(text):
        at = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000
        if phase.began <= at <= phase.ended:
            cause = CAUSE.search(message)
            name = (f"HTTP {cause.group(1)}" if cause.group(1) else "unreachable") if cause else message[:60]
            found[name] = found.get(name, 0) + 1
    return found


def limit() -> float:
    """How long a handshake may take to fail with the HSM down: the configured connect and retry
    budget, plus the backoff's last sleep and the handshake itself."""
    return OPTIONS["ConnectTimeout"] + OPTIONS["RetryBudget"] + 3.0


class Soak:
    def __init__(self, lab: Lab, seconds: float, mix: str, logs: Path | None = None) -> None:
        self.lab, self.seconds, self.mix = lab, seconds, MIXES[mix]
        self.report = Report(secrets=[p["client_secret"] for p in lab.info["principals"].values()
                                      if p.get("client_secret")])
        # Outside the lab's directory, which the workers (nobody) may not enter: each writes its own
        # file, with every content flag on (level debug, FunctionLevelTrace...).
        if logs is None:
            logs = Path(tempfile.mkdtemp(prefix="mhsm-soak-logs-"))
            logs.chmod(0o1777)
        self.logs = self.report.logs = logs
        lab.env["MHSM_PKCS11_CONF"] = lab.conf("soak.conf", options=OPTIONS,
                                               log={**EVERY_FILE_FLAG, "directory": str(self.logs)})
        self.servers = {path: nginx_paths.Server(lab, path, lab.tmp / path) for path in PATHS}

    # -- steering ------------------------------------------------------------------------------

    def _drained(self, timeout: float = 15.0) -> None:
        """Wait until the emulator has served every queued fault (the next burst must not add to it)."""
        deadline = time.monotonic() + timeout
        while self.lab.admin.counters()["faults_pending"] and time.monotonic() < deadline:
            time.sleep(0.05)

    def _inject(self, burst: Burst) -> None:
        for _ in range(burst.count if burst.serial else 1):
            self.lab.admin.inject(burst.kind, burst.operation, count=1 if burst.serial else burst.count,
                                  retry_after=burst.retry_after, stall_seconds=burst.stall_seconds)
            self._drained()
            # A call that met the last fault is still retrying (after a sleep, or a token refresh):
            # let it finish before the next fault, which it must not meet as well.
            time.sleep(max(burst.retry_after or 0, burst.stall_seconds if burst.kind == "stall" else 0) + 0.5)

    def _reload(self) -> None:
        """SIGHUP both masters, and wait until each has 4 new workers."""
        before = {path: set(server.workers()) for path, server in self.servers.items()}
        for server in self.servers.values():
            server.process.send_signal(1)
        for path, server in self.servers.items():
            deadline = time.monotonic() + 30
            while not (len(now := set(server.workers())) == nginx_paths.WORKERS and not now & before[path]):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{path}: no new workers after a reload; see {server.dir}/error.log")
                time.sleep(0.1)
        self.report.reloads += 1

    def _fault_schedule(self, until: float) -> None:
        """Run the mix, again and again, until `until`; a pause between steps lets the load settle."""
        while True:
            for step in self.mix:
                if time.time() >= until - 1.0:
                    return
                if step == "reload":
                    self._reload()
                elif step == "outage-reload":  # the login service answers 503 three times meanwhile
                    self.lab.admin.inject("token_outage", count=3)
                    self._reload()
                    self.lab.admin.inject("token_expired", "sign", count=1)  # a refresh that meets the rest
                    self._drained()
                else:
                    self._inject(step)

    # -- running -------------------------------------------------------------------------------

    def _load(self, until: float) -> list[threading.Thread]:
        """One client process per server and key type, until `until`."""
        threads = []
        for path, server in self.servers.items():
            for kind, port in server.ports.items():
                name = f"{path} {kind}"

                def run(port: int = port, name: str = name) -> None:
                    self.report.events[name] = tls_load.load(port, TLS, processes=1,
                                                             seconds=until - time.time())["events"]

                threads.append(threading.Thread(target=run, name=name))
        for thread in threads:
            thread.start()
        return threads

    def _phase(self, name: str, body: Callable[[], None]) -> None:
        phase = Phase(name, time.time())
        self.report.phases.append(phase)
        try:
            body()
        finally:
            phase.ended = time.time()

    def _probe(self) -> tuple[bool, float]:
        """One handshake on the provider's EC port: (succeeded, seconds it took)."""
        began = time.monotonic()
        [(_, ok)] = tls_load._client(self.servers["provider"].ports["EC"], TLS, time.time() + 120, 1)
        return ok, time.monotonic() - began

    def run(self) -> Report:
        down_seconds, back_seconds = limit() + 4.0, 5.0  # the down phase: a probe, a restart, a probe
        faults_seconds = max(10.0, self.seconds - down_seconds - back_seconds)
        end = time.time() + faults_seconds + down_seconds + back_seconds
        loads = self._load(end)
        try:
            faults_end = time.time() + faults_seconds
            self._phase("faults", lambda: self._fault_schedule(faults_end))
            time.sleep(max(0.0, faults_end - time.time()))
            self.report.phases[0].ended = time.time()
            self.report.faults = dict(self.lab.admin.counters()["faults_injected"])
            workers = {path: set(server.workers()) for path, server in self.servers.items()}
            self._phase("down", self._hsm_down)
            self._phase("back", lambda: time.sleep(max(0.0, end - time.time())))
            self.report.same_workers = workers == {p: set(s.workers()) for p, s in self.servers.items()}
        finally:
            for thread in loads:
                thread.join(timeout=max(60.0, end - time.time() + 60))
        text = "".join(p.read_text(errors="replace") for p in self.logs.glob("MHSM-PKCS11-*.log")
                       if p.stat().st_mtime >= self.report.phases[0].began - 60)
        self.report.retries = text.count("; retry ")
        self.report.causes = causes(text, self.report.phases[0])
        return self.report

    def _hsm_down(self) -> None:
        """Stop the emulator, probe, start it again on the same port and state."""
        lab = self.lab
        port = lab.info["url"].rstrip("/").rsplit(":", 1)[1]
        lab.emulator.stop(timeout=10)
        time.sleep(0.5)
        ok, took = self._probe()
        if ok:
            self.report.notes.append("a handshake succeeded with the HSM down")
        self.report.down_failures.append(took)
        lab.emulator = launcher.start(lab.emulator.state_dir, "--port", port)
        lab.info = lab.emulator.info
        lab.admin = EmulatorAdmin(lab.info["admin_url"], lab.info["admin_secret"])
        deadline = time.monotonic() + 30
        while not self._probe()[0] and time.monotonic() < deadline:
            time.sleep(0.2)

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()


def soak(seconds: float, mix: str = "today", logs: Path | None = None) -> Report:
    """Run the soak, the module logging to `logs` (default: a new directory, in the report)."""
    lab = Lab()
    try:
        run = Soak(lab, seconds, mix, logs)
        try:
            return run.run()
        finally:
            run.stop()
    finally:
        lab.emulator.stop(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="length of the whole soak")
    parser.add_argument("--mix", choices=sorted(MIXES), default="issue", help="the fault bursts (see MIXES)")
    args = parser.parse_args()
    report = soak(args.seconds, args.mix)
    print("\n".join(report.lines()))
    faults = report.phases[0]
    failed = report.count(faults)[1]
    down_ok = all(s <= limit() for s in report.down_failures) and report.same_workers
    back_ok = report.count(report.phases[2])[0] > 0
    print(f"bar: {failed} failed handshakes under faults (0 needed); down: {'ok' if down_ok else 'NOT MET'}; "
          f"back: {'ok' if back_ok else 'NOT MET'}")
    return 0 if failed == 0 and down_ok and back_ok else 1


if __name__ == "__main__":
    sys.exit(main())
