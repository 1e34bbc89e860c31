"""The PostgreSQL ledger, for several gateway processes (ingest workers) writing one store.

Same tables, rules and answers as the SQLite ledger (`gateway.ledger.sqlite`); both place a batch
with `gateway.ledger.placement.plan_append`. asyncpg is imported here and nowhere else; its errors
become `LedgerError` (or `RetryableLedgerError`, with `retry_after_s`, for a server that is
unreachable, restarting or out of connections and for transaction conflicts) at this boundary.

Concurrency. Each append is one READ COMMITTED transaction that first locks the collector's row in
`chain_heads` (created with sequence 0 by `INSERT ... ON CONFLICT DO NOTHING` on the collector's
first append, then `SELECT ... FOR UPDATE`). Workers appending to one collector queue on that row;
workers appending to different collectors never wait for each other. Every statement after the
lock sees what the previous holder committed, so a batch is placed against the true head and a
block offered by two workers is stored once and acknowledged to both. Enrolment and the quarantine
cap take short table locks that only other enrolments / quarantine writes wait for.

Migrations. `MIGRATIONS` is ordered; `schema_version` has one row per step applied. A writable
ledger applies the missing steps when it opens, in one transaction under a transaction-scoped
advisory lock, so gateways starting together apply each step exactly once (PostgreSQL's DDL is
transactional: a step is applied whole or not at all). A read-only ledger only checks the version.

Time partitioning (not done yet) would fit as a later migration: `blocks` becomes
`PARTITION BY RANGE (window_start_unix_ms)` with monthly partitions created ahead of time. Unique
indexes on a partitioned table must include the partition key, so `(collector_id, sequence)`
uniqueness would rest on the chain-head row lock (which already serializes every writer of a
collector) plus a per-partition unique index, and retention would detach archived partitions,
which the append-only triggers do not see: that must stay an audited operator action.

Query parameters of the URL are passed to the server as settings, e.g. `?search_path=stackline`
puts the ledger in its own schema.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

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
from gateway.ledger.placement import (
    SIGNED_EVIDENCE_REASONS,
    budget_quarantine,
    plan_append,
    repeated_sequences,
)
from gateway.ledger.selection import BlockSelection, selection_query
from gateway.translog.merkle import AsyncMerkleTree, NodeId, NodeWrite, leaf_hash
from proto.chain import ChainHead, StoredBlock
from proto.wire import GENESIS_HASH

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Migration", "PostgresLedger"]

PAGE_ROWS = 2000
# pg_advisory_xact_lock key that serializes schema migrations in one database ("stackled")
MIGRATION_LOCK_KEY = int.from_bytes(b"stackled", "big")
# a transaction conflict clears as soon as the other transaction ends; a server that is down or
# restarting takes longer
CONFLICT_RETRY_AFTER_S = 0.1
UNREACHABLE_RETRY_AFTER_S = 1.0
_T = TypeVar("_T")
# Connections, pools and records are typed `Any`: asyncpg ships no type information. Every value
# read from them is converted (int(), bytes()) before it leaves this module.


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step; applied once, in order, recorded in `schema_version`."""

    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "keys, blocks (append-only), chain heads, quarantine", (
        # COLLATE "C": collector ids sort byte-wise, as in SQLite, whatever the database's locale
        """
CREATE TABLE collectors (
    collector_id TEXT COLLATE "C" NOT NULL,
    key_id TEXT NOT NULL,
    public_key BYTEA NOT NULL,
    enrolled_unix_ms BIGINT NOT NULL,
    PRIMARY KEY (collector_id, key_id)
)
""",
        """
CREATE TABLE blocks (
    entry_index BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    collector_id TEXT COLLATE "C" NOT NULL,
    sequence BIGINT NOT NULL,
    hash BYTEA NOT NULL,
    previous_hash BYTEA NOT NULL,
    payload BYTEA NOT NULL,
    signature BYTEA NOT NULL,
    key_id TEXT NOT NULL,
    window_start_unix_ms BIGINT NOT NULL,
    window_end_unix_ms BIGINT NOT NULL,
    reading_count INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    transport TEXT NOT NULL,
    received_unix_ms BIGINT NOT NULL,
    UNIQUE (collector_id, sequence)
)
""",
        # a row with sequence 0 is a collector whose chain is locked but still empty
        """
CREATE TABLE chain_heads (
    collector_id TEXT COLLATE "C" PRIMARY KEY,
    sequence BIGINT NOT NULL,
    hash BYTEA NOT NULL,
    readings BIGINT NOT NULL,
    latest_window_start_unix_ms BIGINT NOT NULL
)
""",
        """
CREATE TABLE quarantine (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_unix_ms BIGINT NOT NULL,
    transport TEXT NOT NULL,
    peer TEXT NOT NULL,
    collector_id TEXT NOT NULL,
    sequence BIGINT,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    raw BYTEA NOT NULL,
    alarm BOOLEAN NOT NULL
)
""",
        """
CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END
$$
""",
        # statement-level: any UPDATE, DELETE or TRUNCATE of blocks is refused, matching rows or not
        """
CREATE TRIGGER blocks_no_update BEFORE UPDATE ON blocks
FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()
""",
        """
CREATE TRIGGER blocks_no_delete BEFORE DELETE ON blocks
FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()
""",
        """
CREATE TRIGGER blocks_no_truncate BEFORE TRUNCATE ON blocks
FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()
""",
    )),
    Migration(2, "sink cursors; index of configuration blocks", (
        # a consumer's (the time-series sink's) durable cursor: per collector, not one global
        # entry_index, because entry_index values commit out of order across collectors while a
        # collector's sequences commit in order under its chain-head lock
        """
CREATE TABLE sink_cursors (
    sink TEXT COLLATE "C" NOT NULL,
    collector_id TEXT COLLATE "C" NOT NULL,
    sequence BIGINT NOT NULL,
    PRIMARY KEY (sink, collector_id)
)
""",
        # CONFIG blocks are few; find_config reads them without scanning the collector's chain
        f"""
CREATE INDEX blocks_config ON blocks (collector_id, sequence) WHERE kind = {CONFIG_KIND}
""",
    )),
    Migration(3, "accounting hours", (
        # derived figures, recomputed when late data arrives: replaced, not appended
        """
CREATE TABLE accounting_hours (
    plant_id TEXT COLLATE "C" NOT NULL,
    unit_id TEXT COLLATE "C" NOT NULL,
    hour_start_unix_ms BIGINT NOT NULL,
    document TEXT NOT NULL,
    computed_unix_ms BIGINT NOT NULL,
    PRIMARY KEY (plant_id, unit_id, hour_start_unix_ms)
)
""",
    )),
    Migration(4, "transparency log: nodes, leaves, queue, checkpoints", (
        # other gateways may be storing blocks while this one migrates (a rolling upgrade): hold
        # their inserts until the queue is filled and its trigger is in place, so that no block
        # committed in between is left out of the log
        "LOCK TABLE blocks IN SHARE ROW EXCLUSIVE MODE",
        # complete-subtree hashes (level 0: leaf hashes); written once, never changed
        """
CREATE TABLE log_nodes (
    level SMALLINT NOT NULL,
    idx BIGINT NOT NULL,
    hash BYTEA NOT NULL,
    PRIMARY KEY (level, idx)
)
""",
        """
CREATE TABLE log_leaves (
    leaf_index BIGINT PRIMARY KEY,
    collector_id TEXT COLLATE "C" NOT NULL,
    sequence BIGINT NOT NULL,
    UNIQUE (collector_id, sequence)
)
""",
        # the row an integrator locks: one writer of the tree at a time across gateways
        """
CREATE TABLE log_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    size BIGINT NOT NULL,
    verifier_key TEXT
)
""",
        "INSERT INTO log_state VALUES (1, 0, NULL)",
        # blocks stored but not yet in the log: entry_index values commit out of order across
        # collectors, so the log takes what has committed, in entry order, from this queue
        "CREATE TABLE log_queue (entry_index BIGINT PRIMARY KEY)",
        "INSERT INTO log_queue SELECT entry_index FROM blocks",
        """
CREATE FUNCTION log_enqueue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO log_queue SELECT entry_index FROM new_rows;
    RETURN NULL;
END
$$
""",
        """
CREATE TRIGGER blocks_enqueue AFTER INSERT ON blocks REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION log_enqueue()
""",
        """
CREATE TABLE log_checkpoints (
    tree_size BIGINT PRIMARY KEY,
    root_hash BYTEA NOT NULL,
    note TEXT NOT NULL,
    published_unix_ms BIGINT NOT NULL
)
""",
    )),
)
SCHEMA_VERSION = MIGRATIONS[-1].version

_CREATE_SCHEMA_VERSION = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_unix_ms BIGINT NOT NULL
)
"""

_BLOCK_COLUMNS = ("collector_id", "sequence", "hash", "previous_hash", "payload", "signature",
                  "key_id", "window_start_unix_ms", "window_end_unix_ms", "reading_count", "kind",
                  "transport", "received_unix_ms")
_LOCK_HEAD = "SELECT sequence, hash FROM chain_heads WHERE collector_id = $1 FOR UPDATE"


def redact(url: str) -> str:
    """The URL without its password (in the authority or as a query parameter), for messages."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, _, hostinfo = netloc.rpartition("@")
            netloc = f"{userinfo.partition(':')[0]}:***@{hostinfo}"
        query = urlencode([(k, "***" if k == "password" else v)
                           for k, v in parse_qsl(parts.query, keep_blank_values=True)])
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "(unparsable ledger URL)"


class PostgresLedger:
    """Ledger in one PostgreSQL database (or schema), shared by any number of gateway processes."""

    def __init__(self, *, url: str, quarantine_max_rows: int = 100_000, read_only: bool = False,
                 pool_max_size: int = 10, connect_timeout_s: float = 10.0,
                 command_timeout_s: float = 60.0) -> None:
        self.url = url
        self.location = redact(url)
        self.quarantine_max_rows = quarantine_max_rows
        self.read_only = read_only
        self.pool_max_size = pool_max_size
        self.connect_timeout_s = connect_timeout_s
        self.command_timeout_s = command_timeout_s
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"PostgresLedger(url={self.location!r}, read_only={self.read_only})"

    # --- the boundary: pool, schema, errors ----------------------------------------------------

    async def open(self) -> None:
        """Connect, and create, migrate or check the schema now rather than at the first request."""
        try:
            await self._connected()
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise self._translate(exc) from exc

    async def _connected(self) -> Any:  # asyncpg.Pool: asyncpg ships no type information
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._closed:
                raise LedgerError(f"ledger {self.location} is closed")
            if self._pool is None:
                self._pool = await self._create_pool()
        return self._pool

    async def _create_pool(self) -> Any:
        settings = {"application_name": "stackline-gateway"}
        if self.read_only:
            # the server refuses every write in every transaction of this pool
            settings["default_transaction_read_only"] = "on"
        try:
            pool = await asyncpg.create_pool(
                self.url, min_size=1, max_size=self.pool_max_size, server_settings=settings,
                timeout=self.connect_timeout_s, command_timeout=self.command_timeout_s)
        except ValueError as exc:  # a malformed URL (asyncpg's own errors are not ValueErrors)
            if isinstance(exc, asyncpg.InterfaceError):
                raise
            raise LedgerError(f"ledger URL {self.location} is not usable: {exc}") from exc
        try:
            async with pool.acquire() as conn:
                if self.read_only:
                    await self._check_schema(conn)
                else:
                    await self._migrate(conn)
        except BaseException:
            pool.terminate()
            raise
        return pool

    async def _migrate(self, conn: Any) -> None:
        async with conn.transaction():
            # concurrent CREATE TABLE IF NOT EXISTS can still collide: take the lock first
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            await conn.execute(_CREATE_SCHEMA_VERSION)
            current = int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))
            self._check_version(current)
            for migration in MIGRATIONS[current:]:
                for statement in migration.statements:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO schema_version VALUES ($1, $2, $3)",
                                   migration.version, migration.description,
                                   int(time.time() * 1000))

    async def _check_schema(self, conn: Any) -> None:
        if await conn.fetchval("SELECT to_regclass('schema_version')") is None:
            raise LedgerError(f"no ledger at {self.location}: the database holds no ledger schema "
                              "(a writable gateway creates it)")
        current = int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))
        self._check_version(current)
        if current < SCHEMA_VERSION:
            raise LedgerError(f"ledger {self.location} has schema {current}, this gateway knows "
                              f"{SCHEMA_VERSION}: open it writable once to migrate it")

    def _check_version(self, current: int) -> None:
        if current > SCHEMA_VERSION:
            raise LedgerError(f"ledger {self.location} has schema {current}, this gateway knows "
                              f"only up to {SCHEMA_VERSION}: upgrade the gateway")

    async def _run(self, work: Callable[[Any], Awaitable[_T]]) -> _T:
        """Run `work` on a pooled connection, translating the driver's errors."""
        try:
            pool = await self._connected()
            async with pool.acquire() as conn:
                return await work(conn)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: BaseException) -> LedgerError:
        where = f"ledger {self.location}"
        if isinstance(exc, asyncpg.TransactionRollbackError | asyncpg.LockNotAvailableError):
            # serialization failure or deadlock: the transaction was rolled back whole
            return RetryableLedgerError(f"{where}: transaction conflict, retry: {exc}",
                                        retry_after_s=CONFLICT_RETRY_AFTER_S)
        if isinstance(exc, asyncpg.InvalidCatalogNameError):
            database = urlsplit(self.url).path.lstrip("/") or "(default)"
            return LedgerError(f"no ledger at {self.location}: database {database!r} does not exist "
                               "(create it with createdb; the gateway creates the tables)")
        if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
            return LedgerError(f"{where}: the server refused the login: {exc}")
        if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
            return LedgerError(f"{where} is open read-only: {exc}")
        if isinstance(exc, asyncpg.PostgresConnectionError | asyncpg.OperatorInterventionError
                      | asyncpg.InsufficientResourcesError | OSError):
            # refused, reset, timed out, server shutting down or starting, too many connections
            what = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            return RetryableLedgerError(f"{where} is unreachable: {what}",
                                        retry_after_s=UNREACHABLE_RETRY_AFTER_S)
        return LedgerError(f"{where}: {exc}")

    # --- keys ----------------------------------------------------------------------------------

    async def enroll(self, key: CollectorKey) -> None:
        """Register a collector key; refuse a second, different key for the same collector."""
        async def work(conn: Any) -> None:
            async with conn.transaction():
                # two gateways enrolling two keys for one collector at once: one of them loses
                await conn.execute("LOCK TABLE collectors IN SHARE ROW EXCLUSIVE MODE")
                rows = await conn.fetch("SELECT key_id FROM collectors WHERE collector_id = $1",
                                        key.collector_id)
                known = {r["key_id"] for r in rows}
                if key.key_id in known:
                    return
                if known:
                    raise EnrolmentError(
                        f"collector {key.collector_id} is enrolled with key {sorted(known)[0]}; "
                        "key rotation is not supported yet: enrol the new key under a new collector id"
                    )
                await conn.execute("INSERT INTO collectors VALUES ($1, $2, $3, $4)",
                                   key.collector_id, key.key_id, key.public_key,
                                   key.enrolled_unix_ms)
        await self._run(work)

    async def collector_keys(self) -> dict[str, CollectorKey]:
        """Every enrolled collector."""
        async def work(conn: Any) -> dict[str, CollectorKey]:
            rows = await conn.fetch(
                "SELECT collector_id, key_id, public_key, enrolled_unix_ms FROM collectors")
            return {r[0]: CollectorKey(r[0], r[1], bytes(r[2]), int(r[3])) for r in rows}
        return await self._run(work)

    # --- chain ---------------------------------------------------------------------------------

    async def head(self, collector_id: str) -> ChainHead:
        """The collector's chain head."""
        async def work(conn: Any) -> ChainHead:
            row = await conn.fetchrow("SELECT sequence, hash FROM chain_heads WHERE collector_id = $1",
                                      collector_id)
            return ChainHead.empty() if row is None else ChainHead(int(row[0]), bytes(row[1]))
        return await self._run(work)

    @staticmethod
    async def _lock_head(conn: Any, collector_id: str) -> ChainHead:
        row = await conn.fetchrow(_LOCK_HEAD, collector_id)
        if row is None:
            # a waiting insert of the same key resolves when the other transaction ends
            await conn.execute(
                "INSERT INTO chain_heads VALUES ($1, 0, $2, 0, 0) ON CONFLICT (collector_id) DO NOTHING",
                collector_id, GENESIS_HASH)
            row = await conn.fetchrow(_LOCK_HEAD, collector_id)
            if row is None:
                raise LedgerError(f"the chain head row of {collector_id} vanished while locking it")
        return ChainHead(int(row[0]), bytes(row[1]))

    async def append(
        self, collector_id: str, blocks: list[VerifiedBlock], *, transport: str, peer: str,
        received_unix_ms: int,
    ) -> AppendResult:
        """Place and store blocks in one transaction, holding the collector's chain head lock."""
        if not blocks:
            return AppendResult(await self.head(collector_id), (), None, False)

        async def work(conn: Any) -> AppendResult:
            async with conn.transaction():
                head = await self._lock_head(conn, collector_id)
                stored: dict[int, StoredBlock] = {}
                wanted = repeated_sequences(blocks, head)
                if wanted:
                    rows = await conn.fetch(
                        "SELECT sequence, hash, previous_hash FROM blocks "
                        "WHERE collector_id = $1 AND sequence = ANY($2::bigint[])",
                        collector_id, wanted)
                    stored = {int(r[0]): StoredBlock(bytes(r[1]), bytes(r[2])) for r in rows}
                plan = plan_append(collector_id=collector_id, blocks=blocks, head=head,
                                   stored_at=stored.get, transport=transport, peer=peer,
                                   received_unix_ms=received_unix_ms)
                if plan.new_blocks:
                    # COPY in binary format: the cheapest bulk path (about 30 % under a
                    # pipelined executemany for 1000 blocks, and no slower for a few)
                    await conn.copy_records_to_table("blocks", columns=_BLOCK_COLUMNS, records=[
                        (collector_id, b.sequence, b.hash, b.previous_hash, b.payload, b.signature,
                         b.key_id, b.window_start_unix_ms, b.window_end_unix_ms, b.reading_count,
                         b.kind, transport, received_unix_ms) for b in plan.new_blocks])
                    await conn.execute(
                        "UPDATE chain_heads SET sequence = $2, hash = $3, readings = readings + $4, "
                        "latest_window_start_unix_ms = GREATEST(latest_window_start_unix_ms, $5) "
                        "WHERE collector_id = $1",
                        collector_id, plan.head.sequence, plan.head.hash, plan.readings,
                        plan.latest_window_start_unix_ms)
                kept = await self._insert_quarantine(conn, [plan.refused] if plan.refused else [])
            return AppendResult(plan.head, plan.placements, plan.refused, kept == 1)
        return await self._run(work)

    # --- quarantine ----------------------------------------------------------------------------

    async def _insert_quarantine(self, conn: Any, entries: list[QuarantineEntry]) -> int:
        """Insert up to the cap; call inside a transaction."""
        if not entries:
            return 0
        # count-then-insert must not interleave with another writer's, or both fill the last room
        await conn.execute("LOCK TABLE quarantine IN SHARE ROW EXCLUSIVE MODE")
        count = int(await conn.fetchval(
            "SELECT COUNT(*) FROM quarantine WHERE reason <> ALL($1::text[])",
            sorted(SIGNED_EVIDENCE_REASONS)))
        kept = budget_quarantine(entries, unsigned_stored=count,
                                 max_unsigned_rows=self.quarantine_max_rows)
        if kept:
            await conn.executemany(
                "INSERT INTO quarantine (received_unix_ms, transport, peer, collector_id, sequence, "
                "reason, detail, raw, alarm) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                [(e.received_unix_ms, e.transport, e.peer, e.collector_id, e.sequence, e.reason,
                  e.detail, e.raw, e.alarm) for e in kept])
        return len(kept)

    async def quarantine(self, entries: list[QuarantineEntry]) -> int:
        """Keep rejected input; return how many fit under the cap."""
        async def work(conn: Any) -> int:
            async with conn.transaction():
                return await self._insert_quarantine(conn, entries)
        return await self._run(work)

    async def quarantine_counts(self) -> dict[str, int]:
        """Quarantined entries by reason."""
        async def work(conn: Any) -> dict[str, int]:
            rows = await conn.fetch("SELECT reason, COUNT(*) FROM quarantine GROUP BY reason")
            return {str(r[0]): int(r[1]) for r in rows}
        return await self._run(work)

    async def quarantine_entries(self) -> list[QuarantineEntry]:
        """Every quarantined entry, oldest first."""
        async def work(conn: Any) -> list[QuarantineEntry]:
            rows = await conn.fetch(
                "SELECT received_unix_ms, transport, peer, collector_id, sequence, reason, detail, "
                "raw, alarm FROM quarantine ORDER BY id")
            return [QuarantineEntry(int(r[0]), r[1], r[2], r[3],
                                    None if r[4] is None else int(r[4]), r[5], r[6], bytes(r[7]),
                                    bool(r[8])) for r in rows]
        return await self._run(work)

    # --- reading -------------------------------------------------------------------------------

    async def iter_blocks(self, collector_id: str | None = None) -> AsyncIterator[StoredRow]:
        """Every stored block, by collector and sequence, a page at a time (keyset pagination,
        no connection held between pages)."""
        async def page(conn: Any, after: tuple[str, int]) -> list[StoredRow]:
            if collector_id is None:
                rows = await conn.fetch(
                    "SELECT entry_index, collector_id, sequence, hash, payload, signature, "
                    "key_id FROM blocks WHERE (collector_id, sequence) > ($1, $2) "
                    "ORDER BY collector_id, sequence LIMIT $3", *after, PAGE_ROWS)
            else:
                rows = await conn.fetch(
                    "SELECT entry_index, collector_id, sequence, hash, payload, signature, "
                    "key_id FROM blocks WHERE collector_id = $1 AND sequence > $2 "
                    "ORDER BY sequence LIMIT $3", collector_id, after[1], PAGE_ROWS)
            return [StoredRow.from_row(r) for r in rows]
        async for row in keyset_pages(
                lambda after: self._run(functools.partial(page, after=after)),
                start=("", -1), key=lambda row: (row.collector_id, row.sequence), limit=PAGE_ROWS):
            yield row

    async def summary(self) -> LedgerSummary:
        """Totals from the chain heads (cheap: no scan of the blocks)."""
        async def work(conn: Any) -> LedgerSummary:
            row = await conn.fetchrow(
                "SELECT COALESCE(SUM(sequence), 0)::bigint, COALESCE(SUM(readings), 0)::bigint, "
                "COUNT(*) FILTER (WHERE sequence > 0), "
                "MAX(latest_window_start_unix_ms) FILTER (WHERE sequence > 0), "
                "(SELECT COUNT(*) FROM quarantine) FROM chain_heads")
            blocks, readings, collectors, latest, quarantined = row
            return LedgerSummary(int(blocks), int(readings), int(collectors), int(quarantined),
                                 None if latest is None else int(latest))
        return await self._run(work)

    async def collectors_overview(self) -> dict[str, CollectorOverview]:
        """Per enrolled collector: its chain head, readings, newest window and quarantine."""
        async def work(conn: Any) -> dict[str, CollectorOverview]:
            rows = await conn.fetch(
                "SELECT c.collector_id, COALESCE(h.sequence, 0), COALESCE(h.readings, 0), "
                "CASE WHEN COALESCE(h.sequence, 0) > 0 THEN h.latest_window_start_unix_ms END, "
                "(SELECT COUNT(*) FROM quarantine q WHERE q.collector_id = c.collector_id) "
                "FROM (SELECT DISTINCT collector_id FROM collectors) c "
                "LEFT JOIN chain_heads h ON h.collector_id = c.collector_id")
            return dict(CollectorOverview.from_row(r) for r in rows)
        return await self._run(work)

    # --- consumers that follow the ledger ------------------------------------------------------

    async def heads(self) -> dict[str, ChainHead]:
        """Every collector's chain head (not the rows of chains locked but still empty)."""
        async def work(conn: Any) -> dict[str, ChainHead]:
            rows = await conn.fetch("SELECT collector_id, sequence, hash FROM chain_heads "
                                    "WHERE sequence > 0")
            return {str(r[0]): ChainHead(int(r[1]), bytes(r[2])) for r in rows}
        return await self._run(work)

    async def read_blocks(self, collector_id: str, *, after_sequence: int,
                          limit: int) -> list[StoredRow]:
        """Up to `limit` blocks of one collector after a sequence, in chain order. Every block up
        to the head a reader sees is visible to it: blocks and head commit together."""
        async def work(conn: Any) -> list[StoredRow]:
            rows = await conn.fetch(
                "SELECT entry_index, collector_id, sequence, hash, payload, signature, "
                "key_id FROM blocks WHERE collector_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3",
                collector_id, after_sequence, limit)
            return [StoredRow.from_row(r) for r in rows]
        return await self._run(work)

    async def select_blocks(self, collector_id: str, selection: BlockSelection, *,
                            after_sequence: int, limit: int) -> list[StoredRow]:
        """Up to `limit` selected blocks of one collector after a sequence, in chain order."""
        query, args = selection_query(collector_id, selection, after_sequence=after_sequence,
                                      limit=limit, placeholder=lambda n: f"${n}")

        async def work(conn: Any) -> list[StoredRow]:
            return [StoredRow.from_row(r) for r in await conn.fetch(query, *args)]
        return await self._run(work)

    async def find_config(self, collector_id: str, digest: bytes) -> bytes | None:
        """The document of the collector's CONFIG block with this digest, newest first."""
        async def work(conn: Any) -> bytes | None:
            rows = await conn.fetch(
                f"SELECT payload FROM blocks WHERE collector_id = $1 AND kind = {CONFIG_KIND} "  # noqa: S608 - a constant
                "ORDER BY sequence DESC", collector_id)
            return config_document_with_digest((bytes(r[0]) for r in rows), digest)
        return await self._run(work)

    async def put_accounting_hours(self, plant_id: str, unit_id: str,
                                   hours: Sequence[tuple[int, str]], *, computed_unix_ms: int) -> None:
        """Store (replace) a unit's hourly accounting documents, keyed by hour start."""
        async def work(conn: Any) -> None:
            await conn.executemany(
                "INSERT INTO accounting_hours VALUES ($1, $2, $3, $4, $5) ON CONFLICT (plant_id, unit_id, "
                "hour_start_unix_ms) DO UPDATE SET document = excluded.document, "
                "computed_unix_ms = excluded.computed_unix_ms",
                [(plant_id, unit_id, start, document, computed_unix_ms) for start, document in hours])
        await self._run(work)

    async def accounting_hours(self, plant_id: str, unit_id: str, *, start_unix_ms: int,
                               end_unix_ms: int) -> list[tuple[int, str]]:
        """A unit's stored hourly documents with starts in [start, end), in time order."""
        async def work(conn: Any) -> list[tuple[int, str]]:
            rows = await conn.fetch(
                "SELECT hour_start_unix_ms, document FROM accounting_hours WHERE plant_id = $1 AND "
                "unit_id = $2 AND hour_start_unix_ms >= $3 AND hour_start_unix_ms < $4 "
                "ORDER BY hour_start_unix_ms", plant_id, unit_id, start_unix_ms, end_unix_ms)
            return [(int(r[0]), str(r[1])) for r in rows]
        return await self._run(work)

    async def sink_positions(self, sink: str) -> dict[str, int]:
        """A consumer's cursor per collector."""
        async def work(conn: Any) -> dict[str, int]:
            rows = await conn.fetch("SELECT collector_id, sequence FROM sink_cursors WHERE sink = $1",
                                    sink)
            return {str(r[0]): int(r[1]) for r in rows}
        return await self._run(work)

    async def advance_sink(self, sink: str, collector_id: str, *, from_sequence: int,
                           to_sequence: int) -> bool:
        """Compare-and-set a consumer's cursor: one statement, atomic against other gateways."""
        if to_sequence < from_sequence:
            raise ValueError(f"cursor {sink!r} of {collector_id} cannot move back from "
                             f"{from_sequence} to {to_sequence}")

        async def work(conn: Any) -> bool:
            head = await conn.fetchval("SELECT sequence FROM chain_heads WHERE collector_id = $1",
                                       collector_id)
            if to_sequence > (0 if head is None else int(head)):
                raise ValueError(f"cursor {sink!r} of {collector_id} cannot move past the chain "
                                 f"head ({to_sequence} > {0 if head is None else int(head)})")
            if from_sequence == 0:
                # a cursor that never moved has no row; two first moves race on the insert
                moved = await conn.fetchval(
                    "INSERT INTO sink_cursors VALUES ($1, $2, $3) ON CONFLICT (sink, collector_id) "
                    "DO UPDATE SET sequence = excluded.sequence WHERE sink_cursors.sequence = 0 "
                    "RETURNING 1", sink, collector_id, to_sequence)
            else:
                moved = await conn.fetchval(
                    "UPDATE sink_cursors SET sequence = $4 WHERE sink = $1 AND collector_id = $2 "
                    "AND sequence = $3 RETURNING 1", sink, collector_id, from_sequence, to_sequence)
            return moved is not None
        return await self._run(work)

    # --- the transparency log ------------------------------------------------------------------

    async def log_integrate(self, *, max_leaves: int) -> tuple[int, int]:
        """Append queued blocks (entry order) to the log in one transaction, holding the lock
        on `log_state` that makes this gateway the log's only writer meanwhile."""
        async def work(conn: Any) -> tuple[int, int]:
            async with conn.transaction():
                size = int(await conn.fetchval("SELECT size FROM log_state WHERE id = 1 FOR UPDATE"))
                rows = await conn.fetch(
                    "SELECT q.entry_index, b.collector_id, b.sequence, b.payload FROM log_queue q "
                    "JOIN blocks b ON b.entry_index = q.entry_index ORDER BY q.entry_index "
                    "LIMIT $1", max_leaves)
                if not rows:
                    return size, 0
                tree = AsyncMerkleTree(store=_PostgresNodes(conn, size))
                grown = await tree.append_many(leaf_hash(bytes(r[3])) for r in rows)
                await conn.copy_records_to_table(
                    "log_leaves", columns=("leaf_index", "collector_id", "sequence"),
                    records=[(size + i, r[1], r[2]) for i, r in enumerate(rows)])
                await conn.execute("DELETE FROM log_queue WHERE entry_index = ANY($1::bigint[])",
                                   [r[0] for r in rows])
                await conn.execute("UPDATE log_state SET size = $1 WHERE id = 1", grown)
                return grown, len(rows)
        return await self._run(work)

    async def _log_size(self) -> int:
        async def work(conn: Any) -> int:
            return int(await conn.fetchval("SELECT size FROM log_state WHERE id = 1"))
        return await self._run(work)

    def log_tree(self) -> AsyncMerkleTree:
        """The log's tree, read through the pool."""
        return AsyncMerkleTree(store=NodeReader(
            owner=self, size=self._log_size,
            nodes=lambda wanted: self._run(lambda conn: _get_nodes(conn, wanted))))

    async def log_leaf_indexes(self, collector_id: str, first_sequence: int,
                               last_sequence: int) -> dict[int, int]:
        """Sequence -> leaf index for the collector's blocks in the range that are in the log."""
        async def work(conn: Any) -> dict[int, int]:
            rows = await conn.fetch("SELECT sequence, leaf_index FROM log_leaves WHERE "
                                    "collector_id = $1 AND sequence BETWEEN $2 AND $3",
                                    collector_id, first_sequence, last_sequence)
            return {int(r[0]): int(r[1]) for r in rows}
        return await self._run(work)

    async def log_inclusion_proofs(self, collector_id: str, first_sequence: int,
                                   last_sequence: int, *, tree_size: int
                                   ) -> list[tuple[int, int, list[bytes]]]:
        """Audit paths of the collector's logged blocks in a range, on one connection."""
        async def work(conn: Any) -> list[tuple[int, int, list[bytes]]]:
            # the log's size and the leaves in one round trip (a row with no leaf when none)
            found = await conn.fetch(
                "SELECT s.size, l.sequence, l.leaf_index FROM log_state s LEFT JOIN log_leaves l "
                "ON l.collector_id = $1 AND l.sequence BETWEEN $2 AND $3 AND l.leaf_index < $4 "
                "WHERE s.id = 1 ORDER BY l.sequence", collector_id, first_sequence,
                last_sequence, tree_size)
            size = int(found[0][0])
            rows = [(r[1], r[2]) for r in found if r[1] is not None]
            tree = AsyncMerkleTree(store=_PostgresNodes(conn, size))
            paths = await tree.inclusion_proofs([int(r[1]) for r in rows], tree_size)
            return [(int(r[0]), int(r[1]), path) for r, path in zip(rows, paths, strict=True)]
        return await self._run(work)

    async def log_latest_leaves(self, collector_ids: Sequence[str], *, below_size: int
                                ) -> dict[str, tuple[int, int]]:
        """Each collector's newest block among the first `below_size` leaves, in one query (an
        index lookup per collector)."""
        async def work(conn: Any) -> dict[str, tuple[int, int]]:
            rows = await conn.fetch(
                "SELECT c.id, l.sequence, l.leaf_index FROM unnest($1::text[]) AS c(id) "
                "CROSS JOIN LATERAL (SELECT sequence, leaf_index FROM log_leaves WHERE "
                "collector_id = c.id AND leaf_index < $2 ORDER BY sequence DESC LIMIT 1) l",
                list(dict.fromkeys(collector_ids)), below_size)
            return {str(r[0]): (int(r[1]), int(r[2])) for r in rows}
        return await self._run(work)

    async def log_leaf(self, leaf_index: int) -> tuple[str, int] | None:
        """Which block a leaf is."""
        async def work(conn: Any) -> tuple[str, int] | None:
            row = await conn.fetchrow("SELECT collector_id, sequence FROM log_leaves WHERE "
                                      "leaf_index = $1", leaf_index)
            return None if row is None else (str(row[0]), int(row[1]))
        return await self._run(work)

    async def iter_log_leaves(self) -> AsyncIterator[tuple[int, str, int, bytes]]:
        """Every leaf in log order with its block's payload, a page at a time."""
        async def page(conn: Any, after: int) -> list[tuple[int, str, int, bytes]]:
            rows = await conn.fetch(
                "SELECT l.leaf_index, l.collector_id, l.sequence, b.payload FROM log_leaves l "
                "LEFT JOIN blocks b ON b.collector_id = l.collector_id AND b.sequence = "
                "l.sequence WHERE l.leaf_index > $1 ORDER BY l.leaf_index LIMIT $2",
                after, PAGE_ROWS)
            return [leaf_with_payload(r) for r in rows]
        async for row in keyset_pages(
                lambda after: self._run(functools.partial(page, after=after)),
                start=-1, key=lambda row: row[0], limit=PAGE_ROWS):
            yield row

    async def iter_log_nodes(self, level: int) -> AsyncIterator[tuple[int, bytes]]:
        """One level's stored nodes in index order."""
        async def page(conn: Any, after: int) -> list[tuple[int, bytes]]:
            rows = await conn.fetch("SELECT idx, hash FROM log_nodes WHERE level = $1 AND "
                                    "idx > $2 ORDER BY idx LIMIT $3", level, after,
                                    PAGE_ROWS * 10)
            return [(int(r[0]), bytes(r[1])) for r in rows]
        async for row in keyset_pages(
                lambda after: self._run(functools.partial(page, after=after)),
                start=-1, key=lambda row: row[0], limit=PAGE_ROWS * 10):
            yield row

    async def log_unqueued_blocks(self) -> list[tuple[str, int]]:
        """Blocks that are neither leaves of the log nor waiting in its queue (none in a sound
        ledger): up to 100, by collector and sequence."""
        async def work(conn: Any) -> list[tuple[str, int]]:
            rows = await conn.fetch(
                "SELECT b.collector_id, b.sequence FROM blocks b WHERE NOT EXISTS (SELECT 1 FROM "
                "log_queue q WHERE q.entry_index = b.entry_index) AND NOT EXISTS (SELECT 1 FROM "
                "log_leaves l WHERE l.collector_id = b.collector_id AND l.sequence = b.sequence) "
                "ORDER BY b.collector_id, b.sequence LIMIT 100")
            return [(str(r[0]), int(r[1])) for r in rows]
        return await self._run(work)

    async def log_recorded_key(self) -> str | None:
        """The recorded verifier key, if any."""
        async def work(conn: Any) -> str | None:
            value = await conn.fetchval("SELECT verifier_key FROM log_state WHERE id = 1")
            return None if value is None else str(value)
        return await self._run(work)

    async def log_verifier_key(self, verifier_key: str) -> str:
        """Record the log's verifier key once; return the recorded one."""
        async def work(conn: Any) -> str:
            async with conn.transaction():
                await conn.execute("UPDATE log_state SET verifier_key = $1 WHERE id = 1 AND "
                                   "verifier_key IS NULL", verifier_key)
                return str(await conn.fetchval("SELECT verifier_key FROM log_state WHERE id = 1"))
        return await self._run(work)

    async def put_checkpoint(self, checkpoint: StoredCheckpoint) -> StoredCheckpoint:
        """Keep a checkpoint unless one of its size is kept already; return the kept one."""
        async def work(conn: Any) -> StoredCheckpoint:
            await conn.execute("INSERT INTO log_checkpoints VALUES ($1, $2, $3, $4) "
                               "ON CONFLICT (tree_size) DO NOTHING", checkpoint.tree_size,
                               checkpoint.root_hash, checkpoint.note, checkpoint.published_unix_ms)
            row = await conn.fetchrow(_CHECKPOINT_COLUMNS + "WHERE tree_size = $1",
                                      checkpoint.tree_size)
            return _checkpoint(row)
        return await self._run(work)

    async def checkpoint(self, tree_size: int | None = None) -> StoredCheckpoint | None:
        """The checkpoint of a size, or the latest."""
        async def work(conn: Any) -> StoredCheckpoint | None:
            if tree_size is None:
                row = await conn.fetchrow(_CHECKPOINT_COLUMNS + "ORDER BY tree_size DESC LIMIT 1")
            else:
                row = await conn.fetchrow(_CHECKPOINT_COLUMNS + "WHERE tree_size = $1", tree_size)
            return None if row is None else _checkpoint(row)
        return await self._run(work)

    async def checkpoints(self, *, limit: int = 100, before_size: int | None = None
                          ) -> list[StoredCheckpoint]:
        """Published checkpoints, newest first."""
        async def work(conn: Any) -> list[StoredCheckpoint]:
            rows = await conn.fetch(_CHECKPOINT_COLUMNS + "WHERE tree_size < $1 ORDER BY "
                                    "tree_size DESC LIMIT $2",
                                    (1 << 63) - 1 if before_size is None else before_size, limit)
            return [_checkpoint(r) for r in rows]
        return await self._run(work)

    async def close(self) -> None:
        """Close the pool; the ledger cannot be used afterwards."""
        async with self._opening:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


_CHECKPOINT_COLUMNS = "SELECT tree_size, root_hash, note, published_unix_ms FROM log_checkpoints "


def _checkpoint(row: Any) -> StoredCheckpoint:
    return StoredCheckpoint(int(row[0]), bytes(row[1]), str(row[2]), int(row[3]))


async def _get_nodes(conn: Any, nodes: Sequence[NodeId]) -> list[bytes]:
    if not nodes:
        return []
    rows = await conn.fetch(
        "SELECT n.level, n.idx, n.hash FROM unnest($1::smallint[], $2::bigint[]) AS w(level, idx) "
        "JOIN log_nodes n ON n.level = w.level AND n.idx = w.idx",
        [level for level, _ in nodes], [index for _, index in nodes])
    found = {(int(r[0]), int(r[1])): bytes(r[2]) for r in rows}
    return in_requested_order(nodes, found)


class _PostgresNodes:
    """The log's `AsyncHashStore` inside one integrating transaction."""

    def __init__(self, conn: Any, size: int) -> None:
        self._conn = conn
        self._size = size

    async def leaf_count(self) -> int:
        return self._size

    async def get(self, nodes: Sequence[NodeId]) -> list[bytes]:
        return await _get_nodes(self._conn, nodes)

    async def put(self, nodes: Sequence[NodeWrite], *, leaf_count: int) -> None:
        # the primary key refuses a node written twice: a second writer fails, it cannot fork
        await self._conn.copy_records_to_table("log_nodes", columns=("level", "idx", "hash"),
                                               records=nodes)
        self._size = leaf_count
