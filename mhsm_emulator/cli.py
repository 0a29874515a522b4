"""`mhsm-emulator serve ...`: the command line other tools rely on (a contract; keep it stable)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HSM_NAME = re.compile(r"^(?!.*--)[0-9a-zA-Z-]{3,24}$")


def _hsm_name(value: str) -> str:
    if not HSM_NAME.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a Managed HSM name: use 3-24 characters from 0-9, a-z, A-Z and '-', "
            "with no two hyphens in a row")
    return value


def _bounded(low: int, high: int):  # type: ignore[no-untyped-def]
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"{number} is outside {low}..{high}")
        return number

    return parse


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="mhsm-emulator",
                                  description="A local Azure Managed HSM + Entra ID emulator over HTTPS.")
    commands = top.add_subparsers(dest="command", required=True, metavar="serve")
    serve = commands.add_parser("serve", help="serve until SIGTERM; writes DIR/emulator.json when ready")
    serve.add_argument("--state-dir", required=True, type=Path, metavar="DIR",
                       help="keys, roles, principals and certificates live here and survive restarts")
    serve.add_argument("--host", default="127.0.0.1", help="address of the HSM and Entra listeners")
    serve.add_argument("--port", default=0, type=_bounded(0, 65535), help="HSM port; 0 picks a free one")
    serve.add_argument("--scenario", default="permissive", choices=("permissive", "granular", "empty"),
                       help="role assignments made on first start (see docs/emulator.md)")
    serve.add_argument("--hsm-name", default="localhsm", type=_hsm_name, metavar="NAME")
    serve.add_argument("--token-lifetime", default=3600, type=_bounded(1, 86400), metavar="SECONDS",
                       help="lifetime of the access tokens the emulator mints")
    serve.add_argument("--recoverable-days", default=90, type=_bounded(7, 90), metavar="DAYS",
                       help="soft-delete retention of the HSM, 7..90 (first start of a state dir only)")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from .server import serve  # heavy imports only once the flags are good

    return serve(args.state_dir.resolve(), args.host, args.port, args.scenario, args.hsm_name, args.token_lifetime,
                 args.recoverable_days)


if __name__ == "__main__":
    sys.exit(main())
