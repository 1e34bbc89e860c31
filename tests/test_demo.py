"""`stackline demo --duration 20` ends with at least 19 consecutive blocks that verify."""

from __future__ import annotations

import json
import shlex
import sqlite3
from pathlib import Path

import pytest

from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import decode_block
from tests.support import run_stackline

pytestmark = pytest.mark.slow


def test_demo_for_twenty_seconds(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    result = run_stackline("demo", "--duration", "20", "--data-dir", str(data_dir), timeout_s=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert ["t", "blocks", "readings", "lag", "quarantined"] in [line.split() for line in lines]
    assert any(line.startswith("operator view:  stackline status --gateway http://127.0.0.1:")
               for line in lines)
    assert "OK" in result.stdout
    # it ends as a verifier would: an evidence bundle exported over the verifier API with a
    # token, and verified offline with the log key pinned
    assert any(line.startswith("$ stackline export --gateway-url http://127.0.0.1:")
               for line in lines)
    assert "VERDICT  PASS: every check holds" in lines
    assert (data_dir / "evidence.zip").is_file()
    assert "and the transparency log matches them" in result.stdout
    # the collector was given the log's key: it verified the receipts its acks carried
    receipts = run_stackline("collector", "receipts", "--config", str(data_dir / "plant.yaml"))
    assert receipts.returncode == 0, receipts.stdout + receipts.stderr
    assert " verified " in receipts.stdout and "FORK" not in receipts.stdout
    # the accounting command it suggests runs on what it recorded
    hint = next(line for line in lines if line.startswith("accounting:"))
    command = shlex.split(hint.removeprefix("accounting:"))
    assert command[0] == "stackline"
    reported = run_stackline(*command[1:], timeout_s=120)
    assert reported.returncode == 0, reported.stderr
    assert "<svg" in (data_dir / "report.html").read_text()

    ledger = data_dir / "ledger.sqlite"
    with sqlite3.connect(ledger) as db:
        rows = db.execute("SELECT collector_id, sequence, payload FROM blocks "
                          "ORDER BY collector_id, sequence").fetchall()
    assert {row[0] for row in rows} == {"demo-plant-c1"}
    sequences = [int(row[1]) for row in rows]
    assert sequences == list(range(1, len(sequences) + 1))
    kinds = [decode_block(bytes(row[2])).kind for row in rows]
    assert kinds[0] == pb.BLOCK_KIND_CONFIG
    assert kinds.count(pb.BLOCK_KIND_READINGS) >= 19

    verified = run_stackline("verify", "--ledger", str(ledger), "--json")
    assert verified.returncode == 0, verified.stdout
    report = json.loads(verified.stdout)
    assert (report["gaps"], report["bad_signatures"], report["broken_links"]) == (0, 0, 0)
    assert report["blocks"] == len(rows)
    assert report["readings"] == 14 * kinds.count(pb.BLOCK_KIND_READINGS)

    # a second run continues the same chain: same key, same ledger, no second config block
    again = run_stackline("demo", "--duration", "2", "--data-dir", str(data_dir), timeout_s=60)
    assert again.returncode == 0, again.stdout + again.stderr
    with sqlite3.connect(ledger) as db:
        more = [decode_block(bytes(p)).kind for (p,) in db.execute(
            "SELECT payload FROM blocks ORDER BY sequence")]
    assert len(more) > len(rows)
    assert more.count(pb.BLOCK_KIND_CONFIG) == 1
