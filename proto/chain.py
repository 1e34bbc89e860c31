"""The chain rules: where a verified block stands relative to a collector's stored chain.

Pure: the caller looks up the stored chain and hands over what the rule needs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from proto.wire import GENESIS_HASH

__all__ = ["ChainHead", "Placement", "StoredBlock", "place_block"]


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The highest contiguous block stored for a collector (sequence 0 when none)."""

    sequence: int
    hash: bytes

    @classmethod
    def empty(cls) -> ChainHead:
        """The head of a chain with no block yet."""
        return cls(sequence=0, hash=GENESIS_HASH)


@dataclass(frozen=True, slots=True)
class StoredBlock:
    """What the ledger holds at one sequence."""

    hash: bytes
    previous_hash: bytes


class Placement(enum.Enum):
    """Verdict of `place_block`; each rejected kind is a stable reason code."""

    NEXT = "next"                            # extends the head: store it
    DUPLICATE = "duplicate"                  # the same bytes are stored: acknowledge, store nothing
    FORK = "fork"                            # same sequence and parent as a stored block, other bytes
    REPLAYED_SEQUENCE = "replayed_sequence"  # a used sequence number on a chain that is not ours
    BROKEN_LINK = "broken_link"              # next sequence, but previous_hash is not the head's hash
    SEQUENCE_GAP = "sequence_gap"            # beyond head + 1: blocks in between are missing

    @property
    def accepted(self) -> bool:
        """True when the ledger ends up holding this block (stored now or before)."""
        return self in (Placement.NEXT, Placement.DUPLICATE)


def place_block(
    *,
    head: ChainHead,
    sequence: int,
    block_hash: bytes,
    previous_hash: bytes,
    stored_at_sequence: StoredBlock | None,
) -> Placement:
    """Classify a signature-checked block against the chain; `stored_at_sequence` is the
    ledger's block at the same sequence, when the sequence is at or below the head."""
    if sequence == head.sequence + 1:
        return Placement.NEXT if previous_hash == head.hash else Placement.BROKEN_LINK
    if sequence > head.sequence + 1:
        return Placement.SEQUENCE_GAP
    if stored_at_sequence is None:
        raise ValueError("a sequence at or below the head needs the stored block to compare")
    if stored_at_sequence.hash == block_hash:
        return Placement.DUPLICATE
    if stored_at_sequence.previous_hash == previous_hash:
        return Placement.FORK
    return Placement.REPLAYED_SEQUENCE
