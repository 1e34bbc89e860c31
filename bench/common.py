"""What every benchmark scenario shares: per-process CPU time from the operating system, a free
port on loopback, the machine a figure was measured on, and the one shape of a result.

A result is one JSON object on stdout: `{"scenario", "parameters", "figures", "failure",
"machine", "time_unix_s"}`. `figures` is null and `failure` says why when the scenario's own
check of its output failed (readings missing, a chain that does not verify): a figure is only
reported for work that was verified. `bench/run.py` runs scenarios and keeps their results in
`bench/results/`.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import socket
import time
from pathlib import Path
from typing import Any

__all__ = ["cpu_seconds", "emit", "free_port", "machine", "result"]

LIBRARIES = ("grpcio", "protobuf", "PyNaCl", "asyncpg", "aiomqtt", "paho-mqtt", "influxdb-client",
             "pymodbus", "pydantic")

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])



def machine() -> dict[str, Any]:
    """Cores, Python, platform and the versions of the libraries on the hot paths."""
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "libraries": versions}


def result(scenario: str, parameters: dict[str, Any], figures: dict[str, Any] | None,
           failure: str | None = None) -> dict[str, Any]:
    """One result in the shape every scenario prints (figures only when nothing failed)."""
    return {"scenario": scenario, "parameters": parameters,
            "figures": None if failure else figures, "failure": failure,
            "machine": machine(), "time_unix_s": int(time.time())}


def emit(document: dict[str, Any]) -> int:
    """Print a result as one JSON line; the exit status a scenario ends with (1 on failure)."""
    print(json.dumps(document), flush=True)
    return 1 if document.get("failure") else 0
