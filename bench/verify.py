"""Blocks per second checked by `stackline verify` on a large ledger.

The ledger (SQLite) holds `--blocks` signed blocks spread over `--collectors` collectors, each
chain a configuration block followed by blocks of 40 readings, stored through the ledger's own
`append` with every collector's key enrolled, integrated into the transparency log as the gateway
does, with a signed checkpoint about every 60 blocks of each collector (one a minute of one-second
blocks). It is built once and kept in bench/results/ (a second run measures at once; delete
bench/results/verify-*.sqlite after a schema change).

`stackline verify --ledger PATH --json` then runs as a process of its own, exactly as an auditor
would run it: every block's hash, Ed25519 signature and chain link, every log leaf and interior
node recomputed, every checkpoint's root and signature. Its wall time and its user + system CPU
time (getrusage of the children) are measured, and its verdict must be ok with every block
counted and logged, or a failure is reported instead of a figure. The same command on an empty
ledger shows the fixed cost (interpreter start and imports), and one core's Ed25519 verify rate
(PyNaCl, 1.5 KB messages), measured in the same run, is the bound to compare with. Prints one
JSON object.

    python bench/verify.py [--blocks 100000] [--collectors 10]
    python bench/verify.py --quick     # 5,000 blocks of 5 collectors
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nacl.signing
from common import emit, public_key_of, result, signed_backlog

from gateway.ledger import CollectorKey, SqliteLedger, VerifiedBlock
from gateway.translog.log import TransparencyLog
from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import SIGNATURE_CONTEXT, block_hash

READINGS = 40
ORIGIN = "bench.stackline/verify"
CHECKPOINT_EVERY = 60  # blocks of each collector between two checkpoints (a minute of blocks)
RESULTS = Path(__file__).resolve().parent / "results"
LEDGER_VERSION = 1  # of how the kept ledger is built: a change here builds a new one


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _seed(collector: int) -> bytes:
    return hashlib.sha256(f"bench-verify-{collector}".encode()).digest()


def _verified(envelope: bytes) -> VerifiedBlock:
    """The ledger's row for one of our own envelopes (signed just now: nothing to check)."""
    signed = pb.SignedBlock.FromString(envelope)
    block = pb.Block.FromString(signed.payload)
    return VerifiedBlock(block.collector_id, block.sequence, block.previous_hash,
                         block_hash(signed.payload), signed.payload, signed.signature,
                         signed.key_id, block.window_start_unix_ms, block.window_end_unix_ms,
                         len(block.readings), block.kind, b"")


async def build(path: Path, blocks: int, collectors: int) -> dict[str, Any]:
    """Sign the chains (in parallel, one collector per task), enroll the keys, store them round
    robin through `append`, integrate the log and publish checkpoints as the gateway would."""
    started, cpu = time.monotonic(), time.process_time() + _children_cpu_s()
    per_collector = blocks // collectors
    ids = [f"bench-verify-c{c:03d}" for c in range(collectors)]
    with concurrent.futures.ProcessPoolExecutor() as pool:
        chains = list(pool.map(signed_backlog, ids, map(_seed, range(collectors)),
                               [per_collector] * collectors, [READINGS] * collectors))
    _progress(f"signed {per_collector * collectors:,} blocks in {time.monotonic() - started:.0f} s")
    ledger = SqliteLedger(path=path)
    try:
        log = TransparencyLog(ledger=ledger, origin=ORIGIN,
                              signing_key=nacl.signing.SigningKey(b"\x05" * 32))
        await log.start()
        for c, collector_id in enumerate(ids):
            public_key = public_key_of(_seed(c))
            key_id = pb.SignedBlock.FromString(chains[c][0]).key_id
            await ledger.enroll(CollectorKey(collector_id, key_id, public_key, 0))
        checkpoints = 0
        for first in range(0, per_collector, CHECKPOINT_EVERY):
            for collector_id, chain in zip(ids, chains, strict=True):
                batch = [_verified(e) for e in chain[first:first + CHECKPOINT_EVERY]]
                appended = await ledger.append(collector_id, batch, transport="bench",
                                               peer="bench", received_unix_ms=0)
                if appended.refused is not None:
                    raise RuntimeError(f"the ledger refused {collector_id}: {appended.refused}")
            await log.publish()
            checkpoints += 1
            done = min(first + CHECKPOINT_EVERY, per_collector) * collectors
            if checkpoints % 20 == 0 or done == per_collector * collectors:
                _progress(f"stored, logged and checkpointed {done:,} of {blocks:,} blocks")
    finally:
        await ledger.close()
    return {"build_s": round(time.monotonic() - started, 1),
            "build_cpu_s": round(time.process_time() + _children_cpu_s() - cpu, 1),
            "checkpoints_published": checkpoints}


def ledger_for(blocks: int, collectors: int) -> tuple[Path, dict[str, Any] | None]:
    """The kept ledger of this size, built first when it is not there; how it was built (None
    when it was there already)."""
    path = RESULTS / f"verify-{blocks}-{collectors}-v{LEDGER_VERSION}.sqlite"
    if path.exists():
        _progress(f"using the ledger built before: {path}")
        return path, None
    RESULTS.mkdir(parents=True, exist_ok=True)
    _progress(f"building a ledger of {blocks:,} blocks of {collectors} collectors in {path}")
    partial = path.with_name(path.name + ".partial")
    for stale in (partial, partial.with_name(partial.name + "-wal"),
                  partial.with_name(partial.name + "-shm")):
        stale.unlink(missing_ok=True)
    built = asyncio.run(build(partial, blocks, collectors))
    partial.rename(path)  # only a complete ledger is kept under the final name
    return path, built


def run_verify(ledger: Path) -> tuple[dict[str, Any], float, float]:
    """`stackline verify --ledger PATH --json` as its own process: its report, wall and CPU s."""
    cpu, wall = _children_cpu_s(), time.perf_counter()
    process = subprocess.run([sys.executable, "-m", "proto.cli", "verify", "--ledger",
                              str(ledger), "--json"], capture_output=True, text=True, check=False)
    wall_s, cpu_s = time.perf_counter() - wall, _children_cpu_s() - cpu
    try:
        report = json.loads(process.stdout)
    except json.JSONDecodeError:
        report = {"ok": False, "error": f"exit {process.returncode}: {process.stderr.strip()[-500:]}"}
    return report, wall_s, cpu_s


def ed25519_verifies_per_cpu_s(seconds: float = 1.0, size: int = 1536) -> float:
    """One core's rate of PyNaCl VerifyKey.verify on a `size`-byte message."""
    key = nacl.signing.SigningKey(b"\x09" * 32)
    message = SIGNATURE_CONTEXT + os.urandom(size - len(SIGNATURE_CONTEXT))
    signature = key.sign(message).signature
    verify = key.verify_key.verify
    count, started = 0, time.process_time()
    while (elapsed := time.process_time() - started) < seconds:
        for _ in range(200):
            verify(message, signature)
        count += 200
    return count / elapsed


def failure_of(report: dict[str, Any], blocks: int, collectors: int) -> str | None:
    """Why the verdict is not the expected one (None when it is)."""
    if "error" in report:
        return f"stackline verify did not report: {report['error']}"
    log = report.get("log") or {}
    problems = []
    if not report.get("ok"):
        findings = report.get("findings") or log.get("findings") or []
        problems.append(f"verdict not ok: {findings[:3]}")
    if report.get("blocks") != blocks or report.get("collectors") != collectors:
        problems.append(f"{report.get('blocks')} blocks of {report.get('collectors')} "
                        f"collectors checked, the ledger holds {blocks} of {collectors}")
    if (log.get("size") != blocks or log.get("blocks_not_yet_logged")
            or not log.get("checkpoints_checked")):
        problems.append(f"the log audit covered {log.get('size')} leaves (with "
                        f"{log.get('blocks_not_yet_logged')} blocks not yet logged) and "
                        f"{log.get('checkpoints_checked')} checkpoints")
    if report.get("warnings"):
        problems.append(f"warnings: {report['warnings'][:3]}")
    return "; ".join(problems) or None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=100_000,
                        help="blocks in the ledger, configuration blocks included")
    parser.add_argument("--collectors", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="5,000 blocks of 5 collectors")
    args = parser.parse_args()
    if args.quick:
        args.blocks, args.collectors = 5_000, 5
    blocks = args.blocks // args.collectors * args.collectors
    parameters = {"blocks": blocks, "collectors": args.collectors, "readings_per_block": READINGS,
                  "ledger": "sqlite"}
    try:
        path, built = ledger_for(blocks, args.collectors)
    except RuntimeError as exc:  # the ledger refused a block of ours
        return emit(result("verify", parameters, None, f"cannot build the ledger: {exc}"))
    with tempfile.TemporaryDirectory(prefix="stackline-bench-verify-") as folder:
        empty = Path(folder) / "empty.sqlite"
        asyncio.run(_empty_ledger(empty))
        _, empty_wall_s, empty_cpu_s = run_verify(empty)
    _progress(f"verifying {blocks:,} blocks with stackline verify")
    load_1m = os.getloadavg()[0]
    report, wall_s, cpu_s = run_verify(path)
    ed25519 = ed25519_verifies_per_cpu_s()
    payload_bytes = mean_payload_bytes(path)
    ed25519_at_payload = ed25519_verifies_per_cpu_s(size=payload_bytes)
    failure = failure_of(report, blocks, args.collectors)
    log = report.get("log") or {}
    _progress(f"{report.get('blocks')} blocks checked in {wall_s:.1f} s ({cpu_s:.1f} CPU-s); "
              f"verdict {'ok' if report.get('ok') else 'NOT ok'}; one core verifies "
              f"{ed25519:,.0f} Ed25519 signatures/s")
    return emit(result("verify", parameters, {
        "blocks_per_s": round(blocks / wall_s),
        "blocks_per_cpu_s": round(blocks / cpu_s),
        "wall_s": round(wall_s, 2),
        "cpu_s": round(cpu_s, 2),
        "empty_ledger_wall_s": round(empty_wall_s, 2),
        "empty_ledger_cpu_s": round(empty_cpu_s, 2),
        "blocks_per_cpu_s_after_start": round(blocks / max(cpu_s - empty_cpu_s, 1e-9)),
        "ed25519_verifies_per_cpu_s": round(ed25519),
        "share_of_ed25519_rate": round(blocks / cpu_s / ed25519, 3),
        "readings_checked": report.get("readings"),
        "mean_payload_bytes": payload_bytes,
        "ed25519_verifies_per_cpu_s_at_mean_payload": round(ed25519_at_payload),
        "log_leaves": log.get("size"),
        "log_nodes_checked": log.get("nodes_checked"),
        "log_checkpoints_checked": log.get("checkpoints_checked"),  # one a minute of blocks
        "ledger_mib": round(path.stat().st_size / 2**20, 1),
        "machine_load_1m": round(load_1m, 2),
        "build": built,
    }, failure))


async def _empty_ledger(path: Path) -> None:
    ledger = SqliteLedger(path=path)
    try:
        await TransparencyLog(ledger=ledger, origin=ORIGIN,
                              signing_key=nacl.signing.SigningKey(b"\x05" * 32)).start()
    finally:
        await ledger.close()


def mean_payload_bytes(path: Path) -> int:
    """Mean payload size of the stored blocks (an SQL aggregate, no decoding)."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        (mean,) = db.execute("SELECT AVG(LENGTH(payload)) FROM blocks").fetchone()
    return round(float(mean))


if __name__ == "__main__":
    sys.exit(main())
