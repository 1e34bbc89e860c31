"""A national fleet into one gateway: 2,162 simulated collectors each sending one block of 40
readings a second for 60 s over gRPC into one `stackline gateway run` process (SQLite ledger, the
transparency log integrating as blocks arrive).

Figures: the sustained rate, block latency from creation to the end-to-end ack (p50, p99, max,
and p50 at the start and at the end of the run, to show latency that grows), lost blocks, the
gateway's CPU (in all, and per thread: the event loop, the busiest other thread, which is the
ledger's worker when the ledger is what works, and the rest) and peak memory, the load
generator's own CPU, and what other processes of the machine took meanwhile (it is shared: a
figure measured beside another benchmark says so). `--profile` records the gateway with py-spy
and prints where each of its threads spent its wall time.

How the load is made, so that the load generator is not what is measured:

* Every block is pre-signed before the run, in a process pool, and kept in
  `bench/results/fleet-blocks-c<collectors>-s<seconds>-r<readings>-v<format>.bin` (collector keys
  come from a fixed seed per collector id, so the cache and the enrolment agree on every run).
* Each simulated collector has its own `stackline.v1.Ingest/Stream` (hello first, as the protocol
  in gateway/grpc_server.py asks), and the streams are multiplexed over `--channels` gRPC
  connections of this one asyncio process; requests and acks go as raw bytes.
* A collector behaves like collector/uplink_grpc.py with its default limits: block k of
  collector c is created at t0 + (k - 1) s + c/collectors s (its `window_start` says the same
  instant relative to a fixed base, so the cache does not depend on the clock), and is sent
  then, alone, when one of the collector's 8 batch slots is free; a collector whose slots are
  all waiting for acks sends what has come due meanwhile as one batch (up to 100 blocks) when an
  ack frees a slot, and reports the receipt tree size it holds, as a collector does.
* Latency is measured from the block's creation instant (not from when it could be sent), so
  a gateway that falls behind shows it in the latency, not by slowing the sender down.

The sustained rate counts the readings of the blocks created in the steady state (from
whole second `STEADY_FROM_S`, after the start-up, to the last block) that were committed within
`IN_TIME_S` (1 s, the latency bound) of their creation, per second of that window. Each collector
creates exactly one block per second of the window, so a gateway that keeps up gives exactly the
offered rate (no edge of a measuring window to blur it), and one that falls behind loses every
block that waited longer than a second from its figure (`late_blocks_by_second` says in which
seconds of the run they were created: a stall shows as one second). It is a rate of timely
commits, not of headroom: it cannot read above the offered rate, and a gateway slightly short of
it reads full until its backlog passes a second (the latency figures and the gateway's CPU show
how close it runs). `committed_readings_per_s` is the plain throughput beside it: readings of the
blocks committed during the same window, however late, per second. A block is lost when it
was sent and is not in the ledger at the end (chain heads read from the ledger after the gateway
stopped). Every chain is then verified (`verify_ledger`: signatures, links, heads and the
transparency log; `--verify-sample N` checks N chains instead). A block the gateway acknowledged
that the ledger does not hold, a refused block, or a chain that does not verify is a failure, not
a figure.

    python bench/fleet.py                         # 2,162 collectors x 60 s
    python bench/fleet.py --quick                 # 100 collectors x 10 s
    python bench/fleet.py --profile /tmp/fleet.txt --py-spy /path/to/py-spy
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import math
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import nacl.signing
import yaml
from common import cpu_seconds, emit, free_port, machine_busy_seconds, peak_rss_mib, result

from collector.config import GrpcUplinkConfig  # found after common put bench/ last on sys.path
from gateway.ingest import receipt_size
from gateway.ledger import SqliteLedger
from gateway.runtime import enroll_collector
from gateway.verifier import verify_ledger
from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import GENESIS_HASH, BlockDraft, ReadingValue, Signer, block_hash, encode_block

SCENARIO = "fleet"
RESULTS = Path(__file__).resolve().parent / "results"
METHOD = "/stackline.v1.Ingest/Stream"
BASE_UNIX_MS = 1_700_000_000_000  # window_start of every collector's first second
CACHE_MAGIC = b"SLFLEET"
CACHE_FORMAT = 1  # bump when the blocks' contents change
CONFIG_DIGEST = hashlib.sha256(b"stackline bench fleet: point table").digest()
# a real collector's uplink defaults: how many batches wait for an ack, and how big one may be
MAX_BATCHES_IN_FLIGHT: int = GrpcUplinkConfig.model_fields["max_batches_in_flight"].default
MAX_BLOCKS_PER_BATCH: int = GrpcUplinkConfig.model_fields["max_blocks_per_batch"].default
HELLO_TIMEOUT_S = 60.0
RECONNECT_S = 0.5
CONNECTS_AT_ONCE = 200  # hellos in flight while the fleet connects


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the blocks, signed before the run ---------------------------------------------------------


def collector_id(index: int) -> str:
    return f"fleet-{index:04d}"


def signing_key(cid: str) -> nacl.signing.SigningKey:
    """The collector's key, from a fixed seed: the cached blocks and the enrolment agree."""
    return nacl.signing.SigningKey(hashlib.sha256(b"stackline bench fleet/" + cid.encode()).digest())


def phase_ms(index: int, collectors: int) -> int:
    """Where in each second a collector's block is created: the fleet spread over the second."""
    return index * 1000 // collectors


def sign_chain(index: int, collectors: int, seconds: int, readings: int) -> list[bytes]:
    """One collector's chain: a serialized SignedBlock per second."""
    cid = collector_id(index)
    signer = Signer(signing_key=signing_key(cid))
    out: list[bytes] = []
    previous = GENESIS_HASH
    for sequence in range(1, seconds + 1):
        start = BASE_UNIX_MS + (sequence - 1) * 1000 + phase_ms(index, collectors)
        values = [ReadingValue(f"dev{n // 10}/p{n % 10}", start,
                               400.0 + n + ((sequence * 7 + index) % 13) / 10, pb.QUALITY_NORMAL,
                               (16968, (sequence + n) & 0xFFFF)) for n in range(readings)]
        payload = encode_block(BlockDraft(cid, start, start + 1000, values, CONFIG_DIGEST),
                               sequence=sequence, previous_hash=previous)
        out.append(signer.envelope(payload).SerializeToString())
        previous = block_hash(payload)
    return out


def _sign_range(job: tuple[int, int, int, int, int]) -> list[list[bytes]]:
    first, last, collectors, seconds, readings = job
    return [sign_chain(i, collectors, seconds, readings) for i in range(first, last)]


def cache_path(collectors: int, seconds: int, readings: int) -> Path:
    return RESULTS / f"fleet-blocks-c{collectors}-s{seconds}-r{readings}-v{CACHE_FORMAT}.bin"


def _read_cache(path: Path, collectors: int, seconds: int, readings: int) -> list[list[bytes]] | None:
    """The cached chains, or None when the file is missing or was made for other parameters."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    header = struct.Struct(">7sBIII")
    if len(data) < header.size or header.unpack_from(data) != (
            CACHE_MAGIC, CACHE_FORMAT, collectors, seconds, readings):
        return None
    view, offset = memoryview(data), header.size
    chains = []
    for _ in range(collectors):
        chain = []
        for _ in range(seconds):
            (size,) = struct.unpack_from(">I", data, offset)
            chain.append(bytes(view[offset + 4:offset + 4 + size]))
            offset += 4 + size
        chains.append(chain)
    return chains if offset == len(data) else None


def presign(collectors: int, seconds: int, readings: int) -> tuple[list[list[bytes]], float, bool]:
    """Every collector's chain, from the cache or signed now; seconds spent, whether cached."""
    started = time.monotonic()
    path = cache_path(collectors, seconds, readings)
    chains = _read_cache(path, collectors, seconds, readings)
    if chains is not None:
        say(f"pre-signed blocks: {path.name} (cached)")
        return chains, time.monotonic() - started, True
    say(f"signing {collectors:,} x {seconds} blocks of {readings} readings in a process pool...")
    workers = os.cpu_count() or 1
    step = max(1, math.ceil(collectors / (workers * 8)))
    jobs = [(first, min(first + step, collectors), collectors, seconds, readings)
            for first in range(0, collectors, step)]
    chains = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for part in pool.map(_sign_range, jobs):
            chains.extend(part)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with partial.open("wb") as out:
        out.write(struct.pack(">7sBIII", CACHE_MAGIC, CACHE_FORMAT, collectors, seconds, readings))
        for chain in chains:
            for envelope in chain:
                out.write(struct.pack(">I", len(envelope)))
                out.write(envelope)
    partial.replace(path)
    elapsed = time.monotonic() - started
    say(f"signed {collectors * seconds:,} blocks in {elapsed:.1f} s; kept in {path}")
    return chains, elapsed, False


# --- the wire, by hand: a batch request is the pre-signed envelopes and a tree size ----------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def batch_request(envelopes: Sequence[bytes], receipt_tree_size: int) -> bytes:
    """IngestRequest{batch: Batch{blocks, receipt_tree_size}} from serialized envelopes."""
    body = b"".join(b"\x0a" + _varint(len(e)) + e for e in envelopes)
    if receipt_tree_size:
        body += b"\x10" + _varint(receipt_tree_size)
    return b"\x12" + _varint(len(body)) + body


def _check_batch_request(envelope: bytes) -> None:
    expected = pb.IngestRequest(batch=pb.Batch(blocks=[pb.SignedBlock.FromString(envelope)] * 2,
                                               receipt_tree_size=300)).SerializeToString()
    if batch_request([envelope, envelope], 300) != expected:
        raise RuntimeError("bench/fleet.py encodes a batch differently from protobuf")


# --- a simulated collector ------------------------------------------------------------------------


class StreamFailed(Exception):
    """The collector's stream ended or failed; it reconnects and resumes from the gateway's ack."""


class Refused(Exception):
    """The gateway refused a block or the collector: the scenario fails."""


@dataclass
class SimulatedCollector:
    """One collector's chain, its schedule, and what happened to each block."""

    index: int
    cid: str
    key_id: str
    phase_s: float
    blocks: list[bytes]
    acked: int = 0
    sent: int = 0  # blocks written to the current stream
    sent_ever: int = 0
    ack_at: list[float] = field(default_factory=list)  # loop time of each block's ack
    wake_lateness_s: list[float] = field(default_factory=list)
    receipt_tree_size: int = 0
    receipts: int = 0
    batches: int = 0
    stream_failures: int = 0
    last_error: str = ""

    def __post_init__(self) -> None:
        self.ack_at = [math.nan] * len(self.blocks)

    def due_s(self, position: int) -> float:
        """Creation time of the block at `position` (0-based), in seconds after t0."""
        return position + self.phase_s

    def due_count(self, elapsed_s: float) -> int:
        """How many of the collector's blocks exist `elapsed_s` after t0."""
        if elapsed_s < self.phase_s:
            return 0
        return min(len(self.blocks), int(elapsed_s - self.phase_s) + 1)

    def hello(self) -> bytes:
        return pb.IngestRequest(hello=pb.Hello(
            collector_id=self.cid, key_id=self.key_id, software_version="stackline-bench-fleet",
            receipt_tree_size=self.receipt_tree_size)).SerializeToString()

    def _take_ack(self, raw: object) -> None:
        if raw is grpc.aio.EOF or not isinstance(raw, bytes):
            raise StreamFailed("the gateway closed the stream")
        response = pb.IngestResponse.FromString(raw)
        if response.HasField("error"):
            raise Refused(f"{self.cid}: {response.error.reason}: {response.error.detail}")
        ack = response.ack
        if ack.rejections:
            first = ack.rejections[0]
            raise Refused(f"{self.cid}: block {first.sequence} refused: {first.reason}: "
                          f"{first.detail}")
        now = asyncio.get_running_loop().time()
        through = min(ack.stored_through_sequence, len(self.blocks))
        for position in range(self.acked, through):
            self.ack_at[position] = now
        self.acked = max(self.acked, through)
        if ack.HasField("receipt"):
            self.receipts += 1
            self.receipt_tree_size = max(self.receipt_tree_size, receipt_size(ack.receipt))

    async def connect(self, channel: grpc.aio.Channel) -> Any:
        """Open the stream and say hello; the call, ready to send from the gateway's ack."""
        call = channel.stream_stream(METHOD)()
        try:
            await call.write(self.hello())
            async with asyncio.timeout(HELLO_TIMEOUT_S):
                self._take_ack(await call.read())
        except grpc.aio.AioRpcError as exc:
            call.cancel()
            raise StreamFailed(f"gRPC {exc.code().name}: {exc.details()}") from exc
        except TimeoutError as exc:
            call.cancel()
            raise StreamFailed("no answer to the hello") from exc
        except asyncio.InvalidStateError as exc:
            call.cancel()
            raise StreamFailed("the stream ended during the hello") from exc
        self.sent = self.acked  # everything not acknowledged goes again
        return call

    async def run(self, channel: grpc.aio.Channel, call: Any, t0: float) -> None:
        """Send the chain on schedule until all of it is acknowledged, reconnecting on failure."""
        while True:
            try:
                if call is None:
                    call = await self.connect(channel)
                await self._session(call, t0)
            except StreamFailed as exc:
                if call is not None:
                    call.cancel()
                call = None
                self.stream_failures += 1
                self.last_error = str(exc)
                await asyncio.sleep(RECONNECT_S)
            else:
                call.cancel()
                return

    async def _session(self, call: Any, t0: float) -> None:
        slots = asyncio.Semaphore(MAX_BATCHES_IN_FLIGHT)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._send(call, t0, slots))
                group.create_task(self._receive(call, slots))
        except* grpc.aio.AioRpcError as errors:
            first = errors.exceptions[0]
            assert isinstance(first, grpc.aio.AioRpcError)
            raise StreamFailed(f"gRPC {first.code().name}: {first.details()}") from None
        except* (StreamFailed, asyncio.InvalidStateError) as errors:
            raise StreamFailed(str(errors.exceptions[0]) or "the stream ended") from None

    async def _send(self, call: Any, t0: float, slots: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        total = len(self.blocks)
        while self.sent < total:
            now = loop.time()
            if self.sent >= self.due_count(now - t0):
                due = t0 + self.due_s(self.sent)
                await asyncio.sleep(due - now)
                self.wake_lateness_s.append(loop.time() - due)
                continue
            await slots.acquire()
            end = min(self.due_count(loop.time() - t0), self.sent + MAX_BLOCKS_PER_BATCH)
            request = batch_request(self.blocks[self.sent:end], self.receipt_tree_size)
            self.sent = end
            self.sent_ever = max(self.sent_ever, end)
            self.batches += 1
            await call.write(request)

    async def _receive(self, call: Any, slots: asyncio.Semaphore) -> None:
        while self.acked < len(self.blocks):
            self._take_ack(await call.read())
            slots.release()


# --- the gateway process -------------------------------------------------------------------------


def vm_kib(pid: int, name: str) -> int:
    """A `VmRSS` (or other `Vm*`) line of /proc/PID/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU of each thread of a process, by thread id (/proc/PID/task/TID/stat;
    /proc/TID/stat would be the whole process's)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(task.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def thread_shares(pid: int, before: dict[int, float], after: dict[int, float],
                  wall_s: float) -> dict[str, float]:
    """CPU % (of one core) of the main thread (the event loop), of the busiest other thread (the
    ledger's worker, when the ledger is what works), and of all the rest."""
    used = {tid: cpu - before.get(tid, 0.0) for tid, cpu in after.items()}
    main = used.pop(pid, 0.0)
    busiest = max(used.values(), default=0.0)
    rest = sum(used.values()) - busiest
    return {"gateway_main_thread_cpu_percent": round(100 * main / wall_s, 1),
            "gateway_busiest_other_thread_cpu_percent": round(100 * busiest / wall_s, 1),
            "gateway_other_threads_cpu_percent": round(100 * rest / wall_s, 1)}


async def enrol(ledger_path: Path, collectors: list[SimulatedCollector]) -> None:
    ledger = SqliteLedger(path=ledger_path)
    await ledger.open()
    try:
        for collector in collectors:
            public_key = bytes(signing_key(collector.cid).verify_key)
            key_id = await enroll_collector(ledger, collector_id=collector.cid,
                                            public_key=public_key)
            if key_id != collector.key_id:
                raise RuntimeError(f"{collector.cid}: enrolled key {key_id}, signed with "
                                   f"{collector.key_id}")
    finally:
        await ledger.close()


def start_gateway(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    config = tmp / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "gateway": {"id": "bench-fleet"},
        "listen": {"grpc": f"127.0.0.1:{port}"},
        "ledger": {"path": "ledger.sqlite"},
    }))
    log = (tmp / "gateway.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "proto.cli", "gateway", "run", "--config",
                             str(config)], stdout=log, stderr=subprocess.STDOUT)


def gateway_log_tail(tmp: Path, lines: int = 15) -> str:
    try:
        return "\n".join((tmp / "gateway.log").read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- measuring ----------------------------------------------------------------------------------


@dataclass
class Sample:
    """One second of the run as the monitor saw it."""

    elapsed_s: float
    acked_blocks: int
    gateway_cpu_s: float
    loadgen_cpu_s: float
    machine_busy_s: float
    gateway_rss_kib: int


async def monitor(gateway_pid: int, collectors: list[SimulatedCollector], t0: float,
                  samples: list[Sample], every_s: float = 1.0, say_every: int = 5) -> None:
    """Sample the gateway's CPU and memory each second; progress on stderr."""
    loop = asyncio.get_running_loop()
    me = os.getpid()
    tick = 0
    while True:
        await asyncio.sleep(max(0.0, t0 + tick * every_s - loop.time()))
        acked = sum(c.acked for c in collectors)
        sample = Sample(loop.time() - t0, acked, cpu_seconds(gateway_pid), cpu_seconds(me),
                        machine_busy_seconds(), vm_kib(gateway_pid, "VmRSS"))
        if samples and tick % say_every == 0:
            before = samples[-say_every] if len(samples) >= say_every else samples[0]
            span = sample.elapsed_s - before.elapsed_s
            gateway_s = sample.gateway_cpu_s - before.gateway_cpu_s
            loadgen_s = sample.loadgen_cpu_s - before.loadgen_cpu_s
            others_s = sample.machine_busy_s - before.machine_busy_s - gateway_s - loadgen_s
            say(f"  t={sample.elapsed_s:5.1f} s  acked {acked:>8,} blocks  "
                f"{(acked - before.acked_blocks) / span:5.0f} blocks/s  gateway "
                f"{100 * gateway_s / span:3.0f} % CPU {sample.gateway_rss_kib / 1024:4.0f} MiB  "
                f"load {100 * loadgen_s / span:3.0f} %  others {100 * others_s / span:3.0f} %")
        samples.append(sample)
        tick += 1


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def profile_summary(raw: Path, top: int = 8) -> str:
    """Where each thread of the gateway spent its wall time, from py-spy's raw output recorded
    with --threads --idle (so a thread's samples are its whole wall time, waiting included): the
    lines it was on most, and the gateway's functions that took most in total."""
    own: dict[str, Counter[str]] = {}
    total: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        thread, *frames = stack.split(";")
        threads[thread] += count
        if frames:
            own.setdefault(thread, Counter())[_frame(frames[-1], line=True)] += count
        for frame in {_frame(f) for f in frames if _ours(f)}:
            total[frame] += count
    out = ["py-spy, per thread (% of that thread's wall time):"]
    busiest = max(threads.values(), default=1)
    for thread, samples in threads.most_common():
        if samples < busiest / 20 or thread not in own:
            continue
        out.append(f"  {thread}: {samples} samples")
        out += [f"    {100 * n / samples:5.1f} %  {name}" for name, n in own[thread].most_common(top)]
    out.append(f"Stackline's functions, in total (% of one thread's wall time, {busiest} samples):")
    out += [f"  {100 * n / busiest:5.1f} %  {name}" for name, n in total.most_common(top * 3)]
    return "\n".join(out)


def _ours(frame: str) -> bool:
    """A frame of the gateway's own code (not its entry point)."""
    return (any(f"{before}{package}/" in frame for before in "(/" for package in ("gateway", "proto"))
            and "cli.py" not in frame)


def _frame(frame: str, *, line: bool = False) -> str:
    """`function (path/to/file.py:123)` -> `function (to/file.py)` (with `:123` if `line`)."""
    name, _, where = frame.partition(" (")
    path, _, number = where.rstrip(")").rpartition(":")
    if not path:
        return frame
    short = "/".join(Path(path).parts[-2:])
    return f"{name} ({short}:{number})" if line else f"{name} ({short})"


# --- the run ------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    parameters = {"collectors": args.collectors, "seconds": args.seconds,
                  "readings_per_block": args.readings, "ledger": "sqlite",
                  "channels": args.channels}
    chains, presign_s, cached = presign(args.collectors, args.seconds, args.readings)
    _check_batch_request(chains[0][0])
    collectors = []
    for index, chain in enumerate(chains):
        cid = collector_id(index)
        key_id = Signer(signing_key=signing_key(cid)).key_id
        collectors.append(SimulatedCollector(index, cid, key_id,
                                             phase_ms(index, args.collectors) / 1000, chain))
    del chains
    tmp = Path(tempfile.mkdtemp(prefix="stackline-fleet-"))
    ledger_path = tmp / "ledger.sqlite"
    say(f"enrolling {len(collectors):,} collectors in {ledger_path}...")
    started = time.monotonic()
    await enrol(ledger_path, collectors)
    say(f"  enrolled in {time.monotonic() - started:.1f} s")
    port = free_port()
    gateway = start_gateway(tmp, port)
    profilers: list[subprocess.Popen[bytes]] = []
    try:
        outcome = await _drive(args, collectors, gateway, port, tmp, profilers)
        if isinstance(outcome, str):
            return result(SCENARIO, parameters, None, outcome)
        figures = outcome
        figures["presign_s"] = round(presign_s, 1)
        figures["presign_cached"] = cached
        # the gateway stops before the ledger is read: what it holds then is what it kept
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(60)
        failure = await check_ledger(args, ledger_path, collectors, figures)
        return result(SCENARIO, parameters, figures, failure)
    finally:
        if gateway.poll() is None:
            gateway.send_signal(signal.SIGTERM)
            try:
                gateway.wait(30)
            except subprocess.TimeoutExpired:
                gateway.kill()
        for profiler in profilers:
            try:
                profiler.wait(60)
            except subprocess.TimeoutExpired:
                profiler.kill()
        if profilers and args.profile is not None and args.profile.exists():
            say(profile_summary(args.profile))
        if args.keep:
            say(f"kept the ledger and the gateway's log in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


async def _drive(args: argparse.Namespace, collectors: list[SimulatedCollector],
                 gateway: subprocess.Popen[bytes], port: int, tmp: Path,
                 profilers: list[subprocess.Popen[bytes]]) -> str | dict[str, Any]:
    """Connect the fleet, run it, and measure; a failure text, or the figures. A profiler of
    the gateway (`--profile`) goes into `profilers`, still writing its output."""
    target = f"127.0.0.1:{port}"
    options = [("grpc.use_local_subchannel_pool", 1),  # one TCP connection per channel
               ("grpc.max_send_message_length", 16 * 1024 * 1024),
               ("grpc.max_receive_message_length", 16 * 1024 * 1024)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(args.channels)]
    try:
        try:
            async with asyncio.timeout(60):
                while True:
                    if gateway.poll() is not None:
                        return (f"the gateway exited with status {gateway.returncode}:\n"
                                f"{gateway_log_tail(tmp)}")
                    try:
                        async with asyncio.timeout(1):
                            await channels[0].channel_ready()
                        break
                    except TimeoutError:
                        continue
        except TimeoutError:
            return f"the gateway did not listen on {target} within 60 s:\n{gateway_log_tail(tmp)}"
        say(f"gateway pid {gateway.pid} listening on {target}; connecting {len(collectors):,} "
            f"streams over {len(channels)} connection(s)...")
        started = time.monotonic()
        gate = asyncio.Semaphore(CONNECTS_AT_ONCE)

        async def connect(collector: SimulatedCollector) -> Any:
            async with gate:
                return await collector.connect(channels[collector.index % len(channels)])
        try:
            calls = await asyncio.gather(*(connect(c) for c in collectors))
        except (StreamFailed, Refused) as exc:
            return f"a collector could not connect: {exc}\n{gateway_log_tail(tmp)}"
        say(f"  {len(calls):,} streams open in {time.monotonic() - started:.1f} s; running "
            f"{args.seconds} s of {len(collectors) * args.readings:,} readings/s...")
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.5
        if args.profile is not None:
            profilers.append(subprocess.Popen(  # noqa: ASYNC220 - returns at once; started before t0
                [args.py_spy, "record", "-p", str(gateway.pid), "--nonblocking", "--threads",
                 "--idle", "--format", "raw", "--rate", "50", "--duration", str(args.seconds + 2), "-o",
                 str(args.profile)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        gateway_cpu_before = cpu_seconds(gateway.pid)
        threads_before = thread_cpu_seconds(gateway.pid)
        loadgen_cpu_before = cpu_seconds(os.getpid())
        machine_busy_before = machine_busy_seconds()
        samples: list[Sample] = []
        watcher = asyncio.create_task(monitor(gateway.pid, collectors, t0, samples),
                                      name="monitor")
        deadline_s = args.seconds + args.drain_s
        timed_out = False
        refusal = None
        try:
            async with asyncio.timeout(deadline_s + 0.5), asyncio.TaskGroup() as group:
                for collector, call in zip(collectors, calls, strict=True):
                    group.create_task(collector.run(channels[collector.index % len(channels)],
                                                    call, t0))
        except* TimeoutError:
            timed_out = True
        except* Refused as refusals:
            refusal = f"the gateway refused: {refusals.exceptions[0]}"
        finished = loop.time()
        gateway_cpu_s = cpu_seconds(gateway.pid) - gateway_cpu_before
        threads = thread_shares(gateway.pid, threads_before, thread_cpu_seconds(gateway.pid),
                                finished - t0)
        loadgen_cpu_s = cpu_seconds(os.getpid()) - loadgen_cpu_before
        others_cpu_s = machine_busy_seconds() - machine_busy_before - gateway_cpu_s - loadgen_cpu_s
        peak_rss = peak_rss_mib(gateway.pid)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    finally:
        for channel in channels:
            await channel.close()
    if refusal is not None:
        return refusal
    figures = measure(args, collectors, t0, finished, samples, timed_out)
    figures.update({
        "gateway_cpu_s": round(gateway_cpu_s, 2),
        "gateway_cpu_percent": round(100 * gateway_cpu_s / (finished - t0), 1),
        **threads,
        "gateway_peak_rss_mib": round(peak_rss, 1),
        "loadgen_cpu_s": round(loadgen_cpu_s, 2),
        "loadgen_cpu_percent": round(100 * loadgen_cpu_s / (finished - t0), 1),
        # the machine is shared: CPU that other processes took during the run (py-spy included)
        "others_cpu_percent": round(100 * others_cpu_s / (finished - t0), 1),
    })
    if figures["others_cpu_percent"] > 10:
        say(f"note: other processes took {figures['others_cpu_percent']} % of a core during the "
            "run; the figures are for a busy machine")
    return figures


STEADY_FROM_S = 10
"""The sustained rate counts blocks created from this second on (a third of a shorter run)."""
IN_TIME_S = 1.0
"""A block counts towards the sustained rate when committed within this long of its creation."""


def steady_from(seconds: int) -> int:
    """The whole second the steady window starts at, for a run of `seconds`."""
    return min(STEADY_FROM_S, seconds // 3)


def measure(args: argparse.Namespace, collectors: list[SimulatedCollector], t0: float,
            finished: float, samples: list[Sample], timed_out: bool) -> dict[str, Any]:
    """Rate, latency and the load generator's timeliness from what the collectors recorded."""
    latencies: list[float] = []
    window_s = min(10.0, args.seconds / 3)
    steady_from_s = steady_from(args.seconds)
    in_time = 0  # blocks created in the steady window, committed within IN_TIME_S
    committed_in_window = 0  # blocks whose commit fell in the steady window, however late
    late_seconds: dict[int, int] = {}  # second of creation -> blocks committed later than IN_TIME_S
    start_window: list[float] = []
    end_window: list[float] = []
    for collector in collectors:
        for position, acked_at in enumerate(collector.ack_at):
            if math.isnan(acked_at):
                continue
            due = collector.due_s(position)
            latency = acked_at - (t0 + due)
            latencies.append(latency)
            if steady_from_s <= acked_at - t0 < args.seconds:
                committed_in_window += 1
            if latency > IN_TIME_S:
                late_seconds[int(due)] = late_seconds.get(int(due), 0) + 1
            elif due >= steady_from_s:
                in_time += 1
            if due < window_s:
                start_window.append(latency)
            elif due >= args.seconds - window_s:
                end_window.append(latency)
    latencies.sort()
    start_window.sort()
    end_window.sort()
    acked = len(latencies)
    offered_blocks_per_s = len(collectors)
    steady_s = args.seconds - steady_from_s
    lateness = sorted(x for c in collectors for x in c.wake_lateness_s)
    per_second = [(b.gateway_cpu_s - a.gateway_cpu_s) / (b.elapsed_s - a.elapsed_s)
                  for a, b in itertools.pairwise(samples) if b.elapsed_s > a.elapsed_s]
    blocks = sum(len(c.blocks) for c in collectors)
    return {
        "sustained_readings_per_s": round(in_time * args.readings / steady_s),
        "offered_readings_per_s": offered_blocks_per_s * args.readings,
        # what the gateway committed per second in the same window, late or not: its throughput
        # when it falls behind (and about the offered rate when it keeps up)
        "committed_readings_per_s": round(committed_in_window * args.readings / steady_s),
        "steady_window_s": [steady_from_s, args.seconds],
        "steady_blocks_late_or_lost": (offered_blocks_per_s * steady_s) - in_time,
        "late_blocks_by_second": {str(k): v for k, v in sorted(late_seconds.items())},
        "wall_s": round(finished - t0, 2),
        "blocks_offered": blocks,
        "blocks_sent": sum(c.sent_ever for c in collectors),
        "blocks_acked": acked,
        "timed_out": timed_out,
        "p50_latency_s": round(percentile(latencies, 0.50), 4),
        "p99_latency_s": round(percentile(latencies, 0.99), 4),
        "max_latency_s": round(latencies[-1], 4) if latencies else None,
        "p50_latency_start_s": round(percentile(start_window, 0.50), 4),
        "p50_latency_end_s": round(percentile(end_window, 0.50), 4),
        "latency_window_s": round(window_s, 1),
        "batches": sum(c.batches for c in collectors),
        "receipts": sum(c.receipts for c in collectors),
        "stream_failures": sum(c.stream_failures for c in collectors),
        "gateway_cpu_percent_peak_1s": round(100 * max(per_second), 1) if per_second else None,
        "loadgen_wake_lateness_p99_s": round(percentile(lateness, 0.99), 4),
    }


async def check_ledger(args: argparse.Namespace, ledger_path: Path,
                       collectors: list[SimulatedCollector], figures: dict[str, Any]) -> str | None:
    """Count what the ledger holds against what was sent and acknowledged, and verify chains;
    a failure text when the ledger contradicts an ack or a chain does not verify."""
    say("checking the ledger...")
    started = time.monotonic()
    ledger = SqliteLedger(path=ledger_path, read_only=True)
    try:
        heads = await ledger.heads()
        held = {c.cid: heads[c.cid].sequence if c.cid in heads else 0 for c in collectors}
        contradicted = [c for c in collectors if held[c.cid] < c.acked]
        figures["blocks_in_ledger"] = sum(held.values())
        figures["lost_blocks"] = sum(max(0, c.sent_ever - held[c.cid]) for c in collectors)
        if contradicted:
            c = contradicted[0]
            return (f"{len(contradicted)} collector(s) were acknowledged blocks the ledger does not "
                    f"hold: {c.cid} acked through {c.acked}, chain head {held[c.cid]}")
        if args.verify_sample:
            chosen = random.Random(8).sample(collectors, min(args.verify_sample, len(collectors)))
            verified = 0
            for collector in chosen:
                report = await verify_ledger(ledger, collector_id=collector.cid)
                audit = report.collectors.get(collector.cid)
                if not report.ok or (audit.blocks if audit else 0) != held[collector.cid]:
                    return f"chain {collector.cid} does not verify: {report.to_json()['findings'][:3]}"
                verified += audit.blocks if audit else 0
            figures.update(verified_chains=len(chosen), verified_blocks=verified,
                           verified_log=False)
        else:
            report = await verify_ledger(ledger)
            if not report.ok:
                log_findings = report.log.findings[:3] if report.log else []
                return (f"the ledger does not verify: {report.to_json()['findings'][:3]} "
                        f"{log_findings}")
            if report.total("blocks") != figures["blocks_in_ledger"]:
                return (f"the chains hold {report.total('blocks')} blocks, the heads say "
                        f"{figures['blocks_in_ledger']}")
            figures.update(verified_chains=len(report.collectors),
                           verified_blocks=report.total("blocks"), verified_log=True)
    finally:
        await ledger.close()
    say(f"  checked in {time.monotonic() - started:.1f} s: {figures['verified_chains']} chains, "
        f"{figures['verified_blocks']:,} blocks" + (", the log" if figures["verified_log"] else ""))
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 collectors x 10 s")
    parser.add_argument("--collectors", type=int, default=2162)
    parser.add_argument("--seconds", type=int, default=60, help="blocks per collector, one a second")
    parser.add_argument("--readings", type=int, default=40, help="readings per block")
    parser.add_argument("--channels", type=int, default=8, help="gRPC connections for the fleet")
    parser.add_argument("--drain-s", type=float, default=60.0,
                        help="how long after the last block is created to wait for its ack")
    parser.add_argument("--verify-sample", type=int, default=0,
                        help="verify this many chains (0: every chain and the log)")
    parser.add_argument("--profile", type=Path, help="py-spy raw output of the gateway during the run")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy",
                        help="the py-spy binary (for --profile)")
    parser.add_argument("--keep", action="store_true", help="keep the ledger and the gateway's log")
    args = parser.parse_args()
    if args.seconds < 3:
        parser.error("--seconds must be at least 3 (the steady state starts a third of the way in)")
    if args.quick:
        args.collectors, args.seconds, args.channels = 100, 10, 2
        args.drain_s = min(args.drain_s, 20.0)
    return emit(asyncio.run(run(args)))


if __name__ == "__main__":
    sys.exit(main())
