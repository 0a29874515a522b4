"""Many keys on an emulator in seconds, for the lookup tests and bench: EC P-256 keys (the fastest the
HSM makes) created over the data plane from a few threads, carrying the tags the library writes."""

from __future__ import annotations

import ssl
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from mhsm_core import tags

THREADS = 4


def library_tags(label: str, key_id: bytes | None = None, typed: bool = True) -> dict[str, str]:
    """The tags mhsm_p11_create_key writes for an EC P-256 key (`typed=False`: as before the type tag)."""
    attributes: dict[str, Any] = {"CKA_LABEL": label} | ({"CKA_ID": key_id} if key_id is not None else {})
    return tags.merge(tags.key_type_tag("EC P-256") if typed else {}, attributes, dict(attributes))


def library_name() -> str:
    return f"p11-{uuid.uuid4().hex}"


def fill(info: dict[str, Any], token: str, keys: dict[str, dict[str, str]]) -> None:
    """Create the keys {name: tags} on the emulator that `info` (its emulator.json) describes."""
    context = ssl.create_default_context(cafile=info["ca_file"])
    with httpx.Client(base_url=info["url"], headers={"Authorization": f"Bearer {token}"}, verify=context,
                      trust_env=False, timeout=30.0, limits=httpx.Limits(max_connections=THREADS)) as client:
        def create(item: tuple[str, dict[str, str]]) -> None:
            name, key_tags = item
            response = client.post(f"/keys/{name}/create", params={"api-version": "7.5"},
                                   json={"kty": "EC-HSM", "crv": "P-256", "key_ops": ["sign", "verify"],
                                         "tags": key_tags})
            response.raise_for_status()

        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(create, keys.items()))
