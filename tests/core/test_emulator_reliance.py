"""Each place the core relies on a recorded behaviour of the service, checked against the emulator
that now answers as recorded (tests/emulator/test_recorded.py holds the facts and their sources):

- listing: `nextLink` is `https://<host>/keys?maxresults=N&$skiptoken=...` with no api-version, and the
  last page has no `nextLink` member at all; the core must follow the first and stop on the second;
- signing: the result is `{"alg", "kid", "value"}`; the core reads `value` and checks it locally;
- the challenge: a token-less GET answers 401 with the two bytes `OK` and the `WWW-Authenticate`
  header; the core takes the tenant from that header when the configuration names none.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from mhsm_core import signing
from mhsm_core.credentials import CLIENT_ID_ENV, CLIENT_SECRET_ENV
from mhsm_core.hsm import Library
from tests.conftest import Emulator, emulator_for

PAGE = 25  # what the service pages by default, and what the core asks for


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """An emulator holding more keys than one page, so that a listing needs nextLink."""
    for emulator in emulator_for(tmp_path_factory, "emulator-crowded"):
        with emulator.http("keygen") as http:
            for i in range(PAGE + 2):
                http.post(f"/keys/crowd-{i:02d}/create", params={"api-version": "7.6"},
                          json={"kty": "EC-HSM", "crv": "P-256"}).raise_for_status()
        yield emulator


def test_listing_follows_next_link_to_the_last_page(crowded: Emulator, library_for: Callable[..., Library]) -> None:
    hsm = library_for(crowded, "keygen").hsm(0)
    before = crowded.admin.counters()["requests"]["by_operation"].get("list", 0)
    names = {k.name for k in hsm.keys.keys(refresh=True, include_foreign=True)}
    assert {f"crowd-{i:02d}" for i in range(PAGE + 2)} <= names, "every page was read"
    listed = crowded.admin.counters()["requests"]["by_operation"]["list"] - before
    assert listed == 2, "two pages: the first link followed, the missing link on the last page ended it"


def test_sign_reads_the_recorded_result(crowded: Emulator, library_for: Callable[..., Library]) -> None:
    hsm = library_for(crowded, "keygen").hsm(0)
    label = f"reliance-{uuid.uuid4().hex[:8]}"
    hsm.keys.create("EC", curve="P-256", private_attributes={"CKA_LABEL": label},
                    public_attributes={"CKA_LABEL": label})
    [key] = hsm.keys.find(label=label, kty="EC")
    before = crowded.admin.counters()["signs"]["total"]
    digest = hashlib.sha256(b"reliance").digest()
    algorithm, sized = signing.ecdsa(digest, "P-256")
    raw = hsm.keys.sign(key, algorithm, sized)  # the core verifies it with the public key before returning
    assert len(raw) == 64
    assert crowded.admin.counters()["signs"]["total"] == before + 1


def test_tenant_is_taken_from_the_challenge(crowded: Emulator, monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    document = json.loads(Path(crowded.info["conf_file"]).read_text())
    del document["auth"]["tenantId"]
    conf = tmp_path / "no-tenant.json"
    conf.write_text(json.dumps(document))
    principal = crowded.principal("keygen")
    monkeypatch.setenv("MHSM_PKCS11_CONF", str(conf))
    monkeypatch.setenv(CLIENT_ID_ENV, principal["client_id"])
    monkeypatch.setenv(CLIENT_SECRET_ENV, principal["client_secret"])
    hsm = Library.load().hsm(0)
    assert hsm.config.auth.tenant_id is None, "the configuration names no tenant"
    assert hsm.tenant() == crowded.info["tenant_id"]
    assert len(hsm.keys.random(130)) == 130  # and a token for that tenant is accepted
