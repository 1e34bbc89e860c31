"""The gateway's subcommands: `gateway run`, `gateway enroll`, `verify` and `demo`."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from datetime import date
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError
from proto.errors import StacklineWireError

__all__ = ["add_commands"]


def add_commands(commands: Any) -> None:
    """Register the gateway's subcommands on the `stackline` parser."""
    gateway = commands.add_parser("gateway", help="the central service")
    actions = gateway.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = actions.add_parser("run", help="receive, verify and store blocks")
    run.add_argument("--config", required=True, type=Path, help="gateway configuration (YAML)")
    run.set_defaults(handler=_run)
    enroll = actions.add_parser("enroll", help="register a collector's public key")
    enroll.add_argument("--config", required=True, type=Path, help="gateway configuration (YAML)")
    enroll.add_argument("--collector-id", required=True, help="the collector id in its plant config")
    enroll.add_argument("--public-key", required=True, type=Path,
                        help="the .pub file made by `stackline keygen`")
    enroll.set_defaults(handler=_enroll)
    _add_token_command(actions)

    verify = commands.add_parser(
        "verify", help="re-check every stored block's signature and link (a ledger), or check an "
                       "evidence bundle offline")
    verify_source = verify.add_mutually_exclusive_group(required=True)
    verify_source.add_argument("--ledger",
                               help="SQLite ledger file, or postgresql://user@host:port/database")
    verify_source.add_argument("--bundle", type=Path,
                               help="an evidence bundle made by `stackline export` (exit 0 pass, "
                                    "1 fail, 2 not a bundle)")
    verify.add_argument("--log-key",
                        help="with --bundle: the log's verifier key you trust (name+keyid+key); "
                             "default: the bundle's own, with a warning")
    verify.add_argument("--max-blocks", type=int, default=None, metavar="N",
                        help="with --bundle: read at most N blocks (and N proofs) of the bundle "
                             "(default 5,000,000; they are held in memory)")
    verify.add_argument("--collector", help="with --ledger: only this collector id")
    verify.add_argument("--json", action="store_true", help="print a JSON object")
    verify.set_defaults(handler=_verify)

    _add_export(commands)

    report = commands.add_parser(
        "report", help="a unit's compliance accounting for a period, from a ledger (json, csv, html)")
    report.add_argument("--ledger", required=True,
                        help="SQLite ledger file, or postgresql://user@host:port/database")
    _add_unit_period(report)
    report.add_argument("--format", choices=("json", "csv", "html"), default="json")
    report.add_argument("-o", "--output", type=Path, help="write here instead of standard output")
    report.add_argument("--gateway-id", default=None,
                        help="the gateway the ledger belongs to, named in the provenance "
                             "(default: the ledger's location)")
    report.set_defaults(handler=_report)

    status = commands.add_parser("status", help="every plant's stream at a glance, from a gateway")
    status.add_argument("--gateway", required=True,
                        help="the gateway's HTTP endpoint, e.g. http://127.0.0.1:9100")
    status.add_argument("--json", action="store_true", help="print the gateway's JSON document")
    status.set_defaults(handler=_status)

    demo = commands.add_parser("demo", help="simulator, collector and gateway on embedded defaults")
    demo.add_argument("--duration", type=float, default=None,
                      help="stop after this many seconds of streamed data (default: until Ctrl-C)")
    demo.add_argument("--data-dir", type=Path, default=Path(".stackline/demo"),
                      help="where keys, configs, logs and DIR/ledger.sqlite go")
    demo.add_argument("--plant", type=Path, default=None,
                      help="plant configuration to simulate (default: the demo plant)")
    demo.set_defaults(handler=_demo)


def _add_unit_period(parser: argparse.ArgumentParser) -> None:
    """--unit, --plant, --from and --to: one accounting unit over local days [from, to)."""
    parser.add_argument("--unit", required=True, help="the accounting unit id (plant configuration)")
    parser.add_argument("--plant", help="the plant id, when several plants have a unit of that id")
    parser.add_argument("--from", dest="start", required=True, type=_date,
                        help="first local day, YYYY-MM-DD")
    parser.add_argument("--to", dest="end", required=True, type=_date,
                        help="the local day after the last one, YYYY-MM-DD")


def _add_export(commands: Any) -> None:
    export = commands.add_parser(
        "export", help="write a unit's evidence bundle for a period from a gateway's verifier API")
    export.add_argument("--gateway-url", required=True,
                        help="the gateway's verifier API, e.g. https://gateway.example.org:9443")
    export.add_argument("--token-file", type=Path,
                        help="file holding the bearer token (default: $STACKLINE_TOKEN)")
    _add_unit_period(export)
    export.add_argument("-o", "--output", required=True, type=Path, help="the bundle (.zip) to write")
    export.set_defaults(handler=_export)


def _fail(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 2


def _run(args: argparse.Namespace) -> int:
    from gateway.config import load_gateway_config  # noqa: PLC0415 - keep --help fast
    from gateway.runtime import GatewayRuntime  # noqa: PLC0415

    try:
        runtime = GatewayRuntime(config=load_gateway_config(args.config))
    except GatewayError as exc:
        return _fail(exc)

    async def main() -> None:
        await runtime.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runtime.stop()

    try:
        asyncio.run(main())
    except GatewayError as exc:
        return _fail(exc)
    return 0


def _add_token_command(actions: Any) -> None:
    token = actions.add_parser("token", help="make a bearer token for the verifier API")
    token.add_argument("--name", required=True, help="the token's name in the configuration and logs")
    token.add_argument("--plants", required=True,
                       help='comma-separated plant ids the token may read, or "*" for every plant')
    token.set_defaults(handler=_token)


def _token(args: argparse.Namespace) -> int:
    from pydantic import ValidationError  # noqa: PLC0415

    from gateway.config import VerifierTokenSection  # noqa: PLC0415
    from gateway.tokens import new_token, token_digest, token_stanza  # noqa: PLC0415

    token = new_token()
    plants = tuple(p.strip() for p in args.plants.split(",") if p.strip())
    try:  # the same checks as the configuration's, before the operator copies it there
        VerifierTokenSection(name=args.name, sha256=token_digest(token).hex(), plants=plants)
    except ValidationError as exc:
        first = exc.errors()[0]
        option = "--name" if first["loc"][:1] == ("name",) else "--plants"
        return _fail(ValueError(f"{option}: {first['msg'].removeprefix('Value error, ')}"))
    print("Token (shown this once; hand it to the verifier, who sends it as "
          "'Authorization: Bearer <token>'):")
    print(token)
    print("\nAdd this entry under verifier_api.tokens in the gateway configuration, then restart "
          "the gateway\n(it holds only the token's SHA-256; keep the token itself in a secret "
          "store, not here):")
    print(token_stanza(name=args.name, plants=plants, token=token), end="")
    return 0


def _enroll(args: argparse.Namespace) -> int:
    from gateway.config import load_gateway_config  # noqa: PLC0415
    from gateway.ledger import open_ledger  # noqa: PLC0415
    from gateway.runtime import enroll_collector  # noqa: PLC0415
    from proto.keys import load_public_key  # noqa: PLC0415

    async def main() -> str:
        config = load_gateway_config(args.config)
        public_key = load_public_key(args.public_key)
        ledger = open_ledger(config.ledger_location(),
                             quarantine_max_rows=config.config.ledger.quarantine_max_rows)
        try:
            return await enroll_collector(ledger, collector_id=args.collector_id,
                                          public_key=public_key)
        finally:
            await ledger.close()

    try:
        key_id = asyncio.run(main())
    except (GatewayError, StacklineWireError) as exc:
        return _fail(exc)
    print(f"enrolled collector {args.collector_id} with key {key_id}")
    return 0


def _verify_bundle(args: argparse.Namespace) -> int:
    from gateway.bundle_verify import MAX_BUNDLE_BLOCKS, render_verdict, verify_bundle  # noqa: PLC0415

    if args.collector is not None:
        return _fail(ValueError("--collector goes with --ledger; a bundle is checked whole"))
    max_blocks = MAX_BUNDLE_BLOCKS if args.max_blocks is None else args.max_blocks
    if max_blocks < 1:
        return _fail(ValueError("--max-blocks must be at least 1"))
    try:
        verdict = asyncio.run(verify_bundle(args.bundle, log_key=args.log_key,
                                            max_blocks=max_blocks))
    except (GatewayError, StacklineWireError) as exc:  # not a bundle; --log-key not a verifier key
        return _fail(exc)
    if args.json:
        print(json.dumps(verdict.to_json(), indent=2))
    else:
        print(render_verdict(verdict), end="")
    return 0 if verdict.ok else 1


def _export(args: argparse.Namespace) -> int:
    from gateway.bundle import export_bundle  # noqa: PLC0415
    from gateway.bundle_http import GatewayClient, read_token  # noqa: PLC0415

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        client = GatewayClient(base_url=args.gateway_url, token=read_token(args.token_file),
                               warn=progress)
        summary = asyncio.run(export_bundle(client, unit_id=args.unit, plant_id=args.plant,
                                            start=args.start, end=args.end, out=args.output,
                                            progress=progress))
    except GatewayError as exc:
        return _fail(exc)
    progress(f"wrote {summary.path}: {summary.blocks:,} blocks of {summary.collectors} collector(s), "
             f"checkpoint at tree size {summary.tree_size}, sha256 {summary.sha256}")
    # the key comes from the gateway being audited: a check pinned to it proves nothing about it
    progress(f"the key this gateway says it signs with: {summary.verifier_key}; compare it with "
             "the one you obtained out of band (docs/verifying.md section 7)")
    progress(f"check it with: stackline verify --bundle {summary.path} --log-key KEY-FROM-OUT-OF-BAND")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from gateway.ledger import open_ledger  # noqa: PLC0415
    from gateway.verifier import render_text, verify_ledger  # noqa: PLC0415

    if args.bundle is not None:
        return _verify_bundle(args)
    if args.log_key is not None or args.max_blocks is not None:
        return _fail(ValueError("--log-key and --max-blocks go with --bundle"))

    async def main() -> Any:
        ledger = open_ledger(args.ledger, read_only=True)
        try:
            return await verify_ledger(ledger, collector_id=args.collector)
        finally:
            await ledger.close()

    try:
        report = asyncio.run(main())
    except GatewayError as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(render_text(report))
    return 0 if report.ok else 1


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date: write YYYY-MM-DD") from None


def _report(args: argparse.Namespace) -> int:
    from gateway.accounting.methodology import load_methodology  # noqa: PLC0415
    from gateway.accounting.render import render_csv, render_html, render_json  # noqa: PLC0415
    from gateway.accounting.source import load_unit_data  # noqa: PLC0415
    from gateway.accounting.unit import account_unit  # noqa: PLC0415
    from gateway.ledger import open_ledger  # noqa: PLC0415

    if args.end <= args.start:
        return _fail(ValueError(f"--to {args.end} must be after --from {args.start}"))

    async def main() -> Any:
        ledger = open_ledger(args.ledger, read_only=True)
        try:
            print(f"reading the blocks of unit {args.unit} ...", file=sys.stderr)
            return await load_unit_data(ledger, unit_id=args.unit, start=args.start, end=args.end,
                                        plant_id=args.plant)
        finally:
            await ledger.close()

    try:
        data = asyncio.run(main())
        print(f"accounting {len(data.blocks)} block(s) ...", file=sys.stderr)
        methodology = load_methodology(data.unit.methodology)
        document = account_unit(unit=data.unit, blocks=data.blocks, start=args.start, end=args.end,
                                methodology=methodology,
                                gateway_id=args.gateway_id or f"ledger {args.ledger}")
    except (GatewayError, ValueError) as exc:
        return _fail(exc)
    renderers = {"json": render_json, "csv": render_csv, "html": render_html}
    text = renderers[args.format](document)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _status(args: argparse.Namespace) -> int:
    from gateway.status_cli import fetch_status, render_status  # noqa: PLC0415

    try:
        document = fetch_status(args.gateway)
    except OSError as exc:
        return _fail(exc)
    print(json.dumps(document, indent=2) if args.json else render_status(document))
    return 0 if all(c["state"] == "OK" for c in document["collectors"]) else 1


def _demo(args: argparse.Namespace) -> int:
    from gateway.demo import DEFAULT_PLANT, run_demo  # noqa: PLC0415

    try:
        return asyncio.run(run_demo(data_dir=args.data_dir, duration_s=args.duration,
                                    plant_template=args.plant or DEFAULT_PLANT))
    except (GatewayError, StacklineWireError, RuntimeError) as exc:
        return _fail(exc)
