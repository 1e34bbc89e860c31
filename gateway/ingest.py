"""The ingest pipeline every transport shares: verify, place on the chain, store, acknowledge.

`verify_envelope` is pure. `IngestCore` adds the ledger: it owns the key cache, the counters, and
the rule that anything refused is quarantined with its reason and its bytes, and raises an alarm
where it points at tampering (a forged signature, a fork). Transports (gRPC now) only frame
messages and call it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from gateway.errors import LedgerError
from gateway.ledger.base import CollectorKey, Ledger, QuarantineEntry, VerifiedBlock
from gateway.translog.merkle import ProofRequestError
from proto.chain import ChainHead, Placement
from proto.errors import VerificationError
from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import MAX_SEQUENCE, Verifier, block_hash, decode_block

__all__ = ["ALARM_REASONS", "Answer", "IngestCore", "IngestOutcome", "IngestStats", "Refusal",
           "verify_envelope"]

log = logging.getLogger(__name__)

RECEIPT_REPEAT_S = 30.0
"""A collector that keeps reporting an older checkpoint gets the same receipt again after this."""


def receipt_size(receipt: pb.Receipt) -> int:
    """The tree size of a receipt's checkpoint (its second line)."""
    lines = receipt.checkpoint.split("\n")
    return int(lines[1]) if len(lines) > 1 and lines[1].isdigit() else 0


ALARM_REASONS = frozenset({
    "bad_signature", "unknown_key", "collector_mismatch", "fork", "replayed_sequence",
    "broken_link",
})


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why one block or message was refused."""

    sequence: int
    reason: str
    detail: str


def _claimed_sequence(payload: bytes) -> int:
    """The sequence an unverified payload claims (0 if it has none): only to tell the sender
    which of its blocks was refused; nothing trusts it."""
    block = pb.Block()
    try:
        block.ParseFromString(payload)
    except DecodeError:
        return 0
    return block.sequence if block.sequence <= MAX_SEQUENCE else 0


def verify_envelope(
    envelope: pb.SignedBlock, *, collector_id: str, key: CollectorKey, verifier: Verifier
) -> VerifiedBlock | Refusal:
    """Check an envelope's key, signature and payload for the collector of the stream."""
    if envelope.key_id != key.key_id:
        return Refusal(_claimed_sequence(envelope.payload), "unknown_key",
                       f"signed with key {envelope.key_id or '(none)'}, but collector "
                       f"{collector_id} is enrolled with key {key.key_id}")
    try:
        verifier.verify(envelope.payload, envelope.signature)
        block = decode_block(envelope.payload)
    except VerificationError as exc:
        return Refusal(_claimed_sequence(envelope.payload), exc.reason, exc.detail)
    if block.collector_id != collector_id:
        return Refusal(block.sequence, "collector_mismatch",
                       f"block names collector {block.collector_id!r} but arrived for "
                       f"{collector_id!r}")
    return VerifiedBlock(
        collector_id=collector_id,
        sequence=block.sequence,
        previous_hash=block.previous_hash,
        hash=block_hash(envelope.payload),
        payload=envelope.payload,
        signature=envelope.signature,
        key_id=envelope.key_id,
        window_start_unix_ms=block.window_start_unix_ms,
        window_end_unix_ms=block.window_end_unix_ms,
        reading_count=len(block.readings),
        kind=block.kind,
        envelope=envelope.SerializeToString(),
    )


@dataclass(slots=True)
class IngestStats:
    """Counters for status output and, later, metrics."""

    blocks_stored: Counter[str] = field(default_factory=Counter)
    readings_stored: Counter[str] = field(default_factory=Counter)
    blocks_by_transport: Counter[tuple[str, str]] = field(default_factory=Counter)
    readings_by_transport: Counter[tuple[str, str]] = field(default_factory=Counter)
    last_stored_unix_ms: dict[str, int] = field(default_factory=dict)
    duplicates: Counter[str] = field(default_factory=Counter)
    rejections: Counter[str] = field(default_factory=Counter)
    evidence_dropped: int = 0


@dataclass(frozen=True, slots=True)
class Answer:
    """What a transport sends back for one message: an ack (the head and any refusals), an
    error that ends the conversation, or nothing (a status report)."""

    head: ChainHead | None = None
    refusals: tuple[Refusal, ...] = ()
    error: Refusal | None = None
    receipt: pb.Receipt | None = None

    def encode(self, collector_id: str) -> bytes | None:
        """The IngestResponse bytes, or None when nothing is to be sent."""
        if self.error is not None:
            return pb.IngestResponse(error=pb.Rejection(
                sequence=self.error.sequence, reason=self.error.reason,
                detail=self.error.detail)).SerializeToString()
        if self.head is None:
            return None
        return pb.IngestResponse(ack=pb.Ack(
            collector_id=collector_id, stored_through_sequence=self.head.sequence,
            head_hash=self.head.hash if self.head.sequence else b"",
            rejections=[pb.Rejection(sequence=r.sequence, reason=r.reason, detail=r.detail)
                        for r in self.refusals],
            receipt=self.receipt,
        )).SerializeToString()


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    """What a transport tells the collector after a batch."""

    head: ChainHead
    refusals: tuple[Refusal, ...]


def _now_ms() -> int:
    return int(time.time() * 1000)


class IngestCore:
    """Verifies and stores blocks for any transport."""

    def __init__(self, *, ledger: Ledger) -> None:
        self.ledger = ledger
        self.stats = IngestStats()
        # latest CollectorStatus per collector, with when it arrived (ms)
        self.statuses: dict[str, tuple[pb.CollectorStatus, int]] = {}
        self._keys: dict[str, tuple[CollectorKey, Verifier]] = {}
        # called with the collector id after new blocks are stored (the time-series sink and
        # the transparency log wake)
        self.on_stored: list[Callable[[str], None]] = []
        # the transparency log's receipt for a collector holding a checkpoint of a tree size
        self.receipts: Callable[[str, int], Awaitable[pb.Receipt | None]] | None = None
        self._receipts_sent: dict[str, tuple[tuple[int, int], float]] = {}

    def __repr__(self) -> str:
        return f"IngestCore(ledger={self.ledger!r}, collectors={len(self._keys)})"

    async def receipt(self, collector_id: str, known_size: int) -> pb.Receipt | None:
        """A receipt for the collector when the log has a checkpoint newer than the one it holds
        (`known_size`). A log that cannot answer, for whatever reason, costs the ack nothing: the
        receipt comes later."""
        if self.receipts is None:
            return None
        try:
            receipt = await self.receipts(collector_id, known_size)
        except (LedgerError, ProofRequestError) as exc:
            log.debug("no receipt for %s this time: %s", collector_id, exc)
            return None
        except Exception:  # a bug in the receipts: the blocks are stored, the ack must go
            log.exception("no receipt for %s this time: the transparency log failed; the ack "
                          "goes without one (please report this)", collector_id)
            return None
        if receipt is None:
            return None
        # the same checkpoint for the same held size once per RECEIPT_REPEAT_S: batches in flight
        # repeat the old size; a collector that reports another size gets its own proof at once
        sent_for = (receipt_size(receipt), known_size)
        sent = self._receipts_sent.get(collector_id)
        now = time.monotonic()
        if sent is not None and sent[0] == sent_for and now - sent[1] < RECEIPT_REPEAT_S:
            return None
        self._receipts_sent[collector_id] = (sent_for, now)
        return receipt

    async def collector(self, collector_id: str) -> tuple[CollectorKey, Verifier] | None:
        """The enrolled key of a collector, re-reading the registry on a miss."""
        if collector_id not in self._keys:
            for cid, key in (await self.ledger.collector_keys()).items():
                if cid not in self._keys:
                    self._keys[cid] = (key, Verifier(public_key=key.public_key))
        return self._keys.get(collector_id)

    async def refuse(
        self, *, raw: bytes, collector_id: str, refusal: Refusal, transport: str, peer: str,
    ) -> Refusal:
        """Count a refusal and keep its bytes as evidence."""
        alarm = refusal.reason in ALARM_REASONS
        entry = QuarantineEntry(_now_ms(), transport, peer, collector_id,
                                refusal.sequence or None, refusal.reason, refusal.detail, raw,
                                alarm)
        kept = await self.ledger.quarantine([entry])
        self._count_refusal(entry, kept == 1)
        return refusal

    def _count_refusal(self, entry: QuarantineEntry, kept: bool) -> None:
        self.stats.rejections[entry.reason] += 1
        if not kept:
            self.stats.evidence_dropped += 1
        level = logging.ERROR if entry.alarm else logging.WARNING
        log.log(level, "%srefused %s from collector %r (%s, %s): %s%s",
                "ALARM: " if entry.alarm else "", entry.reason, entry.collector_id,
                entry.transport, entry.peer, entry.detail,
                "" if kept else " [quarantine full: evidence not kept]")

    async def record_status(
        self, *, collector_id: str, status: pb.CollectorStatus, raw: bytes, transport: str,
        peer: str,
    ) -> Refusal | None:
        """Keep the latest health report of an enrolled collector (in memory: it is telemetry,
        not evidence); refuse one that speaks for another collector."""
        if await self.collector(collector_id) is None:
            return await self.refuse(raw=raw, collector_id=collector_id, transport=transport,
                                     peer=peer, refusal=Refusal(0, "unknown_collector",
                                     f"status from {collector_id!r}, which is not enrolled"))
        if status.collector_id != collector_id:
            return await self.refuse(raw=raw, collector_id=collector_id, transport=transport,
                                     peer=peer, refusal=Refusal(0, "collector_mismatch",
                                     f"status names {status.collector_id!r} on the stream of "
                                     f"{collector_id!r}"))
        previous = self.statuses.get(collector_id)
        if previous is None or previous[0].time_unix_ms <= status.time_unix_ms:
            self.statuses[collector_id] = (status, _now_ms())
        return None

    async def handle(
        self, *, collector_id: str, raw: bytes, transport: str, peer: str,
        max_blocks_per_batch: int, hello_expected: bool,
    ) -> Answer:
        """One message of a collector, whatever carried it: a hello (answered with where to
        resume, when `hello_expected`), a status report (kept, not answered), or a batch
        (verified and stored, answered with an ack). Every refusal is quarantined."""
        async def refused(reason: str, detail: str) -> Answer:
            refusal = await self.refuse(raw=raw, collector_id=collector_id, transport=transport,
                                        peer=peer, refusal=Refusal(0, reason, detail))
            return Answer(head=await self.ledger.head(collector_id), refusals=(refusal,))

        request = pb.IngestRequest()
        try:
            request.ParseFromString(raw)
        except DecodeError as exc:
            return await refused("malformed_message", f"not a stackline.v1.IngestRequest: {exc}")
        if await self.collector(collector_id) is None:
            return Answer(error=await self.refuse(
                raw=raw, collector_id=collector_id, transport=transport, peer=peer,
                refusal=Refusal(0, "unknown_collector",
                                f"collector {collector_id!r} is not enrolled at this gateway; "
                                "enrol its public key with `stackline gateway enroll`")))
        kind = request.WhichOneof("kind")
        if kind == "hello" and hello_expected:
            if request.hello.collector_id != collector_id:
                return await refused("collector_mismatch",
                                     f"hello names {request.hello.collector_id!r} for "
                                     f"{collector_id!r}")
            return Answer(head=await self.ledger.head(collector_id),
                          receipt=await self.receipt(collector_id,
                                                     request.hello.receipt_tree_size))
        if kind == "status":
            refusal = await self.record_status(collector_id=collector_id, status=request.status,
                                               raw=raw, transport=transport, peer=peer)
            return Answer() if refusal is None else Answer(error=refusal)
        if kind != "batch":
            return await refused("protocol_violation",
                                 "expected a batch or a status report here")
        blocks = list(request.batch.blocks)
        if len(blocks) > max_blocks_per_batch:
            return await refused("batch_too_large", f"{len(blocks)} blocks in one message; the "
                                 f"limit is {max_blocks_per_batch}")
        outcome = await self.ingest(collector_id=collector_id, envelopes=blocks,
                                    transport=transport, peer=peer)
        return Answer(head=outcome.head, refusals=outcome.refusals,
                      receipt=await self.receipt(collector_id, request.batch.receipt_tree_size))

    async def ingest(
        self, *, collector_id: str, envelopes: list[pb.SignedBlock], transport: str, peer: str,
    ) -> IngestOutcome:
        """Verify a batch in order and store it; stop at the first refused block."""
        known = await self.collector(collector_id)
        if known is None:
            refusal = Refusal(0, "unknown_collector",
                              f"collector {collector_id!r} is not enrolled at this gateway")
            raw = pb.Batch(blocks=envelopes).SerializeToString()
            await self.refuse(raw=raw, collector_id=collector_id, refusal=refusal,
                              transport=transport, peer=peer)
            return IngestOutcome(ChainHead.empty(), (refusal,))
        key, verifier = known
        verified: list[VerifiedBlock] = []
        refusals: list[Refusal] = []
        for envelope in envelopes:
            result = verify_envelope(envelope, collector_id=collector_id, key=key,
                                     verifier=verifier)
            if isinstance(result, Refusal):
                await self.refuse(raw=envelope.SerializeToString(), collector_id=collector_id,
                                  refusal=result, transport=transport, peer=peer)
                refusals.append(result)
                break
            verified.append(result)
        if not verified:
            return IngestOutcome(await self.ledger.head(collector_id), tuple(refusals))
        appended = await self.ledger.append(collector_id, verified, transport=transport,
                                            peer=peer, received_unix_ms=_now_ms())
        for block, placement in zip(verified, appended.placements, strict=False):
            if placement is Placement.NEXT:
                self.stats.blocks_stored[collector_id] += 1
                self.stats.readings_stored[collector_id] += block.reading_count
                self.stats.blocks_by_transport[(collector_id, transport)] += 1
                self.stats.readings_by_transport[(collector_id, transport)] += block.reading_count
                self.stats.last_stored_unix_ms[collector_id] = _now_ms()
            elif placement is Placement.DUPLICATE:
                self.stats.duplicates[collector_id] += 1
        if Placement.NEXT in appended.placements:
            for listener in self.on_stored:
                listener(collector_id)
        if appended.refused is not None:
            entry = appended.refused
            self._count_refusal(entry, appended.evidence_kept)
            # the chain refusal comes first: it happened to an earlier block than any signature one
            refusals.insert(0, Refusal(entry.sequence or 0, entry.reason, entry.detail))
        return IngestOutcome(appended.head, tuple(refusals))
