"""The gateway's transparency log: integrates stored blocks into the Merkle tree, publishes signed
checkpoints, answers proofs, and writes the receipts that travel to collectors in acks.

The tree and the checkpoints live in the ledger (`Ledger.log_*`), so every gateway sharing a
ledger serves the same log; one of them integrates at a time (the ledger serializes it), any of
them may publish (the same size gives the same root, and Ed25519 signatures are deterministic, so
the same note). Gateways sharing a ledger must share the log's signing key: the first one records
its verifier key in the ledger, and a gateway with another key refuses to start.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from dataclasses import dataclass

import nacl.signing

from gateway.errors import GatewayError, LedgerError
from gateway.ledger.base import Ledger, StoredCheckpoint
from gateway.translog.checkpoint import Checkpoint, verifier_key
from gateway.translog.merkle import ProofRequestError
from proto.backoff import Backoff
from proto.stackline.v1 import stackline_pb2 as pb

__all__ = ["InclusionProof", "LogKeyMismatch", "TransparencyLog"]

log = logging.getLogger(__name__)

INTEGRATE_BATCH = 5000
"""Leaves appended per ledger transaction."""
CONSISTENCY_CACHE_SIZE = 64
"""Consistency proofs kept for receipts (by old and new tree size)."""


class LogKeyMismatch(GatewayError):
    """This gateway's log key is not the one the ledger's log is signed with."""


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """Where a block sits in the log, and the RFC 9162 audit path to a tree size."""

    collector_id: str
    sequence: int
    leaf_index: int
    tree_size: int
    hashes: tuple[bytes, ...]

    def as_json(self) -> dict[str, object]:
        """The proof as the verifier API and evidence bundles write it."""
        return {"collector_id": self.collector_id, "sequence": self.sequence,
                "leaf_index": self.leaf_index, "tree_size": self.tree_size,
                "hashes": [base64.b64encode(h).decode() for h in self.hashes]}


class TransparencyLog:
    """One gateway's view of the ledger's log, and its signing key."""

    def __init__(self, *, ledger: Ledger, origin: str, signing_key: nacl.signing.SigningKey,
                 checkpoint_interval_s: float = 60.0, integrate_interval_s: float = 1.0) -> None:
        self.ledger = ledger
        self.origin = origin
        self.signing_key = signing_key
        self.checkpoint_interval_s = checkpoint_interval_s
        self.integrate_interval_s = integrate_interval_s
        self.public_key = bytes(signing_key.verify_key)
        self.verifier_key = verifier_key(origin, self.public_key)
        self.wakeup = asyncio.Event()
        self.size = 0
        self.latest: StoredCheckpoint | None = None
        self.failures = 0
        self._backoff = Backoff(initial_s=0.5, max_s=30.0)
        self._publishing = asyncio.Lock()
        # receipts: the audit paths of every collector's newest block at one tree size, and
        # consistency proofs by (old size, new size)
        self._paths: tuple[int, dict[str, tuple[int, int, list[bytes]]]] | None = None
        self._paths_task: tuple[int, asyncio.Future[dict[str, tuple[int, int, list[bytes]]]]
                                ] | None = None
        self._consistency_cache: dict[tuple[int, int], list[bytes]] = {}

    def __repr__(self) -> str:
        return f"TransparencyLog(origin={self.origin!r}, size={self.size})"

    async def start(self) -> None:
        """Check (or record) the log's key in the ledger; read the latest checkpoint."""
        recorded = await self.ledger.log_verifier_key(self.verifier_key)
        if recorded != self.verifier_key:
            raise LogKeyMismatch(
                f"the ledger's transparency log is signed by {recorded}, and this gateway's log "
                f"key is {self.verifier_key}: give every gateway of this ledger the same "
                "log.key_file and log.origin")
        self.latest = await self.ledger.checkpoint()
        self.size = await self.ledger.log_tree().size()

    def notify(self, collector_id: str | None = None) -> None:
        """New blocks are stored: integrate them soon."""
        self.wakeup.set()

    async def integrate(self) -> int:
        """Append every stored block not yet in the log; return the tree size."""
        while True:
            size, added = await self.ledger.log_integrate(max_leaves=INTEGRATE_BATCH)
            self.size = size
            if added < INTEGRATE_BATCH:
                return size

    async def publish(self) -> StoredCheckpoint:
        """Integrate, then sign and keep a checkpoint of the whole log (on demand, and at the
        interval); when the latest one covers it already, that one."""
        async with self._publishing:
            size = await self.integrate()
            latest = await self.ledger.checkpoint()
            if latest is not None and latest.tree_size >= size:
                self.latest = latest
                return latest
            root = await self.ledger.log_tree().root(size)
            note = Checkpoint(self.origin, size, root).sign(name=self.origin,
                                                            signing_key=self.signing_key)
            kept = await self.ledger.put_checkpoint(
                StoredCheckpoint(size, root, note, int(time.time() * 1000)))
            if kept.root_hash != root:
                # another writer's checkpoint of this size has another root: the log forked
                raise LedgerError(f"ALARM: checkpoint of size {size} already published with root "
                                  f"{kept.root_hash.hex()}, this gateway computed {root.hex()}")
            self.latest = kept
            log.info("transparency log %s: checkpoint at size %d", self.origin, size)
            return kept

    async def run(self) -> None:
        """Integrate as blocks arrive; publish a checkpoint every `checkpoint_interval_s` when
        the log grew. Ledger trouble is logged and retried, never fatal."""
        next_publish = time.monotonic() + self.checkpoint_interval_s
        while True:
            self.wakeup.clear()
            try:
                await self.integrate()
                if time.monotonic() >= next_publish:
                    await self.publish()
                    next_publish = time.monotonic() + self.checkpoint_interval_s
                if self.failures:
                    log.warning("transparency log: the ledger answers again")
                self.failures = 0
                self._backoff.reset()
            except LedgerError as exc:
                self.failures += 1
                delay = self._backoff.next_delay()
                log.log(logging.ERROR if self.failures == 1 else logging.DEBUG,
                        "transparency log: %s; again in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                continue
            wait = min(self.integrate_interval_s, max(0.0, next_publish - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.wakeup.wait()

    # --- answers ---------------------------------------------------------------------------------

    async def inclusion(self, collector_id: str, sequence: int, tree_size: int) -> InclusionProof:
        """The audit path of a stored block to a tree size; ProofRequestError when the block is
        not (yet) in the log at that size."""
        found = await self.inclusions(collector_id, sequence, sequence, tree_size)
        if not found:
            raise ProofRequestError(f"block {collector_id} #{sequence} is not in the log at size "
                                    f"{tree_size}")
        return found[0]

    async def inclusions(self, collector_id: str, first_sequence: int, last_sequence: int,
                         tree_size: int) -> list[InclusionProof]:
        """The audit paths of the collector's blocks in [first, last] that are in the tree of
        `tree_size` leaves, in sequence order (a range of blocks in two round trips)."""
        found = await self.ledger.log_inclusion_proofs(collector_id, first_sequence,
                                                       last_sequence, tree_size=tree_size)
        return [InclusionProof(collector_id, sequence, index, tree_size, tuple(path))
                for sequence, index, path in found]

    async def consistency(self, old_size: int, new_size: int) -> list[bytes]:
        """RFC 9162 consistency proof between two tree sizes."""
        return await self.ledger.log_tree().consistency_proof(old_size, new_size)

    async def receipt(self, collector_id: str, known_size: int) -> pb.Receipt | None:
        """The latest checkpoint with the collector's newest block in it and, when the collector
        holds an older checkpoint (`known_size`), the proof that the new one extends it. None when
        there is nothing newer for it.

        Every collector asks within a second of a new checkpoint (its next ack carries the
        receipt), so the audit paths of all of them are made at once, on the first request, in
        three ledger round trips, and kept until the next checkpoint; consistency proofs are kept
        by size pair (most collectors hold the same previous checkpoint)."""
        latest = self.latest
        if latest is None or latest.tree_size <= known_size:
            return None
        found = (await self._receipt_paths(latest.tree_size)).get(collector_id)
        if found is None:
            return None
        sequence, index, path = found
        consistency: list[bytes] = []
        if known_size > 0:
            consistency = await self._consistency_for_receipts(known_size, latest.tree_size)
        return pb.Receipt(checkpoint=latest.note, sequence=sequence, leaf_index=index,
                          inclusion_path=path, consistency_from_size=known_size,
                          consistency_path=consistency)

    async def _receipt_paths(self, tree_size: int) -> dict[str, tuple[int, int, list[bytes]]]:
        """Collector -> (sequence, leaf index, audit path) of its newest block in the tree of
        `tree_size`, for every collector with a block there; made once per tree size (concurrent
        callers share the work; no failure is kept, the next request tries again)."""
        if self._paths is not None and self._paths[0] == tree_size:
            return self._paths[1]
        if self._paths_task is None or self._paths_task[0] != tree_size:
            self._paths_task = (tree_size, asyncio.ensure_future(self._make_receipt_paths(tree_size)))
        task = self._paths_task[1]
        try:
            paths = await asyncio.shield(task)
        except Exception:
            if self._paths_task is not None and self._paths_task[1] is task:
                self._paths_task = None  # whatever went wrong, the next request tries again
            raise
        if self._paths is None or self._paths[0] < tree_size:
            self._paths = (tree_size, paths)
        return paths

    async def _make_receipt_paths(self, tree_size: int) -> dict[str, tuple[int, int, list[bytes]]]:
        collectors = list(await self.ledger.heads())
        newest = await self.ledger.log_latest_leaves(collectors, below_size=tree_size)
        ordered = list(newest.items())
        paths = await self.ledger.log_tree().inclusion_proofs([index for _, (_, index) in ordered],
                                                              tree_size)
        return {collector_id: (sequence, index, path)
                for (collector_id, (sequence, index)), path in zip(ordered, paths, strict=True)}

    async def _consistency_for_receipts(self, old_size: int, new_size: int) -> list[bytes]:
        key = (old_size, new_size)
        proof = self._consistency_cache.get(key)
        if proof is None:
            proof = await self.consistency(old_size, new_size)
            if len(self._consistency_cache) >= CONSISTENCY_CACHE_SIZE:
                self._consistency_cache.pop(next(iter(self._consistency_cache)))
            self._consistency_cache[key] = proof
        return proof
