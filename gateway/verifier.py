"""`stackline verify`: re-check every stored block's hash, signature and chain link.

The audit itself (`ChainAudit`) is pure: it is fed stored rows in (collector, sequence) order
and the enrolled keys, and trusts nothing else the ledger says (hashes are recomputed from the
payload bytes, links are checked against the recomputed hashes).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final

from gateway.errors import LedgerError
from gateway.ledger.base import CollectorKey, CollectorOverview, Ledger, StoredRow
from gateway.signature_checks import RowCheck, RowChecker, RowToCheck, check_rows, verifiers_of
from gateway.translog.audit import LogAudit, audit_log
from proto.errors import VerificationError
from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import GENESIS_HASH, decode_block

__all__ = ["ChainAudit", "CollectorAudit", "Finding", "VerifyReport", "render_text", "verify_ledger"]

SIGNATURE_CHUNK = 256
"""Rows whose signatures one worker checks at a time."""
SIGNATURE_CHUNKS_AHEAD = 8
"""Chunks being checked ahead of the chain walk (bounds the rows held in memory)."""


class Unchecked(Enum):
    """The signature verdict `ChainAudit.feed` computes itself."""

    UNCHECKED = "unchecked"


UNCHECKED: Final = Unchecked.UNCHECKED


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem, located."""

    collector_id: str
    sequence: int
    problem: str
    detail: str


@dataclass(slots=True)
class CollectorAudit:
    """Per-collector totals."""

    blocks: int = 0
    readings: int = 0
    first_sequence: int = 0
    last_sequence: int = 0
    gaps: int = 0
    missing_blocks: int = 0
    bad_signatures: int = 0
    broken_links: int = 0


@dataclass(slots=True)
class VerifyReport:
    """Everything `stackline verify` prints."""

    collectors: dict[str, CollectorAudit] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    quarantined: int = 0
    log: LogAudit | None = None  # None: not audited (one collector asked for, or no log tables)

    def total(self, name: str) -> int:
        """Sum of one per-collector counter."""
        return sum(int(getattr(audit, name)) for audit in self.collectors.values())

    @property
    def ok(self) -> bool:
        """True when nothing is wrong with the stored chains and the transparency log."""
        return not self.findings and (self.log is None or self.log.ok)

    def to_json(self) -> dict[str, Any]:
        """The machine-readable summary."""
        return {
            "ok": self.ok,
            "blocks": self.total("blocks"),
            "readings": self.total("readings"),
            "collectors": len(self.collectors),
            "gaps": self.total("gaps"),
            "missing_blocks": self.total("missing_blocks"),
            "bad_signatures": self.total("bad_signatures"),
            "broken_links": self.total("broken_links"),
            "quarantined": self.quarantined,
            "per_collector": {
                cid: {"blocks": a.blocks, "readings": a.readings,
                      "first_sequence": a.first_sequence, "last_sequence": a.last_sequence,
                      "gaps": a.gaps, "bad_signatures": a.bad_signatures,
                      "broken_links": a.broken_links}
                for cid, a in sorted(self.collectors.items())
            },
            "findings": [
                {"collector_id": f.collector_id, "sequence": f.sequence, "problem": f.problem,
                 "detail": f.detail} for f in self.findings
            ],
            "warnings": [
                {"collector_id": f.collector_id, "sequence": f.sequence, "problem": f.problem,
                 "detail": f.detail} for f in self.warnings
            ],
            "log": None if self.log is None else self.log.to_json(),
        }


class ChainAudit:
    """Feeds on stored rows, collector by collector in sequence order, and builds a report."""

    def __init__(self, *, keys: dict[str, CollectorKey]) -> None:
        self.report = VerifyReport()
        self.keys: dict[tuple[str, str], bytes] = {
            (key.collector_id, key.key_id): key.public_key for key in keys.values()}
        self._verifiers = verifiers_of(self.keys)
        self._collector = ""
        self._expected = 1
        self._previous_hash = GENESIS_HASH
        self._announced: set[bytes] = set()

    def __repr__(self) -> str:
        return f"ChainAudit(collectors={len(self.report.collectors)})"

    def _find(self, row: StoredRow, problem: str, detail: str) -> None:
        self.report.findings.append(Finding(row.collector_id, row.sequence, problem, detail))

    def feed(self, row: StoredRow, *, checked: RowCheck | Unchecked = UNCHECKED) -> None:
        """Check one stored block against its key and the block before it (its signature and
        hash too, unless `checked` brings what `check_rows` found of it)."""
        if row.collector_id != self._collector:
            self._collector = row.collector_id
            self._expected = 1
            self._previous_hash = GENESIS_HASH
            self._announced = set()
        audit = self.report.collectors.setdefault(row.collector_id, CollectorAudit())
        audit.blocks += 1
        if audit.first_sequence == 0:
            audit.first_sequence = row.sequence
        audit.last_sequence = row.sequence
        if isinstance(checked, Unchecked):
            checked = check_rows(self._verifiers, [_to_check(row)])[0]
        signature_problem, actual_hash = checked.signature_problem, checked.payload_hash
        signature_ok = signature_problem is None
        if signature_problem is not None:
            audit.bad_signatures += 1
            self._find(row, "bad_signature", signature_problem)
        if signature_ok and actual_hash != row.hash:
            self._find(row, "hash_mismatch",
                       "the stored hash column does not match SHA-256 of the payload")
        if row.sequence > self._expected:
            audit.gaps += 1
            audit.missing_blocks += row.sequence - self._expected
            self._find(row, "gap", f"blocks {self._expected}..{row.sequence - 1} are missing")
        try:
            block = decode_block(row.payload)
        except VerificationError as exc:
            if signature_ok:
                self._find(row, "malformed_block", exc.detail)
            block = None
        if block is not None:
            audit.readings += len(block.readings)
            self._check_config(row, block)
            if block.sequence != row.sequence or block.collector_id != row.collector_id:
                audit.broken_links += 1
                self._find(row, "mislabelled",
                           f"payload says collector {block.collector_id!r} sequence "
                           f"{block.sequence}")
            elif row.sequence == self._expected and block.previous_hash != self._previous_hash:
                audit.broken_links += 1
                what = ("32 zero bytes" if row.sequence == 1
                        else f"the hash of block {row.sequence - 1}")
                self._find(row, "broken_link",
                           f"previous_hash {block.previous_hash.hex()[:16]} is not {what} "
                           f"({self._previous_hash.hex()[:16]})")
        self._expected = row.sequence + 1
        self._previous_hash = actual_hash

    def _check_config(self, row: StoredRow, block: pb.Block) -> None:
        """A configuration block must carry the document its digest names; readings should only
        follow a configuration the chain has recorded (a scaling change is then visible)."""
        if block.kind == pb.BLOCK_KIND_CONFIG:
            if hashlib.sha256(block.config_document).digest() != block.config_digest:
                self._find(row, "config_digest_mismatch",
                           "config_digest is not SHA-256 of the configuration document it carries")
            else:
                self._announced.add(bytes(block.config_digest))
        elif block.config_digest not in self._announced:
            self._announced.add(bytes(block.config_digest))  # warn once per configuration
            self.report.warnings.append(Finding(
                row.collector_id, row.sequence, "unannounced_config",
                f"readings under configuration {block.config_digest.hex()[:16]}, which no "
                "earlier block of this chain records"))

    def check_heads(self, overview: dict[str, CollectorOverview]) -> None:
        """Blocks removed from the end of a chain (or a whole chain) leave no gap to see: compare
        what is stored with each collector's recorded chain head."""
        for collector_id, entry in sorted(overview.items()):
            audit = self.report.collectors.get(collector_id)
            stored = audit.last_sequence if audit else 0
            if entry.sequence > stored:
                self.report.findings.append(Finding(
                    collector_id, stored + 1, "truncated",
                    f"the chain head is {entry.sequence} but the stored blocks end at {stored}"))


async def verify_ledger(ledger: Ledger, *, collector_id: str | None = None) -> VerifyReport:
    """Audit every chain in the ledger (or one collector's), and with the whole ledger its
    transparency log, the two at once: the chain walk waits on the signature workers and the
    log audit on the ledger, so each fills the other's idle time. When one of them fails, the
    other is stopped before the error goes on."""
    audit = ChainAudit(keys=await ledger.collector_keys())
    if collector_id is None:
        audit.report.log, missing_log = await _both(
            _feed_checking_signatures_aside(audit, ledger.iter_blocks(None)), _audit_log_if_any(ledger))
        if missing_log is not None:
            audit.report.warnings.append(missing_log)
    else:
        await _feed_checking_signatures_aside(audit, ledger.iter_blocks(collector_id))
    overview = await ledger.collectors_overview()
    if collector_id is not None:
        overview = {k: v for k, v in overview.items() if k == collector_id}
    audit.check_heads(overview)
    counts = await ledger.quarantine_counts()
    audit.report.quarantined = sum(counts.values())
    return audit.report


async def _both(walk: Coroutine[Any, Any, None],
                log_audit: Coroutine[Any, Any, tuple[LogAudit | None, Finding | None]]
                ) -> tuple[LogAudit | None, Finding | None]:
    """Run the chain walk and the log audit together; the first error cancels the other and is
    raised as it is (not wrapped in a group, so callers see the GatewayError they know)."""
    tasks = (asyncio.ensure_future(walk), asyncio.ensure_future(log_audit))
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return tasks[1].result()


async def _audit_log_if_any(ledger: Ledger) -> tuple[LogAudit | None, Finding | None]:
    """The log audit, or the warning that the ledger has no log (opened read-only from before
    the log existed)."""
    try:
        return await audit_log(ledger), None
    except LedgerError as exc:
        return None, Finding("", 0, "no_transparency_log", str(exc))


async def _feed_checking_signatures_aside(audit: ChainAudit, rows: AsyncIterator[StoredRow]) -> None:
    """Feed every row in order while the signatures and hashes of the next chunks are checked
    elsewhere (`RowChecker`: Ed25519 is most of the cost, and runs on every core this way). At
    most SIGNATURE_CHUNKS_AHEAD chunks are held in memory."""
    pending: deque[tuple[list[StoredRow], asyncio.Future[list[RowCheck]]]] = deque()

    async def feed_oldest() -> None:
        chunk, verdicts = pending.popleft()
        for row, checked in zip(chunk, await verdicts, strict=True):
            audit.feed(row, checked=checked)

    with RowChecker(audit.keys) as checker:
        chunk: list[StoredRow] = []
        async for row in rows:
            chunk.append(row)
            if len(chunk) == SIGNATURE_CHUNK:
                pending.append((chunk, checker.submit([_to_check(r) for r in chunk])))
                chunk = []
                if len(pending) > SIGNATURE_CHUNKS_AHEAD:
                    await feed_oldest()
        if chunk:
            pending.append((chunk, checker.submit([_to_check(r) for r in chunk])))
        while pending:
            await feed_oldest()


def _to_check(row: StoredRow) -> RowToCheck:
    return row.collector_id, row.key_id, row.payload, row.signature


def render_text(report: VerifyReport, *, max_findings: int = 50) -> str:
    """A table per collector, the findings, and a verdict line."""
    header = ("collector", "blocks", "sequences", "readings", "gaps", "bad sigs", "broken links")
    rows = [header]
    for cid, a in sorted(report.collectors.items()):
        rows.append((cid, str(a.blocks), f"{a.first_sequence}..{a.last_sequence}",
                     str(a.readings), str(a.gaps), str(a.bad_signatures), str(a.broken_links)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:],
                                                                        strict=True)]
        lines.append("  ".join(cells))
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    if not report.collectors:
        lines.append("(no blocks in the ledger)")
    lines.append("")
    for finding in report.findings[:max_findings]:
        lines.append(f"FAIL  {finding.collector_id} block {finding.sequence}: {finding.problem}: "
                     f"{finding.detail}")
    for warning in report.warnings[:max_findings]:
        lines.append(f"WARN  {warning.collector_id} block {warning.sequence}: {warning.problem}: "
                     f"{warning.detail}")
    if len(report.findings) > max_findings:
        lines.append(f"... and {len(report.findings) - max_findings} more (use --json for all)")
    if report.quarantined:
        lines.append(f"note  {report.quarantined} refused input(s) are kept in quarantine")
    log = report.log
    if log is not None:
        for log_finding in log.findings[:max_findings]:
            lines.append(f"FAIL  transparency log: {log_finding.problem}: {log_finding.detail}")
        lines.append(f"log   {log.size} leaves, {log.nodes_checked} nodes and "
                     f"{log.checkpoints_checked} checkpoint(s) checked against the blocks"
                     + (f"; {log.blocks_not_yet_logged} block(s) not yet in the log"
                        if log.blocks_not_yet_logged else ""))
    problems = len(report.findings) + (len(log.findings) if log is not None else 0)
    verdict = ("OK    every block's signature and chain link verified"
               + (", and the transparency log matches them" if log is not None else "")
               if report.ok else f"FAILED  {problems} problem(s) found")
    lines.append(verdict)
    return "\n".join(lines)
