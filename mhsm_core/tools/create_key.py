"""`mhsm_p11_create_key`: make a key as the official tool does, and print its three lines.

On success stdout carries exactly these lines, which users parse (`sed -n 's/^Key Name: //p'`):

    Key is generated successfully.
    Managed HSM Key ID: https://<hsm>.managedhsm.azure.net/keys/p11-<32 hex>/<version>
    Key Name: p11-<32 hex>
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from .. import config as config_module
from ..credentials import CLIENT_ID_ENV, CLIENT_SECRET_ENV
from ..errors import MhsmError
from ..hsm import Library
from .common import fail

RSA_SIZES = {"2K": 2048, "3K": 3072, "4K": 4096}
CURVES = {"P256": "P-256", "P256K": "P-256K", "P384": "P-384", "P521": "P-521"}


def _hex(value: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not hexadecimal (e.g. 0a1b)") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mhsm_p11_create_key",
                                description="Create a Managed HSM key usable by the mhsm-pkcs11 library.")
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--RSA", choices=list(RSA_SIZES), help="RSA key of 2048, 3072 or 4096 bits")
    kind.add_argument("--EC", choices=list(CURVES), help="EC key on P-256, secp256k1, P-384 or P-521")
    p.add_argument("--label", required=True, help="CKA_LABEL of the private and public key objects")
    p.add_argument("--id", type=_hex, help="CKA_ID in hex (optional)")
    p.add_argument("--identity", action="store_true",
                   help="authenticate with the managed identity (msi.MSIClientID if set, else system-assigned)")
    p.add_argument("--conf", help=f"configuration file (default ${config_module.ENV_VAR}, else {config_module.DEFAULT_PATH})")
    p.add_argument("--slot", type=int, default=None, help="slot id of the HSM (default: the first token)")
    return p


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    p = parser()
    if not args_list:
        p.print_usage(sys.stderr)
        return 2
    args = p.parse_args(args_list)
    try:
        config = config_module.load(args.conf)
        if args.identity:
            config = dataclasses.replace(config, msi=dataclasses.replace(config.msi, enabled=True))
            for name in (CLIENT_ID_ENV, CLIENT_SECRET_ENV):
                os.environ.pop(name, None)
        library = Library(config)
        slot = args.slot if args.slot is not None else config.tokens[0].slot_id
        if slot not in library.hsms:
            raise MhsmError(f"no token with slot id {slot} in {config.path} (its slot ids: "
                            f"{', '.join(str(s) for s in library.hsms)})")
        hsm = library.hsm(slot)
        attributes = {"CKA_LABEL": args.label} | ({"CKA_ID": args.id} if args.id else {})
        key = hsm.keys.create("RSA" if args.RSA else "EC", size=RSA_SIZES.get(args.RSA or ""),
                              curve=CURVES.get(args.EC or ""), private_attributes=attributes,
                              public_attributes=dict(attributes))
    except Exception as exc:  # every failure becomes one sentence with its fix
        fail(exc)
    sys.stdout.write(f"Key is generated successfully.\nManaged HSM Key ID: {key.kid}\nKey Name: {key.name}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
