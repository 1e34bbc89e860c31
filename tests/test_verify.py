"""`stackline verify` on a ledger: clean chains pass; a flipped byte, a removed block or a broken
link is named by collector and sequence, with a non-zero exit."""

from __future__ import annotations

import asyncio
import hashlib
import json
import multiprocessing
import os
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import nacl.signing
import pytest

import gateway.signature_checks
import gateway.verifier
from gateway.errors import LedgerError, SignatureWorkersLost
from gateway.ingest import IngestCore
from gateway.ledger import SqliteLedger
from gateway.ledger.base import StoredCheckpoint, StoredRow
from gateway.runtime import enroll_collector
from gateway.translog.log import TransparencyLog
from gateway.verifier import SIGNATURE_CHUNK, verify_ledger
from proto.stackline.v1 import stackline_pb2 as pb
from proto.tlog import Checkpoint
from proto.wire import GENESIS_HASH, BlockDraft, ReadingValue, Signer, block_hash, encode_block
from tests.demo_blocks import DemoCollector
from tests.support import run_stackline

BLOCKS = 12


def _chain(signer: Signer, collector_id: str, count: int) -> list[pb.SignedBlock]:
    previous, out = GENESIS_HASH, []
    for sequence in range(1, count + 1):
        start = 1_795_000_000_000 + sequence * 1000
        readings = [ReadingValue(f"p/d/{n}", start, float(sequence * 10 + n), pb.QUALITY_NORMAL)
                    for n in range(3)]
        payload = encode_block(BlockDraft(collector_id, start, start + 1000, readings, b"\x01" * 32),
                               sequence=sequence, previous_hash=previous)
        out.append(signer.envelope(payload))
        previous = block_hash(payload)
    return out


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    """A ledger holding two collectors' clean chains, stored through the ingest pipeline."""
    path = tmp_path / "ledger.sqlite"

    async def build() -> None:
        ledger = SqliteLedger(path=path)
        core = IngestCore(ledger=ledger)
        for collector_id in ("plant-a-c1", "plant-b-c1"):
            signer = Signer(signing_key=nacl.signing.SigningKey.generate())
            await enroll_collector(ledger, collector_id=collector_id, public_key=signer.public_key)
            outcome = await core.ingest(collector_id=collector_id,
                                        envelopes=_chain(signer, collector_id, BLOCKS),
                                        transport="test", peer="test")
            assert outcome.head.sequence == BLOCKS and not outcome.refusals
        # the gateway's transparency log over the first collector's chain (the second's blocks
        # come after the checkpoint: stored, not yet logged)
        log = TransparencyLog(ledger=ledger, origin="test/log",
                              signing_key=nacl.signing.SigningKey(b"\x01" * 32))
        await log.start()
        await ledger.log_integrate(max_leaves=BLOCKS)
        await ledger.put_checkpoint(await _checkpoint(log, BLOCKS))
        await ledger.close()

    asyncio.run(build())
    return path


async def _checkpoint(log: TransparencyLog, size: int) -> StoredCheckpoint:
    root = await log.ledger.log_tree().root(size)
    note = Checkpoint(log.origin, size, root).sign(name=log.origin, signing_key=log.signing_key)
    return StoredCheckpoint(size, root, note, 0)


def _tamper(path: Path, sql: str, *args: object) -> None:
    """What an attacker with write access to the file can do: drop the guards, change rows."""
    with sqlite3.connect(path) as db:
        db.execute("DROP TRIGGER blocks_no_update")
        db.execute("DROP TRIGGER blocks_no_delete")
        db.execute(sql, args)


def test_clean_ledger_verifies(ledger_path: Path) -> None:
    result = run_stackline("verify", "--ledger", str(ledger_path), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert {k: report[k] for k in ("blocks", "readings", "collectors", "gaps", "bad_signatures",
                                   "broken_links", "quarantined")} == {
        "blocks": 2 * BLOCKS, "readings": 2 * BLOCKS * 3, "collectors": 2, "gaps": 0,
        "bad_signatures": 0, "broken_links": 0, "quarantined": 0}
    assert {k: report["log"][k] for k in ("ok", "size", "checkpoints_checked",
                                          "blocks_not_yet_logged")} == {
        "ok": True, "size": BLOCKS, "checkpoints_checked": 1, "blocks_not_yet_logged": BLOCKS}
    text = run_stackline("verify", "--ledger", str(ledger_path))
    assert text.returncode == 0
    assert "OK" in text.stdout and "plant-a-c1" in text.stdout
    assert "the transparency log matches them" in text.stdout


def test_a_log_that_does_not_match_its_blocks_fails_the_verification(ledger_path: Path) -> None:
    """A leaf hash rewritten in the log (as if another block had been accepted there) and a
    checkpoint signed by another key: both named, the verdict fails."""
    _tamper(ledger_path, "UPDATE log_nodes SET hash = ? WHERE level = 0 AND idx = 2",
            hashlib.sha256(b"\x00another block").digest())
    result = run_stackline("verify", "--ledger", str(ledger_path), "--json")
    assert result.returncode == 1
    problems = [f["problem"] for f in json.loads(result.stdout)["log"]["findings"]]
    assert problems[0] == "leaf_hash_mismatch"
    text = run_stackline("verify", "--ledger", str(ledger_path))
    assert "FAIL  transparency log: leaf_hash_mismatch: leaf 2 (plant-a-c1 #3)" in text.stdout


def test_one_flipped_byte_is_named(ledger_path: Path) -> None:
    with sqlite3.connect(ledger_path) as db:
        payload = bytes(db.execute("SELECT payload FROM blocks WHERE collector_id = 'plant-b-c1' "
                                   "AND sequence = 7").fetchone()[0])
    flipped = bytearray(payload)
    flipped[len(flipped) // 2] ^= 0x01
    _tamper(ledger_path, "UPDATE blocks SET payload = ? WHERE collector_id = 'plant-b-c1' "
                         "AND sequence = 7", bytes(flipped))

    result = run_stackline("verify", "--ledger", str(ledger_path))
    assert result.returncode == 1
    assert "plant-b-c1 block 7: bad_signature" in result.stdout
    report = json.loads(run_stackline("verify", "--ledger", str(ledger_path), "--json").stdout)
    assert report["bad_signatures"] == 1
    assert {(f["collector_id"], f["sequence"], f["problem"]) for f in report["findings"]} >= {
        ("plant-b-c1", 7, "bad_signature")}
    # the other collector's chain is untouched and reported clean
    assert report["per_collector"]["plant-a-c1"]["bad_signatures"] == 0
    # --collector narrows the check to one chain
    only_a = run_stackline("verify", "--ledger", str(ledger_path), "--collector", "plant-a-c1")
    assert only_a.returncode == 0


def test_a_removed_block_is_a_gap(ledger_path: Path) -> None:
    _tamper(ledger_path, "DELETE FROM blocks WHERE collector_id = 'plant-a-c1' AND sequence = 5")
    result = run_stackline("verify", "--ledger", str(ledger_path), "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["gaps"] == 1 and report["missing_blocks"] == 1
    assert ("plant-a-c1", 6, "gap") in {(f["collector_id"], f["sequence"], f["problem"])
                                        for f in report["findings"]}


def test_a_swapped_block_breaks_the_links(ledger_path: Path) -> None:
    with sqlite3.connect(ledger_path) as db:
        rows = dict(db.execute("SELECT sequence, payload FROM blocks WHERE collector_id = "
                               "'plant-a-c1' AND sequence IN (3, 4)").fetchall())
    # swap the bytes and signatures of blocks 3 and 4: each still verifies on its own
    with sqlite3.connect(ledger_path) as db:
        sigs = dict(db.execute("SELECT sequence, signature FROM blocks WHERE collector_id = "
                               "'plant-a-c1' AND sequence IN (3, 4)").fetchall())
    _tamper(ledger_path, "UPDATE blocks SET payload = ?, signature = ? WHERE collector_id = "
                         "'plant-a-c1' AND sequence = 3", rows[4], sigs[4])
    with sqlite3.connect(ledger_path) as db:
        db.execute("UPDATE blocks SET payload = ?, signature = ? WHERE collector_id = "
                   "'plant-a-c1' AND sequence = 4", (rows[3], sigs[3]))
    result = run_stackline("verify", "--ledger", str(ledger_path), "--json")
    assert result.returncode == 1
    problems = {(f["sequence"], f["problem"]) for f in json.loads(result.stdout)["findings"]}
    assert (3, "mislabelled") in problems and (4, "mislabelled") in problems


def test_missing_ledger_is_a_clear_error(tmp_path: Path) -> None:
    result = run_stackline("verify", "--ledger", str(tmp_path / "nope.sqlite"))
    assert result.returncode == 2
    assert "no ledger at" in result.stderr


def test_blocks_cut_from_the_end_of_a_chain_are_named(ledger_path: Path) -> None:
    _tamper(ledger_path, "DELETE FROM blocks WHERE collector_id = 'plant-a-c1' AND sequence > 9")
    result = run_stackline("verify", "--ledger", str(ledger_path), "--json")
    assert result.returncode == 1
    findings = json.loads(result.stdout)["findings"]
    assert [(f["collector_id"], f["sequence"], f["problem"]) for f in findings] == [
        ("plant-a-c1", 10, "truncated")]


def test_readings_under_an_unrecorded_configuration_are_warned_about(ledger_path: Path) -> None:
    # the fixture's chains never record their configuration in a configuration block
    report = json.loads(run_stackline("verify", "--ledger", str(ledger_path), "--json").stdout)
    assert report["ok"] is True
    assert {(w["collector_id"], w["sequence"], w["problem"]) for w in report["warnings"]} == {
        ("plant-a-c1", 1, "unannounced_config"), ("plant-b-c1", 1, "unannounced_config")}


def test_a_configuration_block_must_match_its_digest(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    signer = Signer(signing_key=nacl.signing.SigningKey.generate())
    document = b'{"format":"stackline.config/v1","tick_ms":1000}'
    honest = hashlib.sha256(document).digest()
    lying = BlockDraft("plant-c-c1", 0, 0, [], honest, kind=pb.BLOCK_KIND_CONFIG,
                       config_document=document.replace(b"1000", b"2000"))
    envelope = signer.envelope(encode_block(lying, sequence=1, previous_hash=GENESIS_HASH))

    async def build() -> None:
        ledger = SqliteLedger(path=path)
        await enroll_collector(ledger, collector_id="plant-c-c1", public_key=signer.public_key)
        outcome = await IngestCore(ledger=ledger).ingest(
            collector_id="plant-c-c1", envelopes=[envelope], transport="test", peer="test")
        assert outcome.head.sequence == 1
        await ledger.close()

    asyncio.run(build())
    result = run_stackline("verify", "--ledger", str(path))
    assert result.returncode == 1
    assert "plant-c-c1 block 1: config_digest_mismatch" in result.stdout


@pytest.mark.parametrize("where", ["threads", "worker-processes"])
async def test_signatures_checked_ahead_are_matched_to_their_blocks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """More blocks than several signature chunks: a forged block deep in the chain is named by
    its own sequence, and no other block is blamed, whether the chunks are checked in a thread
    (a small ledger) or, after the first, in worker processes (a large one)."""
    if where == "worker-processes":
        monkeypatch.setattr(gateway.signature_checks, "PROCESS_POOL_AFTER_ROWS", SIGNATURE_CHUNK)
    used_processes: list[bool] = []
    real_close = gateway.signature_checks.RowChecker.close

    def close(checker: gateway.signature_checks.RowChecker) -> None:
        used_processes.append(checker.uses_processes)
        real_close(checker)

    monkeypatch.setattr(gateway.signature_checks.RowChecker, "close", close)
    path = tmp_path / "ledger.sqlite"
    ledger = SqliteLedger(path=path)
    plant = DemoCollector()
    try:
        await ledger.enroll(plant.key)
        chain = plant.chain(3 * SIGNATURE_CHUNK)
        await ledger.append(plant.collector_id, chain, transport="test", peer="test",
                            received_unix_ms=0)
    finally:
        await ledger.close()
    forged = 2 * SIGNATURE_CHUNK + 7
    _tamper(path, "UPDATE blocks SET signature = ? WHERE sequence = ?", bytes(64), forged)
    reader = SqliteLedger(path=path, read_only=True)
    try:
        report = await verify_ledger(reader)
    finally:
        await reader.close()
    assert [(f.sequence, f.problem) for f in report.findings] == [(forged, "bad_signature")]
    assert report.collectors[plant.collector_id].blocks == 3 * SIGNATURE_CHUNK + 1
    assert used_processes == [where == "worker-processes"]


async def test_worker_processes_find_what_the_thread_finds() -> None:
    """The same rows checked in this process and in worker processes: a good block, a forged
    signature, a short signature, a key the collector never enrolled, a key libsodium refuses."""
    plant = DemoCollector()
    chain = plant.chain(3)  # its configuration block and three of readings
    keys = {(plant.collector_id, plant.key.key_id): plant.key.public_key,
            ("weak-c1", "weak"): bytes(32)}  # the all-zero point: a key libsodium refuses
    rows = [(plant.collector_id, plant.key.key_id, block.payload, block.signature)
            for block in chain]
    rows[1] = (*rows[1][:3], bytes(64))
    rows.append((plant.collector_id, plant.key.key_id, chain[2].payload, b"short"))
    rows.append(("stranger-c1", plant.key.key_id, chain[0].payload, chain[0].signature))
    rows.append(("weak-c1", "weak", chain[0].payload, chain[0].signature))
    here = gateway.signature_checks.check_rows(gateway.signature_checks.verifiers_of(keys), rows)
    with gateway.signature_checks.RowChecker(keys, in_process_rows=0) as checker:
        elsewhere = await checker.submit(rows)
        assert checker.uses_processes
    assert elsewhere == here
    assert [check.signature_problem is None for check in here] == [True, False, True, True,
                                                                   False, False, False]
    assert [check.payload_hash for check in here[:4]] == [
        hashlib.sha256(block.payload).digest() for block in chain]


async def test_a_worker_process_that_stops_leaves_a_clear_error_and_no_verdict() -> None:
    """A signature worker killed mid-audit (the system's out-of-memory killer, say): the audit
    says so and what to do, rather than a verdict over blocks it did not check."""
    plant = DemoCollector()
    chain = plant.chain(2)
    keys = {(plant.collector_id, plant.key.key_id): plant.key.public_key}
    rows = [(plant.collector_id, plant.key.key_id, b.payload, b.signature) for b in chain]
    before = {child.pid for child in multiprocessing.active_children()}
    with gateway.signature_checks.RowChecker(keys, in_process_rows=0) as checker:
        assert all(c.signature_problem is None for c in await checker.submit(rows))
        workers = [c.pid for c in multiprocessing.active_children() if c.pid not in before]
        assert workers
        for pid in workers:
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(SignatureWorkersLost, match="incomplete and gives no verdict; run it again"):
            await checker.submit(rows)


async def test_when_the_chain_walk_fails_the_log_audit_beside_it_is_stopped(
        ledger_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chain walk and the log audit run together: the first error stops the other (no task
    left reading a ledger about to be closed) and reaches the caller as itself."""
    log_audit_cancelled = asyncio.Event()

    async def slow_log_audit(ledger: object) -> object:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            log_audit_cancelled.set()
            raise
        raise AssertionError("not reached")

    async def failing_blocks(collector_id: str | None = None) -> AsyncIterator[StoredRow]:
        raise LedgerError("the ledger went away mid-audit")
        yield  # makes this an async generator, as iter_blocks is

    monkeypatch.setattr(gateway.verifier, "audit_log", slow_log_audit)
    reader = SqliteLedger(path=ledger_path, read_only=True)
    monkeypatch.setattr(reader, "iter_blocks", failing_blocks)
    try:
        with pytest.raises(LedgerError, match="went away mid-audit"):
            await verify_ledger(reader)
    finally:
        await reader.close()
    assert log_audit_cancelled.is_set()
