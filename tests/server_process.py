"""What the tests' own servers (Mosquitto, VictoriaMetrics) share: a process that a test can
start, kill (SIGKILL, as a crash would) or stop, whose log it can show when something fails."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def accepts_connections(port: int) -> bool:
    """True when something listens on 127.0.0.1:port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


class ServerProcess:
    """One server process of a test; subclasses start it and say when it is ready."""

    name = "server"
    log_name = "server.log"
    start_timeout_s = 10.0
    stop_timeout_s = 5.0

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _wait_ready(self, ready: Callable[[], bool], what: str) -> None:
        """Poll `ready` until it holds; fail with the server's log if it exits or is too slow."""
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self.process is not None and self.process.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.process.returncode}: {self.log()}")
            if ready():
                return
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name} did not {what}: {self.log()}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not stop in time."""
        if self.running:
            assert self.process is not None
            self.process.terminate()
            try:
                self.process.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        """The end of the server's own log."""
        path = self.directory / self.log_name
        return path.read_text(errors="replace")[-4000:] if path.exists() else "(no log)"
