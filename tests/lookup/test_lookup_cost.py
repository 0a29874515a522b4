"""What finding a key costs on an HSM holding many keys, counted by the emulator, through both front ends.

One emulator holds 300 library keys, 50 foreign ones (no p11_ tags), the keys looked up, and two keys
whose tags were edited by hand. A search by label or by a stored id costs the listing
(`ceil(N / 25)` list calls) and one GET; an id that is a key's own name costs one GET; the same
search again in the same process costs nothing (docs/key-model.md, "Finding a key").
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from unittest import mock

import pytest

from mhsm_core import tags
from mhsm_core.errors import KeyMismatch
from mhsm_core.hsm import Library
from tests.conftest import Emulator, start_emulator
from tests.keyfill import fill, library_name, library_tags
from tests.pkcs11.conftest import P11, p11_for
from tests.provider.conftest import Hsm, provider_cnf

HERE = Path(__file__).resolve().parent
LIBRARY_KEYS, FOREIGN_KEYS = 300, 50


@dataclass
class Lab:
    emulator: Emulator
    p11: P11
    openssl_env: dict[str, str]
    store_twice: Path
    total: int  # keys on the HSM
    label_id: bytes  # the stored CKA_ID of the key labelled "target"
    named: str  # a key made without CKA_ID: its id is its name

    def counts(self) -> tuple[int, int]:
        """(list calls, GETs) since the last reset; the counters are reset."""
        by_operation = self.emulator.admin.counters()["requests"]["by_operation"]
        self.emulator.admin.reset(faults=False, latency=False)
        return by_operation.get("list", 0), by_operation.get("get", 0)

    @property
    def pages(self) -> int:
        return math.ceil(self.total / 25)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("lookup")
    emulator = start_emulator(tmp / "hsm", "--scenario", "permissive")
    try:
        label_id, named = os.urandom(8), library_name()
        keys = {library_name(): library_tags(f"filler-{i}", os.urandom(8) if i % 2 else None, typed=i % 3 != 0)
                for i in range(LIBRARY_KEYS)}
        keys |= {f"web-{i}": {"owner": "web-team"} for i in range(FOREIGN_KEYS)}
        keys |= {library_name(): library_tags("target", label_id), named: library_tags("named-target"),
                 library_name(): {**library_tags("curve-edited"), tags.KEY_TYPE: "EC P-384"},
                 library_name(): {**library_tags("type-edited"), tags.KEY_TYPE: "RSA 2048"}}
        fill(emulator.info, emulator.token("keygen"), keys)
        p11 = p11_for(emulator)
        cnf = provider_cnf(Hsm(emulator, p11.env, {}, {}), tmp / "openssl.cnf")
        host = tmp / "store_twice"
        subprocess.run(["gcc", "-Wall", "-Wextra", "-Werror", "-o", str(host), str(HERE / "store_twice.c"), "-lcrypto"],
                       check=True, timeout=60)
        yield Lab(emulator, p11, {**p11.env, "OPENSSL_CONF": str(cnf)}, host, len(keys), label_id, named)
    finally:
        emulator.stop()


def cold_then_warm(lab: Lab, argv: list[str], env: dict[str, str]) -> tuple[tuple[int, int], tuple[int, int], list[str]]:
    """Counts of a host's first search and of the same search again in the same process, and what it found."""
    lab.counts()
    host = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert host.stdout is not None and host.stdin is not None
        first = host.stdout.readline().strip()
        cold = lab.counts()
        host.stdin.write("\n")
        host.stdin.flush()
        second = host.stdout.readline().strip()
        warm = lab.counts()
        _, errors = host.communicate(timeout=60)
    finally:
        host.kill()
    assert host.returncode == 0, f"{argv} exited {host.returncode}: {errors}"
    return cold, warm, [first, second]


def searches(lab: Lab) -> dict[str, tuple[str, str, tuple[int, int]]]:
    """Search -> (URI, (by, value) for C_FindObjects, its cold (list calls, GETs))."""
    named_id = bytes.fromhex(lab.named[4:])
    return {"label": ("pkcs11:object=target", ("label", "target"), (lab.pages, 1)),
            "id": ("pkcs11:id=" + "".join(f"%{b:02x}" for b in lab.label_id), ("id", lab.label_id.hex()), (lab.pages, 1)),
            "name": ("pkcs11:id=" + "".join(f"%{b:02x}" for b in named_id), ("id", named_id.hex()), (0, 1))}


@pytest.mark.parametrize("search", ["label", "id", "name"])
def test_provider_search_costs_the_listing_and_one_get_then_nothing(lab: Lab, search: str) -> None:
    uri, _, expected = searches(lab)[search]
    cold, warm, found = cold_then_warm(lab, [str(lab.store_twice), uri], lab.openssl_env)
    assert found == ["2", "2"]  # the private and the public key, both times
    assert (cold, warm) == (expected, (0, 0)), f"{uri}: (list calls, GETs) cold {cold}, warm {warm}"


@pytest.mark.parametrize("search", ["label", "id", "name"])
def test_pkcs11_search_costs_the_listing_and_one_get_then_nothing(lab: Lab, search: str) -> None:
    _, (by, value), expected = searches(lab)[search]
    cold, warm, found = cold_then_warm(lab, [sys.executable, str(HERE / "find_twice.py"), lab.p11.module, lab.p11.pin,
                                             by, value], lab.p11.env)
    assert found == ["1", "1"]
    assert (cold, warm) == (expected, (0, 0)), f"C_FindObjects by {by}: (list calls, GETs) cold {cold}, warm {warm}"


def test_openssl_cli_cold_lookup_by_label(lab: Lab) -> None:
    """The measurement of the issue: `openssl pkey -in pkcs11:object=target -pubout`, one process."""
    lab.counts()
    result = subprocess.run(["openssl", "pkey", "-in", "pkcs11:object=target", "-pubout"], env=lab.openssl_env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "BEGIN PUBLIC KEY" in result.stdout, result.stderr
    assert lab.counts() == (lab.pages, 1)


@pytest.fixture
def library(lab: Lab) -> Iterator[Library]:
    with mock.patch.dict(os.environ, lab.p11.env):
        yield Library.load()


def test_concurrent_searches_share_one_listing_and_one_get(lab: Lab, library: Library) -> None:
    keys, barrier, found = library.hsm(0).keys, threading.Barrier(8), []

    def search() -> None:
        barrier.wait()
        found.append(keys.find(label="target"))

    lab.counts()
    threads = [threading.Thread(target=search) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(found) == 8 and all(len(f) == 1 and f[0].key_id == lab.label_id for f in found)
    assert lab.counts() == (lab.pages, 1)


def test_a_search_by_type_alone_fetches_only_keys_the_type_tag_does_not_rule_out(lab: Lab, library: Library) -> None:
    lab.counts()
    keys = library.hsm(0).keys.find(kty="EC")
    # Every library key but the one tagged RSA is fetched; the one whose curve tag lies is refused.
    assert len(keys) == LIBRARY_KEYS + 2 and {k.label for k in keys} >= {"target", "named-target"}
    assert lab.counts() == (lab.pages, LIBRARY_KEYS + 3)
    with pytest.raises(KeyMismatch, match="says 'RSA 2048' but the key is EC P-256"):
        library.hsm(0).keys.find(kty="RSA")
    # Only the key tagged RSA is fetched (the untyped ones are cached), in the cached listing and again
    # after the re-list a miss in a cached listing makes.
    assert lab.counts() == (lab.pages, 2)


@pytest.mark.parametrize("label", ["curve-edited", "type-edited"])
def test_a_key_whose_type_tag_lies_is_reported_not_used(lab: Lab, library: Library, label: str) -> None:
    with pytest.raises(KeyMismatch, match=r"key p11-[0-9a-f]{32}: its tag p11_pri_CKA_KEY_TYPE says '(EC P-384|RSA 2048)' "
                                          r"but the key is EC P-256"):
        library.hsm(0).keys.find(label=label)
    signs = lab.emulator.admin.counters()["signs"]["total"]
    result = subprocess.run(["openssl", "pkeyutl", "-sign", "-inkey", f"pkcs11:object={label}", "-in", "/dev/null"],
                            env=lab.openssl_env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "but the key is EC P-256" in result.stderr, result.stderr
    found = subprocess.run([sys.executable, str(HERE / "find_twice.py"), lab.p11.module, lab.p11.pin, "label", label],
                           env=lab.p11.env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert found.returncode != 0 and "FunctionFailed" in found.stderr, found.stdout + found.stderr  # CKR_FUNCTION_FAILED
    assert lab.emulator.admin.counters()["signs"]["total"] == signs

