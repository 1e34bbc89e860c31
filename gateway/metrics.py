"""The gateway's Prometheus metrics and the /status document; the only home of prometheus_client
in the gateway. Everything is read at scrape time from the ingest counters and the ledger."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.ingest import IngestCore
from gateway.ledger.base import CollectorOverview
from gateway.translog.log import TransparencyLog

__all__ = ["CONTENT_TYPE", "GatewaySnapshot", "LogSnapshot", "render", "status_document"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STALE_AFTER_S = 30.0


@dataclass(frozen=True, slots=True)
class LogSnapshot:
    """The transparency log as this gateway last saw it."""

    origin: str
    verifier_key: str
    size: int
    checkpoint_size: int | None
    checkpoint_unix_ms: int | None
    failures: int

    @classmethod
    def of(cls, log: TransparencyLog) -> LogSnapshot:
        """From the running log (no ledger read)."""
        latest = log.latest
        return cls(log.origin, log.verifier_key, log.size,
                   None if latest is None else latest.tree_size,
                   None if latest is None else latest.published_unix_ms, log.failures)


@dataclass(frozen=True, slots=True)
class GatewaySnapshot:
    """What one scrape or status request reads, taken on the event loop."""

    gateway_id: str
    collectors: dict[str, CollectorOverview]
    quarantine_by_reason: dict[str, int]
    sink_lag_blocks: dict[str, int] | None
    now_unix_ms: int
    log: LogSnapshot | None = None

    @classmethod
    async def take(cls, *, gateway_id: str, core: IngestCore,
                   sink_lag_blocks: dict[str, int] | None,
                   log: LogSnapshot | None = None) -> GatewaySnapshot:
        """Read the ledger once for this snapshot."""
        return cls(gateway_id, await core.ledger.collectors_overview(),
                   await core.ledger.quarantine_counts(), sink_lag_blocks,
                   int(time.time() * 1000), log)

    def log_pending_blocks(self) -> int | None:
        """Stored blocks not yet in the transparency log (as of the log's last integration)."""
        if self.log is None:
            return None
        return max(0, sum(o.sequence for o in self.collectors.values()) - self.log.size)


class _GatewayCollector(Collector):
    def __init__(self, snapshot: GatewaySnapshot, core: IngestCore) -> None:
        self.snapshot = snapshot
        self.core = core

    def collect(self) -> Iterator[Metric]:
        stats = self.core.stats
        blocks = CounterMetricFamily("stackline_gateway_blocks_ingested",
                                     "Blocks verified and stored by this gateway process",
                                     labels=["collector", "transport"])
        readings = CounterMetricFamily("stackline_gateway_readings_ingested",
                                       "Readings in the blocks this gateway process stored",
                                       labels=["collector", "transport"])
        for (collector_id, transport), count in sorted(stats.blocks_by_transport.items()):
            blocks.add_metric([collector_id, transport], count)
            readings.add_metric([collector_id, transport],
                                stats.readings_by_transport[(collector_id, transport)])
        duplicates = CounterMetricFamily("stackline_gateway_duplicates",
                                         "Blocks received again and acknowledged without storing",
                                         labels=["collector"])
        for collector_id, count in sorted(stats.duplicates.items()):
            duplicates.add_metric([collector_id], count)
        rejections = CounterMetricFamily("stackline_gateway_rejections",
                                         "Refused input by reason (this process)", labels=["reason"])
        for reason, count in sorted(stats.rejections.items()):
            rejections.add_metric([reason], count)
        yield from (blocks, readings, duplicates, rejections)

        snap = self.snapshot
        quarantined = GaugeMetricFamily("stackline_gateway_quarantined",
                                        "Entries kept in the ledger's quarantine, by reason",
                                        labels=["reason"])
        for reason, count in sorted(snap.quarantine_by_reason.items()):
            quarantined.add_metric([reason], count)
        head = GaugeMetricFamily("stackline_gateway_chain_head",
                                 "Highest contiguous sequence stored", labels=["collector"])
        age = GaugeMetricFamily("stackline_gateway_last_block_age_seconds",
                                "Age of the newest stored block's window (ledger lag)",
                                labels=["collector"])
        buffered = GaugeMetricFamily("stackline_gateway_collector_buffer_blocks",
                                     "Blocks waiting in the collector's buffer, as it reported",
                                     labels=["collector"])
        failing = GaugeMetricFamily("stackline_gateway_collector_devices_failing",
                                    "Devices whose last poll failed, as the collector reported",
                                    labels=["collector"])
        for collector_id, overview in sorted(snap.collectors.items()):
            head.add_metric([collector_id], overview.sequence)
            if overview.latest_window_start_unix_ms is not None:
                age.add_metric([collector_id], max(
                    0.0, (snap.now_unix_ms - overview.latest_window_start_unix_ms) / 1000))
            reported = self.core.statuses.get(collector_id)
            if reported is not None:
                buffered.add_metric([collector_id], reported[0].buffer_blocks)
                failing.add_metric([collector_id],
                                   sum(1 for d in reported[0].devices if not d.answering))
        yield from (quarantined, head, age, buffered, failing)
        if snap.log is not None:
            yield from _log_metrics(snap, snap.log)
        if snap.sink_lag_blocks is not None:
            lag = GaugeMetricFamily("stackline_gateway_sink_lag_blocks",
                                    "Stored blocks not yet written to the time-series store",
                                    labels=["collector"])
            for collector_id, count in sorted(snap.sink_lag_blocks.items()):
                lag.add_metric([collector_id], count)
            yield lag


def _log_metrics(snap: GatewaySnapshot, log: LogSnapshot) -> Iterator[Metric]:
    leaves = GaugeMetricFamily("stackline_gateway_log_leaves",
                               "Blocks in the transparency log (its tree size)")
    leaves.add_metric([], log.size)
    pending = GaugeMetricFamily("stackline_gateway_log_pending_blocks",
                                "Stored blocks not yet integrated into the transparency log")
    pending.add_metric([], snap.log_pending_blocks() or 0)
    failures = GaugeMetricFamily("stackline_gateway_log_failures",
                                 "Failed log integrations or checkpoints in a row (0: healthy)")
    failures.add_metric([], log.failures)
    yield from (leaves, pending, failures)
    if log.checkpoint_size is not None and log.checkpoint_unix_ms is not None:
        size = GaugeMetricFamily("stackline_gateway_log_checkpoint_size",
                                 "Tree size of the newest published checkpoint")
        size.add_metric([], log.checkpoint_size)
        age = GaugeMetricFamily("stackline_gateway_log_checkpoint_age_seconds",
                                "Age of the newest published checkpoint")
        age.add_metric([], max(0.0, (snap.now_unix_ms - log.checkpoint_unix_ms) / 1000))
        yield from (size, age)


def render(snapshot: GatewaySnapshot, core: IngestCore) -> bytes:
    """The exposition text for one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_GatewayCollector(snapshot, core))
    return generate_latest(registry)


def status_document(snapshot: GatewaySnapshot, core: IngestCore) -> dict[str, Any]:
    """What `stackline status` shows: one entry per enrolled collector."""
    collectors = []
    for collector_id, overview in sorted(snapshot.collectors.items()):
        reported = core.statuses.get(collector_id)
        lag_s = (None if overview.latest_window_start_unix_ms is None
                 else max(0.0, (snapshot.now_unix_ms - overview.latest_window_start_unix_ms) / 1000))
        entry: dict[str, Any] = {
            "collector_id": collector_id,
            "plant_id": reported[0].plant_id if reported else None,
            "chain_head": overview.sequence,
            "readings": overview.readings,
            "last_block_unix_ms": overview.latest_window_start_unix_ms,
            "lag_s": None if lag_s is None else round(lag_s, 1),
            "quarantined": overview.quarantined,
            "sink_lag_blocks": (snapshot.sink_lag_blocks or {}).get(collector_id),
            "reported": None,
        }
        if reported is not None:
            status, received_ms = reported
            entry["reported"] = {
                "age_s": round(max(0.0, (snapshot.now_unix_ms - received_ms) / 1000), 1),
                "chain_head": status.chain_head,
                "buffer_blocks": status.buffer_blocks,
                "buffer_bytes": status.buffer_bytes,
                "unrecorded_ticks": status.unrecorded_ticks,
                "devices": [{"device_id": d.device_id, "answering": d.answering,
                             "failures": d.failures, "consecutive_failures": d.consecutive_failures,
                             "last_error": d.last_error} for d in status.devices],
            }
        entry["state"] = _state(entry, lag_s)
        collectors.append(entry)
    log = snapshot.log
    return {"gateway_id": snapshot.gateway_id, "time_unix_ms": snapshot.now_unix_ms,
            "collectors": collectors,
            "quarantined_by_reason": dict(sorted(snapshot.quarantine_by_reason.items())),
            "log": None if log is None else {
                "origin": log.origin, "verifier_key": log.verifier_key, "size": log.size,
                "pending_blocks": snapshot.log_pending_blocks(), "failures": log.failures,
                "checkpoint_size": log.checkpoint_size,
                "checkpoint_unix_ms": log.checkpoint_unix_ms}}


def _state(entry: dict[str, Any], lag_s: float | None) -> str:
    """One word an operator acts on, worst first."""
    reported = entry["reported"]
    if lag_s is None:
        return "NO DATA"
    if lag_s > STALE_AFTER_S and (reported is None or reported["age_s"] > STALE_AFTER_S):
        return "SILENT"
    if reported is not None and any(not d["answering"] for d in reported["devices"]):
        return "DEVICE FAULT"
    if reported is not None and reported["buffer_blocks"] > 10:
        return "BUFFERING"
    if lag_s > STALE_AFTER_S:
        return "LAGGING"
    return "OK"
