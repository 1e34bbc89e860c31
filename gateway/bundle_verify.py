"""`stackline verify --bundle`: check an evidence bundle (`stackline.bundle/v1`) offline and say
whether its report can be trusted, naming every failure.

Nothing in the bundle is taken on trust except what a check establishes, in this order:

1. files: every file's SHA-256 against the manifest (the manifest itself is not signed: a
   careful forger rewrites it, so every later check stands on its own);
2. collector keys: each key id is the first 16 hex digits of SHA-256 of its key;
3. block signatures and 4. chains: `gateway.verifier.ChainAudit` (rules 1-7 of
   docs/verifying.md) over each collector's blocks, plus what a bundle adds: the file is in
   sequence order (two exchanged blocks are named as such), and no block is missing from the
   ranges the manifest declares nor between the first and the last readings block;
5. checkpoint: the signed note verifies with the log key (`--log-key`, or the bundle's own with
   a warning), and extends the log's previous checkpoint (consistency proof);
6. inclusion proofs: every block is a leaf of the checkpoint's tree (a checkpoint signed by the
   log key that none of the proofs leads to describes another history: a forked log);
7. report signature: Ed25519 by the log key over "stackline/v1/report\\0" + the report's bytes;
8. methodology: the file's digest equals the digest the report cites;
9. recomputation: the report recomputed from the bundle's verified blocks with the bundle's
   methodology file, by the code `stackline report` runs, equals the report byte for byte;
   otherwise each differing figure is named by its JSON path.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, Any

from gateway.accounting.methodology import Methodology, MethodologyError, parse_methodology
from gateway.accounting.render import render_json
from gateway.accounting.source import load_unit_data
from gateway.accounting.unit import account_unit
from gateway.bundle import BUNDLE_FORMAT, MANIFEST
from gateway.errors import GatewayError
from gateway.ledger.base import CollectorKey, StoredRow
from gateway.report_signature import verify_report_signature
from gateway.translog.checkpoint import Checkpoint, CheckpointError, parse_checkpoint, parse_verifier_key
from gateway.translog.log import InclusionProof
from gateway.translog.merkle import ProofError, leaf_hash, verify_consistency, verify_inclusion
from gateway.verifier import ChainAudit
from gateway.verifier_documents import (
    BlockLine,
    BundleFormatError,
    CheckpointInfo,
    CollectorInfo,
    parse_base64,
    parse_inclusion_proof,
)
from proto.errors import UnacceptableKeyError, VerificationError
from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import check_public_key, decode_block, key_id_of

__all__ = [
    "CHECKS",
    "FAILURE_CODES",
    "MAX_BUNDLE_BLOCKS",
    "MAX_COLLECTOR_BLOCKS",
    "MAX_ENTRY_BYTES",
    "VERDICT_FORMAT",
    "CheckResult",
    "Failure",
    "LogKeyError",
    "NotABundleError",
    "Verdict",
    "render_verdict",
    "verify_bundle",
]

VERDICT_FORMAT = "stackline.verdict/v1"
MAX_MANIFEST_BYTES = 16 << 20
MAX_DOCUMENT_BYTES = 256 << 20
MAX_LINE_BYTES = 64 << 20
MAX_ENTRY_BYTES = 64 << 30
"""The most any zip entry is read, inflated, whatever its zip header and the manifest declare
(an entry the manifest lists is read no further than the bytes it declares)."""
MAX_BUNDLE_BLOCKS = 5_000_000
"""Blocks (and, apart, inclusion proofs) one verification reads from a bundle, by default: they
are held in memory. `stackline verify --bundle --max-blocks N` changes it."""
MAX_COLLECTOR_BLOCKS = MAX_BUNDLE_BLOCKS
"""Blocks (and proofs) read from one collector's file, by default (within the bundle's)."""
MAX_LISTED = 200
"""Failures of one code listed one by one; the rest are counted (one more entry says how many)."""
_ZIP_ERRORS = (OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError)
"""What reading a damaged, encrypted or exotic zip entry raises (a bundle is outside input)."""

CHECKS: dict[str, str] = {
    "files": "bundle files",
    "keys": "collector keys",
    "signatures": "block signatures",
    "chains": "chains",
    "checkpoint": "checkpoint",
    "inclusion": "inclusion proofs",
    "report": "report signature",
    "methodology": "methodology",
    "recomputation": "recomputation",
}

FAILURE_CODES: dict[str, tuple[str, str]] = {
    "file_missing": ("files", "a file the manifest names is not in the bundle"),
    "file_digest_mismatch": ("files", "a file's SHA-256 is not the manifest's (or the zip entry is damaged)"),
    "malformed_file": ("files", "a file or line that does not parse as its format says"),
    "entry_too_large": ("files", "a zip entry larger than the manifest declares or than the "
                        "verifier reads (not read)"),
    "too_many_blocks": ("files", "more blocks or proofs than the verifier reads, in a collector's "
                        "file or in the bundle (--max-blocks); the rest is not read"),
    "key_id_mismatch": ("keys", "a collector key whose key id is not SHA-256 of the key"),
    "unacceptable_key": ("keys", "a public key the verification rule refuses (small order, not canonical)"),
    "bad_signature": ("signatures", "a block whose signature does not verify with its collector's key"),
    "block_missing": ("chains", "a block missing inside the declared ranges or the readings span"),
    "blocks_swapped": ("chains", "two blocks exchanged in the file"),
    "blocks_out_of_order": ("chains", "blocks not in sequence order in the file"),
    "duplicate_block": ("chains", "a sequence present twice (different bytes: a fork)"),
    "broken_link": ("chains", "previous_hash is not the hash of the block before"),
    "mislabelled": ("chains", "a block whose payload names another collector or sequence"),
    "malformed_block": ("chains", "a payload that does not parse as a Block"),
    "config_digest_mismatch": ("chains", "a CONFIG block whose digest is not SHA-256 of its document"),
    "undeclared_block": ("chains", "a block outside the ranges the manifest declares"),
    "log_key_mismatch": ("checkpoint", "the bundle's log key is not the pinned one"),
    "checkpoint_malformed": ("checkpoint", "a checkpoint that does not parse or contradicts its note"),
    "checkpoint_signature_invalid": ("checkpoint", "a checkpoint note not signed by the log key"),
    "checkpoint_fork": ("checkpoint", "a checkpoint signed by the log key over another history"),
    "inclusion_proof_missing": ("inclusion", "a block without an inclusion proof"),
    "inclusion_proof_invalid": ("inclusion", "a proof that does not lead to the checkpoint's root"),
    "report_malformed": ("report", "a report that is not a report document"),
    "report_signature_invalid": ("report", "a report not signed by the log key"),
    "methodology_missing": ("methodology", "the methodology file the report cites is not in the bundle"),
    "methodology_invalid": ("methodology", "a methodology file that does not validate"),
    "methodology_digest_mismatch": ("methodology", "the file's digest is not the one the report cites"),
    "methodology_not_configured": ("methodology", "the unit's configuration names another methodology"),
    "period_mismatch": ("recomputation", "the manifest's plant, unit or period is not the report's"),
    "recomputation_failed": ("recomputation", "the accounting could not be recomputed from the bundle"),
    "figure_mismatch": ("recomputation", "a figure of the report differs from the recomputed one"),
    "report_not_canonical": ("recomputation", "equal figures, but not the canonical bytes"),
}

WARNING_CODES: dict[str, str] = {
    "log_key_not_pinned": "checked with the log key the bundle carries, not one given with --log-key",
    "unannounced_config": "readings under a configuration no earlier block of the bundle records",
    "unlisted_file": "a file in the zip that the manifest does not list",
}


class NotABundleError(GatewayError):
    """The file is not an evidence bundle (not a zip, no manifest, another format)."""


class LogKeyError(GatewayError):
    """The log key given to pin is not a verifier key."""


class _EntryTooLarge(OSError):
    """A zip entry that inflates past what may be read of it: the bytes the manifest declares
    for it (`declared`), or the verifier's ceiling."""

    def __init__(self, message: str, *, declared: bool) -> None:
        super().__init__(message)
        self.declared = declared


class _Bounded:
    """A zip entry's reader that inflates no more than `limit` bytes, plus one: past that,
    _EntryTooLarge (what was read before it stays read)."""

    def __init__(self, handle: IO[bytes], *, name: str, limit: int, source: str,
                 declared: bool) -> None:
        self.handle = handle
        self.name = name
        self.limit = limit
        self.source = source
        self.declared = declared
        self.count = 0

    def __enter__(self) -> _Bounded:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.handle.close()

    def _take(self, data: bytes) -> bytes:
        self.count += len(data)
        if self.count > self.limit:
            raise _EntryTooLarge(f"{self.name} inflates past {self.source}", declared=self.declared)
        return data

    def read(self, size: int) -> bytes:
        """At most `size` bytes."""
        return self._take(self.handle.read(min(size, self.limit - self.count + 1)))

    def readline(self, size: int) -> bytes:
        """A line of at most `size` bytes."""
        return self._take(self.handle.readline(min(size, self.limit - self.count + 1)))


def _unsafe_name(name: str) -> bool:
    """An entry name that an unzip tool would write outside the directory it extracts into."""
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":")


@dataclass(frozen=True, slots=True)
class Failure:
    """One thing wrong (or, as a warning, worth knowing), located as precisely as possible."""

    code: str
    detail: str
    collector_id: str | None = None
    sequence: int | None = None
    path: str | None = None

    @property
    def check(self) -> str:
        """The check this failure belongs to."""
        return FAILURE_CODES[self.code][0] if self.code in FAILURE_CODES else "warnings"

    def to_json(self) -> dict[str, Any]:
        """As the JSON verdict lists it (absent locations left out)."""
        document: dict[str, Any] = {"code": self.code, "check": self.check, "detail": self.detail}
        for key in ("collector_id", "sequence", "path"):
            value = getattr(self, key)
            if value is not None:
                document[key] = value
        return document

    def where(self) -> str:
        """The location, as text."""
        if self.collector_id is not None and self.sequence is not None:
            return f"{self.collector_id} block {self.sequence}: "
        if self.collector_id is not None:
            return f"{self.collector_id}: "
        if self.path is not None:
            return f"{self.path}: "
        return ""


@dataclass(slots=True)
class CheckResult:
    """One line of the verdict's table."""

    name: str
    status: str = "pass"  # pass, fail or skip
    count: int = 0
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        """As the JSON verdict lists it."""
        return {"name": self.name, "label": CHECKS[self.name], "status": self.status,
                "count": self.count, "detail": self.detail}


@dataclass(slots=True)
class Verdict:
    """The outcome of `stackline verify --bundle`."""

    bundle: str
    bundle_sha256: str
    info: dict[str, Any]
    checks: list[CheckResult]
    failures: list[Failure]
    warnings: list[Failure]
    checked_unix_ms: int
    unlisted: dict[str, int] = field(default_factory=dict)
    """Failures counted but not listed, by code (each code has one entry saying how many)."""

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return not self.failures

    def codes(self) -> set[str]:
        """Every failure code present."""
        return {failure.code for failure in self.failures}

    def to_json(self) -> dict[str, Any]:
        """One JSON document to attach to an audit."""
        return {
            "format": VERDICT_FORMAT,
            "verdict": "pass" if self.ok else "fail",
            "bundle": self.bundle,
            "bundle_sha256": self.bundle_sha256,
            "checked_at": datetime.fromtimestamp(self.checked_unix_ms / 1000, UTC).isoformat(
                timespec="seconds"),
            **self.info,
            "checks": [check.to_json() for check in self.checks],
            "failures": [failure.to_json() for failure in self.failures],
            "unlisted": dict(sorted(self.unlisted.items())),
            "warnings": [warning.to_json() for warning in self.warnings],
        }


# --- reading the zip ----------------------------------------------------------------------------------


class _Bundle:
    """The zip, its manifest (checked for shape), and bounded reads of its entries."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
        except (*_ZIP_ERRORS, ValueError) as exc:
            raise NotABundleError(f"{path} is not a zip file: {exc}") from exc
        self.names = set(self.zip.namelist())
        self.manifest: dict[str, Any] = {}
        try:
            self._open_manifest()
        except BaseException:
            self.zip.close()
            raise

    def _open_manifest(self) -> None:
        path = self.path
        unsafe = sorted(name for name in self.names if _unsafe_name(name))
        if unsafe:
            raise NotABundleError(f"{path}: zip entry {unsafe[0][:200]!r} names a path outside the "
                                  "archive (a leading '/' or a '..'): not a bundle `stackline "
                                  "export` writes; do not unzip it")
        if MANIFEST not in self.names:
            raise NotABundleError(f"{path} has no {MANIFEST}: it is not a Stackline evidence bundle")
        try:
            raw = self.read(MANIFEST, limit=MAX_MANIFEST_BYTES)
            manifest = json.loads(raw)
        except (*_ZIP_ERRORS, ValueError) as exc:
            raise NotABundleError(f"{path}: {MANIFEST} is not JSON: {exc}") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else None
            raise NotABundleError(f"{path}: the manifest's format is {found!r}, not {BUNDLE_FORMAT!r}")
        self.manifest = manifest
        try:
            self._check_shape()
        except (BundleFormatError, KeyError, TypeError) as exc:
            raise NotABundleError(f"{path}: the manifest is not a {BUNDLE_FORMAT} manifest: {exc}") from exc

    def _check_shape(self) -> None:
        m = self.manifest
        for key in ("plant", "unit", "collectors_file"):
            if not isinstance(m.get(key), str):
                raise BundleFormatError(f"{key!r} must be a string")
        period, log, report = m["period"], m["log"], m["report"]
        for obj, keys in ((period, ("from", "to", "timezone")), (log, ("verifier_key", "checkpoint")),
                          (report, ("body", "signature"))):
            if not isinstance(obj, dict) or not all(isinstance(obj.get(k), str) for k in keys):
                raise BundleFormatError(f"expected strings {', '.join(keys)}")
        if not isinstance(m["files"], dict) or not isinstance(m["collectors"], list) or not isinstance(
                m["methodologies"], list):
            raise BundleFormatError("'files' is an object, 'collectors' and 'methodologies' are lists")
        for entry in m["collectors"]:
            if not (isinstance(entry, dict) and all(isinstance(entry.get(k), str) for k in
                                                    ("collector_id", "blocks", "proofs"))
                    and isinstance(entry.get("ranges", []), list)):
                raise BundleFormatError("a collector entry names collector_id, blocks and proofs")

    def _open(self, name: str, ceiling: int) -> _Bounded:
        """An entry opened for reading no further than the smallest of its zip header's size
        (the zip reader stops there; its CRC then fails), the bytes the manifest declares for
        it, and `ceiling`. An entry whose header is past the ceiling is not opened at all
        (_EntryTooLarge, an OSError): a zip bomb costs nothing."""
        info = self.zip.getinfo(name)
        if info.file_size > ceiling:
            raise _EntryTooLarge(f"{name} inflates to {info.file_size:,} bytes (its zip header), "
                                 f"more than the {ceiling:,} bytes the verifier reads of an entry",
                                 declared=False)
        files = self.manifest.get("files")
        entry = files.get(name) if isinstance(files, dict) else None
        declared = entry.get("bytes") if isinstance(entry, dict) else None
        if isinstance(declared, int) and not isinstance(declared, bool) and 0 <= declared < ceiling:
            return _Bounded(self.zip.open(info), name=name, limit=declared, declared=True,
                            source=f"the {declared:,} bytes the manifest declares")
        return _Bounded(self.zip.open(info), name=name, limit=ceiling, declared=False,
                        source=f"the {ceiling:,} bytes the verifier reads of an entry")

    def read(self, name: str, *, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
        """An entry's bytes; OSError when it is larger than `limit` or than declared."""
        with self._open(name, limit) as handle:
            return handle.read(limit + 1)[:limit]

    def lines(self, name: str) -> Iterator[bytes]:
        """An ndjson entry's non-empty lines; OSError for a line past MAX_LINE_BYTES or an entry
        larger than declared or than MAX_ENTRY_BYTES."""
        with self._open(name, MAX_ENTRY_BYTES) as handle:
            while True:
                line = handle.readline(MAX_LINE_BYTES + 1)
                if not line:
                    return
                if len(line) > MAX_LINE_BYTES:
                    raise OSError(f"{name}: a line longer than {MAX_LINE_BYTES} bytes")
                if line.strip():
                    yield line

    def sha256(self, name: str) -> str:
        """SHA-256 of an entry, streamed."""
        digest = hashlib.sha256()
        with self._open(name, MAX_ENTRY_BYTES) as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()


class _Blocks:
    """The bundle's verified blocks as a `BlockReader`, for `load_unit_data`."""

    def __init__(self, rows: Mapping[str, Sequence[StoredRow]]) -> None:
        self.rows = rows

    async def iter_blocks(self, collector_id: str | None = None) -> AsyncIterator[StoredRow]:
        """Blocks by collector and sequence."""
        for cid in sorted(self.rows) if collector_id is None else [collector_id]:
            for row in self.rows.get(cid, ()):
                yield row


# --- the checks ---------------------------------------------------------------------------------------


def _runs(numbers: Sequence[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    return runs


def _missing(present: Sequence[int], spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Runs of sequences inside `spans` that `present` (sorted, unique) lacks."""
    merged: list[tuple[int, int]] = []
    for first, last in sorted(spans):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    missing: list[tuple[int, int]] = []
    for first, last in merged:
        expected = first
        for index in range(bisect.bisect_left(present, first), bisect.bisect_right(present, last)):
            if present[index] > expected:
                missing.append((expected, present[index] - 1))
            expected = present[index] + 1
        if expected <= last:
            missing.append((expected, last))
    return missing


def _span_text(first: int, last: int) -> str:
    return f"block {first} is" if first == last else f"blocks {first}..{last} are"


def _order_failures(collector_id: str, order: Sequence[int]) -> list[Failure]:
    """Blocks out of sequence order in the file; an exchanged pair is named as a swap."""
    ordered = sorted(order)
    wrong = [i for i, (got, want) in enumerate(zip(order, ordered, strict=True)) if got != want]
    if not wrong:
        return []
    failures: list[Failure] = []
    position = {sequence: i for i, sequence in enumerate(order)}
    left = set(wrong)
    for i in wrong:
        j = position.get(ordered[i])
        if i in left and j is not None and j in left and j != i and order[j] == ordered[i] and (
                order[i] == ordered[j]):
            a, b = sorted((order[i], order[j]))
            failures.append(Failure("blocks_swapped", f"blocks {a} and {b} are exchanged: the file "
                                    f"holds {b} where {a} belongs and {a} where {b} belongs",
                                    collector_id, a))
            left -= {i, j}
    if left:
        first = min(left)
        failures.append(Failure("blocks_out_of_order", f"{len(left)} block(s) out of sequence order, "
                                f"the first at line {first + 1} (block {order[first]} where "
                                f"{ordered[first]} belongs)", collector_id, order[first]))
    return failures


def _figures(report: object, recomputed: object, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(JSON path, report's value, recomputed value) of every leaf that differs."""
    if isinstance(report, dict) and isinstance(recomputed, dict):
        for key in sorted(set(report) | set(recomputed), key=str):
            child = f"{path}.{key}" if path else str(key)
            yield from _figures(report.get(key, _ABSENT), recomputed.get(key, _ABSENT), child)
    elif isinstance(report, list) and isinstance(recomputed, list):
        for index in range(max(len(report), len(recomputed))):
            yield from _figures(report[index] if index < len(report) else _ABSENT,
                                recomputed[index] if index < len(recomputed) else _ABSENT,
                                f"{path}[{index}]")
    elif report != recomputed or type(report) is not type(recomputed):
        yield path, report, recomputed


def _leaves(document: object) -> int:
    if isinstance(document, dict):
        return sum(_leaves(v) for v in document.values())
    if isinstance(document, list):
        return sum(_leaves(v) for v in document)
    return 1


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


_ABSENT = _Absent()


def _shown(value: object) -> str:
    return repr(value) if isinstance(value, _Absent) else json.dumps(value)


@dataclass(slots=True)
class _Verification:
    """The state of one bundle's checks, in the order they run."""

    bundle: _Bundle
    pinned_key: str | None
    max_blocks: int = MAX_BUNDLE_BLOCKS
    max_collector_blocks: int = MAX_COLLECTOR_BLOCKS
    checks: dict[str, CheckResult] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    listed: Counter[str] = field(default_factory=Counter)
    unlisted: Counter[str] = field(default_factory=Counter)
    too_large: set[str] = field(default_factory=set)
    blocks_read: int = 0
    proofs_read: int = 0
    warnings: list[Failure] = field(default_factory=list)
    rows: dict[str, list[StoredRow]] = field(default_factory=dict)
    leaves: dict[tuple[str, int], int | None] = field(default_factory=dict)
    bad_signatures: set[tuple[str, int]] = field(default_factory=set)
    log_name: str = ""
    log_public_key: bytes = b""
    checkpoint: Checkpoint | None = None
    checkpoint_signed: bool = False
    report_document: dict[str, Any] | None = None
    methodology: Methodology | None = None

    def __post_init__(self) -> None:
        self.checks = {name: CheckResult(name) for name in CHECKS}

    def fail(self, failure: Failure) -> None:
        """Keep the failure, or, past MAX_LISTED of its code, only count it."""
        if self.listed[failure.code] < MAX_LISTED:
            self.listed[failure.code] += 1
            self.failures.append(failure)
        else:
            self.unlisted[failure.code] += 1

    def _failure_count(self) -> int:
        """Failures so far, listed or only counted."""
        return len(self.failures) + sum(self.unlisted.values())

    def fail_entry(self, exc: BaseException, code: str, detail: str, path: str) -> None:
        """A zip entry that could not be read: `code` with `detail`, or, for an entry larger
        than may be read, entry_too_large (once per entry)."""
        if not isinstance(exc, _EntryTooLarge):
            self.fail(Failure(code, detail, path=path))
        elif path not in self.too_large:
            self.too_large.add(path)
            self.fail(Failure("entry_too_large", f"{exc}: not read further", path=path))

    def budget(self, collector_id: str, path: str, what: str, read: int) -> tuple[int, str]:
        """How many lines of a collector's file of `what` may be read, given `read` of them
        read from the bundle so far; and the failure's detail when there are more."""
        left = self.max_blocks - read
        if self.max_collector_blocks < left:
            return self.max_collector_blocks, (
                f"{path} holds more than {self.max_collector_blocks:,} {what}, the most this "
                "verification reads of one collector (--max-blocks changes it); the rest was not "
                "read")
        return max(left, 0), (
            f"the bundle holds more than {self.max_blocks:,} {what}, the most this verification "
            f"reads (--max-blocks changes it); the rest of {path} and after was not read")

    def skip(self, name: str, detail: str) -> None:
        self.checks[name].status = "skip"
        self.checks[name].detail = detail

    # 1 ----------------------------------------------------------------------------------------------
    def check_files(self) -> None:
        files: dict[str, Any] = self.bundle.manifest["files"]
        check = self.checks["files"]
        for name, entry in sorted(files.items()):
            check.count += 1
            want = entry.get("sha256") if isinstance(entry, dict) else None
            if name not in self.bundle.names:
                self.fail(Failure("file_missing", "listed in the manifest, not in the zip", path=name))
                continue
            try:
                got = self.bundle.sha256(name)
            except _EntryTooLarge as exc:
                self.too_large.add(name)
                # past the bytes the manifest declares, the file is not the one it lists
                self.fail(Failure("file_digest_mismatch" if exc.declared else "entry_too_large",
                                  f"{exc}: not read further", path=name))
                continue
            except _ZIP_ERRORS as exc:
                self.fail(Failure("file_digest_mismatch", f"the zip entry is damaged: {exc}", path=name))
                continue
            if got != want:
                self.fail(Failure("file_digest_mismatch",
                                  f"SHA-256 is {got}, the manifest says {want}", path=name))
        for name in sorted(self.bundle.names - files.keys() - {MANIFEST}):
            self.warnings.append(Failure("unlisted_file", "in the zip, not in the manifest", path=name))
        check.detail = "every file's SHA-256 matches the manifest"

    def _document(self, name: str, code: str = "malformed_file") -> Any:
        if name not in self.bundle.names:
            self.fail(Failure("file_missing", "named by the manifest, not in the zip", path=name))
            return None
        try:
            return json.loads(self.bundle.read(name))
        except (*_ZIP_ERRORS, ValueError) as exc:
            self.fail_entry(exc, code, f"not JSON: {exc}", name)
            return None

    # 2 ----------------------------------------------------------------------------------------------
    def check_keys(self) -> list[CollectorKey]:
        path = self.bundle.manifest["collectors_file"]
        document = self._document(path)
        keys: list[CollectorKey] = []
        entries = document.get("collectors") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            if document is not None:
                self.fail(Failure("malformed_file", "expected {\"collectors\": [...]}", path=path))
            self.skip("keys", "no collector keys to check")
            return keys
        check = self.checks["keys"]
        for entry in entries:
            try:
                collector = CollectorInfo.from_json(entry)
            except BundleFormatError as exc:
                self.fail(Failure("malformed_file", str(exc), path=path))
                continue
            for key in collector.keys:
                check.count += 1
                actual = key_id_of(key.public_key)
                if actual != key.key_id:
                    self.fail(Failure("key_id_mismatch",
                                      f"key listed as {key.key_id} has key id {actual} (the first 16 hex "
                                      "digits of SHA-256 of the key): blocks signed as "
                                      f"{key.key_id} cannot be checked with it", collector.collector_id))
                try:
                    check_public_key(key.public_key)
                except UnacceptableKeyError as exc:
                    self.fail(Failure("unacceptable_key", f"key {actual}: {exc}", collector.collector_id))
                    continue
                # indexed by the id the key really has: a mislabelled key verifies nothing
                keys.append(CollectorKey(collector.collector_id, actual, key.public_key,
                                         key.enrolled_unix_ms))
        check.detail = "every key id is SHA-256 of its key"
        return keys

    # 3, 4 -------------------------------------------------------------------------------------------
    def check_blocks(self, keys: list[CollectorKey]) -> None:
        # ChainAudit reads only the values of its key map: one entry per (collector, key id)
        audit = ChainAudit(keys={f"{k.collector_id}/{k.key_id}": k for k in keys})
        seen: set[str] = set()
        for entry in self.bundle.manifest["collectors"]:
            collector_id = entry["collector_id"]
            if collector_id in seen:
                continue
            seen.add(collector_id)
            rows = self._read_blocks(collector_id, entry["blocks"])
            ranges = [(int(r[0]), int(r[1])) for r in entry.get("ranges", [])
                      if isinstance(r, list) and len(r) == 2 and all(isinstance(x, int) for x in r)]
            self._check_chain(collector_id, rows, ranges)
            for row in rows:
                audit.feed(row)
            self.rows[collector_id] = rows
        for finding in audit.report.findings:
            location = (finding.collector_id, finding.sequence)
            if finding.problem == "bad_signature":
                self.bad_signatures.add(location)
                self.fail(Failure("bad_signature", finding.detail, *location))
            elif finding.problem in FAILURE_CODES:
                self.fail(Failure(finding.problem, finding.detail, *location))
            # "gap": the bundle holds ranges of a chain; missing blocks are judged above
        for warning in audit.report.warnings:
            self.warnings.append(Failure(warning.problem, warning.detail, warning.collector_id,
                                         warning.sequence))
        blocks = sum(len(rows) for rows in self.rows.values())
        self.checks["signatures"].count = blocks
        self.checks["signatures"].detail = "every block's Ed25519 signature verifies with its key"
        self.checks["chains"].count = blocks
        self.checks["chains"].detail = (f"{len(self.rows)} collector(s): in order, linked, nothing "
                                        "missing from the first to the last readings block")

    def _read_blocks(self, collector_id: str, path: str) -> list[StoredRow]:
        """The collector's blocks, sorted and unique, after naming disorder and duplicates. A
        repeated sequence keeps its first line only (a file of one block repeated costs no
        memory per line), and at most `budget` lines are read."""
        if path not in self.bundle.names:
            self.fail(Failure("file_missing", "named by the manifest, not in the zip", path=path))
            return []
        budget, too_many = self.budget(collector_id, path, "blocks", self.blocks_read)
        order: list[int] = []  # the sequences in file order
        unique: dict[int, StoredRow] = {}
        repeats: dict[int, list[bool]] = {}  # sequence -> per repeat, whether its bytes differ
        lines = 0
        try:
            for number, raw in enumerate(self.bundle.lines(path), start=1):
                if number > budget:
                    self.fail(Failure("too_many_blocks", too_many, collector_id))
                    break
                lines = number
                try:
                    line = BlockLine.from_json(json.loads(raw), f"line {number}")
                except (ValueError, BundleFormatError) as exc:
                    self.fail(Failure("malformed_file", str(exc), path=path))
                    continue
                order.append(line.sequence)
                kept = unique.get(line.sequence)
                if kept is not None:
                    repeats.setdefault(line.sequence, []).append(kept.payload != line.payload)
                    continue
                unique[line.sequence] = StoredRow(number, collector_id, line.sequence,
                                                  hashlib.sha256(line.payload).digest(),
                                                  line.payload, line.signature, line.key_id)
                self.leaves[(collector_id, line.sequence)] = line.leaf_index
        except _ZIP_ERRORS as exc:
            self.fail_entry(exc, "malformed_file", str(exc), path)
        self.blocks_read += lines
        for failure in _order_failures(collector_id, order):
            self.fail(failure)
        for sequence, differ in sorted(repeats.items()):
            for fork in differ:
                self.fail(Failure("duplicate_block", f"sequence {sequence} appears twice"
                                  f"{' with different bytes: a fork' if fork else ''}",
                                  collector_id, sequence))
        ordered = dict(sorted(unique.items()))
        self._payload_swaps(collector_id, ordered)
        return list(ordered.values())

    def _payload_swaps(self, collector_id: str, rows: Mapping[int, StoredRow]) -> None:
        """Two blocks whose payloads are listed under each other's sequence (the lines kept in
        order): named as a swap, besides the mislabelled blocks ChainAudit names."""
        claimed: dict[int, int] = {}
        for sequence, row in rows.items():
            try:
                block = decode_block(row.payload)
            except VerificationError:
                continue
            if block.sequence != sequence and block.collector_id == collector_id:
                claimed[sequence] = block.sequence
        for a, b in sorted(claimed.items()):
            if a < b and claimed.get(b) == a:
                self.fail(Failure("blocks_swapped", f"the payloads of blocks {a} and {b} are exchanged: "
                                  f"each is listed under the other's sequence", collector_id, a))

    def _check_chain(self, collector_id: str, rows: list[StoredRow],
                     ranges: list[tuple[int, int]]) -> None:
        """Missing blocks (inside a declared range, or between the first and the last readings
        block) and blocks the manifest does not declare."""
        present = [row.sequence for row in rows]
        readings = []
        for row in rows:
            try:
                if decode_block(row.payload).kind == pb.BLOCK_KIND_READINGS:
                    readings.append(row.sequence)
            except VerificationError:
                continue  # named by ChainAudit
        spans = list(ranges)
        if readings:
            spans.append((readings[0], readings[-1]))
        for first, last in _missing(present, spans):
            self.fail(Failure("block_missing", f"{_span_text(first, last)} missing (the bundle "
                              f"declares {_ranges_text(ranges)})", collector_id, first))
        if ranges:
            outside = [s for s in present if not any(a <= s <= b for a, b in ranges)]
            for first, last in _runs(outside):
                self.fail(Failure("undeclared_block", f"{_span_text(first, last)} not in the "
                                  f"ranges the manifest declares ({_ranges_text(ranges)})",
                                  collector_id, first))

    # 5 ----------------------------------------------------------------------------------------------
    def check_checkpoint(self) -> None:
        check = self.checks["checkpoint"]
        bundle_key = str(self.bundle.manifest["log"]["verifier_key"])
        key_text = bundle_key
        if self.pinned_key is not None:
            key_text = self.pinned_key
            if bundle_key.strip() != self.pinned_key.strip():
                self.fail(Failure("log_key_mismatch", f"the bundle's log key is {bundle_key}, the "
                                  f"pinned one is {self.pinned_key}"))
        else:
            self.warnings.append(Failure("log_key_not_pinned", "the checkpoint and the report were "
                                         f"checked with the log key the bundle carries ({bundle_key}); "
                                         "give the key you trust with --log-key"))
        try:
            self.log_name, self.log_public_key = parse_verifier_key(key_text)
        except (CheckpointError, ValueError) as exc:  # ValueError: non-ASCII base64
            self.fail(Failure("checkpoint_malformed", f"the log key: {exc}"))
            self.skip("checkpoint", "no usable log key")
            return
        path = self.bundle.manifest["log"]["checkpoint"]
        failed_before = self._failure_count()
        document = self._document(path, "checkpoint_malformed")
        if document is None:
            if self._failure_count() == failed_before:  # JSON null
                self.fail(Failure("checkpoint_malformed", "null where the checkpoint belongs: "
                                  "a bundle without a checkpoint proves nothing", path=path))
            self.skip("checkpoint", "no checkpoint")
            return
        try:
            current = CheckpointInfo.from_json(document)
        except BundleFormatError as exc:
            self.fail(Failure("checkpoint_malformed", str(exc), path=path))
            self.skip("checkpoint", "no checkpoint")
            return
        check.count = 1
        self.checkpoint, self.checkpoint_signed = self._open(current, path, "the checkpoint")
        previous = document.get("previous")
        if previous is None or self.checkpoint is None:
            check.detail = (f"signed by {self.log_name}, tree size {self.checkpoint.size}"
                            if self.checkpoint is not None else "")
            return
        check.count = 2
        try:
            earlier_info = CheckpointInfo.from_json(previous, "previous checkpoint")
            proof = _consistency_proof(previous.get("consistency"))
        except BundleFormatError as exc:
            self.fail(Failure("checkpoint_malformed", str(exc), path=path))
            return
        earlier, earlier_signed = self._open(earlier_info, path, "the previous checkpoint")
        if earlier is None or not (earlier_signed and self.checkpoint_signed):
            return
        try:
            verify_consistency(old_size=earlier.size, new_size=self.checkpoint.size,
                               old_root=earlier.root_hash, new_root=self.checkpoint.root_hash,
                               proof=proof)
        except ProofError as exc:
            self.fail(Failure("checkpoint_fork", f"the checkpoint of size {self.checkpoint.size} and "
                              f"the log's previous one of size {earlier.size} are both signed by "
                              f"{self.log_name}, and the proof that one extends the other fails "
                              f"({exc}): a forked log, or a checkpoint from another history",
                              path=path))
            return
        check.detail = (f"signed by {self.log_name}, tree size {self.checkpoint.size}, extends the "
                        f"previous checkpoint of size {earlier.size}")

    def _open(self, info: CheckpointInfo, path: str, what: str) -> tuple[Checkpoint | None, bool]:
        """The checkpoint a note states, and whether the log key signed it (if it parses)."""
        try:
            checkpoint = parse_checkpoint(info.note, name=self.log_name, public_key=self.log_public_key)
            signed = True
        except (CheckpointError, ValueError) as exc:  # ValueError: text that is not UTF-8-able
            self.fail(Failure("checkpoint_signature_invalid", f"{what}: {exc}", path=path))
            checkpoint = Checkpoint(self.log_name, info.tree_size, info.root_hash)
            signed = False
        if signed and checkpoint.origin != self.log_name:
            self.fail(Failure("checkpoint_malformed", f"{what} is of log {checkpoint.origin!r}, "
                              f"not {self.log_name!r}", path=path))
        if (checkpoint.size, checkpoint.root_hash) != (info.tree_size, info.root_hash):
            self.fail(Failure("checkpoint_malformed", f"{what}: tree_size and root_hash are not the "
                              "signed note's (the note counts)", path=path))
        return checkpoint, signed

    # 6 ----------------------------------------------------------------------------------------------
    def check_inclusion(self) -> None:
        check = self.checks["inclusion"]
        if self.checkpoint is None:
            self.skip("inclusion", "no checkpoint to prove against")
            return
        proofs = self._read_proofs()
        # the failures of correctly signed blocks and of the others, the first MAX_LISTED of each
        # (with their position, to list them in order), and how many there are
        failed: dict[bool, list[tuple[int, Failure]]] = {True: [], False: []}
        counted: Counter[bool] = Counter()
        checked_signed = failed_signed = 0
        used: dict[int, tuple[str, int]] = {}
        for collector_id, rows in sorted(self.rows.items()):
            for row in rows:
                check.count += 1
                location = (collector_id, row.sequence)
                proof = proofs.get(location)
                if proof is None:
                    self.fail(Failure("inclusion_proof_missing", "no inclusion proof", *location))
                    continue
                problem = self._inclusion_problem(row, proof)
                if problem is None and proof.leaf_index in used:
                    other = used[proof.leaf_index]
                    problem = f"leaf {proof.leaf_index} is also given for {other[0]} block {other[1]}"
                used.setdefault(proof.leaf_index, location)
                signed = location not in self.bad_signatures
                checked_signed += signed
                if problem is not None:
                    failed_signed += signed
                    counted[signed] += 1
                    if len(failed[signed]) < MAX_LISTED:
                        failed[signed].append((check.count, Failure("inclusion_proof_invalid",
                                                                    problem, *location)))
        if self.checkpoint_signed and checked_signed and failed_signed == checked_signed:
            size = {p.tree_size for p in proofs.values()}
            self.fail(Failure("checkpoint_fork", f"the checkpoint (tree size {self.checkpoint.size}, root "
                              f"{self.checkpoint.root_hash.hex()[:16]}...) is signed by {self.log_name}, "
                              f"yet none of the {checked_signed} inclusion proofs (to tree size(s) "
                              f"{', '.join(map(str, sorted(size)))}) leads to its root: the log key signed "
                              "a history in which these blocks are not where the log's proofs put them "
                              "(a forked log, or a checkpoint taken from another log state)"))
            failed[True], counted[True] = [], 0
        for _, failure in sorted(failed[True] + failed[False], key=lambda item: item[0]):
            self.fail(failure)
        self.unlisted["inclusion_proof_invalid"] += (counted[True] - len(failed[True])
                                                     + counted[False] - len(failed[False]))
        check.detail = f"every block is a leaf of the checkpoint's tree of size {self.checkpoint.size}"

    def _inclusion_problem(self, row: StoredRow, proof: InclusionProof) -> str | None:
        assert self.checkpoint is not None
        listed = self.leaves.get((row.collector_id, row.sequence))
        if listed is not None and listed != proof.leaf_index:
            return f"the block line says leaf {listed}, its proof says leaf {proof.leaf_index}"
        if proof.tree_size != self.checkpoint.size:
            return f"the proof is to tree size {proof.tree_size}, the checkpoint's is {self.checkpoint.size}"
        try:
            verify_inclusion(leaf_hash=leaf_hash(row.payload), index=proof.leaf_index,
                             size=proof.tree_size, proof=proof.hashes, root=self.checkpoint.root_hash)
        except ProofError as exc:
            return f"leaf {proof.leaf_index}: {exc}"
        return None

    def _read_proofs(self) -> dict[tuple[str, int], InclusionProof]:
        proofs: dict[tuple[str, int], InclusionProof] = {}
        for entry in self.bundle.manifest["collectors"]:
            path = entry["proofs"]
            if path not in self.bundle.names:
                self.fail(Failure("file_missing", "named by the manifest, not in the zip", path=path))
                continue
            budget, too_many = self.budget(entry["collector_id"], path, "proofs", self.proofs_read)
            try:
                for number, raw in enumerate(self.bundle.lines(path), start=1):
                    if number > budget:
                        self.fail(Failure("too_many_blocks", too_many, entry["collector_id"]))
                        break
                    self.proofs_read += 1
                    try:
                        proof = parse_inclusion_proof(json.loads(raw), f"line {number}")
                    except (ValueError, BundleFormatError) as exc:
                        self.fail(Failure("malformed_file", str(exc), path=path))
                        continue
                    if proof.collector_id != entry["collector_id"]:
                        self.fail(Failure("malformed_file", f"line {number}: a proof of collector "
                                          f"{proof.collector_id} in {entry['collector_id']}'s file",
                                          path=path))
                    proofs.setdefault((proof.collector_id, proof.sequence), proof)
            except _ZIP_ERRORS as exc:
                self.fail_entry(exc, "malformed_file", str(exc), path)
        return proofs

    # 7 ----------------------------------------------------------------------------------------------
    def check_report(self) -> bytes | None:
        check = self.checks["report"]
        paths = self.bundle.manifest["report"]
        body_path, signature_path = paths["body"], paths["signature"]
        if body_path not in self.bundle.names:
            self.fail(Failure("file_missing", "named by the manifest, not in the zip", path=body_path))
            self.skip("report", "no report")
            return None
        try:
            body = self.bundle.read(body_path)
        except _ZIP_ERRORS as exc:
            self.fail_entry(exc, "report_malformed", f"cannot be read: {exc}", body_path)
            self.skip("report", "no report")
            return None
        try:
            self.report_document = _report_document(body)
        except ValueError as exc:
            self.fail(Failure("report_malformed", str(exc), path=body_path))
        failed_before = self._failure_count()
        signature_document = self._document(signature_path, "report_malformed")
        if (signature_document is None
                and self._failure_count() == failed_before):
            self.fail(Failure("report_malformed", "null where the report's signature belongs: "
                              "an unsigned report is not the gateway's", path=signature_path))
        if signature_document is None or not self.log_public_key:
            self.skip("report", "no signature, or no log key, to check")
            return body
        check.count = 1
        try:
            signature = parse_base64(signature_document.get("signature"), "signature")
        except (BundleFormatError, AttributeError) as exc:
            self.fail(Failure("report_malformed", f"the signature: {exc}", path=signature_path))
            return body
        if not verify_report_signature(body, signature, self.log_public_key):
            signer = signature_document.get("log_key")
            self.fail(Failure("report_signature_invalid", f"the report's signature does not verify with "
                              f"the log key of {self.log_name} (the bundle says it was signed by "
                              f"{signer}): the report is not the one the gateway signed", path=body_path))
        check.detail = f"signed by the log key of {self.log_name}"
        return body

    # 8 ----------------------------------------------------------------------------------------------
    def check_methodology(self) -> None:
        check = self.checks["methodology"]
        if self.report_document is None:
            self.skip("methodology", "no report to cite one")
            return
        cited = self.report_document["methodology"]
        name, digest = str(cited.get("name")), str(cited.get("digest"))
        entry = next((m for m in self.bundle.manifest["methodologies"]
                      if isinstance(m, dict) and m.get("name") == name), None)
        path = entry.get("path") if entry is not None else None
        if not isinstance(path, str) or path not in self.bundle.names:
            self.fail(Failure("methodology_missing", f"the report cites methodology {name}, and the "
                              "bundle has no file of it"))
            self.skip("methodology", "")
            return
        check.count = 1
        try:
            methodology = parse_methodology(self.bundle.read(path).decode("utf-8"),
                                            source=f"{self.bundle.path.name}:{path}", expected_name=name)
        except (MethodologyError, UnicodeDecodeError, *_ZIP_ERRORS) as exc:
            self.fail_entry(exc, "methodology_invalid", str(exc), path)
            return
        self.methodology = methodology
        if methodology.digest != digest:
            self.fail(Failure("methodology_digest_mismatch", f"the file's digest is {methodology.digest}, "
                              f"the report cites {digest}: the file is not the methodology the report "
                              "was computed with", path=path))
        check.detail = f"{name}, digest {methodology.digest[:16]}..."

    # 9 ----------------------------------------------------------------------------------------------
    async def recompute(self, body: bytes | None) -> None:
        check = self.checks["recomputation"]
        if body is None or self.report_document is None or self.methodology is None:
            self.skip("recomputation", "needs a report and its methodology file")
            return
        report = self.report_document
        try:
            plant_id = str(report["plant"]["id"])
            unit_id = str(report["unit"])
            start = date.fromisoformat(report["period"]["from"])
            end = date.fromisoformat(report["period"]["to"])
            gateway_id = str(report["gateway"])
        except (KeyError, TypeError, ValueError) as exc:
            self.fail(Failure("report_malformed", f"no plant, unit, period or gateway: {exc!r}"))
            self.skip("recomputation", "")
            return
        manifest = self.bundle.manifest
        said = (manifest["plant"], manifest["unit"], manifest["period"]["from"], manifest["period"]["to"])
        if said != (plant_id, unit_id, start.isoformat(), end.isoformat()):
            self.fail(Failure("period_mismatch", f"the manifest is of {said}, the report of "
                              f"{(plant_id, unit_id, start.isoformat(), end.isoformat())}"))
        verified = {cid: [row for row in rows if (cid, row.sequence) not in self.bad_signatures]
                    for cid, rows in self.rows.items()}
        try:
            data = await load_unit_data(_Blocks(verified), unit_id=unit_id, start=start, end=end,
                                        plant_id=plant_id)
            configured = Path(data.unit.methodology).name.rsplit(".", 1)[0] if data.unit.methodology.endswith(
                (".yaml", ".yml")) else data.unit.methodology
            if configured != self.methodology.name:
                self.fail(Failure("methodology_not_configured", f"the unit's signed configuration names "
                                  f"methodology {data.unit.methodology}, the report "
                                  f"{self.methodology.name}"))
            document = account_unit(unit=data.unit, blocks=data.blocks, start=start, end=end,
                                    methodology=self.methodology, gateway_id=gateway_id)
            text = render_json(document)
        except (GatewayError, ValueError, KeyError, TypeError, ArithmeticError, VerificationError) as exc:
            # the configuration comes from signed blocks, yet a verifier names what it cannot use
            self.fail(Failure("recomputation_failed", f"{type(exc).__name__}: {exc}"))
            self.skip("recomputation", "")
            return
        check.count = _leaves(report)
        check.detail = "the report recomputed from the bundle's blocks is the same, byte for byte"
        if text.encode("utf-8") == body:
            return
        differences = 0
        for path, theirs, ours in _figures(report, json.loads(text)):
            differences += 1
            self.fail(Failure("figure_mismatch", f"report {_shown(theirs)}, recomputed {_shown(ours)}",
                              path=path))
        if not differences:
            self.fail(Failure("report_not_canonical", "every figure matches, but the report's bytes are "
                              "not the canonical JSON rendering (keys sorted, two-space indent)"))

    def finish(self) -> list[CheckResult]:
        for code, count in sorted(self.unlisted.items()):
            if count:
                self.failures.append(Failure(code, f"and {count:,} more failure(s) of this code, "
                                             "not listed"))
        for failure in self.failures:
            check = self.checks.get(failure.check)
            if check is not None:
                check.status = "fail"
        return list(self.checks.values())


def _consistency_proof(value: object) -> list[bytes]:
    if not isinstance(value, list):
        raise BundleFormatError("previous checkpoint: 'consistency' must be a list of base64 hashes")
    return [parse_base64(h, f"previous checkpoint consistency hash {i}") for i, h in enumerate(value)]


def _report_document(body: bytes) -> dict[str, Any]:
    document = json.loads(body)
    if not isinstance(document, dict) or not isinstance(document.get("methodology"), dict):
        raise ValueError("not a report document (no methodology object)")  # noqa: TRY004 - a format error
    return document


def _ranges_text(ranges: Sequence[tuple[int, int]]) -> str:
    return ", ".join(f"{a}..{b}" for a, b in ranges) or "no ranges"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


async def verify_bundle(path: Path, *, log_key: str | None = None,
                        max_blocks: int = MAX_BUNDLE_BLOCKS,
                        max_collector_blocks: int | None = None) -> Verdict:
    """Check the bundle at `path`; NotABundleError when it is not one, LogKeyError when
    `log_key` is not a verifier key.

    At most `max_blocks` blocks, and as many proofs, are read from the bundle, and at most
    `max_collector_blocks` (default: MAX_COLLECTOR_BLOCKS, or `max_blocks` when that is larger)
    from one collector's file: more is the failure too_many_blocks."""
    if max_collector_blocks is None:
        max_collector_blocks = max(MAX_COLLECTOR_BLOCKS, max_blocks)
    if log_key is not None:
        try:  # a usage error, before any work
            parse_verifier_key(log_key)
        except (CheckpointError, ValueError) as exc:
            raise LogKeyError(f"--log-key is not a log's verifier key (name+keyid+key): {exc}") from exc
    bundle = _Bundle(Path(path))
    try:
        run = _Verification(bundle, log_key, max_blocks, max_collector_blocks)
        run.check_files()
        keys = run.check_keys()
        run.check_blocks(keys)
        run.check_checkpoint()
        run.check_inclusion()
        body = run.check_report()
        run.check_methodology()
        await run.recompute(body)
        checks = run.finish()
    finally:
        bundle.zip.close()
    manifest = bundle.manifest
    info = {
        "plant": manifest["plant"], "unit": manifest["unit"],
        "period": {k: manifest["period"].get(k) for k in ("from", "to", "timezone")},
        "source": manifest.get("source"),
        "log": {"origin": run.log_name or None, "verifier_key": manifest["log"]["verifier_key"],
                "pinned": log_key is not None,
                "tree_size": run.checkpoint.size if run.checkpoint is not None else None},
        "collectors": [{"collector_id": cid, "blocks": len(rows),
                        "ranges": [list(r) for r in _runs([row.sequence for row in rows])]}
                       for cid, rows in sorted(run.rows.items())],
    }
    return Verdict(str(path), _sha256_file(Path(path)), info, checks, run.failures, run.warnings,
                   int(time.time() * 1000), {k: v for k, v in sorted(run.unlisted.items()) if v})


# --- the readable verdict ---------------------------------------------------------------------------


def render_verdict(verdict: Verdict, *, max_lines: int = 50) -> str:
    """A summary a verifier can attach to an audit: what was checked, a table of checks with
    PASS/FAIL and counts, the failures and warnings, and the verdict."""
    info = verdict.info
    period = info["period"]
    log = info["log"]
    lines = [
        f"Evidence bundle  {verdict.bundle}",
        f"  sha256         {verdict.bundle_sha256}",
        f"  unit           {info['unit']} of plant {info['plant']}, local days {period['from']} to "
        f"{period['to']} (exclusive), {period['timezone']}",
        f"  log            {log['origin'] or '?'}, checkpoint at tree size {log['tree_size']}, key "
        f"{'pinned with --log-key' if log['pinned'] else 'NOT pinned (taken from the bundle)'}",
    ]
    for collector in info["collectors"]:
        ranges = ", ".join(f"{a}..{b}" for a, b in collector["ranges"])
        lines.append(f"  collector      {collector['collector_id']}: {collector['blocks']} blocks ({ranges})")
    lines.append("")
    rows = [("check", "result", "count", "detail")]
    failed_by_check: dict[str, int] = {}
    for failure in verdict.failures:
        failed_by_check[failure.check] = failed_by_check.get(failure.check, 0) + 1
    for code, count in verdict.unlisted.items():  # one entry of the code already says how many
        check_name = FAILURE_CODES[code][0]
        failed_by_check[check_name] = failed_by_check.get(check_name, 0) + count - 1
    for check in verdict.checks:
        status = check.status.upper()
        detail = (check.detail if check.status != "fail"
                  else f"{failed_by_check.get(check.name, 0)} failure(s)")
        rows.append((CHECKS[check.name], status, str(check.count), detail))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for index, row in enumerate(rows):
        lines.append(f"{row[0].ljust(widths[0])}  {row[1].ljust(widths[1])}  {row[2].rjust(widths[2])}  "
                     f"{row[3]}".rstrip())
        if index == 0:
            lines.append(f"{'-' * widths[0]}  {'-' * widths[1]}  {'-' * widths[2]}  {'-' * 6}")
    if verdict.failures or verdict.warnings:
        lines.append("")
    for failure in verdict.failures[:max_lines]:
        lines.append(f"FAIL  {failure.code}  {failure.where()}{failure.detail}")
    if len(verdict.failures) > max_lines:
        lines.append(f"...   and {len(verdict.failures) - max_lines} more failures (use --json for all)")
    for warning in verdict.warnings[:max_lines]:
        lines.append(f"WARN  {warning.code}  {warning.where()}{warning.detail}")
    lines.append("")
    if verdict.ok:
        lines.append("VERDICT  PASS: every check holds" + (
            f" ({len(verdict.warnings)} warning(s))" if verdict.warnings else ""))
    else:
        failed = [CHECKS[c.name] for c in verdict.checks if c.status == "fail"]
        lines.append(f"VERDICT  FAIL: {len(verdict.failures)} failure(s) in {', '.join(failed)}")
    return "\n".join(lines) + "\n"
