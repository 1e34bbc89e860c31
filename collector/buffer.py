"""The collector's durable buffer: signed blocks wait here until the gateway acknowledges them.

A block and the new chain head are written in one transaction, so a power cut leaves either both
or neither. Blocks leave only through `acknowledge`, called with the gateway's end-to-end ack.
When the buffer reaches its size limit, `append` raises BufferFullError: the caller records the
missed ticks and alarms; nothing already buffered is ever dropped to make room.

Each block's leaf hash in the gateway's transparency log (SHA-256(0x00 || payload)) is written
with it and outlives its payload, so that a receipt for the block can be checked after the block
has left (collector/receipts.py). Leaf hashes go when a verified receipt (without a configured
log key: any receipt whose inclusion proof holds) covers a later block (`forget_leaf_hashes`), and
in any case once LEAF_HASH_WINDOW later blocks are acknowledged.
They are not counted in the size limit: 32 bytes a block, at most LEAF_HASH_WINDOW of them past
the acknowledged sequence.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from google.protobuf.message import DecodeError

from collector.errors import BufferFullError, BufferUnavailable, CollectorError
from proto.stackline.v1 import stackline_pb2 as pb
from proto.tlog import leaf_hash
from proto.wire import GENESIS_HASH

__all__ = [
    "LEAF_HASH_WINDOW", "Buffer", "BufferDepth", "ChainState", "MemoryBuffer", "SealedBlock",
    "SqliteBuffer",
]

LEAF_HASH_WINDOW = 1_000_000
"""Leaf hashes kept at most this many sequences behind the acknowledged one (11 days of one-second
ticks, ~40 MB), for when no verified receipt ever comes to prune them."""


@dataclass(frozen=True, slots=True)
class ChainState:
    """The collector's chain head, kept with the blocks."""

    sequence: int
    hash: bytes
    config_digest: bytes

    @classmethod
    def empty(cls) -> ChainState:
        """State of a collector that has made no block yet."""
        return cls(0, GENESIS_HASH, b"")


@dataclass(frozen=True, slots=True)
class SealedBlock:
    """A signed block ready to store: its envelope bytes, the chain head after it, and its leaf
    hash in the gateway's transparency log."""

    sequence: int
    envelope: bytes
    hash: bytes
    config_digest: bytes
    created_unix_ms: int
    leaf_hash: bytes


@dataclass(frozen=True, slots=True)
class BufferDepth:
    """What waits for the gateway's acknowledgement."""

    blocks: int
    bytes: int
    oldest_created_unix_ms: int | None
    acknowledged_through: int


class Buffer(Protocol):
    """Durable store of signed blocks awaiting acknowledgement."""

    def chain_state(self) -> ChainState:
        """The head of the chain as last stored."""
        ...

    def append(self, block: SealedBlock) -> None:
        """Store a block and advance the head; BufferFullError when over the size limit."""
        ...

    def read_from(self, sequence: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to `limit` (sequence, envelope) pairs from `sequence` on, in order."""
        ...

    def acknowledge(self, through_sequence: int) -> int:
        """Delete blocks up to and including `through_sequence`; return how many went."""
        ...

    def depth(self) -> BufferDepth:
        """Blocks and bytes waiting, and the age of the oldest."""
        ...

    def acknowledged_through(self) -> int:
        """The highest sequence the gateway has acknowledged (cheap: no scan)."""
        ...

    def leaf_hash(self, sequence: int) -> bytes | None:
        """The block's leaf hash in the gateway's log, kept after the block left; None when it
        is not kept (pruned, or no such block)."""
        ...

    def forget_leaf_hashes(self, below_sequence: int) -> int:
        """Drop the leaf hashes of blocks before `below_sequence`; return how many went."""
        ...

    def close(self) -> None:
        """Release the store."""
        ...


class MemoryBuffer:
    """A buffer in memory, for tests and for the contract suite."""

    def __init__(self, *, max_bytes: int = 1 << 30) -> None:
        self.max_bytes = max_bytes
        self._blocks: dict[int, SealedBlock] = {}
        self._state = ChainState.empty()
        self._bytes = 0
        self._acked = 0
        self._leaves: dict[int, bytes] = {}
        self._leaf_floor = 1  # no leaf hash below this sequence is kept

    def __repr__(self) -> str:
        return f"MemoryBuffer(blocks={len(self._blocks)}, head={self._state.sequence})"

    def chain_state(self) -> ChainState:
        """The head of the chain."""
        return self._state

    def append(self, block: SealedBlock) -> None:
        """Store a block and advance the head."""
        _check_next(self._state, block)
        if self._bytes + len(block.envelope) > self.max_bytes:
            raise BufferFullError(f"buffer holds {self._bytes} bytes, limit {self.max_bytes}")
        self._blocks[block.sequence] = block
        self._bytes += len(block.envelope)
        self._leaves[block.sequence] = block.leaf_hash
        self._state = ChainState(block.sequence, block.hash, block.config_digest)

    def read_from(self, sequence: int, limit: int) -> list[tuple[int, bytes]]:
        """Blocks from `sequence` on."""
        out: list[tuple[int, bytes]] = []
        for seq in range(max(sequence, self._acked + 1), self._state.sequence + 1):
            if len(out) >= limit:
                break
            if seq in self._blocks:
                out.append((seq, self._blocks[seq].envelope))
        return out

    def acknowledge(self, through_sequence: int) -> int:
        """Delete acknowledged blocks."""
        gone = [seq for seq in self._blocks if seq <= through_sequence]
        for seq in gone:
            self._bytes -= len(self._blocks.pop(seq).envelope)
        self._acked = max(self._acked, min(through_sequence, self._state.sequence))
        self.forget_leaf_hashes(self._acked - LEAF_HASH_WINDOW + 1)
        return len(gone)

    def acknowledged_through(self) -> int:
        """The highest acknowledged sequence."""
        return self._acked

    def leaf_hash(self, sequence: int) -> bytes | None:
        """The block's leaf hash, if kept."""
        return self._leaves.get(sequence)

    def forget_leaf_hashes(self, below_sequence: int) -> int:
        """Drop leaf hashes before `below_sequence`."""
        gone = 0
        for sequence in range(self._leaf_floor, below_sequence):
            gone += self._leaves.pop(sequence, None) is not None
        self._leaf_floor = max(self._leaf_floor, below_sequence)
        return gone

    def depth(self) -> BufferDepth:
        """What waits."""
        oldest = min((b.created_unix_ms for b in self._blocks.values()), default=None)
        return BufferDepth(len(self._blocks), self._bytes, oldest, self._acked)

    def close(self) -> None:
        """Nothing to release."""


def _check_next(state: ChainState, block: SealedBlock) -> None:
    if block.sequence != state.sequence + 1:
        raise CollectorError(
            f"block {block.sequence} does not follow the buffered head {state.sequence}"
        )


_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    sequence INTEGER PRIMARY KEY,
    envelope BLOB NOT NULL,
    created_unix_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS leaf_hashes (
    sequence INTEGER PRIMARY KEY,
    leaf_hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS chain (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    sequence INTEGER NOT NULL,
    hash BLOB NOT NULL,
    config_digest BLOB NOT NULL,
    acknowledged_through INTEGER NOT NULL,
    stored_bytes INTEGER NOT NULL
);
"""


class SqliteBuffer:
    """The buffer in a SQLite file, WAL mode, every commit synced (synchronous=FULL)."""

    def __init__(self, *, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO chain VALUES (1, 0, ?, x'', 0, 0)", (GENESIS_HASH,)
            )
        except sqlite3.Error as exc:
            raise CollectorError(f"cannot open the buffer {path}: {exc}") from exc
        row = self._db.execute(
            "SELECT sequence, hash, config_digest, acknowledged_through, stored_bytes FROM chain"
        ).fetchone()
        self._state = ChainState(int(row[0]), bytes(row[1]), bytes(row[2]))
        self._acked = int(row[3])
        self._bytes = int(row[4])
        self._count = int(self._db.execute("SELECT COUNT(*) FROM blocks").fetchone()[0])

    def __repr__(self) -> str:
        return f"SqliteBuffer(path={str(self.path)!r}, head={self._state.sequence})"

    def chain_state(self) -> ChainState:
        """The head of the chain as last committed."""
        return self._state

    def append(self, block: SealedBlock) -> None:
        """Store a block and the new head in one synced transaction."""
        _check_next(self._state, block)
        size = len(block.envelope)
        if self._bytes + size > self.max_bytes:
            raise BufferFullError(
                f"buffer {self.path} holds {self._bytes} bytes of unacknowledged blocks, "
                f"limit {self.max_bytes}"
            )
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT INTO blocks VALUES (?, ?, ?)",
                    (block.sequence, block.envelope, block.created_unix_ms),
                )
                self._db.execute("INSERT OR REPLACE INTO leaf_hashes VALUES (?, ?)",
                                 (block.sequence, block.leaf_hash))
                self._db.execute(
                    "UPDATE chain SET sequence = ?, hash = ?, config_digest = ?, "
                    "stored_bytes = stored_bytes + ?",
                    (block.sequence, block.hash, block.config_digest, size),
                )
        except sqlite3.Error as exc:
            raise BufferUnavailable(f"cannot write block {block.sequence} to {self.path}: {exc}") from exc
        self._state = ChainState(block.sequence, block.hash, block.config_digest)
        self._bytes += size
        self._count += 1

    def read_from(self, sequence: int, limit: int) -> list[tuple[int, bytes]]:
        """Blocks from `sequence` on, in sequence order."""
        rows = self._db.execute(
            "SELECT sequence, envelope FROM blocks WHERE sequence >= ? ORDER BY sequence LIMIT ?",
            (sequence, limit),
        ).fetchall()
        return [(int(seq), bytes(envelope)) for seq, envelope in rows]

    def acknowledge(self, through_sequence: int) -> int:
        """Delete blocks the gateway has stored; the head itself stays in `chain`."""
        through = min(through_sequence, self._state.sequence)
        if through <= self._acked:
            return 0
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                freed = self._db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(LENGTH(envelope)), 0) FROM blocks "
                    "WHERE sequence <= ?", (through,),
                ).fetchone()
                self._db.execute("DELETE FROM blocks WHERE sequence <= ?", (through,))
                self._db.execute("DELETE FROM leaf_hashes WHERE sequence <= ?",
                                 (through - LEAF_HASH_WINDOW,))
                self._db.execute(
                    "UPDATE chain SET acknowledged_through = ?, stored_bytes = stored_bytes - ?",
                    (through, int(freed[1])),
                )
        except sqlite3.Error as exc:
            raise BufferUnavailable(f"cannot record the ack in {self.path}: {exc}") from exc
        self._acked = through
        self._bytes -= int(freed[1])
        self._count -= int(freed[0])
        return int(freed[0])

    def acknowledged_through(self) -> int:
        """The highest acknowledged sequence, as committed."""
        return self._acked

    def leaf_hash(self, sequence: int) -> bytes | None:
        """The block's leaf hash as written with it; for a block buffered before leaf hashes
        were kept, computed from its envelope while it is still buffered."""
        try:
            row = self._db.execute("SELECT leaf_hash FROM leaf_hashes WHERE sequence = ?",
                                   (sequence,)).fetchone()
            if row is not None:
                return bytes(row[0])
            row = self._db.execute("SELECT envelope FROM blocks WHERE sequence = ?",
                                   (sequence,)).fetchone()
        except sqlite3.Error as exc:
            raise BufferUnavailable(f"cannot read leaf hash {sequence} from {self.path}: {exc}") from exc
        if row is None:
            return None
        try:
            return leaf_hash(pb.SignedBlock.FromString(bytes(row[0])).payload)
        except DecodeError:
            return None

    def forget_leaf_hashes(self, below_sequence: int) -> int:
        """Drop the leaf hashes of blocks before `below_sequence`."""
        try:
            with self._db:
                return self._db.execute("DELETE FROM leaf_hashes WHERE sequence < ?",
                                        (below_sequence,)).rowcount
        except sqlite3.Error as exc:
            raise BufferUnavailable(f"cannot prune leaf hashes in {self.path}: {exc}") from exc

    def depth(self) -> BufferDepth:
        """Blocks and bytes waiting, and when the oldest was made (no table scan)."""
        oldest = self._db.execute(
            "SELECT created_unix_ms FROM blocks ORDER BY sequence LIMIT 1").fetchone()
        return BufferDepth(self._count, self._bytes, None if oldest is None else int(oldest[0]),
                           self._acked)

    def close(self) -> None:
        """Close the database."""
        self._db.close()
