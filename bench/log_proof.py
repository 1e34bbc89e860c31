"""Inclusion proofs from the gateway's transparency log on a ledger of a million blocks: gateway
CPU per proof.

Stores `--blocks` signed blocks (40 readings each, spread over `--collectors` collectors) in a
ledger (SQLite by default, PostgreSQL with `--postgres URL`), integrates them into the log (the
same `TransparencyLog` the gateway runs), publishes a checkpoint, then asks the log for inclusion
proofs of random blocks exactly as the verifier API does (`TransparencyLog.inclusion`: leaf index
lookup, stored nodes, right-edge hashing). Every proof is verified against the checkpoint's root;
one that does not verify is reported as a failure, not a figure. CPU is this process's user +
system time from the operating system (the SQLite worker thread included); with PostgreSQL, the
server's CPU is reported beside it, summed over every `postgres` process of this machine (so run
it on a quiet server). Prints one JSON object.

    python bench/log_proof.py [--blocks 1000000] [--proofs 5000] [--ledger PATH] [--postgres URL]
    python bench/log_proof.py --quick     # 20,000 blocks in a temporary ledger

The ledger is built once and kept at `--ledger` (default bench/results/log-proof-<N>.sqlite), so
a second run measures proofs at once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nacl.signing
from common import emit, postgres_cpu_seconds, result

from gateway.ledger import Ledger, PostgresLedger, SqliteLedger, VerifiedBlock
from gateway.translog.log import TransparencyLog
from gateway.translog.merkle import ProofError, leaf_hash, verify_inclusion
from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import GENESIS_HASH, BlockDraft, ReadingValue, Signer, block_hash, encode_block

READINGS = 40
ORIGIN = "bench.stackline/log"
BATCH = 1000


def _cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def _blocks(collector: str, signer: Signer, first: int, count: int,
            previous: bytes) -> tuple[list[VerifiedBlock], bytes]:
    out: list[VerifiedBlock] = []
    for sequence in range(first, first + count):
        start = 1_700_000_000_000 + sequence * 1000
        readings = [ReadingValue(f"bench/dev-{i // 10}/p{i}", start, float(i), pb.QUALITY_NORMAL)
                    for i in range(READINGS)]
        payload = encode_block(BlockDraft(collector, start, start + 1000, readings, b"\0" * 32),
                               sequence=sequence, previous_hash=previous)
        signature = signer.envelope(payload).signature
        digest = block_hash(payload)
        out.append(VerifiedBlock(collector, sequence, previous, digest, payload, signature,
                                 signer.key_id, start, start + 1000, READINGS,
                                 pb.BLOCK_KIND_READINGS, b""))
        previous = digest
    return out, previous


async def build(ledger: Ledger, blocks: int, collectors: int) -> float:
    """Store and integrate `blocks` blocks round-robin over the collectors; CPU seconds spent."""
    started = _cpu_s()
    signers = [Signer(signing_key=nacl.signing.SigningKey.generate()) for _ in range(collectors)]
    previous = [GENESIS_HASH] * collectors
    stored = 0
    per_collector = blocks // collectors
    for first in range(1, per_collector + 1, BATCH):
        count = min(BATCH, per_collector - first + 1)
        for c, signer in enumerate(signers):
            made, previous[c] = _blocks(f"bench-c{c}", signer, first, count, previous[c])
            await ledger.append(f"bench-c{c}", made, transport="bench", peer="bench",
                                received_unix_ms=0)
            stored += count
        await ledger.log_integrate(max_leaves=collectors * BATCH)
        print(f"\rstored and logged {stored:,} of {blocks:,} blocks", end="", file=sys.stderr)
    print(file=sys.stderr)
    return _cpu_s() - started


async def run(args: argparse.Namespace) -> dict[str, Any]:
    ledger: Ledger
    if args.postgres:
        ledger = PostgresLedger(url=args.postgres)
        where = "postgresql"
    else:
        if args.quick and not args.ledger:
            args.ledger = str(Path(tempfile.mkdtemp(prefix="log-proof-")) / "ledger.sqlite")
        path = Path(args.ledger or f"bench/results/log-proof-{args.blocks}.sqlite")
        path.parent.mkdir(parents=True, exist_ok=True)
        ledger = SqliteLedger(path=path)
        where = "sqlite"
    try:
        log = TransparencyLog(ledger=ledger, origin=ORIGIN,
                              signing_key=nacl.signing.SigningKey(b"\x07" * 32))
        await log.start()
        build_cpu_s = None
        if log.size < args.blocks:
            build_cpu_s = await build(ledger, args.blocks - log.size, args.collectors)
        checkpoint = await log.publish()
        size = checkpoint.tree_size
        rng = random.Random(args.seed)
        per_collector = size // args.collectors
        wanted = [(f"bench-c{rng.randrange(args.collectors)}", rng.randrange(1, per_collector + 1))
                  for _ in range(args.proofs)]
        for collector, sequence in wanted[:50]:  # warm the page cache and the connection
            await log.inclusion(collector, sequence, size)
        wall = time.perf_counter()
        server_started = postgres_cpu_seconds() if args.postgres else None
        started = _cpu_s()
        proofs = [await log.inclusion(collector, sequence, size) for collector, sequence in wanted]
        cpu_s = _cpu_s() - started
        server_cpu_s = None if server_started is None else postgres_cpu_seconds() - server_started
        wall_s = time.perf_counter() - wall
        # an export's pattern: the proofs of a whole range of one collector's blocks at once
        started = _cpu_s()
        ranges = []
        for c in range(min(args.collectors, 5)):
            first = rng.randrange(1, max(2, per_collector - 1000))
            ranges += await log.inclusions(f"bench-c{c}", first, first + 999, size)
        range_cpu_s = _cpu_s() - started
        ranged = len(ranges)
        proofs += ranges[::50]  # verified below with the others
        failure = None
        checked = 0
        for proof in proofs[:args.verify] + proofs[args.proofs:]:
            rows = await ledger.read_blocks(proof.collector_id, after_sequence=proof.sequence - 1,
                                            limit=1)
            try:
                verify_inclusion(leaf_hash=leaf_hash(rows[0].payload), index=proof.leaf_index,
                                 size=size, proof=list(proof.hashes), root=checkpoint.root_hash)
            except ProofError as exc:
                failure = f"proof of {proof.collector_id} #{proof.sequence} does not verify: {exc}"
                break
            checked += 1
    finally:
        await ledger.close()
    return result("log-proof", {
        "blocks": size, "collectors": args.collectors, "proofs": args.proofs, "ledger": where,
        "readings_per_block": READINGS}, {
            "inclusion_proof_cpu_us": round(cpu_s / args.proofs * 1e6, 1),
            "inclusion_proof_wall_us": round(wall_s / args.proofs * 1e6, 1),
            "postgres_server_cpu_us": (None if server_cpu_s is None
                                       else round(server_cpu_s / args.proofs * 1e6, 1)),
            "range_inclusion_proof_cpu_us": round(range_cpu_s / max(ranged, 1) * 1e6, 1),
            "range_proofs": ranged,
            "proof_hashes": len(proofs[0].hashes),
            "proofs_verified": checked,
            "build_cpu_s": None if build_cpu_s is None else round(build_cpu_s, 1),
        }, failure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=1_000_000)
    parser.add_argument("--collectors", type=int, default=100)
    parser.add_argument("--proofs", type=int, default=5000)
    parser.add_argument("--verify", type=int, default=1000, help="how many proofs to verify")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--ledger", help="SQLite file (kept between runs)")
    parser.add_argument("--postgres", help="postgresql:// URL of an empty database instead")
    parser.add_argument("--quick", action="store_true",
                        help="20,000 blocks of 10 collectors in a temporary ledger, 2,000 proofs")
    args = parser.parse_args()
    if args.quick:
        args.blocks, args.collectors, args.proofs = 20_000, 10, 2000
    sys.exit(emit(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
