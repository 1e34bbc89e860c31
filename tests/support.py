"""Helpers to write test plants and gateways and to run `stackline` as separate processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from collector.config import DeviceConfig
from proto.keys import generate_key_files
from tests.conftest import DEMO_PLANT, free_port

DEFAULT_TIMEOUT_MS = DeviceConfig.model_fields["timeout_ms"].default


def write_plant(directory: Path, *, grpc_port: int | None, tick_ms: int = 1000,
                dead_device: bool = False, mqtt: dict[str, Any] | None = None,
                collector_id: str | None = None, modbus_ports: dict[int, int] | None = None) -> Path:
    """The demo plant with free Modbus ports, a key and a buffer inside `directory`.

    `grpc_port` None leaves out the gRPC uplink; `mqtt` adds an MQTT uplink section as given.
    With `dead_device`, one more device points at a port where nothing listens. Plants given the
    same `modbus_ports` mapping read the same simulated devices.
    """
    plant: dict[str, Any] = yaml.safe_load(DEMO_PLANT.read_text())
    if collector_id is not None:
        plant["collector"]["id"] = collector_id
    plant["collector"]["key_file"] = "collector.key"
    plant["collector"]["tick_ms"] = tick_ms
    plant["collector"]["buffer"]["path"] = "buffer.sqlite"
    uplink: dict[str, Any] = {}
    if grpc_port is not None:
        uplink["grpc"] = {"target": f"127.0.0.1:{grpc_port}", "reconnect_max_s": 1.0}
    if mqtt is not None:
        uplink["mqtt"] = mqtt
    plant["collector"]["uplink"] = uplink
    ports: dict[int, int] = {} if modbus_ports is None else modbus_ports
    for device in plant["devices"]:
        device["profile"] = str((DEMO_PLANT.parent / device["profile"]).resolve())
        ports.setdefault(device["tcp"]["port"], free_port())
        device["tcp"]["port"] = ports[device["tcp"]["port"]]
    if dead_device:
        dead = dict(plant["devices"][0])
        dead.update(id="cems-dead", tcp={"host": "127.0.0.1", "port": free_port()},
                    timeout_ms=200)
        plant["devices"].append(dead)
    for device in plant["devices"]:
        device["timeout_ms"] = fitting_timeout_ms(device, tick_ms)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "plant.yaml"
    path.write_text(yaml.safe_dump(plant, sort_keys=False))
    if not (directory / "collector.key").exists():
        generate_key_files(directory / "collector.key")
    return path


def fitting_timeout_ms(device: dict[str, Any], tick_ms: int) -> int:
    """The device's timeout, shortened to half its poll interval where it would not fit in it
    (a plant with a short tick: the collector refuses a timeout at or above the interval)."""
    interval_ms = int(device.get("poll_interval_ms") or tick_ms)
    return min(int(device.get("timeout_ms", DEFAULT_TIMEOUT_MS)), interval_ms // 2)


def write_gateway(directory: Path, *, grpc_port: int) -> Path:
    """A gateway configuration with its ledger in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump({
        "gateway": {"id": "test-gateway"},
        "listen": {"grpc": f"127.0.0.1:{grpc_port}"},
        "ledger": {"path": "ledger.sqlite"},
    }))
    return path


def stackline(*args: str, log: Path) -> subprocess.Popen[bytes]:
    """Start `stackline ARGS` as its own process, output appended to `log`."""
    handle = log.open("ab")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "proto.cli", *args], stdout=handle, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, env=env, start_new_session=True,
    )


def run_stackline(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `stackline ARGS` to completion and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "proto.cli", *args], capture_output=True, text=True,
        timeout=timeout_s, check=False,
    )


def stop(process: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM,
         timeout_s: float = 15) -> int:
    """Signal a process and wait for it; kill it if it does not stop in time."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
