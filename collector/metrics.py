"""The collector's Prometheus metrics, read from the runtime at scrape time; the only home of
prometheus_client in the collector."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from collector.uplink import UplinkState

if TYPE_CHECKING:
    from collector.runtime import CollectorRuntime

__all__ = ["CONTENT_TYPE", "CollectorMetrics", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class CollectorMetrics(Collector):
    """Exposes one runtime's counters and gauges."""

    def __init__(self, runtime: CollectorRuntime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        """Build every family from the runtime's current state."""
        runtime = self.runtime
        cid = runtime.plan.collector_id
        polls = CounterMetricFamily("stackline_collector_polls", "Device polls",
                                    labels=["collector", "device"])
        failures = CounterMetricFamily("stackline_collector_poll_failures",
                                       "Failed device polls by kind (timeout, connection, exception)",
                                       labels=["collector", "device", "kind"])
        answering = GaugeMetricFamily("stackline_collector_device_answering",
                                      "1 when the device's last poll succeeded",
                                      labels=["collector", "device"])
        exceptions = CounterMetricFamily("stackline_collector_device_exceptions",
                                         "Modbus exception responses by exception code",
                                         labels=["collector", "device", "code"])
        failed_requests = CounterMetricFamily("stackline_collector_failed_requests",
                                              "Requests that failed (their points were flagged)",
                                              labels=["collector", "device"])
        skipped = CounterMetricFamily("stackline_collector_skipped_polls",
                                      "Polls not made while backing off from a silent device "
                                      "(recorded as flagged readings)", labels=["collector", "device"])
        backing_off = GaugeMetricFamily("stackline_collector_device_backing_off",
                                        "1 while the device is polled less often because it is silent",
                                        labels=["collector", "device"])
        poll_seconds = GaugeMetricFamily("stackline_collector_last_poll_seconds",
                                         "How long the device's last poll took",
                                         labels=["collector", "device"])
        for device_id, health in runtime.devices.items():
            polls.add_metric([cid, device_id], health.polls)
            answering.add_metric([cid, device_id], 1 if health.answering else 0)
            for kind in ("timeout", "connection", "exception"):
                failures.add_metric([cid, device_id, kind], health.failures_by_kind.get(kind, 0))
            for code, count in sorted(health.exceptions_by_code.items()):
                exceptions.add_metric([cid, device_id, str(code)], count)
            failed_requests.add_metric([cid, device_id], health.failed_requests)
            skipped.add_metric([cid, device_id], health.skipped_polls)
            backing_off.add_metric([cid, device_id], 1 if health.backing_off else 0)
            poll_seconds.add_metric([cid, device_id], health.last_poll_ms / 1000)
        yield from (polls, failures, answering, exceptions, failed_requests, skipped, backing_off,
                    poll_seconds)

        stats = runtime.stats
        for name, count, text in (
            ("blocks", stats.blocks, "Blocks sealed into the buffer"),
            ("readings", stats.readings, "Readings recorded"),
            ("flagged_readings", stats.flagged_readings, "Readings with a flag other than N"),
            ("missed_ticks", stats.missed_ticks, "Ticks skipped because the collector fell behind"),
            ("unbuffered_ticks", stats.unbuffered_ticks, "Ticks not recorded: buffer full"),
            ("config_reloads", stats.config_reloads, "Configurations reloaded on SIGHUP"),
            ("refused_reloads", stats.refused_reloads,
             "Reloads refused because the new configuration was invalid"),
        ):
            family = CounterMetricFamily(f"stackline_collector_{name}", text, labels=["collector"])
            family.add_metric([cid], count)
            yield family

        depth = runtime.buffer.depth()
        oldest_age = (0.0 if depth.oldest_created_unix_ms is None
                      else max(0.0, time.time() - depth.oldest_created_unix_ms / 1000))
        gauges: tuple[tuple[str, float, str], ...] = (
            ("buffer_blocks", depth.blocks, "Blocks waiting for the gateway's acknowledgement"),
            ("buffer_bytes", depth.bytes, "Bytes of blocks waiting for acknowledgement"),
            ("oldest_unacknowledged_age_seconds", oldest_age,
             "Age of the oldest unacknowledged block"),
            ("chain_head", runtime.buffer.chain_state().sequence, "Sequence of the newest block"),
            ("acknowledged_through", depth.acknowledged_through,
             "Highest sequence the gateway has acknowledged"),
        )
        for name, value, text in gauges:
            gauge = GaugeMetricFamily(f"stackline_collector_{name}", text, labels=["collector"])
            gauge.add_metric([cid], value)
            yield gauge

        state = GaugeMetricFamily("stackline_collector_uplink_state",
                                  "1 for the uplink's current state",
                                  labels=["collector", "uplink", "state"])
        rejections = CounterMetricFamily("stackline_collector_uplink_rejections",
                                         "Blocks the gateway rejected", labels=["collector", "uplink"])
        sent = CounterMetricFamily("stackline_collector_uplink_blocks_sent",
                                   "Blocks sent (resends included)", labels=["collector", "uplink"])
        for uplink in runtime.uplinks:
            name = type(uplink).__name__.removesuffix("Uplink").lower()
            for candidate in UplinkState:
                state.add_metric([cid, name, candidate.value], 1 if uplink.state is candidate else 0)
            rejections.add_metric([cid, name], uplink.stats.rejections)
            sent.add_metric([cid, name], uplink.stats.blocks_sent)
        yield from (state, rejections, sent)

        receipts = runtime.receipts
        if receipts is not None:
            by_status = CounterMetricFamily(
                "stackline_collector_receipts",
                "Receipts from the gateway by verdict (verified, unverified, refused, fork)",
                labels=["collector", "status"])
            for status, count in sorted(receipts.stats.by_status.items()):
                by_status.add_metric([cid, status], count)
            forks = CounterMetricFamily(
                "stackline_collector_log_forks",
                "Receipts proving that the gateway's transparency log forked or rewrote its "
                "history (ALARM)", labels=["collector"])
            forks.add_metric([cid], receipts.forks)
            held = GaugeMetricFamily("stackline_collector_receipt_tree_size",
                                     "Tree size of the held (verified) checkpoint of the "
                                     "gateway's log; 0 before the first", labels=["collector"])
            held.add_metric([cid], receipts.held_tree_size())
            covered = GaugeMetricFamily("stackline_collector_receipt_sequence",
                                        "Newest block a verified receipt proves to be in the "
                                        "gateway's log", labels=["collector"])
            covered.add_metric([cid], receipts.stats.newest_verified_sequence)
            yield from (by_status, forks, held, covered)


def render(runtime: CollectorRuntime) -> bytes:
    """The exposition text for one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CollectorMetrics(runtime))
    return generate_latest(registry)
