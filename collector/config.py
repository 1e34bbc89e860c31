"""Plant configurations and device profiles: strict models, loaded once and checked.

A plant configuration (`firmware-config/plants/*.yaml`) names the plant, the collector, and its
devices; each device refers to a profile (`firmware-config/profiles/*.yaml`), the register map of
one kind of instrument. Unknown keys are refused; every error names the file and the field.
Register-level checks (widths, overlaps, request sizes) happen in `collector.plan`.
"""

from __future__ import annotations

import enum
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from collector.errors import ConfigError

__all__ = [
    "MAX_REGISTERS_PER_REQUEST",
    "BufferConfig",
    "CollectorSection",
    "DataType",
    "DeviceConfig",
    "DeviceProfile",
    "GrpcUplinkConfig",
    "HttpConfig",
    "LoadedDevice",
    "LoadedPlant",
    "MqttTlsConfig",
    "MqttUplinkConfig",
    "PlantConfig",
    "PointSpec",
    "RegisterType",
    "load_plant",
    "load_profile",
]

_M = TypeVar("_M", bound=BaseModel)

MAX_REGISTERS_PER_REQUEST = 125  # Modbus application protocol, function codes 3 and 4

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegisterType(enum.StrEnum):
    """Which Modbus table a point lives in."""

    HOLDING = "holding"
    INPUT = "input"


class DataType(enum.StrEnum):
    """How a point's registers decode."""

    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"

    @property
    def registers(self) -> int:
        """How many 16-bit registers a value of this type spans."""
        return _WIDTHS[self]


_WIDTHS = {
    DataType.INT16: 1,
    DataType.UINT16: 1,
    DataType.INT32: 2,
    DataType.UINT32: 2,
    DataType.INT64: 4,
    DataType.UINT64: 4,
    DataType.FLOAT32: 2,
    DataType.FLOAT64: 4,
}

Order = Literal["big", "little"]


class Simulation(_Strict):
    """How `stackline simulate` animates a point (ignored by the collector)."""

    mean: float = 0.0
    amplitude: float = 0.0
    period_s: float = Field(default=3600.0, gt=0)
    noise: float = Field(default=0.0, ge=0)
    rate_per_s: float = 0.0  # totalizers: increment per second


class PointSpec(_Strict):
    """One measured value in a device's register map."""

    name: Identifier
    address: int = Field(ge=0, le=65535)
    register_type: RegisterType | None = None
    data_type: DataType
    registers: int | None = Field(default=None, ge=1, description="span, checked against data_type")
    byte_order: Order | None = None
    word_order: Order | None = None
    scale: float = 1.0
    offset: float = 0.0
    quantity: str = Field(min_length=1, max_length=64)
    unit: str = Field(min_length=1, max_length=32)
    description: str = ""
    flagged_by_status: bool = True
    simulation: Simulation | None = None


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
    byte_order: Order = "big"
    word_order: Order = "big"


class DeviceProfile(_Strict):
    """The register map of one kind of instrument."""

    name: Identifier
    vendor: str = "generic"
    description: str = ""
    defaults: ProfileDefaults = ProfileDefaults()
    max_registers_per_request: int = Field(default=MAX_REGISTERS_PER_REQUEST, ge=1)
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
    """Modbus TCP endpoint of a device."""

    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)


class DeviceConfig(_Strict):
    """One instrument at the plant."""

    id: Identifier
    profile: str = Field(min_length=1, description="path of the profile, relative to this file")
    emission_unit: Identifier
    tcp: TcpTransport
    unit_id: int = Field(default=1, ge=0, le=247)
    timeout_ms: int = Field(default=500, ge=10, le=60_000)


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


class PlantConfig(_Strict):
    """A whole plant configuration file."""

    plant: PlantSection
    collector: CollectorSection
    devices: list[DeviceConfig] = Field(min_length=1)


class LoadedDevice(BaseModel):
    """A device together with its loaded profile."""

    model_config = ConfigDict(frozen=True)

    config: DeviceConfig
    profile: DeviceProfile
    profile_path: Path


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
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "unknown key (check its spelling and where it sits)"
        more = len(errors) - 1
        if more:
            message += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise ConfigError(str(source), field, message) from exc


def load_profile(path: Path) -> DeviceProfile:
    """Load and validate one device profile."""
    return _validate(DeviceProfile, _read_yaml(path), path)


def load_plant(path: Path) -> LoadedPlant:
    """Load a plant configuration and every profile it uses; raise ConfigError on any problem."""
    source = path.resolve()
    config = _validate(PlantConfig, _read_yaml(source), source)
    seen: dict[str, int] = {}
    endpoints: dict[tuple[str, int, int], str] = {}
    devices = []
    for index, device in enumerate(config.devices):
        if device.id in seen:
            raise ConfigError(
                str(source), f"devices[{index}].id",
                f"device id {device.id!r} is already used by devices[{seen[device.id]}]",
            )
        seen[device.id] = index
        endpoint = (device.tcp.host, device.tcp.port, device.unit_id)
        if endpoint in endpoints:
            raise ConfigError(
                str(source), f"devices[{index}].unit_id",
                f"{device.tcp.host}:{device.tcp.port} unit {device.unit_id} is already device "
                f"{endpoints[endpoint]!r}",
            )
        endpoints[endpoint] = device.id
        profile_path = Path(device.profile)
        if not profile_path.is_absolute():
            profile_path = (source.parent / profile_path).resolve()
        if not profile_path.is_file():
            raise ConfigError(
                str(source), f"devices[{index}].profile", f"profile file {profile_path} not found"
            )
        devices.append(
            LoadedDevice(config=device, profile=load_profile(profile_path), profile_path=profile_path)
        )
    return LoadedPlant(source=source, config=config, devices=tuple(devices))
