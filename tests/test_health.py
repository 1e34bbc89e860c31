"""Health for operators: /metrics and /healthz on both sides, and `stackline status`, with a
device that stops answering mid-run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from collector.config import load_plant
from collector.runtime import CollectorRuntime, build_runtime
from collector.simulator import PlantSimulator
from gateway.config import load_gateway_config
from gateway.runtime import GatewayRuntime, enroll_collector
from proto.keys import load_public_key
from tests.conftest import wait_for
from tests.support import run_stackline, write_plant

CID = "demo-plant-c1"


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, keyed by name and sorted labels, as the Prometheus parser reads it."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return out


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in found, f"no sample {name}{labels}; have {sorted(k for k in found if k[0] == name)}"
    return found[key]


@dataclass
class Site:
    gateway: GatewayRuntime
    collector: CollectorRuntime
    gateway_url: str
    feeders: asyncio.Task[None]

    @property
    def collector_url(self) -> str:
        assert self.collector.http_endpoint is not None
        return f"http://127.0.0.1:{self.collector.http_endpoint.port}"


@contextlib.asynccontextmanager
async def running(tmp_path: Path) -> AsyncIterator[Site]:
    config = tmp_path / "gateway" / "gateway.yaml"
    config.parent.mkdir()
    config.write_text(yaml.safe_dump({
        "gateway": {"id": "gw-health"}, "listen": {"grpc": "127.0.0.1:0"},
        "ledger": {"path": "ledger.sqlite"}, "http": {"listen": "127.0.0.1:0"}}))
    gateway = GatewayRuntime(config=load_gateway_config(config))
    port = await gateway.start()
    assert gateway.http is not None
    path = write_plant(tmp_path / "plant", grpc_port=port, tick_ms=200)
    plant_yaml = yaml.safe_load(path.read_text())
    plant_yaml["collector"]["status_interval_s"] = 0.5
    plant_yaml["collector"]["http"] = {"listen": "127.0.0.1:0"}
    path.write_text(yaml.safe_dump(plant_yaml))
    plant = load_plant(path)
    await enroll_collector(gateway.ledger, collector_id=CID,
                           public_key=load_public_key(tmp_path / "plant" / "collector.key.pub"))
    # two simulators, so that the feeders can stop answering while the CEMS rack goes on
    cems = PlantSimulator(plant=plant.model_copy(update={"devices": plant.devices[:1]}))
    feeders = PlantSimulator(plant=plant.model_copy(update={"devices": plant.devices[1:]}))
    tasks = [asyncio.create_task(cems.serve()), asyncio.create_task(feeders.serve())]
    collector = build_runtime(plant)
    halt = asyncio.Event()
    run = asyncio.create_task(collector.run_until(halt, drain_timeout_s=5))
    try:
        yield Site(gateway, collector, f"http://127.0.0.1:{gateway.http.port}", tasks[1])
    finally:
        halt.set()
        await run
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await gateway.stop()


async def test_metrics_healthz_and_status_show_a_device_that_stops_answering(
        tmp_path: Path) -> None:
    async with running(tmp_path) as site:
        async def reported() -> bool:
            return CID in site.gateway.core.statuses and (
                await site.gateway.ledger.head(CID)).sequence >= 5
        await wait_for(reported, timeout_s=20, what="blocks and a health report at the gateway")

        status, body = await asyncio.to_thread(get, site.collector_url + "/healthz")
        assert status == 200 and json.loads(body)["ok"] is True
        status, body = await asyncio.to_thread(get, site.gateway_url + "/healthz")
        assert status == 200 and json.loads(body)["ok"] is True

        before = samples((await asyncio.to_thread(get, site.collector_url + "/metrics"))[1].decode())
        assert value(before, "stackline_collector_poll_failures_total", collector=CID,
                     device="feeder-1a", kind="connection") == 0
        assert value(before, "stackline_collector_polls_total", collector=CID,
                     device="cems-1") >= 4  # blocks 2..5: block 1 records the configuration
        for name in ("stackline_collector_buffer_blocks", "stackline_collector_buffer_bytes",
                     "stackline_collector_oldest_unacknowledged_age_seconds"):
            value(before, name, collector=CID)
        assert value(before, "stackline_collector_uplink_state", collector=CID, uplink="grpc",
                     state="streaming") == 1

        gateway_metrics = samples((await asyncio.to_thread(
            get, site.gateway_url + "/metrics"))[1].decode())
        assert value(gateway_metrics, "stackline_gateway_blocks_ingested_total", collector=CID,
                     transport="grpc") >= 5
        assert value(gateway_metrics, "stackline_gateway_readings_ingested_total", collector=CID,
                     transport="grpc") >= 4 * 14
        assert value(gateway_metrics, "stackline_gateway_chain_head", collector=CID) >= 5
        assert value(gateway_metrics, "stackline_gateway_last_block_age_seconds",
                     collector=CID) < 30
        value(gateway_metrics, "stackline_gateway_collector_buffer_blocks", collector=CID)

        # the transparency log follows the ledger (integrated as blocks arrive)
        await wait_for(lambda: _true(site.gateway.log.size >= 5), timeout_s=20,
                       what="the blocks in the transparency log")
        gateway_metrics = samples((await asyncio.to_thread(
            get, site.gateway_url + "/metrics"))[1].decode())
        assert value(gateway_metrics, "stackline_gateway_log_leaves") >= 5
        assert value(gateway_metrics, "stackline_gateway_log_failures") == 0
        value(gateway_metrics, "stackline_gateway_log_pending_blocks")

        table = await asyncio.to_thread(run_stackline, "status", "--gateway", site.gateway_url)
        assert table.returncode == 0, table.stdout + table.stderr
        assert CID in table.stdout and " OK " in table.stdout
        assert f"transparency log stackline/{site.gateway.config.config.gateway.id}:" in table.stdout

        # the feeders' Modbus server goes away
        site.feeders.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await site.feeders

        async def failing_at_gateway() -> bool:
            status = site.gateway.core.statuses.get(CID)
            return status is not None and any(
                d.device_id == "feeder-1a" and d.consecutive_failures >= 2
                for d in status[0].devices)
        await wait_for(failing_at_gateway, timeout_s=20,
                       what="the gateway hearing that feeder-1a stopped answering")

        after = samples((await asyncio.to_thread(get, site.collector_url + "/metrics"))[1].decode())
        assert value(after, "stackline_collector_poll_failures_total", collector=CID,
                     device="feeder-1a", kind="connection") >= 2
        assert value(after, "stackline_collector_device_answering", collector=CID,
                     device="feeder-1a") == 0
        assert value(after, "stackline_collector_device_answering", collector=CID,
                     device="cems-1") == 1
        gateway_after = samples((await asyncio.to_thread(
            get, site.gateway_url + "/metrics"))[1].decode())
        assert value(gateway_after, "stackline_gateway_collector_devices_failing",
                     collector=CID) == 2

        table = await asyncio.to_thread(run_stackline, "status", "--gateway", site.gateway_url)
        assert table.returncode == 1, "a plant that needs attention makes status exit 1"
        assert "DEVICE FAULT" in table.stdout
        assert f"{CID} / feeder-1a: not answering" in table.stdout
        document = json.loads((await asyncio.to_thread(
            run_stackline, "status", "--gateway", site.gateway_url, "--json")).stdout)
        assert document["collectors"][0]["state"] == "DEVICE FAULT"


def test_status_names_what_to_do_when_the_gateway_is_unreachable() -> None:
    from tests.conftest import free_port  # noqa: PLC0415

    result = run_stackline("status", "--gateway", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert "cannot reach" in result.stderr and "http: {listen" in result.stderr


@pytest.mark.parametrize("path", ["/nope"])
async def test_unknown_path_lists_the_routes(tmp_path: Path, path: str) -> None:
    async with running(tmp_path) as site:
        status, body = await asyncio.to_thread(get, site.gateway_url + path)
    assert status == 404
    assert b"/metrics" in body and b"/status" in body


async def _true(value: bool) -> bool:
    return value
