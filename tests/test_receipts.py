"""Receipts at the plant: the gateway's checkpoints and inclusion proofs, kept and checked by the
collector, and a fork of the gateway's log detected, alarmed and kept as evidence.

Hand-made receipts are built with the gateway's own log code (gateway/translog) over blocks the
collector's real `seal` made; the end-to-end tests run real gateways (processes, or
GatewayRuntime in-process) and real collectors over gRPC and through Mosquitto.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.buffer import LEAF_HASH_WINDOW, Buffer, MemoryBuffer, SqliteBuffer
from collector.config import load_plant
from collector.errors import CheckpointInvalid, ConfigError, ReceiptError
from collector.metrics import render as render_metrics
from collector.receipts import (
    MAX_NOTE_BYTES,
    MAX_TREE_SIZE,
    HeldCheckpoint,
    LogKey,
    ReceiptStatus,
    ReceiptStore,
    Verdict,
    judge_receipt,
    parse_log_key,
    read_checkpoint,
    read_receipts,
    render_table,
)
from collector.runtime import CollectorRuntime, build_runtime, seal
from collector.simulator import PlantSimulator
from collector.uplink import UplinkBase
from gateway.config import load_gateway_config
from gateway.ingest import IngestCore, verify_envelope
from gateway.ledger import CollectorKey, SqliteLedger, VerifiedBlock
from gateway.runtime import GatewayRuntime, enroll_collector
from gateway.translog.checkpoint import Checkpoint, parse_checkpoint, sign_note, verifier_key
from gateway.translog.merkle import (
    MemoryHashStore,
    MerkleTree,
    ProofError,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from proto.keys import generate_key_files, load_public_key, load_signing_key
from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import BlockDraft, ReadingValue, Signer, Verifier
from tests.conftest import free_port, wait_for, wait_for_sync
from tests.demo_blocks import DemoCollector
from tests.mqtt_broker import GATEWAY_USER, Broker
from tests.support import run_stackline, stackline, stop, write_plant

ORIGIN = "stackline.test/region-1"
T0_MS = 1_700_000_000_000
SIGNER = Signer(signing_key=nacl.signing.SigningKey.generate())


# --- hand-made logs and receipts ----------------------------------------------------------------


def _append_blocks(buffer: Buffer, count: int) -> None:
    """Seal `count` blocks after the buffer's head, as the collector does."""
    for _ in range(count):
        sequence = buffer.chain_state().sequence + 1
        start = T0_MS + sequence * 1000
        draft = BlockDraft(collector_id="plant-c1", window_start_unix_ms=start,
                           window_end_unix_ms=start + 1000, config_digest=bytes(32),
                           readings=[ReadingValue("plant/dev/so2", start, 30.0 + sequence, 1, ())])
        buffer.append(seal(buffer, SIGNER, draft, start))


def _leaf(buffer: Buffer, sequence: int) -> bytes:
    found = buffer.leaf_hash(sequence)
    assert found is not None
    return found


class GatewayLog:
    """A gateway's log made with the gateway's code: other plants' leaves and this collector's,
    checkpoints signed with `key`, receipts as `TransparencyLog.receipt` makes them."""

    def __init__(self, key: nacl.signing.SigningKey, *, origin: str = ORIGIN) -> None:
        self.key = key
        self.origin = origin
        self.tree = MerkleTree(store=MemoryHashStore())
        self.ours: dict[int, int] = {}  # sequence -> leaf index

    def other(self, count: int, tag: bytes = b"other") -> GatewayLog:
        for _ in range(count):
            self.tree.append(leaf_hash(tag + self.tree.size.to_bytes(8, "big")))
        return self

    def ours_from(self, buffer: Buffer, *sequences: int) -> GatewayLog:
        for sequence in sequences:
            self.ours[sequence] = self.tree.append(_leaf(buffer, sequence))
        return self

    def note(self, size: int | None = None, *, root: bytes | None = None) -> str:
        size = self.tree.size if size is None else size
        return Checkpoint(self.origin, size, root or self.tree.root(size)).sign(
            name=self.origin, signing_key=self.key)

    def receipt(self, *, size: int | None = None, from_size: int = 0) -> pb.Receipt:
        size = self.tree.size if size is None else size
        sequence = max(s for s, index in self.ours.items() if index < size)
        index = self.ours[sequence]
        return pb.Receipt(
            checkpoint=self.note(size), sequence=sequence, leaf_index=index,
            inclusion_path=self.tree.inclusion_proof(index, size), consistency_from_size=from_size,
            consistency_path=self.tree.consistency_proof(from_size, size) if from_size else [])


def _log_key(key: nacl.signing.SigningKey, origin: str = ORIGIN) -> LogKey:
    return parse_log_key(verifier_key(origin, bytes(key.verify_key)))


@pytest.fixture
def buffer(tmp_path: Path) -> Iterator[SqliteBuffer]:
    opened = SqliteBuffer(path=tmp_path / "buffer.sqlite", max_bytes=1 << 30)
    _append_blocks(opened, 12)
    yield opened
    opened.close()


@pytest.fixture
def key() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey.generate()


def _judge(receipt: pb.Receipt, buffer: Buffer, key: LogKey | None,
           held: HeldCheckpoint | None = None,
           recorded: dict[int, HeldCheckpoint] | None = None) -> Verdict:
    return judge_receipt(receipt, key=key, held=held, leaf_of=buffer.leaf_hash,
                         recorded=(recorded or {}).get)


def _held(log: GatewayLog, size: int, sequence: int = 1) -> HeldCheckpoint:
    return HeldCheckpoint(size, log.tree.root(size), log.note(size), sequence)


# --- the collector's log key and checkpoint rules (the log's rules themselves: proto.tlog) -----------


def _flip(value: bytes) -> bytes:
    return bytes([value[0] ^ 1]) + value[1:]


def test_log_keys_and_checkpoints_read_as_the_gateway_writes_them(key: nacl.signing.SigningKey) -> None:
    text = verifier_key(ORIGIN, bytes(key.verify_key))
    log_key = parse_log_key(text)
    assert (log_key.name, log_key.public_key, log_key.text) == (ORIGIN, bytes(key.verify_key), text)
    log = GatewayLog(key).other(5)
    note = log.note()
    assert read_checkpoint(note, log_key) == Checkpoint(ORIGIN, 5, log.tree.root(5))
    # a witness's signature line beside the log's is not the collector's to judge
    witness = GatewayLog(nacl.signing.SigningKey.generate(), origin="witness.example").other(5).note()
    body, signature = note.split("\n\n")
    cosigned = f"{body}\n\n{witness.splitlines(keepends=True)[-1]}{signature}"
    assert read_checkpoint(cosigned, log_key).size == 5
    # every refusal is a CheckpointInvalid (so a ReceiptError), whichever rule failed
    impostor = GatewayLog(nacl.signing.SigningKey.generate()).other(5).note()
    with pytest.raises(CheckpointInvalid, match=r"no signature by stackline\.test/region-1"):
        read_checkpoint(impostor, log_key)
    altered = note.replace("\n5\n", "\n6\n")
    with pytest.raises(CheckpointInvalid, match="does not verify"):
        read_checkpoint(altered, log_key)
    other_origin = Checkpoint("stackline.test/other", 5, log.tree.root(5)).sign(
        name=ORIGIN, signing_key=key)
    with pytest.raises(CheckpointInvalid, match="origin"):
        read_checkpoint(other_origin, log_key)
    for bad, why in [("stackline.test", "name"), (text.replace("+", "+0", 1), "key id"),
                     (text[:-4] + "!!!!", "base64"), (f"{ORIGIN}+00000000+AQID", "Ed25519")]:
        with pytest.raises(ReceiptError, match=why):
            parse_log_key(bad)


def test_the_collectors_own_bounds_on_checkpoints(key: nacl.signing.SigningKey) -> None:
    log_key = _log_key(key)
    # a signed size the log's rules take (a uint64) but this collector's SQLite cannot hold
    huge = Checkpoint(ORIGIN, MAX_TREE_SIZE + 1, bytes(32)).sign(name=ORIGIN, signing_key=key)
    with pytest.raises(CheckpointInvalid, match="out of range"):
        read_checkpoint(huge, log_key)
    assert read_checkpoint(Checkpoint(ORIGIN, MAX_TREE_SIZE, bytes(32)).sign(
        name=ORIGIN, signing_key=key), log_key).size == MAX_TREE_SIZE
    # a note longer than any checkpoint with its witnesses, even one that verifies
    padded = sign_note(f"{ORIGIN}\n5\n{'A' * 43}=\n{'x' * MAX_NOTE_BYTES}\n", name=ORIGIN,
                       signing_key=key)
    with pytest.raises(CheckpointInvalid, match="longer than"):
        read_checkpoint(padded, log_key)
    with pytest.raises(CheckpointInvalid, match="longer than"):
        read_checkpoint(padded, None)
    # without a key the note is parsed, whoever signed it, and its origin is not checked
    other = Checkpoint("stackline.test/other", 3, bytes(32)).sign(
        name="someone.else", signing_key=nacl.signing.SigningKey.generate())
    assert read_checkpoint(other, None) == Checkpoint("stackline.test/other", 3, bytes(32))
    with pytest.raises(CheckpointInvalid, match="no blank line"):
        read_checkpoint(f"{ORIGIN}\n3\n{'A' * 43}=\n", None)


# --- the verdict on hand-made receipts ------------------------------------------------------------


def test_a_first_receipt_is_verified_and_held(buffer: SqliteBuffer,
                                              key: nacl.signing.SigningKey) -> None:
    log = GatewayLog(key).other(3).ours_from(buffer, 1, 2, 3).other(2)
    verdict = _judge(log.receipt(), buffer, _log_key(key))
    assert (verdict.status, verdict.trust) == (ReceiptStatus.VERIFIED, True)
    assert verdict.checkpoint == Checkpoint(ORIGIN, 8, log.tree.root(8))


def test_a_receipt_that_extends_the_held_checkpoint_is_verified(buffer: SqliteBuffer,
                                                               key: nacl.signing.SigningKey) -> None:
    log = GatewayLog(key).other(3).ours_from(buffer, 1, 2)
    held = _held(log, 5, sequence=2)
    log.other(4).ours_from(buffer, 3, 4, 5)
    verdict = _judge(log.receipt(from_size=5), buffer, _log_key(key), held)
    assert (verdict.status, verdict.trust, verdict.reason) == (
        ReceiptStatus.VERIFIED, True, "extends the held checkpoint (5)")
    # the held checkpoint again (another uplink's copy): nothing new
    again = _judge(log.receipt(), buffer, _log_key(key), _held(log, log.tree.size, sequence=5))
    assert (again.status, again.trust, again.repeat) == (ReceiptStatus.VERIFIED, False, True)


def test_a_checkpoint_signed_by_another_key_is_refused(buffer: SqliteBuffer,
                                                       key: nacl.signing.SigningKey) -> None:
    forged = GatewayLog(nacl.signing.SigningKey.generate()).other(2).ours_from(buffer, 1)
    verdict = _judge(forged.receipt(), buffer, _log_key(key))
    assert verdict.status is ReceiptStatus.REFUSED
    assert verdict.reason.startswith("checkpoint: no signature by")


def test_a_wrong_inclusion_proof_is_refused_not_a_fork(buffer: SqliteBuffer,
                                                       key: nacl.signing.SigningKey) -> None:
    log = GatewayLog(key).other(3).ours_from(buffer, 1, 2)
    held = _held(log, 5, sequence=2)
    log.other(3).ours_from(buffer, 3)
    receipt = log.receipt(from_size=5)
    receipt.inclusion_path[0] = _flip(receipt.inclusion_path[0])
    verdict = _judge(receipt, buffer, _log_key(key), held)
    assert (verdict.status, verdict.trust, verdict.fork) == (ReceiptStatus.REFUSED, False, None)
    assert verdict.reason.startswith("inclusion of block 3:")
    # the right proof, but for another block than the one it names
    receipt = log.receipt(from_size=5)
    receipt.sequence = 2
    assert _judge(receipt, buffer, _log_key(key), held).status is ReceiptStatus.REFUSED
    # a block this collector never made
    receipt.sequence = 99
    assert "no leaf hash kept for block 99" in _judge(receipt, buffer, _log_key(key), held).reason


def test_same_size_and_another_root_is_a_fork(buffer: SqliteBuffer,
                                              key: nacl.signing.SigningKey) -> None:
    log = GatewayLog(key).other(3).ours_from(buffer, 1, 2)
    rewritten = GatewayLog(key).other(3, tag=b"rewritten").ours_from(buffer, 1, 2)
    verdict = _judge(rewritten.receipt(), buffer, _log_key(key), _held(log, 5, sequence=2))
    assert verdict.status is ReceiptStatus.FORK
    assert verdict.fork is not None
    assert verdict.fork.held.root == log.tree.root(5)
    assert verdict.fork.other.root_hash == rewritten.tree.root(5)
    assert "two signed checkpoints of size 5 with different roots" in verdict.reason
    # an older checkpoint verified before, rewritten: also a fork
    older = _judge(rewritten.receipt(size=4), buffer, _log_key(key), _held(log, 5, sequence=2),
                   recorded={4: _held(log, 4, sequence=1)})
    assert older.status is ReceiptStatus.FORK


def test_a_checkpoint_that_does_not_extend_the_held_one_is_a_fork(
        buffer: SqliteBuffer, key: nacl.signing.SigningKey) -> None:
    log = GatewayLog(key).other(3).ours_from(buffer, 1, 2)
    held = _held(log, 5, sequence=2)
    # the same key's log, with other history before this collector's blocks, and grown
    forked = GatewayLog(key).other(4, tag=b"forked").ours_from(buffer, 1, 2, 3).other(2)
    verdict = _judge(forked.receipt(from_size=5), buffer, _log_key(key), held)
    assert (verdict.status, verdict.trust) == (ReceiptStatus.FORK, False)
    assert verdict.reason.startswith("checkpoint 9 does not extend checkpoint 5")
    # also when the proof is right but the inclusion proof is not: the fork is what matters
    receipt = forked.receipt(from_size=5)
    receipt.inclusion_path[0] = bytes(32)
    assert _judge(receipt, buffer, _log_key(key), held).status is ReceiptStatus.FORK
    # an honest extension is not
    log.other(2).ours_from(buffer, 3)
    assert _judge(log.receipt(from_size=5), buffer, _log_key(key), held).trust


def test_unproven_receipts_are_kept_unverified(buffer: SqliteBuffer,
                                               key: nacl.signing.SigningKey) -> None:
    log = GatewayLog(key).other(3).ours_from(buffer, 1, 2)
    held = _held(log, 5, sequence=2)
    log.other(3).ours_from(buffer, 3)
    # proves consistency from an older size than the held one (an ack in flight)
    stale = _judge(log.receipt(from_size=4), buffer, _log_key(key), held)
    assert (stale.status, stale.trust) == (ReceiptStatus.UNVERIFIED, False)
    assert "not from the held checkpoint's 5" in stale.reason
    # older than the held checkpoint, never seen: nothing proves it either way
    older = _judge(log.receipt(size=4), buffer, _log_key(key), held)
    assert (older.status, older.trust) == (ReceiptStatus.UNVERIFIED, False)
    # no key configured: the signature is not checked, the inclusion is
    unkeyed = _judge(log.receipt(), buffer, None)
    assert (unkeyed.status, unkeyed.trust) == (ReceiptStatus.UNVERIFIED, False)
    assert "collector.gateway_log_key" in unkeyed.reason


# --- the store: evidence, alarm, durability, bounds -----------------------------------------------


def _store(buffer: Buffer, key: LogKey | None, path: Path | None, *, max_receipts: int = 10_000,
           max_forks: int = 1_000) -> ReceiptStore:
    return ReceiptStore(path=path, leaves=buffer, key=key, max_receipts=max_receipts,
                        max_forks=max_forks)


def test_a_fork_alarms_keeps_both_notes_and_the_held_checkpoint(
        tmp_path: Path, buffer: SqliteBuffer, key: nacl.signing.SigningKey,
        caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "buffer.sqlite"
    store = _store(buffer, _log_key(key), path)
    log = GatewayLog(key).other(3).ours_from(buffer, 1, 2)
    first = log.receipt()
    assert store.take(first) is not None
    assert store.held_tree_size() == 5
    forked = GatewayLog(key).other(4, tag=b"forked").ours_from(buffer, 1, 2, 3).other(2)
    with caplog.at_level(logging.WARNING, logger="collector.receipts"):
        for size in (8, 9):
            verdict = store.take(forked.receipt(size=size, from_size=5))
            assert verdict is not None and verdict.status is ReceiptStatus.FORK
    alarms = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(alarms) == 1, "loud once, then quieter"
    message = alarms[0].getMessage()
    assert "ALARM" in message and "forked or rewrote its history" in message
    assert forked.tree.root(8).hex() in message and log.tree.root(5).hex() in message
    assert "checkpoint 8" in message and "checkpoint 5" in message
    assert store.held is not None and store.held.root == log.tree.root(5), "never replaced"
    assert store.held_tree_size() == 5 and store.forks == 2
    store.close()

    report = read_receipts(path)
    assert [f.other_size for f in report.forks] == [8, 9]
    assert {f.held_checkpoint for f in report.forks} == {first.checkpoint}
    assert report.forks[0].other_checkpoint == forked.note(8)
    assert [r.status for r in report.receipts] == ["verified", "fork", "fork"]
    assert "FORK" in render_table(report, log_key=_log_key(key))
    # a fork is evidence: both notes signed by the log key, and the gateway's own check of the
    # kept proof confirms the split
    for fork in report.forks:
        mine = parse_checkpoint(fork.held_checkpoint, name=ORIGIN, public_key=bytes(key.verify_key))
        theirs = parse_checkpoint(fork.other_checkpoint, name=ORIGIN, public_key=bytes(key.verify_key))
        assert fork.consistency_from_size == mine.size == 5
        with pytest.raises(ProofError, match="old_root_mismatch"):
            verify_consistency(old_size=5, new_size=theirs.size, old_root=mine.root_hash,
                               new_root=theirs.root_hash, proof=list(fork.consistency_path))

    # after a restart the held checkpoint is still the one verified, not the forked one
    again = _store(buffer, _log_key(key), path)
    assert again.held is not None and again.held.root == log.tree.root(5)
    # and a later honest extension is trusted again
    log.other(1).ours_from(buffer, 3)
    verdict = again.take(log.receipt(from_size=5))
    assert verdict is not None and verdict.trust and again.held_tree_size() == 7
    again.close()


def test_a_new_log_key_starts_with_no_held_checkpoint(tmp_path: Path, buffer: SqliteBuffer,
                                                      key: nacl.signing.SigningKey,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "buffer.sqlite"
    store = _store(buffer, _log_key(key), path)
    store.take(GatewayLog(key).other(1).ours_from(buffer, 1).receipt())
    store.close()
    other = nacl.signing.SigningKey.generate()
    with caplog.at_level(logging.WARNING):
        reopened = _store(buffer, _log_key(other), path)
    assert reopened.held is None
    assert "verified with the log key" in caplog.text
    # the other log's checkpoint of the same size is no fork of the first log's
    verdict = reopened.take(GatewayLog(other).other(1, tag=b"x").ours_from(buffer, 1).receipt())
    assert verdict is not None and verdict.status is ReceiptStatus.VERIFIED
    reopened.close()


def test_leaf_hashes_outlive_the_blocks_and_go_once_a_verified_receipt_covers_them(
        tmp_path: Path, key: nacl.signing.SigningKey) -> None:
    path = tmp_path / "leaves.sqlite"
    buffer = SqliteBuffer(path=path, max_bytes=1 << 30)
    _append_blocks(buffer, 6)
    for sequence, envelope in buffer.read_from(1, 10):
        assert buffer.leaf_hash(sequence) == leaf_hash(pb.SignedBlock.FromString(envelope).payload)
    buffer.acknowledge(6)
    assert buffer.read_from(1, 10) == [], "the payloads left"
    store = _store(buffer, _log_key(key), path)
    log = GatewayLog(key).other(2).ours_from(buffer, 1, 2, 3, 4)
    verdict = store.take(log.receipt())
    assert verdict is not None and verdict.status is ReceiptStatus.VERIFIED
    assert [buffer.leaf_hash(s) is not None for s in range(1, 7)] == [False] * 3 + [True] * 3
    store.close()
    buffer.close()
    # and they are durable
    reopened = SqliteBuffer(path=path, max_bytes=1 << 30)
    assert reopened.leaf_hash(5) is not None and reopened.leaf_hash(3) is None
    reopened.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_leaf_hashes_are_bounded_without_any_receipt(tmp_path: Path, kind: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("collector.buffer.LEAF_HASH_WINDOW", 4)
    buffer: Buffer = (MemoryBuffer() if kind == "memory"
                      else SqliteBuffer(path=tmp_path / "b.sqlite", max_bytes=1 << 30))
    _append_blocks(buffer, 10)
    buffer.acknowledge(9)
    assert [s for s in range(1, 11) if buffer.leaf_hash(s) is not None] == [6, 7, 8, 9, 10]
    assert LEAF_HASH_WINDOW > 100_000  # the real window: days of blocks
    buffer.close()


def test_receipts_are_bounded_and_the_newest_verified_one_stays(
        tmp_path: Path, buffer: SqliteBuffer, key: nacl.signing.SigningKey) -> None:
    path = tmp_path / "buffer.sqlite"
    store = _store(buffer, _log_key(key), path, max_receipts=5, max_forks=2)
    log = GatewayLog(key).ours_from(buffer, 1)
    store.take(log.receipt())
    for n in range(12):  # refused ones: a forged signature, each different
        store.take(GatewayLog(nacl.signing.SigningKey.generate()).other(n).ours_from(buffer, 1)
                   .receipt())
    for n in range(3):  # forks beyond the evidence limit are counted, not kept
        store.take(GatewayLog(key).other(n + 1, tag=b"fork").ours_from(buffer, 1).receipt(
            size=1 + n + 1, from_size=1))
    report = read_receipts(path)
    assert report.receipts_kept == 6
    assert report.receipts[0].status == "verified"
    assert len(report.forks) == 2 and store.forks == 3
    # the same receipt twice (two uplinks) is kept once
    same = GatewayLog(key).other(7).ours_from(buffer, 2).receipt()
    store.take(same)
    store.take(same)
    assert sum(1 for r in read_receipts(path).receipts if r.sequence == 2) == 1
    store.close()


_FUZZ_KEY = nacl.signing.SigningKey.generate()
_RECEIPTS = st.builds(
    pb.Receipt,
    checkpoint=st.one_of(st.text(max_size=300), st.sampled_from([
        f"{ORIGIN}\n5\n{'A' * 43}=\n\n\u2014 {ORIGIN} AAAA\n", "\n\n", "x\n\n\u2014 \n"])),
    sequence=st.integers(0, 2**64 - 1),
    leaf_index=st.integers(0, 2**64 - 1),
    inclusion_path=st.lists(st.binary(max_size=40), max_size=70),
    consistency_from_size=st.integers(0, 2**64 - 1),
    consistency_path=st.lists(st.binary(max_size=40), max_size=70),
)


@settings(max_examples=300, deadline=None)
@given(receipt=_RECEIPTS)
def test_whatever_a_receipt_holds_the_store_judges_it_and_goes_on(receipt: pb.Receipt) -> None:
    key = _FUZZ_KEY
    buffer = MemoryBuffer()
    _append_blocks(buffer, 3)
    store = _store(buffer, _log_key(key), None)
    store.take(GatewayLog(key).other(2).ours_from(buffer, 1, 2).receipt())
    verdict = store.take(receipt)
    assert verdict is not None and verdict.status is ReceiptStatus.REFUSED
    assert store.held_tree_size() == 4
    unkeyed = _store(buffer, None, None)
    assert unkeyed.take(receipt) is not None
    store.close()
    unkeyed.close()


class _BrokenStore:
    """A receipt store with a bug in it."""

    def held_tree_size(self) -> int:
        return 7

    def take(self, receipt: pb.Receipt) -> object:
        raise RuntimeError("a bug")


def test_a_bug_in_receipt_handling_costs_the_uplink_nothing(caplog: pytest.LogCaptureFixture) -> None:
    buffer = MemoryBuffer()
    _append_blocks(buffer, 3)
    uplink = UplinkBase(collector_id="plant-c1", key_id="k", buffer=buffer, wakeup=asyncio.Event(),
                        acked=None, batch_limit=10, reconnect_initial_s=0.1, reconnect_max_s=1.0,
                        peer="test", receipts=_BrokenStore())
    assert uplink._receipt_tree_size() == 7
    uplink._acknowledge(2)
    uplink._take_receipt(pb.Ack(stored_through_sequence=2, receipt=pb.Receipt(sequence=2)))
    uplink._take_receipt(pb.Ack(stored_through_sequence=2))  # no receipt: nothing to hand over
    assert buffer.acknowledged_through() == 2
    alarms = [r for r in caplog.records if "could not be handled" in r.getMessage()]
    assert len(alarms) == 1 and alarms[0].levelno == logging.ERROR


async def test_a_bug_in_the_gateways_receipts_costs_the_ack_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The receipt is an extra: whatever goes wrong making it, the blocks are stored and the ack
    goes (without a receipt), and the failure is logged for someone to report."""
    ledger = SqliteLedger(path=tmp_path / "ledger.sqlite")
    plant = DemoCollector()
    try:
        await ledger.enroll(plant.key)
        core = IngestCore(ledger=ledger)

        async def broken(collector_id: str, known_size: int) -> pb.Receipt | None:
            raise RuntimeError("cannot schedule new futures after shutdown")

        core.receipts = broken
        envelopes = [pb.SignedBlock(payload=b.payload, signature=b.signature, key_id=b.key_id)
                     for b in plant.chain(2)]
        raw = pb.IngestRequest(batch=pb.Batch(blocks=envelopes)).SerializeToString()
        with caplog.at_level(logging.ERROR, logger="gateway.ingest"):
            answer = await core.handle(collector_id=plant.collector_id, raw=raw, transport="test",
                                       peer="test", max_blocks_per_batch=100,
                                       hello_expected=False)
        assert answer.error is None and answer.head is not None and answer.head.sequence == 3
        assert answer.receipt is None
        assert any("the ack goes without one" in r.getMessage() for r in caplog.records)
    finally:
        await ledger.close()


# --- configuration ----------------------------------------------------------------------------------


def _set_log_key(plant_path: Path, value: str) -> None:
    plant = yaml.safe_load(plant_path.read_text())
    plant["collector"]["gateway_log_key"] = value
    plant_path.write_text(yaml.safe_dump(plant, sort_keys=False))


def test_a_bad_log_key_refuses_to_start_naming_the_field(tmp_path: Path,
                                                         key: nacl.signing.SigningKey) -> None:
    path = write_plant(tmp_path, grpc_port=free_port())
    good = verifier_key(ORIGIN, bytes(key.verify_key))
    _set_log_key(path, good)
    assert load_plant(path).config.collector.log_key() == _log_key(key)
    _set_log_key(path, good[:-6] + "AAAAAA")
    with pytest.raises(ConfigError) as caught:
        load_plant(path)
    assert caught.value.field == "collector.gateway_log_key"
    assert "does not match the key" in caught.value.message
    ran = run_stackline("collector", "run", "--config", str(path), timeout_s=30)
    assert ran.returncode == 2
    assert "collector.gateway_log_key" in ran.stderr


def test_without_a_log_key_the_collector_says_what_to_set(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    path = write_plant(tmp_path, grpc_port=free_port())
    with caplog.at_level(logging.WARNING, logger="collector.runtime"):
        runtime = build_runtime(load_plant(path))
    warnings = [r.getMessage() for r in caplog.records if "gateway_log_key" in r.getMessage()]
    assert len(warnings) == 1 and "kept but not verified" in warnings[0]
    assert runtime.receipts is not None and runtime.receipts.key is None
    runtime.receipts.close()
    runtime.buffer.close()


# --- end to end ---------------------------------------------------------------------------------------

TICK_MS = 200


def _write_gateway(directory: Path, *, listen: str | None, log_key_file: Path,
                   mqtt: dict[str, Any] | None = None, gateway_id: str = "gw-test") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "gateway": {"id": gateway_id},
        "listen": {"grpc": listen},
        "ledger": {"path": "ledger.sqlite"},
        "log": {"origin": ORIGIN, "key_file": str(log_key_file), "checkpoint_interval_s": 1},
    }
    if mqtt is not None:
        config["mqtt"] = mqtt
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _log_key_file(directory: Path) -> tuple[Path, str]:
    path = directory / "log.key"
    if not path.exists():
        generate_key_files(path)
    return path, verifier_key(ORIGIN, bytes(load_signing_key(path).verify_key))


async def _check_against_the_ledger(ledger_path: Path, buffer_path: Path, collector_id: str) -> list[int]:
    """Every verified receipt kept at the plant, checked with the gateway's code against the
    gateway's ledger: its root is the log's at that size, its leaf is the stored block's, its
    audit path verifies, and each verified checkpoint extends the one before. Returns the sizes."""
    report = read_receipts(buffer_path)
    verified = [r for r in report.receipts if r.status == "verified"]
    ledger = SqliteLedger(path=ledger_path, read_only=True)
    try:
        tree = ledger.log_tree()
        payloads = {row.sequence: row.payload async for row in ledger.iter_blocks(collector_id)}
        for receipt in verified:
            assert receipt.tree_size is not None and receipt.sequence is not None
            assert receipt.leaf_index is not None and receipt.root is not None
            assert receipt.root == await tree.root(receipt.tree_size)
            assert receipt.leaf_hash == leaf_hash(payloads[receipt.sequence])
            verify_inclusion(leaf_hash=receipt.leaf_hash, index=receipt.leaf_index,
                             size=receipt.tree_size, proof=list(receipt.inclusion_path),
                             root=receipt.root)
        sizes = sorted({r.tree_size for r in verified if r.tree_size is not None})
        roots = {r.tree_size: r.root for r in verified}
        for old, new in itertools.pairwise(sizes):
            old_root, new_root = roots[old], roots[new]
            assert old_root is not None and new_root is not None
            verify_consistency(old_size=old, new_size=new, old_root=old_root, new_root=new_root,
                               proof=await tree.consistency_proof(old, new))
    finally:
        await ledger.close()
    assert report.held is not None and report.held.tree_size == sizes[-1]
    return sizes


def _extensions(buffer_path: Path) -> int:
    """Verified receipts that proved consistency with the checkpoint held before them."""
    if not buffer_path.exists():
        return 0
    try:
        report = read_receipts(buffer_path)
    except ReceiptError:
        return 0
    return sum(1 for r in report.receipts
               if r.status == "verified" and r.reason.startswith("extends the held"))


@pytest.mark.slow
def test_processes_over_grpc_leave_verified_consistent_receipts_at_the_plant(tmp_path: Path) -> None:
    port = free_port()
    log_key_file, log_key = _log_key_file(tmp_path)
    gateway_config = _write_gateway(tmp_path / "gateway", listen=f"127.0.0.1:{port}",
                                    log_key_file=log_key_file)
    plant_config = write_plant(tmp_path / "plant", grpc_port=port, tick_ms=250)
    _set_log_key(plant_config, log_key)
    enrolled = run_stackline("gateway", "enroll", "--config", str(gateway_config), "--collector-id",
                             "demo-plant-c1", "--public-key",
                             str(tmp_path / "plant" / "collector.key.pub"))
    assert enrolled.returncode == 0, enrolled.stderr
    buffer_path = tmp_path / "plant" / "buffer.sqlite"
    processes = {
        name: stackline(*args, log=tmp_path / f"{name}.log") for name, args in {
            "gateway": ("gateway", "run", "--config", str(gateway_config)),
            "simulator": ("simulate", "--config", str(plant_config)),
            "collector": ("collector", "run", "--config", str(plant_config)),
        }.items()}
    try:
        wait_for_sync(lambda: _extensions(buffer_path) >= 3, timeout_s=45,
                      what="three receipts proving the log only grew")
        assert stop(processes["collector"]) == 0, (tmp_path / "collector.log").read_text()[-3000:]
    finally:
        for process in processes.values():
            stop(process)
    sizes = asyncio.run(_check_against_the_ledger(tmp_path / "gateway" / "ledger.sqlite",
                                                  buffer_path, "demo-plant-c1"))
    assert len(sizes) >= 4
    shown = run_stackline("collector", "receipts", "--config", str(plant_config))
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert f"held checkpoint: tree size {sizes[-1]}" in shown.stdout
    assert "verified" in shown.stdout and "FORK" not in shown.stdout
    as_json = run_stackline("collector", "receipts", "--config", str(plant_config), "--json",
                            "--limit", "0")
    document = json.loads(as_json.stdout)
    assert document["log_key"] == log_key and document["forks"] == []
    assert {r["status"] for r in document["receipts"]} <= {"verified", "unverified"}
    collector_log = (tmp_path / "collector.log").read_text()
    assert "not verified" not in collector_log and "ALARM" not in collector_log


@contextlib.asynccontextmanager
async def _collector(plant_path: Path) -> AsyncIterator[CollectorRuntime]:
    """The plant's simulator and its collector, in-process, until the block ends."""
    plant = load_plant(plant_path)
    runtime = build_runtime(plant)
    simulator = asyncio.create_task(PlantSimulator(plant=plant).serve())
    stopping = asyncio.Event()
    task = asyncio.create_task(runtime.run_until(stopping, drain_timeout_s=5))
    try:
        yield runtime
    finally:
        stopping.set()
        try:
            await asyncio.wait_for(task, 15)
        finally:
            simulator.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await simulator


async def _start_gateway(config: Path) -> GatewayRuntime:
    gateway = GatewayRuntime(config=load_gateway_config(config))
    await gateway.start()
    return gateway


async def _head(gateway: GatewayRuntime, collector_id: str) -> int:
    return (await gateway.ledger.head(collector_id)).sequence


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    running = Broker(tmp_path / "broker", {GATEWAY_USER: "gateway-secret",
                                           "demo-plant-c1": "collector-secret"})
    running.start()
    yield running
    running.stop()


async def test_over_mqtt_the_collector_holds_verified_receipts(tmp_path: Path, broker: Broker) -> None:
    log_key_file, log_key = _log_key_file(tmp_path)
    (tmp_path / "gateway").mkdir()
    (tmp_path / "gateway" / "mqtt-password").write_text("gateway-secret\n")
    gateway = await _start_gateway(_write_gateway(
        tmp_path / "gateway", listen=None, log_key_file=log_key_file,
        mqtt={"host": "127.0.0.1", "port": broker.port, "username": GATEWAY_USER,
              "password_file": "mqtt-password", "insecure": True, "reconnect_max_s": 0.5}))
    assert gateway.mqtt is not None
    await asyncio.wait_for(gateway.mqtt.connected.wait(), 10)
    plant_dir = tmp_path / "plant"
    plant_dir.mkdir()
    (plant_dir / "mqtt-password").write_text("collector-secret\n")
    plant_path = write_plant(plant_dir, grpc_port=None, tick_ms=TICK_MS, mqtt={
        "host": "127.0.0.1", "port": broker.port, "username": "demo-plant-c1",
        "password_file": "mqtt-password", "insecure": True, "ack_timeout_s": 2.0,
        "reconnect_max_s": 0.5})
    _set_log_key(plant_path, log_key)
    await enroll_collector(gateway.ledger, collector_id="demo-plant-c1",
                           public_key=load_public_key(plant_dir / "collector.key.pub"))
    buffer_path = plant_dir / "buffer.sqlite"
    try:
        async with _collector(plant_path) as collector:
            async def grown() -> bool:
                return _extensions(buffer_path) >= 2
            await wait_for(grown, timeout_s=30, what="two receipts over MQTT proving the log grew")
            assert collector.receipts is not None
            assert collector.receipts.held_tree_size() > 0
            metrics = render_metrics(collector).decode()
            labels = '{collector="demo-plant-c1",status="verified"}'
            assert f"stackline_collector_receipts_total{labels}" in metrics
            assert 'stackline_collector_log_forks_total{collector="demo-plant-c1"} 0.0' in metrics
    finally:
        await gateway.stop()
    await _check_against_the_ledger(tmp_path / "gateway" / "ledger.sqlite", buffer_path,
                                    "demo-plant-c1")


async def _copy_chain(source: Path, target: SqliteLedger, collector_id: str, public_key: bytes) -> int:
    """Store a collector's blocks from one ledger in another, as a gateway would have."""
    ledger = SqliteLedger(path=source, read_only=True)
    blocks: list[VerifiedBlock] = []
    try:
        async for row in ledger.iter_blocks(collector_id):
            key = CollectorKey(collector_id, row.key_id, public_key, 0)
            verified = verify_envelope(pb.SignedBlock(payload=row.payload, signature=row.signature,
                                                      key_id=row.key_id),
                                       collector_id=collector_id, key=key,
                                       verifier=Verifier(public_key=public_key))
            assert isinstance(verified, VerifiedBlock)
            blocks.append(verified)
    finally:
        await ledger.close()
    await target.append(collector_id, blocks, transport="copy", peer="test", received_unix_ms=0)
    return len(blocks)


async def test_a_gateway_with_the_same_key_and_another_history_is_caught_forking(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    log_key_file, log_key = _log_key_file(tmp_path)
    plant_path = write_plant(tmp_path / "plant", grpc_port=port, tick_ms=TICK_MS)
    _set_log_key(plant_path, log_key)
    public_key = load_public_key(tmp_path / "plant" / "collector.key.pub")
    cid = "demo-plant-c1"
    buffer_path = tmp_path / "plant" / "buffer.sqlite"
    gateway_a = await _start_gateway(_write_gateway(tmp_path / "a", listen=f"127.0.0.1:{port}",
                                                    log_key_file=log_key_file, gateway_id="gw-a"))
    await enroll_collector(gateway_a.ledger, collector_id=cid, public_key=public_key)
    gateway_b: GatewayRuntime | None = None
    a_running = True
    try:
        async with _collector(plant_path) as collector:
            store = collector.receipts
            assert store is not None

            async def held_twice() -> bool:
                return _extensions(buffer_path) >= 2
            await wait_for(held_twice, timeout_s=30, what="receipts from gateway A")
            await gateway_a.stop()
            a_running = False
            held = store.held
            assert held is not None

            # gateway B: the same log key and origin, a ledger where another plant's blocks came
            # first and then this collector's chain: the same data, another history
            ledger = SqliteLedger(path=tmp_path / "b" / "ledger.sqlite")
            other = DemoCollector("other-plant-c1")
            await ledger.append(other.collector_id, other.chain(5), transport="test", peer="test",
                                received_unix_ms=0)
            copied = await _copy_chain(tmp_path / "a" / "ledger.sqlite", ledger, cid, public_key)
            await enroll_collector(ledger, collector_id=cid, public_key=public_key)
            await ledger.close()
            assert copied >= held.sequence
            with caplog.at_level(logging.WARNING):
                gateway_b = await _start_gateway(_write_gateway(
                    tmp_path / "b", listen=f"127.0.0.1:{port}", log_key_file=log_key_file,
                    gateway_id="gw-b"))
                assert gateway_b.log.verifier_key == log_key

                async def forked() -> bool:
                    return store.forks >= 1
                await wait_for(forked, timeout_s=30, what="the fork to be detected")
                at_fork = await _head(gateway_b, cid)

                async def flowing() -> bool:
                    assert gateway_b is not None
                    return await _head(gateway_b, cid) >= at_fork + 10
                await wait_for(flowing, timeout_s=30, what="blocks still flowing after the fork")

            assert store.held == held, "the held checkpoint stays the one from gateway A"
            assert store.held_tree_size() == held.tree_size
            alarms = [r.getMessage() for r in caplog.records
                      if r.levelno == logging.ERROR and r.name == "collector.receipts"]
            assert alarms and "ALARM" in alarms[0] and "forked or rewrote its history" in alarms[0]
            assert held.root.hex() in alarms[0] and f"checkpoint {held.tree_size} with root" in alarms[0]
            assert not [r for r in caplog.records if "could not be handled" in r.getMessage()]
            metrics = render_metrics(collector).decode()
            label = f'{{collector="{cid}"}}'
            assert f"stackline_collector_log_forks_total{label} {float(store.forks)}" in metrics
            assert f"stackline_collector_receipt_tree_size{label} {float(held.tree_size)}" in metrics
    finally:
        if gateway_b is not None:
            await gateway_b.stop()
        if a_running:
            await gateway_a.stop()

    shown = run_stackline("collector", "receipts", "--config", str(plant_path))
    assert shown.returncode == 1, shown.stdout + shown.stderr
    assert "FORK: the gateway's log forked or rewrote its history" in shown.stdout
    document = json.loads(run_stackline("collector", "receipts", "--config", str(plant_path),
                                        "--json").stdout)
    fork = document["forks"][0]
    assert fork["verified"]["checkpoint"] and fork["other"]["checkpoint"]
    signing = load_signing_key(log_key_file).verify_key
    mine = parse_checkpoint(fork["verified"]["checkpoint"], name=ORIGIN, public_key=bytes(signing))
    theirs = parse_checkpoint(fork["other"]["checkpoint"], name=ORIGIN, public_key=bytes(signing))
    assert theirs.size > mine.size
    ledger_b = SqliteLedger(path=tmp_path / "b" / "ledger.sqlite", read_only=True)
    try:  # gateway B's own tree at the held size is not the one gateway A signed
        assert await ledger_b.log_tree().root(mine.size) != mine.root_hash
    finally:
        await ledger_b.close()


async def test_hostile_receipts_never_stop_the_collector(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    log_key_file, log_key = _log_key_file(tmp_path)
    plant_path = write_plant(tmp_path / "plant", grpc_port=port, tick_ms=TICK_MS)
    _set_log_key(plant_path, log_key)
    cid = "demo-plant-c1"
    gateway = await _start_gateway(_write_gateway(tmp_path / "gateway", listen=f"127.0.0.1:{port}",
                                                  log_key_file=log_key_file))
    await enroll_collector(gateway.ledger, collector_id=cid,
                           public_key=load_public_key(tmp_path / "plant" / "collector.key.pub"))
    signing_key = load_signing_key(log_key_file)
    forger = nacl.signing.SigningKey.generate()
    sent = [0]

    def note(size: str, key: nacl.signing.SigningKey = signing_key) -> str:
        return sign_note(f"{ORIGIN}\n{size}\n{'A' * 43}=\n", name=ORIGIN, signing_key=key)

    def hostile(n: int) -> pb.Receipt:
        size = str(10**12 + n)  # sizes the gateway has not sent yet, so it sends each one
        junk = [os.urandom(32) for _ in range(3)]
        variants = [
            pb.Receipt(checkpoint=f"\n{size}\n", sequence=1),
            pb.Receipt(checkpoint=f"{ORIGIN}\n{size}\nnot base64!\n\n\u2014 x y\n", sequence=1),
            pb.Receipt(checkpoint=note(size, key=forger), sequence=1, inclusion_path=junk),
            pb.Receipt(checkpoint=note(size), sequence=1, leaf_index=3, inclusion_path=junk),
            pb.Receipt(checkpoint=note(size), sequence=2**64 - 1, leaf_index=2**64 - 1),
            pb.Receipt(checkpoint=note(size), sequence=1, inclusion_path=[os.urandom(32)] * 1000),
            pb.Receipt(checkpoint=note(size) + "x" * 100_000, sequence=1),
            pb.Receipt(checkpoint=note("9" * 25 + size), sequence=1),
            pb.Receipt(checkpoint=note(size), sequence=1, inclusion_path=[b"short"]),
            pb.Receipt(checkpoint=note(size), sequence=1, consistency_from_size=2**64 - 1,
                       consistency_path=junk),
        ]
        return variants[n % len(variants)]

    async def hostile_receipts(collector_id: str, known_size: int) -> pb.Receipt | None:
        sent[0] += 1
        return hostile(sent[0])

    try:
        async with _collector(plant_path) as collector:
            store = collector.receipts
            assert store is not None

            async def held() -> bool:
                return store.held_tree_size() > 0
            await wait_for(held, timeout_s=30, what="a first verified receipt")
            held_before = store.held
            uplink = collector.uplinks[0]
            sessions = uplink.stats.sessions
            gateway.core.receipts = hostile_receipts
            head_before = await _head(gateway, cid)

            async def all_refused() -> bool:
                return (store.stats.by_status["refused"] >= 30
                        and await _head(gateway, cid) >= head_before + 20)
            await wait_for(all_refused, timeout_s=40,
                           what="thirty hostile receipts refused and blocks still stored")
            assert sent[0] >= 30
            assert store.held == held_before
            assert store.forks == 0 and store.stats.lost == 0
            assert uplink.stats.sessions == sessions, "no receipt cost the stream"
            assert not [r for r in caplog.records if "could not be handled" in r.getMessage()]

            gateway.core.receipts = gateway.log.receipt  # an honest gateway again

            async def grows() -> bool:
                return store.held_tree_size() > (held_before.tree_size if held_before else 0)
            await wait_for(grows, timeout_s=30, what="verified receipts again after the hostile ones")
    finally:
        await gateway.stop()
    kept = read_receipts(tmp_path / "plant" / "buffer.sqlite")
    assert {"verified", "refused"} <= {r.status for r in kept.receipts}
    with sqlite3.connect(tmp_path / "plant" / "buffer.sqlite") as db:
        longest = db.execute("SELECT MAX(LENGTH(checkpoint)) FROM receipts").fetchone()[0]
    assert longest <= MAX_NOTE_BYTES, "oversized notes are not kept"
