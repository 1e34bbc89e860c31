"""A serial line without hardware: two pseudo-terminals joined by socat.

The collector opens `collector_end`, the simulator `plant_end`; bytes written to one come out of the
other. Either end may be closed and opened again while socat runs. A Linux 6 pseudo-terminal takes
only 8 data bits and no parity (other settings fail with EINVAL), so serial lines in tests use
`parity: N`, `bytesize: 8`; baud rate and stop bits are accepted and have no effect.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

from tests.server_process import ServerProcess

__all__ = ["PtyPair", "pty_pair", "socat_binary"]


def socat_binary() -> str:
    """socat's path; fail (not skip) with the way to install it."""
    found = shutil.which("socat")
    if found is None:
        pytest.fail("socat is not installed: run `apt-get install -y socat` "
                    "(.ci/run does this on a fresh machine)")
    return found


class PtyPair(ServerProcess):
    """One socat process joining two pseudo-terminals, reached through symlinks in `directory`
    (a temporary folder of its own, removed on stop, when none is given). The ends are paths as
    strings, as a plant configuration and `PlantSimulator(serial_ports=...)` take them."""

    name = "socat"
    log_name = "socat.log"

    def __init__(self, directory: Path | None = None) -> None:
        self.own_directory = directory is None
        super().__init__(Path(tempfile.mkdtemp(prefix="stackline-pty-")) if directory is None else directory)
        self.collector_end = str(self.directory / "collector")
        self.plant_end = str(self.directory / "plant")

    def __repr__(self) -> str:
        return f"PtyPair(collector_end={self.collector_end!r}, running={self.running})"

    def __enter__(self) -> PtyPair:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        """Start socat and wait until both ends exist."""
        assert not self.running
        if shutil.which("socat") is None:
            self.stop()  # leaves no temporary folder behind
        binary = socat_binary()
        self.directory.mkdir(parents=True, exist_ok=True)
        ends = (Path(self.collector_end), Path(self.plant_end))
        for end in ends:
            end.unlink(missing_ok=True)  # a link left by a socat that was killed
        with (self.directory / self.log_name).open("ab") as log:
            self.process = subprocess.Popen(
                [binary, "-d", "-d", f"pty,raw,echo=0,link={self.collector_end}",
                 f"pty,raw,echo=0,link={self.plant_end}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        try:
            self._wait_ready(lambda: all(end.exists() for end in ends), "make its two pseudo-terminals")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop socat (it removes its links) and the temporary folder if it made one."""
        super().stop()
        if self.own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[PtyPair]:
    """A running socat pty pair in the test's temporary folder, stopped after the test."""
    with PtyPair(tmp_path / "pty") as pair:
        yield pair
