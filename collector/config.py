"""Plant configurations and device profiles: strict models, loaded once and checked.

A plant configuration (`firmware-config/plants/*.yaml`) names the plant, the collector, and its
devices; each device refers to a profile (`firmware-config/profiles/*.yaml`), the register map of
one kind of instrument. Unknown keys are refused; every error names the file and the field.
Register-level checks (widths, overlaps, request sizes) happen in `collector.plan`.
"""

from __future__ import annotations

import enum
import math
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from collector.errors import ConfigError, ReceiptError
from collector.receipts import LogKey, parse_log_key

__all__ = [
    "MAX_BITS_PER_REQUEST",
    "MAX_REGISTERS_PER_REQUEST",
    "AccountingSection",
    "AccountingUnit",
    "BufferConfig",
    "ByteOrder",
    "CollectorSection",
    "DataType",
    "DeviceConfig",
    "DeviceProfile",
    "GrpcUplinkConfig",
    "HttpConfig",
    "LabValue",
    "LoadedDevice",
    "LoadedPlant",
    "MqttTlsConfig",
    "MqttUplinkConfig",
    "PlantConfig",
    "PointSpec",
    "RegisterType",
    "SerialLine",
    "TcpTransport",
    "TotalizerSpec",
    "load_plant",
    "load_profile",
]

_M = TypeVar("_M", bound=BaseModel)

MAX_REGISTERS_PER_REQUEST = 125  # Modbus application protocol, function codes 3 and 4
MAX_BITS_PER_REQUEST = 2000  # function codes 1 and 2

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegisterType(enum.StrEnum):
    """Which Modbus table a point lives in."""

    COIL = "coil"  # read with function code 1, one bit per address
    DISCRETE_INPUT = "discrete_input"  # function code 2, one bit per address
    HOLDING = "holding"  # function code 3, 16-bit registers
    INPUT = "input"  # function code 4, 16-bit registers

    @property
    def is_bit(self) -> bool:
        """Coils and discrete inputs hold single bits, not registers."""
        return self in (RegisterType.COIL, RegisterType.DISCRETE_INPUT)


class DataType(enum.StrEnum):
    """How a point's registers decode."""

    BOOL = "bool"  # a coil, a discrete input, or one bit (`bit`) of a register
    BITS = "bits"  # an unsigned field of `bit_count` bits from `bit` up within one register
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"  # `registers` registers of two characters each

    @property
    def registers(self) -> int:
        """How many 16-bit registers a value of this type spans (strings: see `registers`)."""
        return _WIDTHS[self]

    @property
    def is_numeric_word(self) -> bool:
        """A whole-register number: the types that take byte order, scale and offset."""
        return self not in (DataType.BOOL, DataType.BITS, DataType.STRING)


_WIDTHS = {
    DataType.BOOL: 1,
    DataType.BITS: 1,
    DataType.INT16: 1,
    DataType.UINT16: 1,
    DataType.INT32: 2,
    DataType.UINT32: 2,
    DataType.INT64: 4,
    DataType.UINT64: 4,
    DataType.FLOAT32: 2,
    DataType.FLOAT64: 4,
    DataType.STRING: 1,
}


class ByteOrder(enum.StrEnum):
    """Where the bytes of a multi-byte value sit, with A the most significant byte.

    ABCD: the first register holds the most significant word, high byte first (Modbus' own
    order). CDAB: words swapped, bytes not ("word swap", low word first). BADC: the bytes of each
    register swapped. DCBA: both (fully little-endian). Four-register values extend the pattern
    (CDAB reverses the order of all four words). One-register values only see the byte swap.
    """

    ABCD = "ABCD"
    BADC = "BADC"
    CDAB = "CDAB"
    DCBA = "DCBA"

    @property
    def words_reversed(self) -> bool:
        """The least significant register comes first."""
        return self in (ByteOrder.CDAB, ByteOrder.DCBA)

    @property
    def bytes_swapped(self) -> bool:
        """Each register carries its low byte first."""
        return self in (ByteOrder.BADC, ByteOrder.DCBA)


class Simulation(_Strict):
    """How `stackline simulate` animates a point (ignored by the collector).

    By default a slow sine wave with noise; `rate_per_s` makes a totalizer that grows steadily;
    `value` a constant engineering value; `words` fixed raw registers served as they are (for
    golden tests and commissioning); `text` a constant string.
    """

    mean: float = 0.0
    amplitude: float = 0.0
    period_s: float = Field(default=3600.0, gt=0)
    noise: float = Field(default=0.0, ge=0)
    rate_per_s: float = 0.0  # totalizers: increment per second
    value: float | None = None
    words: list[Annotated[int, Field(ge=0, le=65535)]] | None = None
    text: str | None = None


class TotalizerSpec(_Strict):
    """A cumulative counter: the collector records what it counted between readings, across a
    rollover, and marks a meter reset instead of reporting a negative consumption."""

    rollover_at: float | None = Field(
        default=None, gt=0,
        description="raw count at which the meter starts again from zero (default for uint16, "
                    "uint32 and uint64: 2^16, 2^32, 2^64; other types must say)")
    max_increase_per_s: float | None = Field(
        default=None, gt=0,
        description="the most the meter can count per second, in engineering units; a drop is "
                    "a rollover only when the wrapped increase fits this rate (default: when it is "
                    "at most half the meter's range)")


class PointSpec(_Strict):
    """One measured value in a device's register map."""

    name: Identifier
    address: int = Field(ge=0, le=65536, description="in the profile's address_base")
    register_type: RegisterType | None = None
    data_type: DataType
    registers: int | None = Field(default=None, ge=1, le=MAX_REGISTERS_PER_REQUEST,
                                  description="span; required for strings, checked for the rest")
    bit: int | None = Field(default=None, ge=0, le=15,
                            description="bool or bits in a register: lowest bit, 0 = least significant")
    bit_count: int | None = Field(default=None, ge=1, le=16, description="bits: field width")
    byte_order: ByteOrder | None = None
    scale: float = 1.0
    offset: float = 0.0
    quantity: str = Field(min_length=1, max_length=64)
    unit: str = Field(min_length=1, max_length=32)
    description: str = ""
    flagged_by_status: bool = True
    totalizer: TotalizerSpec | None = None
    simulation: Simulation | None = None

    @model_validator(mode="after")
    def _consistent(self) -> PointSpec:
        data_type = self.data_type
        if self.register_type is not None and self.register_type.is_bit and data_type is not DataType.BOOL:
            raise ValueError(f"a {self.register_type.value} holds one bit: data_type must be bool")
        if data_type is DataType.STRING and self.registers is None:
            raise ValueError("a string needs registers: how many registers (two characters each)")
        if data_type is DataType.BITS and (self.bit is None or self.bit_count is None):
            raise ValueError("bits needs bit (the lowest bit) and bit_count")
        if self.bit is not None and data_type not in (DataType.BOOL, DataType.BITS):
            raise ValueError("bit applies to bool and bits points only")
        if self.bit_count is not None and data_type is not DataType.BITS:
            raise ValueError("bit_count applies to bits points only")
        if not (math.isfinite(self.scale) and self.scale != 0) or not math.isfinite(self.offset):
            raise ValueError("scale must be a finite, non-zero number and offset a finite one")
        if self.bit is not None and self.bit_count is not None and self.bit + self.bit_count > 16:
            raise ValueError(f"bits {self.bit}..{self.bit + self.bit_count - 1} run past bit 15")
        if not data_type.is_numeric_word and data_type is not DataType.BITS and (
                self.scale != 1.0 or self.offset != 0.0):
            raise ValueError(f"a {data_type.value} point takes no scale or offset")
        if self.totalizer is not None and not data_type.is_numeric_word:
            raise ValueError("a totalizer is a number: int, uint or float")
        if (self.totalizer is not None and self.totalizer.rollover_at is None
                and data_type not in (DataType.UINT16, DataType.UINT32, DataType.UINT64)):
            raise ValueError(f"a {data_type.value} totalizer needs totalizer.rollover_at")
        return self


class StatusBits(_Strict):
    """Bit positions (0 = least significant) of the device's status word."""

    calibration: int | None = Field(default=None, ge=0, le=15)
    maintenance: int | None = Field(default=None, ge=0, le=15)
    fault: int | None = Field(default=None, ge=0, le=15)


class StatusRegister(_Strict):
    """A uint16 whose bits flag every status-flagged point of the device."""

    address: int = Field(ge=0, le=65535)
    register_type: RegisterType | None = None
    bits: StatusBits
    simulation_calibration_every_s: float = Field(default=0, ge=0)
    simulation_calibration_duration_s: float = Field(default=0, ge=0)


class ProfileDefaults(_Strict):
    """Values a point takes when it does not set its own."""

    register_type: RegisterType = RegisterType.HOLDING
    byte_order: ByteOrder = ByteOrder.ABCD


class DeviceProfile(_Strict):
    """The register map of one kind of instrument."""

    name: Identifier
    vendor: str = "generic"
    description: str = ""
    defaults: ProfileDefaults = ProfileDefaults()
    address_base: Literal[0, 1] = Field(
        default=0, description="1 when the manual numbers registers from 1 (address 1 is sent as 0)")
    max_registers_per_request: int = Field(default=MAX_REGISTERS_PER_REQUEST, ge=1)
    max_gap_registers: int = Field(
        default=0, ge=0, le=MAX_REGISTERS_PER_REQUEST - 2,
        description="unused registers a request may read across to join two points; keep 0 for "
                    "devices that answer unmapped addresses with an exception")
    status: StatusRegister | None = None
    points: list[PointSpec] = Field(min_length=1)

    @field_validator("max_registers_per_request")
    @classmethod
    def _within_modbus_limit(cls, value: int) -> int:
        if value > MAX_REGISTERS_PER_REQUEST:
            raise ValueError(
                f"a Modbus read carries at most {MAX_REGISTERS_PER_REQUEST} registers, not {value}"
            )
        return value


class TcpTransport(_Strict):
    """Modbus TCP endpoint of a device (or of a TCP-to-RTU bridge in front of several)."""

    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    request_gap_ms: int = Field(default=0, ge=0, le=10_000,
                                description="pause between two requests on this connection")


class SerialLine(_Strict):
    """An RS-485 (or RS-232) line shared by the devices that name it, polled one request at a time."""

    id: Identifier
    port: str = Field(min_length=1, description="serial device, e.g. /dev/ttyUSB0")
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    parity: Literal["N", "E", "O"] = "N"
    stop_bits: Literal[1, 2] = 1
    bytesize: Literal[8] = Field(default=8, description="Modbus RTU frames are 8 data bits")
    request_gap_ms: int = Field(default=10, ge=0, le=10_000,
                                description="silence between a response and the next request")


class DeviceConfig(_Strict):
    """One instrument at the plant."""

    id: Identifier
    profile: str = Field(min_length=1, description="path of the profile, relative to this file")
    emission_unit: Identifier
    tcp: TcpTransport | None = None
    serial_line: Identifier | None = Field(default=None, description="id of one of serial_lines")
    unit_id: int = Field(default=1, ge=0, le=247)
    timeout_ms: int = Field(default=500, ge=10, le=60_000, description="per request")
    poll_interval_ms: int | None = Field(default=None, ge=100, le=3_600_000,
                                         description="default: the collector's tick_ms")
    failures_before_backoff: int = Field(
        default=3, ge=1, le=1000,
        description="failed polls in a row after which the device is polled less often")
    backoff_max_ms: int = Field(default=30_000, ge=100, le=3_600_000,
                                description="longest wait between polls of a failing device")
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="profile values for this device only; points: {NAME: {field: value}}")

    @model_validator(mode="after")
    def _one_transport(self) -> DeviceConfig:
        if (self.tcp is None) == (self.serial_line is None):
            raise ValueError("give the device either tcp: {host, port} or serial_line: LINE_ID")
        return self


class BufferConfig(_Strict):
    """The collector's durable buffer."""

    path: str = "collector-buffer.sqlite"
    max_bytes: int = Field(default=1 << 30, ge=1 << 16)


class GrpcUplinkConfig(_Strict):
    """The gRPC link to the gateway."""

    target: str = Field(min_length=3, description="host:port of the gateway")
    max_blocks_per_batch: int = Field(default=100, ge=1, le=1000)
    max_batches_in_flight: int = Field(default=8, ge=1, le=64)
    reconnect_initial_s: float = Field(default=0.2, gt=0)
    reconnect_max_s: float = Field(default=10.0, gt=0)
    insecure: Literal[True] = Field(
        default=True, description="TLS comes later; plaintext must be chosen explicitly"
    )


class MqttTlsConfig(_Strict):
    """TLS towards the broker: the CA that signed the broker's certificate, and this collector's
    client certificate and key where the broker asks for one."""

    ca_file: str = Field(min_length=1)
    cert_file: str | None = None
    key_file: str | None = None

    @model_validator(mode="after")
    def _cert_with_key(self) -> MqttTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class MqttUplinkConfig(_Strict):
    """The MQTT link to the gateway, through a broker."""

    host: str = Field(min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = Field(default=None, description="the broker login; by convention the collector id")
    password_file: str | None = Field(default=None, description="file whose first line is the password")
    tls: MqttTlsConfig | None = None
    insecure: bool = Field(default=False, description="true to connect without TLS, on purpose")
    topic_prefix: str = Field(default="stackline/v1", pattern=r"^[^#+$][^#+]*[^/#+]$")
    client_id: str | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    max_blocks_per_message: int = Field(default=100, ge=1, le=1000)
    max_messages_in_flight: int = Field(
        default=1, ge=1, le=16,
        description="1 keeps blocks in order when several gateways share the subscription")
    ack_timeout_s: float = Field(default=10.0, gt=0, le=600)
    reconnect_initial_s: float = Field(default=0.2, gt=0)
    reconnect_max_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _tls_or_insecure(self) -> MqttUplinkConfig:
        if self.tls is None and not self.insecure:
            raise ValueError("set tls (ca_file, and cert_file/key_file if the broker asks) or "
                             "insecure: true to send in plaintext on purpose")
        if self.tls is not None and self.insecure:
            raise ValueError("tls and insecure: true contradict each other")
        return self


class UplinkConfig(_Strict):
    """Where the collector sends its blocks: gRPC, MQTT, or both at once."""

    grpc: GrpcUplinkConfig | None = None
    mqtt: MqttUplinkConfig | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> UplinkConfig:
        if self.grpc is None and self.mqtt is None:
            raise ValueError("configure grpc, mqtt, or both")
        return self


class HttpConfig(_Strict):
    """The read-only HTTP endpoint: /metrics (Prometheus) and /healthz."""

    listen: str = Field(default="127.0.0.1:9101", pattern=r"^.*:\d{1,5}$",
                        description="host:port (port 0 picks a free one)")


class CollectorSection(_Strict):
    """The collector process itself."""

    id: Identifier
    key_file: str = Field(min_length=1, description="private key made by `stackline keygen`")
    tick_ms: int = Field(default=1000, ge=100, le=60_000)
    keep_raw_registers: bool = True
    buffer: BufferConfig = BufferConfig()
    uplink: UplinkConfig
    status_interval_s: float = Field(default=5.0, ge=0.5, le=3600,
                                     description="how often the uplinks report health")
    http: HttpConfig | None = None
    gateway_log_key: str | None = Field(
        default=None,
        description="the gateway's transparency log key, <name>+<hex key id>+<base64 key>, as "
                    "the gateway logs it at start ('checkpoints verify with ...'): the receipts "
                    "in its acks are checked with it. Without it they are kept unverified")

    @field_validator("gateway_log_key")
    @classmethod
    def _log_key(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_log_key(value)
            except ReceiptError as exc:
                raise ValueError(str(exc)) from exc
        return value

    def log_key(self) -> LogKey | None:
        """The gateway log's key, parsed (it was checked at load)."""
        return None if self.gateway_log_key is None else parse_log_key(self.gateway_log_key)


class PlantSection(_Strict):
    """The plant the collector serves."""

    id: Identifier
    name: str = ""
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value


class AccountingUnit(_Strict):
    """An emission unit (boiler and stack) whose emissions are accounted: the devices whose
    `emission_unit` is this id feed it."""

    id: Identifier
    emission_standard: Literal["coal_boiler", "oil_gas_boiler", "gas_turbine"] = Field(
        default="coal_boiler", description="sets the reference O2 of corrected concentrations")
    barometric_pressure_kpa: float = Field(
        default=101.325, gt=50, lt=120,
        description="site barometric pressure, for standard-state flow (no barometer point read)")
    fuel: Identifier = Field(default="coal", description="the fuel its totalizers count")
    duct_area_m2: float | None = Field(
        default=None, gt=0, lt=1000,
        description="stack cross-section at the flow monitor, for units that measure velocity "
                    "(a01011) rather than flow (a00000)")


class LabValue(_Strict):
    """A monthly laboratory result the plant enters for the ETS fuel calculation."""

    month: str = Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$", description="YYYY-MM")
    fuel: Identifier = "coal"
    ncv_gj_per_t: float = Field(gt=0, lt=60, description="net calorific value, as received")
    carbon_content_tc_per_t: float | None = Field(
        default=None, gt=0, lt=1,
        description="measured element carbon, as received; absent: the methodology's default "
                    "carbon per calorific value")


class AccountingSection(_Strict):
    """What compliance accounting needs beyond the readings. It travels in the signed
    configuration document, so the plant attests to it like to its scaling factors."""

    methodology: Identifier = Field(default="cn-mee-2022", description="effective-dated parameters")
    units: list[AccountingUnit] = Field(default_factory=list)
    lab_values: list[LabValue] = Field(default_factory=list)

    @model_validator(mode="after")
    def _distinct(self) -> AccountingSection:
        ids = [unit.id for unit in self.units]
        if len(set(ids)) != len(ids):
            raise ValueError("an accounting unit id is listed twice")
        months = [(value.month, value.fuel) for value in self.lab_values]
        if len(set(months)) != len(months):
            raise ValueError("two lab values for the same month and fuel")
        return self


class PlantConfig(_Strict):
    """A whole plant configuration file."""

    plant: PlantSection
    collector: CollectorSection
    serial_lines: list[SerialLine] = Field(default_factory=list)
    devices: list[DeviceConfig] = Field(min_length=1)
    accounting: AccountingSection | None = None


class LoadedDevice(BaseModel):
    """A device together with its loaded profile (the device's overrides applied)."""

    model_config = ConfigDict(frozen=True)

    config: DeviceConfig
    profile: DeviceProfile
    profile_path: Path
    serial_line: SerialLine | None = None
    poll_interval_ms: int


class LoadedPlant(BaseModel):
    """A plant configuration with every path resolved and every profile loaded."""

    model_config = ConfigDict(frozen=True)

    source: Path
    config: PlantConfig
    devices: tuple[LoadedDevice, ...]

    def resolve(self, relative: str) -> Path:
        """A path from the configuration, relative to the configuration file's folder."""
        path = Path(relative)
        return path if path.is_absolute() else (self.source.parent / path).resolve()


def _field_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read the file: {exc.strerror}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), "", f"not valid YAML: {exc}") from exc


def _validate(model: type[_M], data: Any, source: Path) -> _M:
    if not isinstance(data, dict):
        raise ConfigError(str(source), "", "expected a mapping at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # A misspelt key also makes the real one "missing"; name the misspelling, which is
        # what the engineer has to fix.
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        field = _field_path(first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown key (check its spelling and where it sits)"
        more = len(errors) - 1
        if more:
            message += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise ConfigError(str(source), field, message) from exc


def load_profile(path: Path) -> DeviceProfile:
    """Load and validate one device profile."""
    return _validate(DeviceProfile, _read_yaml(path), path)


def _merge_overrides(profile: dict[str, Any], overrides: dict[str, Any], source: Path,
                     field: str) -> dict[str, Any]:
    """The profile document with a device's overrides laid over it. Mappings merge key by key;
    `points` is keyed by point name; any other value replaces the profile's."""
    merged = dict(profile)
    for key, value in overrides.items():
        if key == "points":
            if not isinstance(value, dict):
                raise ConfigError(str(source), f"{field}.points",
                                  "expected a mapping of point name to the values to change")
            points = [dict(p) if isinstance(p, dict) else p for p in merged.get("points") or []]
            by_name = {p.get("name"): p for p in points if isinstance(p, dict)}
            for name, changes in value.items():
                if name not in by_name:
                    raise ConfigError(str(source), f"{field}.points.{name}",
                                      f"the profile has no point {name!r}")
                if not isinstance(changes, dict):
                    raise ConfigError(str(source), f"{field}.points.{name}",
                                      "expected a mapping of the point's values to change")
                if "name" in changes:
                    raise ConfigError(str(source), f"{field}.points.{name}.name",
                                      "a point's name cannot be overridden")
                by_name[name].update(changes)
            merged["points"] = points
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _override_field(loc: tuple[int | str, ...], profile: dict[str, Any],
                    overrides: dict[str, Any]) -> str | None:
    """The overrides key behind a validation error at `loc` of the merged profile, if any."""
    if not loc:
        return None
    if loc[0] == "points" and len(loc) >= 2 and isinstance(loc[1], int):
        points = profile.get("points") or []
        name = points[loc[1]].get("name") if loc[1] < len(points) and isinstance(
            points[loc[1]], dict) else None
        changed = (overrides.get("points") or {}).get(name) or {}
        if len(loc) >= 3 and loc[2] in changed:
            return _field_path(("points", str(name), *loc[2:]))
        if len(loc) == 2 and changed:
            # a check across the point's fields, which the override took part in
            return _field_path(("points", str(name)))
        return None
    if loc[0] in overrides and loc[0] != "points":
        return _field_path(loc)
    return None


def _device_profile(source: Path, index: int, device: DeviceConfig, profile_path: Path,
                    documents: dict[Path, Any]) -> DeviceProfile:
    if profile_path not in documents:
        documents[profile_path] = _read_yaml(profile_path)
    document = documents[profile_path]
    if not device.overrides:
        return _validate(DeviceProfile, document, profile_path)
    if not isinstance(document, dict):
        raise ConfigError(str(profile_path), "", "expected a mapping at the top level")
    field = f"devices[{index}].overrides"
    merged = _merge_overrides(document, device.overrides, source, field)
    try:
        return DeviceProfile.model_validate(merged)
    except ValidationError as exc:
        for error in exc.errors():
            where = _override_field(tuple(error["loc"]), document, device.overrides)
            if where is not None:
                message = ("unknown key (check its spelling and where it sits)"
                           if error["type"] == "extra_forbidden"
                           else str(error["msg"]).removeprefix("Value error, "))
                raise ConfigError(str(source), f"{field}.{where}", message) from exc
    return _validate(DeviceProfile, merged, profile_path)


def _check_transports(source: Path, config: PlantConfig) -> dict[str, SerialLine]:
    lines: dict[str, SerialLine] = {}
    ports: dict[str, str] = {}
    for index, line in enumerate(config.serial_lines):
        if line.id in lines:
            raise ConfigError(str(source), f"serial_lines[{index}].id",
                              f"serial line id {line.id!r} is used twice")
        if line.port in ports:
            raise ConfigError(str(source), f"serial_lines[{index}].port",
                              f"port {line.port} is already serial line {ports[line.port]!r}")
        lines[line.id] = line
        ports[line.port] = line.id
    endpoints: dict[tuple[str, ...], str] = {}
    tick_ms = config.collector.tick_ms
    for index, device in enumerate(config.devices):
        if device.serial_line is not None:
            if device.serial_line not in lines:
                known = ", ".join(sorted(lines)) or "none are configured"
                raise ConfigError(str(source), f"devices[{index}].serial_line",
                                  f"no serial line {device.serial_line!r} (serial_lines: {known})")
            if device.unit_id == 0:
                raise ConfigError(str(source), f"devices[{index}].unit_id",
                                  "unit 0 is the broadcast address on a serial line: use 1..247")
            endpoint: tuple[str, ...] = ("serial", device.serial_line, str(device.unit_id))
            where = f"serial line {device.serial_line} unit {device.unit_id}"
        else:
            assert device.tcp is not None  # checked by DeviceConfig
            endpoint = ("tcp", device.tcp.host, str(device.tcp.port), str(device.unit_id))
            where = f"{device.tcp.host}:{device.tcp.port} unit {device.unit_id}"
        if endpoint in endpoints:
            raise ConfigError(str(source), f"devices[{index}].unit_id",
                              f"{where} is already device {endpoints[endpoint]!r}")
        endpoints[endpoint] = device.id
        interval = device.poll_interval_ms or tick_ms
        if device.timeout_ms >= interval:
            which = ("poll interval" if device.poll_interval_ms
                     else "poll interval (the collector's tick_ms, as poll_interval_ms is not set)")
            raise ConfigError(str(source), f"devices[{index}].timeout_ms",
                              f"a timeout of {device.timeout_ms} ms does not fit the {which} of "
                              f"{interval} ms: shorten it or set a longer poll_interval_ms")
    return lines


def load_plant(path: Path) -> LoadedPlant:
    """Load a plant configuration and every profile it uses; raise ConfigError on any problem."""
    source = path.resolve()
    config = _validate(PlantConfig, _read_yaml(source), source)
    lines = _check_transports(source, config)
    seen: dict[str, int] = {}
    documents: dict[Path, Any] = {}
    devices = []
    for index, device in enumerate(config.devices):
        if device.id in seen:
            raise ConfigError(
                str(source), f"devices[{index}].id",
                f"device id {device.id!r} is already used by devices[{seen[device.id]}]",
            )
        seen[device.id] = index
        profile_path = Path(device.profile)
        if not profile_path.is_absolute():
            profile_path = (source.parent / profile_path).resolve()
        if not profile_path.is_file():
            raise ConfigError(
                str(source), f"devices[{index}].profile", f"profile file {profile_path} not found"
            )
        devices.append(LoadedDevice(
            config=device,
            profile=_device_profile(source, index, device, profile_path, documents),
            profile_path=profile_path,
            serial_line=lines.get(device.serial_line) if device.serial_line else None,
            poll_interval_ms=device.poll_interval_ms or config.collector.tick_ms,
        ))
    if config.accounting is not None:
        used = {device.emission_unit for device in config.devices}
        for index, unit in enumerate(config.accounting.units):
            if unit.id not in used:
                raise ConfigError(str(source), f"accounting.units[{index}].id",
                                  f"no device has emission_unit {unit.id!r}: name the unit its "
                                  f"devices feed ({', '.join(sorted(used))})")
    return LoadedPlant(source=source, config=config, devices=tuple(devices))
