"""The collector's exceptions, by what the caller does next."""

from __future__ import annotations

__all__ = [
    "MODBUS_EXCEPTIONS",
    "BufferFullError",
    "BufferUnavailable",
    "CheckpointInvalid",
    "CollectorError",
    "ConfigError",
    "DeviceConnectionLost",
    "DeviceError",
    "DeviceException",
    "DeviceTimeout",
    "ProofInvalid",
    "ReceiptError",
    "ReceiptStoreUnavailable",
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


# Modbus application protocol v1.1b3, section 7
MODBUS_EXCEPTIONS = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}
# a TCP-to-RTU bridge answering for a device behind it that is silent or unreachable
GATEWAY_EXCEPTIONS = frozenset({10, 11})


class DeviceException(DeviceError):
    """The device answered with a Modbus exception response (or with an answer of the wrong
    shape, code 0): it is there, but cannot give these values."""

    def __init__(self, device_id: str, message: str, *, exception_code: int) -> None:
        super().__init__(device_id, message)
        self.exception_code = exception_code

    @property
    def exception_name(self) -> str:
        """The code's name in the Modbus specification."""
        return MODBUS_EXCEPTIONS.get(self.exception_code, "malformed answer" if self.exception_code == 0
                                     else "unknown exception")

    @property
    def no_answer_behind_bridge(self) -> bool:
        """Codes 10 and 11: the bridge is there, the device behind it is not (communication loss)."""
        return self.exception_code in GATEWAY_EXCEPTIONS


class BufferFullError(CollectorError):
    """The buffer reached its configured size; the block was not stored."""


class BufferUnavailable(CollectorError):
    """The buffer could not be written (disk full, I/O error); the block was not stored."""


class UplinkError(CollectorError):
    """The link to the gateway failed; retry after a backoff."""


class ReceiptError(CollectorError):
    """A receipt from the gateway, or the log key to check it with, that does not hold; the
    message says which rule failed. The receipt is refused and kept; data keeps flowing."""


class CheckpointInvalid(ReceiptError):
    """A checkpoint note that does not parse, or is not signed by the configured log key."""


class ProofInvalid(ReceiptError):
    """An inclusion or consistency proof that does not verify."""


class ReceiptStoreUnavailable(ReceiptError):
    """The receipt store could not be read or written (disk full, I/O error); the receipt is lost,
    the next one is taken as usual."""
