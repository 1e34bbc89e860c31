"""The transparency log kept in the ledger (SQLite and PostgreSQL): leaves in acceptance order,
roots equal to RFC 9162's MTH over the stored payloads, proofs that verify, checkpoints that
are signed and kept once per size, and the log key a ledger is bound to."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import nacl.signing
import pytest

from gateway.errors import LedgerError
from gateway.ledger import Ledger, PostgresLedger, SqliteLedger
from gateway.ledger.postgres import _CREATE_SCHEMA_VERSION, MIGRATION_LOCK_KEY, MIGRATIONS
from gateway.translog.audit import audit_log
from gateway.translog.checkpoint import Checkpoint, parse_checkpoint
from gateway.translog.log import LogKeyMismatch, TransparencyLog
from gateway.translog.merkle import (
    ProofError,
    ProofFailure,
    ProofRequestError,
    leaf_hash,
    root_from_leaves,
    verify_consistency,
    verify_inclusion,
)
from tests.conftest import pg_execute
from tests.demo_blocks import DemoCollector

ORIGIN = "stackline.test/log"


async def _store(ledger: Ledger, plant: DemoCollector, blocks: int) -> list[bytes]:
    chain = plant.chain(blocks)
    await ledger.append(plant.collector_id, chain, transport="test", peer="test",
                        received_unix_ms=0)
    return [b.payload for b in chain]


async def test_leaves_follow_acceptance_order_and_the_root_is_rfc_9162s(any_ledger: Ledger) -> None:
    a, b = DemoCollector("plant-a-c1"), DemoCollector("plant-b-c1")
    accepted = await _store(any_ledger, a, 3)          # a#1..4
    accepted += await _store(any_ledger, b, 2)         # b#1..3
    accepted += await _store(any_ledger, a, 2)         # a#5..6
    assert await any_ledger.log_integrate(max_leaves=4) == (4, 4)   # in batches, in order
    assert await any_ledger.log_integrate(max_leaves=100) == (9, 5)
    assert await any_ledger.log_integrate(max_leaves=100) == (9, 0)
    tree = any_ledger.log_tree()
    leaves = [leaf_hash(p) for p in accepted]
    for size in range(len(leaves) + 1):
        assert await tree.root(size) == root_from_leaves(leaves[:size])
    assert await any_ledger.log_leaf(4) == ("plant-b-c1", 1)
    assert await any_ledger.log_leaf(9) is None
    assert await any_ledger.log_leaf_indexes("plant-a-c1", 4, 6) == {4: 3, 5: 7, 6: 8}
    assert await any_ledger.log_latest_leaves(["plant-a-c1", "plant-b-c1"], below_size=7) == {
        "plant-a-c1": (4, 3), "plant-b-c1": (3, 6)}
    assert await any_ledger.log_latest_leaves(["plant-a-c1", "plant-b-c1", "nobody"],
                                              below_size=4) == {"plant-a-c1": (4, 3)}
    assert await any_ledger.log_latest_leaves([], below_size=9) == {}
    root = await tree.root(9)
    for index, leaf in enumerate(leaves):
        verify_inclusion(leaf_hash=leaf, index=index, size=9,
                         proof=await tree.inclusion_proof(index, 9), root=root)
    for old in range(1, 9):
        verify_consistency(old_size=old, new_size=9, old_root=await tree.root(old), new_root=root,
                           proof=await tree.consistency_proof(old, 9))
    with pytest.raises(ProofRequestError):
        await tree.inclusion_proof(9, 9)


async def test_checkpoints_are_signed_kept_once_per_size_and_bind_the_ledger_to_one_key(
        any_ledger: Ledger) -> None:
    plant = DemoCollector()
    key = nacl.signing.SigningKey.generate()
    log = TransparencyLog(ledger=any_ledger, origin=ORIGIN, signing_key=key)
    await log.start()
    await _store(any_ledger, plant, 4)
    first = await log.publish()
    assert first.tree_size == 5
    parsed = parse_checkpoint(first.note, name=ORIGIN, public_key=bytes(key.verify_key))
    assert (parsed.origin, parsed.size, parsed.root_hash) == (ORIGIN, 5, first.root_hash)
    assert await log.publish() == first            # nothing new: the same checkpoint
    await _store(any_ledger, plant, 3)
    second = await log.publish()
    assert second.tree_size == 8
    assert await any_ledger.checkpoint() == second
    assert await any_ledger.checkpoint(5) == first
    assert await any_ledger.checkpoints(before_size=8) == [first]
    proof = await log.consistency(5, 8)
    verify_consistency(old_size=5, new_size=8, old_root=first.root_hash,
                       new_root=second.root_hash, proof=proof)
    audited = await audit_log(any_ledger)
    assert audited.ok and (audited.size, audited.checkpoints_checked) == (8, 2), audited.findings
    # another gateway of this any_ledger with another key must not sign its checkpoints
    other = TransparencyLog(ledger=any_ledger, origin=ORIGIN,
                            signing_key=nacl.signing.SigningKey.generate())
    with pytest.raises(LogKeyMismatch, match=r"same log\.key_file"):
        await other.start()


async def test_a_receipt_proves_the_newest_block_and_that_the_log_only_grew(any_ledger: Ledger) -> None:
    plant = DemoCollector()
    key = nacl.signing.SigningKey.generate()
    log = TransparencyLog(ledger=any_ledger, origin=ORIGIN, signing_key=key)
    await log.start()
    assert await log.receipt(plant.collector_id, 0) is None  # nothing published yet
    payloads = await _store(any_ledger, plant, 2)
    first = await log.publish()
    receipt = await log.receipt(plant.collector_id, 0)
    assert receipt is not None
    assert (receipt.sequence, receipt.leaf_index, receipt.checkpoint) == (3, 2, first.note)
    verify_inclusion(leaf_hash=leaf_hash(payloads[2]), index=2, size=3,
                     proof=list(receipt.inclusion_path), root=first.root_hash)
    assert await log.receipt(plant.collector_id, 3) is None  # it holds this one already
    await _store(any_ledger, plant, 2)
    second = await log.publish()
    grown = await log.receipt(plant.collector_id, 3)
    assert grown is not None and grown.consistency_from_size == 3
    verify_consistency(old_size=3, new_size=5, old_root=first.root_hash,
                       new_root=second.root_hash, proof=list(grown.consistency_path))


async def test_receipts_for_a_fleet_are_made_at_once_per_checkpoint_and_each_verifies(
        any_ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every collector asks for its receipt right after a checkpoint: the audit paths of all of
    them come from one lookup of the newest leaves (not one per collector), each receipt proves
    its own collector's newest block, and no failure is kept as the answer (neither the
    ledger's nor an unexpected one)."""
    plants = [DemoCollector(f"plant-{n:02d}-c1") for n in range(12)]
    payloads = {p.collector_id: await _store(any_ledger, p, n % 3 + 1) for n, p in enumerate(plants)}
    log = TransparencyLog(ledger=any_ledger, origin=ORIGIN,
                          signing_key=nacl.signing.SigningKey.generate())
    await log.start()
    checkpoint = await log.publish()
    lookups: list[int] = []
    real = any_ledger.log_latest_leaves

    async def counted(collector_ids: Sequence[str], *, below_size: int) -> dict[str, tuple[int, int]]:
        lookups.append(len(collector_ids))
        if len(lookups) == 1:
            raise LedgerError("the ledger is away")
        if len(lookups) == 2:
            raise RuntimeError("cannot schedule new futures after shutdown")
        return await real(collector_ids, below_size=below_size)

    monkeypatch.setattr(any_ledger, "log_latest_leaves", counted)
    with pytest.raises(LedgerError):  # the first tries fail: the acks go without a receipt
        await log.receipt(plants[0].collector_id, 0)
    with pytest.raises(RuntimeError):
        await log.receipt(plants[0].collector_id, 0)
    receipts = await asyncio.gather(*(log.receipt(p.collector_id, 0) for p in plants))
    assert lookups == [len(plants)] * 3  # no failure was kept; then one lookup for all
    for plant, receipt in zip(plants, receipts, strict=True):
        assert receipt is not None and receipt.checkpoint == checkpoint.note
        newest = payloads[plant.collector_id][-1]
        assert receipt.sequence == len(payloads[plant.collector_id])
        verify_inclusion(leaf_hash=leaf_hash(newest), index=receipt.leaf_index,
                         size=checkpoint.tree_size, proof=list(receipt.inclusion_path),
                         root=checkpoint.root_hash)
    assert await log.receipt("never-enrolled", 0) is None
    assert lookups == [len(plants)] * 3  # kept until the next checkpoint


async def test_a_node_written_twice_is_refused_rather_than_forking_the_log(tmp_path: Path) -> None:
    ledger = SqliteLedger(path=tmp_path / "ledger.sqlite")
    try:
        plant = DemoCollector()
        await _store(ledger, plant, 2)
        await ledger.log_integrate(max_leaves=10)

        def rewind(db: sqlite3.Connection) -> None:  # a second writer that believes the log is empty
            db.execute("UPDATE log_state SET size = 0, entry_watermark = 0")
        await ledger._run(rewind)
        with pytest.raises(LedgerError):
            await ledger.log_integrate(max_leaves=10)
    finally:
        await ledger.close()


async def test_two_integrators_on_one_postgresql_ledger_build_one_tree(postgres_url: str) -> None:
    writers = [PostgresLedger(url=postgres_url) for _ in range(2)]
    try:
        plant = DemoCollector()
        payloads = await _store(writers[0], plant, 40)
        results = await asyncio.gather(*(w.log_integrate(max_leaves=7) for w in writers * 4))
        assert sum(added for _, added in results) <= len(payloads)
        while (await writers[1].log_integrate(max_leaves=100))[1]:
            pass
        tree = writers[1].log_tree()
        assert await tree.size() == len(payloads)
        assert await tree.root(len(payloads)) == root_from_leaves([leaf_hash(p) for p in payloads])
    finally:
        for writer in writers:
            await writer.close()


async def test_a_rewritten_history_fails_the_consistency_proof_from_an_earlier_checkpoint(
        tmp_path: Path) -> None:
    """Checkpoint c1 of the honest log; then a log whose first blocks came in another order (the
    same data, accepted differently: history rewritten) grows past it. Its consistency proof from
    c1's size to its own checkpoint does not reproduce c1's root."""
    key = nacl.signing.SigningKey(b"\x05" * 32)
    a, b = DemoCollector("plant-a-c1"), DemoCollector("plant-b-c1")
    chain_a, chain_b = a.chain(3), b.chain(3)
    honest = SqliteLedger(path=tmp_path / "honest.sqlite")
    rewritten = SqliteLedger(path=tmp_path / "rewritten.sqlite")
    try:
        for ledger, order in ((honest, (a, b)), (rewritten, (b, a))):
            for plant in order:
                await ledger.append(plant.collector_id, chain_a if plant is a else chain_b,
                                    transport="test", peer="test", received_unix_ms=0)
        c1 = await TransparencyLog(ledger=honest, origin=ORIGIN, signing_key=key).publish()
        await rewritten.append(a.collector_id, a.chain(2), transport="test", peer="test",
                               received_unix_ms=0)
        forked = TransparencyLog(ledger=rewritten, origin=ORIGIN, signing_key=key)
        c2 = await forked.publish()
        assert c2.tree_size > c1.tree_size
        parse_checkpoint(c2.note, name=ORIGIN, public_key=bytes(key.verify_key))  # signed alike
        with pytest.raises(ProofError) as caught:
            verify_consistency(old_size=c1.tree_size, new_size=c2.tree_size, old_root=c1.root_hash,
                               new_root=c2.root_hash,
                               proof=await forked.consistency(c1.tree_size, c2.tree_size))
        # the proof cannot lead to both roots: which one it misses depends on the sizes
        assert caught.value.reason in (ProofFailure.OLD_ROOT_MISMATCH, ProofFailure.ROOT_MISMATCH)
    finally:
        await honest.close()
        await rewritten.close()


async def test_the_log_audit_passes_a_sound_log_and_names_each_kind_of_damage(tmp_path: Path) -> None:
    ledger = SqliteLedger(path=tmp_path / "ledger.sqlite")
    try:
        plant = DemoCollector()
        log = TransparencyLog(ledger=ledger, origin=ORIGIN,
                              signing_key=nacl.signing.SigningKey(b"\x03" * 32))
        await log.start()
        await _store(ledger, plant, 12)
        await log.publish()
        await _store(ledger, plant, 8)
        await log.publish()
        await _store(ledger, plant, 2)  # stored, not yet in the log
        sound = await audit_log(ledger)
        assert sound.ok, sound.findings
        assert (sound.size, sound.checkpoints_checked, sound.blocks_not_yet_logged) == (21, 2, 2)
        assert sound.nodes_checked == 2 * 21 - (21).bit_count()

        async def damaged(statement: str) -> list[str]:
            def work(db: sqlite3.Connection) -> None:
                with db:
                    db.execute(statement)
            await ledger._run(work)
            return [f.problem for f in (await audit_log(ledger)).findings]

        # the node is not the hash of its children, nor its parent the hash of it and its sibling
        # (the roots come from the parent, stored intact, so the checkpoints still match)
        assert await damaged("UPDATE log_nodes SET hash = zeroblob(32) WHERE level = 2 AND idx = 1"
                             ) == ["node_hash_mismatch", "node_hash_mismatch"]
        assert await damaged("UPDATE log_checkpoints SET root_hash = zeroblob(32) WHERE "
                             "tree_size = 13") == ["node_hash_mismatch", "node_hash_mismatch",
                                                   "checkpoint_root_mismatch",
                                                   "checkpoint_note_mismatch"]
    finally:
        await ledger.close()


async def test_the_log_audit_names_a_leaf_that_is_not_its_block_and_a_forged_checkpoint(
        tmp_path: Path) -> None:
    ledger = SqliteLedger(path=tmp_path / "ledger.sqlite")
    try:
        log = TransparencyLog(ledger=ledger, origin=ORIGIN,
                              signing_key=nacl.signing.SigningKey(b"\x03" * 32))
        await log.start()
        await _store(ledger, DemoCollector(), 6)
        published = await log.publish()
        forged = nacl.signing.SigningKey(b"\x09" * 32)

        def tamper(db: sqlite3.Connection) -> None:
            with db:
                db.execute("UPDATE log_nodes SET hash = ? WHERE level = 0 AND idx = 3",
                           (leaf_hash(b"another block"),))
                db.execute("UPDATE log_checkpoints SET note = ?",
                           (Checkpoint(ORIGIN, published.tree_size, published.root_hash)
                            .sign(name=ORIGIN, signing_key=forged),))
        await ledger._run(tamper)
        problems = [f.problem for f in (await audit_log(ledger)).findings]
        assert problems[0] == "leaf_hash_mismatch"
        assert "checkpoint_signature" in problems
    finally:
        await ledger.close()


_RAW_INSERT = ("INSERT INTO blocks (collector_id, sequence, hash, previous_hash, payload, signature, "
               "key_id, window_start_unix_ms, window_end_unix_ms, reading_count, kind, transport, "
               "received_unix_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, 0, 1, 0, 1, 'test', 0)")


def _raw_block(collector_id: str, sequence: int) -> tuple[object, ...]:
    payload = f"block {collector_id} {sequence}".encode()
    return (collector_id, sequence, hashlib.sha256(payload).digest(), bytes(32), payload,
            bytes(64), "k")


async def test_blocks_stored_by_another_gateway_during_the_log_migration_are_all_logged(
        postgres_url: str) -> None:
    """A rolling upgrade: this gateway applies migration 4 while an older one keeps storing
    blocks. The older one's insert waits for the migration (which fills the queue and creates
    its trigger under one lock), so no block falls between the two and stays out of the log."""
    setup = await asyncpg.connect(postgres_url)
    migrating = await asyncpg.connect(postgres_url)
    older = await asyncpg.connect(postgres_url)
    try:
        await setup.execute(_CREATE_SCHEMA_VERSION)
        for migration in MIGRATIONS[:3]:  # the ledger an older gateway made
            for statement in migration.statements:
                await setup.execute(statement)
            await setup.execute("INSERT INTO schema_version VALUES ($1, $2, 0)", migration.version,
                                migration.description)
        await setup.execute(_RAW_INSERT, *_raw_block("c1", 1))
        transaction = migrating.transaction()
        await transaction.start()
        await migrating.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        statements = iter(MIGRATIONS[3].statements)
        for statement in statements:
            await migrating.execute(statement)
            if statement.startswith("INSERT INTO log_queue SELECT"):
                break
        storing = asyncio.create_task(older.execute(_RAW_INSERT, *_raw_block("c2", 1)))
        await asyncio.sleep(0.5)
        assert not storing.done(), "the older gateway's insert must wait for the migration"
        for statement in statements:
            await migrating.execute(statement)
        await migrating.execute("INSERT INTO schema_version VALUES (4, 'log', 0)")
        await transaction.commit()
        await asyncio.wait_for(storing, timeout=10)
        await setup.execute("INSERT INTO chain_heads VALUES ('c1', 1, $1, 0, 0), "
                            "('c2', 1, $1, 0, 0)", bytes(32))
    finally:
        for connection in (setup, migrating, older):
            await connection.close()
    ledger = PostgresLedger(url=postgres_url)
    try:
        assert await ledger.log_integrate(max_leaves=100) == (2, 2)
        assert await ledger.log_leaf_indexes("c2", 1, 1) == {1: 1}
        audited = await audit_log(ledger)
        assert audited.ok and audited.blocks_not_yet_logged == 0, audited.findings
    finally:
        await ledger.close()


async def test_the_audit_names_a_block_the_log_will_never_take(any_ledger: Ledger) -> None:
    """A block neither in the log nor waiting for it (what the migration race above would have
    left): `stackline verify` must not pass it off as ordinary lag."""
    plant = DemoCollector()
    await _store(any_ledger, plant, 3)
    if isinstance(any_ledger, SqliteLedger):
        await _store(any_ledger, plant, 1)  # block 5, past what the log will integrate below
        await any_ledger.log_integrate(max_leaves=4)

        def skip(db: sqlite3.Connection) -> None:  # the log believes it passed block 5
            with db:
                db.execute("UPDATE log_state SET entry_watermark = entry_watermark + 1")
        await any_ledger._run(skip)
    else:
        await any_ledger.log_integrate(max_leaves=100)
        await _store(any_ledger, plant, 1)
        assert isinstance(any_ledger, PostgresLedger)
        await pg_execute(any_ledger.url, "DELETE FROM log_queue")
    found = [(f.problem, f.detail.split(" is ")[0]) for f in (await audit_log(any_ledger)).findings]
    assert found == [("block_not_logged", "demo-plant-c1 #5")]
