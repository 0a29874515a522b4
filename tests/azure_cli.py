"""Microsoft's Azure CLI, in its own cached venv, pointed at an emulator through a custom cloud.

Why a venv of its own: azure-cli pins its own azure-* and msal versions, which must not move the ones
the project tests with. It is installed once per machine (a fresh CI clone installs it itself, about
three minutes) under `~/.cache/mhsm-tls-offload/` (or `$MHSM_AZURE_CLI_VENV`), outside the checkout,
so later clones and runs reuse it.

How the CLI reaches the emulator without touching the machine (no /etc/hosts, no DNS): the CLI builds
an HSM's URL as `https://<--hsm-name><suffixes.mhsmDns>`. With the suffix `.0.0.1:<port>` and
`--hsm-name 127` that is `https://127.0.0.1:<port>`, an address the emulator's certificate covers
and that needs no name resolution. The CLI turns off the SDK's challenge-resource check for key
vault clients itself, so the challenge's `managedhsm.azure.net` resource does not have to match.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

AZURE_CLI_VERSION = "2.91.0"
HSM_NAME = "127"  # with the suffix below, the CLI's URL for this "HSM" is https://127.0.0.1:<port>
CLOUD = "MhsmEmulator"


def venv_dir() -> Path:
    default = Path.home() / ".cache" / "mhsm-tls-offload" / f"azure-cli-{AZURE_CLI_VERSION}"
    return Path(os.environ.get("MHSM_AZURE_CLI_VENV", default))


def ensure_installed(timeout: float = 1200.0) -> Path:
    """The `az` of the cached venv, installing azure-cli first if this machine has none yet."""
    venv = venv_dir()
    az, done = venv / "bin" / "az", venv / ".installed"
    if done.exists():
        return az
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer per machine; the others wait, then reuse it
        if not done.exists():
            log = venv.parent / f"{venv.name}.install.log"
            with open(log, "w") as out:
                steps = ([sys.executable, "-m", "venv", "--clear", str(venv)],
                         [str(venv / "bin" / "pip"), "install", "--disable-pip-version-check",
                          f"azure-cli=={AZURE_CLI_VERSION}"])
                for step in steps:
                    if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, timeout=timeout).returncode:
                        raise RuntimeError(f"installing azure-cli {AZURE_CLI_VERSION} failed: {' '.join(step)}; "
                                           f"see {log}:\n{log.read_text()[-1500:]}")
            done.write_text(AZURE_CLI_VERSION + "\n")
    return az


def cloud_config(info: dict[str, Any]) -> dict[str, Any]:
    """The custom cloud: the emulator's Entra listener as authority, Resource Manager and Graph (it
    serves the one call of each the CLI makes), and the HSM suffix that lands on the data plane."""
    authority, port = info["authority"], info["url"].rsplit(":", 1)[1]
    return {"endpoints": {"activeDirectory": authority,
                          "activeDirectoryResourceId": "https://management.core.windows.net/",
                          "resourceManager": authority + "/", "microsoftGraphResourceId": authority + "/"},
            "suffixes": {"mhsmDns": f".0.0.1:{port}", "keyvaultDns": ".vault.azure.net"}}


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


class AzureCli:
    """`az` with an isolated AZURE_CONFIG_DIR that trusts only the emulator's CA."""

    def __init__(self, az: Path, config_dir: Path, info: dict[str, Any]) -> None:
        self.az, self.info = az, info
        self.env = {k: v for k, v in os.environ.items()
                    if not k.upper().startswith(("AZURE_", "HTTP_PROXY", "HTTPS_PROXY", "REQUESTS_CA", "MSI_"))}
        self.env |= {"AZURE_CONFIG_DIR": str(config_dir), "REQUESTS_CA_BUNDLE": info["ca_file"],
                     "AZURE_CORE_COLLECT_TELEMETRY": "false", "AZURE_CORE_NO_COLOR": "true"}

    def run(self, *args: str, check: bool = True) -> Result:
        done = subprocess.run([str(self.az), *args, "--only-show-errors"], env=self.env, capture_output=True,
                              text=True, timeout=120)
        result = Result(done.returncode, done.stdout, done.stderr)
        if check and done.returncode:
            shown = " ".join("--password=***" if a.startswith("--password=") else a for a in args)
            raise AssertionError(f"az {shown} failed ({done.returncode}): {done.stderr[-2000:]}")
        return result

    def register_cloud(self) -> None:
        self.run("cloud", "register", "--name", CLOUD, "--skip-endpoint-discovery",
                 "--cloud-config", json.dumps(cloud_config(self.info)), "--output", "none")
        self.run("cloud", "set", "--name", CLOUD)
        self.run("config", "set", "core.instance_discovery=false")

    def login(self, principal: str) -> None:
        p = self.info["principals"][principal]
        self.run("login", "--service-principal", "--username", p["client_id"], f"--password={p['client_secret']}",
                 "--tenant", self.info["tenant_id"], "--allow-no-subscriptions", "--output", "none")
