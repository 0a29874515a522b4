"""The module under a seeded C fuzzer (fuzz.c): every implemented function with random and hostile
templates, mechanisms, parameters, lengths, NULL pointers and handles, for a bounded time.

The bar: no crash (the exit status is the number of violations; a signal is a negative one), every
return value one PKCS#11 2.40 lists for its function, no session left with an active operation,
no Python exception escaping as a bug (the module logs those as "unexpected error", with every log
flag and FunctionLevelTrace on here), and resident memory that stops growing: the last third of
the rounds may add at most 1 MB (a leak of ~90 bytes per call would add several).
The seed is printed; MHSM_FUZZ_SEED and MHSM_FUZZ_SECONDS replay or lengthen a run.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests import logscan
from tests.conftest import Emulator, start_emulator
from tests.core.conftest import write_conf
from tests.pkcs11.conftest import make_pair, p11_for

FUZZ_C = Path(__file__).with_name("fuzz.c")
SEED = int(os.environ.get("MHSM_FUZZ_SEED", "13"))
SECONDS = float(os.environ.get("MHSM_FUZZ_SECONDS", "30"))
LAST_THIRD_GROWTH_KB = 1024


@pytest.fixture(scope="module")
def fuzz_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """An emulator of its own: the fuzzer relabels, retags and makes keys at random."""
    emulator = start_emulator(tmp_path_factory.mktemp("emulator-fuzz"))
    yield emulator
    emulator.stop()


def test_fuzz_the_module_from_c(fuzz_emulator: Emulator, tmp_path: Path) -> None:
    binary = tmp_path / "fuzz"
    built = subprocess.run(["gcc", "-Wall", "-Wextra", "-Werror", "-O1", "-I/usr/include/p11-kit-1", str(FUZZ_C),
                            "-o", str(binary), "-ldl"], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    p11 = p11_for(fuzz_emulator)
    for kind in ("rsa:2048", "EC:prime256v1"):
        make_pair(p11, tmp_path, kind)
    logs = tmp_path / "logs"
    logs.mkdir()
    conf = write_conf(fuzz_emulator, tmp_path / "fuzz.conf", log={**logscan.EVERY_FILE_FLAG, "directory": str(logs)})
    env = {**p11.env, "MHSM_PKCS11_CONF": str(conf)}
    result = subprocess.run([str(binary), p11.module, str(SEED), str(SECONDS)], env=env, capture_output=True,
                            text=True, timeout=SECONDS + 120)
    lines = result.stdout.splitlines()
    print(f"seed {SEED}: " + " ".join(lines[-2:]))
    assert result.returncode == 0, "\n".join([f"fuzz (seed {SEED}) exited {result.returncode}",
                                              *[line for line in lines if line.startswith("BAD")][:30],
                                              result.stderr[-3000:]])
    [calls] = [int(line.split()[1]) for line in lines if line.startswith("calls ")]
    assert calls >= 5000, f"only {calls} calls in {SECONDS} s"
    counts = {line.split()[1]: int(line.split()[2]) for line in lines if line.startswith("count ")}
    assert len(counts) == 28 and min(counts.values()) > 0, counts  # every implemented function was called
    rss = [int(line.split()[5]) for line in lines if line.startswith("round ")]
    assert len(rss) >= 6, lines[-5:]
    last_third = rss[-(len(rss) // 3):]
    assert last_third[-1] - last_third[0] <= LAST_THIRD_GROWTH_KB, f"RSS kept growing: {rss}"
    written = "".join(p.read_text(errors="replace") for p in logs.glob("MHSM-PKCS11-*.log"))
    assert "C_Sign" in written, "FunctionLevelTrace logged every call"
    assert "unexpected error" not in written, written[written.find("unexpected error") - 2000:][:6000]
