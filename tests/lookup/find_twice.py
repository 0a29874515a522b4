"""A PKCS#11 host (python-pkcs11) that runs the same C_FindObjects twice in one process:
`python find_twice.py MODULE PIN label|id VALUE`. After each search it prints how many private
keys it found and waits for a line on stdin, so the test can read the emulator's counters between."""

from __future__ import annotations

import sys

import pkcs11
from pkcs11 import Attribute, ObjectClass


def main(module: str, pin: str, by: str, value: str) -> None:
    token = pkcs11.lib(module).get_token(token_label="localhsm")
    attribute = {"label": Attribute.LABEL, "id": Attribute.ID}[by]
    template = {Attribute.CLASS: ObjectClass.PRIVATE_KEY, attribute: value if by == "label" else bytes.fromhex(value)}
    with token.open(user_pin=pin) as session:
        for turn in range(2):
            print(len(list(session.get_objects(template))), flush=True)
            if turn == 0:
                sys.stdin.readline()


if __name__ == "__main__":
    main(*sys.argv[1:5])
