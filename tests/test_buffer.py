"""The collector buffer contract, run over every implementation (memory and SQLite).

Blocks are made as the collector makes them: `collector.runtime.seal` encodes a draft after the
buffer's head and signs it.
"""

from __future__ import annotations

import hashlib
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.buffer import Buffer, ChainState, MemoryBuffer, SealedBlock, SqliteBuffer
from collector.errors import BufferFullError, CollectorError
from collector.runtime import seal
from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import GENESIS_HASH, BlockDraft, ReadingValue, Signer, Verifier, decode_block

BufferFactory = Callable[[int], Buffer]
DIGEST = hashlib.sha256(b"config v1").digest()
T0_MS = 1_700_000_000_000
SIGNER = Signer(signing_key=nacl.signing.SigningKey.generate())


def _draft(tick: int) -> BlockDraft:
    start = T0_MS + tick * 1000
    return BlockDraft(
        collector_id="plant-c1",
        window_start_unix_ms=start,
        window_end_unix_ms=start + 1000,
        readings=[ReadingValue("plant/dev/so2", start, 35.0 + tick, pb.QUALITY_NORMAL, (1, 2))],
        config_digest=DIGEST,
    )


def _append(buffer: Buffer, count: int = 1) -> list[SealedBlock]:
    """Seal and append `count` blocks after the head; return them."""
    sealed = []
    for _ in range(count):
        sequence = buffer.chain_state().sequence + 1
        block = seal(buffer, SIGNER, _draft(sequence), T0_MS + sequence * 1000)
        buffer.append(block)
        sealed.append(block)
    return sealed


@pytest.fixture(params=["memory", "sqlite"])
def make_buffer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BufferFactory]:
    opened: list[Buffer] = []

    def make(max_bytes: int = 1 << 30) -> Buffer:
        buffer: Buffer
        if request.param == "memory":
            buffer = MemoryBuffer(max_bytes=max_bytes)
        else:
            buffer = SqliteBuffer(path=tmp_path / f"buffer-{len(opened)}.sqlite", max_bytes=max_bytes)
        opened.append(buffer)
        return buffer

    yield make
    for buffer in opened:
        buffer.close()


@pytest.fixture
def buffer(make_buffer: BufferFactory) -> Buffer:
    return make_buffer(1 << 30)


# --- contract --------------------------------------------------------------------------------------


def test_a_new_buffer_is_empty_at_the_genesis_head(buffer: Buffer) -> None:
    assert buffer.chain_state() == ChainState(0, GENESIS_HASH, b"")
    assert buffer.read_from(1, 10) == []
    depth = buffer.depth()
    assert (depth.blocks, depth.bytes, depth.oldest_created_unix_ms, depth.acknowledged_through) == (
        0, 0, None, 0)


def test_sealed_blocks_form_a_signed_chain(buffer: Buffer) -> None:
    blocks = _append(buffer, 3)
    verifier = Verifier(public_key=SIGNER.public_key)
    previous = GENESIS_HASH
    for sequence, envelope_bytes in buffer.read_from(1, 10):
        envelope = pb.SignedBlock.FromString(envelope_bytes)
        verifier.verify(envelope.payload, envelope.signature)
        block = decode_block(envelope.payload)
        assert block.sequence == sequence
        assert block.previous_hash == previous
        assert hashlib.sha256(envelope.payload).digest() == blocks[sequence - 1].hash
        previous = blocks[sequence - 1].hash
    assert buffer.chain_state() == ChainState(3, blocks[-1].hash, DIGEST)


def test_append_read_from_and_depth(buffer: Buffer) -> None:
    blocks = _append(buffer, 5)
    assert buffer.read_from(1, 100) == [(b.sequence, b.envelope) for b in blocks]
    assert buffer.read_from(2, 2) == [(2, blocks[1].envelope), (3, blocks[2].envelope)]
    assert buffer.read_from(5, 10) == [(5, blocks[4].envelope)]
    assert buffer.read_from(6, 10) == []
    assert buffer.read_from(1, 0) == []
    depth = buffer.depth()
    assert depth.blocks == 5
    assert depth.bytes == sum(len(b.envelope) for b in blocks)
    assert depth.oldest_created_unix_ms == blocks[0].created_unix_ms
    assert depth.acknowledged_through == 0


def test_acknowledge_deletes_through_the_sequence(buffer: Buffer) -> None:
    blocks = _append(buffer, 5)
    assert buffer.acknowledge(3) == 3
    assert buffer.read_from(1, 100) == [(4, blocks[3].envelope), (5, blocks[4].envelope)]
    depth = buffer.depth()
    assert depth.blocks == 2
    assert depth.bytes == len(blocks[3].envelope) + len(blocks[4].envelope)
    assert depth.oldest_created_unix_ms == blocks[3].created_unix_ms
    assert depth.acknowledged_through == 3
    # acknowledging again, or an older sequence, changes nothing
    assert buffer.acknowledge(3) == 0
    assert buffer.acknowledge(1) == 0
    assert buffer.depth() == depth
    # the head stays: the chain goes on from block 5 whatever was acknowledged
    assert buffer.chain_state().sequence == 5


def test_acknowledge_everything_keeps_the_chain_head(buffer: Buffer) -> None:
    blocks = _append(buffer, 2)
    assert buffer.acknowledge(2) == 2
    assert buffer.depth().blocks == 0
    assert buffer.depth().bytes == 0
    assert buffer.depth().oldest_created_unix_ms is None
    assert buffer.chain_state() == ChainState(2, blocks[1].hash, DIGEST)
    (third,) = _append(buffer)
    payload = pb.SignedBlock.FromString(third.envelope).payload
    assert decode_block(payload).previous_hash == blocks[1].hash


def test_acknowledge_beyond_the_head_is_clamped(buffer: Buffer) -> None:
    _append(buffer, 3)
    assert buffer.acknowledge(1_000) == 3
    assert buffer.depth().acknowledged_through == 3
    # a later block is not treated as acknowledged already
    (fourth,) = _append(buffer)
    assert buffer.read_from(1, 10) == [(4, fourth.envelope)]
    assert buffer.depth().blocks == 1
    assert buffer.acknowledge(4) == 1
    assert buffer.depth().acknowledged_through == 4


def test_acknowledge_on_an_empty_buffer(buffer: Buffer) -> None:
    assert buffer.acknowledge(5) == 0
    assert buffer.depth().acknowledged_through == 0
    _append(buffer, 1)
    assert buffer.read_from(1, 10)[0][0] == 1


def test_append_must_follow_the_head(buffer: Buffer, make_buffer: BufferFactory) -> None:
    other = make_buffer(1 << 30)
    first, second, third = _append(other, 3)
    with pytest.raises(CollectorError, match="does not follow"):
        buffer.append(second)
    buffer.append(first)
    with pytest.raises(CollectorError, match="does not follow"):
        buffer.append(first)  # the same block twice
    with pytest.raises(CollectorError, match="does not follow"):
        buffer.append(third)  # a gap
    assert buffer.chain_state().sequence == 1
    assert buffer.read_from(1, 10) == [(1, first.envelope)]


def test_buffer_full_refuses_the_new_block_and_keeps_the_old(make_buffer: BufferFactory) -> None:
    sizer = MemoryBuffer()
    size = len(_append(sizer, 1)[0].envelope)  # every block here has the same size
    buffer = make_buffer(3 * size)
    blocks = _append(buffer, 3)
    assert {len(b.envelope) for b in blocks} == {size}
    head = buffer.chain_state()
    fourth = seal(buffer, SIGNER, _draft(4), T0_MS + 4000)
    with pytest.raises(BufferFullError) as caught:
        buffer.append(fourth)
    assert isinstance(caught.value, CollectorError)
    # nothing buffered was dropped, and the head did not move
    assert buffer.read_from(1, 10) == [(b.sequence, b.envelope) for b in blocks]
    assert buffer.chain_state() == head
    assert buffer.depth().bytes == 3 * size
    assert buffer.depth().blocks == 3
    # once the gateway acknowledges, the same block fits
    assert buffer.acknowledge(1) == 1
    buffer.append(fourth)
    assert [seq for seq, _ in buffer.read_from(1, 10)] == [2, 3, 4]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.one_of(st.integers(min_value=1, max_value=4).map(lambda n: ("append", n)),
                          st.integers(min_value=0, max_value=30).map(lambda n: ("ack", n))),
                max_size=12))
def test_memory_and_sqlite_buffers_behave_the_same(operations: list[tuple[str, int]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        memory = MemoryBuffer(max_bytes=1 << 20)
        sqlite = SqliteBuffer(path=Path(directory) / "b.sqlite", max_bytes=1 << 20)
        try:
            for operation, n in operations:
                if operation == "append":
                    for block in _append(memory, n):
                        sqlite.append(block)
                else:
                    assert memory.acknowledge(n) == sqlite.acknowledge(n)
                assert memory.chain_state() == sqlite.chain_state()
                assert memory.depth() == sqlite.depth()
                assert memory.read_from(1, 100) == sqlite.read_from(1, 100)
                assert memory.read_from(3, 2) == sqlite.read_from(3, 2)
        finally:
            sqlite.close()


# --- SQLite durability --------------------------------------------------------------------------


def test_sqlite_buffer_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "buffer.sqlite"
    buffer = SqliteBuffer(path=path, max_bytes=1 << 20)
    blocks = _append(buffer, 4)
    buffer.acknowledge(2)
    state, depth = buffer.chain_state(), buffer.depth()
    buffer.close()

    reopened = SqliteBuffer(path=path, max_bytes=1 << 20)
    try:
        assert reopened.chain_state() == state == ChainState(4, blocks[3].hash, DIGEST)
        assert reopened.depth() == depth
        assert depth.acknowledged_through == 2
        assert reopened.read_from(1, 10) == [(3, blocks[2].envelope), (4, blocks[3].envelope)]
        # the chain continues from the stored head
        (fifth,) = _append(reopened)
        assert fifth.sequence == 5
        assert decode_block(pb.SignedBlock.FromString(fifth.envelope).payload).previous_hash == \
            blocks[3].hash
        assert reopened.acknowledge(1) == 0  # already acknowledged before the reopen
    finally:
        reopened.close()


def test_sqlite_buffer_full_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "buffer.sqlite"
    buffer = SqliteBuffer(path=path, max_bytes=1 << 20)
    size = len(_append(buffer, 2)[0].envelope)
    buffer.close()
    reopened = SqliteBuffer(path=path, max_bytes=2 * size)
    try:
        with pytest.raises(BufferFullError):
            _append(reopened)
        assert reopened.depth().blocks == 2
    finally:
        reopened.close()


def test_sqlite_buffer_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "buffer.sqlite"
    buffer = SqliteBuffer(path=path, max_bytes=1 << 20)
    _append(buffer)
    try:
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert db.execute("SELECT COUNT(*) FROM blocks").fetchone()[0] == 1
    finally:
        buffer.close()


def test_sqlite_buffer_reports_a_file_it_cannot_open(tmp_path: Path) -> None:
    path = tmp_path / "not-a-database.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CollectorError) as caught:
        SqliteBuffer(path=path, max_bytes=1 << 20)
    assert str(path) in str(caught.value)
