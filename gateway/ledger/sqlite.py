"""The SQLite ledger, the embedded default. One connection, used from one worker thread.

Blocks are append-only (triggers refuse UPDATE and DELETE); each collector's chain head is kept in
`chain_heads` and moved in the same transaction as the blocks it covers. Every commit is synced
(WAL, synchronous=FULL) before the gateway acknowledges anything.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from gateway.errors import EnrolmentError, LedgerError, RetryableLedgerError
from gateway.ledger.base import (
    AppendResult,
    CollectorKey,
    CollectorOverview,
    LedgerSummary,
    QuarantineEntry,
    StoredCheckpoint,
    StoredRow,
    VerifiedBlock,
)
from gateway.ledger.configs import CONFIG_KIND, config_document_with_digest
from gateway.ledger.nodes import NodeReader, in_requested_order, leaf_with_payload
from gateway.ledger.paging import keyset_pages
from gateway.ledger.placement import SIGNED_EVIDENCE_REASONS, budget_quarantine, plan_append
from gateway.ledger.selection import BlockSelection, selection_query
from gateway.translog.merkle import AsyncMerkleTree, MerkleTree, NodeId, NodeWrite, leaf_hash
from proto.chain import ChainHead, StoredBlock

__all__ = ["SCHEMA_VERSION", "SqliteLedger"]

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 5.0
PAGE_ROWS = 2000
MAX_APPENDS_PER_COMMIT = 500  # collectors' batches in one group commit
_NODES_PER_QUERY = 400  # (level, idx) pairs per statement, under SQLite's parameter limit
_T = TypeVar("_T")

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)
""",
    """
CREATE TABLE IF NOT EXISTS collectors (
    collector_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    public_key BLOB NOT NULL,
    enrolled_unix_ms INTEGER NOT NULL,
    PRIMARY KEY (collector_id, key_id)
)
""",
    """
CREATE TABLE IF NOT EXISTS blocks (
    entry_index INTEGER PRIMARY KEY AUTOINCREMENT,
    collector_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    hash BLOB NOT NULL,
    previous_hash BLOB NOT NULL,
    payload BLOB NOT NULL,
    signature BLOB NOT NULL,
    key_id TEXT NOT NULL,
    window_start_unix_ms INTEGER NOT NULL,
    window_end_unix_ms INTEGER NOT NULL,
    reading_count INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    transport TEXT NOT NULL,
    received_unix_ms INTEGER NOT NULL,
    UNIQUE (collector_id, sequence)
)
""",
    """
CREATE TABLE IF NOT EXISTS chain_heads (
    collector_id TEXT PRIMARY KEY,
    sequence INTEGER NOT NULL,
    hash BLOB NOT NULL,
    readings INTEGER NOT NULL,
    latest_window_start_unix_ms INTEGER NOT NULL
)
""",
    """
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_unix_ms INTEGER NOT NULL,
    transport TEXT NOT NULL,
    peer TEXT NOT NULL,
    collector_id TEXT NOT NULL,
    sequence INTEGER,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    raw BLOB NOT NULL,
    alarm INTEGER NOT NULL
)
""",
    # consumers' durable cursors (the time-series sink): the highest sequence delivered per
    # collector; added without a schema version step because it is additive (IF NOT EXISTS)
    # derived figures: the accountant's hourly documents, recomputed whenever late data arrives;
    # not part of the append-only record (the blocks are), so rows are replaced
    """
CREATE TABLE IF NOT EXISTS accounting_hours (
    plant_id TEXT NOT NULL,
    unit_id TEXT NOT NULL,
    hour_start_unix_ms INTEGER NOT NULL,
    document TEXT NOT NULL,
    computed_unix_ms INTEGER NOT NULL,
    PRIMARY KEY (plant_id, unit_id, hour_start_unix_ms)
)
""",
    """
CREATE TABLE IF NOT EXISTS sink_cursors (
    sink TEXT NOT NULL,
    collector_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    PRIMARY KEY (sink, collector_id)
)
""",
    # the transparency log (gateway.translog): complete-subtree hashes (level 0: leaf hashes),
    # which block each leaf is, the log's size and how far into `blocks` it has integrated (one
    # SQLite writer commits blocks in entry_index order), the key that signs its checkpoints
    """
CREATE TABLE IF NOT EXISTS log_nodes (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID
""",
    """
CREATE TABLE IF NOT EXISTS log_leaves (
    leaf_index INTEGER PRIMARY KEY,
    collector_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    UNIQUE (collector_id, sequence)
)
""",
    """
CREATE TABLE IF NOT EXISTS log_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    size INTEGER NOT NULL,
    entry_watermark INTEGER NOT NULL,
    verifier_key TEXT
)
""",
    "INSERT OR IGNORE INTO log_state VALUES (1, 0, 0, NULL)",
    """
CREATE TABLE IF NOT EXISTS log_checkpoints (
    tree_size INTEGER PRIMARY KEY,
    root_hash BLOB NOT NULL,
    note TEXT NOT NULL,
    published_unix_ms INTEGER NOT NULL
)
""",
    f"""
CREATE INDEX IF NOT EXISTS blocks_config ON blocks (collector_id, sequence)
WHERE kind = {CONFIG_KIND}
""",
    """
CREATE TRIGGER IF NOT EXISTS blocks_no_update BEFORE UPDATE ON blocks
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END
""",
    """
CREATE TRIGGER IF NOT EXISTS blocks_no_delete BEFORE DELETE ON blocks
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END
""",
)


@dataclass(frozen=True, slots=True)
class _Append:
    """One collector's batch waiting for the next group commit."""

    collector_id: str
    blocks: list[VerifiedBlock]
    transport: str
    peer: str
    received_unix_ms: int


class SqliteLedger:
    """Ledger in one SQLite file."""

    def __init__(self, *, path: Path, quarantine_max_rows: int = 100_000,
                 read_only: bool = False) -> None:
        self.path = path
        self.quarantine_max_rows = quarantine_max_rows
        self.read_only = read_only
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="ledger-sqlite")
        self._db: sqlite3.Connection | None = None
        self._heads: dict[str, ChainHead] = {}
        self._appends: list[tuple[_Append, asyncio.Future[AppendResult]]] = []
        self._appender: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"SqliteLedger(path={str(self.path)!r}, read_only={self.read_only})"

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        try:
            if self._db is None:
                self._db = self._connect()
            return fn(self._db)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise RetryableLedgerError(f"ledger {self.path} is busy: {exc}",
                                           retry_after_s=0.5) from exc
            raise LedgerError(f"ledger {self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"ledger {self.path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        if self.read_only:
            if not self.path.exists():
                raise LedgerError(f"no ledger at {self.path}")
            return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None,
                                   check_same_thread=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                             timeout=BUSY_TIMEOUT_S)
        # Switching to WAL takes an exclusive lock and SQLite may refuse it at once, without the
        # busy handler, while another process opens the same file: retry for a bounded time.
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        db.execute("PRAGMA synchronous=FULL")
        with db:
            db.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                db.execute(statement)
            row = db.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            elif row[0] != SCHEMA_VERSION:
                raise LedgerError(
                    f"ledger {self.path} has schema {row[0]}, this gateway knows {SCHEMA_VERSION}"
                )
        return db

    async def open(self) -> None:
        """Create or check the schema now rather than at the first request."""
        await self._run(lambda db: None)

    # --- keys ------------------------------------------------------------------------------

    async def enroll(self, key: CollectorKey) -> None:
        """Register a collector key; refuse a second, different key for the same collector."""
        def work(db: sqlite3.Connection) -> None:
            with db:
                db.execute("BEGIN IMMEDIATE")
                rows = db.execute("SELECT key_id FROM collectors WHERE collector_id = ?",
                                  (key.collector_id,)).fetchall()
                known = {r[0] for r in rows}
                if key.key_id in known:
                    return
                if known:
                    raise EnrolmentError(
                        f"collector {key.collector_id} is enrolled with key {sorted(known)[0]}; "
                        "key rotation is not supported yet: enrol the new key under a new collector id"
                    )
                db.execute("INSERT INTO collectors VALUES (?, ?, ?, ?)",
                           (key.collector_id, key.key_id, key.public_key, key.enrolled_unix_ms))
        await self._run(work)

    async def collector_keys(self) -> dict[str, CollectorKey]:
        """Every enrolled collector."""
        def work(db: sqlite3.Connection) -> dict[str, CollectorKey]:
            rows = db.execute(
                "SELECT collector_id, key_id, public_key, enrolled_unix_ms FROM collectors"
            ).fetchall()
            return {r[0]: CollectorKey(r[0], r[1], bytes(r[2]), int(r[3])) for r in rows}
        return await self._run(work)

    # --- chain -----------------------------------------------------------------------------

    @staticmethod
    def _read_head(db: sqlite3.Connection, collector_id: str) -> ChainHead:
        row = db.execute("SELECT sequence, hash FROM chain_heads WHERE collector_id = ?",
                         (collector_id,)).fetchone()
        return ChainHead.empty() if row is None else ChainHead(int(row[0]), bytes(row[1]))

    async def head(self, collector_id: str) -> ChainHead:
        """The collector's chain head."""
        return await self._run(lambda db: self._read_head(db, collector_id))

    async def append(
        self, collector_id: str, blocks: list[VerifiedBlock], *, transport: str, peer: str,
        received_unix_ms: int,
    ) -> AppendResult:
        """Place and store blocks in a synced transaction. Appends that arrive while one is
        being written (other collectors' batches) are committed together, each in a savepoint
        of its own (group commit): one disk sync for many collectors, and a request that fails
        fails alone."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[AppendResult] = loop.create_future()
        self._appends.append((_Append(collector_id, blocks, transport, peer, received_unix_ms),
                              done))
        if self._appender is None or self._appender.done():
            self._appender = loop.create_task(self._commit_appends(), name="ledger-appends")
        return await done

    async def _commit_appends(self) -> None:
        """Write the waiting appends, a group per transaction, until none waits."""
        while self._appends:
            group, self._appends = (self._appends[:MAX_APPENDS_PER_COMMIT],
                                    self._appends[MAX_APPENDS_PER_COMMIT:])
            requests = [request for request, _ in group]
            try:
                outcomes = await self._run(functools.partial(self._append_group,
                                                             requests=requests))
            except Exception as exc:  # the commit failed: so did every append of the group
                outcomes = [exc] * len(group)
            for (_, done), outcome in zip(group, outcomes, strict=True):
                if done.done():  # its caller gave up waiting
                    continue
                if isinstance(outcome, BaseException):
                    done.set_exception(outcome)
                else:
                    done.set_result(outcome)

    def _append_group(self, db: sqlite3.Connection, *,
                      requests: list[_Append]) -> list[AppendResult | Exception]:
        outcomes: list[AppendResult | Exception] = []
        with db:
            db.execute("BEGIN IMMEDIATE")
            for request in requests:
                db.execute("SAVEPOINT one_append")
                try:
                    outcomes.append(self._append_one(db, request))
                except sqlite3.DatabaseError as exc:  # this append only
                    db.execute("ROLLBACK TO one_append")
                    outcomes.append(LedgerError(f"ledger {self.path}: {exc}"))
                except Exception as exc:  # handed to the one caller it belongs to
                    db.execute("ROLLBACK TO one_append")
                    outcomes.append(exc)
                db.execute("RELEASE one_append")
        return outcomes

    def _append_one(self, db: sqlite3.Connection, request: _Append) -> AppendResult:
        """Place and store one collector's batch inside the group's transaction."""
        collector_id, blocks = request.collector_id, request.blocks
        transport, received_unix_ms = request.transport, request.received_unix_ms

        def stored_at(sequence: int) -> StoredBlock | None:
            found = db.execute(
                "SELECT hash, previous_hash FROM blocks WHERE collector_id = ? AND sequence = ?",
                (collector_id, sequence)).fetchone()
            return None if found is None else StoredBlock(bytes(found[0]), bytes(found[1]))

        plan = plan_append(collector_id=collector_id, blocks=blocks,
                           head=self._read_head(db, collector_id), stored_at=stored_at,
                           transport=transport, peer=request.peer,
                           received_unix_ms=received_unix_ms)
        if plan.new_blocks:
            db.executemany(
                "INSERT INTO blocks (collector_id, sequence, hash, previous_hash, payload, "
                "signature, key_id, window_start_unix_ms, window_end_unix_ms, "
                "reading_count, kind, transport, received_unix_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(collector_id, b.sequence, b.hash, b.previous_hash, b.payload, b.signature,
                  b.key_id, b.window_start_unix_ms, b.window_end_unix_ms, b.reading_count,
                  b.kind, transport, received_unix_ms) for b in plan.new_blocks])
            db.execute(
                "INSERT INTO chain_heads VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (collector_id) DO UPDATE SET sequence = excluded.sequence, "
                "hash = excluded.hash, readings = readings + excluded.readings, "
                "latest_window_start_unix_ms = MAX(latest_window_start_unix_ms, "
                "excluded.latest_window_start_unix_ms)",
                (collector_id, plan.head.sequence, plan.head.hash, plan.readings,
                 plan.latest_window_start_unix_ms))
        kept = self._insert_quarantine(db, [plan.refused] if plan.refused else [])
        return AppendResult(plan.head, plan.placements, plan.refused, kept == 1)

    # --- quarantine ------------------------------------------------------------------------

    def _insert_quarantine(self, db: sqlite3.Connection, entries: list[QuarantineEntry]) -> int:
        if not entries:
            return 0
        signed = sorted(SIGNED_EVIDENCE_REASONS)
        (count,) = db.execute(
            "SELECT COUNT(*) FROM quarantine WHERE reason NOT IN (?, ?, ?, ?)", signed).fetchone()
        kept = budget_quarantine(entries, unsigned_stored=int(count),
                                 max_unsigned_rows=self.quarantine_max_rows)
        db.executemany(
            "INSERT INTO quarantine (received_unix_ms, transport, peer, collector_id, sequence, "
            "reason, detail, raw, alarm) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(e.received_unix_ms, e.transport, e.peer, e.collector_id, e.sequence, e.reason,
              e.detail, e.raw, int(e.alarm)) for e in kept])
        return len(kept)

    async def quarantine(self, entries: list[QuarantineEntry]) -> int:
        """Keep rejected input; return how many fit under the cap."""
        def work(db: sqlite3.Connection) -> int:
            with db:
                db.execute("BEGIN IMMEDIATE")
                return self._insert_quarantine(db, entries)
        return await self._run(work)

    async def quarantine_counts(self) -> dict[str, int]:
        """Quarantined entries by reason."""
        def work(db: sqlite3.Connection) -> dict[str, int]:
            rows = db.execute("SELECT reason, COUNT(*) FROM quarantine GROUP BY reason").fetchall()
            return {str(r[0]): int(r[1]) for r in rows}
        return await self._run(work)

    async def quarantine_entries(self) -> list[QuarantineEntry]:
        """Every quarantined entry, oldest first."""
        def work(db: sqlite3.Connection) -> list[QuarantineEntry]:
            rows = db.execute(
                "SELECT received_unix_ms, transport, peer, collector_id, sequence, reason, detail, "
                "raw, alarm FROM quarantine ORDER BY id").fetchall()
            return [QuarantineEntry(int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], bytes(r[7]),
                                    bool(r[8])) for r in rows]
        return await self._run(work)

    # --- reading ---------------------------------------------------------------------------

    async def iter_blocks(self, collector_id: str | None = None) -> AsyncIterator[StoredRow]:
        """Every stored block, by collector and sequence, a page at a time."""
        def page(db: sqlite3.Connection, after: tuple[str, int]) -> list[StoredRow]:
            if collector_id is None:
                rows = db.execute(
                    "SELECT entry_index, collector_id, sequence, hash, payload, signature, "
                    "key_id FROM blocks WHERE (collector_id, sequence) > (?, ?) "
                    "ORDER BY collector_id, sequence LIMIT ?", (*after, PAGE_ROWS)).fetchall()
            else:
                rows = db.execute(
                    "SELECT entry_index, collector_id, sequence, hash, payload, signature, "
                    "key_id FROM blocks WHERE collector_id = ? AND sequence > ? "
                    "ORDER BY sequence LIMIT ?", (collector_id, after[1], PAGE_ROWS)).fetchall()
            return [StoredRow.from_row(r) for r in rows]
        async for row in keyset_pages(
                lambda after: self._run(functools.partial(page, after=after)),
                start=("", -1), key=lambda row: (row.collector_id, row.sequence), limit=PAGE_ROWS):
            yield row

    async def summary(self) -> LedgerSummary:
        """Totals from the chain heads (cheap: no scan of the blocks)."""
        def work(db: sqlite3.Connection) -> LedgerSummary:
            blocks, readings, collectors, latest = db.execute(
                "SELECT COALESCE(SUM(sequence), 0), COALESCE(SUM(readings), 0), COUNT(*), "
                "MAX(latest_window_start_unix_ms) FROM chain_heads").fetchone()
            (quarantined,) = db.execute("SELECT COUNT(*) FROM quarantine").fetchone()
            return LedgerSummary(int(blocks), int(readings), int(collectors), int(quarantined),
                                 None if latest is None else int(latest))
        return await self._run(work)

    async def collectors_overview(self) -> dict[str, CollectorOverview]:
        """Per enrolled collector: its chain head, readings, newest window and quarantine."""
        def work(db: sqlite3.Connection) -> dict[str, CollectorOverview]:
            rows = db.execute(
                "SELECT c.collector_id, COALESCE(h.sequence, 0), COALESCE(h.readings, 0), "
                "h.latest_window_start_unix_ms, "
                "(SELECT COUNT(*) FROM quarantine q WHERE q.collector_id = c.collector_id) "
                "FROM (SELECT DISTINCT collector_id FROM collectors) c "
                "LEFT JOIN chain_heads h ON h.collector_id = c.collector_id").fetchall()
            return dict(CollectorOverview.from_row(r) for r in rows)
        return await self._run(work)

    # --- consumers that follow the ledger --------------------------------------------------

    async def heads(self) -> dict[str, ChainHead]:
        """Every collector's chain head."""
        def work(db: sqlite3.Connection) -> dict[str, ChainHead]:
            rows = db.execute("SELECT collector_id, sequence, hash FROM chain_heads "
                              "WHERE sequence > 0").fetchall()
            return {r[0]: ChainHead(int(r[1]), bytes(r[2])) for r in rows}
        return await self._run(work)

    async def read_blocks(self, collector_id: str, *, after_sequence: int,
                          limit: int) -> list[StoredRow]:
        """Up to `limit` blocks of one collector after a sequence, in chain order."""
        def work(db: sqlite3.Connection) -> list[StoredRow]:
            rows = db.execute(
                "SELECT entry_index, collector_id, sequence, hash, payload, signature, "
                "key_id FROM blocks WHERE collector_id = ? AND sequence > ? ORDER BY sequence LIMIT ?",
                (collector_id, after_sequence, limit)).fetchall()
            return [StoredRow.from_row(r) for r in rows]
        return await self._run(work)

    async def select_blocks(self, collector_id: str, selection: BlockSelection, *,
                            after_sequence: int, limit: int) -> list[StoredRow]:
        """Up to `limit` selected blocks of one collector after a sequence, in chain order."""
        query, args = selection_query(collector_id, selection, after_sequence=after_sequence,
                                      limit=limit, placeholder=lambda _n: "?")

        def work(db: sqlite3.Connection) -> list[StoredRow]:
            return [StoredRow.from_row(r) for r in db.execute(query, args).fetchall()]
        return await self._run(work)

    async def find_config(self, collector_id: str, digest: bytes) -> bytes | None:
        """The document of the collector's CONFIG block with this digest, newest first."""
        def work(db: sqlite3.Connection) -> bytes | None:
            rows = db.execute(
                f"SELECT payload FROM blocks WHERE collector_id = ? AND kind = {CONFIG_KIND} "  # noqa: S608 - a constant
                "ORDER BY sequence DESC", (collector_id,))
            return config_document_with_digest((bytes(r[0]) for r in rows), digest)
        return await self._run(work)

    async def put_accounting_hours(self, plant_id: str, unit_id: str,
                                   hours: Sequence[tuple[int, str]], *, computed_unix_ms: int) -> None:
        """Store (replace) a unit's hourly accounting documents, keyed by hour start."""
        def work(db: sqlite3.Connection) -> None:
            with db:
                db.executemany(
                    "INSERT INTO accounting_hours VALUES (?, ?, ?, ?, ?) ON CONFLICT (plant_id, unit_id, "
                    "hour_start_unix_ms) DO UPDATE SET document = excluded.document, "
                    "computed_unix_ms = excluded.computed_unix_ms",
                    [(plant_id, unit_id, start, document, computed_unix_ms) for start, document in hours])
        await self._run(work)

    async def accounting_hours(self, plant_id: str, unit_id: str, *, start_unix_ms: int,
                               end_unix_ms: int) -> list[tuple[int, str]]:
        """A unit's stored hourly documents with starts in [start, end), in time order."""
        def work(db: sqlite3.Connection) -> list[tuple[int, str]]:
            try:
                rows = db.execute(
                    "SELECT hour_start_unix_ms, document FROM accounting_hours WHERE plant_id = ? AND "
                    "unit_id = ? AND hour_start_unix_ms >= ? AND hour_start_unix_ms < ? "
                    "ORDER BY hour_start_unix_ms", (plant_id, unit_id, start_unix_ms, end_unix_ms)).fetchall()
            except sqlite3.OperationalError:  # a ledger opened read-only from before the table
                return []
            return [(int(r[0]), str(r[1])) for r in rows]
        return await self._run(work)

    async def sink_positions(self, sink: str) -> dict[str, int]:
        """A consumer's cursor per collector."""
        def work(db: sqlite3.Connection) -> dict[str, int]:
            rows = db.execute("SELECT collector_id, sequence FROM sink_cursors WHERE sink = ?",
                              (sink,)).fetchall()
            return {r[0]: int(r[1]) for r in rows}
        return await self._run(work)

    async def advance_sink(self, sink: str, collector_id: str, *, from_sequence: int,
                           to_sequence: int) -> bool:
        """Compare-and-set a consumer's cursor in one transaction."""
        if to_sequence < from_sequence:
            raise ValueError(f"cursor {sink!r} of {collector_id} cannot move back from "
                             f"{from_sequence} to {to_sequence}")

        def work(db: sqlite3.Connection) -> bool:
            with db:
                db.execute("BEGIN IMMEDIATE")
                row = db.execute("SELECT sequence FROM sink_cursors WHERE sink = ? AND "
                                 "collector_id = ?", (sink, collector_id)).fetchone()
                if (0 if row is None else int(row[0])) != from_sequence:
                    return False
                head = self._read_head(db, collector_id).sequence
                if to_sequence > head:
                    raise ValueError(f"cursor {sink!r} of {collector_id} cannot move past the "
                                     f"chain head ({to_sequence} > {head})")
                db.execute("INSERT INTO sink_cursors VALUES (?, ?, ?) ON CONFLICT (sink, "
                           "collector_id) DO UPDATE SET sequence = excluded.sequence",
                           (sink, collector_id, to_sequence))
                return True
        return await self._run(work)

    # --- the transparency log ------------------------------------------------------------------

    async def log_integrate(self, *, max_leaves: int) -> tuple[int, int]:
        """Append the next stored blocks (entry order) to the log in one transaction."""
        def work(db: sqlite3.Connection) -> tuple[int, int]:
            with db:
                db.execute("BEGIN IMMEDIATE")
                size, watermark = db.execute(
                    "SELECT size, entry_watermark FROM log_state WHERE id = 1").fetchone()
                rows = db.execute(
                    "SELECT entry_index, collector_id, sequence, payload FROM blocks "
                    "WHERE entry_index > ? ORDER BY entry_index LIMIT ?",
                    (watermark, max_leaves)).fetchall()
                if not rows:
                    return int(size), 0
                tree = MerkleTree(store=_SqliteNodes(db, int(size)))
                grown = tree.append_many(leaf_hash(bytes(r[3])) for r in rows)
                db.executemany("INSERT INTO log_leaves VALUES (?, ?, ?)",
                               [(int(size) + i, r[1], r[2]) for i, r in enumerate(rows)])
                db.execute("UPDATE log_state SET size = ?, entry_watermark = ? WHERE id = 1",
                           (grown, rows[-1][0]))
                return grown, len(rows)
        return await self._run(work)

    def log_tree(self) -> AsyncMerkleTree:
        """The log's tree, read through the worker thread."""
        return AsyncMerkleTree(store=NodeReader(
            owner=self,
            size=lambda: self._run(
                lambda db: int(db.execute("SELECT size FROM log_state WHERE id = 1").fetchone()[0])),
            nodes=lambda wanted: self._run(lambda db: _get_nodes(db, wanted))))

    async def log_leaf_indexes(self, collector_id: str, first_sequence: int,
                               last_sequence: int) -> dict[int, int]:
        """Sequence -> leaf index for the collector's blocks in the range that are in the log."""
        def work(db: sqlite3.Connection) -> dict[int, int]:
            rows = db.execute("SELECT sequence, leaf_index FROM log_leaves WHERE collector_id = ? "
                              "AND sequence BETWEEN ? AND ?",
                              (collector_id, first_sequence, last_sequence)).fetchall()
            return {int(r[0]): int(r[1]) for r in rows}
        return await self._run(work)

    async def log_inclusion_proofs(self, collector_id: str, first_sequence: int,
                                   last_sequence: int, *, tree_size: int
                                   ) -> list[tuple[int, int, list[bytes]]]:
        """Audit paths of the collector's logged blocks in a range, in one worker call."""
        def work(db: sqlite3.Connection) -> list[tuple[int, int, list[bytes]]]:
            (size,) = db.execute("SELECT size FROM log_state WHERE id = 1").fetchone()
            rows = db.execute("SELECT sequence, leaf_index FROM log_leaves WHERE collector_id = ? "
                              "AND sequence BETWEEN ? AND ? AND leaf_index < ? ORDER BY sequence",
                              (collector_id, first_sequence, last_sequence, tree_size)).fetchall()
            tree = MerkleTree(store=_SqliteNodes(db, int(size)))
            paths = tree.inclusion_proofs([int(r[1]) for r in rows], tree_size)
            return [(int(r[0]), int(r[1]), path) for r, path in zip(rows, paths, strict=True)]
        return await self._run(work)

    async def log_latest_leaves(self, collector_ids: Sequence[str], *, below_size: int
                                ) -> dict[str, tuple[int, int]]:
        """Each collector's newest block among the first `below_size` leaves, in one worker call."""
        def work(db: sqlite3.Connection) -> dict[str, tuple[int, int]]:
            found: dict[str, tuple[int, int]] = {}
            for collector_id in dict.fromkeys(collector_ids):
                row = db.execute("SELECT sequence, leaf_index FROM log_leaves WHERE "
                                 "collector_id = ? AND leaf_index < ? ORDER BY sequence DESC "
                                 "LIMIT 1", (collector_id, below_size)).fetchone()
                if row is not None:
                    found[collector_id] = (int(row[0]), int(row[1]))
            return found
        return await self._run(work)

    async def log_leaf(self, leaf_index: int) -> tuple[str, int] | None:
        """Which block a leaf is."""
        def work(db: sqlite3.Connection) -> tuple[str, int] | None:
            row = db.execute("SELECT collector_id, sequence FROM log_leaves WHERE leaf_index = ?",
                             (leaf_index,)).fetchone()
            return None if row is None else (str(row[0]), int(row[1]))
        return await self._run(work)

    async def iter_log_leaves(self) -> AsyncIterator[tuple[int, str, int, bytes]]:
        """Every leaf in log order with its block's payload, a page at a time."""
        def page(db: sqlite3.Connection, after: int) -> list[tuple[int, str, int, bytes]]:
            rows = db.execute(
                "SELECT l.leaf_index, l.collector_id, l.sequence, b.payload FROM log_leaves l "
                "LEFT JOIN blocks b ON b.collector_id = l.collector_id AND b.sequence = "
                "l.sequence WHERE l.leaf_index > ? ORDER BY l.leaf_index LIMIT ?",
                (after, PAGE_ROWS)).fetchall()
            return [leaf_with_payload(r) for r in rows]
        async for row in keyset_pages(
                lambda after: self._run(functools.partial(page, after=after)),
                start=-1, key=lambda row: row[0], limit=PAGE_ROWS):
            yield row

    async def iter_log_nodes(self, level: int) -> AsyncIterator[tuple[int, bytes]]:
        """One level's stored nodes in index order."""
        def page(db: sqlite3.Connection, after: int) -> list[tuple[int, bytes]]:
            rows = db.execute("SELECT idx, hash FROM log_nodes WHERE level = ? AND idx > ? "
                              "ORDER BY idx LIMIT ?", (level, after, PAGE_ROWS * 10)).fetchall()
            return [(int(r[0]), bytes(r[1])) for r in rows]
        async for row in keyset_pages(
                lambda after: self._run(functools.partial(page, after=after)),
                start=-1, key=lambda row: row[0], limit=PAGE_ROWS * 10):
            yield row

    async def log_unqueued_blocks(self) -> list[tuple[str, int]]:
        """Blocks the log has passed (entry_index at or below its watermark) that are not leaves
        (none in a sound ledger): up to 100, by collector and sequence."""
        def work(db: sqlite3.Connection) -> list[tuple[str, int]]:
            rows = db.execute(
                "SELECT b.collector_id, b.sequence FROM blocks b, log_state s WHERE s.id = 1 AND "
                "b.entry_index <= s.entry_watermark AND NOT EXISTS (SELECT 1 FROM log_leaves l "
                "WHERE l.collector_id = b.collector_id AND l.sequence = b.sequence) "
                "ORDER BY b.collector_id, b.sequence LIMIT 100").fetchall()
            return [(str(r[0]), int(r[1])) for r in rows]
        return await self._run(work)

    async def log_recorded_key(self) -> str | None:
        """The recorded verifier key, if any."""
        def work(db: sqlite3.Connection) -> str | None:
            try:
                row = db.execute("SELECT verifier_key FROM log_state WHERE id = 1").fetchone()
            except sqlite3.OperationalError:  # a ledger opened read-only from before the log
                return None
            return None if row is None or row[0] is None else str(row[0])
        return await self._run(work)

    async def log_verifier_key(self, verifier_key: str) -> str:
        """Record the log's verifier key once; return the recorded one."""
        def work(db: sqlite3.Connection) -> str:
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.execute("UPDATE log_state SET verifier_key = ? WHERE id = 1 AND verifier_key "
                           "IS NULL", (verifier_key,))
                return str(db.execute("SELECT verifier_key FROM log_state").fetchone()[0])
        return await self._run(work)

    async def put_checkpoint(self, checkpoint: StoredCheckpoint) -> StoredCheckpoint:
        """Keep a checkpoint unless one of its size is kept already; return the kept one."""
        def work(db: sqlite3.Connection) -> StoredCheckpoint:
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.execute("INSERT OR IGNORE INTO log_checkpoints VALUES (?, ?, ?, ?)",
                           (checkpoint.tree_size, checkpoint.root_hash, checkpoint.note,
                            checkpoint.published_unix_ms))
                return _checkpoints(db, "WHERE tree_size = ?", (checkpoint.tree_size,), 1)[0]
        return await self._run(work)

    async def checkpoint(self, tree_size: int | None = None) -> StoredCheckpoint | None:
        """The checkpoint of a size, or the latest."""
        def work(db: sqlite3.Connection) -> StoredCheckpoint | None:
            found = (_checkpoints(db, "", (), 1) if tree_size is None
                     else _checkpoints(db, "WHERE tree_size = ?", (tree_size,), 1))
            return found[0] if found else None
        return await self._run(work)

    async def checkpoints(self, *, limit: int = 100, before_size: int | None = None
                          ) -> list[StoredCheckpoint]:
        """Published checkpoints, newest first."""
        def work(db: sqlite3.Connection) -> list[StoredCheckpoint]:
            if before_size is None:
                return _checkpoints(db, "", (), limit)
            return _checkpoints(db, "WHERE tree_size < ?", (before_size,), limit)
        return await self._run(work)

    async def close(self) -> None:
        """Close the connection and the worker thread."""
        def work(db: sqlite3.Connection) -> None:
            db.close()
        if self._appender is not None and not self._appender.done():
            await self._appender  # the appends already accepted are written first
        if self._db is not None:
            await self._run(work)
            self._db = None
        self._executor.shutdown(wait=True)



def _checkpoints(db: sqlite3.Connection, where: str, args: tuple[int, ...],
                 limit: int) -> list[StoredCheckpoint]:
    rows = db.execute(
        f"SELECT tree_size, root_hash, note, published_unix_ms FROM log_checkpoints {where} "  # noqa: S608 - fixed clauses
        "ORDER BY tree_size DESC LIMIT ?", (*args, limit)).fetchall()
    return [StoredCheckpoint(int(r[0]), bytes(r[1]), str(r[2]), int(r[3])) for r in rows]


def _get_nodes(db: sqlite3.Connection, nodes: Sequence[NodeId]) -> list[bytes]:
    found: dict[NodeId, bytes] = {}
    for start in range(0, len(nodes), _NODES_PER_QUERY):
        chunk = nodes[start:start + _NODES_PER_QUERY]
        values = ", ".join("(?, ?)" for _ in chunk)
        rows = db.execute(
            f"SELECT n.level, n.idx, n.hash FROM (VALUES {values}) AS w CROSS JOIN log_nodes n "  # noqa: S608 - placeholders only
            "ON n.level = w.column1 AND n.idx = w.column2",
            [part for node in chunk for part in node]).fetchall()
        found.update(((int(r[0]), int(r[1])), bytes(r[2])) for r in rows)
    return in_requested_order(nodes, found)


class _SqliteNodes:
    """The log's `HashStore` inside one of the worker thread's transactions."""

    def __init__(self, db: sqlite3.Connection, size: int) -> None:
        self._db = db
        self._size = size

    def leaf_count(self) -> int:
        return self._size

    def get(self, nodes: Sequence[NodeId]) -> list[bytes]:
        return _get_nodes(self._db, nodes)

    def put(self, nodes: Sequence[NodeWrite], *, leaf_count: int) -> None:
        # the primary key refuses a node written twice: a second writer fails, it cannot fork
        self._db.executemany("INSERT INTO log_nodes VALUES (?, ?, ?)", nodes)
        self._size = leaf_count
