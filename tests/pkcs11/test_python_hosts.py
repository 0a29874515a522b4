"""python-pkcs11 and PyKCS11 load the module into their own Python: find by label, sign with every
mechanism, and every signature verifies with `cryptography` against the key's public part."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from tests.pkcs11 import python_hosts
from tests.pkcs11.conftest import P11, Pair

HASHES = {"SHA256": hashes.SHA256(), "SHA384": hashes.SHA384(), "SHA512": hashes.SHA512()}


def verify(public: object, name: str, signature: bytes) -> None:
    """Raises unless `signature` is what mechanism `name` must produce over python_hosts.MESSAGE."""
    message = python_hosts.MESSAGE
    digest = hashlib.sha256(message).digest()
    hash_name = name.split("_")[0] if name.startswith("SHA") else name.split("_")[-1]
    chosen = HASHES.get(hash_name, hashes.SHA256())
    data, algorithm = (message, chosen) if hash_name in HASHES else (digest, utils.Prehashed(hashes.SHA256()))
    if isinstance(public, ec.EllipticCurvePublicKey):
        half = len(signature) // 2
        assert half == 32, "CKM_ECDSA output is raw r‖s of the curve's size"
        der = utils.encode_dss_signature(int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big"))
        public.verify(der, data, ec.ECDSA(algorithm))
    elif "PSS" in name:
        public.verify(signature, data, padding.PSS(padding.MGF1(chosen), chosen.digest_size), algorithm)  # type: ignore[attr-defined]
    else:
        public.verify(signature, data, padding.PKCS1v15(), algorithm)  # type: ignore[attr-defined]


@pytest.mark.parametrize("host", sorted(python_hosts.HOSTS))
@pytest.mark.parametrize("kind", ["RSA", "EC"])
def test_python_host_signs_with_every_mechanism(p11: P11, pairs: dict[str, Pair], host: str, kind: str) -> None:
    pair = pairs[kind]
    before = p11.signs()
    result = p11.run(sys.executable, str(Path(python_hosts.__file__)), host, p11.module, p11.pin, pair.label, kind)
    signatures = json.loads(result.stdout.strip().splitlines()[-1])
    expected = [name for name, _, _ in python_hosts.requests(kind)]
    assert sorted(signatures) == sorted(expected)
    for name, signature in signatures.items():
        verify(pair.public_key(), name, bytes.fromhex(signature))
    assert p11.signs() - before == len(expected), "every signature came from the HSM"


KEYGEN = """
import sys, pkcs11
from pkcs11 import Attribute, KeyType
from pkcs11.util.ec import encode_named_curve_parameters
module, pin, label = sys.argv[1:4]
with pkcs11.lib(module).get_token(token_label="localhsm").open(user_pin=pin, rw=True) as session:
    session.generate_keypair(KeyType.RSA, 2048, store=True, label=label + "-rsa", id=label.encode())
    params = session.create_domain_parameters(
        KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp384r1")}, local=True)
    params.generate_keypair(store=True, label=label + "-ec", id=label.encode() + b"-ec")
    for suffix in ("-rsa", "-ec"):
        key = session.get_key(label=label + suffix, object_class=pkcs11.ObjectClass.PRIVATE_KEY)
        print(label + suffix, key.key_type.name, key[Attribute.SENSITIVE], key[Attribute.EXTRACTABLE])
"""


def test_python_pkcs11_generates_key_pairs(p11: P11) -> None:
    """python-pkcs11's own templates (store=True), with no vendor attributes."""
    name = f"py-{__import__('uuid').uuid4().hex[:8]}"
    out = p11.run(sys.executable, "-c", KEYGEN, p11.module, p11.pin, name).stdout.split("\n")
    assert f"{name}-rsa RSA True False" in out and f"{name}-ec EC True False" in out


def test_a_python_host_of_another_version_is_refused_cleanly(p11: P11, tmp_path: Path) -> None:
    """Built for 3.10, loaded into this 3.11: CKR_GENERAL_ERROR and one line on stderr, no hang or crash."""
    from pkcs11_compat import build

    built = build.builder(python_version="3.10").compile(tmpdir=str(tmp_path), target="libother.so")
    script = ("import sys, pkcs11\n"
              "try:\n    pkcs11.lib(sys.argv[1])\nexcept pkcs11.exceptions.GeneralError:\n    print('refused')\n")
    result = p11.run(sys.executable, "-c", script, built, timeout=60)
    assert result.stdout.strip() == "refused"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"libmhsm-pkcs11: built for Python 3.10 but the host process runs Python: {sys.version}".split("\n")[0]]
