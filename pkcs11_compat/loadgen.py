"""The C load generators (bench/csrc): built on first use, run with their progress followed.

They are C so that what is measured is the library, not a Python caller: `p11load` signs through
a PKCS#11 module as a C host does, `evpload` through OpenSSL with a key the provider loads.
Used by `mhsm_p11_bench` and by `make bench`.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Callable

from mhsm_core.errors import MhsmError

REPO = Path(__file__).resolve().parent.parent
SOURCES = REPO / "bench" / "csrc"
BUILD = REPO / "build"
LIBRARIES = {"p11load": ["-ldl"], "evpload": ["-lcrypto"], "tlsload": ["-lssl", "-lcrypto"]}


def binary(name: str) -> Path:
    """build/NAME, compiled from bench/csrc/NAME.c when missing or older than its sources."""
    source, built = SOURCES / f"{name}.c", BUILD / name
    newest = max(source.stat().st_mtime, (SOURCES / "loadgen.h").stat().st_mtime)
    if not built.exists() or built.stat().st_mtime < newest:
        BUILD.mkdir(exist_ok=True)
        subprocess.run(["gcc", "-Wall", "-Wextra", "-O2", "-pthread", "-I/usr/include/p11-kit-1", "-o", str(built),
                        str(source), *LIBRARIES[name]], check=True)
    return built


def run(argv: list[str], env: dict[str, str], tick: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run a load generator; `tick(done, errors)` follows its progress. Returns its JSON result."""
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None and process.stdout is not None
    other = []
    for line in process.stderr:
        fields = line.split()
        if len(fields) == 3 and fields[0] == "progress":
            if tick:
                tick(int(fields[1]), int(fields[2]))
        else:
            other.append(line)
    out = process.stdout.read()
    if process.wait() != 0 or not out.strip():
        raise MhsmError(f"{''.join(other)[-2000:].strip() or Path(argv[0]).name + ' failed'}")
    return json.loads(out)
