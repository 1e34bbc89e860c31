"""Contract tests of the Ledger interface (DESIGN.md invariants 3 and 4), run over every backend.

Each backend is a `Backend` in `BACKENDS`; the `backend` fixture is parametrized over them, so a
PostgreSQL ledger joins the suite by adding one class and one entry. Blocks are real: signed with
a fresh Ed25519 key, encoded by `proto.wire` and passed through `gateway.ingest.verify_envelope`.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import nacl.signing
import pytest

import gateway.ledger.postgres
import gateway.ledger.sqlite
from gateway.errors import EnrolmentError, LedgerError
from gateway.ingest import verify_envelope
from gateway.ledger import (
    AppendResult,
    CollectorKey,
    Ledger,
    LedgerSummary,
    PostgresLedger,
    QuarantineEntry,
    SqliteLedger,
    StoredRow,
    VerifiedBlock,
)
from gateway.ledger.placement import MAX_UNSIGNED_EVIDENCE_BYTES
from proto.chain import ChainHead, Placement
from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import GENESIS_HASH, BlockDraft, ReadingValue, Signer, Verifier, encode_block
from tests.conftest import PostgresServer, pg_execute, run_async, with_database

BASE_MS = 1_700_000_000_000
WINDOW_MS = 60_000
RECEIVED_MS = BASE_MS + 86_400_000
CONFIG_DIGEST = bytes(range(32))
READINGS_PER_BLOCK = 2
TRANSPORT = "test"
PEER = "ipv4:127.0.0.1:40000"


# --- backends -------------------------------------------------------------------------------------


class InspectableLedger(Ledger, Protocol):
    """A ledger whose quarantine can be read back (every backend offers this to operators)."""

    async def quarantine_entries(self) -> list[QuarantineEntry]:
        """Every quarantined entry, oldest first."""
        ...


class Backend(Protocol):
    """How the contract suite opens one kind of ledger and reaches behind it."""

    name: str

    def open(self, *, read_only: bool = False,
             quarantine_max_rows: int = 100_000) -> InspectableLedger:
        """A ledger on this test's store (the same store every time it is called)."""
        ...

    def open_missing(self) -> InspectableLedger:
        """A read-only ledger on a location that holds no ledger."""
        ...

    def missing_was_created(self) -> bool:
        """Whether opening the missing location created something there."""
        ...

    def execute_raw(self, statement: str) -> None:
        """Run a statement on the store directly, behind the ledger's back."""
        ...

    def raw_error(self) -> type[Exception]:
        """What the store's own driver raises when a raw statement is refused."""
        ...


class SqliteBackend:
    """SQLite ledger in a file under the test's tmp_path."""

    name = "sqlite"

    def __init__(self, folder: Path) -> None:
        self.path = folder / "ledger.sqlite"
        self.missing = folder / "absent" / "ledger.sqlite"

    def open(self, *, read_only: bool = False,
             quarantine_max_rows: int = 100_000) -> SqliteLedger:
        return SqliteLedger(path=self.path, read_only=read_only,
                            quarantine_max_rows=quarantine_max_rows)

    def open_missing(self) -> SqliteLedger:
        return SqliteLedger(path=self.missing, read_only=True)

    def missing_was_created(self) -> bool:
        return self.missing.exists() or self.missing.parent.exists()

    def execute_raw(self, statement: str) -> None:
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout=5000")
            db.execute(statement)
        finally:
            db.close()

    def raw_error(self) -> type[Exception]:
        return sqlite3.DatabaseError


class PostgresBackend:
    """PostgreSQL ledger in a fresh schema of the session's throwaway database (see conftest)."""

    name = "postgresql"

    def __init__(self, url: str, server: PostgresServer) -> None:
        self.url = url
        self.server = server
        self.missing_database = f"{server.database}_absent_{secrets.token_hex(3)}"

    def open(self, *, read_only: bool = False,
             quarantine_max_rows: int = 100_000) -> PostgresLedger:
        return PostgresLedger(url=self.url, read_only=read_only,
                              quarantine_max_rows=quarantine_max_rows, pool_max_size=4)

    def open_missing(self) -> PostgresLedger:
        return PostgresLedger(url=with_database(self.server.admin_url, self.missing_database),
                              read_only=True)

    def missing_was_created(self) -> bool:
        return self.server.database_exists(self.missing_database)

    def execute_raw(self, statement: str) -> None:
        run_async(pg_execute(self.url, statement))

    def raw_error(self) -> type[Exception]:
        return asyncpg.PostgresError  # type: ignore[no-any-return]


BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """One ledger backend on a fresh store."""
    if request.param == "sqlite":
        yield SqliteBackend(tmp_path)
    elif request.param == "postgresql":
        yield PostgresBackend(request.getfixturevalue("postgres_url"),
                              request.getfixturevalue("postgres"))
    else:  # pragma: no cover - a new entry in BACKENDS without a class here
        pytest.fail(f"no test backend for {request.param}")


@pytest.fixture
async def ledger(backend: Backend) -> AsyncIterator[InspectableLedger]:
    """A writable ledger, closed after the test."""
    opened = backend.open()
    try:
        yield opened
    finally:
        await opened.close()


# --- building real signed blocks ------------------------------------------------------------------


class Collector:
    """A collector's key and the blocks it signs, verified as the gateway would."""

    def __init__(self, collector_id: str) -> None:
        self.collector_id = collector_id
        self.signer = Signer(signing_key=nacl.signing.SigningKey.generate())
        self.key = CollectorKey(collector_id, self.signer.key_id, self.signer.public_key, BASE_MS)
        self.verifier = Verifier(public_key=self.signer.public_key)

    def block(self, sequence: int, previous_hash: bytes, *, variant: int = 0) -> VerifiedBlock:
        """A signed, verified block; another `variant` gives other bytes for the same position."""
        start = BASE_MS + (sequence - 1) * WINDOW_MS
        draft = BlockDraft(
            collector_id=self.collector_id,
            window_start_unix_ms=start,
            window_end_unix_ms=start + WINDOW_MS,
            readings=[
                ReadingValue("stack.so2_mg_m3", start, 35.0 + sequence + variant / 10,
                             pb.QUALITY_NORMAL, (0x4205, variant)),
                ReadingValue("stack.flow_m3_per_h", start, 412_000.5 + variant,
                             pb.QUALITY_NORMAL),
            ],
            config_digest=CONFIG_DIGEST,
        )
        payload = encode_block(draft, sequence=sequence, previous_hash=previous_hash)
        result = verify_envelope(self.signer.envelope(payload), collector_id=self.collector_id,
                                 key=self.key, verifier=self.verifier)
        assert isinstance(result, VerifiedBlock), result
        return result

    def config_block(self, sequence: int, previous_hash: bytes, document: bytes) -> VerifiedBlock:
        """A signed CONFIG block recording `document` (its digest is the document's SHA-256)."""
        start = BASE_MS + (sequence - 1) * WINDOW_MS
        draft = BlockDraft(collector_id=self.collector_id, window_start_unix_ms=start,
                           window_end_unix_ms=start, readings=(),
                           config_digest=hashlib.sha256(document).digest(),
                           kind=pb.BLOCK_KIND_CONFIG, config_document=document)
        payload = encode_block(draft, sequence=sequence, previous_hash=previous_hash)
        result = verify_envelope(self.signer.envelope(payload), collector_id=self.collector_id,
                                 key=self.key, verifier=self.verifier)
        assert isinstance(result, VerifiedBlock), result
        return result

    def chain(self, count: int, *, after: VerifiedBlock | None = None,
              variant: int = 0) -> list[VerifiedBlock]:
        """`count` linked blocks from genesis, or continuing after the block `after`."""
        previous = GENESIS_HASH if after is None else after.hash
        first = 1 if after is None else after.sequence + 1
        blocks = []
        for sequence in range(first, first + count):
            block = self.block(sequence, previous, variant=variant)
            blocks.append(block)
            previous = block.hash
        return blocks


async def append(ledger: Ledger, blocks: list[VerifiedBlock]) -> AppendResult:
    return await ledger.append(blocks[0].collector_id, blocks, transport=TRANSPORT, peer=PEER,
                               received_unix_ms=RECEIVED_MS)


async def stored(ledger: Ledger, collector_id: str | None = None) -> list[StoredRow]:
    return [row async for row in ledger.iter_blocks(collector_id)]


def positions(rows: list[StoredRow]) -> list[tuple[str, int, bytes]]:
    """What a verifier checks of each stored row: which block it is and its exact bytes."""
    return [(row.collector_id, row.sequence, row.payload) for row in rows]


def expected(blocks: list[VerifiedBlock]) -> list[tuple[str, int, bytes]]:
    return [(block.collector_id, block.sequence, block.payload) for block in blocks]


def entry(reason: str, *, raw: bytes = b"\x08\x01", collector_id: str = "plant-a") -> QuarantineEntry:
    return QuarantineEntry(RECEIVED_MS, TRANSPORT, PEER, collector_id, None, reason,
                           f"test entry: {reason}", raw, False)


@pytest.fixture
def plant_a() -> Collector:
    return Collector("plant-a")


@pytest.fixture
def plant_b() -> Collector:
    return Collector("plant-b")


# --- enrolment --------------------------------------------------------------------------------------


async def test_enroll_is_idempotent_for_the_same_key(ledger: InspectableLedger,
                                                     plant_a: Collector) -> None:
    await ledger.enroll(plant_a.key)
    await ledger.enroll(plant_a.key)

    assert await ledger.collector_keys() == {"plant-a": plant_a.key}


async def test_enroll_refuses_a_different_key_for_the_same_collector(
        ledger: InspectableLedger, plant_a: Collector) -> None:
    await ledger.enroll(plant_a.key)
    impostor = Collector("plant-a")

    with pytest.raises(EnrolmentError, match="plant-a"):
        await ledger.enroll(impostor.key)

    assert await ledger.collector_keys() == {"plant-a": plant_a.key}


async def test_collectors_are_enrolled_independently(ledger: InspectableLedger, plant_a: Collector,
                                                     plant_b: Collector) -> None:
    await ledger.enroll(plant_a.key)
    await ledger.enroll(plant_b.key)

    assert await ledger.collector_keys() == {"plant-a": plant_a.key, "plant-b": plant_b.key}


# --- appending the chain ----------------------------------------------------------------------------


async def test_a_collector_without_blocks_has_the_empty_head(ledger: InspectableLedger) -> None:
    assert await ledger.head("plant-a") == ChainHead(0, GENESIS_HASH)


async def test_append_stores_blocks_in_order_and_advances_the_head(
        ledger: InspectableLedger, plant_a: Collector) -> None:
    blocks = plant_a.chain(5)

    first = await append(ledger, blocks[:2])
    second = await append(ledger, blocks[2:])

    assert first.placements == (Placement.NEXT, Placement.NEXT)
    assert first.head == ChainHead(2, blocks[1].hash)
    assert first.refused is None
    assert second.placements == (Placement.NEXT,) * 3
    assert second.head == ChainHead(5, blocks[4].hash)
    assert await ledger.head("plant-a") == ChainHead(5, blocks[4].hash)
    rows = await stored(ledger, "plant-a")
    assert positions(rows) == expected(blocks)
    for row, block in zip(rows, blocks, strict=True):
        assert (row.hash, row.signature, row.key_id) == (block.hash, block.signature, block.key_id)
    assert await ledger.quarantine_entries() == []


async def test_the_same_blocks_again_are_acknowledged_and_stored_once(
        ledger: InspectableLedger, plant_a: Collector) -> None:
    blocks = plant_a.chain(3)
    await append(ledger, blocks)

    again = await append(ledger, blocks)

    assert again.placements == (Placement.DUPLICATE,) * 3
    assert again.refused is None
    assert again.head == ChainHead(3, blocks[2].hash)
    assert await ledger.head("plant-a") == ChainHead(3, blocks[2].hash)
    assert positions(await stored(ledger)) == expected(blocks)
    assert await ledger.quarantine_entries() == []


async def test_a_batch_overlapping_the_stored_chain_stores_only_the_new_blocks(
        ledger: InspectableLedger, plant_a: Collector) -> None:
    blocks = plant_a.chain(4)
    await append(ledger, blocks[:2])

    result = await append(ledger, blocks)

    assert result.placements == (Placement.DUPLICATE, Placement.DUPLICATE, Placement.NEXT,
                                 Placement.NEXT)
    assert result.head == ChainHead(4, blocks[3].hash)
    assert positions(await stored(ledger)) == expected(blocks)


async def test_a_block_repeated_inside_one_batch_is_stored_once(
        ledger: InspectableLedger, plant_a: Collector) -> None:
    blocks = plant_a.chain(3)

    result = await append(ledger, [blocks[0], blocks[1], blocks[1], blocks[2]])

    assert result.placements == (Placement.NEXT, Placement.NEXT, Placement.DUPLICATE,
                                 Placement.NEXT)
    assert result.head == ChainHead(3, blocks[2].hash)
    assert positions(await stored(ledger)) == expected(blocks)


async def test_two_ledger_handles_appending_the_same_blocks_store_them_once(
        backend: Backend, plant_a: Collector) -> None:
    # two ingest workers on one store, both handed the same batch (e.g. gRPC and MQTT at once)
    first, second = backend.open(), backend.open()
    try:
        blocks = plant_a.chain(6)
        results = await asyncio.gather(append(first, blocks), append(second, blocks))

        placements = sorted(results, key=lambda r: r.placements[0].value)
        assert [r.placements for r in placements] == [(Placement.DUPLICATE,) * 6,
                                                      (Placement.NEXT,) * 6]
        assert all(r.head == ChainHead(6, blocks[5].hash) for r in results)
        assert positions(await stored(first)) == expected(blocks)
    finally:
        await first.close()
        await second.close()


async def test_chains_of_collectors_are_independent(ledger: InspectableLedger, plant_a: Collector,
                                                    plant_b: Collector) -> None:
    a_blocks, b_blocks = plant_a.chain(3), plant_b.chain(2)
    await append(ledger, a_blocks[:1])
    await append(ledger, b_blocks[:1])
    await append(ledger, a_blocks[1:])
    await append(ledger, b_blocks[1:])

    assert await ledger.head("plant-a") == ChainHead(3, a_blocks[2].hash)
    assert await ledger.head("plant-b") == ChainHead(2, b_blocks[1].hash)
    assert positions(await stored(ledger)) == expected(a_blocks + b_blocks)
    assert positions(await stored(ledger, "plant-b")) == expected(b_blocks)


# --- refusals ---------------------------------------------------------------------------------------


async def test_a_fork_is_quarantined_with_its_bytes_and_an_alarm(
        ledger: InspectableLedger, plant_a: Collector) -> None:
    blocks = plant_a.chain(3)
    await append(ledger, blocks)
    fork = plant_a.block(2, blocks[0].hash, variant=1)  # same parent as stored block 2, other bytes

    result = await append(ledger, [fork])

    assert result.placements == (Placement.FORK,)
    assert result.head == ChainHead(3, blocks[2].hash)
    refused = result.refused
    assert refused is not None
    assert (refused.reason, refused.alarm, refused.collector_id, refused.sequence) == (
        "fork", True, "plant-a", 2)
    assert refused.raw == fork.envelope
    assert pb.SignedBlock.FromString(refused.raw).payload == fork.payload
    assert (refused.transport, refused.peer, refused.received_unix_ms) == (TRANSPORT, PEER,
                                                                            RECEIVED_MS)
    assert result.evidence_kept is True
    assert await ledger.quarantine_entries() == [refused]
    assert await ledger.quarantine_counts() == {"fork": 1}
    assert positions(await stored(ledger)) == expected(blocks)  # block 2 is still the original


async def test_a_fork_inside_one_batch_is_refused(ledger: InspectableLedger,
                                                  plant_a: Collector) -> None:
    blocks = plant_a.chain(2)
    fork = plant_a.block(2, blocks[0].hash, variant=1)

    result = await append(ledger, [*blocks, fork])

    assert result.placements == (Placement.NEXT, Placement.NEXT, Placement.FORK)
    assert result.head == ChainHead(2, blocks[1].hash)
    assert result.refused is not None
    assert (result.refused.reason, result.refused.raw) == ("fork", fork.envelope)
    assert positions(await stored(ledger)) == expected(blocks)


REFUSALS = {
    # name: (placement, alarm); each bad block is offered against a stored chain 1..3
    "fork": (Placement.FORK, True),
    "replayed_sequence": (Placement.REPLAYED_SEQUENCE, True),
    "broken_link": (Placement.BROKEN_LINK, True),
    "sequence_gap": (Placement.SEQUENCE_GAP, False),
}


def bad_block(kind: str, collector: Collector, chain: list[VerifiedBlock]) -> VerifiedBlock:
    """A correctly signed block that does not belong on the stored chain 1..3."""
    if kind == "fork":
        return collector.block(2, chain[0].hash, variant=1)
    if kind == "replayed_sequence":
        # block 2 of another history signed with the same key: sequence used, parent not ours
        return collector.chain(2, variant=1)[1]
    if kind == "broken_link":
        return collector.block(4, chain[1].hash)
    assert kind == "sequence_gap"
    return collector.block(5, collector.block(4, chain[2].hash).hash)


@pytest.mark.parametrize("kind", list(REFUSALS))
async def test_a_refused_block_is_quarantined_and_stops_its_batch(
        ledger: InspectableLedger, plant_a: Collector, kind: str) -> None:
    chain = plant_a.chain(5)
    await append(ledger, chain[:3])
    bad = bad_block(kind, plant_a, chain)
    placement, alarm = REFUSALS[kind]

    # the good blocks 4 and 5 come after the refused one: they are not considered
    result = await append(ledger, [bad, chain[3], chain[4]])

    assert result.placements == (placement,)
    assert result.head == ChainHead(3, chain[2].hash)
    assert result.refused is not None
    assert (result.refused.reason, result.refused.alarm) == (kind, alarm)
    assert (result.refused.sequence, result.refused.raw) == (bad.sequence, bad.envelope)
    assert result.refused.detail
    assert result.evidence_kept is True
    assert await ledger.quarantine_entries() == [result.refused]
    assert await ledger.head("plant-a") == ChainHead(3, chain[2].hash)
    assert positions(await stored(ledger)) == expected(chain[:3])


async def test_blocks_before_a_refused_one_are_stored_and_after_it_are_not(
        ledger: InspectableLedger, plant_a: Collector) -> None:
    chain = plant_a.chain(5)
    await append(ledger, chain[:2])
    fork = plant_a.block(2, chain[0].hash, variant=1)

    result = await append(ledger, [chain[2], fork, chain[3], chain[4]])

    assert result.placements == (Placement.NEXT, Placement.FORK)
    assert result.head == ChainHead(3, chain[2].hash)
    assert positions(await stored(ledger)) == expected(chain[:3])
    # the collector resends what was not considered, and the chain goes on
    resent = await append(ledger, chain[3:])
    assert resent.placements == (Placement.NEXT, Placement.NEXT)
    assert positions(await stored(ledger)) == expected(chain)


async def test_a_gap_on_an_empty_chain_is_refused(ledger: InspectableLedger,
                                                  plant_a: Collector) -> None:
    chain = plant_a.chain(2)

    result = await append(ledger, [chain[1]])

    assert result.placements == (Placement.SEQUENCE_GAP,)
    assert result.head == ChainHead(0, GENESIS_HASH)
    assert result.refused is not None
    assert result.refused.reason == "sequence_gap"
    assert await stored(ledger) == []


async def test_a_first_block_that_does_not_start_from_genesis_is_a_broken_link(
        ledger: InspectableLedger, plant_a: Collector) -> None:
    block = plant_a.block(1, b"\x11" * 32)

    result = await append(ledger, [block])

    assert result.placements == (Placement.BROKEN_LINK,)
    assert result.refused is not None
    assert (result.refused.reason, result.refused.alarm) == ("broken_link", True)
    assert await stored(ledger) == []


# --- append-only --------------------------------------------------------------------------------------


@pytest.mark.parametrize("statement", [
    "UPDATE blocks SET payload = signature WHERE sequence = 1",
    "UPDATE blocks SET sequence = 9 WHERE sequence = 2",
    "DELETE FROM blocks WHERE sequence = 2",
    "DELETE FROM blocks",
])
async def test_stored_blocks_cannot_be_changed_or_deleted(
        backend: Backend, ledger: InspectableLedger, plant_a: Collector, statement: str) -> None:
    blocks = plant_a.chain(2)
    await append(ledger, blocks)

    with pytest.raises(backend.raw_error(), match="append-only"):
        backend.execute_raw(statement)

    assert positions(await stored(ledger)) == expected(blocks)


# --- quarantine -----------------------------------------------------------------------------------------


async def test_quarantine_keeps_entries_in_order(ledger: InspectableLedger) -> None:
    entries = [entry("malformed_message", raw=b"\xff\x00garbage"),
               entry("unknown_collector", raw=b"\x0a\x05\x0a\x03who", collector_id="who")]

    assert await ledger.quarantine(entries) == 2

    assert await ledger.quarantine_entries() == entries
    assert await ledger.quarantine_counts() == {"malformed_message": 1, "unknown_collector": 1}


async def test_quarantine_is_capped_and_says_what_it_kept(backend: Backend,
                                                          plant_a: Collector) -> None:
    ledger = backend.open(quarantine_max_rows=100)
    try:
        offered = [entry("malformed_message", raw=bytes([n])) for n in range(101)]

        kept = await ledger.quarantine(offered)

        assert kept == 100
        assert await ledger.quarantine_entries() == offered[:100]
        assert await ledger.quarantine_counts() == {"malformed_message": 100}
        assert (await ledger.summary()).quarantined == 100
        assert await ledger.quarantine([entry("unknown_collector")]) == 0

        # Anyone can send garbage, so it cannot crowd out what only the key holder can make: a
        # fork at the cap is refused (never stored) and its evidence is still kept.
        chain = plant_a.chain(2)
        await append(ledger, chain)
        result = await append(ledger, [plant_a.block(2, chain[0].hash, variant=1)])
        assert result.placements == (Placement.FORK,)
        assert result.refused is not None
        assert result.evidence_kept is True
        assert await ledger.quarantine_counts() == {"malformed_message": 100, "fork": 1}
        assert positions(await stored(ledger)) == expected(chain)
    finally:
        await ledger.close()


async def test_large_unsigned_evidence_is_cut_with_its_digest(ledger: InspectableLedger) -> None:
    big = bytes(range(256)) * 1024  # 256 KiB of garbage
    assert await ledger.quarantine([entry("malformed_message", raw=big)]) == 1
    (kept,) = await ledger.quarantine_entries()
    assert kept.raw == big[:MAX_UNSIGNED_EVIDENCE_BYTES]
    assert hashlib.sha256(big).hexdigest() in kept.detail
    assert f"of {len(big)} bytes" in kept.detail


async def test_quarantine_cap_fills_up_across_calls(backend: Backend) -> None:
    ledger = backend.open(quarantine_max_rows=100)
    try:
        assert await ledger.quarantine([entry("malformed_message")] * 60) == 60
        assert await ledger.quarantine([entry("batch_too_large")] * 60) == 40
        assert await ledger.quarantine_counts() == {"malformed_message": 60, "batch_too_large": 40}
    finally:
        await ledger.close()


# --- summary, reopening, read-only --------------------------------------------------------------------


async def test_summary_of_an_empty_ledger(ledger: InspectableLedger) -> None:
    assert await ledger.summary() == LedgerSummary(blocks=0, readings=0, collectors=0,
                                                   quarantined=0, latest_window_start_unix_ms=None)


async def test_summary_counts_blocks_readings_collectors_and_quarantine(
        ledger: InspectableLedger, plant_a: Collector, plant_b: Collector) -> None:
    a_blocks, b_blocks = plant_a.chain(3), plant_b.chain(4)
    await append(ledger, a_blocks)
    await append(ledger, b_blocks[:2])
    await append(ledger, b_blocks[2:])
    await append(ledger, a_blocks[:2])  # duplicates count nothing
    await append(ledger, [plant_a.block(2, a_blocks[0].hash, variant=1)])  # a fork
    await ledger.quarantine([entry("malformed_message")])

    assert await ledger.summary() == LedgerSummary(
        blocks=7, readings=7 * READINGS_PER_BLOCK, collectors=2, quarantined=2,
        latest_window_start_unix_ms=b_blocks[3].window_start_unix_ms)


async def test_the_ledger_survives_close_and_reopen(backend: Backend, plant_a: Collector) -> None:
    chain = plant_a.chain(4)
    first = backend.open()
    await first.enroll(plant_a.key)
    await append(first, chain[:3])
    await append(first, [plant_a.block(2, chain[0].hash, variant=1)])
    before = (await first.summary(), await first.quarantine_entries())
    await first.close()

    reopened = backend.open()
    try:
        assert await reopened.collector_keys() == {"plant-a": plant_a.key}
        assert await reopened.head("plant-a") == ChainHead(3, chain[2].hash)
        assert positions(await stored(reopened)) == expected(chain[:3])
        assert (await reopened.summary(), await reopened.quarantine_entries()) == before
        # the chain goes on where it stopped, and replays are still recognised
        assert (await append(reopened, chain[2:])).placements == (Placement.DUPLICATE,
                                                                  Placement.NEXT)
        assert positions(await stored(reopened)) == expected(chain)
    finally:
        await reopened.close()


async def test_close_twice_is_harmless(ledger: InspectableLedger) -> None:
    await ledger.summary()
    await ledger.close()
    await ledger.close()


async def test_a_read_only_ledger_reads_everything_and_writes_nothing(
        backend: Backend, ledger: InspectableLedger, plant_a: Collector) -> None:
    chain = plant_a.chain(3)
    await ledger.enroll(plant_a.key)
    await append(ledger, chain[:2])
    await ledger.quarantine([entry("malformed_message")])

    reader = backend.open(read_only=True)
    try:
        assert await reader.collector_keys() == {"plant-a": plant_a.key}
        assert await reader.head("plant-a") == ChainHead(2, chain[1].hash)
        assert positions(await stored(reader)) == expected(chain[:2])
        assert await reader.summary() == await ledger.summary()
        assert await reader.quarantine_entries() == [entry("malformed_message")]

        with pytest.raises(LedgerError):
            await reader.enroll(Collector("plant-b").key)
        with pytest.raises(LedgerError):
            await append(reader, chain[2:])
        with pytest.raises(LedgerError):
            await reader.quarantine([entry("unknown_collector")])

        # the writer goes on, and the reader sees it
        await append(ledger, chain[2:])
        assert await reader.head("plant-a") == ChainHead(3, chain[2].hash)
    finally:
        await reader.close()
    assert await ledger.collector_keys() == {"plant-a": plant_a.key}


async def test_a_read_only_ledger_on_a_missing_store_raises_ledger_error(backend: Backend) -> None:
    reader = backend.open_missing()
    try:
        with pytest.raises(LedgerError):
            await reader.head("plant-a")
        with pytest.raises(LedgerError):
            await stored(reader)
    finally:
        await reader.close()
    assert not backend.missing_was_created()


# --- following the ledger: heads, reading after a sequence, config documents, sink cursors -------------


async def test_heads_lists_every_collector_with_stored_blocks(
        ledger: InspectableLedger, plant_a: Collector, plant_b: Collector) -> None:
    assert await ledger.heads() == {}
    a_blocks, b_blocks = plant_a.chain(3), plant_b.chain(2)
    await append(ledger, a_blocks)
    await append(ledger, b_blocks)
    # a collector whose first offered block was refused has no chain yet
    plant_c = Collector("plant-c")
    await append(ledger, [plant_c.chain(2)[1]])

    assert await ledger.heads() == {"plant-a": ChainHead(3, a_blocks[2].hash),
                                    "plant-b": ChainHead(2, b_blocks[1].hash)}


async def test_read_blocks_returns_one_collectors_chain_after_a_sequence(
        ledger: InspectableLedger, plant_a: Collector, plant_b: Collector) -> None:
    a_blocks, b_blocks = plant_a.chain(5), plant_b.chain(2)
    await append(ledger, a_blocks[:2])
    await append(ledger, b_blocks)
    await append(ledger, a_blocks[2:])

    first = await ledger.read_blocks("plant-a", after_sequence=0, limit=2)
    rest = await ledger.read_blocks("plant-a", after_sequence=2, limit=100)

    assert positions(first) == expected(a_blocks[:2])
    assert positions(rest) == expected(a_blocks[2:])
    assert [(r.hash, r.signature, r.key_id) for r in rest] == [
        (b.hash, b.signature, b.key_id) for b in a_blocks[2:]]
    assert await ledger.read_blocks("plant-a", after_sequence=5, limit=100) == []
    assert positions(await ledger.read_blocks("plant-b", after_sequence=1, limit=1)) == expected(
        b_blocks[1:])
    assert await ledger.read_blocks("plant-z", after_sequence=0, limit=100) == []


async def test_find_config_returns_the_document_a_digest_names(
        ledger: InspectableLedger, plant_a: Collector, plant_b: Collector) -> None:
    first_document = b'{"collector_id":"plant-a","devices":[],"format":"stackline.config/v1"}'
    second_document = b'{"collector_id":"plant-a","devices":[],"format":"stackline.config/v1","x":1}'
    chain = [plant_a.config_block(1, GENESIS_HASH, first_document)]
    chain += plant_a.chain(2, after=chain[-1])
    chain.append(plant_a.config_block(4, chain[-1].hash, second_document))
    chain += plant_a.chain(1, after=chain[-1])
    await append(ledger, chain)
    await append(ledger, plant_b.chain(1))

    for document in (first_document, second_document):
        found = await ledger.find_config("plant-a", hashlib.sha256(document).digest())
        assert found == document
    assert await ledger.find_config("plant-a", CONFIG_DIGEST) is None  # no CONFIG block has it
    assert await ledger.find_config("plant-b", hashlib.sha256(first_document).digest()) is None
    assert await ledger.find_config("plant-z", hashlib.sha256(first_document).digest()) is None


async def test_a_sink_cursor_starts_at_zero_and_moves_by_compare_and_set(
        ledger: InspectableLedger, plant_a: Collector, plant_b: Collector) -> None:
    await append(ledger, plant_a.chain(6))
    await append(ledger, plant_b.chain(2))
    assert await ledger.sink_positions("timeseries") == {}

    assert await ledger.advance_sink("timeseries", "plant-a", from_sequence=0, to_sequence=3)
    assert await ledger.advance_sink("timeseries", "plant-b", from_sequence=0, to_sequence=2)
    # a gateway that still believes the cursor is at 0 (another one moved it) changes nothing
    assert not await ledger.advance_sink("timeseries", "plant-a", from_sequence=0, to_sequence=4)
    assert not await ledger.advance_sink("timeseries", "plant-a", from_sequence=2, to_sequence=4)
    assert await ledger.sink_positions("timeseries") == {"plant-a": 3, "plant-b": 2}

    assert await ledger.advance_sink("timeseries", "plant-a", from_sequence=3, to_sequence=6)
    assert await ledger.advance_sink("timeseries", "plant-a", from_sequence=6, to_sequence=6)
    # another consumer's cursor is independent
    assert await ledger.advance_sink("archive", "plant-a", from_sequence=0, to_sequence=1)
    assert await ledger.sink_positions("timeseries") == {"plant-a": 6, "plant-b": 2}
    assert await ledger.sink_positions("archive") == {"plant-a": 1}


async def test_a_sink_cursor_moves_neither_back_nor_past_the_chain_head(
        ledger: InspectableLedger, plant_a: Collector) -> None:
    await append(ledger, plant_a.chain(3))
    assert await ledger.advance_sink("timeseries", "plant-a", from_sequence=0, to_sequence=2)

    with pytest.raises(ValueError, match="back"):
        await ledger.advance_sink("timeseries", "plant-a", from_sequence=2, to_sequence=1)
    with pytest.raises(ValueError, match="chain head"):
        await ledger.advance_sink("timeseries", "plant-a", from_sequence=2, to_sequence=4)
    with pytest.raises(ValueError, match="chain head"):
        await ledger.advance_sink("timeseries", "plant-z", from_sequence=0, to_sequence=1)

    assert await ledger.sink_positions("timeseries") == {"plant-a": 2}


async def test_two_gateways_advancing_one_cursor_at_once_move_it_once(
        backend: Backend, plant_a: Collector) -> None:
    first, second = backend.open(), backend.open()
    try:
        await append(first, plant_a.chain(8))
        for start, end in ((0, 4), (4, 8)):
            moved = await asyncio.gather(
                first.advance_sink("timeseries", "plant-a", from_sequence=start, to_sequence=end),
                second.advance_sink("timeseries", "plant-a", from_sequence=start, to_sequence=end))
            assert sorted(moved) == [False, True]
            assert await second.sink_positions("timeseries") == {"plant-a": end}
    finally:
        await first.close()
        await second.close()


async def test_sink_cursors_survive_reopening_and_read_only_ledgers_only_read_them(
        backend: Backend, plant_a: Collector) -> None:
    writer = backend.open()
    await append(writer, plant_a.chain(3))
    assert await writer.advance_sink("timeseries", "plant-a", from_sequence=0, to_sequence=2)
    await writer.close()

    reopened = backend.open()
    reader = backend.open(read_only=True)
    try:
        assert await reopened.sink_positions("timeseries") == {"plant-a": 2}
        assert await reader.sink_positions("timeseries") == {"plant-a": 2}
        assert await reader.heads() == await reopened.heads()
        with pytest.raises(LedgerError):
            await reader.advance_sink("timeseries", "plant-a", from_sequence=2, to_sequence=3)
        assert await reopened.sink_positions("timeseries") == {"plant-a": 2}
    finally:
        await reader.close()
        await reopened.close()


# --- SQLite specifics -----------------------------------------------------------------------------------


async def test_sqlite_iter_blocks_reads_page_by_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     plant_a: Collector, plant_b: Collector) -> None:
    monkeypatch.setattr(gateway.ledger.sqlite, "PAGE_ROWS", 2)
    ledger = SqliteLedger(path=tmp_path / "ledger.sqlite")
    try:
        a_blocks, b_blocks = plant_a.chain(5), plant_b.chain(3)
        await append(ledger, b_blocks)
        await append(ledger, a_blocks)

        assert positions(await stored(ledger)) == expected(a_blocks + b_blocks)
        assert positions(await stored(ledger, "plant-a")) == expected(a_blocks)
    finally:
        await ledger.close()


async def test_sqlite_file_that_is_not_a_ledger_raises_ledger_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(b"this is a text file, not a SQLite database\n" * 100)
    ledger = SqliteLedger(path=path)
    try:
        with pytest.raises(LedgerError, match=r"ledger\.sqlite: file is not a database"):
            await ledger.head("plant-a")
    finally:
        await ledger.close()


# --- PostgreSQL specifics -------------------------------------------------------------------------------


async def test_postgres_iter_blocks_reads_page_by_page(postgres_url: str,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       plant_a: Collector, plant_b: Collector) -> None:
    monkeypatch.setattr(gateway.ledger.postgres, "PAGE_ROWS", 2)
    ledger = PostgresLedger(url=postgres_url)
    try:
        a_blocks, b_blocks = plant_a.chain(5), plant_b.chain(3)
        await append(ledger, b_blocks)
        await append(ledger, a_blocks)

        assert positions(await stored(ledger)) == expected(a_blocks + b_blocks)
        assert positions(await stored(ledger, "plant-a")) == expected(a_blocks)
    finally:
        await ledger.close()


async def test_postgres_blocks_cannot_be_truncated(postgres_url: str, plant_a: Collector) -> None:
    ledger = PostgresLedger(url=postgres_url)
    try:
        await append(ledger, plant_a.chain(2))
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await pg_execute(postgres_url, "TRUNCATE blocks")
        assert len(await stored(ledger)) == 2
    finally:
        await ledger.close()


# --- group commit (SQLite) -------------------------------------------------------------------------


async def test_appends_waiting_together_share_one_commit_and_fail_alone(tmp_path: Path) -> None:
    """Many collectors' batches arriving at once are written in one synced transaction (one
    disk sync instead of one each); a batch that cannot be written fails alone, in its own
    savepoint, and the others are stored."""
    from tests.demo_blocks import DemoCollector  # noqa: PLC0415 - only this test needs it

    ledger = SqliteLedger(path=tmp_path / "ledger.sqlite")
    await ledger.open()
    groups: list[int] = []
    group = ledger._append_group

    def counting(db: sqlite3.Connection, *, requests: list[Any]) -> list[Any]:
        groups.append(len(requests))
        return group(db, requests=requests)
    ledger._append_group = counting  # type: ignore[method-assign]
    try:
        plants = [DemoCollector(f"plant-{n:02d}-c1") for n in range(40)]
        chains = [plant.chain(3) for plant in plants]
        broken = chains[17][1]
        chains[17][1] = VerifiedBlock(**{**{f: getattr(broken, f) for f in broken.__slots__},
                                         "payload": None})
        outcomes = await asyncio.gather(
            *(ledger.append(plant.collector_id, chain, transport="test", peer="test",
                            received_unix_ms=0) for plant, chain in zip(plants, chains, strict=True)),
            return_exceptions=True)
        assert groups == [40]                        # one transaction for all forty
        failed = [n for n, outcome in enumerate(outcomes) if isinstance(outcome, BaseException)]
        assert failed == [17]
        heads = await ledger.heads()
        assert plants[17].collector_id not in heads  # nothing of the failed batch, not even block 1
        assert {cid: head.sequence for cid, head in heads.items()} == {
            plant.collector_id: 4 for n, plant in enumerate(plants) if n != 17}
    finally:
        await ledger.close()
