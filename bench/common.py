"""What every benchmark scenario shares: per-process CPU time from the operating system, a free
port on loopback, the machine a figure was measured on, and the one shape of a result.

A result is one JSON object on stdout: `{"scenario", "parameters", "figures", "failure",
"machine", "time_unix_s"}`. `figures` is null and `failure` says why when the scenario's own
check of its output failed (readings missing, a chain that does not verify): a figure is only
reported for work that was verified. `bench/run.py` runs scenarios and keeps their results in
`bench/results/`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nacl.signing
import yaml

from gateway.ledger import open_ledger
from gateway.runtime import enroll_collector
from gateway.verifier import VerifyReport, verify_ledger
from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import (
    GENESIS_HASH,
    BlockDraft,
    ReadingValue,
    Signer,
    block_hash,
    encode_block,
    key_id_of,
)

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


# --- what the ingest and drain scenarios share (bench/ingest_grpc.py, bench/mqtt_ingest.py,
# bench/drain.py): chains of signed blocks as a collector seals them, a gateway process, a broker,
# a throwaway PostgreSQL database, and the resources of a process from the OS

__all__ += ["LEDGER_CHOICES", "Countdown", "IngestMeasured", "MeasuredInterval", "each_ledger",
            "failure_text", "in_ledger", "ingest_ack", "ingest_figures", "ingest_result", "rate"]
__all__ += ["BLOCK_BASE_UNIX_MS", "POSTGRES_ADMIN_URL", "Backlog", "check_ledger", "config_draft",
            "enroll_backlogs", "log_tail", "pack_backlog", "peak_rss_mib", "postgres_cpu_seconds",
            "presign", "public_key_of", "readings_draft", "self_cpu_seconds",
            "signed_backlog", "spawn", "spawn_gateway", "start_mosquitto", "stop",
            "throwaway_database", "wait_for_log", "wait_for_port"]

POSTGRES_ADMIN_URL = os.environ.get("STACKLINE_TEST_PG",
                                    "postgresql://postgres@127.0.0.1:5432/postgres")
BLOCK_BASE_UNIX_MS = 1_795_000_000_000  # a whole second; block N covers the Nth second after it
CONFIG_DOCUMENT = b"plant: {id: bench}\n# the configuration block every chain starts with\n"


def peak_rss_mib(pid: int) -> float:
    """The highest resident set size of a process so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def postgres_cpu_seconds() -> float:
    """User + system CPU of every `postgres` process on this machine (the server's share of a
    PostgreSQL ledger's work; includes anyone else's queries, so measure on a quiet server)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    total += cpu_seconds(int(entry.name))
            except OSError:  # ended meanwhile
                continue
    return total


def self_cpu_seconds() -> float:
    """User + system CPU of this process, every thread."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def config_draft(collector_id: str) -> BlockDraft:
    """The configuration block a collector seals before its first readings."""
    return BlockDraft(collector_id, BLOCK_BASE_UNIX_MS, BLOCK_BASE_UNIX_MS, (),
                      hashlib.sha256(CONFIG_DOCUMENT).digest(), kind=pb.BLOCK_KIND_CONFIG,
                      config_document=CONFIG_DOCUMENT)


def readings_draft(collector_id: str, sequence: int, readings: int) -> BlockDraft:
    """Block `sequence` of a chain: one second of `readings` float32 readings (raw registers
    kept), under the configuration of `config_draft`."""
    start = BLOCK_BASE_UNIX_MS + sequence * 1000
    values = [ReadingValue(f"bench-plant/cems-{n // 10}/p{n:02d}", start,  # 24 characters
                           40.0 + n + sequence % 7, pb.QUALITY_NORMAL, (16928, n))
              for n in range(readings)]
    return BlockDraft(collector_id, start, start + 1000, values,
                      hashlib.sha256(CONFIG_DOCUMENT).digest())


def signed_backlog(collector_id: str, seed: bytes, blocks: int, readings: int) -> list[bytes]:
    """A collector's chain as SignedBlock envelopes: block 1 its configuration, blocks 2..
    `blocks` of `readings` readings each, signed with the Ed25519 key of `seed` (a picklable
    function, so that a process pool can sign backlogs in parallel)."""
    signer = Signer(signing_key=nacl.signing.SigningKey(seed))
    out, previous = [], GENESIS_HASH
    for sequence in range(1, blocks + 1):
        draft = (config_draft(collector_id) if sequence == 1
                 else readings_draft(collector_id, sequence, readings))
        payload = encode_block(draft, sequence=sequence, previous_hash=previous)
        out.append(signer.envelope(payload).SerializeToString())
        previous = block_hash(payload)
    return out


def public_key_of(seed: bytes) -> bytes:
    """The raw Ed25519 public key of a seed."""
    return bytes(nacl.signing.SigningKey(seed).verify_key)


def wait_for_port(port: int, *, process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Until something accepts connections on 127.0.0.1:`port`; RuntimeError if `process` ends
    or the time runs out first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process {process.pid} ended with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout_s:.0f} s")


def spawn(args: list[str], log: Path | None) -> subprocess.Popen[bytes]:
    """A server process, its output appended to `log` (or discarded)."""
    out = log.open("ab") if log else subprocess.DEVNULL
    return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


def spawn_gateway(config: dict[str, Any], directory: Path, name: str = "gateway"
                  ) -> subprocess.Popen[bytes]:
    """`stackline gateway run` on a configuration written to DIRECTORY/NAME.yaml; its log goes
    to DIRECTORY/NAME.log."""
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return spawn([sys.executable, "-m", "proto.cli", "gateway", "run", "--config", str(path)],
                 directory / f"{name}.log")


def stop(process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it does not end in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def log_tail(path: Path, lines: int = 5) -> str:
    """The last lines of a server's log, to show with a failure."""
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_mosquitto(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A plaintext, anonymous Mosquitto on a free loopback port (a benchmark's own broker, not
    the hardened one of docs/mosquitto/); return the process and the port once it listens."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    config = directory / "mosquitto.conf"
    # the limits and persistence of docs/mosquitto/mosquitto.conf; no TLS, no passwords
    (directory / "mosquitto-data").mkdir(exist_ok=True)
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                      "max_packet_size 8388608\nmax_queued_messages 10000\n"
                      f"persistence true\npersistence_location {directory / 'mosquitto-data'}/\n"
                      "autosave_interval 60\n" + ("user root\n" if os.geteuid() == 0 else ""))
    broker = spawn([binary, "-c", str(config)], directory / "mosquitto.log")
    wait_for_port(port, process=broker)
    return broker, port


@contextlib.asynccontextmanager
async def throwaway_database(prefix: str = "stackline_bench") -> AsyncIterator[str]:
    """A new, empty PostgreSQL database on the machine's server; its URL. Dropped afterwards."""
    import asyncpg  # noqa: PLC0415 - only the PostgreSQL runs need the driver

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        admin = await asyncpg.connect(POSTGRES_ADMIN_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@dataclasses.dataclass(frozen=True, slots=True)
class Backlog:
    """One simulated collector's pre-signed chain, ready to send: its hello and its batches as
    IngestRequest bytes, the same for every transport."""

    collector_id: str
    seed: bytes
    hello: bytes
    batches: tuple[bytes, ...]
    blocks: int


def pack_backlog(collector_id: str, seed: bytes, blocks: int, readings: int, batch: int) -> Backlog:
    """Sign a collector's chain and pack it into IngestRequest messages of `batch` blocks."""
    envelopes = signed_backlog(collector_id, seed, blocks, readings)
    batches = []
    for first in range(0, len(envelopes), batch):
        message = pb.Batch()
        for envelope in envelopes[first:first + batch]:
            message.blocks.add().ParseFromString(envelope)
        batches.append(pb.IngestRequest(batch=message).SerializeToString())
    hello = pb.IngestRequest(hello=pb.Hello(
        collector_id=collector_id, key_id=key_id_of(public_key_of(seed)),
        software_version="stackline-bench")).SerializeToString()
    return Backlog(collector_id, seed, hello, tuple(batches), blocks)


def presign(collectors: int, blocks: int, readings: int, batch: int) -> list[Backlog]:
    """Backlogs of collectors bench-c0000, bench-c0001, ..., signed in parallel on every core.
    Call it before any gRPC channel or event loop exists: the pool forks."""
    started = time.monotonic()
    print(f"signing {collectors} x {blocks} blocks of {readings} readings...", file=sys.stderr)
    ids = [f"bench-c{index:04d}" for index in range(collectors)]
    seeds = [os.urandom(32) for _ in ids]
    with concurrent.futures.ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        backlogs = list(pool.map(pack_backlog, ids, seeds, [blocks] * collectors,
                                 [readings] * collectors, [batch] * collectors))
    print(f"  signed in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return backlogs


async def enroll_backlogs(location: str, backlogs: list[Backlog]) -> None:
    """Enrol every backlog's collector in the ledger at `location` (SQLite path or URL)."""
    ledger = open_ledger(location)
    try:
        await ledger.open()
        for backlog in backlogs:
            await enroll_collector(ledger, collector_id=backlog.collector_id,
                                   public_key=public_key_of(backlog.seed))
    finally:
        await ledger.close()


async def wait_for_log(location: str, blocks: int, timeout_s: float = 300.0) -> float:
    """Until the transparency log of the ledger at `location` has integrated `blocks` blocks;
    the seconds it took."""
    ledger = open_ledger(location, read_only=True)
    began = time.monotonic()
    try:
        while await ledger.log_tree().size() < blocks:
            if time.monotonic() - began > timeout_s:
                raise RuntimeError(f"the transparency log has not integrated all {blocks} blocks "
                                   f"after {timeout_s:.0f} s")
            await asyncio.sleep(0.1)
    finally:
        await ledger.close()
    return time.monotonic() - began


async def check_ledger(location: str, chains: dict[str, int], readings_per_block: int
                       ) -> tuple[VerifyReport, str | None]:
    """Each collector's chain stored to its last block (`chains`: collector id to blocks, the
    first a configuration block), and the whole ledger verifies (signatures, links, heads, the
    transparency log) with no warning; the report, and what is wrong (None: nothing)."""
    ledger = open_ledger(location, read_only=True)
    try:
        heads = await ledger.heads()
        report = await verify_ledger(ledger)
    finally:
        await ledger.close()
    short = [cid for cid, blocks in chains.items()
             if heads.get(cid) is None or heads[cid].sequence != blocks]
    total = sum(chains.values())
    readings = sum((blocks - 1) * readings_per_block for blocks in chains.values())
    if short:
        return report, (f"{len(short)} chain(s) not stored to their last block, e.g. {short[0]} "
                        f"(head {heads.get(short[0])}, last block {chains[short[0]]})")
    if report.total("blocks") != total or report.total("readings") != readings:
        return report, (f"the ledger holds {report.total('blocks')} of {total} blocks and "
                        f"{report.total('readings')} of {readings} readings")
    if not report.ok:
        log_findings = report.log.findings[:3] if report.log else []
        return report, f"the ledger does not verify: {report.findings[:3]} {log_findings}"
    if report.log is None or report.log.blocks_not_yet_logged:
        return report, "the transparency log was not audited, or misses blocks"
    if report.warnings:
        return report, f"verify warns: {report.warnings[:3]}"
    return report, None


# --- the machine as a whole (bench/fleet.py): on a shared machine, what else ran during a figure

__all__ += ["machine_busy_seconds"]


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy (user, nice, system, irq, softirq,
    steal), from /proc/stat: minus the CPU of a scenario's own processes over the same span,
    what other processes took."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def rate(count: int, seconds: float) -> int | None:
    """A rate; None when the time is too short for the clock (10 ms ticks) to have seen it."""
    return round(count / seconds) if seconds > 0 else None


@dataclasses.dataclass(slots=True)
class IngestMeasured:
    """What an ingest scenario (ingest-grpc, ingest-mqtt) measured around its gateway(s), before
    its output was checked."""

    wall_s: float = 0.0
    gateway_cpu_s: float = 0.0
    gateway_cpu_with_log_s: float = 0.0
    load_cpu_s: float = 0.0
    broker_cpu_s: float | None = None
    postgres_cpu_s: float | None = None
    postgres_cpu_with_log_s: float | None = None
    log_catch_up_s: float = 0.0
    others_cpu_s: float = 0.0
    gateway_peak_rss_mib: float = 0.0


class MeasuredInterval:
    """The CPU the gateway processes, the broker, the PostgreSQL server, this load process and
    the rest of the machine take from its creation to `end`, and the wall time."""

    def __init__(self, gateway_pids: list[int], *, broker_pid: int | None, postgres: bool) -> None:
        self.gateway_pids = gateway_pids
        self.broker_pid = broker_pid
        self.postgres = postgres
        self._gateways = sum(cpu_seconds(pid) for pid in gateway_pids)
        self._broker = cpu_seconds(broker_pid) if broker_pid is not None else 0.0
        self._postgres = postgres_cpu_seconds() if postgres else 0.0
        self._load = self_cpu_seconds()
        self._machine = machine_busy_seconds()
        self._started = time.monotonic()

    def __repr__(self) -> str:
        return f"MeasuredInterval(gateways={self.gateway_pids})"

    def end(self, measured: IngestMeasured) -> None:
        """Write the interval's wall time and CPU into `measured`."""
        measured.wall_s = time.monotonic() - self._started
        measured.load_cpu_s = self_cpu_seconds() - self._load
        measured.gateway_cpu_s = sum(cpu_seconds(pid) for pid in self.gateway_pids) - self._gateways
        if self.broker_pid is not None:
            measured.broker_cpu_s = cpu_seconds(self.broker_pid) - self._broker
        if self.postgres:
            measured.postgres_cpu_s = postgres_cpu_seconds() - self._postgres
        measured.others_cpu_s = (machine_busy_seconds() - self._machine - measured.load_cpu_s
                                 - measured.gateway_cpu_s - (measured.broker_cpu_s or 0.0)
                                 - (measured.postgres_cpu_s or 0.0))

    async def log_catch_up(self, location: str, blocks: int, measured: IngestMeasured) -> None:
        """After `end`: wait for the transparency log to integrate every block, adding the
        gateways' and the server's CPU meanwhile (work the ingest caused) and their peak
        memory."""
        gateways = sum(cpu_seconds(pid) for pid in self.gateway_pids)
        server = postgres_cpu_seconds() if self.postgres else 0.0
        measured.log_catch_up_s = await wait_for_log(location, blocks)
        measured.gateway_cpu_with_log_s = (measured.gateway_cpu_s + sum(
            cpu_seconds(pid) for pid in self.gateway_pids) - gateways)
        if measured.postgres_cpu_s is not None:
            measured.postgres_cpu_with_log_s = (measured.postgres_cpu_s + postgres_cpu_seconds()
                                                - server)
        measured.gateway_peak_rss_mib = max(peak_rss_mib(pid) for pid in self.gateway_pids)


class Countdown:
    """Set once `count` parties have each called it (every simulated collector said hello)."""

    def __init__(self, count: int) -> None:
        self.left = count
        self._done = asyncio.Event()
        if count == 0:
            self._done.set()

    def __repr__(self) -> str:
        return f"Countdown(left={self.left})"

    def __call__(self) -> None:
        self.left -= 1
        if self.left == 0:
            self._done.set()

    async def wait(self) -> None:
        """Until every party has called."""
        await self._done.wait()


def ingest_ack(payload: bytes, collector_id: str) -> pb.Ack:
    """The ack in a gateway's answer; RuntimeError when it refused the message or a block."""
    response = pb.IngestResponse.FromString(payload)
    if response.HasField("error"):
        raise RuntimeError(f"{collector_id}: refused: {response.error.reason}: "
                           f"{response.error.detail}")
    if response.ack.rejections:
        first = response.ack.rejections[0]
        raise RuntimeError(f"{collector_id}: block {first.sequence} rejected: {first.reason}: "
                           f"{first.detail}")
    return response.ack


def failure_text(exc: BaseException, log: Path) -> str:
    """What went wrong in a run (the first error of a task group), with the gateway log's end."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}; gateway log: {log_tail(log)}"


async def ingest_result(scenario: str, parameters: dict[str, Any], location: str,
                        backlogs: list[Backlog], readings_per_block: int,
                        measured: IngestMeasured, extra: dict[str, Any]) -> dict[str, Any]:
    """Check the ledger (every chain to its last block, everything verifies), then the result
    with the ingest figures."""
    print("  verifying the ledger...", file=sys.stderr)
    report, failure = await check_ledger(location, {b.collector_id: b.blocks for b in backlogs},
                                         readings_per_block)
    return result(scenario, parameters, ingest_figures(
        measured, blocks=sum(b.blocks for b in backlogs), readings=report.total("readings"),
        chains_verified=report.ok, extra=extra), failure)


def ingest_figures(measured: IngestMeasured, *, blocks: int, readings: int,
                   extra: dict[str, Any], chains_verified: bool) -> dict[str, Any]:
    """The figures every ingest scenario reports, with its own `extra` ones."""
    return {
        "readings_per_cpu_s": rate(readings, measured.gateway_cpu_s),
        "readings_per_s": rate(readings, measured.wall_s),
        "readings_per_cpu_s_with_log": rate(readings, measured.gateway_cpu_with_log_s),
        "blocks": blocks,
        "readings": readings,
        "wall_s": round(measured.wall_s, 2),
        "gateway_cpu_s": round(measured.gateway_cpu_s, 2),
        "gateway_cpu_with_log_s": round(measured.gateway_cpu_with_log_s, 2),
        "log_catch_up_s": round(measured.log_catch_up_s, 2),
        "gateway_cpu_us_per_block": round(measured.gateway_cpu_s / blocks * 1e6, 1),
        "load_generator_cpu_s": round(measured.load_cpu_s, 2),
        "postgres_server_cpu_s": _rounded(measured.postgres_cpu_s),
        "postgres_server_cpu_with_log_s": _rounded(measured.postgres_cpu_with_log_s),
        "broker_cpu_s": _rounded(measured.broker_cpu_s),
        **extra,
        "gateway_peak_rss_mib": round(measured.gateway_peak_rss_mib, 1),
        # on a shared machine, what else ran meanwhile (readings_per_s is only as good as this)
        "other_processes_cpu_s": round(max(0.0, measured.others_cpu_s), 2),
        "chains_verified": chains_verified,
    }


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 2)


LEDGER_CHOICES = ("sqlite", "postgresql", "both")


async def each_ledger(choice: str, scenario: str,
                      run_one: Callable[[str], Awaitable[dict[str, Any]]]) -> int:
    """Run a scenario against the chosen ledger(s) (`both`: SQLite, then PostgreSQL), emitting
    each result; the exit status."""
    status = 0
    for ledger_kind in (["sqlite", "postgresql"] if choice == "both" else [choice]):
        print(f"{scenario} into {ledger_kind}:", file=sys.stderr)
        status |= emit(await run_one(ledger_kind))
    return status


async def in_ledger(kind: str, *, prefix: str, database: str,
                    measure: Callable[[str, Path], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """`measure(location, folder)` against a fresh ledger of `kind` ("sqlite": a file in a
    temporary folder; "postgresql": a throwaway database), cleaned up afterwards."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        if kind == "postgresql":
            async with throwaway_database(database) as url:
                return await measure(url, folder)
        return await measure(str(folder / "ledger.sqlite"), folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
