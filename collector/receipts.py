"""Receipts from the gateway: its signed word that this collector's blocks are in its
transparency log, kept at the plant, checked, and watched for forks.

Now and then an ack carries a `Receipt`: a checkpoint of the gateway's log (a C2SP signed note:
origin, tree size, root), the collector's newest block in it (sequence and leaf index) with the
RFC 9162 audit path to the root, and, when the collector said it holds an older checkpoint, the
consistency proof from that one. The block's chain link commits it to every earlier block, so the
newest verified receipt proves that the gateway accepted the whole chain up to its sequence.

The log's rules (RFC 9162 hashing and proofs, C2SP signed notes and keys) are `proto.tlog`, the
same code the gateway builds its log with; its errors become `CheckpointInvalid` and
`ProofInvalid` here. What is the collector's own: the log key it is configured with (`LogKey`),
the bounds of what it takes from the gateway, and the rule that a checkpoint's origin is the log
key's name.

`judge_receipt` (pure) decides, in this order:

1. shape: sequence and leaf index in range, proofs of plausible length;
2. the checkpoint: signed by the configured log key (`collector.gateway_log_key`), its origin
   that key's name; without a key the note is only parsed, and the receipt stays unverified;
3. forks (signed checkpoints only): a checkpoint of a size this collector verified before with
   another root, or a consistency proof from a verified checkpoint that fails, proves that the
   gateway's log forked or rewrote its history: FORK;
4. inclusion of the collector's own leaf hash (kept by the buffer after the block left) at the
   leaf index under the checkpoint's root; a wrong audit path alone is REFUSED, not a fork;
5. trust: the first verified checkpoint, or one proved to extend the held checkpoint
   (`consistency_from_size` equal to the held size), becomes the held checkpoint. A signed,
   including checkpoint without such a proof (an answer to an older request, or an older
   checkpoint) is UNVERIFIED: kept, not trusted.

`ReceiptStore` is the shell: it keeps every receipt with its verdict, the held checkpoint and the
evidence of forks in the buffer's SQLite file, raises the alarm, counts, and prunes. The held
checkpoint's size is what the uplinks send as `receipt_tree_size`, and it is never replaced by a
forked one. Nothing a receipt holds can stop the collector or its data.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from collector.errors import (
    CheckpointInvalid,
    CollectorError,
    ProofInvalid,
    ReceiptError,
    ReceiptStoreUnavailable,
)
from proto.stackline.v1 import stackline_pb2 as pb
from proto.tlog import (
    HASH_SIZE,
    Checkpoint,
    CheckpointError,
    ProofError,
    key_id,
    parse_checkpoint,
    parse_verifier_key,
    read_checkpoint_unverified,
    verifier_key,
    verify_consistency,
    verify_inclusion,
)

__all__ = [
    "MAX_FORKS",
    "MAX_NOTE_BYTES",
    "MAX_PROOF_HASHES",
    "MAX_RECEIPTS",
    "MAX_TREE_SIZE",
    "Fork",
    "ForkRecord",
    "HeldCheckpoint",
    "LeafHashes",
    "LogKey",
    "ReceiptRecord",
    "ReceiptReport",
    "ReceiptStats",
    "ReceiptStatus",
    "ReceiptStore",
    "Verdict",
    "judge_receipt",
    "parse_log_key",
    "read_checkpoint",
    "read_receipts",
    "render_json",
    "render_table",
]

log = logging.getLogger(__name__)

MAX_RECEIPTS = 10_000
"""Receipts kept; older ones go, except the newest verified one (about a week at one checkpoint a
minute; the newest verified receipt is the one that proves the chain)."""
MAX_FORKS = 1_000
"""Forks kept as evidence; the first ones are kept, later ones are counted and logged."""
MAX_TREE_SIZE = 2**63 - 1
"""Largest tree size, leaf index or sequence the collector takes (what SQLite's integers hold)."""
MAX_PROOF_HASHES = 64
"""An audit path or consistency proof of any tree up to 2^64 leaves has fewer hashes than this."""
MAX_NOTE_BYTES = 16_384
"""Longest checkpoint note taken (room for dozens of witness signatures)."""


# --- the log key and checkpoints ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogKey:
    """The gateway log's checkpoint key, as a C2SP verifier key names it."""

    name: str
    public_key: bytes

    @property
    def key_id(self) -> bytes:
        """The 4-byte C2SP key id."""
        return key_id(self.name, self.public_key)

    @property
    def text(self) -> str:
        """The verifier key text, `<name>+<hex key id>+<base64(0x01 || key)>`."""
        return verifier_key(self.name, self.public_key)


def parse_log_key(text: str) -> LogKey:
    """A C2SP Ed25519 verifier key; ReceiptError saying what is wrong otherwise."""
    try:
        name, public_key = parse_verifier_key(text)
    except CheckpointError as exc:
        raise ReceiptError(f"{exc} (a log verifier key is <name>+<hex key id>+<base64 key>, as the "
                           "gateway logs it at start: 'checkpoints verify with ...')") from exc
    return LogKey(name, public_key)


def read_checkpoint(note: str, key: LogKey | None) -> Checkpoint:
    """The checkpoint of a note: signed by `key`, with `key`'s name as its origin; or, without a
    key, only parsed. CheckpointInvalid naming what is wrong otherwise."""
    if len(note) > MAX_NOTE_BYTES or len(note.encode()) > MAX_NOTE_BYTES:
        raise CheckpointInvalid(f"the note is longer than {MAX_NOTE_BYTES} bytes")
    try:
        checkpoint = (read_checkpoint_unverified(note) if key is None
                      else parse_checkpoint(note, name=key.name, public_key=key.public_key))
    except CheckpointError as exc:
        raise CheckpointInvalid(str(exc)) from exc
    if checkpoint.size > MAX_TREE_SIZE:
        raise CheckpointInvalid(f"the tree size {checkpoint.size} is out of range")
    if key is not None and checkpoint.origin != key.name:
        raise CheckpointInvalid(f"the checkpoint's origin {checkpoint.origin[:80]!r} is not the "
                                f"configured log {key.name!r}")
    return checkpoint


def _check_inclusion(receipt: pb.Receipt, leaf: bytes, checkpoint: Checkpoint) -> None:
    """ProofInvalid unless the receipt's audit path leads from `leaf` to the checkpoint's root."""
    try:
        verify_inclusion(leaf_hash=leaf, index=receipt.leaf_index, size=checkpoint.size,
                         proof=list(receipt.inclusion_path), root=checkpoint.root_hash)
    except ProofError as exc:
        raise ProofInvalid(str(exc)) from exc


def _check_extends(receipt: pb.Receipt, old: HeldCheckpoint, checkpoint: Checkpoint) -> None:
    """ProofInvalid unless the receipt's consistency proof shows `checkpoint` extends `old`."""
    try:
        verify_consistency(old_size=old.tree_size, new_size=checkpoint.size, old_root=old.root,
                           new_root=checkpoint.root_hash, proof=list(receipt.consistency_path))
    except ProofError as exc:
        raise ProofInvalid(str(exc)) from exc


# --- the verdict ----------------------------------------------------------------------------------


class ReceiptStatus(StrEnum):
    """What a receipt proved."""

    VERIFIED = "verified"
    """Signed by the configured log key, includes this collector's block, and is the first
    checkpoint held, the held one, or proved to extend it."""
    UNVERIFIED = "unverified"
    """Kept, not trusted: no log key configured, or no proof that it extends the held checkpoint."""
    REFUSED = "refused"
    """A check failed: signature, origin, shape, or the inclusion of this collector's block."""
    FORK = "fork"
    """Signed, and inconsistent with a checkpoint this collector verified before."""


@dataclass(frozen=True, slots=True)
class HeldCheckpoint:
    """A checkpoint this collector verified: the held one, or one on record."""

    tree_size: int
    root: bytes
    note: str
    sequence: int


@dataclass(frozen=True, slots=True)
class Fork:
    """Two signed checkpoints of one log that cannot both be true."""

    held: HeldCheckpoint
    other: Checkpoint
    other_note: str
    reason: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one receipt."""

    status: ReceiptStatus
    reason: str
    checkpoint: Checkpoint | None = None
    trust: bool = False
    """The receipt's checkpoint becomes the held one."""
    repeat: bool = False
    """The held (or a recorded) checkpoint and block again: nothing new to keep."""
    fork: Fork | None = None


def _refused(reason: str, checkpoint: Checkpoint | None = None) -> Verdict:
    return Verdict(ReceiptStatus.REFUSED, reason, checkpoint)


def judge_receipt(receipt: pb.Receipt, *, key: LogKey | None, held: HeldCheckpoint | None,
                  leaf_of: Callable[[int], bytes | None],
                  recorded: Callable[[int], HeldCheckpoint | None]) -> Verdict:
    """The verdict on a receipt (see the module's docstring for the order of the checks).

    `held` is the held checkpoint; `leaf_of(sequence)` the collector's leaf hash of a block, if
    kept; `recorded(size)` a checkpoint of that size verified under the same key, if on record.
    """
    sequence, index = receipt.sequence, receipt.leaf_index
    if not 0 < sequence <= MAX_TREE_SIZE:
        return _refused(f"names block {sequence}, not a sequence of a chain")
    if index > MAX_TREE_SIZE:
        return _refused(f"leaf index {index} is out of range")
    if len(receipt.inclusion_path) > MAX_PROOF_HASHES or len(receipt.consistency_path) > MAX_PROOF_HASHES:
        return _refused("a proof with more hashes than any tree needs")
    try:
        checkpoint = read_checkpoint(receipt.checkpoint, key)
    except CheckpointInvalid as exc:
        return _refused(f"checkpoint: {exc}")
    if key is not None:
        fork = _find_fork(receipt, checkpoint, held, recorded)
        if fork is not None:
            return Verdict(ReceiptStatus.FORK, fork.reason, checkpoint, fork=fork)
    leaf = leaf_of(sequence)
    if leaf is None:
        return _refused(f"no leaf hash kept for block {sequence} (pruned, or not a block of this "
                        "collector's chain)", checkpoint)
    try:
        _check_inclusion(receipt, leaf, checkpoint)
    except ProofInvalid as exc:
        return _refused(f"inclusion of block {sequence}: {exc}", checkpoint)
    if key is None:
        return Verdict(ReceiptStatus.UNVERIFIED, "signature not checked: no "
                       "collector.gateway_log_key configured", checkpoint)
    if held is None:
        return Verdict(ReceiptStatus.VERIFIED, "the first checkpoint held", checkpoint, trust=True)
    if checkpoint.size <= held.tree_size:
        # same size: the roots are equal, or _find_fork would have said so
        known = held if checkpoint.size == held.tree_size else recorded(checkpoint.size)
        if known is not None:
            return Verdict(ReceiptStatus.VERIFIED, "a checkpoint verified before", checkpoint,
                           repeat=known.sequence == sequence)
        return Verdict(ReceiptStatus.UNVERIFIED, f"older than the held checkpoint "
                       f"({held.tree_size}), and no proof that it is part of it", checkpoint)
    if receipt.consistency_from_size == held.tree_size:  # its proof was checked by _find_fork
        return Verdict(ReceiptStatus.VERIFIED, f"extends the held checkpoint ({held.tree_size})",
                       checkpoint, trust=True)
    return Verdict(ReceiptStatus.UNVERIFIED, f"proves consistency from size "
                   f"{receipt.consistency_from_size}, not from the held checkpoint's "
                   f"{held.tree_size} (an answer to an older request)", checkpoint)


def _find_fork(receipt: pb.Receipt, checkpoint: Checkpoint, held: HeldCheckpoint | None,
               recorded: Callable[[int], HeldCheckpoint | None]) -> Fork | None:
    """A signed checkpoint that contradicts one verified before: same size and another root, or
    a consistency proof from a verified checkpoint that fails."""
    def on_record(size: int) -> HeldCheckpoint | None:
        return held if held is not None and held.tree_size == size else recorded(size)

    same = on_record(checkpoint.size)
    if same is not None and same.root != checkpoint.root_hash:
        return Fork(same, checkpoint, receipt.checkpoint,
                    f"two signed checkpoints of size {checkpoint.size} with different roots")
    start = receipt.consistency_from_size
    if 0 < start < checkpoint.size:
        old = on_record(start)
        if old is not None:
            try:
                _check_extends(receipt, old, checkpoint)
            except ProofInvalid as exc:
                return Fork(old, checkpoint, receipt.checkpoint,
                            f"checkpoint {checkpoint.size} does not extend checkpoint {start}: {exc}")
    return None


# --- the store ----------------------------------------------------------------------------------


class LeafHashes(Protocol):
    """Where the collector's leaf hashes are kept (the buffer)."""

    def leaf_hash(self, sequence: int) -> bytes | None:
        """The block's leaf hash, if kept."""
        ...

    def forget_leaf_hashes(self, below_sequence: int) -> int:
        """Drop the leaf hashes before `below_sequence`."""
        ...


@dataclass(slots=True)
class ReceiptStats:
    """Receipts taken since start, by verdict (the metrics read these)."""

    by_status: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in ReceiptStatus})
    repeats: int = 0
    lost: int = 0  # could not be judged or kept: the store failed
    newest_verified_sequence: int = 0


_SCHEMA = """
CREATE TABLE IF NOT EXISTS receipts (
    id INTEGER PRIMARY KEY,
    received_unix_ms INTEGER NOT NULL,
    digest BLOB NOT NULL UNIQUE,
    checkpoint TEXT NOT NULL,
    tree_size INTEGER,
    root_hash BLOB,
    sequence INTEGER,
    leaf_index INTEGER,
    leaf_hash BLOB,
    inclusion_path BLOB NOT NULL,
    consistency_from_size INTEGER,
    status TEXT NOT NULL,
    reason TEXT NOT NULL,
    log_key TEXT
);
CREATE INDEX IF NOT EXISTS receipts_verified ON receipts (log_key, tree_size)
    WHERE status = 'verified';
CREATE TABLE IF NOT EXISTS receipt_held (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    log_key TEXT NOT NULL,
    tree_size INTEGER NOT NULL,
    root_hash BLOB NOT NULL,
    checkpoint TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    received_unix_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS receipt_forks (
    id INTEGER PRIMARY KEY,
    detected_unix_ms INTEGER NOT NULL,
    held_size INTEGER NOT NULL,
    held_root BLOB NOT NULL,
    held_checkpoint TEXT NOT NULL,
    other_size INTEGER NOT NULL,
    other_root BLOB NOT NULL,
    other_checkpoint TEXT NOT NULL,
    consistency_from_size INTEGER NOT NULL,
    consistency_path BLOB NOT NULL,
    reason TEXT NOT NULL,
    UNIQUE (held_checkpoint, other_checkpoint)
);
"""


def _clamp(value: int) -> int | None:
    return value if 0 <= value <= MAX_TREE_SIZE else None


def _joined(hashes: list[bytes]) -> bytes:
    """Proof hashes as one blob, when they are proof hashes at all."""
    if len(hashes) > MAX_PROOF_HASHES or any(len(h) != HASH_SIZE for h in hashes):
        return b""
    return b"".join(hashes)


class ReceiptStore:
    """Judges and keeps receipts, holds the trusted checkpoint, keeps fork evidence: tables in
    the buffer's SQLite file (WAL, synced), or in memory with `path` None."""

    def __init__(self, *, path: Path | None, leaves: LeafHashes, key: LogKey | None,
                 max_receipts: int = MAX_RECEIPTS, max_forks: int = MAX_FORKS,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.leaves = leaves
        self.key = key
        self.max_receipts = max_receipts
        self.max_forks = max_forks
        self.clock = clock
        self.stats = ReceiptStats()
        self.held: HeldCheckpoint | None = None
        self._alarmed_against: HeldCheckpoint | None = None  # the fork alarm was raised for it
        self._refusing = False  # the last receipt was refused (the next refusal logs quietly)
        try:
            self._db = sqlite3.connect(":memory:" if path is None else path, isolation_level=None,
                                       check_same_thread=False)
            if path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT log_key, tree_size, root_hash, checkpoint, sequence "
                                   "FROM receipt_held").fetchone()
        except sqlite3.Error as exc:
            raise ReceiptStoreUnavailable(f"cannot open the receipts in {path}: {exc}") from exc
        if row is not None and key is not None:
            if row[0] == key.text:
                self.held = HeldCheckpoint(int(row[1]), bytes(row[2]), str(row[3]), int(row[4]))
                self.stats.newest_verified_sequence = self.held.sequence
            else:
                log.warning("the held checkpoint (size %d) was verified with the log key %s, and "
                            "collector.gateway_log_key is now %s: starting again with no held "
                            "checkpoint (the old receipts stay on record)", row[1], row[0], key.text)

    def __repr__(self) -> str:
        size = self.held.tree_size if self.held else 0
        return f"ReceiptStore(path={str(self.path)!r}, held_tree_size={size})"

    def held_tree_size(self) -> int:
        """The held checkpoint's tree size (0: none), as the uplinks send it."""
        return self.held.tree_size if self.held is not None else 0

    @property
    def forks(self) -> int:
        """Receipts that proved a fork since start."""
        return self.stats.by_status[ReceiptStatus.FORK.value]

    def take(self, receipt: pb.Receipt) -> Verdict | None:
        """Judge a receipt from an ack, keep it, and act on the verdict. Never raises for what
        the receipt holds; a store that cannot be read or written loses this receipt (logged,
        counted, None), and the next one is taken as usual."""
        try:
            verdict = judge_receipt(receipt, key=self.key, held=self.held,
                                    leaf_of=self.leaves.leaf_hash, recorded=self._recorded)
            self._keep(receipt, verdict)
        except CollectorError as exc:  # the buffer's or this store's disk: not the receipt's fault
            self.stats.lost += 1
            log.error("a receipt from the gateway was not kept: %s", exc)  # noqa: TRY400 - the message is the story
            return None
        self.stats.by_status[verdict.status.value] += 1
        self._report(verdict, receipt)
        return verdict

    def _recorded(self, size: int) -> HeldCheckpoint | None:
        if self.key is None or not 0 <= size <= MAX_TREE_SIZE:
            return None
        try:
            row = self._db.execute(
                "SELECT tree_size, root_hash, checkpoint, sequence FROM receipts "
                "WHERE status = 'verified' AND log_key = ? AND tree_size = ? ORDER BY id DESC LIMIT 1",
                (self.key.text, size)).fetchone()
        except sqlite3.Error as exc:
            raise ReceiptStoreUnavailable(f"cannot read the receipts in {self.path}: {exc}") from exc
        return None if row is None else HeldCheckpoint(int(row[0]), bytes(row[1]), str(row[2]),
                                                       int(row[3]))

    def _keep(self, receipt: pb.Receipt, verdict: Verdict) -> None:
        now_ms = int(self.clock() * 1000)
        checkpoint = verdict.checkpoint
        note = receipt.checkpoint if len(receipt.checkpoint) <= MAX_NOTE_BYTES else ""
        path = list(receipt.inclusion_path)
        sequence = _clamp(receipt.sequence)
        leaf = self.leaves.leaf_hash(sequence) if sequence else None
        verified = verdict.status is ReceiptStatus.VERIFIED and self.key is not None
        digest = hashlib.sha256(json.dumps([
            note, sequence, _clamp(receipt.leaf_index), base64.b64encode(_joined(path)).decode(),
            verdict.status.value, verdict.reason]).encode()).digest()
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                if not verdict.repeat:
                    cursor = self._db.execute(
                        "INSERT OR IGNORE INTO receipts (received_unix_ms, digest, checkpoint, "
                        "tree_size, root_hash, sequence, leaf_index, leaf_hash, inclusion_path, "
                        "consistency_from_size, status, reason, log_key) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (now_ms, digest, note, checkpoint.size if checkpoint else None,
                         checkpoint.root_hash if checkpoint else None, sequence,
                         _clamp(receipt.leaf_index), leaf, _joined(path),
                         _clamp(receipt.consistency_from_size), verdict.status.value,
                         verdict.reason, self.key.text if verified and self.key else None))
                    if cursor.rowcount and cursor.lastrowid is not None:
                        self._db.execute(
                            "DELETE FROM receipts WHERE id <= ? AND id NOT IN "
                            "(SELECT MAX(id) FROM receipts WHERE status = 'verified')",
                            (cursor.lastrowid - self.max_receipts,))
                if verdict.trust and checkpoint is not None and self.key is not None:
                    self._db.execute("INSERT OR REPLACE INTO receipt_held VALUES (1, ?, ?, ?, ?, ?, ?)",
                                     (self.key.text, checkpoint.size, checkpoint.root_hash,
                                      receipt.checkpoint, receipt.sequence, now_ms))
                if verdict.fork is not None:
                    self._keep_fork(verdict.fork, receipt, now_ms)
        except sqlite3.Error as exc:
            raise ReceiptStoreUnavailable(f"cannot write the receipts in {self.path}: {exc}") from exc
        if verdict.trust and checkpoint is not None:
            self.held = HeldCheckpoint(checkpoint.size, checkpoint.root_hash, receipt.checkpoint,
                                       receipt.sequence)
        if verified:
            self.stats.newest_verified_sequence = max(self.stats.newest_verified_sequence,
                                                      receipt.sequence)
        if verified or (verdict.status is ReceiptStatus.UNVERIFIED and self.key is None):
            # the gateway's receipts name its newest block of this collector: older leaf hashes
            # will not be asked for again (without a key, nothing would prune them otherwise)
            self.leaves.forget_leaf_hashes(receipt.sequence)

    def _keep_fork(self, fork: Fork, receipt: pb.Receipt, now_ms: int) -> None:
        kept = self._db.execute("SELECT COUNT(*) FROM receipt_forks").fetchone()[0]
        if kept >= self.max_forks:
            return
        self._db.execute(
            "INSERT OR IGNORE INTO receipt_forks (detected_unix_ms, held_size, held_root, "
            "held_checkpoint, other_size, other_root, other_checkpoint, consistency_from_size, "
            "consistency_path, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (now_ms, fork.held.tree_size, fork.held.root, fork.held.note, fork.other.size,
             fork.other.root_hash, fork.other_note, _clamp(receipt.consistency_from_size) or 0,
             _joined(list(receipt.consistency_path)), fork.reason))

    def _report(self, verdict: Verdict, receipt: pb.Receipt) -> None:
        """Log a verdict: a fork loudly the first time against the held checkpoint, a refusal
        loudly the first time in a row; repeats more quietly."""
        checkpoint = verdict.checkpoint
        refused = verdict.status is ReceiptStatus.REFUSED
        if refused:
            log.log(logging.DEBUG if self._refusing else logging.WARNING,
                    "refused a receipt from the gateway (block %d): %s", receipt.sequence,
                    verdict.reason)
        self._refusing = refused
        fork = verdict.fork
        if fork is not None:
            first = self._alarmed_against != self.held
            self._alarmed_against = self.held
            log.log(logging.ERROR if first else logging.WARNING,
                    "%s: the gateway's transparency log %s forked or rewrote its history: it signed "
                    "checkpoint %d with root %s, and checkpoint %d with root %s, verified before, "
                    "does not hold with it (%s). The held checkpoint (%d) stays trusted; both "
                    "notes are kept as evidence (stackline collector receipts); data keeps "
                    "flowing", "ALARM" if first else "ALARM again", fork.other.origin,
                    fork.other.size, fork.other.root_hash.hex(), fork.held.tree_size,
                    fork.held.root.hex(), fork.reason, self.held_tree_size())
        elif verdict.trust and checkpoint is not None:
            if self._alarmed_against is not None:
                log.warning("the gateway's log extends the held checkpoint again (now %d)",
                            checkpoint.size)
                self._alarmed_against = None
            log.info("receipt: checkpoint %d (root %s) of %s holds block %d (leaf %d); verified, "
                     "now the held checkpoint", checkpoint.size, checkpoint.root_hash.hex()[:16],
                     checkpoint.origin, receipt.sequence, receipt.leaf_index)
        elif verdict.repeat:
            self.stats.repeats += 1
        else:
            log.debug("receipt for block %d: %s: %s", receipt.sequence, verdict.status.value,
                      verdict.reason)

    def close(self) -> None:
        """Close the database."""
        self._db.close()


# --- reading and showing them (`stackline collector receipts`) ----------------------------------


@dataclass(frozen=True, slots=True)
class ReceiptRecord:
    """One kept receipt."""

    received_unix_ms: int
    tree_size: int | None
    root: bytes | None
    sequence: int | None
    leaf_index: int | None
    status: str
    reason: str
    checkpoint: str
    inclusion_path: tuple[bytes, ...]
    leaf_hash: bytes | None
    consistency_from_size: int | None


@dataclass(frozen=True, slots=True)
class ForkRecord:
    """One fork's evidence: the checkpoint verified before and the one that contradicts it."""

    detected_unix_ms: int
    held_size: int
    held_root: bytes
    held_checkpoint: str
    other_size: int
    other_root: bytes
    other_checkpoint: str
    reason: str
    consistency_from_size: int
    consistency_path: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ReceiptReport:
    """What a plant's buffer file holds about receipts."""

    path: Path
    held: HeldCheckpoint | None
    held_log_key: str | None
    held_received_unix_ms: int | None
    receipts: tuple[ReceiptRecord, ...]
    receipts_kept: int
    forks: tuple[ForkRecord, ...]


def read_receipts(path: Path, *, limit: int = 0) -> ReceiptReport:
    """The newest `limit` receipts (0: all), the held checkpoint and every fork kept in a buffer
    file, read-only (the collector may be running); ReceiptStoreUnavailable when it cannot be."""
    if not path.is_file():
        raise ReceiptStoreUnavailable(f"no buffer file at {path}: the collector has not run yet")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise ReceiptStoreUnavailable(f"cannot open {path}: {exc}") from exc
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "receipts" not in tables:
            return ReceiptReport(path, None, None, None, (), 0, ())
        held_row = db.execute("SELECT log_key, tree_size, root_hash, checkpoint, sequence, "
                              "received_unix_ms FROM receipt_held").fetchone()
        kept = int(db.execute("SELECT COUNT(*) FROM receipts").fetchone()[0])
        rows = db.execute(
            "SELECT received_unix_ms, tree_size, root_hash, sequence, leaf_index, status, reason, "
            "checkpoint, inclusion_path, leaf_hash, consistency_from_size FROM receipts "
            "ORDER BY id DESC LIMIT ?", (limit if limit > 0 else -1,)).fetchall()
        fork_rows = db.execute(
            "SELECT detected_unix_ms, held_size, held_root, held_checkpoint, other_size, "
            "other_root, other_checkpoint, reason, consistency_from_size, consistency_path "
            "FROM receipt_forks ORDER BY id").fetchall()
    except sqlite3.Error as exc:
        raise ReceiptStoreUnavailable(f"cannot read the receipts in {path}: {exc}") from exc
    finally:
        db.close()
    held = None if held_row is None else HeldCheckpoint(int(held_row[1]), bytes(held_row[2]),
                                                        str(held_row[3]), int(held_row[4]))
    receipts = tuple(ReceiptRecord(
        int(r[0]), _int(r[1]), None if r[2] is None else bytes(r[2]), _int(r[3]), _int(r[4]),
        str(r[5]), str(r[6]), str(r[7]), _hashes(r[8]), None if r[9] is None else bytes(r[9]),
        _int(r[10])) for r in reversed(rows))
    forks = tuple(ForkRecord(int(r[0]), int(r[1]), bytes(r[2]), str(r[3]), int(r[4]), bytes(r[5]),
                             str(r[6]), str(r[7]), int(r[8]), _hashes(r[9])) for r in fork_rows)
    return ReceiptReport(path, held, None if held_row is None else str(held_row[0]),
                         None if held_row is None else int(held_row[5]), receipts, kept, forks)


def _hashes(blob: bytes) -> tuple[bytes, ...]:
    return tuple(bytes(blob[i:i + HASH_SIZE]) for i in range(0, len(blob), HASH_SIZE))


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _when(unix_ms: int) -> str:
    return datetime.fromtimestamp(unix_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _text(value: int | None) -> str:
    return "-" if value is None else str(value)


def _prefix(root: bytes | None) -> str:
    return "-" if root is None else root.hex()[:16]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Columns padded to their widest cell; the last column as it is."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, ["-" * len(h) for h in header], *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return lines


def render_table(report: ReceiptReport, *, log_key: LogKey | None) -> str:
    """The receipts as a plant engineer reads them: the held checkpoint, the receipts oldest
    first, and any fork in full."""
    lines = [f"receipts in {report.path}"]
    if log_key is None:
        lines.append("gateway log key: not configured (collector.gateway_log_key): receipts are "
                     "kept unverified")
    else:
        lines.append(f"gateway log key: {log_key.text}")
    if report.held is None:
        lines.append("held checkpoint: none verified yet")
    else:
        other = "" if log_key is None or report.held_log_key == log_key.text else (
            f" (verified with another key, {report.held_log_key})")
        lines.append(f"held checkpoint: tree size {report.held.tree_size}, root "
                     f"{report.held.root.hex()}, block {report.held.sequence}, received "
                     f"{_when(report.held_received_unix_ms or 0)}{other}")
    lines.append("")
    if report.receipts:
        shown = len(report.receipts)
        if shown < report.receipts_kept:
            lines.append(f"the newest {shown} of {report.receipts_kept} receipts kept (--limit 0 "
                         "shows all):")
        rows = [[_when(r.received_unix_ms), _text(r.tree_size), _prefix(r.root), _text(r.sequence),
                 _text(r.leaf_index), r.status, r.reason] for r in report.receipts]
        lines += _table(["received (UTC)", "tree size", "root", "sequence", "leaf index",
                         "status", "why"], rows)
    else:
        lines.append("no receipts yet: the gateway sends one with an ack after its next "
                     "checkpoint that holds this collector's blocks")
    if report.forks:
        lines += ["", f"FORK: the gateway's log forked or rewrote its history ({len(report.forks)} "
                  "kept as evidence). The held checkpoint stays trusted. Keep this file; send "
                  "both notes (--json) to the verifier or regulator; see docs/receipts.md.", ""]
        rows = [[_when(f.detected_unix_ms), str(f.held_size), _prefix(f.held_root),
                 str(f.other_size), _prefix(f.other_root), f.reason] for f in report.forks]
        lines += _table(["detected (UTC)", "verified size", "verified root", "other size",
                         "other root", "why"], rows)
    return "\n".join(lines)


def render_json(report: ReceiptReport, *, log_key: LogKey | None) -> str:
    """Everything kept, notes and proofs included, for a verifier or a script."""
    def b64(value: bytes | None) -> str | None:
        return None if value is None else base64.b64encode(value).decode()

    held = None if report.held is None else {
        "tree_size": report.held.tree_size, "root": report.held.root.hex(),
        "sequence": report.held.sequence, "checkpoint": report.held.note,
        "received_unix_ms": report.held_received_unix_ms, "log_key": report.held_log_key}
    return json.dumps({
        "buffer": str(report.path),
        "log_key": None if log_key is None else log_key.text,
        "held": held,
        "receipts_kept": report.receipts_kept,
        "receipts": [{
            "received_unix_ms": r.received_unix_ms, "tree_size": r.tree_size,
            "root": None if r.root is None else r.root.hex(), "sequence": r.sequence,
            "leaf_index": r.leaf_index, "status": r.status, "reason": r.reason,
            "checkpoint": r.checkpoint, "leaf_hash": None if r.leaf_hash is None else r.leaf_hash.hex(),
            "inclusion_path": [b64(h) for h in r.inclusion_path],
            "consistency_from_size": r.consistency_from_size,
        } for r in report.receipts],
        "forks": [{
            "detected_unix_ms": f.detected_unix_ms, "reason": f.reason,
            "verified": {"tree_size": f.held_size, "root": f.held_root.hex(),
                         "checkpoint": f.held_checkpoint},
            "other": {"tree_size": f.other_size, "root": f.other_root.hex(),
                      "checkpoint": f.other_checkpoint},
            "consistency_from_size": f.consistency_from_size,
            "consistency_path": [b64(h) for h in f.consistency_path],
        } for f in report.forks],
    }, indent=2)
