"""The collector's subcommands: `stackline collector run` and `stackline simulate`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
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
    simulate = commands.add_parser("simulate", help="serve a plant's devices from a Modbus simulator")
    simulate.add_argument("--config", required=True, type=Path, help="plant configuration (YAML)")
    simulate.set_defaults(handler=_simulate)


def _load(path: Path) -> Any:
    from collector.config import load_plant  # noqa: PLC0415 - keep `stackline --help` fast
    from collector.plan import compile_plan  # noqa: PLC0415

    plant = load_plant(path)
    compile_plan(plant)  # register-level checks before anything starts
    return plant


async def _until_signalled(main: asyncio.Task[None], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
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
        await _until_signalled(task, stop)
        await task

    log.info("collector %s starting: %d device(s), %d reading(s) per tick of %d ms",
             runtime.plan.collector_id, len(runtime.plan.devices), runtime.plan.reading_count,
             runtime.tick_ms)
    asyncio.run(main())
    return 0


def _simulate(args: argparse.Namespace) -> int:
    try:
        plant = _load(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from collector.simulator import PlantSimulator  # noqa: PLC0415

    simulator = PlantSimulator(plant=plant)

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

    asyncio.run(main())
    return 0
