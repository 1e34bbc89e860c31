"""A real VictoriaMetrics for the tests (Debian's `victoria-metrics` package, 1.79), on a free port
and a data folder of the test's own, which a test can SIGKILL and start again on the same data.

Flags: `-retentionPeriod=100y` keeps the fixed 2023 timestamps the tests write;
`-dedup.minScrapeInterval=1ms` keeps one sample per series and millisecond, so a request the sink
sends twice is stored once (what the README tells operators to set); `-search.latencyOffset=0s`
makes samples readable at once. Read back with `/api/v1/export` (JSON lines, one per series) after
`/internal/force_flush`.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.server_process import ServerProcess

VICTORIA_BINARY = "/usr/bin/victoria-metrics"
Series = tuple[str, tuple[tuple[str, str], ...]]
HTTP_TIMEOUT_S = 30.0


def victoria_binary() -> str:
    """The server's path; fail (not skip) with the way to install it."""
    found = shutil.which("victoria-metrics") or (
        VICTORIA_BINARY if Path(VICTORIA_BINARY).exists() else None)
    if found is None:
        pytest.fail("victoria-metrics is not installed: run `apt-get install -y victoria-metrics` "
                    "(.ci/run does this on a fresh machine)", pytrace=False)
    return found


class VictoriaMetrics(ServerProcess):
    """One VictoriaMetrics process on a free port."""

    name = "victoria-metrics"
    log_name = "victoria-metrics.log"
    start_timeout_s = 20.0
    stop_timeout_s = 15.0  # on SIGTERM it flushes before it exits

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.data = directory / "data"
        self.port = free_port()
        self.data.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"VictoriaMetrics(port={self.port}, running={self.running})"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start on the same port and data folder; wait until /health answers."""
        assert not self.running
        log = (self.directory / "victoria-metrics.log").open("ab")
        self.process = subprocess.Popen(
            [victoria_binary(), f"-httpListenAddr=127.0.0.1:{self.port}",
             f"-storageDataPath={self.data}", "-retentionPeriod=100y",
             "-dedup.minScrapeInterval=1ms", "-search.latencyOffset=0s", "-loggerLevel=WARN"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        log.close()
        self._wait_ready(self._healthy, f"answer on port {self.port}")

    def _healthy(self) -> bool:
        try:
            return self._get("/health") == b"OK"
        except OSError:
            return False

    def _get(self, path: str, params: dict[str, str] | None = None) -> bytes:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}",
                                    timeout=HTTP_TIMEOUT_S) as response:
            return bytes(response.read())

    def force_flush(self) -> None:
        """Make everything ingested so far searchable."""
        self._get("/internal/force_flush")

    def export(self, selector: str = '{__name__=~".+"}') -> list[dict[str, Any]]:
        """Every series matching the selector, with all its samples (flushed first)."""
        self.force_flush()
        body = self._get("/api/v1/export", {"match[]": selector, "start": "0"})
        return [json.loads(line) for line in body.decode().splitlines() if line.strip()]

    def samples(self, selector: str = '{__name__=~".+"}') -> dict[Series, list[tuple[int, float]]]:
        """Series (metric name, sorted labels without the name) -> [(ms timestamp, value)]."""
        found: dict[Series, list[tuple[int, float]]] = {}
        for series in self.export(selector):
            metric = dict(series["metric"])
            name = metric.pop("__name__")
            key = (name, tuple(sorted(metric.items())))
            found.setdefault(key, []).extend(
                zip(series["timestamps"], series["values"], strict=True))
        return found


def started(directory: Path) -> Iterator[VictoriaMetrics]:
    """A running server, stopped afterwards (the body of the fixtures)."""
    server = VictoriaMetrics(directory)
    server.start()
    try:
        yield server
    finally:
        server.kill()


# VictoriaMetrics keeps about 12 significant decimal digits of a float64 (its decimal encoding)
SIGNIFICANT_RELATIVE_ERROR = 1e-11


def same_samples(stored: dict[Series, list[tuple[int, float]]],
                 expected: dict[Series, list[tuple[int, float]]]) -> bool:
    """The same series with the same timestamps, and values equal to 12 significant digits."""
    if stored.keys() != expected.keys():
        return False
    for series, samples in expected.items():
        got = stored[series]
        if [t for t, _ in got] != [t for t, _ in samples]:
            return False
        if any(not math.isclose(a, b, rel_tol=SIGNIFICANT_RELATIVE_ERROR, abs_tol=0.0)
               for (_, a), (_, b) in zip(got, samples, strict=True)):
            return False
    return True


def differences(stored: dict[Series, list[tuple[int, float]]],
                expected: dict[Series, list[tuple[int, float]]]) -> list[str]:
    """What differs, for an assertion message (empty when `same_samples` holds)."""
    found = [f"missing series {s}" for s in expected.keys() - stored.keys()]
    found += [f"unexpected series {s}" for s in stored.keys() - expected.keys()]
    for series in expected.keys() & stored.keys():
        if not same_samples({series: stored[series]}, {series: expected[series]}):
            got, want = stored[series], expected[series]
            first = next(((g, w) for g, w in zip(got, want, strict=False) if g != w), None)
            found.append(f"{series}: {len(got)} samples, expected {len(want)}; first "
                         f"difference {first}")
    return found[:10]
