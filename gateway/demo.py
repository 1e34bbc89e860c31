"""`stackline demo`: the simulated plant, its collector and the gateway on embedded defaults.

Each part runs as its own process, as in production (`stackline simulate`, `stackline collector
run`, `stackline gateway run`), in its own session so that Ctrl-C reaches only this orchestrator,
which then stops them in order: the collector first (it drains its buffer into the gateway), then
the simulator and the gateway. The gateway code never imports the collector: the plant
configuration is read here as plain YAML only to rewrite ports and paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from gateway.ledger import SqliteLedger
from gateway.runtime import enroll_collector
from gateway.verifier import render_text, verify_ledger
from proto.keys import generate_key_files, load_public_key
from proto.tlog import verifier_key

__all__ = [
    "DEFAULT_PLANT", "enroll_demo_collector", "prepare", "run_demo", "spawn", "stop_process",
    "wait_port", "write_configs",
]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PLANT = REPO / "firmware-config" / "plants" / "demo-plant.yaml"
GATEWAY_ID = "demo-gateway"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
# the collector's default per-request timeout (collector.config.DeviceConfig.timeout_ms),
# repeated here because the gateway does not import the collector
DEVICE_TIMEOUT_MS = 500


def _free_port(preferred: int = 0) -> int:
    """`preferred` when it is free, else any free port."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free TCP port on 127.0.0.1")


def _previous_ports(data_dir: Path) -> dict[str, int]:
    """Ports an earlier run used, so that a rerun keeps the same configuration (and so adds no
    configuration block to the chain) when they are still free."""
    ports: dict[str, int] = {}
    try:
        gateway = yaml.safe_load((data_dir / "gateway.yaml").read_text())
        ports["grpc"] = int(str(gateway["listen"]["grpc"]).rsplit(":", 1)[1])
        plant = yaml.safe_load((data_dir / "plant.yaml").read_text())
        for device in plant["devices"]:
            ports[str(device["id"])] = int(device["tcp"]["port"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return ports
    return ports


def _fitting_timeout_ms(device: dict[str, Any], tick_ms: int) -> int:
    """A device's timeout, at most half its poll interval: with a short tick the collector
    refuses a timeout at or above the interval (the interval is the tick unless the device sets
    its own poll_interval_ms)."""
    interval_ms = int(device.get("poll_interval_ms") or tick_ms)
    return min(int(device.get("timeout_ms", DEVICE_TIMEOUT_MS)), interval_ms // 2)


def write_configs(data_dir: Path, plant_template: Path, *,
                  tick_ms: int | None = None) -> tuple[Path, Path, str]:
    """Write DIR/gateway.yaml and DIR/plant.yaml with free ports and paths inside DIR; return
    both paths and the collector id."""
    previous = _previous_ports(data_dir)
    grpc_port = _free_port(previous.get("grpc", 0))
    gateway_config = data_dir / "gateway.yaml"
    token = data_dir / "verifier.token"
    if not token.exists():
        descriptor = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
    gateway_config.write_text(yaml.safe_dump({
        "gateway": {"id": GATEWAY_ID},
        "listen": {"grpc": f"127.0.0.1:{grpc_port}"},
        "ledger": {"path": "ledger.sqlite"},
        "http": {"listen": f"127.0.0.1:{_free_port()}"},
        "log": {"checkpoint_interval_s": 5},
        "verifier_api": {"listen": f"127.0.0.1:{_free_port()}",
                         "tokens": [{"name": "demo-verifier", "token_file": token.name,
                                     "plants": ["*"]}]},
    }, sort_keys=False))
    # the log's key is made here rather than at the gateway's first start, so that the collector
    # can be given its verifier key and check the receipts the gateway's acks carry
    log_key = data_dir / "log-signing.key"
    if not log_key.exists():
        generate_key_files(log_key)
    plant: dict[str, Any] = yaml.safe_load(plant_template.read_text())
    collector = plant["collector"]
    collector["gateway_log_key"] = verifier_key(f"stackline/{GATEWAY_ID}",
                                                load_public_key(log_key.with_name(log_key.name + ".pub")))
    collector["key_file"] = "keys/collector.key"
    collector["http"] = {"listen": f"127.0.0.1:{_free_port()}"}
    if tick_ms is not None:
        collector["tick_ms"] = tick_ms
    collector["buffer"]["path"] = "collector-buffer.sqlite"
    collector["uplink"]["grpc"]["target"] = f"127.0.0.1:{grpc_port}"
    ports: dict[int, int] = {}
    for device in plant["devices"]:
        device["profile"] = str((plant_template.parent / device["profile"]).resolve())
        if tick_ms is not None:
            device["timeout_ms"] = _fitting_timeout_ms(device, tick_ms)
        template_port = int(device["tcp"]["port"])
        ports.setdefault(template_port, _free_port(previous.get(str(device["id"]), 0)))
        device["tcp"]["port"] = ports[template_port]
    plant_config = data_dir / "plant.yaml"
    plant_config.write_text(
        f"# written by `stackline demo` from {plant_template}\n"
        + yaml.safe_dump(plant, sort_keys=False))
    return gateway_config, plant_config, str(collector["id"])


def prepare(data_dir: Path, plant_template: Path, out: Any, *,
            tick_ms: int | None = None) -> tuple[Path, Path, Path, str, Path]:
    """Folders, configurations and (on the first run) the collector's key."""
    data_dir = data_dir.resolve()
    (data_dir / "logs").mkdir(parents=True, exist_ok=True)
    gateway_config, plant_config, collector_id = write_configs(data_dir, plant_template,
                                                               tick_ms=tick_ms)
    key_path = data_dir / "keys" / "collector.key"
    if not key_path.exists():
        _, key_id = generate_key_files(key_path)
        print(f"generated collector key {key_id} in {key_path}", file=out)
    return data_dir, gateway_config, plant_config, collector_id, key_path


async def enroll_demo_collector(ledger_path: Path, collector_id: str, key_path: Path) -> str:
    """Enrol the collector's public key (idempotent); return its key id."""
    ledger = SqliteLedger(path=ledger_path)
    try:
        return await enroll_collector(
            ledger, collector_id=collector_id,
            public_key=load_public_key(key_path.with_name(key_path.name + ".pub")))
    finally:
        await ledger.close()


def _ports(plant_config: Path, gateway_config: Path) -> tuple[dict[str, Any], int]:
    plant: dict[str, Any] = yaml.safe_load(plant_config.read_text())
    listen = str(yaml.safe_load(gateway_config.read_text())["listen"]["grpc"])
    return plant, int(listen.rsplit(":", 1)[1])


def spawn(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    handle = log_path.open("ab")
    return subprocess.Popen(  # noqa: S603 - our own CLI, arguments built here
        [sys.executable, "-m", "proto.cli", *args],
        stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, cwd=os.getcwd(),
    )


async def wait_port(port: int, process: subprocess.Popen[bytes], what: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}; see {log_path}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise RuntimeError(f"{what} did not listen on port {port} within {START_TIMEOUT_S:.0f} s; "
                       f"see {log_path}")


def stop_process(process: subprocess.Popen[bytes], what: str) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log.warning("%s did not stop within %.0f s; killing it", what, STOP_TIMEOUT_S)
        process.kill()
        process.wait()


async def run_demo(*, data_dir: Path, duration_s: float | None, plant_template: Path,
                   out: Any = sys.stdout) -> int:
    """Run the demo until `duration_s` seconds of data have streamed (or Ctrl-C); return an
    exit status (0 when the final verification passes)."""
    data_dir, gateway_config, plant_config, collector_id, key_path = prepare(
        data_dir, plant_template, out)
    ledger_path = data_dir / "ledger.sqlite"
    key_id = await enroll_demo_collector(ledger_path, collector_id, key_path)
    print(f"collector {collector_id} enrolled with key {key_id}; ledger {ledger_path}", file=out)

    plant, grpc_port = _ports(plant_config, gateway_config)
    urls = {"gateway": "http://" + yaml.safe_load(gateway_config.read_text())["http"]["listen"],
            "collector": "http://" + plant["collector"]["http"]["listen"]}
    logs = data_dir / "logs"
    processes: dict[str, subprocess.Popen[bytes]] = {}
    evidence_ok = False
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        processes["gateway"] = spawn(["gateway", "run", "--config", str(gateway_config)],
                                      logs / "gateway.log")
        processes["simulator"] = spawn(["simulate", "--config", str(plant_config)],
                                        logs / "simulator.log")
        await wait_port(grpc_port, processes["gateway"], "the gateway", logs / "gateway.log")
        for port in sorted({int(d["tcp"]["port"]) for d in plant["devices"]}):
            await wait_port(port, processes["simulator"], "the simulator", logs / "simulator.log")
        processes["collector"] = spawn(["collector", "run", "--config", str(plant_config)],
                                        logs / "collector.log")
        print(f"simulator, collector and gateway running; logs in {logs}; Ctrl-C stops", file=out)
        print(f"operator view:  stackline status --gateway {urls['gateway']}", file=out)
        print(f"metrics:        {urls['gateway']}/metrics  {urls['collector']}/metrics", file=out)
        await _watch(ledger_path, processes, stop, duration_s, out)
        # what a verifier takes away: the plant's data stops, the evidence is exported over the
        # verifier API and checked offline, as `stackline export` / `verify --bundle` do it
        stop_process(processes.pop("collector"), "collector")
        evidence_ok = await _evidence(
            _evidence_commands(plant_config, gateway_config, data_dir), out)
    finally:
        for name in ("collector", "simulator", "gateway"):
            if name in processes:
                stop_process(processes[name], name)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    reader = SqliteLedger(path=ledger_path, read_only=True)
    try:
        report = await verify_ledger(reader)
    finally:
        await reader.close()
    print("", file=out)
    print(render_text(report), file=out)
    summary = {k: v for k, v in report.to_json().items() if k not in ("per_collector", "findings")}
    print(json.dumps(summary), file=out)
    hint = _report_hint(plant_config, ledger_path, data_dir)
    if hint:
        print(f"accounting:     {hint}", file=out)
    return 0 if report.ok and evidence_ok else 1


def _evidence_commands(plant_config: Path, gateway_config: Path, data_dir: Path) -> list[list[str]]:
    """`stackline export` of today's evidence bundle of the plant's first unit, and `stackline
    verify --bundle` of it with the log key pinned (none when the plant accounts no unit)."""
    plant = yaml.safe_load(plant_config.read_text())
    units = ((plant.get("accounting") or {}).get("units")) or []
    if not units:
        return []
    gateway = yaml.safe_load(gateway_config.read_text())
    origin = f"stackline/{gateway['gateway']['id']}"
    log_key = verifier_key(origin, load_public_key(data_dir / "log-signing.key.pub"))
    today = datetime.now(tz=ZoneInfo((plant.get("plant") or {}).get("timezone") or "UTC")).date()
    bundle = data_dir / "evidence.zip"
    return [["export", "--gateway-url", f"http://{gateway['verifier_api']['listen']}",
             "--token-file", str(data_dir / "verifier.token"), "--unit", str(units[0]["id"]),
             "--from", str(today), "--to", str(today + timedelta(days=1)), "-o", str(bundle)],
            ["verify", "--bundle", str(bundle), "--log-key", log_key]]


async def _evidence(commands: list[list[str]], out: Any) -> bool:
    """Run the commands, printing each and its output; True when all succeed."""
    print("", file=out)
    for args in commands:
        print("$ stackline " + " ".join(args), file=out, flush=True)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proto.cli", *args, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL)
        output, _ = await process.communicate()
        print(output.decode(errors="replace").rstrip(), file=out, flush=True)
        if process.returncode != 0:
            return False
    return True


def _report_hint(plant_config: Path, ledger_path: Path, data_dir: Path) -> str | None:
    """The `stackline report` command for today's figures of the plant's first accounting unit."""
    plant = yaml.safe_load(plant_config.read_text())
    units = ((plant.get("accounting") or {}).get("units")) or []
    if not units:
        return None
    zone = ZoneInfo((plant.get("plant") or {}).get("timezone") or "UTC")
    today = datetime.now(tz=zone).date()
    return (f"stackline report --ledger {ledger_path} --unit {units[0]['id']} --from {today} "
            f"--to {today + timedelta(days=1)} --format html -o {data_dir / 'report.html'}")


async def _watch(ledger_path: Path, processes: dict[str, subprocess.Popen[bytes]],
                 stop: asyncio.Event, duration_s: float | None, out: Any) -> None:
    """Print a status line a second; return at the deadline, on a signal, or if a part dies."""
    reader = SqliteLedger(path=ledger_path, read_only=True)
    started: float | None = None
    header = f"{'t':>5}  {'blocks':>7}  {'readings':>9}  {'lag':>7}  {'quarantined':>11}"
    print(header, file=out)
    try:
        while not stop.is_set():
            summary = await reader.summary()
            now = time.time()
            if started is None and summary.blocks > 0:
                started = time.monotonic()
            elapsed = 0.0 if started is None else time.monotonic() - started
            lag = ("-" if summary.latest_window_start_unix_ms is None
                   else f"{max(0.0, now - summary.latest_window_start_unix_ms / 1000):.1f}s")
            print(f"{elapsed:5.0f}  {summary.blocks:7d}  {summary.readings:9d}  {lag:>7}  "
                  f"{summary.quarantined:11d}", file=out, flush=True)
            for name, process in processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"the {name} exited with status {process.returncode}; "
                                       f"see its log")
            if duration_s is not None and started is not None and elapsed >= duration_s:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await stop.wait()
    finally:
        await reader.close()
