"""Fixtures for the core against the emulator: a configuration file and a principal, as a user has."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from mhsm_core.credentials import CLIENT_ID_ENV, CLIENT_SECRET_ENV
from mhsm_core.hsm import Library
from tests.conftest import Emulator


def write_conf(emulator: Emulator, path: Path, **overrides: Any) -> Path:
    """The emulator's own mhsm-pkcs11.conf, with sections overridden (e.g. options={"MaxRetries": 0})."""
    document = json.loads(Path(emulator.info["conf_file"]).read_text())
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(document.get(section), dict):
            document[section] = {**document[section], **values}
        else:
            document[section] = values
    path.write_text(json.dumps(document, indent=2))
    return path


@pytest.fixture
def library_for(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Callable[..., Library]]:
    """`library_for(emulator, "keygen", options={...})`: a Library as that principal, via MHSM_CLIENT_* env."""

    def make(emulator: Emulator, principal: str | None = "keygen", **overrides: Any) -> Library:
        conf = write_conf(emulator, tmp_path / f"conf-{len(list(tmp_path.iterdir()))}.json", **overrides)
        monkeypatch.setenv("MHSM_PKCS11_CONF", str(conf))
        if principal:
            p = emulator.principal(principal)
            monkeypatch.setenv(CLIENT_ID_ENV, p["client_id"])
            monkeypatch.setenv(CLIENT_SECRET_ENV, p["client_secret"])
        else:
            monkeypatch.delenv(CLIENT_ID_ENV, raising=False)
            monkeypatch.delenv(CLIENT_SECRET_ENV, raising=False)
        return Library.load()

    yield make
