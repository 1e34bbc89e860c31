"""Evidence bundles (`stackline.bundle/v1`): one zip file holding everything a verifier needs to
check a unit's reported figures offline, and `stackline export`, which writes one.

Layout (docs/verifying.md describes every file and field)::

    manifest.json               format id, period, what is where, per collector the sequence
                                ranges included, SHA-256 and size of every other file
    collectors.json             the collectors feeding the unit: plant, chain head, public keys
    blocks/<collector>.ndjson   signed blocks, one JSON object a line, in sequence order
    proofs/<collector>.ndjson   an RFC 9162 inclusion proof for every block, to the checkpoint
    log/checkpoint.json         a fresh signed checkpoint, and the log's previous one with the
                                consistency proof between them
    report/report.json          the gateway's report, byte for byte as it was signed
    report/signature.json       the report's signature by the log key
    methodology/<name>.yaml     the methodology file the report cites

The writer takes a `BundleSource`: the gateway's verifier API over HTTP
(`gateway.bundle_http.GatewayClient`), or the API's own operations over a ledger and its
transparency log in this process (`LedgerSource`, for tests and tools that hold the ledger). The
documents it writes are the API's (gateway/verifier_documents.py). Blocks stream through a
temporary spool file into the zip; nothing holds a period's blocks in memory.

Which blocks: for every collector feeding the unit, every block from the first to the last
readings block whose window touches the period widened by the accounting's margin (what
`gateway.accounting.source.load_unit_data` reads), contiguous, and the CONFIG blocks in force
for them (asked for by kind when they precede the period: the gateway finds a collector's
configuration blocks in an index, without streaming the chain).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import IO, Any, Literal, Protocol, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway import verifier_api
from gateway.accounting.methodology import MethodologyFile
from gateway.accounting.source import MARGIN_MS
from gateway.errors import GatewayError
from gateway.ledger.base import Ledger
from gateway.report_signature import SignedReport
from gateway.tokens import ALL_PLANTS, Tokens, TokenScope
from gateway.translog.log import InclusionProof, TransparencyLog
from gateway.verifier_api import BLOCK_KINDS, ApiError, BlockQuery, NotFound, VerifierService
from gateway.verifier_documents import (
    BlockLine,
    BundleFormatError,
    CheckpointInfo,
    CollectorInfo,
    LogState,
    b64text,
    json_object,
    json_text,
)
from proto.errors import VerificationError
from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import decode_block

__all__ = [
    "BUNDLE_FORMAT",
    "BlockKindName",
    "BundleSource",
    "ExportError",
    "ExportSummary",
    "LedgerSource",
    "SourceNotFoundError",
    "check_entry_id",
    "export_bundle",
    "period_bounds_ms",
]

BUNDLE_FORMAT = "stackline.bundle/v1"

MANIFEST = "manifest.json"
COLLECTORS_FILE = "collectors.json"
CHECKPOINT_FILE = "log/checkpoint.json"
REPORT_FILE = "report/report.json"
REPORT_SIGNATURE_FILE = "report/signature.json"

WINDOW_PAD_MS = 3_600_000
"""Blocks are asked for by window start from this much before the widened period, so a block
whose window starts earlier and reaches into it is found (windows are one tick long)."""
PROGRESS_EVERY = 20_000
HASH_BYTES = 32

_ENTRY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""What a collector id or methodology name must be to name a bundle file (the configuration's
identifier pattern)."""

Progress = Callable[[str], None]
BlockKindName = Literal["config", "readings"]
"""The blocks stream's `kind` filter (`GET /v1/collectors/{id}/blocks?kind=`)."""
_T = TypeVar("_T")


class ExportError(GatewayError):
    """An export that cannot be completed; the message says why and what to do."""


class SourceNotFoundError(ExportError):
    """The source has no such thing (the API's 404): a plant without that unit, say."""


def check_entry_id(what: str, value: str) -> str:
    """`value` when it may name a file of the bundle (`blocks/<id>.ndjson`): an identifier as
    the configuration allows them, without '..'; ExportError otherwise. The names come from the
    gateway, which is the party being audited."""
    if not _ENTRY_ID.fullmatch(value) or ".." in value:
        raise ExportError(f"the gateway named a {what} {value[:80]!r}, which is not an identifier "
                          "(letters, digits, '_', '.' and '-', at most 64, starting with a letter "
                          "or digit, no '..'): refusing to name a file of the bundle after it")
    return value


def period_bounds_ms(start: date, end: date, timezone: str) -> tuple[int, int]:
    """UTC ms of local midnight of `start` and of `end` in the plant's zone."""
    try:
        tz = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise BundleFormatError(f"time zone {timezone!r} is not known") from exc
    first = datetime(start.year, start.month, start.day, tzinfo=tz)
    last = datetime(end.year, end.month, end.day, tzinfo=tz)
    return int(first.timestamp() * 1000), int(last.timestamp() * 1000)


# --- where a bundle's contents come from ------------------------------------------------------------


class BundleSource(Protocol):
    """The verifier API's answers that a bundle is made of (see docs/verifying.md)."""

    description: str
    """Where the data comes from, for the manifest (e.g. `gateway https://...`)."""

    async def log_state(self) -> LogState:
        """`GET /v1/log`."""
        ...

    async def publish_checkpoint(self) -> CheckpointInfo:
        """`POST /v1/checkpoint`: a checkpoint of the whole log, now."""
        ...

    async def consistency(self, old_size: int, new_size: int) -> tuple[bytes, ...]:
        """`GET /v1/proofs/consistency`."""
        ...

    async def collectors(self) -> list[CollectorInfo]:
        """`GET /v1/collectors`."""
        ...

    async def unit_collectors(self, plant_id: str, unit_id: str) -> list[str]:
        """`GET /v1/plants/{plant}/units/{unit}/collectors`."""
        ...

    def blocks(self, collector_id: str, *, from_sequence: int | None = None,
               to_sequence: int | None = None, from_unix_ms: int | None = None,
               to_unix_ms: int | None = None,
               kind: BlockKindName | None = None) -> AsyncIterator[BlockLine]:
        """`GET /v1/collectors/{id}/blocks`: sequence bounds inclusive, window start in [from, to),
        blocks of one kind (None: every block)."""
        ...

    def proofs(self, collector_id: str, *, from_sequence: int, to_sequence: int,
               tree_size: int) -> AsyncIterator[InclusionProof]:
        """`GET /v1/collectors/{id}/proofs`."""
        ...

    async def report(self, plant_id: str, unit_id: str, start: date, end: date) -> SignedReport:
        """`GET /v1/plants/{plant}/units/{unit}/report`."""
        ...

    async def methodology(self, name: str) -> MethodologyFile:
        """`GET /v1/methodologies/{id}`."""
        ...


class LedgerSource:
    """A `BundleSource` over a ledger and its transparency log in this process: the verifier API's
    own operations (`VerifierService`, with a scope of every plant), without HTTP (tests, and tools
    that hold the ledger). Its refusals come back as ExportError, a 404 as SourceNotFoundError."""

    SCOPE = TokenScope("ledger source", frozenset({ALL_PLANTS}))

    def __init__(self, *, ledger: Ledger, log: TransparencyLog, gateway_id: str) -> None:
        self.service = VerifierService(ledger=ledger, log=log, tokens=Tokens(()),
                                       gateway_id=gateway_id)
        self.description = f"ledger {ledger!r}"

    def __repr__(self) -> str:
        return f"LedgerSource({self.service!r})"

    @staticmethod
    async def _answer(pending: Awaitable[_T]) -> _T:
        try:
            return await pending
        except NotFound as exc:
            raise SourceNotFoundError(exc.detail) from exc
        except ApiError as exc:
            raise ExportError(exc.detail) from exc

    async def log_state(self) -> LogState:
        """`GET /v1/log`."""
        return await self._answer(self.service.log_state())

    async def publish_checkpoint(self) -> CheckpointInfo:
        """`POST /v1/checkpoint`."""
        return await self._answer(self.service.publish())

    async def consistency(self, old_size: int, new_size: int) -> tuple[bytes, ...]:
        """`GET /v1/proofs/consistency`."""
        return tuple(await self._answer(self.service.consistency(old_size, new_size)))

    async def collectors(self) -> list[CollectorInfo]:
        """`GET /v1/collectors`."""
        return await self._answer(self.service.collectors(self.SCOPE))

    async def unit_collectors(self, plant_id: str, unit_id: str) -> list[str]:
        """`GET /v1/plants/{plant}/units/{unit}/collectors`."""
        return await self._answer(self.service.unit_collectors(self.SCOPE, plant_id, unit_id))

    async def blocks(self, collector_id: str, *, from_sequence: int | None = None,
                     to_sequence: int | None = None, from_unix_ms: int | None = None,
                     to_unix_ms: int | None = None,
                     kind: BlockKindName | None = None) -> AsyncIterator[BlockLine]:
        """`GET /v1/collectors/{id}/blocks`."""
        query = BlockQuery(from_sequence, to_sequence, from_unix_ms, to_unix_ms,
                           None if kind is None else BLOCK_KINDS[kind])
        async for page in await self._answer(self.service.open_blocks(self.SCOPE, collector_id,
                                                                      query)):
            for line in page:
                yield line

    async def proofs(self, collector_id: str, *, from_sequence: int, to_sequence: int,
                     tree_size: int) -> AsyncIterator[InclusionProof]:
        """`GET /v1/collectors/{id}/proofs`."""
        async for page in await self._answer(self.service.open_proofs(
                self.SCOPE, collector_id, from_sequence=from_sequence, to_sequence=to_sequence,
                tree_size=tree_size)):
            for proof in page:
                yield proof

    async def report(self, plant_id: str, unit_id: str, start: date, end: date) -> SignedReport:
        """`GET /v1/plants/{plant}/units/{unit}/report`."""
        return await self._answer(self.service.report(self.SCOPE, plant_id, unit_id, start, end))

    async def methodology(self, name: str) -> MethodologyFile:
        """`GET /v1/methodologies/{id}`."""
        return await self._answer(self.service.methodology(name))


def _peek(payload: bytes) -> pb.Block | None:
    try:
        return decode_block(payload)
    except VerificationError:
        return None


# --- the writer ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _CollectorPart:
    """What the bundle holds of one collector, as it is gathered."""

    collector_id: str
    first: int = 0
    last: int = 0
    configs: list[BlockLine] = field(default_factory=list)
    blocks: int = 0

    def ranges(self) -> list[list[int]]:
        """Sequence ranges included, ascending, adjacent ones merged."""
        spans = [[c.sequence, c.sequence] for c in self.configs]
        if self.first:
            spans.append([self.first, self.last])
        merged: list[list[int]] = []
        for span in sorted(spans):
            if merged and span[0] <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], span[1])
            else:
                merged.append(span)
        return merged


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What `export_bundle` wrote."""

    path: Path
    plant_id: str
    unit_id: str
    collectors: int
    blocks: int
    tree_size: int
    verifier_key: str
    sha256: str


class _ZipWriter:
    """Entries written one after the other, each hashed as it streams."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.zip = zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6)
        self.files: dict[str, dict[str, Any]] = {}

    @contextlib.contextmanager
    def entry(self, name: str) -> Iterator[Callable[[bytes], None]]:
        digest = hashlib.sha256()
        size = 0
        info = zipfile.ZipInfo(name, date_time=time.gmtime()[:6])
        info.compress_type = zipfile.ZIP_DEFLATED
        with self.zip.open(info, "w", force_zip64=True) as out:
            def write(data: bytes) -> None:
                nonlocal size
                out.write(data)
                digest.update(data)
                size += len(data)
            yield write
        self.files[name] = {"sha256": digest.hexdigest(), "bytes": size}

    def put(self, name: str, data: bytes) -> None:
        with self.entry(name) as write:
            write(data)


def _json_bytes(document: object) -> bytes:
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


class _Exporter:
    """One export: gathers from a source, writes one zip."""

    def __init__(self, source: BundleSource, progress: Progress) -> None:
        self.source = source
        self.progress = progress

    async def _spool(self, lines: AsyncIterator[BlockLine], spool: IO[bytes], what: str) -> int:
        count = 0
        async for line in lines:
            spool.write(line.line())
            count += 1
            if count % PROGRESS_EVERY == 0:
                self.progress(f"{what}: {count:,} blocks fetched")
        return count

    async def gather_blocks(self, zipper: _ZipWriter, collector_id: str, *, select: tuple[int, int],
                            path: str) -> _CollectorPart:
        """Stream the collector's blocks around the period into a spool, find the readings blocks
        that touch the widened period and the CONFIG blocks they need, and write the entry."""
        part = _CollectorPart(collector_id)
        low, high = select
        with tempfile.TemporaryFile() as spool:
            fetched = await self._spool(
                self.source.blocks(collector_id, from_unix_ms=low - WINDOW_PAD_MS, to_unix_ms=high + 1),
                spool, f"collector {collector_id}")
            first, last, ordered = _overlap(spool, select)
            if first is None or last is None:
                self.progress(f"collector {collector_id}: no readings block in the period")
                with zipper.entry(path):
                    pass
                return part
            part.first, part.last = first, last
            needed, contiguous = _needed_configs(spool, first, last)
            if not (ordered and contiguous):
                # a clock that stepped back puts blocks of the range outside the time window: ask
                # for the range by sequence instead
                spool.seek(0)
                spool.truncate()
                fetched = await self._spool(self.source.blocks(collector_id, from_sequence=first,
                                                               to_sequence=last), spool,
                                            f"collector {collector_id}")
                needed, contiguous = _needed_configs(spool, first, last)
                if not contiguous:
                    raise ExportError(f"the gateway's blocks {first}..{last} of collector {collector_id} "
                                      "are not contiguous; run `stackline verify --ledger` at the gateway")
            self.progress(f"collector {collector_id}: {last - first + 1:,} blocks {first}..{last} "
                          f"({fetched:,} fetched)")
            part.configs = await self._find_configs(collector_id, needed, before=first)
            with zipper.entry(path) as write:
                for config in part.configs:
                    write(config.line())
                spool.seek(0)
                for raw in spool:
                    sequence = _sequence_of(raw)
                    if first <= sequence <= last:
                        write(raw)
            part.blocks = last - first + 1 + len(part.configs)
        return part

    async def _find_configs(self, collector_id: str, needed: set[bytes], *,
                            before: int) -> list[BlockLine]:
        """The newest CONFIG block before `before` for each needed configuration digest: the
        collector's configuration blocks are asked for by kind (the gateway reads them from an
        index; they are few), not searched for along the chain."""
        found: dict[bytes, BlockLine] = {}
        if needed and before > 1:
            self.progress(f"collector {collector_id}: looking for its configuration before "
                          f"block {before:,}")
            async for line in self.source.blocks(collector_id, to_sequence=before - 1,
                                                  kind="config"):
                block = _peek(line.payload)
                if block is None or block.kind != pb.BLOCK_KIND_CONFIG:
                    continue  # not what was asked for: the verifier names what is missing
                digest = bytes(block.config_digest)
                if digest in needed and (digest not in found
                                         or line.sequence > found[digest].sequence):
                    found[digest] = line
        for digest in sorted(needed - found.keys()):
            self.progress(f"collector {collector_id}: warning: configuration {digest.hex()[:16]} "
                          "is not in its chain before the period")
        return sorted(found.values(), key=lambda line: line.sequence)

    async def covering_checkpoint(self, parts: list[_CollectorPart]) -> CheckpointInfo:
        """A fresh checkpoint whose tree holds every block gathered. The gateway publishes at
        most one checkpoint a second (`CHECKPOINT_MIN_INTERVAL_S`) and answers the latest one
        within that time, which may predate the newest blocks: then wait that long and ask once
        more."""
        self.progress("asking the gateway for a fresh checkpoint")
        checkpoint = await self.source.publish_checkpoint()
        missing = await self._not_in_tree(parts, checkpoint.tree_size)
        if missing is None:
            return checkpoint
        wait_s = verifier_api.CHECKPOINT_MIN_INTERVAL_S * 1.1
        self.progress(f"the gateway's latest checkpoint (tree size {checkpoint.tree_size}) does "
                      f"not hold {missing} yet: asking again in {wait_s:.1f} s")
        await asyncio.sleep(wait_s)
        checkpoint = await self.source.publish_checkpoint()
        missing = await self._not_in_tree(parts, checkpoint.tree_size)
        if missing is not None:
            raise ExportError(f"the gateway's fresh checkpoint (tree size {checkpoint.tree_size}) "
                              f"does not hold {missing}, which the bundle includes: its log is "
                              "not integrating; ask the gateway's operator")
        return checkpoint

    async def _not_in_tree(self, parts: list[_CollectorPart], tree_size: int) -> str | None:
        """The first collector's newest included block that is not in the tree of that size
        (a collector's blocks enter the log in chain order: when its newest is in the tree, so
        are the others), as text; None when every one is."""
        for part in parts:
            newest = max([part.last] + [c.sequence for c in part.configs])
            if newest == 0:
                continue
            found = False
            async for _proof in self.source.proofs(part.collector_id, from_sequence=newest,
                                                   to_sequence=newest, tree_size=tree_size):
                found = True
            if not found:
                return f"block {newest} of collector {part.collector_id}"
        return None

    async def write_proofs(self, zipper: _ZipWriter, part: _CollectorPart, *, path: str,
                           tree_size: int) -> None:
        """Every included block's inclusion proof, in sequence order."""
        count = 0
        with zipper.entry(path) as write:
            spans = [(c.sequence, c.sequence) for c in part.configs]
            if part.first:
                spans.append((part.first, part.last))
            for first, last in spans:
                expected = first
                async for proof in self.source.proofs(part.collector_id, from_sequence=first,
                                                      to_sequence=last, tree_size=tree_size):
                    if proof.sequence != expected or proof.collector_id != part.collector_id:
                        raise ExportError(f"the gateway sent the proof of {proof.collector_id} "
                                          f"#{proof.sequence} where {part.collector_id} #{expected} "
                                          "was due")
                    write(json.dumps(proof.as_json(), separators=(",", ":")).encode() + b"\n")
                    expected += 1
                    count += 1
                    if count % PROGRESS_EVERY == 0:
                        self.progress(f"collector {part.collector_id}: {count:,} proofs fetched")
                if expected != last + 1:
                    raise ExportError(f"the gateway has no inclusion proof of {part.collector_id} "
                                      f"#{expected} at tree size {tree_size}")
        self.progress(f"collector {part.collector_id}: {count:,} proofs fetched")


def _sequence_of(raw: bytes) -> int:
    value = json.loads(raw)["sequence"]
    return int(value)


def _overlap(spool: IO[bytes], select: tuple[int, int]) -> tuple[int | None, int | None, bool]:
    """First and last sequence of the readings blocks whose window touches [low, high] (what
    load_unit_data reads), and whether the spool is in ascending sequence order."""
    low, high = select
    first = last = None
    previous = 0
    ordered = True
    spool.seek(0)
    for raw in spool:
        line = BlockLine.from_json(json.loads(raw))
        ordered = ordered and line.sequence > previous
        previous = line.sequence
        block = _peek(line.payload)
        if block is None or block.kind != pb.BLOCK_KIND_READINGS:
            continue
        if block.window_end_unix_ms < low or block.window_start_unix_ms > high:
            continue
        first = line.sequence if first is None else min(first, line.sequence)
        last = line.sequence if last is None else max(last, line.sequence)
    return first, last, ordered


def _needed_configs(spool: IO[bytes], first: int, last: int) -> tuple[set[bytes], bool]:
    """The configuration digests that readings blocks in [first, last] use before a CONFIG block
    of the range announces them, and whether the spool holds the range contiguously."""
    announced: set[bytes] = set()
    needed: set[bytes] = set()
    expected = first
    spool.seek(0)
    for raw in spool:
        line = BlockLine.from_json(json.loads(raw))
        if not first <= line.sequence <= last:
            continue
        if line.sequence != expected:
            return needed, False
        expected += 1
        block = _peek(line.payload)
        if block is None:
            continue
        digest = bytes(block.config_digest)
        if block.kind == pb.BLOCK_KIND_CONFIG:
            announced.add(digest)
        elif digest not in announced:
            needed.add(digest)
    return needed, expected == last + 1


async def _find_plant(source: BundleSource, collectors: list[CollectorInfo], unit_id: str) -> str:
    plants = sorted({c.plant_id for c in collectors if c.plant_id})
    if len(plants) > 100:
        raise ExportError(f"the gateway serves {len(plants)} plants: say which one has unit "
                          f"{unit_id!r} with --plant")
    having = []
    for plant in plants:
        try:
            if await source.unit_collectors(plant, unit_id):
                having.append(plant)
        except SourceNotFoundError:
            continue  # the plant has no such unit
    if not having:
        raise ExportError(f"no plant at the gateway has an accounting unit {unit_id!r}")
    if len(having) > 1:
        raise ExportError(f"plants {', '.join(having)} all have a unit {unit_id!r}: say which with --plant")
    return having[0]


@dataclass(frozen=True, slots=True)
class _Plan:
    """What an export needs to know before it fetches blocks."""

    log_state: LogState
    collectors: dict[str, CollectorInfo]
    plant_id: str
    unit_id: str
    feeding: list[str]
    report: SignedReport
    timezone: str
    methodology: str
    start: date
    end: date
    period_ms: tuple[int, int]

    @property
    def select(self) -> tuple[int, int]:
        """The window readings blocks are selected in: the period widened by the margin."""
        return self.period_ms[0] - MARGIN_MS, self.period_ms[1] + MARGIN_MS


async def _plan(source: BundleSource, *, unit_id: str, plant_id: str | None, start: date, end: date,
                say: Progress) -> _Plan:
    log_state = await source.log_state()
    collectors = await source.collectors()
    plant = plant_id or await _find_plant(source, collectors, unit_id)
    feeding = sorted(check_entry_id("collector id", c)
                     for c in await source.unit_collectors(plant, unit_id))
    if not feeding:
        raise ExportError(f"no collector feeds unit {unit_id!r} of plant {plant!r}")
    say(f"unit {unit_id} of plant {plant}: collectors {', '.join(feeding)}; asking for the report")
    report = await source.report(plant, unit_id, start, end)
    try:
        document = json_object(json.loads(report.body), "report")
        timezone = json_text(json_object(document.get("plant"), "report plant"), "timezone", "report plant")
        methodology = json_text(json_object(document.get("methodology"), "report methodology"), "name",
                           "report methodology")
    except (json.JSONDecodeError, UnicodeDecodeError, BundleFormatError) as exc:
        raise ExportError(f"the gateway's report is not a report document: {exc}") from exc
    check_entry_id("methodology", methodology)
    return _Plan(log_state, {c.collector_id: c for c in collectors}, plant, unit_id, feeding, report,
                 timezone, methodology, start, end, period_bounds_ms(start, end, timezone))


async def _write(exporter: _Exporter, zipper: _ZipWriter, plan: _Plan) -> tuple[list[_CollectorPart], int]:
    """Every entry of the bundle, the manifest last; (collector parts, checkpoint tree size)."""
    source = exporter.source
    parts = [await exporter.gather_blocks(zipper, collector_id, select=plan.select,
                                          path=f"blocks/{collector_id}.ndjson")
             for collector_id in plan.feeding]
    checkpoint = await exporter.covering_checkpoint(parts)
    previous = plan.log_state.checkpoint
    previous_json: dict[str, Any] | None = None
    if previous is not None and 0 < previous.tree_size <= checkpoint.tree_size:
        # equal sizes need no proof (and equal roots, which the verifier checks)
        consistency = () if previous.tree_size == checkpoint.tree_size else await source.consistency(
            previous.tree_size, checkpoint.tree_size)
        previous_json = {**previous.as_json(), "consistency": [b64text(h) for h in consistency]}
    for part in parts:
        await exporter.write_proofs(zipper, part, path=f"proofs/{part.collector_id}.ndjson",
                                    tree_size=checkpoint.tree_size)
    zipper.put(CHECKPOINT_FILE, _json_bytes({**checkpoint.as_json(), "previous": previous_json}))
    methodology = await source.methodology(plan.methodology)
    methodology_path = f"methodology/{check_entry_id('methodology', methodology.name)}.yaml"
    zipper.put(methodology_path, methodology.data)
    zipper.put(REPORT_FILE, plan.report.body)
    zipper.put(REPORT_SIGNATURE_FILE, _json_bytes(
        {"signature": b64text(plan.report.signature), "log_key": plan.report.log_key}))
    zipper.put(COLLECTORS_FILE, _json_bytes({"collectors": [
        (plan.collectors.get(c) or CollectorInfo(c, plan.plant_id, 0, ())).as_json()
        for c in plan.feeding]}))
    select = plan.select
    zipper.put(MANIFEST, _json_bytes({
        "format": BUNDLE_FORMAT,
        "created_unix_ms": int(time.time() * 1000),
        "source": source.description,
        "plant": plan.plant_id,
        "unit": plan.unit_id,
        "period": {"from": plan.start.isoformat(), "to": plan.end.isoformat(),
                   "timezone": plan.timezone, "start_unix_ms": plan.period_ms[0],
                   "end_unix_ms": plan.period_ms[1]},
        "selection": {"margin_ms": MARGIN_MS, "from_unix_ms": select[0], "to_unix_ms": select[1]},
        "log": {"origin": plan.log_state.origin, "verifier_key": plan.log_state.verifier_key,
                "checkpoint": CHECKPOINT_FILE, "tree_size": checkpoint.tree_size},
        "collectors_file": COLLECTORS_FILE,
        "report": {"body": REPORT_FILE, "signature": REPORT_SIGNATURE_FILE},
        "methodologies": [{"name": methodology.name, "path": methodology_path,
                           "digest": methodology.digest}],
        "collectors": [{"collector_id": p.collector_id, "blocks": f"blocks/{p.collector_id}.ndjson",
                        "proofs": f"proofs/{p.collector_id}.ndjson", "ranges": p.ranges(),
                        "block_count": p.blocks} for p in parts],
        "files": dict(sorted(zipper.files.items())),
    }))
    return parts, checkpoint.tree_size


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


async def export_bundle(source: BundleSource, *, unit_id: str, start: date, end: date, out: Path,
                        plant_id: str | None = None, progress: Progress | None = None) -> ExportSummary:
    """Write the evidence bundle of a unit and local days [start, end) to `out` (atomically: a
    temporary file beside it, renamed when complete)."""
    say: Progress = progress or (lambda _message: None)
    if end <= start:
        raise ExportError(f"the period must end after it starts ({start} .. {end})")
    plan = await _plan(source, unit_id=unit_id, plant_id=plant_id, start=start, end=end, say=say)
    if plan.select[1] > time.time() * 1000:
        say("warning: the period is not over (or ended within the hour): blocks that arrive "
            "after the report was computed will make it differ from a recomputation")
    out = Path(out)
    try:
        handle = tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.",  # noqa: SIM115 - renamed, not closed
                                             suffix=".partial", delete=False)
    except OSError as exc:
        raise ExportError(f"cannot write the bundle beside {out}: {exc.strerror}") from exc
    try:
        with handle:
            zipper = _ZipWriter(handle)
            try:
                parts, tree_size = await _write(_Exporter(source, say), zipper, plan)
            except BaseException:
                # close it now, while its file is open (the partial file is removed below), not
                # when collected, which writes to a closed file
                with contextlib.suppress(Exception):
                    zipper.zip.close()
                raise
            zipper.zip.close()
        digest = await asyncio.to_thread(_file_sha256, handle.name)
        os.chmod(handle.name, 0o644)  # a temporary file is made 0600; a bundle is for sharing
        os.replace(handle.name, out)
    except OSError as exc:  # the disk, not the gateway
        with contextlib.suppress(OSError):
            os.unlink(handle.name)
        raise ExportError(f"writing {out} failed: {exc}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(handle.name)
        raise
    return ExportSummary(out, plan.plant_id, unit_id, len(parts), sum(p.blocks for p in parts),
                         tree_size, plan.log_state.verifier_key, digest)
