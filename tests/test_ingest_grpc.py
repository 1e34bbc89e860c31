"""The gRPC ingest stream against a real server on loopback (DESIGN.md invariants 3, 4 and 7).

Each test starts `GatewayRuntime` in-process on 127.0.0.1 port 0 with a ledger under tmp_path and
talks to it through `grpc.aio` channels: the generated stub for well-formed messages, a raw
byte stream for garbage. Every refusal is checked three ways: the reason in the gateway's answer,
the quarantine row holding the evidence bytes, and a ledger that stored nothing bad.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import nacl.signing
import pytest
from google.protobuf.message import DecodeError

from gateway.config import (
    GatewayConfig,
    GatewaySection,
    LedgerSection,
    LimitsSection,
    ListenSection,
    LoadedGatewayConfig,
)
from gateway.ledger import QuarantineEntry, SqliteLedger
from gateway.runtime import GatewayRuntime, enroll_collector
from gateway.verifier import verify_ledger
from proto.stackline.v1 import stackline_pb2 as pb
from proto.stackline.v1.stackline_pb2_grpc import IngestStub
from proto.wire import GENESIS_HASH, BlockDraft, ReadingValue, Signer, block_hash, encode_block

STREAM_METHOD = "/stackline.v1.Ingest/Stream"
MAX_BLOCKS_PER_BATCH = 8
READ_TIMEOUT_S = 10.0
BASE_MS = 1_700_000_000_000
WINDOW_MS = 60_000
CONFIG_DIGEST = bytes(range(32))
# an over-long varint as the first tag makes these bytes unparseable whatever follows
GARBAGE = b"\xff" * 11 + random.Random(7).randbytes(53)
OPENING_GARBAGE = b"\xff" * 11 + random.Random(8).randbytes(21)


# --- the gateway under test -----------------------------------------------------------------------


@dataclass(frozen=True)
class Gateway:
    """A running gateway and where to reach it."""

    runtime: GatewayRuntime
    target: str
    ledger_path: Path

    @property
    def ledger(self) -> SqliteLedger:
        ledger = self.runtime.ledger
        assert isinstance(ledger, SqliteLedger)  # the fixture configures ledger.path
        return ledger

    async def enroll(self, plant: Plant) -> None:
        key_id = await enroll_collector(self.ledger, collector_id=plant.collector_id,
                                        public_key=plant.signer.public_key)
        assert key_id == plant.signer.key_id


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    config = LoadedGatewayConfig(
        source=tmp_path / "gateway.yaml",
        config=GatewayConfig(
            gateway=GatewaySection(id="test-gateway"),
            listen=ListenSection(grpc="127.0.0.1:0"),
            ledger=LedgerSection(path="ledger.sqlite"),
            limits=LimitsSection(max_blocks_per_batch=MAX_BLOCKS_PER_BATCH),
        ),
    )
    runtime = GatewayRuntime(config=config)
    port = await runtime.start()
    assert port > 0
    try:
        yield Gateway(runtime, f"127.0.0.1:{port}", config.ledger_path())
    finally:
        await runtime.stop()


# --- a collector's chain ------------------------------------------------------------------------------


class Plant:
    """A collector's key, the good chain it builds, and how far the gateway has acknowledged it."""

    def __init__(self, collector_id: str) -> None:
        self.collector_id = collector_id
        self.signer = Signer(signing_key=nacl.signing.SigningKey.generate())
        self.chain: list[pb.SignedBlock] = []
        self.acked = 0

    def block(self, sequence: int, previous_hash: bytes, *, variant: int = 0,
              collector_id: str | None = None, signer: Signer | None = None) -> pb.SignedBlock:
        """A signed block; `variant` changes its readings, the others forge it."""
        start = BASE_MS + (sequence - 1) * WINDOW_MS
        draft = BlockDraft(
            collector_id=collector_id or self.collector_id,
            window_start_unix_ms=start,
            window_end_unix_ms=start + WINDOW_MS,
            readings=[
                ReadingValue("stack.so2_mg_m3", start, 35.0 + sequence + variant / 10,
                             pb.QUALITY_NORMAL),
                ReadingValue("stack.flow_m3_per_h", start + 500, 412_000.5 + variant,
                             pb.QUALITY_NORMAL, (0x48C9, 0x0100)),
            ],
            config_digest=CONFIG_DIGEST,
        )
        payload = encode_block(draft, sequence=sequence, previous_hash=previous_hash)
        return (signer or self.signer).envelope(payload)

    def hash_at(self, sequence: int) -> bytes:
        return GENESIS_HASH if sequence == 0 else block_hash(self.chain[sequence - 1].payload)

    def extend(self, count: int) -> list[pb.SignedBlock]:
        """The next `count` blocks of the good chain."""
        new = []
        for _ in range(count):
            sequence = len(self.chain) + 1
            self.chain.append(self.block(sequence, self.hash_at(sequence - 1)))
            new.append(self.chain[-1])
        return new

    def other_history(self, count: int) -> list[pb.SignedBlock]:
        """A second chain from genesis signed with the same key: same sequences, other bytes."""
        blocks: list[pb.SignedBlock] = []
        previous = GENESIS_HASH
        for sequence in range(1, count + 1):
            blocks.append(self.block(sequence, previous, variant=7))
            previous = block_hash(blocks[-1].payload)
        return blocks


# --- talking to the gateway ---------------------------------------------------------------------------


class Session:
    """One ingest stream: through the generated stub, or raw bytes in both directions out."""

    def __init__(self, channel: Any, *, raw: bool = False) -> None:
        self.raw = raw
        if raw:
            self._call: Any = channel.stream_stream(
                STREAM_METHOD, request_serializer=None,
                response_deserializer=pb.IngestResponse.FromString)()
        else:
            self._call = IngestStub(channel).Stream()

    async def write(self, request: pb.IngestRequest) -> None:
        await self._call.write(request.SerializeToString() if self.raw else request)

    async def write_bytes(self, data: bytes) -> None:
        assert self.raw, "only a raw session can send bytes that are not a message"
        await self._call.write(data)

    async def read(self) -> pb.IngestResponse:
        async with asyncio.timeout(READ_TIMEOUT_S):
            response = await self._call.read()
        assert isinstance(response, pb.IngestResponse), f"the stream ended: {response!r}"
        return response

    async def read_end(self) -> None:
        """Wait for the gateway to end the stream."""
        async with asyncio.timeout(READ_TIMEOUT_S):
            response = await self._call.read()
        assert response is grpc.aio.EOF, f"expected the stream to end, got {response!r}"

    async def hello(self, collector_id: str) -> pb.IngestResponse:
        await self.write(pb.IngestRequest(hello=pb.Hello(collector_id=collector_id)))
        return await self.read()

    async def send(self, blocks: list[pb.SignedBlock]) -> pb.Ack:
        await self.write(pb.IngestRequest(batch=pb.Batch(blocks=blocks)))
        return ack_of(await self.read())

    async def send_bytes(self, data: bytes) -> pb.IngestResponse:
        await self.write_bytes(data)
        return await self.read()

    def close(self) -> None:
        self._call.cancel()


def ack_of(response: pb.IngestResponse) -> pb.Ack:
    assert response.WhichOneof("kind") == "ack", f"expected an ack, got {response}"
    return response.ack


async def connect(channel: Any, plant: Plant, *, raw: bool = False) -> Session:
    """A stream for an enrolled plant; the gateway's hello answer says where to resume."""
    session = Session(channel, raw=raw)
    ack = ack_of(await session.hello(plant.collector_id))
    assert ack.collector_id == plant.collector_id
    assert ack.stored_through_sequence == plant.acked
    assert not ack.rejections
    return session


async def deliver(session: Session, plant: Plant, blocks: list[pb.SignedBlock]) -> pb.Ack:
    """Send good blocks and check that the gateway stored them and said so."""
    ack = await session.send(blocks)
    last = pb.Block.FromString(blocks[-1].payload).sequence
    assert list(ack.rejections) == []
    assert ack.stored_through_sequence == last
    assert ack.head_hash == plant.hash_at(last)
    plant.acked = max(plant.acked, last)
    return ack


async def assert_chain(gateway: Gateway, plant: Plant) -> None:
    """The ledger holds exactly the plant's acknowledged good blocks, byte for byte, once each."""
    rows = [row async for row in gateway.ledger.iter_blocks(plant.collector_id)]
    assert [(row.sequence, row.payload, row.signature) for row in rows] == [
        (n, block.payload, block.signature)
        for n, block in enumerate(plant.chain[:plant.acked], start=1)]
    assert (await gateway.ledger.head(plant.collector_id)).sequence == plant.acked


async def quarantined(gateway: Gateway, raw: bytes) -> QuarantineEntry:
    """The one quarantine row holding exactly these bytes."""
    matches = [e for e in await gateway.ledger.quarantine_entries() if e.raw == raw]
    assert len(matches) == 1, f"expected one quarantine row with these bytes, found {len(matches)}"
    return matches[0]


async def assert_refused(gateway: Gateway, plant: Plant, ack: pb.Ack, *, raw: bytes, reason: str,
                         alarm: bool, sequence: int | None) -> None:
    """Refused with `reason`, kept as evidence, and nothing stored past the good chain."""
    assert [r.reason for r in ack.rejections] == [reason]
    assert ack.rejections[0].detail
    assert ack.stored_through_sequence == plant.acked
    entry = await quarantined(gateway, raw)
    assert (entry.reason, entry.alarm, entry.collector_id, entry.sequence, entry.transport) == (
        reason, alarm, plant.collector_id, sequence, "grpc")
    assert entry.peer.startswith("ipv4:127.0.0.1:")
    await assert_chain(gateway, plant)


# --- misbehaviours: each runs on a stream of a plant whose good chain is stored through 2 or more --


async def send_block_signed_by_other_keys(gateway: Gateway, session: Session, plant: Plant,
                                          enrolled_other: Plant) -> None:
    outsider = Signer(signing_key=nacl.signing.SigningKey.generate())
    for signer in (enrolled_other.signer, outsider):
        forged = plant.block(plant.acked + 1, plant.hash_at(plant.acked), signer=signer)
        ack = await session.send([forged])
        # the sequence the forged block claims is echoed so the sender knows which block it was
        await assert_refused(gateway, plant, ack, raw=forged.SerializeToString(),
                             reason="unknown_key", alarm=True, sequence=plant.acked + 1)


async def send_bad_signatures(gateway: Gateway, session: Session, plant: Plant) -> None:
    genuine = plant.block(plant.acked + 1, plant.hash_at(plant.acked), variant=3)
    flipped = bytearray(genuine.signature)
    flipped[10] ^= 0x01
    corrupted = pb.SignedBlock(payload=genuine.payload, signature=bytes(flipped),
                               key_id=genuine.key_id)
    # the plant's key id, but the signature made by another key
    outsider = Signer(signing_key=nacl.signing.SigningKey.generate())
    borrowed = pb.SignedBlock(payload=genuine.payload,
                              signature=outsider.envelope(genuine.payload).signature,
                              key_id=genuine.key_id)
    truncated = pb.SignedBlock(payload=genuine.payload, signature=genuine.signature[:63],
                               key_id=genuine.key_id)
    for envelope in (corrupted, borrowed, truncated):
        ack = await session.send([envelope])
        await assert_refused(gateway, plant, ack, raw=envelope.SerializeToString(),
                             reason="bad_signature", alarm=True, sequence=plant.acked + 1)


async def replay_stored_blocks(gateway: Gateway, session: Session, plant: Plant) -> None:
    before = await gateway.ledger.summary()
    replay = plant.chain[plant.acked - 2:plant.acked]
    ack = await session.send(replay)
    assert list(ack.rejections) == []
    assert ack.stored_through_sequence == plant.acked
    assert ack.head_hash == plant.hash_at(plant.acked)
    await assert_chain(gateway, plant)
    assert (await gateway.ledger.summary()).quarantined == before.quarantined


async def send_replayed_sequence(gateway: Gateway, session: Session, plant: Plant) -> None:
    replayed = plant.other_history(2)[1]  # sequence 2, but its parent is not our block 1
    ack = await session.send([replayed])
    await assert_refused(gateway, plant, ack, raw=replayed.SerializeToString(),
                         reason="replayed_sequence", alarm=True, sequence=2)


async def send_fork(gateway: Gateway, session: Session, plant: Plant) -> None:
    fork = plant.block(2, plant.hash_at(1), variant=5)  # our block 1 as parent, other bytes
    ack = await session.send([fork])
    await assert_refused(gateway, plant, ack, raw=fork.SerializeToString(), reason="fork",
                         alarm=True, sequence=2)


async def send_block_of_another_collector(gateway: Gateway, session: Session, plant: Plant,
                                          named: str) -> None:
    sequence = plant.acked + 1
    misdirected = plant.block(sequence, plant.hash_at(plant.acked), collector_id=named)
    ack = await session.send([misdirected])
    await assert_refused(gateway, plant, ack, raw=misdirected.SerializeToString(),
                         reason="collector_mismatch", alarm=True, sequence=sequence)


async def send_oversized_batch(gateway: Gateway, session: Session, plant: Plant) -> None:
    blocks = plant.extend(MAX_BLOCKS_PER_BATCH + 1)
    request = pb.IngestRequest(batch=pb.Batch(blocks=blocks))
    ack = await session.send(blocks)
    await assert_refused(gateway, plant, ack, raw=request.SerializeToString(),
                         reason="batch_too_large", alarm=False, sequence=None)
    # the same blocks within the limit are taken on the same stream
    await deliver(session, plant, blocks[:MAX_BLOCKS_PER_BATCH])
    await deliver(session, plant, blocks[MAX_BLOCKS_PER_BATCH:])
    await assert_chain(gateway, plant)


async def send_malformed_messages(gateway: Gateway, raw_session: Session, plant: Plant) -> None:
    next_blocks = plant.extend(2)
    whole = pb.IngestRequest(batch=pb.Batch(blocks=next_blocks)).SerializeToString()
    truncated = whole[:len(whole) // 2]
    for data in (truncated, GARBAGE):
        with pytest.raises(DecodeError):
            pb.IngestRequest.FromString(data)
        ack = ack_of(await raw_session.send_bytes(data))
        await assert_refused(gateway, plant, ack, raw=data, reason="malformed_message",
                             alarm=False, sequence=None)
    # the stream is still open and the next good batch is stored
    await deliver(raw_session, plant, next_blocks)
    await assert_chain(gateway, plant)


async def hello_as_unknown_collector(gateway: Gateway, channel: Any) -> None:
    session = Session(channel)
    try:
        hello = pb.IngestRequest(hello=pb.Hello(collector_id="never-enrolled"))
        await session.write(hello)
        response = await session.read()
        assert response.WhichOneof("kind") == "error"
        assert response.error.reason == "unknown_collector"
        assert "never-enrolled" in response.error.detail
        await session.read_end()
    finally:
        session.close()
    entry = await quarantined(gateway, hello.SerializeToString())
    assert (entry.reason, entry.collector_id, entry.transport) == (
        "unknown_collector", "never-enrolled", "grpc")
    assert [r async for r in gateway.ledger.iter_blocks("never-enrolled")] == []
    assert (await gateway.ledger.head("never-enrolled")).sequence == 0


async def garbage_as_first_message(gateway: Gateway, channel: Any) -> None:
    with pytest.raises(DecodeError):
        pb.IngestRequest.FromString(OPENING_GARBAGE)
    session = Session(channel, raw=True)
    try:
        response = await session.send_bytes(OPENING_GARBAGE)
        assert response.WhichOneof("kind") == "error"
        assert response.error.reason == "malformed_message"
        await session.read_end()
    finally:
        session.close()
    entry = await quarantined(gateway, OPENING_GARBAGE)
    assert (entry.reason, entry.collector_id, entry.alarm) == ("malformed_message", "", False)


async def batch_before_hello(gateway: Gateway, channel: Any, plant: Plant) -> None:
    session = Session(channel)
    request = pb.IngestRequest(batch=pb.Batch(blocks=plant.chain[:1]))
    try:
        await session.write(request)
        response = await session.read()
        assert response.WhichOneof("kind") == "error"
        assert response.error.reason == "protocol_violation"
        await session.read_end()
    finally:
        session.close()
    entry = await quarantined(gateway, request.SerializeToString())
    assert entry.reason == "protocol_violation"


# --- one misbehaviour per test --------------------------------------------------------------------


@dataclass
class Connected:
    gateway: Gateway
    channel: Any
    plant: Plant
    other: Plant


@pytest.fixture
async def connected(gateway: Gateway) -> AsyncIterator[Connected]:
    """plant-a and plant-b enrolled; plant-a has blocks 1..3 stored."""
    plant, other = Plant("plant-a"), Plant("plant-b")
    await gateway.enroll(plant)
    await gateway.enroll(other)
    async with grpc.aio.insecure_channel(gateway.target) as channel:
        session = await connect(channel, plant)
        await deliver(session, plant, plant.extend(3))
        session.close()
        await assert_chain(gateway, plant)
        yield Connected(gateway, channel, plant, other)


async def test_hello_answers_where_to_resume(connected: Connected) -> None:
    session = await connect(connected.channel, connected.plant)  # asserts stored_through == 3
    try:
        await deliver(session, connected.plant, connected.plant.extend(2))
        await assert_chain(connected.gateway, connected.plant)
    finally:
        session.close()
    resumed = await connect(connected.channel, connected.plant)
    resumed.close()


async def test_a_block_signed_by_another_key_is_refused_as_unknown_key(
        connected: Connected) -> None:
    session = await connect(connected.channel, connected.plant)
    try:
        await send_block_signed_by_other_keys(connected.gateway, session, connected.plant,
                                              connected.other)
    finally:
        session.close()


async def test_a_corrupted_signature_is_refused_as_bad_signature(connected: Connected) -> None:
    session = await connect(connected.channel, connected.plant)
    try:
        await send_bad_signatures(connected.gateway, session, connected.plant)
    finally:
        session.close()


async def test_good_blocks_before_a_forged_one_in_a_batch_are_stored(connected: Connected) -> None:
    plant = connected.plant
    session = await connect(connected.channel, plant)
    try:
        good = plant.extend(2)
        outsider = Signer(signing_key=nacl.signing.SigningKey.generate())
        forged = plant.block(6, plant.hash_at(5), signer=outsider)
        ack = await session.send([*good, forged])
        plant.acked = 5
        await assert_refused(connected.gateway, plant, ack, raw=forged.SerializeToString(),
                             reason="unknown_key", alarm=True, sequence=6)
    finally:
        session.close()


async def test_an_unknown_collector_is_refused_at_hello(connected: Connected) -> None:
    await hello_as_unknown_collector(connected.gateway, connected.channel)


async def test_an_exact_replay_is_acknowledged_and_stored_once(connected: Connected) -> None:
    session = await connect(connected.channel, connected.plant)
    try:
        await replay_stored_blocks(connected.gateway, session, connected.plant)
        # and once more on a fresh stream, as after a reconnect
        session.close()
        session = await connect(connected.channel, connected.plant)
        await replay_stored_blocks(connected.gateway, session, connected.plant)
    finally:
        session.close()
    assert await connected.gateway.ledger.quarantine_entries() == []


async def test_a_batch_repeating_blocks_stores_them_once(connected: Connected) -> None:
    plant = connected.plant
    session = await connect(connected.channel, plant)
    try:
        new = plant.extend(2)
        ack = await session.send([plant.chain[2], new[0], new[0], new[1], new[1]])
        assert list(ack.rejections) == []
        assert ack.stored_through_sequence == 5
        plant.acked = 5
        await assert_chain(connected.gateway, plant)
    finally:
        session.close()
    assert await connected.gateway.ledger.quarantine_entries() == []


async def test_a_replayed_sequence_from_another_chain_is_refused(connected: Connected) -> None:
    session = await connect(connected.channel, connected.plant)
    try:
        await send_replayed_sequence(connected.gateway, session, connected.plant)
    finally:
        session.close()


async def test_a_fork_is_refused(connected: Connected) -> None:
    session = await connect(connected.channel, connected.plant)
    try:
        await send_fork(connected.gateway, session, connected.plant)
    finally:
        session.close()


async def test_a_block_naming_another_collector_is_refused(connected: Connected) -> None:
    session = await connect(connected.channel, connected.plant)
    try:
        await send_block_of_another_collector(connected.gateway, session, connected.plant,
                                              named=connected.other.collector_id)
    finally:
        session.close()
    assert [r async for r in connected.gateway.ledger.iter_blocks("plant-b")] == []


async def test_malformed_messages_are_refused_and_the_stream_goes_on(connected: Connected) -> None:
    session = await connect(connected.channel, connected.plant, raw=True)
    try:
        await send_malformed_messages(connected.gateway, session, connected.plant)
    finally:
        session.close()


async def test_garbage_as_the_first_message_is_refused(connected: Connected) -> None:
    await garbage_as_first_message(connected.gateway, connected.channel)
    await assert_chain(connected.gateway, connected.plant)


async def test_a_batch_before_hello_is_refused(connected: Connected) -> None:
    await batch_before_hello(connected.gateway, connected.channel, connected.plant)
    await assert_chain(connected.gateway, connected.plant)


async def test_a_batch_over_the_limit_is_refused(connected: Connected) -> None:
    session = await connect(connected.channel, connected.plant)
    try:
        await send_oversized_batch(connected.gateway, session, connected.plant)
    finally:
        session.close()


# --- a misbehaving collector harms nobody else (invariant 7) ------------------------------------------


MIN_GOOD_BLOCKS = 40


async def test_a_good_collector_is_served_while_another_misbehaves(gateway: Gateway) -> None:
    good, bad = Plant("plant-good"), Plant("plant-bad")
    await gateway.enroll(good)
    await gateway.enroll(bad)
    bad_started, bad_done = asyncio.Event(), asyncio.Event()
    acks_while_bad_ran = 0

    async def well_behaved() -> None:
        nonlocal acks_while_bad_ran
        async with grpc.aio.insecure_channel(gateway.target) as channel:
            session = await connect(channel, good)
            try:
                while not (bad_done.is_set() and good.acked >= MIN_GOOD_BLOCKS):
                    await deliver(session, good, good.extend(1 + good.acked % 3))
                    if bad_started.is_set() and not bad_done.is_set():
                        acks_while_bad_ran += 1
            finally:
                session.close()

    async def misbehaving() -> None:
        try:
            async with grpc.aio.insecure_channel(gateway.target) as channel:
                bad_started.set()
                session = await connect(channel, bad)
                try:
                    await deliver(session, bad, bad.extend(3))
                    await send_block_signed_by_other_keys(gateway, session, bad, good)
                    await send_bad_signatures(gateway, session, bad)
                    await replay_stored_blocks(gateway, session, bad)
                    await send_replayed_sequence(gateway, session, bad)
                    await send_fork(gateway, session, bad)
                    await send_block_of_another_collector(gateway, session, bad,
                                                          named=good.collector_id)
                    await send_oversized_batch(gateway, session, bad)
                finally:
                    session.close()
                raw_session = await connect(channel, bad, raw=True)
                try:
                    await send_malformed_messages(gateway, raw_session, bad)
                finally:
                    raw_session.close()
                await hello_as_unknown_collector(gateway, channel)
                await garbage_as_first_message(gateway, channel)
                await batch_before_hello(gateway, channel, bad)
        finally:
            bad_done.set()

    async with asyncio.timeout(60):
        async with asyncio.TaskGroup() as group:
            group.create_task(well_behaved(), name="well-behaved collector")
            group.create_task(misbehaving(), name="misbehaving collector")

    assert acks_while_bad_ran > 0, "the good collector got no ack while the other misbehaved"
    await assert_chain(gateway, good)
    await assert_chain(gateway, bad)
    reader = SqliteLedger(path=gateway.ledger_path, read_only=True)
    try:
        report = await verify_ledger(reader)
        good_audit = report.collectors[good.collector_id]
        assert report.ok, report.findings
        assert (good_audit.blocks, good_audit.first_sequence, good_audit.last_sequence) == (
            good.acked, 1, good.acked)
        assert (good_audit.gaps, good_audit.missing_blocks, good_audit.bad_signatures,
                good_audit.broken_links) == (0, 0, 0, 0)
        assert report.collectors[bad.collector_id].blocks == bad.acked
        assert set(report.collectors) == {good.collector_id, bad.collector_id}
        entries = await reader.quarantine_entries()
        assert report.quarantined == len(entries) > 0
        assert all(e.collector_id != good.collector_id for e in entries)
        assert {e.reason for e in entries} == {
            "unknown_key", "bad_signature", "replayed_sequence", "fork", "collector_mismatch",
            "batch_too_large", "malformed_message", "unknown_collector", "protocol_violation"}
    finally:
        await reader.close()


async def test_a_ledger_failure_ends_the_stream_and_acknowledges_nothing(gateway: Gateway) -> None:
    plant = Plant("plant-ok")
    await gateway.enroll(plant)
    async with grpc.aio.insecure_channel(gateway.target) as channel:
        session = await connect(channel, plant)
        await deliver(session, plant, plant.extend(2))
        # the ledger breaks under the running gateway (a disk or schema failure)
        import sqlite3  # noqa: PLC0415 - only this test reaches into the file
        with sqlite3.connect(gateway.ledger_path) as db:
            db.execute("ALTER TABLE blocks RENAME TO blocks_gone")
        await session.write(pb.IngestRequest(batch=pb.Batch(blocks=plant.extend(1))))
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await session.read()
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "ledger failed" in str(failure.value.details())
        # the gateway goes on serving: a new stream is answered, with the head still at 2
        again = await connect(channel, plant)
        again.close()
