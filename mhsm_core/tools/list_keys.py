"""`mhsm_p11_list_keys`: the keys the library can see, as a table or as JSON."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

from ..hsm import Library
from .common import fail


def _row(slot: int, key: Any) -> dict[str, Any]:
    return {"slot": slot, "label": key.label, "id": key.key_id.hex() if key.key_id else None, "type": key.kty,
            "size": key.size if key.kty == "RSA" else None, "curve": key.curve, "name": key.name,
            "version": key.version, "enabled": key.enabled,
            "expires": dt.datetime.fromtimestamp(key.expires, dt.timezone.utc).isoformat() if key.expires else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mhsm_p11_list_keys", description="List the keys the library can use.")
    p.add_argument("--conf", help="configuration file (default $MHSM_PKCS11_CONF, else /etc/mhsm-pkcs11.conf)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--all", action="store_true", help="also keys without p11_ tags (not made by this library)")
    args = p.parse_args(argv)
    try:
        library = Library.load(args.conf)
        rows = [_row(slot, key) for slot, hsm in library.hsms.items()
                for key in hsm.keys.keys(refresh=True, include_foreign=args.all)]
    except Exception as exc:
        fail(exc)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    columns = ("slot", "label", "id", "type", "size", "curve", "name", "enabled", "expires")
    table = [[str(c).upper() for c in columns]] + [["" if r[c] is None else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
