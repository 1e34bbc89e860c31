"""The collector's exceptions, by what the caller does next."""

from __future__ import annotations

__all__ = [
    "BufferFullError",
    "BufferUnavailable",
    "CollectorError",
    "ConfigError",
    "DeviceConnectionLost",
    "DeviceError",
    "DeviceException",
    "DeviceTimeout",
    "UplinkError",
]


class CollectorError(Exception):
    """Root of every error the collector raises."""


class ConfigError(CollectorError):
    """A configuration that must not start: the message names the file and the field."""

    def __init__(self, source: str, field: str, message: str) -> None:
        super().__init__(f"{source}: {field}: {message}" if field else f"{source}: {message}")
        self.source = source
        self.field = field
        self.message = message


class DeviceError(CollectorError):
    """A poll of one device failed; its readings are flagged, the collector goes on."""

    def __init__(self, device_id: str, message: str) -> None:
        super().__init__(f"device {device_id}: {message}")
        self.device_id = device_id


class DeviceTimeout(DeviceError):
    """The device did not answer within its timeout."""


class DeviceConnectionLost(DeviceError):
    """The connection to the device could not be made or broke."""


class DeviceException(DeviceError):
    """The device answered with a Modbus exception response."""

    def __init__(self, device_id: str, message: str, *, exception_code: int) -> None:
        super().__init__(device_id, message)
        self.exception_code = exception_code


class BufferFullError(CollectorError):
    """The buffer reached its configured size; the block was not stored."""


class BufferUnavailable(CollectorError):
    """The buffer could not be written (disk full, I/O error); the block was not stored."""


class UplinkError(CollectorError):
    """The link to the gateway failed; retry after a backoff."""
