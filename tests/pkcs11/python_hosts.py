"""Python hosts of the module, each run in a process of its own: `python python_hosts.py HOST MODULE PIN LABEL KIND`.

The module then runs inside that host's interpreter (the "host is Python" path of the shim). The
script finds the private key by label, signs MESSAGE (or its digest) with every mechanism for KIND
("RSA" or "EC"), and prints {mechanism: signature hex} as JSON for the test to verify.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any, Callable

MESSAGE = b"signed through a Python PKCS#11 host"
SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
BITS = (256, 384, 512)


def requests(kind: str) -> list[tuple[str, bytes, tuple[str, str, int] | None]]:
    """(mechanism name, data, PSS parameters as (hash, mgf, salt)) for every mechanism of the key type."""
    digest = hashlib.sha256(MESSAGE).digest()
    if kind == "RSA":
        return ([("RSA_PKCS", SHA256_DIGEST_INFO + digest, None), ("RSA_PKCS_PSS", digest, ("SHA256", "SHA256", 32))]
                + [(f"SHA{b}_RSA_PKCS", MESSAGE, None) for b in BITS]
                + [(f"SHA{b}_RSA_PKCS_PSS", MESSAGE, (f"SHA{b}", f"SHA{b}", b // 8)) for b in BITS])
    return [("ECDSA", digest, None)] + [(f"ECDSA_SHA{b}", MESSAGE, None) for b in BITS]


def python_pkcs11(module: str, pin: str, label: str, kind: str) -> dict[str, str]:
    import pkcs11
    from pkcs11 import MGF, Mechanism, ObjectClass

    token = pkcs11.lib(module).get_token(token_label="localhsm")
    out = {}
    with token.open(user_pin=pin) as session:
        key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
        for name, data, pss in requests(kind):
            param = (getattr(Mechanism, pss[0]), getattr(MGF, pss[1]), pss[2]) if pss else None
            out[name] = key.sign(data, mechanism=getattr(Mechanism, name), mechanism_param=param).hex()
    return out


def pykcs11(module: str, pin: str, label: str, kind: str) -> dict[str, str]:
    import PyKCS11 as P

    lib = P.PyKCS11Lib()
    lib.load(module)
    [slot] = lib.getSlotList(tokenPresent=True)
    session = lib.openSession(slot, P.CKF_SERIAL_SESSION)
    session.login(pin)
    [key] = session.findObjects([(P.CKA_CLASS, P.CKO_PRIVATE_KEY), (P.CKA_LABEL, label)])
    out = {}
    for name, data, pss in requests(kind):
        mech_type = getattr(P, f"CKM_{name}")
        mechanism: Any = (P.RSA_PSS_Mechanism(mech_type, getattr(P, f"CKM_{pss[0]}"), getattr(P, f"CKG_MGF1_{pss[1]}"),
                                              pss[2]) if pss else P.Mechanism(mech_type, None))
        out[name] = bytes(session.sign(key, data, mechanism)).hex()
    session.logout()
    session.closeSession()
    return out


HOSTS: dict[str, Callable[[str, str, str, str], dict[str, str]]] = {"python-pkcs11": python_pkcs11, "PyKCS11": pykcs11}

if __name__ == "__main__":
    host, module, pin, label, kind = sys.argv[1:6]
    print(json.dumps(HOSTS[host](module, pin, label, kind)))
