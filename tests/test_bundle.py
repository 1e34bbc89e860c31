"""Evidence bundles: `export_bundle` over a ledger and its transparency log writes one zip that
`verify_bundle` passes offline; each kind of tampering is caught and named by its own failure code,
also when the forger rewrites the manifest's digests to match; `stackline verify --bundle` prints
the verdict and exits 0, 1 or 2; `stackline export` does the same over the gateway's HTTP API."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import time
import zipfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.accounting.methodology import MethodologyFile
from gateway.bundle import BlockKindName, ExportError, LedgerSource, export_bundle
from gateway.bundle_verify import (
    FAILURE_CODES,
    MAX_LISTED,
    LogKeyError,
    NotABundleError,
    Verdict,
    _missing,
    _order_failures,
    render_verdict,
    verify_bundle,
)
from gateway.ledger import Ledger, SqliteLedger, VerifiedBlock
from gateway.translog.checkpoint import verifier_key
from gateway.translog.log import TransparencyLog
from gateway.verifier_documents import BlockLine
from tests.demo_blocks import DemoCollector
from tests.support import run_stackline
from tests.test_accounting_unit import DAY, day_of_blocks

ORIGIN = "stackline.test/bundle-log"
COLLECTOR = "demo-plant-c1"
NEXT_DAY = DAY + timedelta(days=1)
TAMPERED_SEQUENCE = 700


@dataclass(frozen=True)
class Built:
    """A ledger of the demo collector's generated day, its log key, and the bundle exported from it."""

    bundle: Path
    ledger: Path
    signing_key: nacl.signing.SigningKey
    log_key: str
    blocks: list[VerifiedBlock]
    plant: DemoCollector


async def _store(ledger: Ledger, collector_id: str, blocks: list[VerifiedBlock]) -> None:
    for start in range(0, len(blocks), 500):
        result = await ledger.append(collector_id, blocks[start:start + 500], transport="test",
                                     peer="test", received_unix_ms=0)
        assert result.refused is None, result.refused


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The day stored in two halves with a checkpoint published between them (so the bundle holds
    a previous checkpoint and a consistency proof), then exported."""
    directory = tmp_path_factory.mktemp("bundle")
    plant = DemoCollector(COLLECTOR)
    day, _ = day_of_blocks()
    blocks = [plant.config_block()[1]] + [plant.reseal(entry.block)[1] for entry in day]
    signing_key = nacl.signing.SigningKey.generate()
    out = directory / "unit-1.zip"
    messages: list[str] = []

    async def build() -> None:
        ledger = SqliteLedger(path=directory / "ledger.sqlite")
        try:
            await ledger.enroll(plant.key)
            log = TransparencyLog(ledger=ledger, origin=ORIGIN, signing_key=signing_key)
            await log.start()
            await _store(ledger, COLLECTOR, blocks[:600])
            await log.publish()
            await _store(ledger, COLLECTOR, blocks[600:])
            summary = await export_bundle(LedgerSource(ledger=ledger, log=log, gateway_id="gw-1"),
                                          unit_id="unit-1", start=DAY, end=NEXT_DAY, out=out,
                                          progress=messages.append)
            assert summary.blocks == len(blocks) and summary.tree_size == len(blocks)
        finally:
            await ledger.close()

    asyncio.run(build())
    assert any("1,440 blocks 2..1441" in m for m in messages), messages
    assert any("proofs fetched" in m for m in messages), messages
    return Built(out, directory / "ledger.sqlite", signing_key,
                 verifier_key(ORIGIN, bytes(signing_key.verify_key)), blocks, plant)


def _verify(path: Path, log_key: str | None) -> Verdict:
    return asyncio.run(verify_bundle(path, log_key=log_key))


def _entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _tamper(built: Built, tmp_path: Path, change: Callable[[dict[str, bytes]], None], *,
            fix_manifest: bool = True) -> Path:
    """A copy of the bundle changed by `change`; with `fix_manifest`, the forger also rewrites the
    manifest's SHA-256 of every file (the manifest is not signed), so only the deeper checks are left."""
    entries = _entries(built.bundle)
    change(entries)
    return _write_bundle(entries, tmp_path / "tampered.zip", fix_manifest=fix_manifest)


@contextlib.asynccontextmanager
async def _logged_ledger(path: Path, plant: DemoCollector, blocks: list[VerifiedBlock], *,
                         signing_key: nacl.signing.SigningKey | None = None
                         ) -> AsyncIterator[tuple[SqliteLedger, TransparencyLog]]:
    """A SQLite ledger holding the plant's `blocks`, with its transparency log started; closed
    afterwards."""
    ledger = SqliteLedger(path=path)
    try:
        await ledger.enroll(plant.key)
        await _store(ledger, plant.collector_id, blocks)
        log = TransparencyLog(ledger=ledger, origin=ORIGIN,
                              signing_key=signing_key or nacl.signing.SigningKey.generate())
        await log.start()
        yield ledger, log
    finally:
        await ledger.close()


def _write_bundle(entries: dict[str, bytes], path: Path, *, fix_manifest: bool = True) -> Path:
    """A zip of `entries`; with `fix_manifest`, the manifest's SHA-256 and size of every file
    rewritten to match them (what a forger does: the manifest is not signed)."""
    if fix_manifest:
        manifest = json.loads(entries["manifest.json"])
        manifest["files"] = {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                             for name, data in sorted(entries.items()) if name != "manifest.json"}
        entries = {**entries, "manifest.json": json.dumps(manifest, indent=2).encode()}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def _lines(entries: dict[str, bytes], name: str) -> list[bytes]:
    return entries[name].splitlines(keepends=True)


def _line_of(lines: list[bytes], sequence: int) -> int:
    return next(i for i, line in enumerate(lines) if json.loads(line)["sequence"] == sequence)


BLOCKS_FILE = f"blocks/{COLLECTOR}.ndjson"


# --- a clean bundle -------------------------------------------------------------------------------


def test_a_clean_bundle_passes_every_check(built: Built) -> None:
    verdict = _verify(built.bundle, built.log_key)
    assert verdict.ok, [f.to_json() for f in verdict.failures]
    assert not verdict.warnings
    assert {c.name: c.status for c in verdict.checks} == dict.fromkeys(
        ("files", "keys", "signatures", "chains", "checkpoint", "inclusion", "report", "methodology",
         "recomputation"), "pass")
    counts = {c.name: c.count for c in verdict.checks}
    assert counts["signatures"] == counts["inclusion"] == 1441
    assert counts["checkpoint"] == 2  # the fresh one, and the previous one it extends
    assert counts["recomputation"] > 1000  # every figure of the report
    assert verdict.info["collectors"] == [{"collector_id": COLLECTOR, "blocks": 1441,
                                           "ranges": [[1, 1441]]}]
    assert verdict.bundle_sha256 == hashlib.sha256(built.bundle.read_bytes()).hexdigest()


def test_the_bundle_holds_what_the_manifest_says(built: Built) -> None:
    entries = _entries(built.bundle)
    manifest = json.loads(entries["manifest.json"])
    assert manifest["format"] == "stackline.bundle/v1"
    assert manifest["period"] == {"from": "2026-11-10", "to": "2026-11-11", "timezone": "Asia/Shanghai",
                                  "start_unix_ms": manifest["period"]["start_unix_ms"],
                                  "end_unix_ms": manifest["period"]["start_unix_ms"] + 86_400_000}
    assert manifest["collectors"] == [{"collector_id": COLLECTOR, "blocks": BLOCKS_FILE,
                                       "proofs": f"proofs/{COLLECTOR}.ndjson", "ranges": [[1, 1441]],
                                       "block_count": 1441}]
    assert set(manifest["files"]) == set(entries) - {"manifest.json"}
    for name, entry in manifest["files"].items():
        assert hashlib.sha256(entries[name]).hexdigest() == entry["sha256"]
    # the blocks are the stored bytes, and the report is what `stackline report` prints
    lines = [json.loads(line) for line in _lines(entries, BLOCKS_FILE)]
    assert [base64.b64decode(line["payload"]) for line in lines] == [b.payload for b in built.blocks]
    report = run_stackline("report", "--ledger", str(built.ledger), "--unit", "unit-1", "--from",
                           DAY.isoformat(), "--to", NEXT_DAY.isoformat(), "--gateway-id", "gw-1",
                           timeout_s=120)
    assert report.returncode == 0, report.stderr
    assert entries["report/report.json"] == report.stdout.encode()
    assert entries["methodology/cn-mee-2022.yaml"].startswith(b"#") or b"methodology:" in entries[
        "methodology/cn-mee-2022.yaml"]
    checkpoint = json.loads(entries["log/checkpoint.json"])
    assert checkpoint["tree_size"] == 1441 and checkpoint["previous"]["tree_size"] == 600


def test_an_unpinned_log_key_passes_with_a_warning(built: Built) -> None:
    verdict = _verify(built.bundle, None)
    assert verdict.ok
    assert [w.code for w in verdict.warnings] == ["log_key_not_pinned"]


# --- tampering, each named by its own code ------------------------------------------------------


def test_a_changed_byte_in_a_block_is_a_bad_signature(built: Built, tmp_path: Path) -> None:
    def flip(entries: dict[str, bytes]) -> None:
        lines = _lines(entries, BLOCKS_FILE)
        index = _line_of(lines, TAMPERED_SEQUENCE)
        line = json.loads(lines[index])
        payload = bytearray(base64.b64decode(line["payload"]))
        payload[len(payload) // 2] ^= 0x01
        line["payload"] = base64.b64encode(bytes(payload)).decode()
        lines[index] = json.dumps(line).encode() + b"\n"
        entries[BLOCKS_FILE] = b"".join(lines)

    verdict = _verify(_tamper(built, tmp_path, flip), built.log_key)
    assert not verdict.ok
    bad = [f for f in verdict.failures if f.code == "bad_signature"]
    assert [(f.collector_id, f.sequence) for f in bad] == [(COLLECTOR, TAMPERED_SEQUENCE)]
    assert "checkpoint_fork" not in verdict.codes()  # one changed block is not another history
    assert "file_digest_mismatch" not in verdict.codes()  # the forger fixed the manifest
    # a forger who did not is caught one step earlier as well
    naive = _verify(_tamper(built, tmp_path, flip, fix_manifest=False), built.log_key)
    assert {"file_digest_mismatch", "bad_signature"} <= naive.codes()


def test_a_removed_block_is_named_missing(built: Built, tmp_path: Path) -> None:
    def remove(entries: dict[str, bytes]) -> None:
        lines = _lines(entries, BLOCKS_FILE)
        del lines[_line_of(lines, TAMPERED_SEQUENCE)]
        entries[BLOCKS_FILE] = b"".join(lines)

    verdict = _verify(_tamper(built, tmp_path, remove), built.log_key)
    missing = [f for f in verdict.failures if f.code == "block_missing"]
    assert [(f.collector_id, f.sequence) for f in missing] == [(COLLECTOR, TAMPERED_SEQUENCE)]
    assert "block 700 is missing" in missing[0].detail
    # the report's provenance named that block: the recomputation differs where it counted
    assert any(f.code == "figure_mismatch" and f.path and "provenance" in f.path
               for f in verdict.failures)
    assert "bad_signature" not in verdict.codes() and "broken_link" not in verdict.codes()

    def remove_and_hide(entries: dict[str, bytes]) -> None:  # the ranges edited to match
        remove(entries)
        manifest = json.loads(entries["manifest.json"])
        manifest["collectors"][0]["ranges"] = [[1, 699], [701, 1441]]
        entries["manifest.json"] = json.dumps(manifest).encode()

    hidden = _verify(_tamper(built, tmp_path, remove_and_hide), built.log_key)
    assert [(f.code, f.sequence) for f in hidden.failures if f.check == "chains"] == [
        ("block_missing", TAMPERED_SEQUENCE)]  # still inside the readings span


def test_two_exchanged_blocks_are_named_swapped(built: Built, tmp_path: Path) -> None:
    def swap(entries: dict[str, bytes]) -> None:
        lines = _lines(entries, BLOCKS_FILE)
        a, b = _line_of(lines, TAMPERED_SEQUENCE), _line_of(lines, TAMPERED_SEQUENCE + 1)
        lines[a], lines[b] = lines[b], lines[a]
        entries[BLOCKS_FILE] = b"".join(lines)

    verdict = _verify(_tamper(built, tmp_path, swap), built.log_key)
    assert [(f.code, f.sequence) for f in verdict.failures] == [("blocks_swapped", TAMPERED_SEQUENCE)]
    assert "blocks 700 and 701 are exchanged" in verdict.failures[0].detail

    def swap_payloads(entries: dict[str, bytes]) -> None:  # the sequence labels left in order
        lines = [json.loads(line) for line in _lines(entries, BLOCKS_FILE)]
        a, b = (_line_of(_lines(entries, BLOCKS_FILE), s) for s in (TAMPERED_SEQUENCE, 900))
        for key in ("payload", "signature"):
            lines[a][key], lines[b][key] = lines[b][key], lines[a][key]
        entries[BLOCKS_FILE] = b"".join(json.dumps(line).encode() + b"\n" for line in lines)

    verdict = _verify(_tamper(built, tmp_path, swap_payloads), built.log_key)
    swapped = [f for f in verdict.failures if f.code == "blocks_swapped"]
    assert [(f.sequence, f.detail) for f in swapped] == [
        (TAMPERED_SEQUENCE, "the payloads of blocks 700 and 900 are exchanged: each is listed under "
                            "the other's sequence")]
    assert {(f.code, f.sequence) for f in verdict.failures if f.code == "mislabelled"} == {
        ("mislabelled", TAMPERED_SEQUENCE), ("mislabelled", 900)}


def test_a_checkpoint_of_a_forked_log_is_named_a_fork(built: Built, tmp_path: Path) -> None:
    """The same log key signs a second ledger's log, where another block came first: a different
    history of the same log. Its checkpoint, put in the bundle, is signed correctly, and is caught."""
    fork_path = tmp_path / "fork.sqlite"
    intruder = DemoCollector("intruder-c1")

    async def fork() -> dict[str, Any]:
        ledger = SqliteLedger(path=fork_path)
        try:
            await ledger.enroll(intruder.key)
            await ledger.enroll(built.plant.key)
            await _store(ledger, intruder.collector_id, [intruder.config_block()[1]])
            await _store(ledger, COLLECTOR, built.blocks)
            log = TransparencyLog(ledger=ledger, origin=ORIGIN, signing_key=built.signing_key)
            await log.start()
            stored = await log.publish()
            return {"note": stored.note, "tree_size": stored.tree_size,
                    "root_hash": base64.b64encode(stored.root_hash).decode(),
                    "published_unix_ms": stored.published_unix_ms, "verifier_key": log.verifier_key}
        finally:
            await ledger.close()
    forked = asyncio.run(fork())

    def replace(entries: dict[str, bytes]) -> None:
        checkpoint = json.loads(entries["log/checkpoint.json"])
        checkpoint.update(forked)
        entries["log/checkpoint.json"] = json.dumps(checkpoint).encode()

    verdict = _verify(_tamper(built, tmp_path, replace), built.log_key)
    assert "checkpoint_fork" in verdict.codes()
    assert "checkpoint_signature_invalid" not in verdict.codes()  # the fork is signed by the log key
    # one failure for the whole history, not one per block
    assert "inclusion_proof_invalid" not in verdict.codes()
    assert verdict.checks[4].name == "checkpoint" and verdict.checks[4].status == "fail"


def test_a_report_figure_edited_by_hand_is_named_by_its_path(built: Built, tmp_path: Path) -> None:
    edited: dict[str, float] = {}

    def edit(entries: dict[str, bytes]) -> None:
        report = json.loads(entries["report/report.json"])
        edited["was"] = report["hours"][13]["pollutants"]["so2"]["mass_kg"]
        report["hours"][13]["pollutants"]["so2"]["mass_kg"] = round(edited["was"] * 0.9, 4)
        edited["now"] = report["hours"][13]["pollutants"]["so2"]["mass_kg"]
        entries["report/report.json"] = (json.dumps(report, sort_keys=True, indent=2,
                                                    ensure_ascii=False) + "\n").encode()

    verdict = _verify(_tamper(built, tmp_path, edit), built.log_key)
    assert verdict.codes() == {"report_signature_invalid", "figure_mismatch"}
    figures = [f for f in verdict.failures if f.code == "figure_mismatch"]
    assert [f.path for f in figures] == ["hours[13].pollutants.so2.mass_kg"]
    assert figures[0].detail == f"report {edited['now']}, recomputed {edited['was']}"


def test_an_edited_methodology_parameter_is_a_digest_mismatch(built: Built, tmp_path: Path) -> None:
    def edit(entries: dict[str, bytes]) -> None:
        text = entries["methodology/cn-mee-2022.yaml"].decode()
        before = "reference_o2_percent.coal_boiler:\n    - value: 6\n"
        assert before in text
        entries["methodology/cn-mee-2022.yaml"] = text.replace(
            before, "reference_o2_percent.coal_boiler:\n    - value: 7\n").encode()

    verdict = _verify(_tamper(built, tmp_path, edit), built.log_key)
    assert "methodology_digest_mismatch" in verdict.codes()
    # recomputed with the edited file, the O2-corrected figures differ and are named
    paths = [f.path for f in verdict.failures if f.code == "figure_mismatch"]
    assert "reference_o2_percent" in paths
    assert not verdict.codes() & {"bad_signature", "report_signature_invalid", "checkpoint_fork"}


def test_a_key_that_does_not_match_its_key_id_is_named(built: Built, tmp_path: Path) -> None:
    other = nacl.signing.SigningKey.generate().verify_key

    def replace(entries: dict[str, bytes]) -> None:
        document = json.loads(entries["collectors.json"])
        document["collectors"][0]["keys"][0]["public_key"] = base64.b64encode(bytes(other)).decode()
        entries["collectors.json"] = json.dumps(document).encode()

    verdict = _verify(_tamper(built, tmp_path, replace), built.log_key)
    mismatch = [f for f in verdict.failures if f.code == "key_id_mismatch"]
    assert len(mismatch) == 1 and mismatch[0].collector_id == COLLECTOR
    assert built.plant.key.key_id in mismatch[0].detail
    assert "bad_signature" in verdict.codes()  # no block verifies without its key


def test_a_pinned_log_key_that_is_not_the_bundles_fails(built: Built) -> None:
    stranger = verifier_key(ORIGIN, bytes(nacl.signing.SigningKey.generate().verify_key))
    verdict = _verify(built.bundle, stranger)
    assert {"log_key_mismatch", "checkpoint_signature_invalid", "report_signature_invalid"} <= verdict.codes()
    with pytest.raises(LogKeyError):
        _verify(built.bundle, "not a key")
    with pytest.raises(LogKeyError):
        _verify(built.bundle, "name+00000000+\u00e9")


def test_a_file_that_is_not_a_bundle_is_refused(built: Built, tmp_path: Path) -> None:
    with pytest.raises(NotABundleError, match="not a zip"):
        _verify(built.ledger, None)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("manifest.json", json.dumps({"format": "something/v2"}))
    with pytest.raises(NotABundleError, match="something/v2"):
        _verify(other, None)


# --- the command line -----------------------------------------------------------------------------


def test_stackline_verify_bundle_prints_a_verdict_and_exits_0_1_or_2(built: Built, tmp_path: Path) -> None:
    result = run_stackline("verify", "--bundle", str(built.bundle), "--log-key", built.log_key,
                           timeout_s=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "VERDICT  PASS" in result.stdout
    table = [line for line in result.stdout.splitlines() if line.startswith("block signatures")]
    assert table and "PASS" in table[0] and "1441" in table[0]

    def remove(entries: dict[str, bytes]) -> None:
        lines = _lines(entries, BLOCKS_FILE)
        del lines[_line_of(lines, TAMPERED_SEQUENCE)]
        entries[BLOCKS_FILE] = b"".join(lines)
    tampered = _tamper(built, tmp_path, remove)
    result = run_stackline("verify", "--bundle", str(tampered), "--json", timeout_s=120)
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)
    assert document["verdict"] == "fail"
    assert {"code": "block_missing", "check": "chains", "collector_id": COLLECTOR, "sequence": 700,
            "detail": document["failures"][0]["detail"]} in document["failures"]
    assert [w["code"] for w in document["warnings"]] == ["log_key_not_pinned"]

    result = run_stackline("verify", "--bundle", str(built.ledger), timeout_s=60)
    assert result.returncode == 2 and "not a zip" in result.stderr
    result = run_stackline("verify", "--bundle", str(built.bundle), "--log-key", "not-a-key", timeout_s=60)
    assert result.returncode == 2 and "verifier key" in result.stderr, result.stderr


# --- pure parts -------------------------------------------------------------------------------------


@given(st.integers(min_value=2, max_value=60), st.data())
def test_any_exchanged_pair_is_named_a_swap(length: int, data: st.DataObject) -> None:
    a = data.draw(st.integers(min_value=0, max_value=length - 2))
    b = data.draw(st.integers(min_value=a + 1, max_value=length - 1))
    order = list(range(1, length + 1))
    order[a], order[b] = order[b], order[a]
    failures = _order_failures("c", order)
    assert [(f.code, f.sequence) for f in failures] == [("blocks_swapped", a + 1)]
    assert f"blocks {a + 1} and {b + 1} are exchanged" in failures[0].detail


def test_other_disorder_is_out_of_order_and_sorted_input_is_fine() -> None:
    assert _order_failures("c", [1, 2, 3]) == []
    assert [f.code for f in _order_failures("c", [2, 3, 1])] == ["blocks_out_of_order"]
    assert _missing([1, 2, 5, 6, 9], [(1, 9)]) == [(3, 4), (7, 8)]
    assert _missing([1, 10, 11, 12], [(1, 1), (10, 12)]) == []
    assert _missing([10, 12], [(10, 12), (14, 14)]) == [(11, 11), (14, 14)]


class _CountingSource(LedgerSource):
    """A ledger source that counts the blocks each blocks request streams, by its bounds."""

    def __init__(self, *, ledger: Ledger, log: TransparencyLog, gateway_id: str) -> None:
        super().__init__(ledger=ledger, log=log, gateway_id=gateway_id)
        self.streamed: list[tuple[dict[str, Any], int]] = []

    async def blocks(self, collector_id: str, *, from_sequence: int | None = None,
                     to_sequence: int | None = None, from_unix_ms: int | None = None,
                     to_unix_ms: int | None = None,
                     kind: BlockKindName | None = None) -> AsyncIterator[BlockLine]:
        count = 0
        async for line in super().blocks(collector_id, from_sequence=from_sequence,
                                         to_sequence=to_sequence, from_unix_ms=from_unix_ms,
                                         to_unix_ms=to_unix_ms, kind=kind):
            count += 1
            yield line
        bounds = {"from_sequence": from_sequence, "to_sequence": to_sequence,
                  "from_unix_ms": from_unix_ms, "to_unix_ms": to_unix_ms, "kind": kind}
        self.streamed.append(({k: v for k, v in bounds.items() if v is not None}, count))


def test_the_configuration_is_found_far_before_the_period(tmp_path: Path) -> None:
    """A CONFIG block a day and a half of blocks before the period: the export asks for the
    collector's configuration blocks by kind and includes the one in force, without streaming
    the chain between; the verifier accepts the declared gap between it and the period."""
    plant = DemoCollector(COLLECTOR)
    day, _ = day_of_blocks()
    early = [plant.config_block()[1]]
    for days_before, entries in ((2, day), (1, day[:700])):  # 2,140 blocks before the period
        for entry in entries:
            block = type(entry.block)()
            block.CopyFrom(entry.block)
            block.window_start_unix_ms -= days_before * 86_400_000
            block.window_end_unix_ms -= days_before * 86_400_000
            for reading in block.readings:
                reading.time_unix_ms -= days_before * 86_400_000
            early.append(plant.reseal(block)[1])
    blocks = early + [plant.reseal(entry.block)[1] for entry in day[:180]]
    first = len(early) + 1
    out = tmp_path / "b.zip"
    messages: list[str] = []
    streamed: list[tuple[dict[str, Any], int]] = []

    async def build() -> None:
        async with _logged_ledger(tmp_path / "ledger.sqlite", plant, blocks) as (ledger, log):
            source = _CountingSource(ledger=ledger, log=log, gateway_id="gw-1")
            await export_bundle(source, unit_id="unit-1", plant_id="demo-plant", start=DAY,
                                end=NEXT_DAY, out=out, progress=messages.append)
            streamed.extend(source.streamed)

    asyncio.run(build())
    assert f"collector {COLLECTOR}: looking for its configuration before block {first:,}" in messages
    # one request for the period's window, one for the configuration blocks before it: the
    # blocks streamed are the bundle's, not the chain's
    assert streamed[1] == ({"to_sequence": first - 1, "kind": "config"}, 1)
    assert sum(count for _, count in streamed) == 1 + 180
    manifest = json.loads(_entries(out)["manifest.json"])
    assert manifest["collectors"][0]["ranges"] == [[1, 1], [first, first + 179]]
    verdict = _verify(out, None)
    assert verdict.ok, [f.to_json() for f in verdict.failures]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".partial")]


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of a few demo blocks (CONFIG and 12 readings blocks), quick to verify."""
    directory = tmp_path_factory.mktemp("small")
    plant = DemoCollector(COLLECTOR)
    out = directory / "small.zip"

    async def build() -> None:
        async with _logged_ledger(directory / "ledger.sqlite", plant, plant.chain(12)) as (ledger, log):
            # BASE_MS is 2023-11-15 06:13 in the demo plant's Asia/Shanghai
            await export_bundle(LedgerSource(ledger=ledger, log=log, gateway_id="gw-1"), unit_id="unit-1",
                                start=date(2023, 11, 15), end=date(2023, 11, 16), out=out)
    asyncio.run(build())
    assert _verify(out, None).ok
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_damaged_file_gives_a_failing_verdict_never_a_crash(small_bundle: Path, tmp_path: Path,
                                                                data: st.DataObject) -> None:
    """Fuzz: any file of the bundle replaced by arbitrary bytes, JSON or a truncation (and the
    manifest's digests rewritten to match) is a failure named in the verdict, not an exception."""
    entries = _entries(small_bundle)
    name = data.draw(st.sampled_from(sorted(set(entries) - {"manifest.json"})))
    json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                               lambda inner: st.lists(inner, max_size=3)
                               | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
    replacement = data.draw(st.one_of(
        st.binary(max_size=200),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.integers(min_value=0, max_value=max(0, len(entries[name]) - 1)).map(
            lambda n: entries[name][:n]),
    ))
    if replacement.rstrip() == entries[name].rstrip() and name != "report/report.json":
        return  # trailing whitespace of a JSON, ndjson or YAML file changes nothing it says
    entries[name] = replacement
    verdict = _verify(_write_bundle(entries, tmp_path / "fuzzed.zip"), None)  # every example
    assert not verdict.ok, name
    assert all(f.code in FAILURE_CODES for f in verdict.failures)


# --- end to end, over the gateway's HTTP verifier API --------------------------------------------


async def test_export_over_http_then_verify_passes(tmp_path: Path) -> None:
    """Demo data in a running gateway with the verifier API and a token; `stackline export` pulls
    the bundle over HTTP; `stackline verify --bundle` passes it with the pinned log key. A wrong
    token is refused with a message that says what to check."""
    from gateway.config import GatewayConfig, LoadedGatewayConfig  # noqa: PLC0415
    from gateway.runtime import GatewayRuntime  # noqa: PLC0415
    from gateway.tokens import new_token, token_digest  # noqa: PLC0415

    token = new_token()
    (tmp_path / "token").write_text(token + "\n")
    (tmp_path / "wrong-token").write_text(new_token() + "\n")
    config = LoadedGatewayConfig(source=tmp_path / "gateway.yaml", config=GatewayConfig.model_validate({
        "gateway": {"id": "gw-e2e"},
        "listen": {"grpc": "127.0.0.1:0"},
        "ledger": {"path": "ledger.sqlite"},
        "log": {"checkpoint_interval_s": 3600},
        "verifier_api": {"listen": "127.0.0.1:0", "tokens": [
            {"name": "auditor", "sha256": token_digest(token).hex(), "plants": ["demo-plant"]}]},
    }))
    plant = DemoCollector(COLLECTOR)
    day, _ = day_of_blocks()
    blocks = [plant.config_block()[1]] + [plant.reseal(entry.block)[1] for entry in day]
    runtime = GatewayRuntime(config=config)
    await runtime.start()
    try:
        await runtime.ledger.enroll(plant.key)
        await _store(runtime.ledger, COLLECTOR, blocks)
        assert runtime.verifier_http is not None
        url = f"http://127.0.0.1:{runtime.verifier_http.port}"
        out = tmp_path / "unit-1.zip"
        export = ("export", "--gateway-url", url, "--unit", "unit-1", "--from", DAY.isoformat(),
                  "--to", NEXT_DAY.isoformat(), "-o", str(out))
        refused = await asyncio.to_thread(run_stackline, *export, "--token-file",
                                          str(tmp_path / "wrong-token"), timeout_s=60)
        assert refused.returncode == 2 and "the gateway refused the token" in refused.stderr
        assert not out.exists()
        result = await asyncio.to_thread(run_stackline, *export, "--token-file", str(tmp_path / "token"),
                                         timeout_s=120)
        assert result.returncode == 0, result.stderr
        assert "1,441 proofs fetched" in result.stderr and f"wrote {out}" in result.stderr
        log_key = runtime.log.verifier_key
        # the served key is the audited gateway's word: shown to compare, never as the key to pin
        assert (f"the key this gateway says it signs with: {log_key}; compare it with the one you "
                "obtained out of band") in result.stderr
        assert f"stackline verify --bundle {out} --log-key KEY-FROM-OUT-OF-BAND" in result.stderr
        assert f"--log-key {log_key}" not in result.stderr
    finally:
        await runtime.stop()
    verdict = await asyncio.to_thread(run_stackline, "verify", "--bundle", str(out), "--log-key",
                                      log_key, "--json", timeout_s=120)
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    document = json.loads(verdict.stdout)
    assert document["verdict"] == "pass" and not document["warnings"]
    assert document["collectors"] == [{"collector_id": COLLECTOR, "blocks": 1441, "ranges": [[1, 1441]]}]
    report = json.loads(_entries(out)["report/report.json"])
    assert report["gateway"] == "gw-e2e" and report["totals"]["provenance"]["sequences"] == [2, 1441]


# --- a bundle is outside input; an exporter's names come from the audited gateway -----------------


BOMB_LINE = b'{"sequence":1,"leaf_index":null,"payload":"AA==","signature":"AA==","key_id":"k"}\n'


def _bomb(path: Path, lines: int, *, files: dict[str, Any] | None = None) -> Path:
    """A small zip whose blocks entry inflates to `lines` copies of one block line (as
    /tmp/review/zipbomb.py makes them, smaller)."""
    manifest = {"format": "stackline.bundle/v1", "plant": "p", "unit": "u",
                "collectors_file": "collectors.json",
                "period": {"from": "2024-01-01", "to": "2024-01-02", "timezone": "UTC"},
                "log": {"verifier_key": "x", "checkpoint": "log/checkpoint.json"},
                "report": {"body": "report/report.json", "signature": "report/signature.json"},
                "files": files or {}, "methodologies": [],
                "collectors": [{"collector_id": "c1", "blocks": "blocks/c1.ndjson",
                                "proofs": "proofs/c1.ndjson"}]}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("manifest.json", json.dumps(manifest))
        info = zipfile.ZipInfo("blocks/c1.ndjson")
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w", force_zip64=True) as out:
            chunk = BOMB_LINE * 10_000
            for _ in range(lines // 10_000):
                out.write(chunk)
    return path


def test_a_zip_bomb_costs_what_the_caps_allow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = _bomb(tmp_path / "bomb.zip", 300_000)  # 25 MB of lines in a 25 KB zip
    assert bomb.stat().st_size < 100_000
    started = time.monotonic()
    verdict = _verify_capped(bomb, max_blocks=1000)
    # the lines past the cap are not read: one block kept, its 999 repeats counted, 200 listed
    assert verdict.info["collectors"] == [{"collector_id": "c1", "blocks": 1, "ranges": [[1, 1]]}]
    too_many = [f for f in verdict.failures if f.code == "too_many_blocks"]
    assert len(too_many) == 1 and "more than 1,000 blocks" in too_many[0].detail
    assert "--max-blocks" in too_many[0].detail
    repeats = [f for f in verdict.failures if f.code == "duplicate_block"]
    assert len(repeats) == MAX_LISTED + 1 and verdict.unlisted == {"duplicate_block": 999 - MAX_LISTED}
    assert repeats[-1].detail == f"and {999 - MAX_LISTED} more failure(s) of this code, not listed"
    assert verdict.to_json()["unlisted"] == {"duplicate_block": 999 - MAX_LISTED}
    assert "999 failure(s)" in render_verdict(verdict)  # the chains row counts them all
    # an entry whose zip header is past the ceiling is not inflated at all
    monkeypatch.setattr("gateway.bundle_verify.MAX_ENTRY_BYTES", 1 << 20)
    verdict = _verify(bomb, None)
    too_large = [f for f in verdict.failures if f.code == "entry_too_large"]
    assert [f.path for f in too_large] == ["blocks/c1.ndjson"]
    assert "more than the 1,048,576 bytes the verifier reads" in too_large[0].detail
    assert verdict.info["collectors"] == [{"collector_id": "c1", "blocks": 0, "ranges": []}]
    assert time.monotonic() - started < 3.0


def _verify_capped(path: Path, **limits: int) -> Verdict:
    return asyncio.run(verify_bundle(path, log_key=None, **limits))


def test_an_entry_is_read_no_further_than_the_manifest_declares(small_bundle: Path,
                                                                tmp_path: Path) -> None:
    entries = _entries(small_bundle)
    manifest = json.loads(entries["manifest.json"])
    blocks = manifest["collectors"][0]["blocks"]
    first_line = entries[blocks].index(b"\n") + 1
    manifest["files"][blocks]["bytes"] = first_line + 10  # one line and a bit
    entries["manifest.json"] = json.dumps(manifest).encode()
    path = tmp_path / "declared.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    verdict = _verify(path, None)
    files = [f for f in verdict.failures if f.check == "files"]
    assert [(f.code, f.path) for f in files] == [("file_digest_mismatch", blocks)]
    assert f"inflates past the {first_line + 10:,} bytes the manifest declares" in files[0].detail
    assert verdict.info["collectors"][0]["blocks"] == 1  # the one line within the declared bytes


def test_max_blocks_on_the_command_line(tmp_path: Path) -> None:
    bomb = _bomb(tmp_path / "bomb.zip", 20_000)
    result = run_stackline("verify", "--bundle", str(bomb), "--max-blocks", "500", "--json")
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)
    assert "too_many_blocks" in {f["code"] for f in document["failures"]}
    assert document["unlisted"] == {"duplicate_block": 499 - MAX_LISTED}
    refused = run_stackline("verify", "--bundle", str(bomb), "--max-blocks", "0")
    assert refused.returncode == 2 and "--max-blocks" in refused.stderr


@pytest.mark.parametrize("name", ["../evil.txt", "blocks/../../evil.txt", "/etc/evil", "\\evil"])
def test_a_zip_entry_that_climbs_out_is_not_a_bundle(small_bundle: Path, tmp_path: Path,
                                                       name: str) -> None:
    path = tmp_path / "climbing.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for entry_name, data in _entries(small_bundle).items():
            archive.writestr(entry_name, data)
        archive.writestr(zipfile.ZipInfo(name), b"x")
    with pytest.raises(NotABundleError, match="outside the archive"):
        _verify(path, None)


class _RenamingSource(LedgerSource):
    """A gateway that names a collector or a methodology with a path."""

    def __init__(self, *, ledger: Ledger, log: TransparencyLog, collector: str | None = None,
                 methodology: str | None = None) -> None:
        super().__init__(ledger=ledger, log=log, gateway_id="gw-1")
        self.collector = collector
        self.methodology_name = methodology

    async def unit_collectors(self, plant_id: str, unit_id: str) -> list[str]:
        found = await super().unit_collectors(plant_id, unit_id)
        return found if self.collector is None else [*found, self.collector]

    async def methodology(self, name: str) -> MethodologyFile:
        found = await super().methodology(name)
        if self.methodology_name is None:
            return found
        return MethodologyFile(self.methodology_name, found.data, found.digest)


@pytest.mark.parametrize(("collector", "methodology", "named"), [
    ("../../../home/user/.bashrc", None, "collector id"),
    ("c1/../..", None, "collector id"),
    ("a..b", None, "collector id"),
    (None, "../../evil", "methodology"),
])
def test_the_exporter_names_no_file_after_a_path_the_gateway_sends(
        tmp_path: Path, collector: str | None, methodology: str | None, named: str) -> None:
    plant = DemoCollector(COLLECTOR)
    out = tmp_path / "out" / "b.zip"
    out.parent.mkdir()

    async def export() -> None:
        async with _logged_ledger(tmp_path / "ledger.sqlite", plant, plant.chain(4)) as (ledger, log):
            source = _RenamingSource(ledger=ledger, log=log, collector=collector,
                                     methodology=methodology)
            await export_bundle(source, unit_id="unit-1", start=date(2023, 11, 15),
                                end=date(2023, 11, 16), out=out)
    with pytest.raises(ExportError, match=f"the gateway named a {named} .*not an identifier"):
        asyncio.run(export())
    assert os.listdir(out.parent) == []


def test_an_export_right_after_a_checkpoint_waits_for_one_that_holds_its_blocks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway answers its latest checkpoint while it is younger than the interval: an export
    whose blocks arrived after it asks again once the interval is over."""
    monkeypatch.setattr("gateway.verifier_api.CHECKPOINT_MIN_INTERVAL_S", 0.3)
    plant = DemoCollector(COLLECTOR)
    chain = plant.chain(15)
    out = tmp_path / "b.zip"
    messages: list[str] = []

    async def export() -> int:
        async with _logged_ledger(tmp_path / "ledger.sqlite", plant, chain[:10]) as (ledger, log):
            await log.publish()  # the log's own checkpoint, of 10 blocks, a moment ago
            await _store(ledger, COLLECTOR, chain[10:])
            summary = await export_bundle(LedgerSource(ledger=ledger, log=log, gateway_id="gw-1"),
                                          unit_id="unit-1", start=date(2023, 11, 15),
                                          end=date(2023, 11, 16), out=out, progress=messages.append)
            return summary.tree_size
    assert asyncio.run(export()) == len(chain)
    assert any("(tree size 10) does not hold block 16 of collector" in m and "asking again" in m
               for m in messages), messages
    verdict = _verify(out, None)
    assert verdict.ok, [f.to_json() for f in verdict.failures]


def test_a_checkpoint_file_holding_null_fails_the_bundle(small_bundle: Path, tmp_path: Path) -> None:
    """Found by the fuzz test above: `null` in place of the checkpoint (digests rewritten to
    match) skipped the checkpoint and the proofs and passed. No checkpoint proves nothing."""
    entries = _entries(small_bundle)
    entries[json.loads(entries["manifest.json"])["log"]["checkpoint"]] = b"null"
    verdict = _verify(_write_bundle(entries, tmp_path / "null-checkpoint.zip"), None)
    assert not verdict.ok
    assert [f.code for f in verdict.failures] == ["checkpoint_malformed"]


@pytest.mark.parametrize("content", [b"null", b"[]", b"{}", b"0", b""])
def test_every_file_emptied_or_nulled_fails_the_bundle(small_bundle: Path, tmp_path: Path,
                                                       content: bytes) -> None:
    """Each file of the bundle in turn replaced by an empty or null JSON value (digests rewritten
    to match): never a passing verdict (the fuzz test above samples this; here every file)."""
    original = _entries(small_bundle)
    for name in sorted(set(original) - {"manifest.json"}):
        path = _write_bundle({**original, name: content}, tmp_path / "emptied.zip")
        assert not _verify(path, None).ok, f"{name} replaced by {content!r} passed"
