"""The gateway's configuration: strict, validated once, every error naming the file and field."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import ConfigError

__all__ = ["GatewayConfig", "LoadedGatewayConfig", "load_gateway_config"]

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewaySection(_Strict):
    """The gateway's own identity."""

    id: Identifier


class ListenSection(_Strict):
    """Where the gateway listens."""

    grpc: str = Field(default="127.0.0.1:50051", pattern=r"^.+:\d{1,5}$",
                      description="host:port for the ingest stream (port 0 picks a free one)")


class LedgerSection(_Strict):
    """Where the ledger lives."""

    path: str = Field(default="ledger.sqlite", min_length=1,
                      description="SQLite file, relative to this configuration file")
    quarantine_max_rows: int = Field(default=100_000, ge=100)


class LimitsSection(_Strict):
    """Bounds on what one peer may send."""

    max_message_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024, le=256 * 1024 * 1024)
    max_blocks_per_batch: int = Field(default=1000, ge=1, le=100_000)


class GatewayConfig(_Strict):
    """A whole gateway configuration file."""

    gateway: GatewaySection
    listen: ListenSection = ListenSection()
    ledger: LedgerSection = LedgerSection()
    limits: LimitsSection = LimitsSection()


class LoadedGatewayConfig(BaseModel):
    """A configuration with its source, for resolving relative paths."""

    model_config = ConfigDict(frozen=True)

    source: Path
    config: GatewayConfig

    def ledger_path(self) -> Path:
        """The ledger file, resolved against the configuration file's folder."""
        path = Path(self.config.ledger.path)
        return path if path.is_absolute() else (self.source.parent / path).resolve()


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
