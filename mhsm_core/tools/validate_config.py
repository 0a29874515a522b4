"""`mhsm_p11_validate_config_file --file F`: check a configuration, and optionally the connection."""

from __future__ import annotations

import argparse
import sys

from .. import config as config_module
from ..hsm import Library
from .common import explain


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mhsm_p11_validate_config_file", description="Validate mhsm-pkcs11.conf.")
    p.add_argument("--file", required=True, help="the configuration file to check")
    p.add_argument("--check-connection", action="store_true",
                   help="also get a token and list the keys of every HSM in the file")
    args = p.parse_args(argv)
    try:
        config = config_module.load(args.file, flag="--file")
    except config_module.ConfigError as exc:
        for problem in exc.problems:
            print(f"ERROR: {exc.path}: {problem}")
        return 1
    for warning in config.warnings:
        print(f"WARNING: {warning}")
    print(f"SUCCESS: Parsing {args.file}")
    if not args.check_connection:
        return 0
    library, failed = Library(config), False
    for slot, hsm in library.hsms.items():
        try:
            count = len(hsm.keys.keys(refresh=True))
            print(f"SUCCESS: slot {slot}: {hsm.token.base_url} answered; {count} library keys visible")
        except Exception as exc:
            failed = True
            print(f"ERROR: slot {slot}: {explain(exc)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
