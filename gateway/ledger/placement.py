"""Placing a batch of verified blocks on a collector's chain: the rule every ledger backend applies.

Pure. A backend reads the collector's chain head (under its lock) and the stored blocks the batch
repeats, calls `plan_append`, then stores what the plan says in the same transaction. Keeping the
loop here is what makes the SQLite and PostgreSQL ledgers answer a batch identically.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from gateway.errors import LedgerError
from gateway.ledger.base import QuarantineEntry, VerifiedBlock
from proto.chain import ChainHead, Placement, StoredBlock, place_block

__all__ = [
    "MAX_UNSIGNED_EVIDENCE_BYTES", "SIGNED_EVIDENCE_REASONS", "AppendPlan", "budget_quarantine",
    "plan_append", "refusal_entry", "repeated_sequences",
]


@dataclass(frozen=True, slots=True)
class AppendPlan:
    """What to store for one batch: the new blocks (in chain order), the head they lead to,
    their totals for the chain head row, each offered block's placement, and the refused one."""

    head: ChainHead
    placements: tuple[Placement, ...]
    new_blocks: tuple[VerifiedBlock, ...]
    readings: int
    latest_window_start_unix_ms: int
    refused: QuarantineEntry | None


def repeated_sequences(blocks: list[VerifiedBlock], head: ChainHead) -> list[int]:
    """The sequences of a batch at or below the head: the stored blocks `plan_append` may ask for."""
    return sorted({block.sequence for block in blocks if block.sequence <= head.sequence})


def plan_append(
    *, collector_id: str, blocks: list[VerifiedBlock], head: ChainHead,
    stored_at: Callable[[int], StoredBlock | None], transport: str, peer: str,
    received_unix_ms: int,
) -> AppendPlan:
    """Place each block in order against `head`; stop at the first refused one.

    `stored_at(sequence)` returns the stored block at a sequence at or below the starting head
    (None means the ledger lost a block its head covers: LedgerError).
    """
    placements: list[Placement] = []
    new_blocks: list[VerifiedBlock] = []
    # blocks placed earlier in this batch are not stored until the backend writes the plan
    pending: dict[int, StoredBlock] = {}
    refused: QuarantineEntry | None = None
    readings = 0
    latest_start = 0
    for block in blocks:
        stored = pending.get(block.sequence)
        if stored is None and block.sequence <= head.sequence:
            stored = stored_at(block.sequence)
            if stored is None:
                raise LedgerError(
                    f"chain head of {collector_id} is {head.sequence} but block "
                    f"{block.sequence} is missing: the ledger is damaged")
        placement = place_block(head=head, sequence=block.sequence, block_hash=block.hash,
                                previous_hash=block.previous_hash, stored_at_sequence=stored)
        placements.append(placement)
        if placement is Placement.NEXT:
            new_blocks.append(block)
            pending[block.sequence] = StoredBlock(block.hash, block.previous_hash)
            readings += block.reading_count
            latest_start = max(latest_start, block.window_start_unix_ms)
            head = ChainHead(block.sequence, block.hash)
        elif placement is not Placement.DUPLICATE:
            refused = refusal_entry(block, placement, head, stored=stored, transport=transport,
                                    peer=peer, received_unix_ms=received_unix_ms)
            break
    return AppendPlan(head, tuple(placements), tuple(new_blocks), readings, latest_start, refused)


def refusal_entry(block: VerifiedBlock, placement: Placement, head: ChainHead, *,
                  stored: StoredBlock | None, transport: str, peer: str,
                  received_unix_ms: int) -> QuarantineEntry:
    """The quarantine evidence for a block the chain refused, with a sentence saying why."""
    if placement is Placement.FORK:
        assert stored is not None
        detail = (f"sequence {block.sequence} is stored with hash {stored.hash.hex()[:16]}; this "
                  f"block has the same parent but hash {block.hash.hex()[:16]}: two histories "
                  "signed by one key")
    elif placement is Placement.REPLAYED_SEQUENCE:
        detail = (f"sequence {block.sequence} is already used (chain head {head.sequence}) by a "
                  "different block, and this one does not extend the stored chain")
    elif placement is Placement.BROKEN_LINK:
        detail = (f"previous_hash {block.previous_hash.hex()[:16]} does not match the hash of "
                  f"stored block {head.sequence} ({head.hash.hex()[:16]})")
    else:
        detail = (f"expected sequence {head.sequence + 1}, got {block.sequence}: blocks in between "
                  "have not arrived")
    alarm = placement in (Placement.FORK, Placement.REPLAYED_SEQUENCE, Placement.BROKEN_LINK)
    return QuarantineEntry(received_unix_ms, transport, peer, block.collector_id, block.sequence,
                           placement.value, detail, block.envelope, alarm)


# Refusals of blocks whose signature verified: only the key holder can produce them, so a peer
# cannot crowd them out. Everything else can come from anyone and shares a bounded budget.
SIGNED_EVIDENCE_REASONS = frozenset({"fork", "replayed_sequence", "broken_link", "sequence_gap"})
MAX_UNSIGNED_EVIDENCE_BYTES = 64 * 1024


def budget_quarantine(entries: list[QuarantineEntry], *, unsigned_stored: int,
                      max_unsigned_rows: int) -> list[QuarantineEntry]:
    """The entries to keep: every signed one; unsigned ones while `max_unsigned_rows` has room,
    each cut to its first 64 KiB (the detail then gives the whole message's size and SHA-256)."""
    kept: list[QuarantineEntry] = []
    room = max(0, max_unsigned_rows - unsigned_stored)
    for entry in entries:
        if entry.reason in SIGNED_EVIDENCE_REASONS:
            kept.append(entry)
            continue
        if room == 0:
            continue
        room -= 1
        if len(entry.raw) <= MAX_UNSIGNED_EVIDENCE_BYTES:
            kept.append(entry)
            continue
        whole = hashlib.sha256(entry.raw).hexdigest()
        kept.append(dataclasses.replace(
            entry, raw=entry.raw[:MAX_UNSIGNED_EVIDENCE_BYTES],
            detail=f"{entry.detail} [evidence cut to its first {MAX_UNSIGNED_EVIDENCE_BYTES} "
                   f"of {len(entry.raw)} bytes; SHA-256 of the whole: {whole}]"))
    return kept
