"""A small client for the emulator's admin interface, for tests and benchmarks.

    admin = EmulatorAdmin.from_state_dir(state_dir)
    admin.inject("throttle", operation="sign", count=2, retry_after=1)
    assert admin.counters()["faults_injected"]["throttle"] == 2
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx


class EmulatorAdmin:
    def __init__(self, admin_url: str, admin_secret: str) -> None:
        self._http = httpx.Client(base_url=admin_url, headers={"Authorization": f"Bearer {admin_secret}"},
                                  timeout=10.0, trust_env=False)

    @classmethod
    def from_state_dir(cls, state_dir: str | Path) -> "EmulatorAdmin":
        info = json.loads((Path(state_dir) / "emulator.json").read_text())
        return cls(info["admin_url"], info["admin_secret"])

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self._http.post(path, json=body)
        response.raise_for_status()
        return response.json()

    def counters(self) -> dict[str, Any]:
        response = self._http.get("/counters")
        response.raise_for_status()
        return response.json()

    def set_latency(self, operation: str = "*", fixed_ms: float = 0.0, jitter_ms: float = 0.0) -> None:
        """Delay every call of `operation` ("sign", "token", ... or "*") by fixed + uniform(0, jitter) ms."""
        self._post("/latency", {"operation": operation, "fixed_ms": fixed_ms, "jitter_ms": jitter_ms})

    def inject(self, kind: str, operation: str = "*", count: int = 1, retry_after: int | None = None,
               stall_seconds: float = 10.0) -> dict[str, Any]:
        """Make the next `count` calls of `operation` fail with `kind` (see control.FAULT_KINDS)."""
        return self._post("/faults", {"kind": kind, "operation": operation, "count": count,
                                      "retry_after": retry_after, "stall_seconds": stall_seconds})

    def reset(self, counters: bool = True, faults: bool = True, latency: bool = True) -> None:
        self._post("/reset", {"counters": counters, "faults": faults, "latency": latency})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "EmulatorAdmin":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
