"""The time-series sink into a real VictoriaMetrics through the InfluxDB v2 write API.

Every test reads the store back through `/api/v1/export` and compares it with the ledger, value by
value: metric `<measurement>_<field>`, every tag, the millisecond timestamp, the value, and the
quality code. Also: the writer's translation of HTTP and network errors (a scripted HTTP server),
and the `timeseries` section of the gateway configuration.
"""

from __future__ import annotations

import asyncio
import http.server
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import load_gateway_config
from gateway.errors import ConfigError, TimeSeriesRejected, TimeSeriesUnavailable
from gateway.ledger import Ledger, SqliteLedger, VerifiedBlock
from gateway.lineproto import format_line
from gateway.runtime import GatewayRuntime, enroll_collector
from gateway.sink import TimeSeriesSink
from gateway.tsdb import InfluxWriter, TimeSeriesWriter
from tests.conftest import free_port, wait_for
from tests.demo_blocks import BASE_MS, DemoCollector, expected_series
from tests.victoria import VictoriaMetrics, differences, same_samples, started

READINGS = 14
CURSOR = "timeseries"


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    yield from started(tmp_path / "victoria")


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[SqliteLedger]:
    opened = SqliteLedger(path=tmp_path / "ledger.sqlite")
    try:
        yield opened
    finally:
        await opened.close()


async def append(ledger: Ledger, blocks: list[VerifiedBlock]) -> None:
    await ledger.append(blocks[0].collector_id, blocks, transport="test", peer="test",
                        received_unix_ms=0)


async def ledger_series(ledger: Ledger, collector_id: str) -> dict[Any, list[tuple[int, float]]]:
    """What the store must hold: worked out from the ledger's stored blocks."""
    return expected_series(collector_id, [row.payload async for row in ledger.iter_blocks()])


async def settled_samples(victoria: VictoriaMetrics, expected: dict[Any, list[tuple[int, float]]],
                          *, timeout_s: float) -> dict[Any, list[tuple[int, float]]]:
    """The store's samples once they equal `expected`, or as they are at the deadline (for the
    caller's assertion to say what differs): acknowledged writes become searchable a moment
    later on a loaded machine."""
    deadline = time.monotonic() + timeout_s
    while True:
        stored = await asyncio.to_thread(victoria.samples)
        if same_samples(stored, expected) or time.monotonic() > deadline:
            return stored
        await asyncio.sleep(0.1)


# --- a minute of readings ------------------------------------------------------------------------


async def test_a_minute_of_demo_readings_arrives_value_by_value(
        victoria: VictoriaMetrics, ledger: SqliteLedger) -> None:
    plant = DemoCollector()
    await append(ledger, plant.chain(60))
    writer = InfluxWriter(url=victoria.url, org="ignored-by-vm", bucket="stackline")
    sink = TimeSeriesSink(ledger=ledger, writer=writer, batch_lines=200)
    try:
        while await sink.run_once():
            pass
    finally:
        await writer.close()

    stored = await asyncio.to_thread(victoria.samples)
    expected = await ledger_series(ledger, plant.collector_id)
    assert same_samples(stored, expected), differences(stored, expected)
    # what that means, spelled out for one reading of each kind
    so2 = ("flue_gas_value", (("collector", "demo-plant-c1"), ("device", "cems-1"),
                              ("eng_unit", "mg/m3"), ("flag", "N"), ("plant", "demo-plant"),
                              ("point", "so2"), ("quantity", "a21026"), ("unit", "unit-1")))
    assert stored[so2][0][0] == BASE_MS
    calibrating = so2[0], tuple((k, "C" if k == "flag" else v) for k, v in so2[1])
    assert [t for t, _ in stored[calibrating]][:3] == [BASE_MS + s * 1000 for s in (5, 6, 7)]
    lost = ("fuel_quality", (("collector", "demo-plant-c1"), ("device", "feeder-1b"),
                             ("eng_unit", "t"), ("flag", "B"), ("plant", "demo-plant"),
                             ("point", "total"), ("quantity", "fuel.coal.total"),
                             ("unit", "unit-1")))
    assert stored[lost] == [(BASE_MS + s * 1000, 5.0) for s in (7, 22, 37, 52)]
    assert ("fuel_value", lost[1]) not in stored  # NaN is not written, the quality is
    assert sum(len(s) for (name, _), s in stored.items() if name.endswith("_quality")) == 60 * 14
    assert sink.stats.points_written == 60 * READINGS
    assert sink.lag() == {plant.collector_id: 0}
    assert await ledger.sink_positions(CURSOR) == {plant.collector_id: 61}


async def test_odd_tag_values_arrive_as_they_were_written(victoria: VictoriaMetrics) -> None:
    tags = {"plant": "plant 1", "device": "a,b=c", "unit": "back\\slash\\", "point": "ünï cødé",
            "eng_unit": "m3/h, wet"}
    writer = InfluxWriter(url=victoria.url, bucket="stackline")
    try:
        await writer.write([format_line("flue_gas", tags, {"value": 2.5, "quality": 1}, BASE_MS),
                            format_line("flue_gas", tags, {"value": math.nan, "quality": 5},
                                        BASE_MS + 1000)])
    finally:
        await writer.close()

    labels = tuple(sorted(tags.items()))
    assert await asyncio.to_thread(victoria.samples) == {
        ("flue_gas_value", labels): [(BASE_MS, 2.5)],
        ("flue_gas_quality", labels): [(BASE_MS, 1.0), (BASE_MS + 1000, 5.0)],
    }


# --- faults ----------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_the_store_killed_and_restarted_while_readings_flow_ends_with_each_reading_once(
        victoria: VictoriaMetrics, ledger: SqliteLedger, caplog: pytest.LogCaptureFixture) -> None:
    plant = DemoCollector()
    await append(ledger, plant.chain(0))
    writer = InfluxWriter(url=victoria.url, bucket="stackline", timeout_s=5.0)
    sink = TimeSeriesSink(ledger=ledger, writer=writer, batch_lines=50, poll_interval_s=0.1,
                          retry_initial_s=0.1, retry_max_s=0.5, replay_window_s=30.0)
    flowing = asyncio.Event()
    flowing.set()

    async def collector_ticks(count: int) -> None:
        for _ in range(count):
            await append(ledger, [plant.readings_block()[1]])
            sink.notify()
            await asyncio.sleep(0.05)  # the pace of the flow, not a synchronisation

    async def delivered(sequence: int) -> bool:
        return (await ledger.sink_positions(CURSOR)).get(plant.collector_id, 0) >= sequence

    task = asyncio.create_task(sink.run())
    try:
        flow = asyncio.create_task(collector_ticks(150))
        await wait_for(lambda: delivered(20), timeout_s=30, what="20 blocks in the store")
        victoria.kill()
        await wait_for(lambda: _true(sink.stats.write_failures >= 2), timeout_s=30,
                       what="the sink to notice the store is gone")
        head_when_down = (await ledger.heads())[plant.collector_id].sequence
        await wait_for(lambda: _true(plant.sequence >= head_when_down + 20), timeout_s=30,
                       what="20 more blocks stored while the store is down")
        await asyncio.to_thread(victoria.start)  # same port, same data folder
        await flow
        expected = await ledger_series(ledger, plant.collector_id)
        await wait_for(lambda: delivered(151), timeout_s=60, what="the cursor at the head")
        stored = await settled_samples(victoria, expected, timeout_s=60)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await writer.close()

    assert same_samples(stored, expected), differences(stored, expected)  # each once, none extra
    assert sink.stats.outages == 1
    assert sink.stats.points_replayed > 0
    assert sink.stats.lines_rejected == 0
    assert sum("retrying with backoff" in r.getMessage() for r in caplog.records) == 1


def _gateway_config(directory: Path, victoria: VictoriaMetrics) -> Path:
    (directory / "influx.token").write_text("not-checked-by-victoria-metrics\n")
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump({
        "gateway": {"id": "ts-gateway"},
        "listen": {"grpc": "127.0.0.1:0"},
        "ledger": {"path": "ledger.sqlite"},
        "timeseries": {"url": victoria.url, "insecure": True, "org": "stackline",
                       "bucket": "stackline", "token_file": "influx.token", "batch_lines": 30},
    }))
    return path


class SlowAcks:
    """A writer whose acknowledgements arrive late: the store has the lines, the sink does not
    know yet (where a gateway stopped mid-stream is caught)."""

    def __init__(self, writer: TimeSeriesWriter, delay_s: float) -> None:
        self.writer = writer
        self.delay_s = delay_s

    async def write(self, lines: Sequence[str]) -> None:
        await self.writer.write(lines)
        await asyncio.sleep(self.delay_s)

    async def probe(self) -> None:
        await self.writer.probe()

    async def close(self) -> None:
        await self.writer.close()


@pytest.mark.slow
async def test_a_gateway_restarted_mid_stream_resumes_without_duplicates_or_gaps(
        tmp_path: Path, victoria: VictoriaMetrics) -> None:
    config = load_gateway_config(_gateway_config(tmp_path, victoria))
    plant = DemoCollector()
    envelopes = [plant.config_block()[0]] + [plant.readings_block()[0] for _ in range(80)]

    async def feed(runtime: GatewayRuntime, batch: list[Any]) -> None:
        outcome = await runtime.core.ingest(collector_id=plant.collector_id, envelopes=batch,
                                            transport="test", peer="test")
        assert not outcome.refusals

    async def cursor(runtime: GatewayRuntime) -> int:
        return (await runtime.ledger.sink_positions(CURSOR)).get(plant.collector_id, 0)

    first = GatewayRuntime(config=config)
    assert first.sink is not None
    assert repr(first.sink.writer).endswith("token=set)")
    first.sink.writer = SlowAcks(first.sink.writer, delay_s=0.05)
    await first.start()
    try:
        await enroll_collector(first.ledger, collector_id=plant.collector_id,
                               public_key=plant.signer.public_key)
        for start in range(0, 41, 5):
            await feed(first, envelopes[start:start + 5])

        async def under_way() -> bool:
            return 10 <= await cursor(first) < 40

        await wait_for(under_way, timeout_s=30, what="the first gateway's sink under way",
                       interval_s=0.01)
    finally:
        await first.stop()  # in the middle of a request, or between two
        assert first.sink is not None
        written = first.sink.stats.points_written
    reopened = SqliteLedger(path=config.ledger_path())
    try:
        stopped_at = (await reopened.sink_positions(CURSOR))[plant.collector_id]
        head = (await reopened.heads())[plant.collector_id].sequence
    finally:
        await reopened.close()
    assert stopped_at < head == 45  # mid-stream: stored blocks the store did not have yet

    second = GatewayRuntime(config=config)
    await second.start()
    try:
        for start in range(45, len(envelopes), 5):
            await feed(second, envelopes[start:start + 5])
        assert second.sink is not None
        sink = second.sink
        # the ledger's cursor, not `sink.lag()`: lag is as of the sink's last look at the heads,
        # which may be before the last blocks were stored (the test stopped too early so once)
        await wait_for(lambda: _equal(cursor(second), len(envelopes)), timeout_s=30,
                       what="the second gateway's sink caught up")
        assert sink.lag() == {plant.collector_id: 0}
        expected = await ledger_series(second.ledger, plant.collector_id)
        written += sink.stats.points_written
    finally:
        await second.stop()

    stored = await settled_samples(victoria, expected, timeout_s=30)
    assert same_samples(stored, expected), differences(stored, expected)
    # no gaps: everything is there; no duplicates: at most the request in flight at the stop
    # (30 lines) and the rest of the block it split were sent twice
    assert 80 * READINGS <= written <= 80 * READINGS + 30 + READINGS


async def _true(value: bool) -> bool:
    return value


async def _equal(value: Awaitable[int], wanted: int) -> bool:
    return await value == wanted


# --- the writer's errors -------------------------------------------------------------------------


class ScriptedStore:
    """An HTTP server answering each request with the next scripted (status, headers)."""

    def __init__(self, answers: list[tuple[int, dict[str, str]]]) -> None:
        self.answers = answers
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        store = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                store.requests.append((self.path, dict(self.headers.items()), body))
                status, headers = store.answers.pop(0)
                payload = b'{"code":"x","message":"scripted answer"}' if status >= 300 else b""
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted() -> Iterator[ScriptedStore]:
    store = ScriptedStore([])
    try:
        yield store
    finally:
        store.close()


async def test_a_write_is_one_post_to_the_v2_api_with_the_token_and_ms_precision(
        scripted: ScriptedStore) -> None:
    scripted.answers.append((204, {}))
    writer = InfluxWriter(url=scripted.url, org="plant-ops", bucket="cems", token="t0ken")
    try:
        await writer.write(["m,a=b quality=1i 1", "m,a=c quality=2i 2"])
    finally:
        await writer.close()
    ((path, headers, body),) = scripted.requests
    assert path == "/api/v2/write?org=plant-ops&bucket=cems&precision=ms"
    assert headers["Authorization"] == "Token t0ken"
    assert body == b"m,a=b quality=1i 1\nm,a=c quality=2i 2"
    assert "t0ken" not in repr(writer)


async def test_the_probe_is_a_write_without_lines(scripted: ScriptedStore) -> None:
    scripted.answers += [(204, {}), (400, {})]
    writer = InfluxWriter(url=scripted.url, org="o", bucket="b")
    try:
        await writer.probe()
        with pytest.raises(TimeSeriesRejected):
            await writer.probe()
    finally:
        await writer.close()
    assert [(path, body) for path, _, body in scripted.requests] == [
        ("/api/v2/write?org=o&bucket=b&precision=ms", b"")] * 2


async def test_victoria_metrics_takes_the_probe(victoria: VictoriaMetrics) -> None:
    writer = InfluxWriter(url=victoria.url, bucket="stackline")
    try:
        await writer.probe()
    finally:
        await writer.close()


@pytest.mark.parametrize(("status", "headers", "retry_after_s", "message"), [
    (503, {"Retry-After": "7"}, 7.0, "503"),
    (429, {}, 5.0, "429"),
    (500, {}, 5.0, "500"),
    (401, {}, 30.0, "token"),
    (404, {}, 30.0, "bucket"),
])
async def test_answers_worth_retrying_are_unavailable_with_a_delay(
        scripted: ScriptedStore, status: int, headers: dict[str, str], retry_after_s: float,
        message: str) -> None:
    scripted.answers.append((status, headers))
    writer = InfluxWriter(url=scripted.url, bucket="b")
    try:
        with pytest.raises(TimeSeriesUnavailable, match=message) as caught:
            await writer.write(["m quality=1i 1"])
    finally:
        await writer.close()
    assert caught.value.retry_after_s == retry_after_s


@pytest.mark.parametrize("status", [400, 413, 422])
async def test_answers_refusing_the_lines_are_rejected(scripted: ScriptedStore, status: int) -> None:
    scripted.answers.append((status, {}))
    writer = InfluxWriter(url=scripted.url, bucket="b")
    try:
        with pytest.raises(TimeSeriesRejected, match="scripted answer") as caught:
            await writer.write(["m quality=1i 1"])
    finally:
        await writer.close()
    assert caught.value.status == status


async def test_a_store_that_is_not_listening_is_unavailable() -> None:
    writer = InfluxWriter(url=f"http://127.0.0.1:{free_port()}", bucket="b", timeout_s=2.0)
    try:
        with pytest.raises(TimeSeriesUnavailable, match="unreachable") as caught:
            await writer.write(["m quality=1i 1"])
    finally:
        await writer.close()
    assert caught.value.retry_after_s == 1.0


# --- configuration -------------------------------------------------------------------------------


def _config(tmp_path: Path, timeseries: dict[str, Any]) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"gateway": {"id": "gw-1"}, "timeseries": timeseries}))
    return path


def test_without_a_timeseries_section_there_is_no_sink(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"gateway": {"id": "gw-1"}}))
    config = load_gateway_config(path)
    assert config.config.timeseries is None
    assert GatewayRuntime(config=config).sink is None


def test_an_influxdb_section_with_its_defaults(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret-token\nsecond line ignored\n")
    config = load_gateway_config(_config(tmp_path, {
        "url": "https://influx.example:8086", "org": "plant-ops", "bucket": "cems",
        "token_file": "token"}))
    section = config.config.timeseries
    assert section is not None
    assert (section.batch_lines, section.cursor, section.replay_window_s) == (5000, "timeseries",
                                                                             30.0)
    runtime = GatewayRuntime(config=config)
    assert runtime.sink is not None
    assert repr(runtime.sink.writer) == ("InfluxWriter(url='https://influx.example:8086', "
                                         "org='plant-ops', bucket='cems', token=set)")
    assert runtime.sink.batch_lines == 5000


@pytest.mark.parametrize(("timeseries", "field", "message"), [
    ({"url": "https://db", "tokn_file": "t"}, "timeseries.tokn_file", "unknown key"),
    ({"url": "http://127.0.0.1:8428"}, "timeseries", "insecure: true"),
    ({"url": "https://db", "insecure": True}, "timeseries", "contradicts"),
    ({"url": "http://db", "insecure": True, "ca_file": "ca.pem"}, "timeseries", "https"),
    ({"url": "ftp://db"}, "timeseries.url", "pattern"),
    ({"url": "https://"}, "timeseries.url", "pattern"),
    ({"org": "o"}, "timeseries.url", "Field required"),
    ({"url": "https://db", "batch_lines": 0}, "timeseries.batch_lines", "greater than or equal"),
    ({"url": "https://db", "batch_lines": 1_000_000}, "timeseries.batch_lines", "less than"),
    ({"url": "https://db", "bucket": ""}, "timeseries.bucket", "at least 1"),
    ({"url": "https://db", "cursor": "has space"}, "timeseries.cursor", "pattern"),
    ({"url": "https://db", "replay_window_s": -1}, "timeseries.replay_window_s", "greater"),
])
def test_a_timeseries_section_that_cannot_work_is_refused_naming_the_field(
        tmp_path: Path, timeseries: dict[str, Any], field: str, message: str) -> None:
    path = _config(tmp_path, timeseries)
    with pytest.raises(ConfigError, match=message) as caught:
        load_gateway_config(path)
    assert caught.value.field == field
    assert str(path.resolve()) in str(caught.value)


def test_a_token_file_that_cannot_be_read_stops_the_gateway(tmp_path: Path) -> None:
    config = load_gateway_config(_config(tmp_path, {"url": "https://db",
                                                    "token_file": "missing.token"}))
    with pytest.raises(ConfigError, match=r"timeseries\.token_file: cannot read a token"):
        GatewayRuntime(config=config)


def test_a_ca_file_that_does_not_exist_stops_the_gateway(tmp_path: Path) -> None:
    config = load_gateway_config(_config(tmp_path, {"url": "https://db", "ca_file": "ca.pem"}))
    with pytest.raises(ConfigError, match=r"timeseries\.ca_file: no such file"):
        GatewayRuntime(config=config)
