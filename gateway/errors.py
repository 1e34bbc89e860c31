"""The gateway's exceptions."""

from __future__ import annotations

__all__ = ["ConfigError", "EnrolmentError", "GatewayError", "LedgerError", "RetryableLedgerError"]


class GatewayError(Exception):
    """Root of every error the gateway raises."""


class ConfigError(GatewayError):
    """A gateway configuration that must not start: names the file and the field."""

    def __init__(self, source: str, field: str, message: str) -> None:
        super().__init__(f"{source}: {field}: {message}" if field else f"{source}: {message}")
        self.source = source
        self.field = field


class LedgerError(GatewayError):
    """The ledger cannot do what was asked (schema, integrity, a refused change)."""


class RetryableLedgerError(LedgerError):
    """The ledger is busy or unreachable for now; try again after `retry_after_s`."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EnrolmentError(GatewayError):
    """A collector key that cannot be enrolled."""
