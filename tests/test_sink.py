"""The time-series sink (gateway/sink.py) against a recording writer: the cursor moves only past
acknowledged lines, outages retry the same lines and then replay, refused lines are isolated,
restarts resume at the cursor, several gateways share one cursor. No server needed."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from gateway.errors import RetryableLedgerError, TimeSeriesRejected, TimeSeriesUnavailable
from gateway.ingest import IngestCore
from gateway.ledger import Ledger, PostgresLedger, SqliteLedger, VerifiedBlock
from gateway.lineproto import LineFormatter
from gateway.sink import SinkState, TimeSeriesSink
from proto.chain import ChainHead
from proto.stackline.v1 import stackline_pb2 as pb
from tests.conftest import wait_for
from tests.demo_blocks import DemoCollector

READINGS = 14  # per demo block
CURSOR = "timeseries"


class RecordingWriter:
    """Keeps every acknowledged request; fails or refuses on demand; notes the cursor at each
    attempt (what the ledger said while the request was in flight)."""

    def __init__(self, ledger: Ledger | None = None) -> None:
        self.ledger = ledger
        self.attempts: list[list[str]] = []
        self.acknowledged: list[list[str]] = []
        self.cursors_seen: list[dict[str, int]] = []
        self.fail_next = 0
        self.fail_always = False
        self.refuse: Callable[[str], bool] = lambda line: False
        self.refuse_requests = False  # as a wrong org or bucket: every request, even empty
        self.probes = 0
        self.before: Callable[[Sequence[str]], Awaitable[None]] | None = None
        self.closed = False

    def __repr__(self) -> str:
        return "RecordingWriter()"

    async def write(self, lines: Sequence[str]) -> None:
        self.attempts.append(list(lines))
        if self.ledger is not None:
            self.cursors_seen.append(await self.ledger.sink_positions(CURSOR))
        if self.before is not None:
            await self.before(lines)
        if self.fail_always or self.fail_next:
            self.fail_next = max(0, self.fail_next - 1)
            raise TimeSeriesUnavailable("store down (test)", retry_after_s=0.0)
        if self.refuse_requests or any(self.refuse(line) for line in lines):
            raise TimeSeriesRejected("store refuses a line (test)", status=400)
        self.acknowledged.append(list(lines))

    async def probe(self) -> None:
        self.probes += 1
        if self.refuse_requests:
            raise TimeSeriesRejected("organization not found (test)", status=400)

    async def close(self) -> None:
        self.closed = True

    @property
    def lines(self) -> list[str]:
        return [line for request in self.acknowledged for line in request]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sink_for(ledger: Ledger, writer: RecordingWriter, **options: object) -> TimeSeriesSink:
    settings: dict[str, object] = {"batch_lines": 100, "retry_initial_s": 0.001,
                                   "retry_max_s": 0.002}
    settings.update(options)
    return TimeSeriesSink(ledger=ledger, writer=writer, **settings)  # type: ignore[arg-type]


async def drain(sink: TimeSeriesSink) -> None:
    while await sink.run_once():
        pass


async def append(ledger: Ledger, blocks: list[VerifiedBlock]) -> None:
    await ledger.append(blocks[0].collector_id, blocks, transport="test", peer="test",
                        received_unix_ms=0)


def expected_lines(collector: DemoCollector, blocks: list[VerifiedBlock]) -> list[str]:
    """The lines of these blocks, made by the formatter on its own (the sink must send these)."""
    formatter = LineFormatter()
    formatter.add_config(collector.collector_id, collector.plan.config_digest,
                         collector.plan.config_document)
    out: list[str] = []
    for block in blocks:
        formatter.block_lines(pb.Block.FromString(block.payload), out)
    return out


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[SqliteLedger]:
    opened = SqliteLedger(path=tmp_path / "ledger.sqlite")
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def plant() -> DemoCollector:
    return DemoCollector()


async def test_every_reading_becomes_one_line_and_the_cursor_reaches_the_head(
        ledger: SqliteLedger, plant: DemoCollector) -> None:
    blocks = plant.chain(60)
    await append(ledger, blocks)
    writer = RecordingWriter(ledger)
    sink = sink_for(ledger, writer)

    await drain(sink)

    assert writer.lines == expected_lines(plant, blocks)
    assert len(writer.lines) == 60 * READINGS
    assert all(len(request) <= 100 for request in writer.acknowledged)
    assert await ledger.sink_positions(CURSOR) == {plant.collector_id: 61}
    assert sink.lag() == {plant.collector_id: 0}
    assert (sink.stats.points_written, sink.stats.blocks_delivered) == (840, 61)
    assert (sink.stats.write_failures, sink.stats.blocks_without_config) == (0, 0)
    # each request moved the cursor only past blocks whose lines were all acknowledged before it
    for seen, request_index in zip(writer.cursors_seen[1:], range(1, 9), strict=False):
        delivered_lines = sum(len(r) for r in writer.acknowledged[:request_index])
        assert (seen[plant.collector_id] - 1) * READINGS <= delivered_lines
    assert not await sink.run_once()  # nothing more


async def test_an_outage_retries_the_same_lines_and_moves_no_cursor(
        ledger: SqliteLedger, plant: DemoCollector, caplog: pytest.LogCaptureFixture) -> None:
    blocks = plant.chain(20)
    await append(ledger, blocks)
    writer = RecordingWriter(ledger)
    writer.fail_next = 5
    sink = sink_for(ledger, writer, replay_window_s=0.0)

    with caplog.at_level(logging.WARNING, logger="gateway.sink"):
        await drain(sink)

    assert writer.attempts[:6] == [writer.attempts[0]] * 6  # the same request, six times
    assert writer.cursors_seen[:6] == [{}] * 6              # and the cursor did not move
    assert writer.lines == expected_lines(plant, blocks)
    assert (sink.stats.write_failures, sink.stats.outages) == (5, 1)
    assert sink.stats.last_error is not None
    assert "store down" in sink.stats.last_error
    assert await ledger.sink_positions(CURSOR) == {plant.collector_id: 21}
    messages = [r.getMessage() for r in caplog.records]
    assert sum("retrying with backoff" in m for m in messages) == 1  # logged once per outage
    assert sum("store is back" in m for m in messages) == 1


async def test_after_an_outage_what_the_store_acknowledged_just_before_is_sent_again(
        ledger: SqliteLedger, plant: DemoCollector) -> None:
    clock = Clock()
    writer = RecordingWriter(ledger)
    sink = sink_for(ledger, writer, replay_window_s=30.0, clock=clock)
    early = plant.chain(10)          # config + 10 readings blocks, written at t = 1000
    await append(ledger, early)
    await drain(sink)
    clock.now += 60                  # more than the window later...
    recent = plant.chain(10)         # ...10 more, written at t = 1060
    await append(ledger, recent)
    await drain(sink)
    later = plant.chain(5)
    await append(ledger, later)
    writer.fail_next = 3             # the store crashed after acknowledging `recent`
    clock.now += 5

    await drain(sink)

    counts = Counter(writer.lines)
    assert all(counts[line] == 1 for line in expected_lines(plant, early))
    assert all(counts[line] == 2 for line in expected_lines(plant, recent))  # sent again
    assert all(counts[line] == 1 for line in expected_lines(plant, later))
    assert sink.stats.points_replayed == 10 * READINGS
    # the durable cursor never moved back; it ends at the head
    assert await ledger.sink_positions(CURSOR) == {plant.collector_id: 26}


async def test_a_line_the_store_refuses_is_isolated_skipped_and_alarmed(
        ledger: SqliteLedger, plant: DemoCollector, caplog: pytest.LogCaptureFixture) -> None:
    blocks = plant.chain(20)
    await append(ledger, blocks)
    everything = expected_lines(plant, blocks)
    poison = everything[137]
    writer = RecordingWriter(ledger)
    writer.refuse = lambda line: line == poison
    sink = sink_for(ledger, writer)

    with caplog.at_level(logging.ERROR, logger="gateway.sink"):
        await drain(sink)

    assert writer.lines == [line for line in everything if line != poison]
    assert sink.stats.lines_rejected == 1
    assert await ledger.sink_positions(CURSOR) == {plant.collector_id: 21}
    assert any("ALARM" in r.getMessage() and poison[:60] in r.getMessage()
               for r in caplog.records)


async def test_a_store_that_refuses_requests_as_such_is_an_outage_not_a_reason_to_skip(
        ledger: SqliteLedger, plant: DemoCollector) -> None:
    blocks = plant.chain(10)
    await append(ledger, blocks)
    writer = RecordingWriter(ledger)
    writer.refuse_requests = True
    sink = sink_for(ledger, writer, poll_interval_s=0.05, refused_retry_s=0.01)
    task = asyncio.create_task(sink.run())
    try:
        await wait_for(lambda: _true(writer.probes >= 3), timeout_s=10,
                       what="a few probes of a store that refuses every request")
        assert sink.state is SinkState.STORE_UNAVAILABLE
        assert await ledger.sink_positions(CURSOR) == {}
        assert sink.stats.lines_rejected == 0
        # one request per try, not a bisection: each refused write is followed by one probe
        # (a write may be between its refusal and its probe at the moment we look)
        assert len(writer.attempts) - writer.probes in (0, 1)
        writer.refuse_requests = False  # the operator fixed the org
        await wait_for(lambda: _true(sink.lag() == {plant.collector_id: 0}), timeout_s=10,
                       what="delivery once the store takes requests")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert sorted(set(writer.lines)) == sorted(expected_lines(plant, blocks))
    assert sink.stats.lines_rejected == 0


async def test_a_store_that_refuses_every_line_of_a_request_stalls_the_sink_and_skips_nothing(
        ledger: SqliteLedger, plant: DemoCollector) -> None:
    blocks = plant.chain(3)
    await append(ledger, blocks)
    writer = RecordingWriter(ledger)
    writer.refuse = lambda line: True  # e.g. every field of the request has a type conflict
    sink = sink_for(ledger, writer, poll_interval_s=0.05, refused_retry_s=0.01)
    task = asyncio.create_task(sink.run())
    try:
        await wait_for(lambda: _true(sink.stats.write_failures >= 2), timeout_s=10,
                       what="the refusal treated as an outage, twice")
        assert await ledger.sink_positions(CURSOR) == {}
        assert sink.stats.lines_rejected == 0
        assert sink.stats.last_error is not None
        assert "refuses every line" in sink.stats.last_error
        everything = len(expected_lines(plant, blocks))

        async def fix_at_next_whole_request(lines: Sequence[str]) -> None:
            # the store is fixed between two of the sink's tries, never in the middle of one
            # (a store that changes its mind mid-try may legitimately have lines skipped)
            if len(lines) == everything:
                writer.refuse = lambda line: False
        writer.before = fix_at_next_whole_request
        await wait_for(lambda: _true(sink.lag() == {plant.collector_id: 0}), timeout_s=10,
                       what="delivery once the store takes the lines")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert sorted(set(writer.lines)) == sorted(expected_lines(plant, blocks))


async def test_a_restarted_sink_resumes_at_the_cursor(ledger: SqliteLedger,
                                                      plant: DemoCollector) -> None:
    blocks = plant.chain(30)
    await append(ledger, blocks)
    first_writer = RecordingWriter(ledger)

    async def crash_on_fourth(lines: Sequence[str]) -> None:
        if len(first_writer.attempts) == 4:
            raise RuntimeError("the gateway process dies here (test)")
    first_writer.before = crash_on_fourth
    with pytest.raises(RuntimeError, match="dies here"):
        await drain(sink_for(ledger, first_writer))
    cursor = (await ledger.sink_positions(CURSOR))[plant.collector_id]
    assert 1 < cursor < 31

    second_writer = RecordingWriter(ledger)
    await drain(sink_for(ledger, second_writer))

    everything = expected_lines(plant, blocks)
    assert second_writer.lines == everything[(cursor - 1) * READINGS:]  # from the cursor on
    assert sorted(set(first_writer.lines) | set(second_writer.lines)) == sorted(everything)
    # only the block split by the request in flight at the crash is written twice
    twice = set(first_writer.lines) & set(second_writer.lines)
    assert len(twice) < READINGS
    assert await ledger.sink_positions(CURSOR) == {plant.collector_id: 31}


async def test_two_gateways_on_one_cursor_deliver_everything_and_move_it_once_per_block(
        tmp_path: Path, ledger: SqliteLedger, plant: DemoCollector) -> None:
    other = DemoCollector("demo-plant-c2")
    plant_blocks, other_blocks = plant.chain(40), other.chain(40)
    await append(ledger, plant_blocks)
    await append(ledger, other_blocks)
    second_ledger = SqliteLedger(path=tmp_path / "ledger.sqlite")
    try:
        writers = [RecordingWriter(), RecordingWriter()]
        sinks = [sink_for(ledger, writers[0], batch_lines=50),
                 sink_for(second_ledger, writers[1], batch_lines=50)]

        await asyncio.gather(*(drain(sink) for sink in sinks))

        assert await ledger.sink_positions(CURSOR) == {plant.collector_id: 41,
                                                       other.collector_id: 41}
        delivered = set(writers[0].lines) | set(writers[1].lines)
        assert delivered == set(expected_lines(plant, plant_blocks)) | set(
            expected_lines(other, other_blocks))
        assert len(delivered) == 80 * READINGS
        assert sum(sink.stats.blocks_delivered for sink in sinks) == 82
    finally:
        await second_ledger.close()


async def test_three_gateways_on_one_postgres_ledger_share_the_cursor(postgres_url: str) -> None:
    ledgers = [PostgresLedger(url=postgres_url, pool_max_size=2) for _ in range(3)]
    try:
        plants = [DemoCollector(f"plant-{n}-c1") for n in range(3)]
        chains = [plant.chain(30) for plant in plants]
        for chain in chains:
            await append(ledgers[0], chain)
        writers = [RecordingWriter() for _ in ledgers]
        sinks = [sink_for(ledger, writer, batch_lines=40) for ledger, writer in zip(
            ledgers, writers, strict=True)]

        await asyncio.gather(*(drain(sink) for sink in sinks))

        assert await ledgers[1].sink_positions(CURSOR) == {p.collector_id: 31 for p in plants}
        delivered = {line for writer in writers for line in writer.lines}
        assert delivered == {line for plant, chain in zip(plants, chains, strict=True)
                             for line in expected_lines(plant, chain)}
        # the cursor moved past each block once, whichever gateway moved it
        assert sum(sink.stats.blocks_delivered for sink in sinks) == 3 * 31
    finally:
        await asyncio.gather(*(ledger.close() for ledger in ledgers))


async def test_a_block_whose_configuration_is_not_in_the_ledger_is_written_and_counted(
        ledger: SqliteLedger, plant: DemoCollector, caplog: pytest.LogCaptureFixture) -> None:
    # a chain that starts with readings: no CONFIG block names their digest
    await append(ledger, [plant.readings_block()[1] for _ in range(3)])
    writer = RecordingWriter(ledger)
    sink = sink_for(ledger, writer)

    with caplog.at_level(logging.WARNING, logger="gateway.sink"):
        await drain(sink)

    assert len(writer.lines) == 3 * READINGS
    assert all(line.startswith(("unknown,", "device,")) for line in writer.lines)
    assert sink.stats.blocks_without_config == 3
    assert sum("is not in the ledger" in r.getMessage() for r in caplog.records) == 1


async def test_the_sink_wakes_when_ingest_stores_blocks(ledger: SqliteLedger,
                                                        plant: DemoCollector) -> None:
    writer = RecordingWriter()
    sink = sink_for(ledger, writer, poll_interval_s=600.0)  # no polling: only the wakeup
    core = IngestCore(ledger=ledger)
    core.on_stored.append(sink.notify)
    await ledger.enroll(plant.key)
    task = asyncio.create_task(sink.run())
    try:
        await wait_for(lambda: _true(sink.state is SinkState.CAUGHT_UP), timeout_s=10,
                       what="the sink to look once and wait")
        envelopes = [plant.config_block()[0], plant.readings_block()[0]]
        outcome = await core.ingest(collector_id=plant.collector_id, envelopes=envelopes,
                                    transport="test", peer="test")
        assert outcome.head.sequence == 2

        await wait_for(lambda: _true(len(writer.lines) == READINGS), timeout_s=10,
                       what="the stored readings to reach the store")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert sink.state is SinkState.STOPPED


async def test_lag_grows_while_the_store_is_down_and_falls_when_it_is_back(
        ledger: SqliteLedger, plant: DemoCollector) -> None:
    writer = RecordingWriter()
    writer.fail_always = True
    sink = sink_for(ledger, writer, poll_interval_s=0.05)
    await append(ledger, plant.chain(5))
    task = asyncio.create_task(sink.run())
    try:
        await wait_for(lambda: _true(sink.lag() == {plant.collector_id: 6}), timeout_s=10,
                       what="lag of 6 blocks")
        await append(ledger, plant.chain(4))
        await wait_for(lambda: _true(sink.lag() == {plant.collector_id: 10}), timeout_s=10,
                       what="lag of 10 blocks while the store is down")
        assert sink.state is SinkState.STORE_UNAVAILABLE
        writer.fail_always = False
        await wait_for(lambda: _true(sink.lag() == {plant.collector_id: 0}), timeout_s=10,
                       what="lag back to 0")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(set(writer.lines)) == 9 * READINGS


class FlakyLedger(SqliteLedger):
    """A ledger whose heads() fails a few times, as a busy or restarting database does."""

    failures = 2

    async def heads(self) -> dict[str, ChainHead]:
        if self.failures:
            self.failures -= 1
            raise RetryableLedgerError("ledger busy (test)", retry_after_s=0.0)
        return await super().heads()


async def test_a_ledger_that_fails_for_a_while_delays_the_sink(
        tmp_path: Path, plant: DemoCollector) -> None:
    flaky = FlakyLedger(path=tmp_path / "ledger.sqlite")
    try:
        await append(flaky, plant.chain(3))
        writer = RecordingWriter()
        sink = sink_for(flaky, writer, poll_interval_s=0.05)
        task = asyncio.create_task(sink.run())
        try:
            await wait_for(lambda: _true(len(writer.lines) == 3 * READINGS), timeout_s=10,
                           what="delivery after the ledger recovers")
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert sink.stats.last_error is not None
        assert "ledger busy" in sink.stats.last_error
    finally:
        await flaky.close()


async def _true(value: bool) -> bool:
    return value
