"""The time-series sink: every verified reading in the ledger becomes a point in the store.

It follows the ledger through a durable cursor (`sink_cursors`: per collector, the highest
sequence delivered), so the ledger stays the only system of record:

1. read the blocks past the cursor of every collector whose chain head is ahead of it;
2. format their readings as line protocol (gateway/lineproto.py), each point's tags from the
   configuration document its block names (looked up once per digest);
3. write them in requests of `batch_lines` lines; after each request, move each collector's cursor
   (compare-and-set) to its last block whose lines are all acknowledged.

The cursor never passes a line the store has not acknowledged, so a store outage delays data and
loses none: the same request is sent again, with capped, jittered backoff, until the store takes
it (logged once per outage). A restarted gateway resumes from the cursor; at most the request that
was in flight is sent twice, which the store keeps once (the same series and timestamp).

After an outage the sink also sends again what the store acknowledged in the `replay_window_s`
before it: a store that crashes may lose writes it had acknowledged (VictoriaMetrics 1.79 keeps
the last few seconds in memory; a SIGKILL loses them). The durable cursor does not move back; the
sink keeps the range of blocks to send again in memory, per collector.

A request the store refuses (HTTP 400) is halved until the refused lines are found, and only those
are skipped, with an alarm; a store that refuses requests as such, or every line of one, is
treated as an outage instead (see `_write`).

With several gateways on one PostgreSQL ledger, each runs a sink on the same cursor: the
compare-and-set lets one of them move it; the others re-read its position and skip ahead (their
extra writes are duplicates the store keeps once).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import enum
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from gateway.errors import LedgerError, RetryableLedgerError, TimeSeriesRejected, TimeSeriesUnavailable
from gateway.ledger.base import Ledger, StoredRow
from gateway.lineproto import LineFormatter
from gateway.tsdb import REFUSED_RETRY_AFTER_S, TimeSeriesWriter
from proto.backoff import Backoff
from proto.stackline.v1 import stackline_pb2 as pb

__all__ = ["DEFAULT_CURSOR", "SinkState", "SinkStats", "TimeSeriesSink"]

log = logging.getLogger(__name__)

DEFAULT_CURSOR = "timeseries"
_MAX_REPLAY_RECORDS = 10_000


class SinkState(enum.Enum):
    """What the sink is doing."""

    STARTING = "starting"
    CAUGHT_UP = "caught_up"
    WRITING = "writing"
    STORE_UNAVAILABLE = "store_unavailable"
    LEDGER_UNAVAILABLE = "ledger_unavailable"
    STOPPED = "stopped"


@dataclass(slots=True)
class SinkStats:
    """Counters for status output and metrics."""

    points_written: int = 0          # lines the store acknowledged (a line sent again counts again)
    points_replayed: int = 0         # of those, lines sent again after an outage
    requests: int = 0                # write requests the store acknowledged
    write_failures: int = 0          # write requests that failed (each attempt)
    outages: int = 0                 # runs of failures, each logged once
    lines_rejected: int = 0          # lines the store refused one by one (never written)
    blocks_delivered: int = 0        # blocks the cursor moved past
    blocks_without_config: int = 0   # readings blocks written with point-id tags only
    blocks_unreadable: int = 0       # stored payloads that are not blocks (a damaged ledger)
    cursor_conflicts: int = 0        # another gateway moved the cursor first
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class _Mark:
    """Where a block's lines end in a pass's list of lines."""

    collector_id: str
    sequence: int
    begin: int
    end: int


class TimeSeriesSink:
    """Delivers the ledger's readings to a `TimeSeriesWriter` through a durable cursor."""

    def __init__(self, *, ledger: Ledger, writer: TimeSeriesWriter, cursor: str = DEFAULT_CURSOR,
                 batch_lines: int = 5000, lines_per_pass: int | None = None,
                 blocks_per_read: int = 1000, poll_interval_s: float = 1.0,
                 retry_initial_s: float = 0.5, retry_max_s: float = 30.0,
                 replay_window_s: float = 30.0, refused_retry_s: float = REFUSED_RETRY_AFTER_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if batch_lines < 1 or blocks_per_read < 1:
            raise ValueError("batch_lines and blocks_per_read must be at least 1")
        self.ledger = ledger
        self.writer = writer
        self.cursor = cursor
        self.batch_lines = batch_lines
        self.lines_per_pass = lines_per_pass or 4 * batch_lines
        self.blocks_per_read = blocks_per_read
        self.poll_interval_s = poll_interval_s
        self.replay_window_s = replay_window_s
        self.refused_retry_s = refused_retry_s
        self.clock = clock
        self.wakeup = asyncio.Event()  # set it when blocks are stored (IngestCore.on_stored)
        self.stats = SinkStats()
        self.state = SinkState.STARTING
        self._formatter = LineFormatter()
        self._backoff = Backoff(initial_s=retry_initial_s, max_s=retry_max_s)
        self._loaded = False
        self._durable: dict[str, int] = {}   # the cursor as stored in the ledger
        self._next: dict[str, int] = {}      # where the next read starts
        self._heads: dict[str, int] = {}     # chain heads at the last look
        # (acknowledged at, per collector the first and last block in that request)
        self._recent: deque[tuple[float, dict[str, tuple[int, int]]]] = deque(
            maxlen=_MAX_REPLAY_RECORDS)
        # per collector, the blocks to send again after an outage: [first, last]
        self._replay: dict[str, tuple[int, int]] = {}
        self._outage_started: float | None = None
        self._outage_failures = 0
        self._ledger_failing = False
        self._start_at = 0

    def __repr__(self) -> str:
        return (f"TimeSeriesSink(cursor={self.cursor!r}, state={self.state.value}, "
                f"writer={self.writer!r}, written={self.stats.points_written})")

    def notify(self, collector_id: str | None = None) -> None:
        """New blocks are stored: look now rather than at the next poll."""
        self.wakeup.set()

    def lag(self) -> dict[str, int]:
        """Per collector: blocks stored but not yet delivered (chain head - cursor), as of the
        sink's last look at the heads (every pass, every poll, every retry)."""
        return {cid: max(0, head - self._durable.get(cid, 0)) for cid, head in self._heads.items()}

    # --- the loop ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until cancelled."""
        try:
            while True:
                self.wakeup.clear()
                try:
                    more = await self.run_once()
                except LedgerError as exc:
                    await self._ledger_trouble(exc)
                    continue
                if self._ledger_failing:
                    log.warning("time-series sink: the ledger answers again")
                    self._ledger_failing = False
                if more:
                    await asyncio.sleep(0)  # let ingest run between passes of a backlog
                    continue
                self.state = SinkState.CAUGHT_UP
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval_s):
                        await self.wakeup.wait()
        finally:
            self.state = SinkState.STOPPED

    async def run_once(self) -> bool:
        """One pass: read what is past the cursors (about `lines_per_pass` lines), write it, move
        the cursors. Return whether more is waiting."""
        if not self._loaded:
            self._durable = await self.ledger.sink_positions(self.cursor)
            self._next = dict(self._durable)
            self._loaded = True
        await self._look_at_heads()
        behind = sorted({cid for cid, head in self._heads.items() if head > self._next.get(cid, 0)}
                        | set(self._replay))
        if not behind:
            return False
        self.state = SinkState.WRITING
        # start each pass at another collector, so a long backlog does not starve the others
        start = self._start_at % len(behind)
        self._start_at += 1
        lines: list[str] = []
        marks: list[_Mark] = []
        replayed: dict[str, tuple[int, int]] = {}  # what this pass sends again, and the lines
        more = False
        for cid in behind[start:] + behind[:start]:
            if len(lines) >= self.lines_per_pass:
                more = True
                break
            if cid in self._replay:
                first, last = self._replay[cid]
                rows = await self.ledger.read_blocks(
                    cid, after_sequence=first - 1, limit=min(self.blocks_per_read, last - first + 1))
                begin = len(lines)
                await self._format_rows(rows, lines, marks)
                replayed[cid] = (rows[-1].sequence if rows else last, len(lines) - begin)
                more = True
                continue
            rows = await self.ledger.read_blocks(cid, after_sequence=self._next.get(cid, 0),
                                                 limit=self.blocks_per_read)
            await self._format_rows(rows, lines, marks)
            if rows and rows[-1].sequence < self._heads[cid]:
                more = True
        outages = self.stats.outages
        await self._deliver(lines, marks)
        for cid, (through, count) in replayed.items():
            self.stats.points_replayed += count
            first, last = self._replay[cid]
            if self.stats.outages != outages:
                continue  # another outage during this pass: its range covers this one again
            if through >= last:
                del self._replay[cid]
            else:
                self._replay[cid] = (through + 1, last)
        return more or bool(self._replay)  # an outage during this pass left a replay to do

    async def _format_rows(self, rows: list[StoredRow], lines: list[str],
                           marks: list[_Mark]) -> None:
        for row in rows:
            begin = len(lines)
            await self._format(row, lines)
            marks.append(_Mark(row.collector_id, row.sequence, begin, len(lines)))

    async def _look_at_heads(self) -> None:
        self._heads = {cid: head.sequence for cid, head in (await self.ledger.heads()).items()}

    async def _ledger_trouble(self, exc: LedgerError) -> None:
        self.state = SinkState.LEDGER_UNAVAILABLE
        self.stats.last_error = f"ledger: {exc}"
        delay = self._backoff.next_delay()
        if isinstance(exc, RetryableLedgerError):
            delay = max(delay, exc.retry_after_s)
        log.log(logging.DEBUG if self._ledger_failing else logging.WARNING,
                "time-series sink: cannot read the ledger (%s); again in %.1f s (repeats are not "
                "logged until it answers)", exc, delay)
        self._ledger_failing = True
        await asyncio.sleep(delay)

    # --- formatting ---------------------------------------------------------------------------------

    async def _format(self, row: StoredRow, lines: list[str]) -> None:
        block = _decode(row.payload)
        if block is None:
            self.stats.blocks_unreadable += 1
            log.error("ALARM: time-series sink: stored block %s #%d is not a block; it is not "
                      "written (run stackline verify)", row.collector_id, row.sequence)
            return
        cid, digest = row.collector_id, block.config_digest
        if block.kind == pb.BLOCK_KIND_CONFIG and block.config_document:
            document = block.config_document
            digest = hashlib.sha256(document).digest()
            if not self._formatter.found(cid, digest):
                self._formatter.add_config(cid, digest, document)
            return
        if not block.readings:
            return
        if not self._formatter.knows(cid, digest):
            found = await self.ledger.find_config(cid, digest)
            if not self._formatter.add_config(cid, digest, found):
                log.warning("time-series sink: %s block #%d names configuration %s, which %s; "
                            "its readings are written with the tags their point ids give", cid,
                            row.sequence, digest.hex()[:16],
                            "is not in the ledger" if found is None else "cannot be read")
        if not self._formatter.found(cid, digest):
            self.stats.blocks_without_config += 1
        self._formatter.block_lines(block, lines)

    # --- writing ------------------------------------------------------------------------------------

    async def _deliver(self, lines: list[str], marks: list[_Mark]) -> None:
        """Write the lines in requests; after each, move the cursors past the complete blocks."""
        ends = [mark.end for mark in marks]
        done = 0  # marks whose cursor move is settled
        for start in range(0, len(lines), self.batch_lines):
            stop = min(start + self.batch_lines, len(lines))
            await self._write(lines[start:stop])
            self._remember(marks, ends, start, stop)
            complete = bisect.bisect_right(ends, stop)
            await self._advance(marks[done:complete])
            done = complete
        await self._advance(marks[done:])  # blocks without lines after the last request

    def _remember(self, marks: list[_Mark], ends: list[int], start: int, stop: int) -> None:
        """Note the first and last block of each collector an acknowledged request carried."""
        carried: dict[str, tuple[int, int]] = {}
        for mark in marks[bisect.bisect_right(ends, start):]:
            if mark.begin >= stop:
                break
            first = carried.get(mark.collector_id, (mark.sequence, 0))[0]
            carried[mark.collector_id] = (first, mark.sequence)
        now = self.clock()
        self._recent.append((now, carried))
        while self._recent and self._recent[0][0] < now - self.replay_window_s:
            self._recent.popleft()

    async def _advance(self, marks: list[_Mark]) -> None:
        positions: dict[str, int] = {}
        for mark in marks:
            positions[mark.collector_id] = mark.sequence
        for cid, sequence in positions.items():
            self._next[cid] = max(self._next.get(cid, 0), sequence)
            while sequence > (durable := self._durable.get(cid, 0)):
                if await self.ledger.advance_sink(self.cursor, cid, from_sequence=durable,
                                                  to_sequence=sequence):
                    self._durable[cid] = sequence
                    self.stats.blocks_delivered += sequence - durable
                    break
                # another gateway moved it: take its position and go on from there
                self.stats.cursor_conflicts += 1
                stored = (await self.ledger.sink_positions(self.cursor)).get(cid, 0)
                self._durable[cid] = max(durable, stored)
                self._next[cid] = max(self._next[cid], self._durable[cid])

    async def _write(self, lines: list[str]) -> None:
        """Write one request until the store takes it.

        A refused request (HTTP 400 and the like) is either refused as a request (the org or
        bucket is wrong, a proxy refuses it: an empty write, the probe, is refused too) or for
        some of its lines. The first is treated as an outage. For the second, the request is
        halved until the refused lines are found; only those are skipped (counted, with an alarm),
        and only if the store took some other line of the request: a store that takes none is
        treated as an outage too, so a misconfigured store never makes the sink skip everything.
        """
        while True:
            rejected = await self._send(lines)
            if rejected is None:
                return
            if not await self._store_takes_requests():
                continue
            accepted, refused = await self._isolate(lines)
            if accepted or not refused:
                for line, reason in refused:
                    self.stats.lines_rejected += 1
                    self.stats.last_error = str(reason)
                    log.error("ALARM: time-series sink: the store refuses this line, which is not "
                              "written (the ledger keeps the reading): %s: %s", reason, line[:300])
                return
            await self._store_trouble(TimeSeriesUnavailable(
                f"the store refuses every line of a request ({rejected})",
                retry_after_s=self.refused_retry_s))

    async def _send(self, lines: list[str]) -> TimeSeriesRejected | None:
        """One request, sent again through outages; the refusal, if the store refuses it."""
        while True:
            try:
                await self.writer.write(lines)
            except TimeSeriesUnavailable as exc:
                await self._store_trouble(exc)
                continue
            except TimeSeriesRejected as exc:
                self._recovered()
                return exc
            self._recovered()
            self.stats.requests += 1
            self.stats.points_written += len(lines)
            return None

    async def _store_takes_requests(self) -> bool:
        """Whether an empty write goes through; if not, wait as in an outage."""
        try:
            await self.writer.probe()
        except TimeSeriesRejected as exc:
            await self._store_trouble(TimeSeriesUnavailable(
                f"the store refuses requests as such: {exc}", retry_after_s=self.refused_retry_s))
            return False
        except TimeSeriesUnavailable as exc:
            await self._store_trouble(exc)
            return False
        return True

    async def _isolate(self, lines: list[str]) -> tuple[int, list[tuple[str, TimeSeriesRejected]]]:
        """Halve a refused request down to the lines the store refuses; return how many lines it
        took and the refused ones with the reasons."""
        rejected = await self._send(lines)
        if rejected is None:
            return len(lines), []
        if len(lines) == 1:
            return 0, [(lines[0], rejected)]
        half = len(lines) // 2
        left_taken, left_refused = await self._isolate(lines[:half])
        right_taken, right_refused = await self._isolate(lines[half:])
        return left_taken + right_taken, left_refused + right_refused

    async def _store_trouble(self, exc: TimeSeriesUnavailable) -> None:
        self.stats.write_failures += 1
        self.stats.last_error = str(exc)
        self.state = SinkState.STORE_UNAVAILABLE
        self._outage_failures += 1
        if self._outage_started is None:
            self._outage_started = self.clock()
            self.stats.outages += 1
            for _, carried in self._recent:
                for cid, (first, last) in carried.items():
                    known = self._replay.get(cid, (first, last))
                    self._replay[cid] = (min(known[0], first), max(known[1], last))
            self._recent.clear()
            if self._replay:
                log.info("time-series sink: when the store is back, what it acknowledged in the "
                         "%.0f s before this will be sent again (%s)", self.replay_window_s,
                         ", ".join(f"{cid} #{first}..{last}"
                                   for cid, (first, last) in sorted(self._replay.items())))
            log.warning("time-series sink: %s; retrying with backoff, the ledger keeps the data "
                        "(further failures are not logged until it recovers)", exc)
        delay = max(exc.retry_after_s, self._backoff.next_delay())
        await asyncio.sleep(delay)
        with contextlib.suppress(LedgerError):
            await self._look_at_heads()  # keep lag() current while the store is away

    def _recovered(self) -> None:
        if self._outage_started is not None:
            log.warning("time-series sink: the store is back after %.1f s and %d failed attempts",
                        self.clock() - self._outage_started, self._outage_failures)
            self._outage_started = None
            self._outage_failures = 0
        self._backoff.reset()
        self.state = SinkState.WRITING


def _decode(payload: bytes) -> pb.Block | None:
    try:
        return pb.Block.FromString(payload)
    except DecodeError:
        return None
