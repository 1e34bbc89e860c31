"""Re-check the transparency log stored in a ledger against the blocks it is made of.

Trusts nothing the log tables say: every leaf hash is recomputed from its block's payload, every
stored interior node from the two stored nodes below it (level by level, streaming, so memory
stays flat whatever the size), and every published checkpoint's root from the checked nodes; each
checkpoint's signature is verified with the log's recorded verifier key. Part of
`stackline verify --ledger`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from gateway.ledger.base import Ledger
from gateway.translog.checkpoint import CheckpointError, parse_checkpoint, parse_verifier_key
from gateway.translog.merkle import leaf_hash, node_hash

__all__ = ["LogAudit", "LogFinding", "audit_log"]

_T = TypeVar("_T")
_CHECKPOINT_PAGE = 1000


@dataclass(frozen=True, slots=True)
class LogFinding:
    """One problem with the stored log."""

    problem: str
    detail: str


@dataclass(slots=True)
class LogAudit:
    """What the audit looked at, and what it found."""

    size: int = 0
    nodes_checked: int = 0
    checkpoints_checked: int = 0
    blocks_not_yet_logged: int = 0
    verifier_key: str | None = None
    findings: list[LogFinding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the log matches its blocks and its checkpoints."""
        return not self.findings

    def to_json(self) -> dict[str, object]:
        """The machine-readable summary."""
        return {"ok": self.ok, "size": self.size, "nodes_checked": self.nodes_checked,
                "checkpoints_checked": self.checkpoints_checked,
                "blocks_not_yet_logged": self.blocks_not_yet_logged,
                "verifier_key": self.verifier_key,
                "findings": [{"problem": f.problem, "detail": f.detail} for f in self.findings]}


async def _next(iterator: AsyncIterator[_T]) -> _T | None:
    try:
        return await anext(iterator)
    except StopAsyncIteration:
        return None


async def audit_log(ledger: Ledger, *, max_findings: int = 100) -> LogAudit:
    """Check the ledger's log (see the module docstring)."""
    audit = LogAudit(size=await ledger.log_tree().size())
    audit.verifier_key = await ledger.log_recorded_key()

    def find(problem: str, detail: str) -> None:
        if len(audit.findings) < max_findings:
            audit.findings.append(LogFinding(problem, detail))

    # level 0: the leaves, against their blocks
    stored = ledger.iter_log_nodes(0)
    expected = 0
    async for index, collector_id, sequence, payload in ledger.iter_log_leaves():
        node = await _next(stored)
        if index != expected:
            find("leaf_missing", f"leaves {expected}..{index - 1} are not recorded")
            return audit
        expected += 1
        if not payload:
            find("leaf_without_block", f"leaf {index} names {collector_id} #{sequence}, which is "
                                       "not in the ledger")
            continue
        if node is None or node[0] != index:
            find("node_missing", f"the hash of leaf {index} is not stored")
            return audit
        if node[1] != leaf_hash(payload):
            find("leaf_hash_mismatch", f"leaf {index} ({collector_id} #{sequence}): the stored hash "
                                       "is not SHA-256(0x00 || payload)")
        audit.nodes_checked += 1
    if expected != audit.size:
        find("size_mismatch", f"the log says {audit.size} leaves, {expected} are recorded")
        return audit
    # levels above: each stored node from the two below it
    level = 1
    while audit.size >> level:
        below = ledger.iter_log_nodes(level - 1)
        count = 0
        async for index, value in ledger.iter_log_nodes(level):
            left, right = await _next(below), await _next(below)
            if left is None or right is None or (left[0], right[0]) != (2 * index, 2 * index + 1):
                find("node_missing", f"the children of node (level {level}, index {index}) are "
                                     "not stored")
                return audit
            if value != node_hash(left[1], right[1]):
                find("node_hash_mismatch", f"node (level {level}, index {index}) is not the hash of "
                                           "its two children")
            count += 1
        if count != audit.size >> level:
            find("node_missing", f"level {level} holds {count} nodes, a tree of {audit.size} "
                                 f"leaves has {audit.size >> level}")
            return audit
        audit.nodes_checked += count
        level += 1
    await _check_checkpoints(ledger, audit, find)
    summary = await ledger.summary()
    audit.blocks_not_yet_logged = max(0, summary.blocks - audit.size)
    for collector_id, sequence in await ledger.log_unqueued_blocks():
        find("block_not_logged", f"{collector_id} #{sequence} is stored but neither in the log nor "
                                 "waiting for it: it will never have an inclusion proof")
    return audit


async def _check_checkpoints(ledger: Ledger, audit: LogAudit,
                             find: Callable[[str, str], None]) -> None:
    name: str | None = None
    public_key = b""
    if audit.verifier_key is not None:
        try:
            name, public_key = parse_verifier_key(audit.verifier_key)
        except CheckpointError as exc:
            find("bad_verifier_key", f"the recorded verifier key does not parse: {exc}")
    tree = ledger.log_tree()
    before: int | None = None
    while True:
        page = await ledger.checkpoints(limit=_CHECKPOINT_PAGE, before_size=before)
        for checkpoint in page:
            audit.checkpoints_checked += 1
            size = checkpoint.tree_size
            if size > audit.size:
                find("checkpoint_past_log", f"checkpoint of size {size} is past the log's "
                                            f"{audit.size} leaves")
                continue
            if await tree.root(size) != checkpoint.root_hash:
                find("checkpoint_root_mismatch", f"checkpoint of size {size}: its root is not the "
                                                 f"root of the first {size} leaves")
            if name is None:
                find("checkpoint_unverifiable", f"checkpoint of size {size}: no verifier key is "
                                                "recorded to check its signature")
                continue
            try:
                parsed = parse_checkpoint(checkpoint.note, name=name, public_key=public_key)
            except CheckpointError as exc:
                find("checkpoint_signature", f"checkpoint of size {size}: {exc}")
                continue
            if (parsed.size, parsed.root_hash) != (size, checkpoint.root_hash):
                find("checkpoint_note_mismatch", f"checkpoint of size {size}: its signed note says "
                                                 f"size {parsed.size}, root "
                                                 f"{parsed.root_hash.hex()[:16]}")
        if len(page) < _CHECKPOINT_PAGE:
            return
        before = page[-1].tree_size
