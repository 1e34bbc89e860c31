"""The gateway's configuration: strict, validated once, every error naming the file and field."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.errors import ConfigError

__all__ = [
    "GatewayConfig", "LoadedGatewayConfig", "LogSection", "MqttSection", "MqttTlsSection",
    "TimeseriesSection", "VerifierApiSection", "VerifierTokenSection",
    "load_gateway_config",
]

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewaySection(_Strict):
    """The gateway's own identity."""

    id: Identifier


class ListenSection(_Strict):
    """Where the gateway listens."""

    grpc: str | None = Field(default="127.0.0.1:50051", pattern=r"^.+:\d{1,5}$",
                             description="host:port for the ingest stream (port 0 picks a free "
                             "one); null for no gRPC")


class MqttTlsSection(_Strict):
    """TLS towards the broker."""

    ca_file: str = Field(min_length=1)
    cert_file: str | None = None
    key_file: str | None = None

    @model_validator(mode="after")
    def _cert_with_key(self) -> MqttTlsSection:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class MqttSection(_Strict):
    """Ingest from an MQTT broker through a shared subscription."""

    host: str = Field(min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password_file: str | None = Field(default=None, description="file whose first line is the password")
    tls: MqttTlsSection | None = None
    insecure: bool = Field(default=False, description="true to connect without TLS, on purpose")
    topic_prefix: str = Field(default="stackline/v1", pattern=r"^[^#+$][^#+]*[^/#+]$")
    share_group: str = Field(default="stackline", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    max_queued_per_collector: int = Field(default=64, ge=1, le=10_000)
    reconnect_initial_s: float = Field(default=0.2, gt=0)
    reconnect_max_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _tls_or_insecure(self) -> MqttSection:
        if self.tls is None and not self.insecure:
            raise ValueError("set tls (ca_file, and cert_file/key_file if the broker asks) or "
                             "insecure: true to connect in plaintext on purpose")
        if self.tls is not None and self.insecure:
            raise ValueError("tls and insecure: true contradict each other")
        return self


DEFAULT_LEDGER_PATH = "ledger.sqlite"


class LedgerSection(_Strict):
    """Where the ledger lives: a SQLite file (`path`, the default) or PostgreSQL (`url`)."""

    path: str | None = Field(default=None, min_length=1,
                             description="SQLite file, relative to this configuration file "
                             f"({DEFAULT_LEDGER_PATH} when neither path nor url is set)")
    url: str | None = Field(default=None, min_length=1,
                            description="postgresql://user@host:port/database; several gateways "
                            "may share it (keep the password in ~/.pgpass or PGPASSWORD)")
    quarantine_max_rows: int = Field(default=100_000, ge=100)

    @model_validator(mode="after")
    def _path_or_url(self) -> LedgerSection:
        if self.path is not None and self.url is not None:
            raise ValueError("set either path (a SQLite file) or url (PostgreSQL), not both")
        if self.url is not None and not self.url.startswith(("postgresql://", "postgres://")):
            raise ValueError("url must be a postgresql://user@host:port/database URL "
                             "(a SQLite file goes in path)")
        return self


class HttpSection(_Strict):
    """The read-only HTTP endpoint: /metrics (Prometheus), /healthz and /status."""

    listen: str = Field(default="127.0.0.1:9100", pattern=r"^.*:\d{1,5}$",
                        description="host:port (port 0 picks a free one)")


class TimeseriesSection(_Strict):
    """The time-series store the sink feeds through the InfluxDB v2 write API (InfluxDB 2.x, the
    v2-compatible endpoint of InfluxDB 3, VictoriaMetrics)."""

    url: str = Field(pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
                     description="base URL: https://influx.example:8086, or http://127.0.0.1:8428 "
                     "for VictoriaMetrics (with insecure: true)")
    org: str | None = Field(default=None, min_length=1,
                            description="InfluxDB 2.x organization; ignored by InfluxDB 3 and "
                            "VictoriaMetrics")
    bucket: str = Field(default="stackline", min_length=1,
                        description="InfluxDB 2.x bucket, the database of InfluxDB 3; ignored by "
                        "VictoriaMetrics")
    token_file: str | None = Field(default=None, min_length=1,
                                   description="file whose first line is the API token (none for "
                                   "a store without authentication)")
    ca_file: str | None = Field(default=None, min_length=1,
                                description="CA certificate(s) that sign the store's certificate")
    insecure: bool = Field(default=False, description="true to write to an http:// URL, on purpose")
    batch_lines: int = Field(default=5000, ge=1, le=100_000, description="lines per write request")
    cursor: Identifier = Field(default="timeseries",
                               description="name of the sink's cursor in the ledger; two stores fed "
                               "from one ledger need two names")
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    retry_max_s: float = Field(default=30.0, gt=0, le=3600,
                               description="longest wait between attempts while the store is down")
    replay_window_s: float = Field(default=30.0, ge=0, le=3600,
                                   description="after an outage, send again what the store "
                                   "acknowledged in this many seconds before it")

    @model_validator(mode="after")
    def _tls_or_insecure(self) -> TimeseriesSection:
        plaintext = self.url.startswith("http://")
        if plaintext and not self.insecure:
            raise ValueError("url is http://: use https://, or set insecure: true to send readings "
                             "(and the token, if any) in plaintext on purpose")
        if not plaintext and self.insecure:
            raise ValueError("insecure: true contradicts an https:// url")
        if plaintext and self.ca_file is not None:
            raise ValueError("ca_file needs an https:// url")
        return self


class LimitsSection(_Strict):
    """Bounds on what one peer may send."""

    max_message_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024, le=256 * 1024 * 1024)
    max_blocks_per_batch: int = Field(default=1000, ge=1, le=100_000)


class AccountingSection(_Strict):
    """The accountant: keeps every accounting unit's hourly figures current in the ledger."""

    interval_s: float = Field(default=60.0, ge=1, le=86_400,
                              description="how often it reads new blocks and recomputes the days "
                              "they touch; run it in one gateway of a deployment")


class LogSection(_Strict):
    """The transparency log over the ledger: its name and the key that signs its checkpoints."""

    origin: str | None = Field(default=None, pattern=r"^[^\s+]{1,200}$",
                               description="the log's name in its checkpoints (also the key "
                               "name), e.g. stackline.example.org/region-1; default "
                               "stackline/<gateway id>. Every gateway of one ledger uses the same")
    key_file: str = Field(default="log-signing.key", min_length=1,
                          description="Ed25519 key that signs checkpoints (stackline keygen "
                          "format), relative to this file; made on the first start when missing. "
                          "Every gateway of one ledger uses the same key")
    checkpoint_interval_s: float = Field(default=60.0, ge=1, le=86_400,
                                         description="how often a checkpoint is published when "
                                         "the log grew (verifiers can also ask for one)")


PlantScope = Annotated[str, Field(pattern=r"^(\*|[A-Za-z0-9][A-Za-z0-9_.-]{0,63})$")]


class VerifierTokenSection(_Strict):
    """One bearer token of the verifier API and the plants it may read."""

    name: Identifier = Field(description="shown in logs and metrics (never the token itself)")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                               description="SHA-256 of the token text, 64 lowercase hex digits "
                               "(what `stackline gateway token` prints)")
    token_file: str | None = Field(default=None, min_length=1,
                                   description="or: a file whose first line is the token, relative "
                                   "to this file")
    plants: tuple[PlantScope, ...] = Field(min_length=1,
                                           description='plant ids the token may read, or ["*"] '
                                           "for every plant (and collectors of no known plant)")

    @model_validator(mode="after")
    def _one_source(self) -> VerifierTokenSection:
        if (self.sha256 is None) == (self.token_file is None):
            raise ValueError("set either sha256 (the token's digest) or token_file (a file "
                             "holding the token), one of them")
        if "*" in self.plants and len(self.plants) > 1:
            raise ValueError('plants: "*" already means every plant; list plant ids or "*" alone')
        return self


class VerifierApiSection(_Strict):
    """The read-only verifier API (HTTP JSON on `listen`; the same over gRPC on listen.grpc)."""

    listen: str = Field(default="127.0.0.1:8480", pattern=r"^.*:\d{1,5}$",
                        description="host:port for HTTP (port 0 picks a free one)")
    tokens: tuple[VerifierTokenSection, ...] = Field(min_length=1,
                                                     description="the bearer tokens it accepts")
    max_report_blocks: int = Field(default=200_000, ge=1,
                                   description="readings blocks one report request may read (all "
                                   "held in memory, about 3.6 KB each: the default is about 700 "
                                   "MB); a longer period is refused with 422")

    @field_validator("listen")
    @classmethod
    def _port_in_range(cls, value: str) -> str:
        if int(value.rsplit(":", 1)[1]) > 65535:
            raise ValueError("the port must be 0..65535")
        return value

    @model_validator(mode="after")
    def _distinct_tokens(self) -> VerifierApiSection:
        names = [t.name for t in self.tokens]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"token name {twice[0]!r} is used twice: give each token its own name")
        digests = [t.sha256 for t in self.tokens if t.sha256 is not None]
        if len(set(digests)) != len(digests):
            raise ValueError("two tokens have the same sha256: one token has one set of plants")
        return self


class GatewayConfig(_Strict):
    """A whole gateway configuration file."""

    gateway: GatewaySection
    listen: ListenSection = ListenSection()
    mqtt: MqttSection | None = None
    http: HttpSection | None = None
    ledger: LedgerSection = LedgerSection()
    limits: LimitsSection = LimitsSection()
    timeseries: TimeseriesSection | None = None
    accounting: AccountingSection | None = None
    log: LogSection = LogSection()
    verifier_api: VerifierApiSection | None = None

    @model_validator(mode="after")
    def _some_transport(self) -> GatewayConfig:
        if self.listen.grpc is None and self.mqtt is None:
            raise ValueError("nothing to ingest from: set listen.grpc, mqtt, or both")
        return self


class LoadedGatewayConfig(BaseModel):
    """A configuration with its source, for resolving relative paths."""

    model_config = ConfigDict(frozen=True)

    source: Path
    config: GatewayConfig

    def resolve(self, relative: str) -> Path:
        """A path from the configuration, relative to the configuration file's folder."""
        path = Path(relative)
        return path if path.is_absolute() else (self.source.parent / path).resolve()

    def ledger_path(self) -> Path:
        """The SQLite ledger file, resolved against the configuration file's folder."""
        if self.config.ledger.url is not None:
            raise ConfigError(str(self.source), "ledger.url",
                              "this gateway's ledger is a PostgreSQL database, not a file")
        path = Path(self.config.ledger.path or DEFAULT_LEDGER_PATH)
        return path if path.is_absolute() else (self.source.parent / path).resolve()

    def log_origin(self) -> str:
        """The transparency log's origin line (and checkpoint key name)."""
        return self.config.log.origin or f"stackline/{self.config.gateway.id}"

    def ledger_location(self) -> str:
        """What `gateway.ledger.open_ledger` takes: the PostgreSQL URL, or the SQLite file."""
        if self.config.ledger.url is not None:
            return self.config.ledger.url
        return str(self.ledger_path())


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def load_gateway_config(path: Path) -> LoadedGatewayConfig:
    """Read and validate a gateway configuration; raise ConfigError naming the field."""
    source = path.resolve()
    try:
        data: Any = yaml.safe_load(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read the file: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), "", f"not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", "expected a mapping at the top level")
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = ("unknown key (check its spelling and where it sits)"
                   if first["type"] == "extra_forbidden" else first["msg"])
        raise ConfigError(str(path), _field_path(first["loc"]), message) from exc
    return LoadedGatewayConfig(source=source, config=config)
