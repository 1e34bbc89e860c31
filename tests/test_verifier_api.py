"""The verifier API (issue 7) over real HTTP and real gRPC on loopback, against a gateway started
in-process on port 0 with a real ledger holding two plants' signed chains (tests/demo_blocks.py):
what a token may read and what it is refused, that served bytes are the stored signed bytes and
the proofs verify against the signed checkpoints with nothing but the published rules, that the
report is `stackline report`'s byte for byte, and that garbage never harms the server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import http.client
import json
import logging
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import nacl.signing
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.config import load_plant
from collector.plan import compile_plan
from collector.totalizer import TotalizerTracker
from gateway.accounting.methodology import load_methodology
from gateway.accounting.source import PeriodTooLarge, load_unit_data
from gateway.config import GatewayConfig, LoadedGatewayConfig, VerifierApiSection, load_gateway_config
from gateway.errors import ConfigError, LedgerError
from gateway.ledger import (
    BlockSelection,
    CollectorKey,
    Ledger,
    PostgresLedger,
    SqliteLedger,
    StoredRow,
    VerifiedBlock,
)
from gateway.ledger.selection import selection_query
from gateway.report_signature import REPORT_SIGNATURE_CONTEXT
from gateway.runtime import GatewayRuntime
from gateway.tokens import Tokens, TokenScope, bearer_token, token_digest
from gateway.translog.checkpoint import parse_checkpoint, parse_verifier_key
from gateway.translog.merkle import leaf_hash, verify_consistency, verify_inclusion
from gateway.verifier_api import (
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_PEER,
    MAX_REPORT_BLOCKS,
    ApiError,
    BadRequest,
    MethodNotAllowed,
    NotFound,
    Route,
    parse_query,
    parse_request_head,
    route,
)
from proto.stackline.v1 import stackline_pb2 as pb
from proto.stackline.v1.stackline_pb2_grpc import VerifierStub
from proto.wire import SIGNATURE_CONTEXT, BlockDraft
from tests.conftest import free_port, pg_fetchval, run_async
from tests.demo_blocks import BASE_MS, TICK_MS, DemoCollector
from tests.support import run_stackline, write_plant

TOKEN_A = "token-of-plant-a-0123456789abcdef"
TOKEN_B = "token-of-plant-b-0123456789abcdef"
TOKEN_ALL = "token-of-every-plant-0123456789ab"
PLANT_A, PLANT_B = "demo-plant", "plant-b"
READINGS_BLOCKS = 40
REPORT_DAY, REPORT_NEXT = "2023-11-15", "2023-11-16"  # BASE_MS is 06:13 on the 15th in Shanghai
TIMEOUT_S = 30.0


# --- the gateway under test -----------------------------------------------------------------------


def plant_b_collector(directory: Path) -> DemoCollector:
    """A collector of a second plant: the demo plant's devices under plant id `plant-b`."""
    path = write_plant(directory, grpc_port=free_port(), collector_id="plant-b-c1")
    document = yaml.safe_load(path.read_text())
    document["plant"]["id"] = PLANT_B
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    collector = DemoCollector("plant-b-c1")
    collector.plan = compile_plan(load_plant(path))
    collector.totalizers = {
        point.point_id: TotalizerTracker(spec=point.totalizer, data_type=point.data_type,
                                         scale=point.scale)
        for device in collector.plan.devices for point in device.points
        if point.totalizer is not None}
    return collector


def config_again(collector: DemoCollector) -> VerifiedBlock:
    """The collector's configuration recorded again further along its chain (as a collector does
    when it is reconfigured), in the window of its next tick."""
    start = BASE_MS + collector.ticks * TICK_MS
    return collector._seal(BlockDraft(
        collector_id=collector.collector_id, window_start_unix_ms=start, window_end_unix_ms=start,
        readings=(), config_digest=collector.plan.config_digest, kind=pb.BLOCK_KIND_CONFIG,
        config_document=collector.plan.config_document))[1]


@dataclass
class Reply:
    """An HTTP answer as a client saw it."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def lines(self) -> list[Any]:
        return [json.loads(line) for line in self.body.splitlines()]


def _request(port: int, method: str, path: str, token: str | None) -> Reply:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        connection.request(method, path, headers={} if token is None else
                           {"Authorization": f"Bearer {token}"})
        response = connection.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        connection.close()


@dataclass
class Gateway:
    """A running gateway with plant A's and plant B's chains stored, and how to reach it."""

    runtime: GatewayRuntime
    http_port: int
    grpc_target: str
    a: DemoCollector
    b: DemoCollector
    stored: dict[str, list[VerifiedBlock]]

    async def get(self, path: str, token: str | None = TOKEN_A, method: str = "GET") -> Reply:
        # http.client in a thread: the server runs on this test's event loop
        return await asyncio.to_thread(_request, self.http_port, method, path, token)

    async def grow(self, collector: DemoCollector, count: int) -> None:
        await self.store(collector, collector.chain(count))

    async def store(self, collector: DemoCollector, blocks: list[VerifiedBlock]) -> None:
        await self.runtime.ledger.append(collector.collector_id, blocks, transport="test",
                                         peer="test", received_unix_ms=0)
        self.stored.setdefault(collector.collector_id, []).extend(blocks)

    async def publish(self, token: str = TOKEN_A) -> dict[str, Any]:
        reply = await self.get("/v1/checkpoint", token, method="POST")
        assert reply.status == 200, reply.body
        document: dict[str, Any] = reply.json()
        return document

    def refusals(self, code: str, transport: str = "http") -> int:
        assert self.runtime.verifier is not None
        return self.runtime.verifier.refusals.counts[(transport, code)]


def gateway_config(directory: Path, *, ledger: dict[str, Any]) -> LoadedGatewayConfig:
    (directory / "token-b").write_text(TOKEN_B + "\n")
    return LoadedGatewayConfig(source=directory / "gateway.yaml", config=GatewayConfig.model_validate({
        "gateway": {"id": "test-gateway"},
        "listen": {"grpc": "127.0.0.1:0"},
        "ledger": ledger,
        "log": {"checkpoint_interval_s": 3600},
        "verifier_api": {"listen": "127.0.0.1:0", "tokens": [
            {"name": "verifier-a", "sha256": token_digest(TOKEN_A).hex(), "plants": [PLANT_A]},
            {"name": "verifier-b", "token_file": "token-b", "plants": [PLANT_B]},
            {"name": "regulator", "sha256": token_digest(TOKEN_ALL).hex(), "plants": ["*"]},
        ]},
    }))


async def start_gateway(directory: Path, ledger: dict[str, Any]) -> AsyncIterator[Gateway]:
    runtime = GatewayRuntime(config=gateway_config(directory, ledger=ledger))
    grpc_port = await runtime.start()
    try:
        assert runtime.verifier_http is not None
        gateway = Gateway(runtime, runtime.verifier_http.port, f"127.0.0.1:{grpc_port}",
                          DemoCollector(), plant_b_collector(directory / "plant-b"), {})
        orphan = CollectorKey("orphan-c1", "00" * 8, bytes(nacl.signing.SigningKey.generate()
                                                           .verify_key), BASE_MS)
        for key in (gateway.a.key, gateway.b.key, orphan):
            await runtime.ledger.enroll(key)
        await gateway.grow(gateway.a, READINGS_BLOCKS)
        await gateway.grow(gateway.b, READINGS_BLOCKS // 2)
        yield gateway
    finally:
        await runtime.stop()


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    async for running in start_gateway(tmp_path, {"path": "ledger.sqlite"}):
        yield running


@pytest.fixture
def checkpoints_on_demand(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every POST /v1/checkpoint publishes (not at most one a second): for tests that grow the
    log between two checkpoints faster than the gateway publishes them."""
    monkeypatch.setattr("gateway.verifier_api.CHECKPOINT_MIN_INTERVAL_S", 0.0)


# --- HTTP: what a token may read ----------------------------------------------------------------------


async def test_each_token_lists_the_collectors_of_its_plants_with_their_keys(gateway: Gateway) -> None:
    listed = {token: (await gateway.get("/v1/collectors", token)).json()["collectors"]
              for token in (TOKEN_A, TOKEN_B, TOKEN_ALL)}
    assert [c["collector_id"] for c in listed[TOKEN_A]] == ["demo-plant-c1"]
    assert [c["collector_id"] for c in listed[TOKEN_B]] == ["plant-b-c1"]
    # "*" also sees the collector that has sent no configuration (no known plant)
    assert [(c["collector_id"], c["plant_id"]) for c in listed[TOKEN_ALL]] == [
        ("demo-plant-c1", PLANT_A), ("orphan-c1", None), ("plant-b-c1", PLANT_B)]
    (a,) = listed[TOKEN_A]
    assert a["chain_head"] == READINGS_BLOCKS + 1
    assert a["keys"] == [{"key_id": gateway.a.key.key_id,
                          "public_key": base64.b64encode(gateway.a.key.public_key).decode(),
                          "enrolled_unix_ms": BASE_MS}]


async def test_blocks_stream_the_stored_signed_bytes(gateway: Gateway) -> None:
    await gateway.publish()
    reply = await gateway.get("/v1/collectors/demo-plant-c1/blocks")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/x-ndjson"
    assert reply.headers["Transfer-Encoding"] == "chunked"
    lines = reply.lines()
    stored = gateway.stored["demo-plant-c1"]
    assert [line["sequence"] for line in lines] == list(range(1, READINGS_BLOCKS + 2))
    verify_key = nacl.signing.VerifyKey(gateway.a.key.public_key)
    for line, block in zip(lines, stored, strict=True):
        payload = base64.b64decode(line["payload"])
        assert payload == block.payload
        assert line["key_id"] == gateway.a.key.key_id
        verify_key.verify(SIGNATURE_CONTEXT + payload, base64.b64decode(line["signature"]))
        assert isinstance(line["leaf_index"], int)
    # sequence bounds are inclusive; time bounds select window starts in [from, to)
    some = (await gateway.get("/v1/collectors/demo-plant-c1/blocks?from_sequence=3&to_sequence=5"))
    assert [line["sequence"] for line in some.lines()] == [3, 4, 5]
    start = BASE_MS + 10 * TICK_MS
    timed = await gateway.get(f"/v1/collectors/demo-plant-c1/blocks?from_unix_ms={start}"
                              f"&to_unix_ms={start + 3 * TICK_MS}")
    assert [line["sequence"] for line in timed.lines()] == [12, 13, 14]  # ticks 10..12
    nothing = await gateway.get("/v1/collectors/demo-plant-c1/blocks?from_sequence=1000")
    assert (nothing.status, nothing.body) == (200, b"")


async def test_blocks_of_one_kind_configuration_or_readings(gateway: Gateway,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    middle = config_again(gateway.a)  # #42, in the window of tick 40
    await gateway.store(gateway.a, [middle])
    await gateway.grow(gateway.a, 3)  # #43..45, the first of them in the window of tick 40 too
    await gateway.publish()
    path = "/v1/collectors/demo-plant-c1/blocks"
    every = {line["sequence"]: line for line in (await gateway.get(path)).lines()}
    monkeypatch.setattr("gateway.verifier_api.PAGE_BLOCKS", 4)  # several pages of each answer

    async def sequences(query: str) -> list[int]:
        reply = await gateway.get(f"{path}?{query}")
        assert reply.status == 200, reply.body
        lines = reply.lines()
        assert lines == [every[line["sequence"]] for line in lines]  # the same lines, leaves too
        return [line["sequence"] for line in lines]

    assert await sequences("kind=config") == [1, 42]
    assert base64.b64decode(every[42]["payload"]) == middle.payload
    assert isinstance(every[42]["leaf_index"], int)
    assert await sequences("kind=readings") == [*range(2, 42), 43, 44, 45]
    # with the other filters, as "and"
    assert await sequences("kind=config&from_sequence=2") == [42]
    assert await sequences("kind=config&to_sequence=41") == [1]
    assert await sequences("kind=readings&from_sequence=40&to_sequence=43") == [40, 41, 43]
    tick_40 = f"from_unix_ms={BASE_MS + 40 * TICK_MS}&to_unix_ms={BASE_MS + 41 * TICK_MS}"
    assert await sequences(tick_40) == [42, 43]
    assert await sequences(f"{tick_40}&kind=config") == [42]
    assert await sequences(f"{tick_40}&kind=readings") == [43]
    assert await sequences("kind=config&from_sequence=43") == []


async def test_a_time_range_decodes_no_payload(gateway: Gateway,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The window filter reads the stored window columns: no block is parsed to select it."""
    path = "/v1/collectors/demo-plant-c1/blocks"
    assert (await gateway.get(path)).status == 200  # the plant lookup (one block parsed) is cached

    def no_decoding(payload: bytes) -> Any:
        raise AssertionError("a payload was decoded to select blocks by time")
    monkeypatch.setattr("gateway.verifier_api.decode_block", no_decoding)
    start = BASE_MS + 30 * TICK_MS
    timed = await gateway.get(f"{path}?from_unix_ms={start}")
    assert [line["sequence"] for line in timed.lines()] == list(range(32, READINGS_BLOCKS + 2))
    before = await gateway.get(f"{path}?to_unix_ms={BASE_MS + TICK_MS}&kind=readings")
    assert [line["sequence"] for line in before.lines()] == [2]  # tick 0; the CONFIG block is #1


@pytest.mark.usefixtures("checkpoints_on_demand")
async def test_a_block_not_yet_in_the_log_has_no_leaf_index(gateway: Gateway) -> None:
    task = gateway.runtime._log_task  # stop the log's own integration: only publish integrates
    assert task is not None
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    first = await gateway.publish()
    await gateway.grow(gateway.a, 2)
    path = f"/v1/collectors/demo-plant-c1/blocks?from_sequence={READINGS_BLOCKS + 1}"
    assert [line["leaf_index"] is None for line in (await gateway.get(path)).lines()] == [
        False, True, True]
    proofs = await gateway.get(f"/v1/collectors/demo-plant-c1/proofs?tree_size="
                               f"{first['tree_size']}&from_sequence={READINGS_BLOCKS}")
    assert [p["sequence"] for p in proofs.lines()] == [READINGS_BLOCKS, READINGS_BLOCKS + 1]
    second = await gateway.publish()  # on demand: integrates what is stored, then signs
    assert second["tree_size"] == first["tree_size"] + 2
    indexes = [line["leaf_index"] for line in (await gateway.get(path)).lines()]
    assert indexes[1:] == [first["tree_size"], first["tree_size"] + 1]


async def test_proofs_verify_against_the_signed_checkpoint(gateway: Gateway) -> None:
    state = (await gateway.get("/v1/log")).json()
    name, public_key = parse_verifier_key(state["verifier_key"])
    assert name == state["origin"] == "stackline/test-gateway"
    checkpoint = await gateway.publish()
    size = checkpoint["tree_size"]
    assert size == READINGS_BLOCKS + 1 + READINGS_BLOCKS // 2 + 1  # every stored block
    signed = parse_checkpoint(checkpoint["note"], name=name, public_key=public_key)
    root = base64.b64decode(checkpoint["root_hash"])
    assert (signed.size, signed.root_hash) == (size, root)
    assert (await gateway.get("/v1/log")).json()["checkpoint"] == checkpoint
    assert (await gateway.get(f"/v1/checkpoint?tree_size={size}")).json() == checkpoint
    assert (await gateway.get("/v1/checkpoint")).json() == checkpoint

    reply = await gateway.get(f"/v1/collectors/demo-plant-c1/proofs?tree_size={size}")
    assert reply.headers["Content-Type"] == "application/x-ndjson"
    proofs = reply.lines()
    stored = gateway.stored["demo-plant-c1"]
    assert [p["sequence"] for p in proofs] == [b.sequence for b in stored]
    for proof, block in zip(proofs, stored, strict=True):
        assert (proof["collector_id"], proof["tree_size"]) == ("demo-plant-c1", size)
        verify_inclusion(leaf_hash=leaf_hash(block.payload), index=proof["leaf_index"], size=size,
                         proof=[base64.b64decode(h) for h in proof["hashes"]], root=root)
    one = await gateway.get(f"/v1/proofs/inclusion?collector_id=demo-plant-c1&sequence=7"
                            f"&tree_size={size}")
    assert one.json() == proofs[6]
    part = await gateway.get(f"/v1/collectors/demo-plant-c1/proofs?tree_size={size}"
                             "&from_sequence=5&to_sequence=6")
    assert part.lines() == proofs[4:6]


@pytest.mark.usefixtures("checkpoints_on_demand")
async def test_a_proof_stream_covers_only_blocks_in_that_tree(gateway: Gateway) -> None:
    first = await gateway.publish()
    await gateway.grow(gateway.a, 3)
    second = await gateway.publish()
    assert second["tree_size"] == first["tree_size"] + 3
    old = (await gateway.get(f"/v1/collectors/demo-plant-c1/proofs?tree_size="
                             f"{first['tree_size']}")).lines()
    new = (await gateway.get(f"/v1/collectors/demo-plant-c1/proofs?tree_size="
                             f"{second['tree_size']}")).lines()
    assert [p["sequence"] for p in old] == list(range(1, READINGS_BLOCKS + 2))
    assert [p["sequence"] for p in new] == list(range(1, READINGS_BLOCKS + 5))
    missing = await gateway.get(f"/v1/proofs/inclusion?collector_id=demo-plant-c1&sequence="
                                f"{READINGS_BLOCKS + 3}&tree_size={first['tree_size']}")
    assert (missing.status, missing.json()["error"]) == (404, "not_found")


@pytest.mark.usefixtures("checkpoints_on_demand")
async def test_a_consistency_proof_between_two_checkpoints_of_a_growing_log(gateway: Gateway) -> None:
    first = await gateway.publish()
    assert await gateway.publish() == first  # nothing new: the same checkpoint
    await gateway.grow(gateway.b, 5)
    await gateway.grow(gateway.a, 2)
    second = await gateway.publish()
    old_size, new_size = first["tree_size"], second["tree_size"]
    assert new_size == old_size + 7
    reply = await gateway.get(f"/v1/proofs/consistency?old_size={old_size}&new_size={new_size}")
    answer = reply.json()
    assert (answer["old_size"], answer["new_size"]) == (old_size, new_size)
    verify_consistency(old_size=old_size, new_size=new_size,
                       old_root=base64.b64decode(first["root_hash"]),
                       new_root=base64.b64decode(second["root_hash"]),
                       proof=[base64.b64decode(h) for h in answer["hashes"]])


async def test_the_report_is_stackline_reports_bytes_signed_by_the_log_key(gateway: Gateway,
                                                                             tmp_path: Path) -> None:
    reply = await gateway.get(f"/v1/plants/{PLANT_A}/units/unit-1/report?from={REPORT_DAY}"
                              f"&to={REPORT_NEXT}")
    assert reply.status == 200, reply.body
    assert reply.headers["Content-Type"] == "application/json"
    out = tmp_path / "report.json"
    result = await asyncio.to_thread(
        run_stackline, "report", "--ledger", str(tmp_path / "ledger.sqlite"), "--unit", "unit-1",
        "--plant", PLANT_A, "--from", REPORT_DAY, "--to", REPORT_NEXT, "--format", "json",
        "-o", str(out), "--gateway-id", "test-gateway", timeout_s=120)
    assert result.returncode == 0, result.stderr
    assert reply.body == out.read_bytes()
    assert json.loads(reply.body)["totals"]["provenance"]["sequences"] == [2, READINGS_BLOCKS + 1]
    log_key = reply.headers["Stackline-Log-Key"]
    assert log_key == (await gateway.get("/v1/log")).json()["verifier_key"]
    _, public_key = parse_verifier_key(log_key)
    nacl.signing.VerifyKey(public_key).verify(
        REPORT_SIGNATURE_CONTEXT + reply.body,
        base64.b64decode(reply.headers["Stackline-Report-Signature"]))


async def test_unit_collectors_and_methodologies(gateway: Gateway) -> None:
    a = await gateway.get(f"/v1/plants/{PLANT_A}/units/unit-1/collectors")
    assert a.json() == {"collectors": ["demo-plant-c1"]}
    b = await gateway.get(f"/v1/plants/{PLANT_B}/units/unit-1/collectors", TOKEN_B)
    assert b.json() == {"collectors": ["plant-b-c1"]}
    none = await gateway.get(f"/v1/plants/{PLANT_A}/units/unit-9/collectors")
    assert (none.status, none.json()["error"]) == (404, "not_found")
    shipped = load_methodology("cn-mee-2022")
    reply = await gateway.get("/v1/methodologies/cn-mee-2022")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/yaml")
    assert reply.body == await asyncio.to_thread(Path(shipped.source).read_bytes)
    assert reply.headers["Stackline-Methodology-Digest"] == shipped.digest
    missing = await gateway.get("/v1/methodologies/no-such-method")
    assert (missing.status, missing.json()["error"]) == (404, "not_found")


# --- HTTP: what a token is refused ----------------------------------------------------------------------


PLANT_B_PATHS = [
    "/v1/collectors/plant-b-c1/blocks",
    "/v1/collectors/plant-b-c1/proofs?tree_size={size}",
    "/v1/proofs/inclusion?collector_id=plant-b-c1&sequence=1&tree_size={size}",
    f"/v1/plants/{PLANT_B}/units/unit-1/report?from={REPORT_DAY}&to={REPORT_NEXT}",
    f"/v1/plants/{PLANT_B}/units/unit-1/collectors",
    "/v1/collectors/orphan-c1/blocks",  # no known plant: only "*" reads it
]


async def test_a_token_of_plant_a_cannot_read_plant_b(gateway: Gateway) -> None:
    size = (await gateway.publish())["tree_size"]
    for path in (p.format(size=size) for p in PLANT_B_PATHS):
        reply = await gateway.get(path, TOKEN_A)
        assert reply.status == 403, (path, reply.body)
        body = reply.json()
        assert body["error"] == "forbidden"
        assert "verifier-a" in body["detail"] and "token" in body["detail"]
    assert gateway.refusals("forbidden") == len(PLANT_B_PATHS)
    # and the other way round, while "*" reads both
    assert (await gateway.get("/v1/collectors/demo-plant-c1/blocks", TOKEN_B)).status == 403
    for path in (p.format(size=size) for p in PLANT_B_PATHS[:3]):
        assert (await gateway.get(path, TOKEN_B)).status == 200, path
        assert (await gateway.get(path, TOKEN_ALL)).status == 200, path
    assert (await gateway.get("/v1/collectors/orphan-c1/blocks", TOKEN_ALL)).status == 200


async def test_no_token_or_a_wrong_token_is_refused(gateway: Gateway) -> None:
    paths = ["/v1/log", "/v1/collectors", "/v1/collectors/demo-plant-c1/blocks",
             "/v1/methodologies/cn-mee-2022", "/no/such/path"]
    for path in paths:
        for token in (None, "not-a-token-this-gateway-knows", ""):
            reply = await gateway.get(path, token)
            assert reply.status == 401, (path, token)
            assert reply.json()["error"] == "unauthenticated"
            assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    refused = await gateway.get("/v1/checkpoint", None, method="POST")
    assert refused.status == 401
    assert gateway.refusals("unauthenticated") == 3 * len(paths) + 1
    basic = await asyncio.to_thread(_raw, gateway.http_port, b"GET /v1/log HTTP/1.1\r\n"
                                    b"Authorization: Basic dXNlcjpwYXNz\r\n\r\n")
    assert basic.startswith(b"HTTP/1.1 401 ")
    metrics = gateway.runtime.verifier.metrics_text() if gateway.runtime.verifier else ""
    assert 'stackline_gateway_verifier_refusals_total{transport="http",code="unauthenticated"}' in metrics


BAD_PARAMETERS = [
    ("/v1/collectors/demo-plant-c1/blocks?from_sequence=abc", "from_sequence"),
    ("/v1/collectors/demo-plant-c1/blocks?from_sequence=0", "from_sequence"),
    ("/v1/collectors/demo-plant-c1/blocks?to_sequence=99999999999999999999999", "to_sequence"),
    ("/v1/collectors/demo-plant-c1/blocks?to_sequence=18446744073709551615", "to_sequence"),
    ("/v1/collectors/demo-plant-c1/blocks?from_sequence=5&to_sequence=4", "from_sequence"),
    ("/v1/collectors/demo-plant-c1/blocks?from_unix_ms=5&to_unix_ms=5", "from_unix_ms"),
    ("/v1/collectors/demo-plant-c1/blocks?from_unix_ms=1e9", "from_unix_ms"),
    ("/v1/collectors/demo-plant-c1/blocks?from_seq=1", "from_seq"),
    ("/v1/collectors/demo-plant-c1/blocks?kind=all", "kind"),
    ("/v1/collectors/demo-plant-c1/blocks?kind=CONFIG", "kind"),
    ("/v1/collectors/demo-plant-c1/blocks?from_sequence=1&from_sequence=2", "from_sequence"),
    ("/v1/collectors/demo-plant-c1/blocks?from_sequence", "query string"),
    ("/v1/collectors/demo-plant-c1/proofs", "tree_size"),
    ("/v1/collectors/demo-plant-c1/proofs?tree_size=-1", "tree_size"),
    ("/v1/collectors/demo-plant-c1/proofs?tree_size=100000", "tree_size"),
    ("/v1/collectors/bad%20id/blocks", "collector_id"),
    ("/v1/collectors/%ff/blocks", "percent-escapes"),
    ("/v1/proofs/inclusion?sequence=1&tree_size=1", "collector_id"),
    ("/v1/proofs/inclusion?collector_id=demo-plant-c1&tree_size=1", "sequence"),
    ("/v1/proofs/consistency?old_size=3&new_size=2", "old_size"),
    ("/v1/proofs/consistency?old_size=0&new_size=2", "old_size"),
    ("/v1/proofs/consistency?old_size=1", "new_size"),
    ("/v1/checkpoint?tree_size=x", "tree_size"),
    ("/v1/log?verbose=1", "verbose"),
    (f"/v1/plants/{PLANT_A}/units/unit-1/report?from=2023-02-30&to={REPORT_NEXT}", "from"),
    (f"/v1/plants/{PLANT_A}/units/unit-1/report?from={REPORT_DAY}", "to"),
    (f"/v1/plants/{PLANT_A}/units/unit-1/report?from={REPORT_NEXT}&to={REPORT_DAY}", "to"),
    (f"/v1/plants/{PLANT_A}/units/unit-1/report?from=2020-01-01&to=2023-01-01", "days"),
    ("/v1/methodologies/..%2F..%2Fsecret.yaml", "methodology_id"),
    ("/v1/methodologies/Upper", "methodology_id"),
]


async def test_bad_parameters_are_refused_naming_them(gateway: Gateway) -> None:
    await gateway.publish()
    for path, named in BAD_PARAMETERS:
        reply = await gateway.get(path)
        assert reply.status == 400, (path, reply.body)
        body = reply.json()
        assert body["error"] == "bad_request"
        assert named in body["detail"], (path, body["detail"])


async def test_unknown_paths_methods_and_things(gateway: Gateway) -> None:
    for path in ("/", "/v1", "/v1/log/", "/v2/log", "/v1/collectors//blocks",
                 "/v1/collectors/nobody/blocks", "/v1/checkpoint?tree_size=999999"):
        reply = await gateway.get(path)
        assert (reply.status, reply.json()["error"]) == (404, "not_found"), path
    reply = await gateway.get("/v1/collectors", method="DELETE")
    assert (reply.status, reply.headers["Allow"]) == (405, "GET")
    assert (await gateway.get("/v1/log", method="POST")).status == 405


async def test_one_connection_serves_several_requests(gateway: Gateway) -> None:
    paths = ["/v1/log", "/v1/collectors/demo-plant-c1/blocks", "/v1/nothing", "/v1/collectors"]
    assert await asyncio.to_thread(_statuses_on_one_connection, gateway.http_port,
                                   [(path, 0.0) for path in paths]) == [200, 200, 404, 200]


def _statuses_on_one_connection(port: int, requests: list[tuple[str, float]]) -> list[int]:
    """GET each path (after a pause of its seconds) on one kept-alive connection, with token A;
    the statuses."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        statuses = []
        for path, pause_s in requests:
            time.sleep(pause_s)
            connection.request("GET", path, headers={"Authorization": f"Bearer {TOKEN_A}"})
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
        return statuses
    finally:
        connection.close()


async def test_an_http_1_0_client_gets_the_stream_without_chunks(gateway: Gateway) -> None:
    answer = await asyncio.to_thread(_raw, gateway.http_port, (
        "GET /v1/collectors/demo-plant-c1/blocks HTTP/1.0\r\n"
        f"Authorization: Bearer {TOKEN_A}\r\n\r\n").encode())
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"Transfer-Encoding" not in head and b"Connection: close" in head
    assert [json.loads(line)["sequence"] for line in body.splitlines()] == list(
        range(1, READINGS_BLOCKS + 2))


async def test_a_ledger_failure_is_unavailable_or_cuts_the_stream(
        gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = gateway.runtime.ledger
    select_blocks = ledger.select_blocks

    async def failing(collector_id: str, selection: BlockSelection, *, after_sequence: int,
                      limit: int) -> Any:
        if after_sequence == 20:  # the stream's third page
            raise LedgerError("the disk is on fire")
        return await select_blocks(collector_id, selection, after_sequence=after_sequence,
                                   limit=limit)
    monkeypatch.setattr("gateway.verifier_api.PAGE_BLOCKS", 10)
    monkeypatch.setattr(ledger, "select_blocks", failing)
    with pytest.raises(http.client.IncompleteRead) as caught:
        await gateway.get("/v1/collectors/demo-plant-c1/blocks?to_sequence=30")
    received = [json.loads(line) for line in caught.value.partial.splitlines()]
    assert [line["sequence"] for line in received] == list(range(1, 21))  # two pages, then cut

    async def broken() -> Any:
        raise LedgerError("the ledger is gone")
    monkeypatch.setattr(ledger, "collector_keys", broken)
    reply = await gateway.get("/v1/collectors")
    assert (reply.status, reply.json()["error"]) == (503, "unavailable")
    assert (await gateway.get("/v1/log")).status == 200  # the rest goes on
    async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await VerifierStub(channel).ListCollectors(pb.ListCollectorsRequest(),
                                                       metadata=_auth(TOKEN_A))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


# --- garbage ------------------------------------------------------------------------------------------


def _raw(port: int, data: bytes, *, read: bool = True) -> bytes:
    """Send bytes on a fresh connection; what comes back until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        sock.sendall(data)
        if not read:
            return b""
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


GARBAGE = [
    b"\x00\xff" * 300 + b"\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET /v1/log\r\n\r\n",
    b"GET /v1/log HTTP/2.0\r\n\r\n",
    b"GET http://example.org/v1/log HTTP/1.1\r\n\r\n",
    b"GET /v1/log HTTP/1.1\r\nNo colon here\r\n\r\n",
    b"GET /v1/log HTTP/1.1\r\n folded: header\r\n\r\n",
    b"GET /v1/log HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n",
    b"GET /v1/log HTTP/1.1\r\n" + b"X: y\r\n" * 100 + b"\r\n",
    b"POST /v1/checkpoint HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST /v1/checkpoint HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
    b"POST /v1/checkpoint HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"GET /v1/log HTTP/1.1\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n",
    b"GET /v1/log HTTP/1.1\r\nHost: a\r\n",  # cut before the blank line
    b"",
]


async def test_garbage_never_harms_the_server(gateway: Gateway) -> None:
    for data in GARBAGE:
        answer = await asyncio.to_thread(_raw, gateway.http_port, data)
        assert answer == b"" or answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 401 ")), (
            data[:60], answer[:200])
    garbage_with_token = [
        f"GET /v1/collectors/demo-plant-c1/blocks?from_sequence={'9' * 5000} HTTP/1.1\r\n",
        "GET /v1/collectors/" + "%" * 300 + "/blocks HTTP/1.1\r\n",
        "GET /v1/collectors/demo-plant-c1/blocks?%zz=1 HTTP/1.1\r\n",
        "GET /v1/collectors/demo-plant-c1/blocks?" + "&".join(["a=1"] * 50) + " HTTP/1.1\r\n",
        "GET /v1/plants/x/units/y/report?from=99999-01-01&to=2023-01-01 HTTP/1.1\r\n",
        "GET /v1/proofs/consistency?old_size=1&new_size=" + "9" * 19 + " HTTP/1.1\r\n",
    ]
    for line in garbage_with_token:
        data = (line + f"Authorization: Bearer {TOKEN_A}\r\nConnection: close\r\n\r\n").encode()
        answer = await asyncio.to_thread(_raw, gateway.http_port, data)
        assert answer.startswith(b"HTTP/1.1 400 "), (line[:80], answer[:300])
    # a client that sends half a request and waits holds only its own connection
    half = socket.create_connection(("127.0.0.1", gateway.http_port))
    try:
        half.sendall(b"GET /v1/log HTTP/1.1\r\n")
        assert (await gateway.get("/v1/log")).status == 200
    finally:
        half.close()
    assert (await gateway.get("/v1/collectors")).json()["collectors"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_request_head_parses_or_is_a_bad_request(data: bytes) -> None:
    try:
        head = parse_request_head(data + b"\r\n\r\n")
    except BadRequest:
        return
    assert head.path.startswith("/")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.sampled_from(["GET", "POST", "PUT", "X"]))
def test_any_path_routes_or_is_refused(path: str, method: str) -> None:
    try:
        found, args = route(method, "/" + path)
    except (NotFound, MethodNotAllowed, BadRequest):
        return
    assert isinstance(found, Route) and all(args)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_query_parses_or_is_refused(query: str) -> None:
    try:
        params = parse_query(query, ("from_sequence", "tree_size"))
    except ApiError:
        return
    assert set(params) <= {"from_sequence", "tree_size"}


def test_routes_take_their_parameters_from_the_path() -> None:
    assert route("GET", "/v1/plants/p%2D1/units/u.2/report") == (Route.REPORT, ("p-1", "u.2"))
    assert route("POST", "/v1/checkpoint") == (Route.PUBLISH, ())
    with pytest.raises(MethodNotAllowed):
        route("PUT", "/v1/checkpoint")


def test_tokens_match_by_digest_and_scope_by_plant() -> None:
    tokens = Tokens([(token_digest("t-a"), TokenScope("a", frozenset({"p1"}))),
                     (token_digest("t-all"), TokenScope("all", frozenset({"*"})))])
    scope = tokens.find("t-a")
    assert scope is not None and scope.name == "a"
    assert scope.may_read("p1") and not scope.may_read("p2") and not scope.may_read(None)
    every = tokens.find("t-all")
    assert every is not None and every.may_read(None) and every.may_read("p2")
    assert tokens.find("t-b") is None and tokens.find("") is None
    assert bearer_token("Bearer abc") == "abc" == bearer_token("bearer   abc")
    assert bearer_token("Basic abc") is None and bearer_token("Bearer") is None
    assert bearer_token(None) is None


# --- gRPC ---------------------------------------------------------------------------------------------


def _auth(token: str | None) -> tuple[tuple[str, str], ...]:
    return () if token is None else (("authorization", f"Bearer {token}"),)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _checkpoint_json(message: pb.CheckpointResponse) -> dict[str, Any]:
    """A gRPC checkpoint as the HTTP API writes it."""
    return {"note": message.note, "tree_size": message.tree_size,
            "root_hash": _b64(message.root_hash), "published_unix_ms": message.published_unix_ms,
            "verifier_key": message.verifier_key}


def _proof_json(message: pb.InclusionProofResponse) -> dict[str, Any]:
    """A gRPC inclusion proof as the HTTP API writes it."""
    return {"collector_id": message.collector_id, "sequence": message.sequence,
            "leaf_index": message.leaf_index, "tree_size": message.tree_size,
            "hashes": [_b64(h) for h in message.hashes]}


VERIFIER_METHODS = pb.DESCRIPTOR.services_by_name["Verifier"].methods


async def _call_without_token(channel: grpc.aio.Channel, method: Any) -> None:
    """Call a method of the schema with an empty request, as its streaming kind says."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    if method.server_streaming:
        _ = [m async for m in channel.unary_stream(path)(b"")]
    else:
        await channel.unary_unary(path)(b"")


async def test_every_verifier_rpc_of_the_schema_is_served(gateway: Gateway) -> None:
    # each rpc of the schema (each HTTP operation has one: docs/verifier-api.md) must be
    # registered, with its streaming kind, behind the token check: an unregistered one would
    # answer UNIMPLEMENTED
    async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
        for method in VERIFIER_METHODS:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _call_without_token(channel, method)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, method.name
    assert gateway.refusals("unauthenticated", "grpc") == len(VERIFIER_METHODS)


async def test_grpc_log_proof_streams_and_unit_collectors_equal_http(gateway: Gateway) -> None:
    async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
        stub = VerifierStub(channel)
        state = await stub.GetLog(pb.LogRequest(), metadata=_auth(TOKEN_A))
        http_state = (await gateway.get("/v1/log")).json()
        assert (state.origin, state.verifier_key, state.tree_size) == (
            http_state["origin"], http_state["verifier_key"], http_state["tree_size"])
        assert (_checkpoint_json(state.checkpoint) if state.HasField("checkpoint") else None) == (
            http_state["checkpoint"])

        fresh = await stub.GetCheckpoint(pb.CheckpointRequest(fresh=True), metadata=_auth(TOKEN_A))
        size = fresh.tree_size
        assert _checkpoint_json(fresh) == (await gateway.get("/v1/checkpoint")).json()
        state = await stub.GetLog(pb.LogRequest(), metadata=_auth(TOKEN_B))
        assert state.tree_size == size
        assert _checkpoint_json(state.checkpoint) == (await gateway.get("/v1/log")).json()[
            "checkpoint"] == _checkpoint_json(fresh)
        await gateway.grow(gateway.a, 3)  # stored after that checkpoint: in no proof of it

        async def proofs(token: str, **fields: Any) -> list[pb.InclusionProofResponse]:
            request = pb.InclusionProofsRequest(**fields)
            return [m async for m in stub.StreamInclusionProofs(request, metadata=_auth(token))]

        every = await proofs(TOKEN_A, collector_id="demo-plant-c1", tree_size=size)
        http_every = (await gateway.get(f"/v1/collectors/demo-plant-c1/proofs?tree_size={size}"))
        assert [_proof_json(p) for p in every] == http_every.lines()
        stored = gateway.stored["demo-plant-c1"]
        assert [(p.collector_id, p.sequence) for p in every] == [
            ("demo-plant-c1", b.sequence) for b in stored[:READINGS_BLOCKS + 1]]
        for proof, block in zip(every, stored, strict=False):
            verify_inclusion(leaf_hash=leaf_hash(block.payload), index=proof.leaf_index,
                             size=size, proof=list(proof.hashes), root=fresh.root_hash)
        some = await proofs(TOKEN_A, collector_id="demo-plant-c1", tree_size=size,
                            from_sequence=5, to_sequence=7)
        assert [_proof_json(p) for p in some] == (await gateway.get(
            f"/v1/collectors/demo-plant-c1/proofs?tree_size={size}&from_sequence=5"
            "&to_sequence=7")).lines() == http_every.lines()[4:7]
        one = await stub.GetInclusionProof(pb.InclusionProofRequest(
            collector_id="demo-plant-c1", sequence=6, tree_size=size), metadata=_auth(TOKEN_A))
        assert one == some[1]
        assert await proofs(TOKEN_A, collector_id="demo-plant-c1", tree_size=0) == []
        # plant B's range: its own token and "*" read it, as over HTTP
        b_path = f"/v1/collectors/plant-b-c1/proofs?tree_size={size}&to_sequence=4"
        for token in (TOKEN_B, TOKEN_ALL):
            b = await proofs(token, collector_id="plant-b-c1", tree_size=size, to_sequence=4)
            assert [_proof_json(p) for p in b] == (await gateway.get(b_path, token)).lines()
            assert [p.sequence for p in b] == [1, 2, 3, 4]

        for token, plant, expected in ((TOKEN_A, PLANT_A, ["demo-plant-c1"]),
                                       (TOKEN_B, PLANT_B, ["plant-b-c1"]),
                                       (TOKEN_ALL, PLANT_B, ["plant-b-c1"])):
            units = await stub.ListUnitCollectors(
                pb.UnitCollectorsRequest(plant_id=plant, unit_id="unit-1"), metadata=_auth(token))
            assert list(units.collector_ids) == expected == (await gateway.get(
                f"/v1/plants/{plant}/units/unit-1/collectors", token)).json()["collectors"]

        later = await stub.GetCheckpoint(pb.CheckpointRequest(fresh=True), metadata=_auth(TOKEN_A))
        consistency = await stub.GetConsistencyProof(pb.ConsistencyProofRequest(
            old_size=size, new_size=later.tree_size), metadata=_auth(TOKEN_A))
        http_consistency = (await gateway.get(f"/v1/proofs/consistency?old_size={size}"
                                              f"&new_size={later.tree_size}")).json()
        assert {"old_size": consistency.old_size, "new_size": consistency.new_size,
                "hashes": [_b64(h) for h in consistency.hashes]} == http_consistency


async def test_grpc_answers_the_same_with_the_same_scopes(gateway: Gateway) -> None:
    async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
        stub = VerifierStub(channel)
        listed = await stub.ListCollectors(pb.ListCollectorsRequest(), metadata=_auth(TOKEN_A))
        assert [(c.collector_id, c.plant_id, c.chain_head) for c in listed.collectors] == [
            ("demo-plant-c1", PLANT_A, READINGS_BLOCKS + 1)]
        assert listed.collectors[0].keys[0].public_key == gateway.a.key.public_key
        everything = await stub.ListCollectors(pb.ListCollectorsRequest(), metadata=_auth(TOKEN_ALL))
        assert [c.plant_id for c in everything.collectors] == [PLANT_A, "", PLANT_B]

        checkpoint = await stub.GetCheckpoint(pb.CheckpointRequest(fresh=True),
                                              metadata=_auth(TOKEN_A))
        http_checkpoint = (await gateway.get("/v1/checkpoint")).json()
        assert checkpoint.note == http_checkpoint["note"]
        size = checkpoint.tree_size

        blocks = [m async for m in stub.StreamBlocks(
            pb.BlocksRequest(collector_id="demo-plant-c1", from_sequence=2, to_sequence=4),
            metadata=_auth(TOKEN_A))]
        stored = gateway.stored["demo-plant-c1"]
        assert [b.block.payload for b in blocks] == [b.payload for b in stored[1:4]]
        assert [b.block.signature for b in blocks] == [b.signature for b in stored[1:4]]
        assert all(b.HasField("leaf_index") for b in blocks)

        proof = await stub.GetInclusionProof(pb.InclusionProofRequest(
            collector_id="demo-plant-c1", sequence=3, tree_size=size), metadata=_auth(TOKEN_A))
        verify_inclusion(leaf_hash=leaf_hash(stored[2].payload), index=proof.leaf_index, size=size,
                         proof=list(proof.hashes), root=checkpoint.root_hash)
        await gateway.grow(gateway.a, 2)
        later = await stub.GetCheckpoint(pb.CheckpointRequest(fresh=True), metadata=_auth(TOKEN_B))
        consistency = await stub.GetConsistencyProof(pb.ConsistencyProofRequest(
            old_size=size, new_size=later.tree_size), metadata=_auth(TOKEN_B))
        verify_consistency(old_size=size, new_size=later.tree_size, old_root=checkpoint.root_hash,
                           new_root=later.root_hash, proof=list(consistency.hashes))

        call = stub.GetReport(pb.ReportRequest(plant_id=PLANT_A, unit_id="unit-1",
                                               from_date=REPORT_DAY, to_date=REPORT_NEXT),
                              metadata=_auth(TOKEN_A))
        report = await call
        http_report = await gateway.get(f"/v1/plants/{PLANT_A}/units/unit-1/report?from="
                                        f"{REPORT_DAY}&to={REPORT_NEXT}")
        assert report.report_json == http_report.body
        metadata = dict(await call.initial_metadata())
        assert metadata["stackline-report-signature"] == http_report.headers[
            "Stackline-Report-Signature"]
        assert metadata["stackline-log-key"] == http_report.headers["Stackline-Log-Key"]

        methodology = await stub.GetMethodology(pb.MethodologyRequest(methodology_id="cn-mee-2022"),
                                                metadata=_auth(TOKEN_B))
        assert methodology.digest == load_methodology("cn-mee-2022").digest


async def test_grpc_streams_blocks_of_one_kind_as_http_does(gateway: Gateway) -> None:
    await gateway.store(gateway.a, [config_again(gateway.a)])  # #42
    async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
        stub = VerifierStub(channel)

        async def sequences(**fields: Any) -> list[int]:
            request = pb.BlocksRequest(collector_id="demo-plant-c1", **fields)
            return [m.sequence async for m in stub.StreamBlocks(request, metadata=_auth(TOKEN_A))]

        http_configs = (await gateway.get("/v1/collectors/demo-plant-c1/blocks?kind=config"))
        assert await sequences(kind=pb.BLOCK_KIND_CONFIG) == [1, 42] == [
            line["sequence"] for line in http_configs.lines()]
        assert await sequences(kind=pb.BLOCK_KIND_CONFIG, from_sequence=2) == [42]
        assert await sequences(kind=pb.BLOCK_KIND_READINGS, to_sequence=4) == [2, 3, 4]
        assert len(await sequences(kind=pb.BLOCK_KIND_UNSPECIFIED)) == READINGS_BLOCKS + 2
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await sequences(kind=7)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "kind 7" in (caught.value.details() or "")


async def test_grpc_refusals(gateway: Gateway) -> None:
    async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
        stub = VerifierStub(channel)
        refused = {
            grpc.StatusCode.UNAUTHENTICATED: [
                stub.ListCollectors(pb.ListCollectorsRequest()),
                stub.ListCollectors(pb.ListCollectorsRequest(), metadata=_auth("wrong-token")),
                stub.GetCheckpoint(pb.CheckpointRequest(fresh=True)),
            ],
            grpc.StatusCode.PERMISSION_DENIED: [
                stub.GetInclusionProof(pb.InclusionProofRequest(
                    collector_id="plant-b-c1", sequence=1, tree_size=1), metadata=_auth(TOKEN_A)),
                stub.GetReport(pb.ReportRequest(plant_id=PLANT_B, unit_id="unit-1",
                                                from_date=REPORT_DAY, to_date=REPORT_NEXT),
                               metadata=_auth(TOKEN_A)),
                stub.ListUnitCollectors(pb.UnitCollectorsRequest(plant_id=PLANT_B,
                                                                 unit_id="unit-1"),
                                        metadata=_auth(TOKEN_A)),
            ],
            grpc.StatusCode.NOT_FOUND: [
                stub.GetCheckpoint(pb.CheckpointRequest(tree_size=12345), metadata=_auth(TOKEN_A)),
                stub.GetMethodology(pb.MethodologyRequest(methodology_id="nothing"),
                                    metadata=_auth(TOKEN_A)),
                stub.ListUnitCollectors(pb.UnitCollectorsRequest(plant_id=PLANT_A,
                                                                 unit_id="unit-9"),
                                        metadata=_auth(TOKEN_A)),
            ],
            grpc.StatusCode.INVALID_ARGUMENT: [
                stub.GetInclusionProof(pb.InclusionProofRequest(
                    collector_id="demo-plant-c1", sequence=0, tree_size=1), metadata=_auth(TOKEN_A)),
                stub.GetConsistencyProof(pb.ConsistencyProofRequest(old_size=5, new_size=2),
                                         metadata=_auth(TOKEN_A)),
                stub.GetReport(pb.ReportRequest(plant_id=PLANT_A, unit_id="unit-1",
                                                from_date="yesterday", to_date=REPORT_NEXT),
                               metadata=_auth(TOKEN_A)),
                stub.GetCheckpoint(pb.CheckpointRequest(fresh=True, tree_size=3),
                                   metadata=_auth(TOKEN_A)),
                stub.ListUnitCollectors(pb.UnitCollectorsRequest(plant_id="bad plant",
                                                                 unit_id="unit-1"),
                                        metadata=_auth(TOKEN_A)),
            ],
        }
        for code, calls in refused.items():
            for call in calls:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call
                assert caught.value.code() == code
                assert caught.value.details()
        size = (await stub.GetCheckpoint(pb.CheckpointRequest(fresh=True),
                                         metadata=_auth(TOKEN_A))).tree_size
        block_streams = [
            (grpc.StatusCode.PERMISSION_DENIED, pb.BlocksRequest(collector_id="plant-b-c1")),
            (grpc.StatusCode.NOT_FOUND, pb.BlocksRequest(collector_id="nobody")),
            (grpc.StatusCode.INVALID_ARGUMENT, pb.BlocksRequest(collector_id="demo-plant-c1",
                                                                from_sequence=9, to_sequence=3)),
        ]
        for code, blocks in block_streams:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                _ = [m async for m in stub.StreamBlocks(blocks, metadata=_auth(TOKEN_A))]
            assert caught.value.code() == code
        proof_streams = [  # (code, what the detail names, the request)
            (grpc.StatusCode.PERMISSION_DENIED, "verifier-a", pb.InclusionProofsRequest(
                collector_id="plant-b-c1", from_sequence=1, to_sequence=5, tree_size=size)),
            (grpc.StatusCode.PERMISSION_DENIED, "verifier-a", pb.InclusionProofsRequest(
                collector_id="orphan-c1", tree_size=size)),
            (grpc.StatusCode.NOT_FOUND, "nobody", pb.InclusionProofsRequest(
                collector_id="nobody", tree_size=size)),
            (grpc.StatusCode.INVALID_ARGUMENT, "tree_size", pb.InclusionProofsRequest(
                collector_id="demo-plant-c1")),
            (grpc.StatusCode.INVALID_ARGUMENT, "tree_size", pb.InclusionProofsRequest(
                collector_id="demo-plant-c1", tree_size=size + 1)),
            (grpc.StatusCode.INVALID_ARGUMENT, "from_sequence", pb.InclusionProofsRequest(
                collector_id="demo-plant-c1", from_sequence=9, to_sequence=3, tree_size=size)),
            (grpc.StatusCode.INVALID_ARGUMENT, "to_sequence", pb.InclusionProofsRequest(
                collector_id="demo-plant-c1", to_sequence=2**64 - 1, tree_size=size)),
        ]
        for code, named, proofs in proof_streams:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                _ = [m async for m in stub.StreamInclusionProofs(proofs, metadata=_auth(TOKEN_A))]
            assert caught.value.code() == code, proofs
            assert named in (caught.value.details() or ""), proofs
        garbage = channel.unary_unary("/stackline.v1.Verifier/GetInclusionProof")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await garbage(b"\xff" * 11 + b"junk", metadata=_auth(TOKEN_A))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert gateway.refusals("unauthenticated", "grpc") == 3
    assert gateway.refusals("forbidden", "grpc") == 6


async def test_a_grpc_proof_stream_cut_part_way_ends_unavailable(
        gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    log = gateway.runtime.log
    inclusions = log.inclusions

    async def failing(collector_id: str, first_sequence: int, last_sequence: int,
                      tree_size: int) -> Any:
        if first_sequence > 20:  # the stream's third page
            raise LedgerError("the disk is on fire")
        return await inclusions(collector_id, first_sequence, last_sequence, tree_size)
    async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
        stub = VerifierStub(channel)
        size = (await stub.GetCheckpoint(pb.CheckpointRequest(fresh=True),
                                         metadata=_auth(TOKEN_A))).tree_size
        monkeypatch.setattr("gateway.verifier_api.PAGE_PROOFS", 10)
        monkeypatch.setattr(log, "inclusions", failing)
        received: list[int] = []

        async def take() -> None:
            async for proof in stub.StreamInclusionProofs(pb.InclusionProofsRequest(
                    collector_id="demo-plant-c1", tree_size=size), metadata=_auth(TOKEN_A)):
                received.append(proof.sequence)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await take()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert received == list(range(1, 21))  # two pages, then the cut: ask again from 21
    assert gateway.refusals("unavailable", "grpc") == 1


# --- configuration and the token command ----------------------------------------------------------------


BAD_SECTIONS = [
    ({"listen": "127.0.0.1:8480", "tokens": []}, "verifier_api.tokens"),
    ({"tokens": [{"name": "a", "plants": ["p"]}]}, "verifier_api.tokens.0"),
    ({"tokens": [{"name": "a", "sha256": "ABC", "plants": ["p"]}]}, "verifier_api.tokens.0.sha256"),
    ({"tokens": [{"name": "a", "sha256": "0" * 64, "plants": []}]}, "verifier_api.tokens.0.plants"),
    ({"tokens": [{"name": "a", "sha256": "0" * 64, "plants": ["*", "p"]}]}, "verifier_api.tokens.0"),
    ({"tokens": [{"name": "a", "sha256": "0" * 64, "plants": ["bad plant"]}]},
     "verifier_api.tokens.0.plants.0"),
    ({"tokens": [{"name": "a", "sha256": "0" * 64, "plants": ["p"], "scope": "all"}]},
     "verifier_api.tokens.0.scope"),
    ({"tokens": [{"name": "a", "sha256": "0" * 64, "plants": ["p"]},
                 {"name": "a", "sha256": "1" * 64, "plants": ["p"]}]}, "verifier_api"),
    ({"listen": "127.0.0.1:99999", "tokens": [{"name": "a", "sha256": "0" * 64, "plants": ["p"]}]},
     "verifier_api.listen"),
    ({"listen": "nowhere", "tokens": [{"name": "a", "sha256": "0" * 64, "plants": ["p"]}]},
     "verifier_api.listen"),
    ({"max_report_blocks": 0, "tokens": [{"name": "a", "sha256": "0" * 64, "plants": ["p"]}]},
     "verifier_api.max_report_blocks"),
]


@pytest.mark.parametrize(("section", "field"), BAD_SECTIONS)
def test_a_bad_verifier_api_section_names_the_field(tmp_path: Path, section: dict[str, Any],
                                                    field: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"gateway": {"id": "g"}, "verifier_api": section}))
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(path)
    assert caught.value.field == field


@pytest.mark.parametrize(("content", "problem"), [
    (None, "cannot read a token"), ("short\n", "shorter than 16"), ("\n", "cannot read a token")])
def test_a_bad_token_file_stops_the_gateway_naming_the_field(tmp_path: Path, content: str | None,
                                                             problem: str) -> None:
    if content is not None:
        (tmp_path / "token").write_text(content)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"gateway": {"id": "g"}, "listen": {"grpc": "127.0.0.1:0"},
                                    "verifier_api": {"tokens": [
                                        {"name": "a", "token_file": "token", "plants": ["p"]}]}}))
    with pytest.raises(ConfigError) as caught:
        GatewayRuntime(config=load_gateway_config(path))
    assert caught.value.field == "verifier_api.tokens.0.token_file"
    assert problem in str(caught.value)
    result = run_stackline("gateway", "run", "--config", str(path))
    assert result.returncode == 2
    assert "gateway.yaml: verifier_api.tokens.0.token_file" in result.stderr


def test_the_token_command_prints_a_token_and_its_stanza(tmp_path: Path) -> None:
    result = run_stackline("gateway", "token", "--name", "verifier-a", "--plants", "plant-a, plant-b")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    token = lines[1]
    assert len(token) >= 40 and " " not in token
    stanza = result.stdout[result.stdout.index("    - name:"):]
    section = yaml.safe_load("tokens:\n" + stanza)
    assert section["tokens"] == [{"name": "verifier-a", "plants": ["plant-a", "plant-b"],
                                  "sha256": hashlib.sha256(token.encode()).hexdigest()}]
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"gateway": {"id": "g"}, "verifier_api": section}))
    assert load_gateway_config(path).config.verifier_api is not None
    every = run_stackline("gateway", "token", "--name", "regulator", "--plants", "*")
    assert yaml.safe_load("t:\n" + every.stdout[every.stdout.index("    - name:"):])["t"][0][
        "plants"] == ["*"]
    bad = run_stackline("gateway", "token", "--name", "two words", "--plants", "p")
    assert bad.returncode == 2 and "--name" in bad.stderr


# --- the ledger's selection, on every backend ---------------------------------------------------------


def _plan(ledger: Ledger, query: str, args: list[object]) -> str:
    """The store's plan for a query, read behind the ledger's back."""
    if isinstance(ledger, SqliteLedger):
        with contextlib.closing(sqlite3.connect(ledger.path)) as db:
            return " ".join(str(row[-1]) for row in db.execute(f"EXPLAIN QUERY PLAN {query}", args))
    assert isinstance(ledger, PostgresLedger)
    plan = run_async(pg_fetchval(ledger.url, f"EXPLAIN (FORMAT JSON) {query}", *args))
    return str(plan)


async def test_a_ledger_selects_blocks_by_kind_window_and_sequence(any_ledger: Ledger) -> None:
    plant = DemoCollector()
    blocks = [*plant.chain(300), config_again(plant), *plant.chain(20)]  # CONFIG #1 and #302
    await any_ledger.enroll(plant.key)
    for start in range(0, len(blocks), 100):
        await any_ledger.append(plant.collector_id, blocks[start:start + 100], transport="test",
                                peer="test", received_unix_ms=0)

    async def select(*, after: int = 0, limit: int = 1000, **bounds: Any) -> list[int]:
        rows = await any_ledger.select_blocks(plant.collector_id, BlockSelection(**bounds),
                                              after_sequence=after, limit=limit)
        assert [row.payload for row in rows] == [blocks[row.sequence - 1].payload for row in rows]
        return [row.sequence for row in rows]

    config, readings = pb.BLOCK_KIND_CONFIG, pb.BLOCK_KIND_READINGS
    assert await select(kind=config) == [1, 302]
    assert await select(kind=config, after=1) == [302]
    assert await select(kind=config, limit=1) == [1]
    assert await select(kind=config, to_sequence=301) == [1]
    assert await select(kind=readings) == [*range(2, 302), *range(303, 323)]
    assert await select(kind=readings, after=290, limit=15) == [*range(291, 302), *range(303, 307)]
    tick = BASE_MS + 300 * TICK_MS  # the window of CONFIG #302 and of readings #303
    assert await select(from_unix_ms=BASE_MS + 10 * TICK_MS, to_unix_ms=BASE_MS + 13 * TICK_MS) == [
        12, 13, 14]  # window starts in [from, to)
    assert await select(from_unix_ms=tick, to_unix_ms=tick + 1) == [302, 303]
    assert await select(from_unix_ms=tick, kind=readings, to_sequence=304) == [303, 304]
    assert await select(to_unix_ms=BASE_MS + 1) == [1, 2]
    assert await any_ledger.select_blocks("nobody", BlockSelection(), after_sequence=0,
                                          limit=10) == []
    # the configuration blocks come from the partial index, not from a read of the chain
    query, args = selection_query(plant.collector_id, BlockSelection(kind=config),
                                  after_sequence=0, limit=10,
                                  placeholder=(lambda _n: "?") if isinstance(any_ledger, SqliteLedger)
                                  else (lambda n: f"${n}"))
    assert "blocks_config" in _plan(any_ledger, query, args)


# --- PostgreSQL -------------------------------------------------------------------------------------------


async def test_scopes_blocks_and_proofs_over_a_postgresql_ledger(postgres_url: str,
                                                                 tmp_path: Path) -> None:
    async for gateway in start_gateway(tmp_path, {"url": postgres_url}):
        checkpoint = await gateway.publish()
        root = base64.b64decode(checkpoint["root_hash"])
        blocks = (await gateway.get("/v1/collectors/plant-b-c1/blocks", TOKEN_B)).lines()
        proofs = (await gateway.get(f"/v1/collectors/plant-b-c1/proofs?tree_size="
                                    f"{checkpoint['tree_size']}", TOKEN_B)).lines()
        stored = gateway.stored["plant-b-c1"]
        assert [base64.b64decode(b["payload"]) for b in blocks] == [b.payload for b in stored]
        for proof, block in zip(proofs, stored, strict=True):
            verify_inclusion(leaf_hash=leaf_hash(block.payload), index=proof["leaf_index"],
                             size=checkpoint["tree_size"],
                             proof=[base64.b64decode(h) for h in proof["hashes"]], root=root)
        for path in PLANT_B_PATHS[:3]:
            refused = await gateway.get(path.format(size=checkpoint["tree_size"]), TOKEN_A)
            assert refused.status == 403
        assert (await gateway.get("/v1/collectors", None)).status == 401


@pytest.mark.parametrize(("listen", "grpc", "warned"), [
    ("0.0.0.0:0", "127.0.0.1:0", True), ("127.0.0.1:0", "0.0.0.0:0", True),
    ("127.0.0.1:0", "127.0.0.1:0", False)])
def test_a_verifier_api_off_loopback_warns_that_tokens_travel_in_plaintext(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, listen: str, grpc: str,
        warned: bool) -> None:
    """HTTP, or gRPC (the Verifier service shares the ingest port) off loopback."""
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"gateway": {"id": "g"}, "listen": {"grpc": grpc},
                                    "verifier_api": {"listen": listen, "tokens": [
                                        {"name": "a", "sha256": "ab" * 32, "plants": ["p"]}]}}))
    with caplog.at_level(logging.WARNING, logger="gateway.runtime"):
        GatewayRuntime(config=load_gateway_config(path))
    assert ("in plaintext: bearer tokens cross the network" in caplog.text) is warned


# --- what one client cannot take from the others ---------------------------------------------------


class _CountingReader:
    """A ledger's blocks as `load_unit_data` reads them, counting those of the per-collector
    pass (the one that keeps readings blocks)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.kept_pass_rows = 0

    async def iter_blocks(self, collector_id: str | None = None) -> AsyncIterator[StoredRow]:
        async for row in self.ledger.iter_blocks(collector_id):
            if collector_id is not None:
                self.kept_pass_rows += 1
            yield row


async def test_a_report_reads_no_more_blocks_than_its_cap(gateway: Gateway) -> None:
    day, next_day = date.fromisoformat(REPORT_DAY), date.fromisoformat(REPORT_NEXT)
    reader = _CountingReader(gateway.runtime.ledger)
    data = await load_unit_data(reader, unit_id="unit-1", start=day, end=next_day, plant_id=PLANT_A)
    assert len(data.blocks) == READINGS_BLOCKS and reader.kept_pass_rows == READINGS_BLOCKS + 1
    reader = _CountingReader(gateway.runtime.ledger)
    with pytest.raises(PeriodTooLarge) as caught:
        await load_unit_data(reader, unit_id="unit-1", start=day, end=next_day, plant_id=PLANT_A,
                             max_blocks=5)
    assert (caught.value.blocks, caught.value.max_blocks) == (6, 5)
    assert reader.kept_pass_rows == 7  # the CONFIG block and six readings blocks: then it stopped
    exact = await load_unit_data(gateway.runtime.ledger, unit_id="unit-1", start=day, end=next_day,
                                 plant_id=PLANT_A, max_blocks=READINGS_BLOCKS)
    assert exact.blocks == data.blocks


async def test_a_report_of_more_blocks_than_the_gateway_reads_is_refused(gateway: Gateway) -> None:
    verifier = gateway.runtime.verifier
    assert verifier is not None
    assert verifier.max_report_blocks == MAX_REPORT_BLOCKS == VerifierApiSection(
        tokens=({"name": "a", "sha256": "0" * 64, "plants": ["p"]},)).max_report_blocks
    verifier.max_report_blocks = 10
    path = f"/v1/plants/{PLANT_A}/units/unit-1/report?from={REPORT_DAY}&to={REPORT_NEXT}"
    reply = await gateway.get(path)
    assert (reply.status, reply.json()["error"]) == (422, "unprocessable"), reply.body
    detail = reply.json()["detail"]
    assert "more than 10 readings blocks" in detail and "shorter period" in detail
    assert "verifier_api.max_report_blocks" in detail
    async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await VerifierStub(channel).GetReport(pb.ReportRequest(
                plant_id=PLANT_A, unit_id="unit-1", from_date=REPORT_DAY, to_date=REPORT_NEXT),
                metadata=_auth(TOKEN_A))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == detail
    assert gateway.refusals("unprocessable") == gateway.refusals("unprocessable", "grpc") == 1
    verifier.max_report_blocks = READINGS_BLOCKS
    assert (await gateway.get(path)).status == 200


async def test_checkpoints_are_published_at_most_once_an_interval(
        gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each publication is signed and stored for good: POST /v1/checkpoint (and gRPC fresh)
    answer the latest checkpoint while it is younger than the interval, whoever published it."""
    monkeypatch.setattr("gateway.verifier_api.CHECKPOINT_MIN_INTERVAL_S", 3600.0)
    ledger = gateway.runtime.ledger
    first = await gateway.publish()
    async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
        for _ in range(20):
            await gateway.grow(gateway.a, 1)
            assert await gateway.publish() == first
            fresh = await VerifierStub(channel).GetCheckpoint(pb.CheckpointRequest(fresh=True),
                                                              metadata=_auth(TOKEN_A))
            assert _checkpoint_json(fresh) == first
    assert [c.tree_size for c in await ledger.checkpoints()] == [first["tree_size"]]
    monkeypatch.setattr("gateway.verifier_api.CHECKPOINT_MIN_INTERVAL_S", 0.0)
    second = await gateway.publish()
    assert second["tree_size"] == first["tree_size"] + 20  # past the interval: every stored block
    # a checkpoint the log published itself (its timer) is as young as one published on request
    await gateway.grow(gateway.a, 1)
    own = await gateway.runtime.log.publish()
    await gateway.grow(gateway.a, 1)
    monkeypatch.setattr("gateway.verifier_api.CHECKPOINT_MIN_INTERVAL_S", 3600.0)
    assert (await gateway.publish())["tree_size"] == own.tree_size == second["tree_size"] + 1


async def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.01)


def _exchange(port: int, data: bytes, *, source: str = "127.0.0.1",
              timeout_s: float = 5.0) -> bytes:
    """Send one request on a fresh connection (the write side left open, as a keep-alive client
    does) and read until the server closes it; socket.timeout if it does not."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s,
                                  source_address=(source, 0)) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


async def test_a_request_that_does_not_authenticate_ends_its_connection(gateway: Gateway) -> None:
    for auth in ("", "Authorization: Bearer not-a-token-this-gateway-knows\r\n",
                 "Authorization: Basic dXNlcjpwYXNz\r\n"):
        for path in ("/v1/log", "/no/such/path"):
            request = f"GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode()
            answer = await asyncio.to_thread(_exchange, gateway.http_port, request)
            head = answer.partition(b"\r\n\r\n")[0]
            assert head.startswith(b"HTTP/1.1 401 ") and b"Connection: close" in head, head
    # the reviewer's lock-out: as many anonymous keep-alive clients as the server has connections
    # (each one refused and closed) leave no connection held, and a token holder gets in
    answers = [await asyncio.to_thread(_exchange, gateway.http_port,
                                       b"GET /v1/log HTTP/1.1\r\nHost: x\r\n\r\n")
               for _ in range(MAX_CONNECTIONS)]
    assert all(a.startswith(b"HTTP/1.1 401 ") for a in answers)
    http_server = gateway.runtime.verifier_http
    assert http_server is not None
    await _wait_for(lambda: http_server.connections == 0, "the connections to close")
    assert (await gateway.get("/v1/log")).status == 200


async def test_a_connection_must_authenticate_within_seconds(
        gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.verifier_api.AUTH_TIMEOUT_S", 0.3)
    started = time.monotonic()
    assert await asyncio.to_thread(_exchange, gateway.http_port, b"") == b""  # says nothing
    assert await asyncio.to_thread(_exchange, gateway.http_port,
                                   b"GET /v1/log HTTP/1.1\r\nHost:") == b""  # half a head
    assert time.monotonic() - started < 4.0

    # once a request authenticated, the connection waits for the next as long as before: the
    # pause runs past the first request's deadline (not a synchronisation)
    assert await asyncio.to_thread(_statuses_on_one_connection, gateway.http_port,
                                   [("/v1/log", 0.0), ("/v1/log", 0.6)]) == [200, 200]


async def test_one_address_cannot_take_every_connection(gateway: Gateway) -> None:
    http_server = gateway.runtime.verifier_http
    assert http_server is not None
    held = [socket.create_connection(("127.0.0.1", gateway.http_port))
            for _ in range(MAX_CONNECTIONS_PER_PEER)]
    try:
        await _wait_for(lambda: http_server.connections == MAX_CONNECTIONS_PER_PEER,
                        "the held connections")
        one_more = await asyncio.to_thread(_exchange, gateway.http_port, (
            f"GET /v1/log HTTP/1.1\r\nAuthorization: Bearer {TOKEN_A}\r\n\r\n").encode())
        head, _, body = one_more.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ") and b"Connection: close" in head, head
        assert "from one address" in json.loads(body)["detail"]
        assert gateway.refusals("unavailable") == 1
        # another address still gets in (the whole of 127.0.0.0/8 is loopback)
        other = await asyncio.to_thread(_exchange, gateway.http_port, (
            f"GET /v1/log HTTP/1.1\r\nAuthorization: Bearer {TOKEN_A}\r\n"
            "Connection: close\r\n\r\n").encode(), source="127.0.0.2")
        assert other.startswith(b"HTTP/1.1 200 "), other[:200]
    finally:
        for sock in held:
            sock.close()
    await _wait_for(lambda: http_server.connections == 0, "the held connections to close")
    assert (await gateway.get("/v1/log")).status == 200


def test_a_content_length_of_other_digits_is_a_bad_request() -> None:
    # the head is read as latin-1, whose superscripts are digits to str.isdigit and not to int()
    for value in ("\u00b2", "\u00b3", "1\u00b9"):
        head = parse_request_head(f"GET /v1/log HTTP/1.1\r\nContent-Length: {value}\r\n\r\n"
                                  .encode("latin-1"))
        with pytest.raises(BadRequest, match="Content-Length"):
            head.content_length()


async def test_a_malformed_or_short_body_is_answered_counted_and_quiet(
        gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    http_server = gateway.runtime.verifier_http
    assert http_server is not None
    with caplog.at_level(logging.WARNING, logger="gateway.verifier_api"):
        answer = await asyncio.to_thread(
            _raw, gateway.http_port, b"GET /v1/log HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in head, answer[:200]
        assert "Content-Length" in json.loads(body)["detail"]
        assert gateway.refusals("bad_request") == 1
        # a body shorter than its Content-Length, then the client hangs up: closed, not a crash
        short = await asyncio.to_thread(
            _raw, gateway.http_port, (f"POST /v1/checkpoint HTTP/1.1\r\nAuthorization: Bearer "
                                      f"{TOKEN_A}\r\nContent-Length: 10\r\n\r\nabc").encode())
        assert short == b""
        await _wait_for(lambda: not http_server._tasks, "the connections to end")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_a_request_head_the_parser_fails_on_is_a_counted_bad_request(
        gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(data: bytes) -> Any:
        raise ValueError("a bug in the parser")
    monkeypatch.setattr("gateway.verifier_api.parse_request_head", broken)
    answer = await asyncio.to_thread(_raw, gateway.http_port, b"GET /v1/log HTTP/1.1\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in head, answer[:200]
    assert json.loads(body)["detail"] == "the request head does not parse: a bug in the parser"
    assert gateway.refusals("bad_request") == 1


def test_the_report_cap_of_the_configuration_reaches_the_running_api(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"gateway": {"id": "g"}, "listen": {"grpc": "127.0.0.1:0"},
                                    "verifier_api": {"max_report_blocks": 7, "tokens": [
                                        {"name": "a", "sha256": "ab" * 32, "plants": ["p"]}]}}))
    runtime = GatewayRuntime(config=load_gateway_config(path))
    assert runtime.verifier is not None and runtime.verifier.max_report_blocks == 7
