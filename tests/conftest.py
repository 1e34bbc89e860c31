"""Shared fixtures: paths, free ports, and waiting on a condition with a deadline."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIRMWARE = REPO / "firmware-config"
DEMO_PLANT = FIRMWARE / "plants" / "demo-plant.yaml"
SHARED_VECTORS = REPO.parent / "shared" / "reference" / "vectors"


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_for(condition: Callable[[], Awaitable[bool]], *, timeout_s: float,
                   what: str, interval_s: float = 0.05) -> None:
    """Poll an async condition until it holds; fail the test naming `what` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await condition():
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(interval_s)


def wait_for_sync(condition: Callable[[], bool], *, timeout_s: float, what: str,
                  interval_s: float = 0.05) -> None:
    """The same for a plain condition."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)
