"""The gateway's exceptions."""

from __future__ import annotations

__all__ = [
    "ConfigError", "EnrolmentError", "GatewayError", "LedgerError", "RetryableLedgerError",
    "SignatureWorkersLost", "TimeSeriesError", "TimeSeriesRejected", "TimeSeriesUnavailable",
]


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


class SignatureWorkersLost(GatewayError):
    """A worker process checking signatures for `stackline verify` stopped: the audit is
    incomplete, so there is no verdict."""


class EnrolmentError(GatewayError):
    """A collector key that cannot be enrolled."""


class TimeSeriesError(GatewayError):
    """The time-series store did not take a write."""


class TimeSeriesUnavailable(TimeSeriesError):
    """The store is unreachable, overloaded or refusing our credentials for now: write the same
    lines again after `retry_after_s` (the server's Retry-After when it sent one)."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TimeSeriesRejected(TimeSeriesError):
    """The store refused the lines themselves (HTTP `status`, e.g. 400 or 413): sending the same
    request again gets the same answer."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status
