"""The verifier API: read-only access to collectors and their keys, signed blocks, the
transparency log's checkpoints and proofs, reports and methodologies, for bearer tokens scoped
to plants. Served over HTTP by this module and over gRPC by gateway/grpc_server.py (through
gateway/verifier_grpc.py), with the same tokens, scope rules and answers.

`VerifierService` holds the operations, free of any transport: each checks the token's scope
and its parameters before it reads anything, and refuses with an `ApiError` whose `code` both
transports map (HTTP status, gRPC status code). Its answers are the API's documents
(gateway/verifier_documents.py), the ones `stackline export` reads back and a bundle holds. Streams
are async iterators of pages, so an answer of any length holds one ledger page in memory; the
blocks stream selects by stored columns (a kind from its index), never by parsing payloads.

The HTTP side is a small asyncio HTTP/1.1 server: the request head is parsed and routed by pure
functions (`parse_request_head`, `route`, `parse_query`), then answered with a Content-Length
body or, for the ndjson streams, chunked, one chunk per page (a stream cut short lacks its last,
empty chunk, so a client can tell a cut from an end). Connections (in all and per address),
request heads, bodies, idle time and write time are bounded; a connection's first request must
arrive and authenticate within AUTH_TIMEOUT_S, and a request that does not authenticate ends
its connection, so a client without a token holds a connection for seconds, not for ever.

The plant of a collector is the `plant.id` of the configuration document in force at its newest
block (the document of its newest CONFIG block, in every chain a Stackline collector writes);
a collector with no configuration is of no known plant, visible only to tokens scoped to "*".
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import http
import json
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, ClassVar
from urllib.parse import parse_qsl, unquote

from gateway.accounting.methodology import (
    MethodologyError,
    MethodologyFile,
    MethodologyFileError,
    load_methodology,
    read_methodology_file,
)
from gateway.accounting.render import render_json
from gateway.accounting.source import PeriodTooLarge, UnitData, load_unit_data, unit_collectors
from gateway.accounting.unit import AccountingError, account_unit
from gateway.errors import GatewayError, LedgerError
from gateway.ledger.base import BlockSelection, Ledger, StoredCheckpoint, StoredRow
from gateway.report_signature import SignedReport, sign_report
from gateway.tokens import Tokens, TokenScope, bearer_token
from gateway.translog.log import InclusionProof, TransparencyLog
from gateway.translog.merkle import ProofRequestError
from gateway.verifier_documents import (
    BlockLine,
    CheckpointInfo,
    CollectorInfo,
    CollectorKeyInfo,
    LogState,
    b64text,
)
from proto.errors import StacklineWireError
from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import MAX_SEQUENCE, decode_block

__all__ = [
    "BLOCK_KINDS",
    "CHECKPOINT_MIN_INTERVAL_S",
    "MAX_REPORT_BLOCKS",
    "ApiError",
    "BadRequest",
    "BlockQuery",
    "Forbidden",
    "MethodNotAllowed",
    "NotFound",
    "RequestHead",
    "Route",
    "Unauthenticated",
    "Unavailable",
    "Unprocessable",
    "VerifierHttpServer",
    "VerifierService",
    "parse_date",
    "parse_query",
    "parse_request_head",
    "route",
]

log = logging.getLogger(__name__)

BLOCK_KINDS: dict[str, int] = {"config": pb.BLOCK_KIND_CONFIG, "readings": pb.BLOCK_KIND_READINGS}
"""The `kind` filter of the blocks stream: its values over HTTP, and the block kind each selects."""

PAGE_BLOCKS = 256
"""Blocks read from the ledger (and written as one chunk) at a time."""
PAGE_PROOFS = 512
"""Sequences whose proofs are read at a time (two ledger round trips per page)."""
MAX_REPORT_DAYS = 366
"""The longest period one report request may cover (a leap year)."""
MAX_HEAVY_REQUESTS = 2
"""Reports and unit scans (each reads every block of the ledger) running at once; others wait."""
MAX_REPORT_BLOCKS = 200_000
"""Readings blocks one report may read, unless the service is given another cap (the setting
verifier_api.max_report_blocks, the same default): they are all in memory at once, about 3.6 KB
each, so this is about 700 MB."""
CHECKPOINT_MIN_INTERVAL_S = 1.0
"""POST /v1/checkpoint signs and stores a checkpoint at most this often; within this time of the
latest one it answers that one (so a token holder cannot fill the ledger with checkpoints)."""

MAX_CONNECTIONS = 64
MAX_CONNECTIONS_PER_PEER = 16
"""Connections at once from one IP address (so one address cannot take all MAX_CONNECTIONS)."""
AUTH_TIMEOUT_S = 10.0
"""A new connection's first request, which must authenticate, arrives within this."""
LINGER_S = 1.0
"""How long a connection refused at the limits is read (and dropped) after its answer, so that
the request it sent does not turn the close into a reset that loses the answer."""
MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 64
MAX_BODY_BYTES = 4096
MAX_QUERY_FIELDS = 16
IDLE_TIMEOUT_S = 30.0
WRITE_TIMEOUT_S = 60.0
_LOUD_KEYS = 4096

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_METHODOLOGY_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_INTEGER = re.compile(r"-?[0-9]{1,20}")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TOKEN_CHARS = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


# --- errors --------------------------------------------------------------------------------------


class ApiError(GatewayError):
    """A request the API refuses: `code` (stable, in the JSON body and the metrics), the HTTP
    `status`, and `detail`, a sentence saying what to do."""

    code: ClassVar[str] = "internal"
    status: ClassVar[int] = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(ApiError):
    """A malformed request or a bad parameter (named in the detail)."""

    code, status = "bad_request", 400


class Unauthenticated(ApiError):
    """No bearer token, or one this gateway does not know."""

    code, status = "unauthenticated", 401


class Forbidden(ApiError):
    """A collector or plant outside the token's plants."""

    code, status = "forbidden", 403


class NotFound(ApiError):
    """No such path, collector, checkpoint, proof, unit or methodology."""

    code, status = "not_found", 404


class MethodNotAllowed(ApiError):
    """A known path asked with a method it does not answer; `allow` lists those it does."""

    code, status = "method_not_allowed", 405

    def __init__(self, detail: str, *, allow: Collection[str]) -> None:
        super().__init__(detail)
        self.allow = tuple(sorted(allow))


class Unprocessable(ApiError):
    """The ledger's data for a report cannot be accounted (a configuration or methodology
    problem the operator must fix); asking again gets the same answer."""

    code, status = "unprocessable", 422


class Unavailable(ApiError):
    """The ledger failed or the gateway is busy: ask again later."""

    code, status = "unavailable", 503


# --- queries ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BlockQuery:
    """Which blocks of a collector: sequences [from, to], window starts in [from, to) (ms), and
    one kind (`pb.BlockKind`, a value of BLOCK_KINDS); None leaves a bound open."""

    from_sequence: int | None = None
    to_sequence: int | None = None
    from_unix_ms: int | None = None
    to_unix_ms: int | None = None
    kind: int | None = None

    def check(self) -> None:
        """BadRequest naming the parameter when the range is impossible."""
        _check_sequence("from_sequence", self.from_sequence)
        _check_sequence("to_sequence", self.to_sequence)
        if (self.from_sequence is not None and self.to_sequence is not None
                and self.from_sequence > self.to_sequence):
            raise BadRequest(f"from_sequence {self.from_sequence} is after to_sequence "
                             f"{self.to_sequence}: both are inclusive; swap them")
        for name, value in (("from_unix_ms", self.from_unix_ms), ("to_unix_ms", self.to_unix_ms)):
            if value is not None and not _INT64_MIN <= value <= _INT64_MAX:
                raise BadRequest(f"{name} {value} is outside a 64-bit integer of milliseconds")
        if (self.from_unix_ms is not None and self.to_unix_ms is not None
                and self.from_unix_ms >= self.to_unix_ms):
            raise BadRequest(f"from_unix_ms {self.from_unix_ms} is not before to_unix_ms "
                             f"{self.to_unix_ms}: the range [from, to) would be empty")
        if self.kind is not None and self.kind not in BLOCK_KINDS.values():
            raise BadRequest(f"kind {self.kind} is not a kind of block the stream selects: "
                             f"give BLOCK_KIND_READINGS ({pb.BLOCK_KIND_READINGS}) or "
                             f"BLOCK_KIND_CONFIG ({pb.BLOCK_KIND_CONFIG}), or leave it unset for "
                             "every block")

    def selection(self) -> BlockSelection:
        """The ledger's selection of these blocks (the sequence start is the pages' cursor)."""
        return BlockSelection(to_sequence=self.to_sequence, kind=self.kind,
                              from_unix_ms=self.from_unix_ms, to_unix_ms=self.to_unix_ms)


def _check_sequence(name: str, value: int | None) -> None:
    if value is not None and not 1 <= value <= MAX_SEQUENCE:
        raise BadRequest(f"{name} {value} is not a sequence number: they run 1..{MAX_SEQUENCE}")


def _check_size(name: str, value: int) -> None:
    if not 0 <= value <= _INT64_MAX:
        raise BadRequest(f"{name} {value} is not a tree size: give 0..{_INT64_MAX}")


def _check_id(name: str, value: str) -> None:
    if not _ID.fullmatch(value):
        raise BadRequest(f"{name} {value[:80]!r} is not an id: letters, digits, '_', '.' and '-', "
                         "at most 64, starting with a letter or digit")


def _document(raw: bytes | None) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return document if isinstance(document, dict) else None


def _plant_of_document(document: Mapping[str, Any] | None) -> str | None:
    """`plant.id` of a configuration document, or None when there is no such string in it."""
    plant = None if document is None else document.get("plant")
    plant_id = plant.get("id") if isinstance(plant, dict) else None
    return plant_id if isinstance(plant_id, str) else None


def _report_text(data: UnitData, *, start: date, end: date, gateway_id: str) -> str:
    """The report exactly as `stackline report --format json --gateway-id ID` writes it."""
    methodology = load_methodology(data.unit.methodology)
    document = account_unit(unit=data.unit, blocks=data.blocks, start=start, end=end,
                            methodology=methodology, gateway_id=gateway_id)
    return render_json(document)


def _read_methodology(methodology_id: str) -> MethodologyFile:
    """A bundled methodology's file bytes and the digest reports cite for it."""
    try:
        return read_methodology_file(methodology_id)
    except MethodologyFileError as exc:
        raise Unprocessable(f"the bundled methodology does not load: {exc}") from exc
    except MethodologyError as exc:
        raise NotFound(f"{exc}") from exc


def _runs(rows: list[StoredRow]) -> list[tuple[int, int]]:
    """The runs of consecutive sequences in a page, as (first, last): the leaf indexes of a
    page are read a run at a time, so a sparse page (configuration blocks far apart) does not
    read the leaves of the chain between them."""
    runs: list[tuple[int, int]] = []
    for row in rows:
        if runs and row.sequence == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], row.sequence)
        else:
            runs.append((row.sequence, row.sequence))
    return runs


# --- the operations --------------------------------------------------------------------------------


@dataclass(slots=True)
class _PlantSeen:
    """What the plant lookup last found for a collector: at which head, under which digest."""

    head_sequence: int
    config_digest: bytes
    plant_id: str | None


@dataclass(slots=True)
class _Refusals:
    """Refused requests counted by (transport, code); which (transport, peer, code) were logged."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    logged: set[tuple[str, str, str]] = field(default_factory=set)


class VerifierService:
    """The verifier API's operations over one ledger and its transparency log."""

    def __init__(self, *, ledger: Ledger, log: TransparencyLog, tokens: Tokens,
                 gateway_id: str, max_report_blocks: int = MAX_REPORT_BLOCKS) -> None:
        self.ledger = ledger
        self.log = log
        self.tokens = tokens
        self.gateway_id = gateway_id
        self.max_report_blocks = max_report_blocks
        self.refusals = _Refusals()
        self._plants: dict[str, _PlantSeen] = {}
        self._methodologies: dict[str, MethodologyFile] = {}
        self._heavy = asyncio.Semaphore(MAX_HEAVY_REQUESTS)
        self._publishing = asyncio.Lock()
        self._published_at: float | None = None  # time.monotonic() of this service's last publish

    def __repr__(self) -> str:
        return f"VerifierService(log={self.log.origin!r}, tokens={self.tokens!r})"

    # --- tokens and scope ------------------------------------------------------------------------

    def authenticate(self, authorization: str | None) -> TokenScope:
        """The scope of the request's `Authorization` value; Unauthenticated otherwise."""
        if authorization is None:
            raise Unauthenticated("no token: send the header Authorization: Bearer <token> (the "
                                  "gateway's operator makes one with `stackline gateway token`)")
        token = bearer_token(authorization)
        if token is None:
            raise Unauthenticated("the Authorization header is not a bearer token: send "
                                  "Authorization: Bearer <token>")
        scope = self.tokens.find(token)
        if scope is None:
            raise Unauthenticated("this gateway does not know that token: check it, or ask the "
                                  "gateway's operator for one")
        return scope

    def refused(self, *, transport: str, error: ApiError, peer: str, scope: TokenScope | None,
                what: str) -> None:
        """Count a refusal, and log it: loudly the first time a peer gets that code, quietly
        after (tokens are never logged, only their names)."""
        self.refusals.counts[(transport, error.code)] += 1
        host = peer.rsplit(":", 1)[0]
        key = (transport, host, error.code)
        loud = key not in self.refusals.logged and error.code in (
            Unauthenticated.code, Forbidden.code, Unavailable.code, ApiError.code)
        if loud:
            if len(self.refusals.logged) >= _LOUD_KEYS:
                self.refusals.logged.clear()
            self.refusals.logged.add(key)
        log.log(logging.WARNING if loud else logging.DEBUG,
                "verifier API (%s): refused %s from %s, token %s: %s (%s)", transport, what[:200],
                peer, scope.name if scope else "none", error.code, error.detail)

    def metrics_text(self) -> str:
        """The refusal counters in the Prometheus text format, for the gateway's /metrics."""
        name = "stackline_gateway_verifier_refusals_total"
        lines = [f"# HELP {name} Verifier API requests refused, by transport and error code",
                 f"# TYPE {name} counter"]
        lines += [f'{name}{{transport="{transport}",code="{code}"}} {count}'
                  for (transport, code), count in sorted(self.refusals.counts.items())]
        return "\n".join(lines) + "\n"

    @staticmethod
    def _plant_in_scope(scope: TokenScope, plant_id: str) -> None:
        _check_id("plant_id", plant_id)
        if not scope.may_read(plant_id):
            raise Forbidden(f"plant {plant_id} is outside the plants of token {scope.name!r}: "
                            "ask the gateway's operator for a token of that plant")

    async def plant_of(self, collector_id: str, head_sequence: int) -> str | None:
        """The collector's plant, from the configuration its newest block names (cached per
        head; one block read, and a configuration lookup when the digest changed)."""
        if head_sequence == 0:
            return None
        seen = self._plants.get(collector_id)
        if seen is not None and seen.head_sequence == head_sequence:
            return seen.plant_id
        rows = await self.ledger.read_blocks(collector_id, after_sequence=head_sequence - 1,
                                             limit=1)
        if not rows:
            return None
        try:
            block = decode_block(rows[0].payload)
        except StacklineWireError:
            return None
        digest = bytes(block.config_digest)
        if seen is not None and seen.config_digest == digest:
            plant_id = seen.plant_id
        elif block.kind == pb.BLOCK_KIND_CONFIG and block.config_document:
            plant_id = _plant_of_document(_document(bytes(block.config_document)))
        else:
            plant_id = _plant_of_document(
                _document(await self.ledger.find_config(collector_id, digest)))
        self._plants[collector_id] = _PlantSeen(head_sequence, digest, plant_id)
        return plant_id

    async def _collector_in_scope(self, scope: TokenScope, collector_id: str) -> int:
        """The collector's chain head sequence, once it is known to exist and be in scope."""
        _check_id("collector_id", collector_id)
        keys = await self.ledger.collector_keys()
        if collector_id not in keys:
            raise NotFound(f"no collector {collector_id!r} is enrolled on this gateway: "
                           "GET /v1/collectors lists those your token may read")
        head = await self.ledger.head(collector_id)
        plant_id = await self.plant_of(collector_id, head.sequence)
        if not scope.may_read(plant_id):
            raise Forbidden(f"collector {collector_id} is outside the plants of token "
                            f"{scope.name!r}: ask the gateway's operator for a token of its plant")
        return head.sequence

    # --- the log ---------------------------------------------------------------------------------

    async def log_state(self) -> LogState:
        """The log's name, key, size and latest checkpoint."""
        size = await self.ledger.log_tree().size()
        latest = await self.ledger.checkpoint()
        return LogState(self.log.origin, self.log.verifier_key, size,
                        None if latest is None else CheckpointInfo.of(latest, self.log.verifier_key))

    async def checkpoint(self, tree_size: int | None) -> CheckpointInfo:
        """The latest published checkpoint, or the one of that size."""
        if tree_size is not None:
            _check_size("tree_size", tree_size)
        found = await self.ledger.checkpoint(tree_size)
        if found is None:
            raise NotFound("no checkpoint is published yet: POST /v1/checkpoint publishes one"
                           if tree_size is None else
                           f"no checkpoint of size {tree_size} was published: GET /v1/checkpoint "
                           "gives the latest, POST /v1/checkpoint publishes one now")
        return CheckpointInfo.of(found, self.log.verifier_key)

    async def publish(self) -> CheckpointInfo:
        """A checkpoint covering every block stored now (published on demand when needed); but
        the latest one, which may not cover the newest blocks, while it is younger than
        CHECKPOINT_MIN_INTERVAL_S: each publication is signed and stored for good."""
        async with self._publishing:
            latest = await self.ledger.checkpoint()
            if latest is not None and self._young(latest):
                return CheckpointInfo.of(latest, self.log.verifier_key)
            published = await self.log.publish()
            self._published_at = time.monotonic()
            return CheckpointInfo.of(published, self.log.verifier_key)

    def _young(self, latest: StoredCheckpoint) -> bool:
        # this service's own last publication by the monotonic clock (a wall clock stepped back
        # must not lift the limit), any other (the log's timer, another gateway) by its time
        interval_s = CHECKPOINT_MIN_INTERVAL_S
        if self._published_at is not None and time.monotonic() - self._published_at < interval_s:
            return True
        age_ms = time.time() * 1000 - latest.published_unix_ms
        return 0 <= age_ms < interval_s * 1000

    async def consistency(self, old_size: int, new_size: int) -> list[bytes]:
        """RFC 9162 consistency proof between two tree sizes."""
        _check_size("old_size", old_size)
        _check_size("new_size", new_size)
        if old_size > new_size:
            raise BadRequest(f"old_size {old_size} is larger than new_size {new_size}: swap them")
        size = await self.ledger.log_tree().size()
        if new_size > size:
            raise BadRequest(f"new_size {new_size} is beyond the log's {size} leaves: take it from "
                             "a published checkpoint")
        try:
            return await self.log.consistency(old_size, new_size)
        except ProofRequestError as exc:
            raise BadRequest(f"old_size, new_size: {exc}") from exc

    async def inclusion(self, scope: TokenScope, collector_id: str, sequence: int,
                        tree_size: int) -> InclusionProof:
        """The audit path of one block to a tree size."""
        _check_sequence("sequence", sequence)
        _check_size("tree_size", tree_size)
        await self._collector_in_scope(scope, collector_id)
        await self._check_tree_size(tree_size)
        try:
            return await self.log.inclusion(collector_id, sequence, tree_size)
        except ProofRequestError as exc:
            raise NotFound(f"{exc}: ask for a later tree size (POST /v1/checkpoint publishes "
                           "one covering every stored block, at most one a second)") from exc

    async def _check_tree_size(self, tree_size: int) -> None:
        size = await self.ledger.log_tree().size()
        if tree_size > size:
            raise BadRequest(f"tree_size {tree_size} is beyond the log's {size} leaves: take it "
                             "from a published checkpoint")

    # --- collectors and blocks -------------------------------------------------------------------

    async def collectors(self, scope: TokenScope) -> list[CollectorInfo]:
        """Every enrolled collector the token may see, by id."""
        keys = await self.ledger.collector_keys()
        heads = await self.ledger.heads()
        found: list[CollectorInfo] = []
        for collector_id in sorted(keys):
            head = heads[collector_id].sequence if collector_id in heads else 0
            plant_id = await self.plant_of(collector_id, head)
            if scope.may_read(plant_id):
                # the ledger keeps one row per (collector, key); enrolment refuses a second key
                # today, so this is the whole history
                found.append(CollectorInfo(collector_id, plant_id, head,
                                           (CollectorKeyInfo.of(keys[collector_id]),)))
        return found

    async def open_blocks(self, scope: TokenScope, collector_id: str,
                          query: BlockQuery) -> AsyncIterator[list[BlockLine]]:
        """Check the request, then the blocks a page at a time (no empty pages)."""
        query.check()
        await self._collector_in_scope(scope, collector_id)
        return self._blocks(collector_id, query)

    async def _blocks(self, collector_id: str, query: BlockQuery) -> AsyncIterator[list[BlockLine]]:
        # every filter is on stored columns (the kind from its index): no payload is decoded
        selection = query.selection()
        after = (query.from_sequence or 1) - 1
        while True:
            rows = await self.ledger.select_blocks(collector_id, selection, after_sequence=after,
                                                   limit=PAGE_BLOCKS)
            if not rows:
                return
            indexes: dict[int, int] = {}
            for first, last in _runs(rows):
                indexes.update(await self.ledger.log_leaf_indexes(collector_id, first, last))
            yield [BlockLine(row.sequence, indexes.get(row.sequence), row.payload, row.signature,
                             row.key_id) for row in rows]
            if len(rows) < PAGE_BLOCKS:
                return
            after = rows[-1].sequence

    async def open_proofs(self, scope: TokenScope, collector_id: str, *, from_sequence: int | None,
                          to_sequence: int | None, tree_size: int
                          ) -> AsyncIterator[list[InclusionProof]]:
        """Check the request, then the inclusion proofs of the range's blocks that are in the
        tree of that size, a page at a time."""
        BlockQuery(from_sequence, to_sequence).check()
        _check_size("tree_size", tree_size)
        await self._collector_in_scope(scope, collector_id)
        await self._check_tree_size(tree_size)
        # the collector's newest block in that tree bounds the range: its blocks enter the log
        # in chain order, so none after it is in the tree
        newest = (await self.ledger.log_latest_leaves([collector_id], below_size=tree_size)
                  ).get(collector_id)
        first = from_sequence or 1
        last = 0 if newest is None else min(newest[0], to_sequence or MAX_SEQUENCE)
        return self._proofs(collector_id, first, last, tree_size)

    async def _proofs(self, collector_id: str, first: int, last: int,
                      tree_size: int) -> AsyncIterator[list[InclusionProof]]:
        start = first
        while start <= last:
            end = min(last, start + PAGE_PROOFS - 1)
            try:
                page = await self.log.inclusions(collector_id, start, end, tree_size)
            except ProofRequestError as exc:  # the ledger's log shrank under us: it cannot
                raise LedgerError(f"proofs of {collector_id} #{start}..{end}: {exc}") from exc
            if page:
                yield page
            start = end + 1

    # --- reports and methodologies ---------------------------------------------------------------

    async def report(self, scope: TokenScope, plant_id: str, unit_id: str, start: date,
                     end: date) -> SignedReport:
        """A unit's report for local days [start, end), signed with the log's key."""
        self._plant_in_scope(scope, plant_id)
        _check_id("unit_id", unit_id)
        if end <= start:
            raise BadRequest(f"to {end} must be after from {start} (to is the day after the last "
                             "day reported)")
        if (end - start).days > MAX_REPORT_DAYS:
            raise BadRequest(f"from {start} to {end} is {(end - start).days} days; ask for at "
                             f"most {MAX_REPORT_DAYS} at a time")
        async with self._heavy:
            try:
                data = await load_unit_data(self.ledger, unit_id=unit_id, start=start, end=end,
                                            plant_id=plant_id, max_blocks=self.max_report_blocks)
            except PeriodTooLarge as exc:
                raise Unprocessable(
                    f"from {start} to {end}, unit {unit_id} has more than {exc.max_blocks:,} "
                    "readings blocks, the most one report reads on this gateway: ask for a "
                    "shorter period, or ask the gateway's operator to raise "
                    "verifier_api.max_report_blocks") from exc
            except AccountingError as exc:
                raise NotFound(f"{exc}") from exc
            try:
                text = await asyncio.to_thread(_report_text, data, start=start, end=end,
                                               gateway_id=self.gateway_id)
            except (AccountingError, MethodologyError, ValueError) as exc:
                raise Unprocessable(f"the unit's data cannot be accounted: {exc}") from exc
        body = text.encode("utf-8")
        return SignedReport(body, sign_report(body, self.log.signing_key), self.log.verifier_key)

    async def unit_collectors(self, scope: TokenScope, plant_id: str, unit_id: str) -> list[str]:
        """The collectors whose configuration blocks account for the unit, by id."""
        self._plant_in_scope(scope, plant_id)
        _check_id("unit_id", unit_id)
        async with self._heavy:
            found = await unit_collectors(self.ledger, unit_id=unit_id, plant_id=plant_id)
        if not found:
            raise NotFound(f"no configuration in this ledger has an accounting unit {unit_id!r} of "
                           f"plant {plant_id}")
        return sorted(found)

    async def methodology(self, methodology_id: str) -> MethodologyFile:
        """A bundled methodology file, as shipped, with its digest."""
        if not _METHODOLOGY_ID.fullmatch(methodology_id):
            raise BadRequest(f"methodology_id {methodology_id[:80]!r} is not a methodology name "
                             "(lowercase letters, digits and '-', e.g. cn-mee-2022)")
        found = self._methodologies.get(methodology_id)
        if found is None:
            found = await asyncio.to_thread(_read_methodology, methodology_id)
            self._methodologies[methodology_id] = found
        return found


# --- HTTP: parsing and routing (pure) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A parsed request line and headers (names lowercased)."""

    method: str
    path: str
    query: str
    version: str
    headers: Mapping[str, str]

    @property
    def keep_alive(self) -> bool:
        """Whether the connection stays open after the answer (HTTP/1.1 unless it says close)."""
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.1":
            return "close" not in tokens
        return "keep-alive" in tokens

    def content_length(self) -> int:
        """Bytes of body that follow the head (BadRequest for a body this API does not take)."""
        if "transfer-encoding" in self.headers:
            raise BadRequest("a request body with Transfer-Encoding is not accepted: this API "
                             "takes no request bodies")
        text = self.headers.get("content-length", "0").strip()
        # isdigit() alone takes other digits (latin-1's superscripts) that int() refuses
        if not (text.isascii() and text.isdigit()) or len(text) > 10:
            raise BadRequest("Content-Length is not a number")
        length = int(text)
        if length > MAX_BODY_BYTES:
            raise BadRequest("the request body is too large: this API takes no request bodies")
        return length


_SINGLE_HEADERS = frozenset({"authorization", "content-length", "host", "transfer-encoding"})


def parse_request_head(data: bytes) -> RequestHead:
    """The request line and headers of an HTTP/1.x request head (ending in a blank line);
    BadRequest for anything malformed."""
    try:
        text = data.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes every byte
        raise BadRequest("the request head is not text") from exc
    lines = text.removesuffix("\r\n\r\n").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:  # method, target, version
        raise BadRequest("the request line is not METHOD TARGET HTTP/1.1")
    method, target, version = parts
    if not _TOKEN_CHARS.fullmatch(method):
        raise BadRequest("the request method is not a token")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest(f"{version[:20]!r} is not HTTP/1.0 or HTTP/1.1")
    if not target.startswith("/") or any(c <= " " or c >= "\x7f" for c in target):
        raise BadRequest("the request target must be a path such as /v1/log")
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest(f"more than {MAX_HEADERS} headers")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN_CHARS.fullmatch(name):
            raise BadRequest("a header line is not NAME: VALUE")
        name = name.lower()
        value = value.strip(" \t")
        if any(c < " " and c != "\t" for c in value):
            raise BadRequest(f"header {name} holds a control character")
        if name in headers:
            if name in _SINGLE_HEADERS:
                raise BadRequest(f"header {name} is given twice")
            headers[name] += ", " + value
        else:
            headers[name] = value
    path, _, query = target.partition("?")
    return RequestHead(method, path, query, version, headers)


class Route(enum.Enum):
    """What a request asks for."""

    LOG = "log"
    CHECKPOINT = "checkpoint"
    PUBLISH = "publish"
    COLLECTORS = "collectors"
    BLOCKS = "blocks"
    PROOFS = "proofs"
    INCLUSION = "inclusion"
    CONSISTENCY = "consistency"
    REPORT = "report"
    UNIT_COLLECTORS = "unit_collectors"
    METHODOLOGY = "methodology"


_ANY = "{}"
_ROUTES: tuple[tuple[tuple[str, ...], dict[str, Route]], ...] = (
    (("v1", "log"), {"GET": Route.LOG}),
    (("v1", "checkpoint"), {"GET": Route.CHECKPOINT, "POST": Route.PUBLISH}),
    (("v1", "collectors"), {"GET": Route.COLLECTORS}),
    (("v1", "collectors", _ANY, "blocks"), {"GET": Route.BLOCKS}),
    (("v1", "collectors", _ANY, "proofs"), {"GET": Route.PROOFS}),
    (("v1", "proofs", "inclusion"), {"GET": Route.INCLUSION}),
    (("v1", "proofs", "consistency"), {"GET": Route.CONSISTENCY}),
    (("v1", "plants", _ANY, "units", _ANY, "report"), {"GET": Route.REPORT}),
    (("v1", "plants", _ANY, "units", _ANY, "collectors"), {"GET": Route.UNIT_COLLECTORS}),
    (("v1", "methodologies", _ANY), {"GET": Route.METHODOLOGY}),
)


def route(method: str, path: str) -> tuple[Route, tuple[str, ...]]:
    """The route of a method and path, and the path's parameters (percent-decoded);
    NotFound, MethodNotAllowed, or BadRequest for a path that does not decode."""
    raw = path.split("/")
    if raw[0] != "":
        raise NotFound("no such path: see docs/verifier-api.md for the API's paths")
    try:
        segments = [unquote(s, errors="strict") for s in raw[1:]]
    except UnicodeDecodeError as exc:
        raise BadRequest("the path's percent-escapes are not UTF-8") from exc
    for pattern, methods in _ROUTES:
        if len(pattern) != len(segments):
            continue
        if all(p in (_ANY, s) for p, s in zip(pattern, segments, strict=True)):
            if any(not s for p, s in zip(pattern, segments, strict=True) if p == _ANY):
                continue
            if method not in methods:
                raise MethodNotAllowed(f"{path} answers {', '.join(sorted(methods))}, not {method}",
                                       allow=methods)
            return methods[method], tuple(s for p, s in zip(pattern, segments, strict=True)
                                          if p == _ANY)
    raise NotFound("no such path: see docs/verifier-api.md for the API's paths")


def parse_query(query: str, allowed: Collection[str]) -> dict[str, str]:
    """The query's parameters; BadRequest naming one that is unknown, repeated or malformed."""
    if not query:
        return {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True,
                          max_num_fields=MAX_QUERY_FIELDS, errors="strict")
    except ValueError as exc:  # UnicodeDecodeError is one
        raise BadRequest(f"the query string does not parse ({str(exc)[:80]}): write "
                         "name=value&name=value") from exc
    found: dict[str, str] = {}
    for name, value in pairs:
        if name not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise BadRequest(f"unknown parameter {name[:40]!r} (this path takes: {known})")
        if name in found:
            raise BadRequest(f"parameter {name} is given twice")
        found[name] = value
    return found


def _int_param(params: Mapping[str, str], name: str, *, required: bool = False) -> int | None:
    text = params.get(name)
    if text is None:
        if required:
            raise BadRequest(f"parameter {name} is required")
        return None
    if not _INTEGER.fullmatch(text):
        raise BadRequest(f"parameter {name} {text[:40]!r} is not a whole number")
    value = int(text)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise BadRequest(f"parameter {name} {text} is outside a 64-bit integer")
    return value


def _kind_param(params: Mapping[str, str]) -> int | None:
    text = params.get("kind")
    if text is None:
        return None
    if text not in BLOCK_KINDS:
        raise BadRequest(f"parameter kind {text[:40]!r} is not a kind of block: give "
                         f"{' or '.join(BLOCK_KINDS)} (or leave it out, for every block)")
    return BLOCK_KINDS[text]


def _required_int(params: Mapping[str, str], name: str) -> int:
    value = _int_param(params, name, required=True)
    assert value is not None
    return value


def parse_date(name: str, text: str) -> date:
    """A YYYY-MM-DD parameter; BadRequest naming it otherwise."""
    problem = f"parameter {name} {text[:40]!r} is not a date: write YYYY-MM-DD"
    if not _DATE.fullmatch(text):
        raise BadRequest(problem)
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise BadRequest(problem) from exc


def _date_param(params: Mapping[str, str], name: str) -> date:
    text = params.get(name)
    if text is None:
        raise BadRequest(f"parameter {name} is required (YYYY-MM-DD)")
    return parse_date(name, text)


def _ndjson(items: list[dict[str, object]]) -> bytes:
    return b"".join(json.dumps(item, separators=(",", ":")).encode("ascii") + b"\n"
                    for item in items)


def _json(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode("ascii")


# --- HTTP: the server ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Answer:
    """A whole answer (`body`), or a stream of chunks (`chunks`)."""

    status: int
    content_type: str
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    chunks: AsyncGenerator[bytes, None] | None = None


_Handler = Callable[[TokenScope, tuple[str, ...], Mapping[str, str]], Awaitable[_Answer]]

_PARAMETERS: dict[Route, tuple[str, ...]] = {
    Route.LOG: (), Route.PUBLISH: (), Route.COLLECTORS: (), Route.UNIT_COLLECTORS: (),
    Route.METHODOLOGY: (),
    Route.CHECKPOINT: ("tree_size",),
    Route.BLOCKS: ("from_sequence", "to_sequence", "from_unix_ms", "to_unix_ms", "kind"),
    Route.PROOFS: ("from_sequence", "to_sequence", "tree_size"),
    Route.INCLUSION: ("collector_id", "sequence", "tree_size"),
    Route.CONSISTENCY: ("old_size", "new_size"),
    Route.REPORT: ("from", "to"),
}


def _error_answer(error: ApiError) -> _Answer:
    headers: tuple[tuple[str, str], ...] = ()
    if isinstance(error, Unauthenticated):
        headers = (("WWW-Authenticate", 'Bearer realm="stackline"'),)
    elif isinstance(error, MethodNotAllowed):
        headers = (("Allow", ", ".join(error.allow)),)
    return _Answer(error.status, "application/json",
                   _json({"error": error.code, "detail": error.detail}), headers)


async def _chunks(pages: AsyncIterator[list[Any]]) -> AsyncGenerator[bytes, None]:
    try:
        async for page in pages:
            yield _ndjson([item.as_json() for item in page])
    finally:  # a stream cut short: let the ledger pages go now, not when collected
        close = getattr(pages, "aclose", None)
        if close is not None:
            await close()


class VerifierHttpServer:
    """Serves the verifier API over HTTP/1.1 on host:port."""

    def __init__(self, *, service: VerifierService, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.service = service
        self.host = host or "127.0.0.1"
        self.requested_port = int(port)
        self.port = 0
        self.connections = 0
        self._peers: Counter[str] = Counter()  # open connections by peer address
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._handlers: dict[Route, _Handler] = {
            Route.LOG: self._log, Route.CHECKPOINT: self._checkpoint,
            Route.PUBLISH: self._publish, Route.COLLECTORS: self._collectors,
            Route.BLOCKS: self._blocks, Route.PROOFS: self._proofs,
            Route.INCLUSION: self._inclusion, Route.CONSISTENCY: self._consistency,
            Route.REPORT: self._report, Route.UNIT_COLLECTORS: self._unit_collectors,
            Route.METHODOLOGY: self._methodology}

    def __repr__(self) -> str:
        return f"VerifierHttpServer({self.host}:{self.port}, connections={self.connections})"

    async def start(self) -> int:
        """Bind and serve; return the bound port (useful with port 0)."""
        try:
            self._server = await asyncio.start_server(self._accept, self.host,
                                                      self.requested_port, limit=MAX_HEAD_BYTES)
        except OSError as exc:
            raise GatewayError(f"cannot listen for the verifier API on {self.host}:"
                               f"{self.requested_port} ({exc.strerror}): change "
                               "verifier_api.listen or stop what holds the port") from exc
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("verifier API on http://%s:%d (%d token(s))", self.host, self.port,
                 len(self.service.tokens))
        return self.port

    async def stop(self) -> None:
        """Stop listening and end every open connection."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._server.wait_closed()
        self._server = None

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # each connection in a task of ours (not asyncio's own), so that stop() can cancel and
        # await them all
        task = asyncio.create_task(self._connection(reader, writer), name="verifier-api-connection")
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("verifier API: a connection failed: %r", task.exception())

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        host = str(peername[0]) if isinstance(peername, tuple) else str(peername)
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
        self.connections += 1
        self._peers[host] += 1
        try:
            error = self._over_limit(host)
            if error is not None:
                self.service.refused(transport="http", error=error, peer=peer, scope=None,
                                     what="a connection")
                await self._send(writer, _error_answer(error), keep_alive=False)
                await self._linger(reader, writer)
                return
            # the first request must arrive by this deadline; it ends the connection unless it
            # authenticates, so a client without a token holds a connection for seconds only
            first: float | None = asyncio.get_running_loop().time() + AUTH_TIMEOUT_S
            while await self._one_request(reader, writer, peer, first_deadline=first):
                first = None
        except (ConnectionError, TimeoutError):
            pass
        finally:
            self.connections -= 1
            self._peers[host] -= 1
            if self._peers[host] <= 0:
                del self._peers[host]
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError, OSError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    @staticmethod
    async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """End the answer (FIN), then drop what the client sends until it closes, for LINGER_S
        and MAX_HEAD_BYTES at most: closing with its request unread would reset the connection,
        and a client may lose the answer to the reset."""
        if writer.can_write_eof():
            writer.write_eof()
        left = MAX_HEAD_BYTES
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LINGER_S):
                while left > 0 and (data := await reader.read(left)):
                    left -= len(data)

    def _over_limit(self, host: str) -> Unavailable | None:
        """The refusal of a connection beyond the limits (this one counted), or None."""
        if self.connections > MAX_CONNECTIONS:
            return Unavailable(f"the verifier API serves {MAX_CONNECTIONS} connections at once: "
                               "try again shortly")
        if self._peers[host] > MAX_CONNECTIONS_PER_PEER:
            return Unavailable(f"the verifier API serves {MAX_CONNECTIONS_PER_PEER} connections "
                               "at once from one address: close one, or try again shortly")
        return None

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           peer: str, *, first_deadline: float | None) -> bool:
        """Read and answer one request; whether the connection stays open for another (only
        after an authenticated request). `first_deadline` (loop time) bounds the reading of a
        connection's first request."""
        loop = asyncio.get_running_loop()

        def deadline() -> float:
            later = loop.time() + IDLE_TIMEOUT_S
            return later if first_deadline is None else min(first_deadline, later)
        try:
            async with asyncio.timeout_at(deadline()):
                data = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # the client closed the connection
        except asyncio.LimitOverrunError:
            await self._refuse(writer, BadRequest(f"the request head is over {MAX_HEAD_BYTES} "
                                                  "bytes"), peer, "an oversized request head")
            return False
        try:
            request = parse_request_head(data)
            length = request.content_length()
        except BadRequest as exc:
            await self._refuse(writer, exc, peer, "a malformed request")
            return False
        except ValueError as exc:  # a parser bug: still this request's answer, not the server's
            await self._refuse(writer, BadRequest(f"the request head does not parse: "
                                                  f"{str(exc)[:80]}"), peer, "a malformed request")
            return False
        if length:
            try:
                async with asyncio.timeout_at(deadline()):
                    await reader.readexactly(length)  # this API takes no bodies: read and drop it
            except asyncio.IncompleteReadError:
                return False  # the client closed the connection part way through the body
        started = time.monotonic()
        answer, scope = await self._answer(request, peer)
        # an HTTP/1.0 client knows no chunked encoding: its stream ends when the connection does
        chunked = request.version == "HTTP/1.1"
        # a request that did not authenticate ends its connection (with Connection: close)
        keep_alive = (scope is not None and request.keep_alive
                      and (chunked or answer.chunks is None))
        await self._send(writer, answer, keep_alive=keep_alive, chunked=chunked)
        log.debug("verifier API: %s %s from %s: %d in %.3f s", request.method, request.path[:200],
                  peer, answer.status, time.monotonic() - started)
        return keep_alive

    async def _refuse(self, writer: asyncio.StreamWriter, error: ApiError, peer: str,
                      what: str) -> None:
        self.service.refused(transport="http", error=error, peer=peer, scope=None, what=what)
        await self._send(writer, _error_answer(error), keep_alive=False)

    async def _answer(self, request: RequestHead, peer: str) -> tuple[_Answer, TokenScope | None]:
        """The answer, and the token's scope (None: the request did not authenticate)."""
        scope: TokenScope | None = None
        try:
            scope = self.service.authenticate(request.headers.get("authorization"))
            which, args = route(request.method, request.path)
            return await self._dispatch(scope, which, args, request.query), scope
        except ApiError as exc:
            error = exc
        except LedgerError:
            log.exception("verifier API: the ledger failed answering %s %s", request.method,
                          request.path[:200])
            error = Unavailable("the gateway's ledger failed; try again later")
        except Exception:  # a bug must cost one request its answer, never the server
            log.exception("verifier API: failed answering %s %s", request.method,
                          request.path[:200])
            error = ApiError("the gateway failed answering this request; tell its operator")
        self.service.refused(transport="http", error=error, peer=peer, scope=scope,
                             what=f"{request.method} {request.path}")
        return _error_answer(error), scope

    async def _dispatch(self, scope: TokenScope, which: Route, args: tuple[str, ...],
                        query: str) -> _Answer:
        params = parse_query(query, _PARAMETERS[which])
        return await self._handlers[which](scope, args, params)

    async def _log(self, scope: TokenScope, args: tuple[str, ...],
                   params: Mapping[str, str]) -> _Answer:
        return _Answer(200, "application/json", _json((await self.service.log_state()).as_json()))

    async def _checkpoint(self, scope: TokenScope, args: tuple[str, ...],
                          params: Mapping[str, str]) -> _Answer:
        found = await self.service.checkpoint(_int_param(params, "tree_size"))
        return _Answer(200, "application/json", _json(found.as_json()))

    async def _publish(self, scope: TokenScope, args: tuple[str, ...],
                       params: Mapping[str, str]) -> _Answer:
        found = await self.service.publish()
        return _Answer(200, "application/json", _json(found.as_json()))

    async def _collectors(self, scope: TokenScope, args: tuple[str, ...],
                          params: Mapping[str, str]) -> _Answer:
        entries = await self.service.collectors(scope)
        return _Answer(200, "application/json",
                       _json({"collectors": [e.as_json() for e in entries]}))

    async def _blocks(self, scope: TokenScope, args: tuple[str, ...],
                      params: Mapping[str, str]) -> _Answer:
        blocks = await self.service.open_blocks(scope, args[0], BlockQuery(
            _int_param(params, "from_sequence"), _int_param(params, "to_sequence"),
            _int_param(params, "from_unix_ms"), _int_param(params, "to_unix_ms"),
            _kind_param(params)))
        return _Answer(200, "application/x-ndjson", chunks=_chunks(blocks))

    async def _proofs(self, scope: TokenScope, args: tuple[str, ...],
                      params: Mapping[str, str]) -> _Answer:
        proofs = await self.service.open_proofs(
            scope, args[0], from_sequence=_int_param(params, "from_sequence"),
            to_sequence=_int_param(params, "to_sequence"),
            tree_size=_required_int(params, "tree_size"))
        return _Answer(200, "application/x-ndjson", chunks=_chunks(proofs))

    async def _inclusion(self, scope: TokenScope, args: tuple[str, ...],
                         params: Mapping[str, str]) -> _Answer:
        if "collector_id" not in params:
            raise BadRequest("parameter collector_id is required")
        proof = await self.service.inclusion(scope, params["collector_id"],
                                             _required_int(params, "sequence"),
                                             _required_int(params, "tree_size"))
        return _Answer(200, "application/json", _json(proof.as_json()))

    async def _consistency(self, scope: TokenScope, args: tuple[str, ...],
                           params: Mapping[str, str]) -> _Answer:
        old_size, new_size = _required_int(params, "old_size"), _required_int(params, "new_size")
        hashes = await self.service.consistency(old_size, new_size)
        return _Answer(200, "application/json", _json(
            {"old_size": old_size, "new_size": new_size, "hashes": [b64text(h) for h in hashes]}))

    async def _report(self, scope: TokenScope, args: tuple[str, ...],
                      params: Mapping[str, str]) -> _Answer:
        report = await self.service.report(scope, args[0], args[1], _date_param(params, "from"),
                                           _date_param(params, "to"))
        return _Answer(200, "application/json", report.body, (
            ("Stackline-Report-Signature", b64text(report.signature)),
            ("Stackline-Log-Key", report.log_key)))

    async def _unit_collectors(self, scope: TokenScope, args: tuple[str, ...],
                               params: Mapping[str, str]) -> _Answer:
        collectors = await self.service.unit_collectors(scope, args[0], args[1])
        return _Answer(200, "application/json", _json({"collectors": collectors}))

    async def _methodology(self, scope: TokenScope, args: tuple[str, ...],
                           params: Mapping[str, str]) -> _Answer:
        found = await self.service.methodology(args[0])
        return _Answer(200, "text/yaml; charset=utf-8", found.data,
                       (("Stackline-Methodology-Digest", found.digest),))

    async def _send(self, writer: asyncio.StreamWriter, answer: _Answer, *,
                    keep_alive: bool, chunked: bool = True) -> None:
        """Write an answer: a body with its length, or the chunks of a stream. A stream that
        fails part way is cut without its last chunk, so the client sees it was cut."""
        head = [f"HTTP/1.1 {answer.status} {http.HTTPStatus(answer.status).phrase}",
                f"Content-Type: {answer.content_type}", "Cache-Control: no-store"]
        head += [f"{name}: {value}" for name, value in answer.headers]
        if answer.chunks is None:
            head.append(f"Content-Length: {len(answer.body)}")
        elif chunked:
            head.append("Transfer-Encoding: chunked")
        head.append("Connection: keep-alive" if keep_alive else "Connection: close")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        if answer.chunks is None:
            writer.write(answer.body)
            await self._drain(writer)
            return
        try:
            async with contextlib.aclosing(answer.chunks) as chunks:
                async for chunk in chunks:
                    if chunk:  # an empty chunk would end the stream
                        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                        await self._drain(writer)
        except (ConnectionError, TimeoutError):
            raise  # the client went away or stopped reading
        except Exception as exc:  # the ledger, a damaged block, or a bug: the stream is cut
            log.exception("verifier API: a stream failed part way; cut it")
            writer.transport.abort()
            raise ConnectionAbortedError from exc
        if chunked:
            writer.write(b"0\r\n\r\n")
            await self._drain(writer)

    @staticmethod
    async def _drain(writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await writer.drain()
