"""`mhsm_p11_uri2pem`: write a PEM file that names an HSM key by its pkcs11: URI.

nginx before 1.29, HAProxy and Apache read `ssl_certificate_key` as a PEM file; with the provider
loaded, such a file stands for the HSM key (the key itself never leaves the HSM). A URI with a
pin-value holds a secret, so that file is written readable by its owner only.
"""

from __future__ import annotations

import argparse
import os
import sys

from mhsm_core.errors import InvalidArgument
from mhsm_core.tools.common import fail

from . import stores, uri


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mhsm_p11_uri2pem", description=__doc__.splitlines()[0])
    parser.add_argument("uri", help='the key, e.g. "pkcs11:object=tlsKey;type=private"')
    parser.add_argument("-o", "--out", help="the file to write (default: standard output)")
    args = parser.parse_args(argv)
    try:
        parsed = uri.parse(args.uri)
        if not parsed.names_an_object:
            raise InvalidArgument(f"{args.uri} names no key: give object=<label> or id=<hex>")
        if parsed.type not in (None, "private"):
            raise InvalidArgument(f"{args.uri} has type={parsed.type}; the key file needs the private key")
    except InvalidArgument as exc:
        fail(exc)
    text = stores.pem(args.uri)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    mode = 0o600 if parsed.pin_value is not None else 0o644
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(args.out, mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
