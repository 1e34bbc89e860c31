"""The collector's subcommands: `stackline collector run`, `stackline collector check`,
`stackline collector receipts` and `stackline simulate`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from collector.errors import CollectorError, ConfigError
from proto.errors import StacklineWireError

__all__ = ["add_commands"]

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 5.0


def add_commands(commands: Any) -> None:
    """Register the collector's subcommands on the `stackline` parser."""
    collector = commands.add_parser("collector", help="the edge process at a plant")
    actions = collector.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = actions.add_parser("run", help="poll the plant's devices and stream signed blocks")
    run.add_argument("--config", required=True, type=Path, help="plant configuration (YAML)")
    run.set_defaults(handler=_run)
    check = actions.add_parser(
        "check", help="commissioning: read every point of every device once and print a table")
    check.add_argument("--config", required=True, type=Path, help="plant configuration (YAML)")
    check.add_argument("--format", choices=("table", "json"), default="table")
    check.set_defaults(handler=_check)
    receipts = actions.add_parser(
        "receipts", help="the gateway's receipts kept at the plant, and any fork of its log "
                         "(exit 1 when a fork was detected)")
    receipts.add_argument("--config", required=True, type=Path, help="plant configuration (YAML)")
    receipts.add_argument("--json", action="store_true", help="everything kept, notes and proofs "
                          "included, as JSON")
    receipts.add_argument("--limit", type=int, default=50, metavar="N",
                          help="show the newest N receipts (default 50; 0 for all)")
    receipts.set_defaults(handler=_receipts)
    simulate = commands.add_parser("simulate", help="serve a plant's devices from a Modbus simulator")
    simulate.add_argument("--config", required=True, type=Path, help="plant configuration (YAML)")
    simulate.add_argument("--serial", action="append", default=[], metavar="LINE=PATH",
                          help="serve serial line LINE on the serial port PATH (e.g. the far end of "
                               "a socat pseudo-terminal pair); repeat for several lines")
    simulate.set_defaults(handler=_simulate)


def _load(path: Path) -> Any:
    from collector.config import load_plant  # noqa: PLC0415 - keep `stackline --help` fast
    from collector.plan import compile_plan  # noqa: PLC0415

    plant = load_plant(path)
    compile_plan(plant)  # register-level checks before anything starts
    return plant


async def _until_signalled(main: asyncio.Task[None], stop: asyncio.Event,
                           reload: Callable[[], None] | None = None) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, reload)
    waiter = asyncio.ensure_future(stop.wait())
    await asyncio.wait({main, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()


def _run(args: argparse.Namespace) -> int:
    try:
        plant = _load(args.config)
        from collector.runtime import build_runtime  # noqa: PLC0415

        runtime = build_runtime(plant)
    except (CollectorError, StacklineWireError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        print("the collector did not start; fix the configuration and run it again",
              file=sys.stderr)
        return 2

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(runtime.run_until(stop, drain_timeout_s=DRAIN_TIMEOUT_S))
        await _until_signalled(task, stop, runtime.request_reload)
        await task

    log.info("collector %s starting: %d device(s), %d reading(s) per tick of %d ms",
             runtime.plan.collector_id, len(runtime.plan.devices), runtime.plan.reading_count,
             runtime.tick_ms)
    asyncio.run(main())
    return 0


def _check(args: argparse.Namespace) -> int:
    try:
        plant = _load(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print("fix the configuration and run the check again", file=sys.stderr)
        return 2
    from collector.check import check_plan, render_json, render_table  # noqa: PLC0415
    from collector.modbus_source import ModbusSource  # noqa: PLC0415
    from collector.plan import compile_plan  # noqa: PLC0415

    plan = compile_plan(plant)
    total = len(plan.devices)
    print(f"reading {total} device(s) of {plan.plant_id} once ...", file=sys.stderr)
    done = [0]

    def progress(check: Any) -> None:
        done[0] += 1
        state = "FAILED" if check.failed else "ok"
        print(f"  [{done[0]}/{total}] {check.device.device_id:<16} {state}", file=sys.stderr)

    async def main() -> Any:
        source = ModbusSource()
        try:
            return await check_plan(plan, source, progress=progress)
        finally:
            await source.close()

    checks = asyncio.run(main())
    print(render_json(checks) if args.format == "json" else render_table(checks))
    return 1 if any(check.failed for check in checks) else 0


def _receipts(args: argparse.Namespace) -> int:
    from collector.config import load_plant  # noqa: PLC0415 - keep `stackline --help` fast
    from collector.receipts import read_receipts, render_json, render_table  # noqa: PLC0415

    try:
        plant = load_plant(args.config)
        section = plant.config.collector
        report = read_receipts(plant.resolve(section.buffer.path), limit=max(0, args.limit))
    except CollectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    render = render_json if args.json else render_table
    print(render(report, log_key=section.log_key()))
    return 1 if report.forks else 0


def _serial_ports(values: list[str], plant: Any) -> dict[str, str]:
    ports = {}
    known = {line.id for line in plant.config.serial_lines}
    for value in values:
        line, sep, path = value.partition("=")
        if not sep or not line or not path:
            raise ConfigError("--serial", "", f"expected LINE=PATH, got {value!r}")
        if line not in known:
            raise ConfigError("--serial", "", f"the plant has no serial line {line!r} "
                              f"(it has: {', '.join(sorted(known)) or 'none'})")
        ports[line] = path
    return ports


def _simulate(args: argparse.Namespace) -> int:
    try:
        plant = _load(args.config)
        serial_ports = _serial_ports(args.serial, plant)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from collector.simulator import PlantSimulator  # noqa: PLC0415

    try:
        simulator = PlantSimulator(plant=plant, serial_ports=serial_ports)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(simulator.serve())
        await _until_signalled(task, stop)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if not stop.is_set():
                raise

    try:
        asyncio.run(main())
    except CollectorError as exc:  # a port in use, a serial device that is not there
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
