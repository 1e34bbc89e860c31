"""The ledger interface: the system of record for signed blocks, keys and quarantined evidence."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.ledger.selection import BlockSelection
from gateway.translog.merkle import AsyncMerkleTree
from proto.chain import ChainHead, Placement

__all__ = [
    "AppendResult",
    "BlockSelection",
    "CollectorKey",
    "CollectorOverview",
    "Ledger",
    "LedgerSummary",
    "QuarantineEntry",
    "StoredCheckpoint",
    "StoredRow",
    "VerifiedBlock",
]


@dataclass(frozen=True, slots=True)
class CollectorKey:
    """An enrolled collector and its public key."""

    collector_id: str
    key_id: str
    public_key: bytes
    enrolled_unix_ms: int


@dataclass(frozen=True, slots=True)
class VerifiedBlock:
    """A block whose signature held and whose payload parsed; its chain position is still open."""

    collector_id: str
    sequence: int
    previous_hash: bytes
    hash: bytes
    payload: bytes
    signature: bytes
    key_id: str
    window_start_unix_ms: int
    window_end_unix_ms: int
    reading_count: int
    kind: int
    envelope: bytes


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """Rejected input, kept as evidence with the reason it was refused."""

    received_unix_ms: int
    transport: str
    peer: str
    collector_id: str
    sequence: int | None
    reason: str
    detail: str
    raw: bytes
    alarm: bool


@dataclass(frozen=True, slots=True)
class AppendResult:
    """The chain head after an append, and what happened to each block offered (in order; blocks
    after the first refused one are not considered and have no entry). `refused` is the evidence
    of the refused block, if any; `evidence_kept` says whether the quarantine had room for it."""

    head: ChainHead
    placements: tuple[Placement, ...]
    refused: QuarantineEntry | None
    evidence_kept: bool


@dataclass(frozen=True, slots=True)
class StoredRow:
    """One stored block as a verifier reads it."""

    entry_index: int
    collector_id: str
    sequence: int
    hash: bytes
    payload: bytes
    signature: bytes
    key_id: str

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> StoredRow:
        """From a row of entry_index, collector_id, sequence, hash, payload, signature, key_id,
        whichever driver returned it."""
        return cls(int(row[0]), str(row[1]), int(row[2]), bytes(row[3]), bytes(row[4]),
                   bytes(row[5]), str(row[6]))


@dataclass(frozen=True, slots=True)
class LedgerSummary:
    """Counts an operator's status line shows."""

    blocks: int
    readings: int
    collectors: int
    quarantined: int
    latest_window_start_unix_ms: int | None


@dataclass(frozen=True, slots=True)
class CollectorOverview:
    """One collector's line in an operator's status table."""

    sequence: int
    readings: int
    latest_window_start_unix_ms: int | None
    quarantined: int

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> tuple[str, CollectorOverview]:
        """(collector id, overview) from a row of id, sequence, readings, newest window start,
        quarantined."""
        return str(row[0]), cls(int(row[1]), int(row[2]),
                                None if row[3] is None else int(row[3]), int(row[4]))


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A published checkpoint of the transparency log: its size, root and signed note."""

    tree_size: int
    root_hash: bytes
    note: str
    published_unix_ms: int


class Ledger(Protocol):
    """Append-only storage of verified blocks, idempotent on (collector id, sequence)."""

    async def enroll(self, key: CollectorKey) -> None:
        """Register a collector's key; EnrolmentError if the collector has a different key."""
        ...

    async def collector_keys(self) -> dict[str, CollectorKey]:
        """Every enrolled collector by id."""
        ...

    async def head(self, collector_id: str) -> ChainHead:
        """The collector's highest contiguous stored block."""
        ...

    async def append(
        self, collector_id: str, blocks: list[VerifiedBlock], *, transport: str, peer: str,
        received_unix_ms: int,
    ) -> AppendResult:
        """Place each block on the chain in one transaction; store the next ones, acknowledge
        duplicates, quarantine the first refused one and stop there."""
        ...

    async def quarantine(self, entries: list[QuarantineEntry]) -> int:
        """Keep rejected input as evidence; return how many were kept (the rest hit the cap)."""
        ...

    async def quarantine_counts(self) -> dict[str, int]:
        """Quarantined entries by reason."""
        ...

    async def quarantine_entries(self) -> list[QuarantineEntry]:
        """Every quarantined entry, oldest first."""
        ...

    def iter_blocks(self, collector_id: str | None = None) -> AsyncIterator[StoredRow]:
        """Every stored block, by collector and sequence."""
        ...

    async def summary(self) -> LedgerSummary:
        """Totals for a status line."""
        ...

    # --- consumers that follow the ledger (the time-series sink) ---------------------------------

    async def heads(self) -> dict[str, ChainHead]:
        """The chain head of every collector that has at least one stored block."""
        ...

    async def read_blocks(self, collector_id: str, *, after_sequence: int,
                          limit: int) -> list[StoredRow]:
        """Up to `limit` stored blocks of one collector with sequence > `after_sequence`, in order."""
        ...

    async def select_blocks(self, collector_id: str, selection: BlockSelection, *,
                            after_sequence: int, limit: int) -> list[StoredRow]:
        """Up to `limit` of the collector's blocks in `selection` with sequence >
        `after_sequence`, in order. Selected by stored columns, no payload decoded; a CONFIG kind
        from the partial index (the chain between configuration blocks is not read), a time
        range by a scan of the collector's rows."""
        ...

    async def find_config(self, collector_id: str, digest: bytes) -> bytes | None:
        """The configuration document of the collector's CONFIG block whose SHA-256 is `digest`."""
        ...

    async def put_accounting_hours(self, plant_id: str, unit_id: str,
                                   hours: Sequence[tuple[int, str]], *, computed_unix_ms: int) -> None:
        """Store (replace) a unit's hourly accounting documents (JSON), keyed by hour start: derived
        figures, recomputed when late data arrives, unlike the append-only blocks."""
        ...

    async def accounting_hours(self, plant_id: str, unit_id: str, *, start_unix_ms: int,
                               end_unix_ms: int) -> list[tuple[int, str]]:
        """A unit's stored hourly documents with starts in [start, end), in time order."""
        ...

    async def sink_positions(self, sink: str) -> dict[str, int]:
        """A consumer's durable cursor: per collector, the highest sequence it has delivered."""
        ...

    async def advance_sink(self, sink: str, collector_id: str, *, from_sequence: int,
                           to_sequence: int) -> bool:
        """Compare-and-set a consumer's cursor from `from_sequence` (0: never moved) to
        `to_sequence`; False, changing nothing, when it is not at `from_sequence` (another gateway
        moved it). Cursors only move forward, and not past the chain head: ValueError otherwise."""
        ...

    async def collectors_overview(self) -> dict[str, CollectorOverview]:
        """Per enrolled collector: chain head, readings, newest window, quarantined entries."""
        ...

    # --- the transparency log (gateway.translog) ------------------------------------------------

    async def log_integrate(self, *, max_leaves: int) -> tuple[int, int]:
        """Append up to `max_leaves` stored blocks not yet in the log, in acceptance order, as
        leaves SHA-256(0x00 || payload); return (tree size after, leaves added). One writer at a
        time across every gateway sharing the ledger; the others wait or find nothing to do."""
        ...

    def log_tree(self) -> AsyncMerkleTree:
        """The log's Merkle tree, for roots and proofs (reads only; `log_integrate` appends)."""
        ...

    async def log_leaf_indexes(self, collector_id: str, first_sequence: int,
                               last_sequence: int) -> dict[int, int]:
        """Sequence -> leaf index of the collector's blocks in [first, last] that are in the log."""
        ...

    async def log_inclusion_proofs(self, collector_id: str, first_sequence: int,
                                   last_sequence: int, *, tree_size: int
                                   ) -> list[tuple[int, int, list[bytes]]]:
        """(sequence, leaf index, RFC 9162 audit path to `tree_size`) of each of the collector's
        blocks in [first, last] that is among the first `tree_size` leaves, in sequence order; one
        round trip for the lookups and one for the nodes. ProofRequestError for a size past the
        log's."""
        ...

    async def log_latest_leaves(self, collector_ids: Sequence[str], *, below_size: int
                                ) -> dict[str, tuple[int, int]]:
        """Collector -> (sequence, leaf index) of its newest block among the first `below_size`
        leaves, for each of the collectors that has one; one round trip for all of them."""
        ...

    async def log_leaf(self, leaf_index: int) -> tuple[str, int] | None:
        """(collector id, sequence) of a leaf, or None past the end."""
        ...

    def iter_log_leaves(self) -> AsyncIterator[tuple[int, str, int, bytes]]:
        """Every leaf in log order: (leaf index, collector id, sequence, the block's payload)."""
        ...

    def iter_log_nodes(self, level: int) -> AsyncIterator[tuple[int, bytes]]:
        """The stored nodes of one level in index order: (index, hash)."""
        ...

    async def log_unqueued_blocks(self) -> list[tuple[str, int]]:
        """Stored blocks the log will never take (neither leaves nor waiting to be integrated):
        (collector id, sequence), at most 100. Empty in a sound ledger."""
        ...

    async def log_recorded_key(self) -> str | None:
        """The log's recorded verifier key (None before a gateway recorded one)."""
        ...

    async def log_verifier_key(self, verifier_key: str) -> str:
        """Record the log's verifier key if none is recorded; return the recorded one (a gateway
        whose key differs must not sign this log's checkpoints)."""
        ...

    async def put_checkpoint(self, checkpoint: StoredCheckpoint) -> StoredCheckpoint:
        """Keep a published checkpoint; if one of that size is stored already, keep that one and
        return it."""
        ...

    async def checkpoint(self, tree_size: int | None = None) -> StoredCheckpoint | None:
        """The published checkpoint of that size, or the latest one (None: none published)."""
        ...

    async def checkpoints(self, *, limit: int = 100, before_size: int | None = None
                          ) -> list[StoredCheckpoint]:
        """Published checkpoints, newest first, of sizes below `before_size` when given."""
        ...

    async def close(self) -> None:
        """Release the store."""
        ...
