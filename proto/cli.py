"""The `stackline` command: one front door for the collector, the gateway and the tools.

The subcommands live with the side they belong to (`collector.cli`, `gateway.cli`); this module
only dispatches, importing each side by name when its command is used, so the collector and the
gateway never import each other.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from proto.errors import KeyFileError
from proto.keys import generate_key_files

__all__ = ["main"]

SIDES = ("collector.cli", "gateway.cli")


def _keygen(args: argparse.Namespace) -> int:
    try:
        public_path, key_id = generate_key_files(Path(args.out), overwrite=args.force)
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"private key  {args.out}  (mode 0600: keep it on the collector)")
    print(f"public key   {public_path}  (enrol it at the gateway)")
    print(f"key id       {key_id}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every side's subcommands."""
    parser = argparse.ArgumentParser(
        prog="stackline", description="Signed, gap-free emissions data from stack to ledger.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    keygen = commands.add_parser("keygen", help="make an Ed25519 key pair for a collector")
    keygen.add_argument("--out", required=True, help="private key path; the public key goes to OUT.pub")
    keygen.add_argument("--force", action="store_true", help="overwrite an existing key")
    keygen.set_defaults(handler=_keygen)
    for module in SIDES:
        importlib.import_module(module).add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL if not args.verbose else logging.DEBUG)
    status: int = args.handler(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
