"""Blocks to InfluxDB line protocol, by string building. Pure: no I/O, no influxdb_client.

One line per reading (one line, wrapped here)::

    flue_gas,collector=c1,device=cems-1,eng_unit=mg/m3,flag=N,plant=demo,point=so2,
        quantity=a21026,unit=unit-1 quality=1i,value=35.2 1700000000000

Measurement: the reading's point family, by this rule (first match wins):

| point                                     | measurement |
|-------------------------------------------|-------------|
| the status word (point name `status`)     | `device`    |
| quantity an HJ 212 air code `a` + 5 digits | `flue_gas`  |
| quantity an HJ 212 water code `w` + 5 digits | `water`   |
| quantity `family.rest` (e.g. `fuel.coal.total`) | `family` (e.g. `fuel`) when it is `[a-z][a-z0-9_]*` |
| any other quantity                        | `other`     |
| no configuration document for the block   | `unknown`   |

Tags (sorted by key, as InfluxDB prefers): `collector`, `device`, `eng_unit`, `flag` (the HJ 212
letter N C M D B F T S), `plant`, `point` (the point's name within its device), `quantity`, `unit`
(the emission unit). A tag whose value is unknown or empty is left out. Fields: `quality` (the
integer quality code, always present, so that a communication-loss reading is still a point) and
`value` (a float, only when finite: NaN and infinity cannot be written), and for a totalizer
`increment` (what it counted since its previous reading, when known). Timestamp: the reading's
time in milliseconds (write with precision `ms`).

Escaping follows influxdb_client's `Point` (a test compares the two byte for byte), plus one
rule it lacks: a backslash is doubled, so that a value ending in one cannot escape the separator
after it (InfluxDB and VictoriaMetrics both read `\\\\` as one backslash). Newline, carriage return
and tab, which line protocol cannot carry, become the two characters `\\n`, `\\r`, `\\t`.

Speed: the tag part of a line depends only on (collector, configuration, point, quality), so it is
built once and cached; a line is then one f-string: about 12x the rate of influxdb_client's `Point`
helper on the development machine (bench/sink.py prints both).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import FLAG_LETTERS

__all__ = [
    "FLAG_LETTERS",
    "STATUS_POINT",
    "LineFormatter",
    "PointMeta",
    "escape_key",
    "escape_measurement",
    "escape_tag_value",
    "format_line",
    "format_value",
    "measurement_for",
    "meta_from_point_id",
    "points_of_config",
]

STATUS_POINT = "status"  # the collector's name for a device's raw status word
UNKNOWN_MEASUREMENT = "unknown"

_HJ212_AIR = re.compile(r"a\d{5}")
_HJ212_WATER = re.compile(r"w\d{5}")
_FAMILY = re.compile(r"([a-z][a-z0-9_]*)\.")

_CONTROL = {"\n": r"\n", "\r": r"\r", "\t": r"\t"}
_ESCAPE_MEASUREMENT = str.maketrans({"\\": "\\\\", ",": r"\,", " ": r"\ ", **_CONTROL})
_ESCAPE_KEY = str.maketrans({"\\": "\\\\", ",": r"\,", "=": r"\=", " ": r"\ ", **_CONTROL})


def escape_measurement(name: str) -> str:
    """A measurement name as line protocol needs it (comma, space, backslash escaped)."""
    return name.translate(_ESCAPE_MEASUREMENT)


def escape_key(key: str) -> str:
    """A tag key or field key (comma, equals sign, space, backslash escaped)."""
    return key.translate(_ESCAPE_KEY)


def escape_tag_value(value: str) -> str:
    """A tag value; the same rules as a key."""
    return value.translate(_ESCAPE_KEY)


def format_value(value: float) -> str:
    """A finite float as influxdb_client writes it: shortest round-trip form, without a
    trailing `.0` (a number without the `i` suffix is a float in line protocol)."""
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


def format_line(measurement: str, tags: Mapping[str, str | None],
                fields: Mapping[str, float | int], time_ms: int) -> str:
    """One line from parts (the general path; `LineFormatter` is the fast one for blocks).

    Tags with an empty or None value are left out; float fields that are not finite are left
    out; ValueError when no field is left (a line needs one).
    """
    tag_text = "".join(f",{escape_key(k)}={escape_tag_value(v)}"
                       for k, v in sorted(tags.items()) if k and v)
    parts = []
    for key, value in sorted(fields.items()):
        if isinstance(value, bool):
            raise TypeError(f"field {key!r}: booleans are not written")
        if isinstance(value, int):
            parts.append(f"{escape_key(key)}={value}i")
        elif value - value == 0.0:  # finite: NaN - NaN and inf - inf are NaN
            parts.append(f"{escape_key(key)}={format_value(value)}")
    if not parts:
        raise ValueError(f"a line of {measurement!r} needs at least one finite field")
    return f"{escape_measurement(measurement)}{tag_text} {','.join(parts)} {time_ms}"


@dataclass(frozen=True, slots=True)
class PointMeta:
    """What the configuration says about one point: its tags and its measurement."""

    measurement: str
    plant: str | None
    device: str | None
    point: str
    unit: str | None = None
    quantity: str | None = None
    eng_unit: str | None = None

    def tags(self, collector_id: str) -> dict[str, str | None]:
        """The tags of this point's lines, without the flag."""
        return {"collector": collector_id, "plant": self.plant, "unit": self.unit,
                "device": self.device, "point": self.point, "quantity": self.quantity,
                "eng_unit": self.eng_unit}


def measurement_for(point_name: str, quantity: str | None) -> str:
    """The point family a point's lines go to (the rule in this module's docstring)."""
    if point_name == STATUS_POINT and quantity is None:
        return "device"
    if quantity is None:
        return "other"
    if _HJ212_AIR.fullmatch(quantity):
        return "flue_gas"
    if _HJ212_WATER.fullmatch(quantity):
        return "water"
    family = _FAMILY.match(quantity)
    return family.group(1) if family else "other"


def meta_from_point_id(point_id: str) -> PointMeta:
    """What a point id (`plant/device/point`) alone says, for a block whose configuration
    document cannot be found; an id of another shape becomes the point tag whole."""
    parts = point_id.split("/")
    if len(parts) == 3 and all(parts):
        plant, device, point = parts
        measurement = "device" if point == STATUS_POINT else UNKNOWN_MEASUREMENT
        return PointMeta(measurement, plant, device, point)
    return PointMeta(UNKNOWN_MEASUREMENT, None, None, point_id)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def points_of_config(document: bytes) -> dict[str, PointMeta]:
    """Every point of a configuration document (collector/plan.py `_config_document`), by id.

    ValueError when the document is not one (not JSON, or not shaped like one); points that lack
    a name are skipped, missing optional fields become missing tags.
    """
    try:
        parsed = json.loads(document)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"configuration document is not JSON: {exc}") from exc
    devices = parsed.get("devices") if isinstance(parsed, dict) else None
    if not isinstance(devices, list):
        raise ValueError("configuration document has no device list")  # noqa: TRY004 - bad data, not a bad argument type
    plant_section = parsed.get("plant")
    plant = _text(plant_section.get("id")) if isinstance(plant_section, dict) else None
    points: dict[str, PointMeta] = {}
    for device in devices:
        if not isinstance(device, dict) or _text(device.get("id")) is None:
            continue
        device_id = device["id"]
        unit = _text(device.get("emission_unit"))
        profile = device.get("profile")
        profile = profile if isinstance(profile, dict) else {}
        specs = profile.get("points")
        for spec in specs if isinstance(specs, list) else []:
            name = _text(spec.get("name")) if isinstance(spec, dict) else None
            if name is None:
                continue
            quantity = _text(spec.get("quantity"))
            points[f"{plant}/{device_id}/{name}"] = PointMeta(
                measurement_for(name, quantity), plant, device_id, name, unit, quantity,
                _text(spec.get("unit")))
        if isinstance(profile.get("status"), dict):
            points[f"{plant}/{device_id}/{STATUS_POINT}"] = PointMeta(
                "device", plant, device_id, STATUS_POINT, unit)
    return points


_MAX_PREFIXES_PER_CONTEXT = 100_000


class _Context:
    """The line prefixes of one (collector, configuration): `measurement,tags quality=Ni`."""

    __slots__ = ("collector_id", "points", "prefixes")

    def __init__(self, collector_id: str, points: dict[str, PointMeta] | None) -> None:
        self.collector_id = collector_id
        self.points = points
        self.prefixes: dict[tuple[str, int], str] = {}

    def prefix(self, point_id: str, quality: int) -> str:
        meta = None if self.points is None else self.points.get(point_id)
        if meta is None:
            meta = meta_from_point_id(point_id)
        tags = meta.tags(self.collector_id)
        tags["flag"] = FLAG_LETTERS.get(quality)
        tag_text = "".join(f",{k}={escape_tag_value(v)}" for k, v in sorted(tags.items()) if v)
        text = f"{escape_measurement(meta.measurement)}{tag_text} quality={int(quality)}i"
        if len(self.prefixes) < _MAX_PREFIXES_PER_CONTEXT:
            self.prefixes[(point_id, quality)] = text
        return text


class LineFormatter:
    """Blocks to lines, with each point's tags from the configuration the block names.

    The caller (the sink) looks a configuration up once per (collector, digest) and hands it in
    with `add_config`; `None` records that it cannot be found, and the blocks that name it are
    written with what their point ids say (measurement `unknown`). At most `max_configs`
    configurations are kept (the oldest is dropped first).
    """

    def __init__(self, *, max_configs: int = 10_000) -> None:
        self.max_configs = max_configs
        self._contexts: dict[tuple[str, bytes], _Context] = {}

    def __repr__(self) -> str:
        return f"LineFormatter(configs={len(self._contexts)})"

    def knows(self, collector_id: str, digest: bytes) -> bool:
        """Whether `add_config` was called for this configuration (found or not)."""
        return (collector_id, digest) in self._contexts

    def found(self, collector_id: str, digest: bytes) -> bool:
        """Whether this configuration is known and its document was found."""
        context = self._contexts.get((collector_id, digest))
        return context is not None and context.points is not None

    def add_config(self, collector_id: str, digest: bytes, document: bytes | None) -> bool:
        """Take a configuration document (None: it cannot be found); False when the document is
        not usable, which counts as not found."""
        points: dict[str, PointMeta] | None = None
        if document is not None:
            try:
                points = points_of_config(document)
            except ValueError:
                points = None
        while len(self._contexts) >= self.max_configs:
            del self._contexts[next(iter(self._contexts))]
        self._contexts[(collector_id, digest)] = _Context(collector_id, points)
        return points is not None

    def block_lines(self, block: pb.Block, out: list[str]) -> int:
        """Append the lines of a block's readings to `out`; return how many."""
        key = (block.collector_id, block.config_digest)
        context = self._contexts.get(key)
        if context is None:
            context = self._contexts[key] = _Context(block.collector_id, None)
        prefixes = context.prefixes
        append = out.append
        start = len(out)
        for reading in block.readings:
            point = (reading.point_id, reading.quality)
            prefix = prefixes.get(point)
            if prefix is None:
                prefix = context.prefix(*point)
            value = reading.value
            if reading.counter_event and reading.HasField("increment"):
                # a totalizer: what it counted since its previous reading, for live consumption
                prefix += f",increment={format_value(reading.increment)}"
            if value - value == 0.0:  # finite: NaN - NaN and inf - inf are NaN
                text = repr(value)
                if text.endswith(".0"):
                    text = text[:-2]
                append(f"{prefix},value={text} {reading.time_unix_ms}")
            else:
                append(f"{prefix} {reading.time_unix_ms}")
        return len(out) - start
