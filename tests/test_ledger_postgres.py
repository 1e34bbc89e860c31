"""The PostgreSQL ledger beyond the shared contract (tests/test_ledger.py runs that over both
backends): several gateway processes on one database, schema migrations, errors at the boundary,
and `stackline verify` / `stackline gateway enroll` on a postgresql:// ledger."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import asyncpg
import nacl.signing
import pytest
import yaml

import gateway.ledger.postgres
from gateway.config import load_gateway_config
from gateway.errors import LedgerError, RetryableLedgerError
from gateway.ingest import IngestCore
from gateway.ledger import AppendResult, PostgresLedger, open_ledger
from gateway.ledger.postgres import MIGRATIONS, SCHEMA_VERSION, Migration, redact
from gateway.runtime import GatewayRuntime, enroll_collector
from gateway.verifier import verify_ledger
from proto.chain import ChainHead, Placement
from proto.keys import generate_key_files
from proto.wire import GENESIS_HASH, Signer
from tests.conftest import free_port, pg_execute, pg_fetchval
from tests.support import run_stackline
from tests.test_ledger import Collector, append, expected, positions, stored
from tests.test_verify import _chain as signed_chain

# --- several gateways on one database -----------------------------------------------------------------

ROUNDS = 12
STEP = 5


async def test_three_gateways_appending_overlapping_batches_keep_every_chain_whole(
        postgres_url: str) -> None:
    """Three ledgers with their own pools (three gateway processes) receive the same collectors'
    blocks over and over, in racing, overlapping and successive batches."""
    collectors = [Collector(f"plant-{name}") for name in "abc"]
    chains = {c.collector_id: c.chain(ROUNDS * STEP) for c in collectors}
    gateways = [PostgresLedger(url=postgres_url, pool_max_size=4) for _ in range(3)]
    shuffle = random.Random(20240601)
    try:
        await asyncio.gather(*(gateway.open() for gateway in gateways))  # migrate at once, too
        for collector in collectors:
            await gateways[0].enroll(collector.key)
        results: list[tuple[str, list[int], AppendResult]] = []

        async def offer(gateway: PostgresLedger, collector_id: str, lo: int, hi: int) -> None:
            batch = chains[collector_id][lo:hi]
            results.append((collector_id, [b.sequence for b in batch], await append(gateway, batch)))

        for round_ in range(ROUNDS):
            lo, hi, mid = round_ * STEP, (round_ + 1) * STEP, round_ * STEP + STEP // 2
            jobs = []
            for collector_id in chains:
                jobs += [
                    offer(gateways[0], collector_id, lo, mid),  # two successive batches that
                    offer(gateways[1], collector_id, mid, hi),  # race: a gap if the 2nd wins
                    offer(gateways[1], collector_id, max(0, lo - 3), hi),  # overlaps the stored
                    offer(gateways[2], collector_id, lo, hi),  # the same batch twice at once
                    offer(gateways[2], collector_id, lo, hi),  # (e.g. over gRPC and MQTT)
                ]
            shuffle.shuffle(jobs)
            await asyncio.gather(*jobs)

        # every block was placed NEXT exactly once; the rest were duplicates or early (gaps)
        stored_by: Counter[tuple[str, int]] = Counter()
        for collector_id, sequences, result in results:
            for sequence, placement in zip(sequences, result.placements, strict=False):
                assert placement in (Placement.NEXT, Placement.DUPLICATE, Placement.SEQUENCE_GAP)
                if placement is Placement.NEXT:
                    stored_by[(collector_id, sequence)] += 1
        assert stored_by == Counter({(cid, b.sequence): 1 for cid, chain in chains.items()
                                     for b in chain})

        reader = gateways[1]
        all_blocks = [b for cid in sorted(chains) for b in chains[cid]]
        assert positions(await stored(reader)) == expected(all_blocks)
        for collector_id, chain in chains.items():
            assert await reader.head(collector_id) == ChainHead(len(chain), chain[-1].hash)
        report = await verify_ledger(reader)
        assert report.ok, report.findings[:5]
        assert (report.total("blocks"), report.total("gaps")) == (len(all_blocks), 0)
        # early batches are kept as evidence of the race, never as an alarm
        entries = await reader.quarantine_entries()
        assert all(e.reason == "sequence_gap" and not e.alarm for e in entries)
        summary = await reader.summary()
        assert (summary.blocks, summary.collectors) == (len(all_blocks), 3)
        assert summary.quarantined == len(entries)
    finally:
        await asyncio.gather(*(gateway.close() for gateway in gateways))


async def test_three_gateways_opening_a_new_database_at_once_migrate_it_once(
        postgres_url: str) -> None:
    gateways = [PostgresLedger(url=postgres_url) for _ in range(3)]
    try:
        await asyncio.gather(*(gateway.open() for gateway in gateways))
        conn = await asyncpg.connect(postgres_url)
        try:
            rows = await conn.fetch("SELECT version, description FROM schema_version ORDER BY version")
        finally:
            await conn.close()
        assert [(r["version"], r["description"]) for r in rows] == [
            (m.version, m.description) for m in MIGRATIONS]
        assert rows[-1]["version"] == SCHEMA_VERSION
    finally:
        await asyncio.gather(*(gateway.close() for gateway in gateways))


async def test_a_new_migration_step_is_applied_to_an_existing_ledger_once(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    chain = Collector("plant-a").chain(3)
    first = PostgresLedger(url=postgres_url)
    await append(first, chain)
    await first.close()
    step = Migration(SCHEMA_VERSION + 1, "index blocks by window",
                     ("CREATE INDEX blocks_by_window ON blocks (window_start_unix_ms)",))
    monkeypatch.setattr(gateway.ledger.postgres, "MIGRATIONS", (*MIGRATIONS, step))
    monkeypatch.setattr(gateway.ledger.postgres, "SCHEMA_VERSION", step.version)

    # an old read-only verifier must not migrate: it asks for a writable open first
    reader = PostgresLedger(url=postgres_url, read_only=True)
    with pytest.raises(LedgerError, match="open it writable once to migrate"):
        await reader.open()
    await reader.close()
    upgraded = [PostgresLedger(url=postgres_url) for _ in range(2)]
    try:
        await asyncio.gather(*(ledger.open() for ledger in upgraded))
        assert positions(await stored(upgraded[0])) == expected(chain)
    finally:
        await asyncio.gather(*(ledger.close() for ledger in upgraded))
    assert await pg_fetchval(postgres_url, "SELECT array_agg(version ORDER BY version) "
                             "FROM schema_version") == [*range(1, step.version + 1)]
    assert await pg_fetchval(postgres_url, "SELECT to_regclass('blocks_by_window')::text") == (
        "blocks_by_window")


async def test_a_ledger_made_before_sink_cursors_is_migrated_and_keeps_its_blocks(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    collector = Collector("plant-a")
    document = b'{"devices":[],"format":"stackline.config/v1"}'
    chain = [collector.config_block(1, GENESIS_HASH, document)]
    chain += collector.chain(3, after=chain[0])
    with monkeypatch.context() as patched:  # a gateway from before migration 2
        patched.setattr(gateway.ledger.postgres, "MIGRATIONS", MIGRATIONS[:1])
        patched.setattr(gateway.ledger.postgres, "SCHEMA_VERSION", 1)
        old = PostgresLedger(url=postgres_url)
        await append(old, chain)
        await old.close()
    assert await pg_fetchval(postgres_url, "SELECT to_regclass('sink_cursors')::text") is None

    upgraded = PostgresLedger(url=postgres_url)
    try:
        assert positions(await stored(upgraded)) == expected(chain)
        assert await upgraded.find_config("plant-a", hashlib.sha256(document).digest()) == document
        assert await upgraded.advance_sink("timeseries", "plant-a", from_sequence=0, to_sequence=4)
        assert await upgraded.sink_positions("timeseries") == {"plant-a": 4}
    finally:
        await upgraded.close()
    assert await pg_fetchval(postgres_url, "SELECT MAX(version) FROM schema_version") == (
        SCHEMA_VERSION)


# --- schema checks and errors at the boundary -------------------------------------------------------------


async def test_a_read_only_ledger_on_a_database_without_a_ledger_says_so(postgres_url: str) -> None:
    reader = PostgresLedger(url=postgres_url, read_only=True)
    try:
        with pytest.raises(LedgerError, match=r"no ledger at .*holds no ledger schema"):
            await reader.open()
    finally:
        await reader.close()
    # and it created nothing
    assert await pg_fetchval(postgres_url, "SELECT to_regclass('schema_version')::text") is None


async def test_a_ledger_from_a_newer_gateway_is_refused(postgres_url: str) -> None:
    first = PostgresLedger(url=postgres_url)
    await first.open()
    await first.close()
    await pg_execute(postgres_url, "INSERT INTO schema_version VALUES (99, 'from the future', 0)")

    for read_only in (False, True):
        ledger = PostgresLedger(url=postgres_url, read_only=read_only)
        try:
            with pytest.raises(LedgerError, match="has schema 99, this gateway knows only up to"):
                await ledger.head("plant-a")
        finally:
            await ledger.close()


async def test_an_unreachable_server_is_a_retryable_error_without_the_password() -> None:
    ledger = PostgresLedger(url=f"postgresql://stackline:s3cret@127.0.0.1:{free_port()}/ledger")
    try:
        with pytest.raises(RetryableLedgerError, match="unreachable") as caught:
            await ledger.open()
        assert caught.value.retry_after_s > 0
        assert "s3cret" not in str(caught.value)
        assert "stackline:***@127.0.0.1" in str(caught.value)
    finally:
        await ledger.close()


@pytest.mark.parametrize("error", [
    asyncpg.SerializationError("could not serialize access due to concurrent update"),
    asyncpg.DeadlockDetectedError("deadlock detected"),
    asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.CannotConnectNowError("the database system is starting up"),
    asyncpg.TooManyConnectionsError("sorry, too many clients already"),
])
def test_conflicts_and_outages_translate_to_retryable_errors(error: Exception) -> None:
    translated = PostgresLedger(url="postgresql://db.example/ledger")._translate(error)
    assert isinstance(translated, RetryableLedgerError)
    assert translated.retry_after_s > 0


def test_other_server_errors_are_ledger_errors() -> None:
    translated = PostgresLedger(url="postgresql://db.example/ledger")._translate(
        asyncpg.UndefinedTableError('relation "blocks" does not exist'))
    assert type(translated) is LedgerError
    assert "postgresql://db.example/ledger" in str(translated)


def test_redact_hides_passwords_in_the_authority_and_the_query() -> None:
    assert redact("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("postgresql://u@h/db?password=pw&search_path=s") == (
        "postgresql://u@h/db?password=%2A%2A%2A&search_path=s")
    assert redact("postgresql://h/db") == "postgresql://h/db"


async def test_a_closed_ledger_refuses_work(postgres_url: str) -> None:
    ledger = PostgresLedger(url=postgres_url)
    await ledger.open()
    await ledger.close()
    with pytest.raises(LedgerError, match="closed"):
        await ledger.head("plant-a")


# --- the gateway and the command line on PostgreSQL -------------------------------------------------------


def _gateway_config(directory: Path, url: str) -> Path:
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump({"gateway": {"id": "pg-gateway"},
                                    "listen": {"grpc": "127.0.0.1:0"},
                                    "ledger": {"url": url}}))
    return path


async def test_the_gateway_runtime_stores_into_the_configured_postgres_ledger(
        tmp_path: Path, postgres_url: str) -> None:
    runtime = GatewayRuntime(config=load_gateway_config(_gateway_config(tmp_path, postgres_url)))
    assert isinstance(runtime.ledger, PostgresLedger)
    await runtime.start()
    try:
        signer = Signer(signing_key=nacl.signing.SigningKey.generate())
        await enroll_collector(runtime.ledger, collector_id="plant-a-c1", public_key=signer.public_key)
        outcome = await runtime.core.ingest(collector_id="plant-a-c1",
                                            envelopes=signed_chain(signer, "plant-a-c1", 4),
                                            transport="test", peer="test")
        assert outcome.head.sequence == 4 and not outcome.refusals
    finally:
        await runtime.stop()
    reader = open_ledger(postgres_url, read_only=True)
    try:
        assert (await reader.summary()).blocks == 4
    finally:
        await reader.close()


async def test_gateway_enroll_writes_the_key_to_postgres(tmp_path: Path, postgres_url: str) -> None:
    public_path, key_id = generate_key_files(tmp_path / "c1.key")
    config = _gateway_config(tmp_path, postgres_url)

    result = await asyncio.to_thread(run_stackline, "gateway", "enroll", "--config", str(config),
                                     "--collector-id", "plant-a-c1", "--public-key", str(public_path))

    assert result.returncode == 0, result.stderr
    assert key_id in result.stdout
    ledger = PostgresLedger(url=postgres_url, read_only=True)
    try:
        assert (await ledger.collector_keys())["plant-a-c1"].key_id == key_id
    finally:
        await ledger.close()


BLOCKS = 8


async def test_verify_on_postgres_passes_a_clean_ledger_and_names_a_flipped_byte(
        postgres_database: str) -> None:
    ledger = PostgresLedger(url=postgres_database)
    core = IngestCore(ledger=ledger)
    for collector_id in ("plant-a-c1", "plant-b-c1"):
        signer = Signer(signing_key=nacl.signing.SigningKey.generate())
        await enroll_collector(ledger, collector_id=collector_id, public_key=signer.public_key)
        outcome = await core.ingest(collector_id=collector_id,
                                    envelopes=signed_chain(signer, collector_id, BLOCKS),
                                    transport="test", peer="test")
        assert outcome.head.sequence == BLOCKS and not outcome.refusals
    await ledger.close()

    clean = await asyncio.to_thread(run_stackline, "verify", "--ledger", postgres_database, "--json")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    report = json.loads(clean.stdout)
    assert (report["ok"], report["blocks"], report["collectors"]) == (True, 2 * BLOCKS, 2)

    # what someone with write access to the database can do: drop the guard, change one payload
    payload = await pg_fetchval(postgres_database, "SELECT payload FROM blocks WHERE collector_id = "
                                "'plant-b-c1' AND sequence = 5")
    flipped = bytearray(payload)
    flipped[len(flipped) // 2] ^= 0x01
    conn = await asyncpg.connect(postgres_database)
    try:
        await conn.execute("DROP TRIGGER blocks_no_update ON blocks")
        await conn.execute("UPDATE blocks SET payload = $1 WHERE collector_id = 'plant-b-c1' "
                           "AND sequence = 5", bytes(flipped))
    finally:
        await conn.close()

    tampered = await asyncio.to_thread(run_stackline, "verify", "--ledger", postgres_database,
                                       "--json")
    assert tampered.returncode == 1, tampered.stdout + tampered.stderr
    findings = json.loads(tampered.stdout)["findings"]
    assert ("plant-b-c1", 5, "bad_signature") in {(f["collector_id"], f["sequence"], f["problem"])
                                                  for f in findings}


async def test_verify_on_a_missing_postgres_database_is_a_clear_error(postgres_url: str) -> None:
    missing = postgres_url.split("?", maxsplit=1)[0] + "_absent"
    result = await asyncio.to_thread(run_stackline, "verify", "--ledger", missing)
    assert result.returncode == 2
    assert "no ledger at" in result.stderr and "does not exist" in result.stderr
