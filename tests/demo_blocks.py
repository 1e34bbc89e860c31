"""Signed blocks of the demo plant made in-process: the collector's real read plan, register
encoding and decoder (collector/plan.py, collector/decode.py) and the feeders' totalizer
counting (collector/totalizer.py), with a calibration window on the CEMS rack and communication
loss on one feeder, as the simulator and a flaky link would give.

Also what a reader of the time-series store should find for them, worked out from the profile
files directly (not through gateway/lineproto.py), so a test compares two independent answers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import nacl.signing
import yaml

from collector.config import load_plant
from collector.decode import decode_device, encode_value
from collector.plan import ReadPlan, compile_plan
from collector.totalizer import TotalizerTracker
from gateway.ingest import verify_envelope
from gateway.ledger import CollectorKey, VerifiedBlock
from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import GENESIS_HASH, BlockDraft, ReadingValue, Signer, Verifier, encode_block
from tests.conftest import DEMO_PLANT

BASE_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z, a whole second
TICK_MS = 1000
FLAGS = {1: "N", 2: "C", 3: "M", 4: "D", 5: "B"}
# by the rule in gateway/lineproto.py's docstring, for the demo plant's quantities
FAMILIES = {"a": "flue_gas", "fuel": "fuel"}

Series = tuple[str, tuple[tuple[str, str], ...]]


class DemoCollector:
    """The demo plant's collector: blocks 1, 2, 3, ... of one chain, block 1 the CONFIG block."""

    def __init__(self, collector_id: str = "demo-plant-c1") -> None:
        self.plan: ReadPlan = compile_plan(load_plant(DEMO_PLANT))
        self.collector_id = collector_id
        self.signer = Signer(signing_key=nacl.signing.SigningKey.generate())
        self.key = CollectorKey(collector_id, self.signer.key_id, self.signer.public_key, BASE_MS)
        self.verifier = Verifier(public_key=self.signer.public_key)
        self.sequence = 0
        self.previous = GENESIS_HASH
        self.ticks = 0
        # one tracker per totalizer point for the whole chain, as the collector keeps them
        self.totalizers = {
            point.point_id: TotalizerTracker(spec=point.totalizer, data_type=point.data_type,
                                             scale=point.scale)
            for device in self.plan.devices for point in device.points
            if point.totalizer is not None}

    def _seal(self, draft: BlockDraft) -> tuple[pb.SignedBlock, VerifiedBlock]:
        self.sequence += 1
        payload = encode_block(draft, sequence=self.sequence, previous_hash=self.previous)
        envelope = self.signer.envelope(payload)
        verified = verify_envelope(envelope, collector_id=self.collector_id, key=self.key,
                                   verifier=self.verifier)
        assert isinstance(verified, VerifiedBlock), verified
        self.previous = verified.hash
        return envelope, verified

    def config_block(self) -> tuple[pb.SignedBlock, VerifiedBlock]:
        """The CONFIG block a collector writes before its first readings."""
        assert self.sequence == 0
        return self._seal(BlockDraft(
            collector_id=self.collector_id, window_start_unix_ms=BASE_MS,
            window_end_unix_ms=BASE_MS, readings=(), config_digest=self.plan.config_digest,
            kind=pb.BLOCK_KIND_CONFIG, config_document=self.plan.config_document))

    def readings(self, tick: int) -> list[ReadingValue]:
        """One poll of every device at `tick` seconds after BASE_MS, through the real decoder;
        totalizer increments count from the previous call's reading."""
        time_ms = BASE_MS + tick * TICK_MS
        readings: list[ReadingValue] = []
        for device in self.plan.devices:
            if device.device_id == "feeder-1b" and tick % 15 == 7:  # the link drops
                readings += decode_device(device, [None] * len(device.requests), time_ms)
                continue
            registers = [[0] * request.count for request in device.requests]
            for index, point in enumerate(device.points):
                value = 30.0 + 10.0 * math.sin(tick / 9.0 + index) + index
                if point.data_type.value.startswith("uint"):
                    value = 1000.0 + tick * 0.0125 * (index + 1)
                words = encode_value(value, point.data_type, byte_order=point.byte_order,
                                     scale=point.scale, offset=point.value_offset)
                registers[point.request_index][point.offset:point.offset + len(words)] = words
            if device.status is not None:
                calibrating = tick % 20 in (5, 6, 7)
                registers[device.status.request_index][device.status.offset] = (
                    1 << (device.status.calibration_bit or 0) if calibrating else 0)
            readings += decode_device(device, registers, time_ms, totalizers=self.totalizers)
        return readings

    def reseal(self, block: pb.Block, *, keep: str = "") -> tuple[pb.SignedBlock, VerifiedBlock]:
        """A block's window and readings (those whose point id contains `keep`) as this
        collector's next block, signed and chained: generated data through the real chain."""
        readings = [ReadingValue(r.point_id, r.time_unix_ms, r.value, r.quality, (),
                                 r.increment if r.HasField("increment") else None, r.counter_event)
                    for r in block.readings if keep in r.point_id]
        return self._seal(BlockDraft(
            collector_id=self.collector_id, window_start_unix_ms=block.window_start_unix_ms,
            window_end_unix_ms=block.window_end_unix_ms, readings=readings,
            config_digest=self.plan.config_digest))

    def readings_block(self) -> tuple[pb.SignedBlock, VerifiedBlock]:
        """The next tick's block."""
        tick = self.ticks
        self.ticks += 1
        start = BASE_MS + tick * TICK_MS
        return self._seal(BlockDraft(
            collector_id=self.collector_id, window_start_unix_ms=start,
            window_end_unix_ms=start + TICK_MS, readings=self.readings(tick),
            config_digest=self.plan.config_digest))

    def chain(self, readings_blocks: int) -> list[VerifiedBlock]:
        """The CONFIG block (if not made yet) and then `readings_blocks` readings blocks."""
        blocks = [] if self.sequence else [self.config_block()[1]]
        blocks += [self.readings_block()[1] for _ in range(readings_blocks)]
        return blocks


def _point_tags() -> dict[str, dict[str, str]]:
    """Tags of every demo point, read from the plant and profile YAML files."""
    plant = yaml.safe_load(DEMO_PLANT.read_text())
    plant_id = plant["plant"]["id"]
    tags: dict[str, dict[str, str]] = {}
    for device in plant["devices"]:
        profile = yaml.safe_load((DEMO_PLANT.parent / device["profile"]).read_text())
        common = {"plant": plant_id, "device": device["id"], "unit": device["emission_unit"]}
        for point in profile["points"]:
            tags[f"{plant_id}/{device['id']}/{point['name']}"] = {
                **common, "point": point["name"], "quantity": point["quantity"],
                "eng_unit": point["unit"]}
        if "status" in profile:
            tags[f"{plant_id}/{device['id']}/status"] = {**common, "point": "status"}
    return tags


POINT_TAGS = _point_tags()


def measurement_of(tags: dict[str, str]) -> str:
    if tags["point"] == "status":
        return "device"
    quantity = tags["quantity"]
    return FAMILIES["a"] if quantity[0] == "a" and quantity[1:].isdigit() else FAMILIES[
        quantity.split(".")[0]]


def expected_series(collector_id: str, payloads: Iterable[bytes]) -> dict[Series, list[tuple[int, float]]]:
    """What VictoriaMetrics should hold for these stored blocks: per series (metric name
    `<measurement>_<field>`, labels), the (ms timestamp, value) samples in time order."""
    found: dict[Series, list[tuple[int, float]]] = {}
    for payload in payloads:
        block = pb.Block.FromString(payload)
        for reading in block.readings:
            tags = {**POINT_TAGS[reading.point_id], "collector": collector_id,
                    "flag": FLAGS[reading.quality]}
            labels = tuple(sorted(tags.items()))
            measurement = measurement_of(tags)
            fields = {"quality": float(reading.quality)}
            if math.isfinite(reading.value):
                fields["value"] = reading.value
            if reading.counter_event and reading.HasField("increment"):
                fields["increment"] = reading.increment  # a totalizer's count since the last
            for field, value in fields.items():
                found.setdefault((f"{measurement}_{field}", labels), []).append(
                    (reading.time_unix_ms, value))
    return {series: sorted(samples) for series, samples in found.items()}
