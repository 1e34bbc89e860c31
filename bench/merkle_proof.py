"""Inclusion and consistency proofs on a large transparency log: CPU per proof.

Builds a log of `--leaves` leaves (default one million) in the in-memory hash store, then
generates inclusion proofs for random leaves against the full tree and consistency proofs between
random sizes, verifying every one (a proof that does not verify is reported as a failure, not a
figure). CPU time is the process's user + system time from the operating system. Prints one JSON
object.

    python bench/merkle_proof.py [--leaves 1000000] [--proofs 20000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import sys
import time
from typing import Any

from gateway.translog.merkle import (
    MemoryHashStore,
    MerkleTree,
    ProofError,
    verify_consistency,
    verify_inclusion,
)


def _cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def run(leaves: int, proofs: int, seed: int) -> dict[str, Any]:
    """Build, prove, verify; the figures."""
    tree = MerkleTree(store=MemoryHashStore())
    started = _cpu_s()
    batch = 10_000
    for first in range(0, leaves, batch):
        tree.append_many(hashlib.sha256(b"\x00" + i.to_bytes(8, "big")).digest()
                         for i in range(first, min(first + batch, leaves)))
        print(f"\rappended {tree.size:,} of {leaves:,} leaves", end="", file=sys.stderr)
    print(file=sys.stderr)
    build_s = _cpu_s() - started
    root = tree.root(leaves)
    rng = random.Random(seed)
    indexes = [rng.randrange(leaves) for _ in range(proofs)]
    started = _cpu_s()
    made = [tree.inclusion_proof(index, leaves) for index in indexes]
    inclusion_s = _cpu_s() - started
    failure = None
    for index, proof in zip(indexes, made, strict=True):
        leaf = hashlib.sha256(b"\x00" + index.to_bytes(8, "big")).digest()
        try:
            verify_inclusion(leaf_hash=leaf, index=index, size=leaves, proof=proof, root=root)
        except ProofError as exc:
            failure = f"inclusion proof of leaf {index} does not verify: {exc}"
            break
    sizes = sorted(rng.randrange(1, leaves) for _ in range(min(proofs, 2000)))
    started = _cpu_s()
    consistency = [(old, tree.consistency_proof(old, leaves)) for old in sizes]
    consistency_s = _cpu_s() - started
    for old, proof in consistency[:200]:
        try:
            verify_consistency(old_size=old, new_size=leaves, old_root=tree.root(old), new_root=root,
                               proof=proof)
        except ProofError as exc:
            failure = failure or f"consistency proof from {old} does not verify: {exc}"
            break
    return {
        "scenario": "merkle-proof",
        "parameters": {"leaves": leaves, "inclusion_proofs": proofs, "consistency_proofs": len(sizes),
                       "store": "memory"},
        "figures": None if failure else {
            "build_cpu_s": round(build_s, 2),
            "inclusion_proof_cpu_us": round(inclusion_s / proofs * 1e6, 1),
            "consistency_proof_cpu_us": round(consistency_s / len(sizes) * 1e6, 1),
            "proof_hashes": len(made[0]),
        },
        "failure": failure,
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "time_unix_s": int(time.time()),
    }


def main() -> None:
    """Parse the arguments, run, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=1_000_000)
    parser.add_argument("--proofs", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    result = run(args.leaves, args.proofs, args.seed)
    print(json.dumps(result))
    sys.exit(1 if result["failure"] else 0)


if __name__ == "__main__":
    main()
