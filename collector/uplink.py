"""What every uplink shares: its state, its counters, and the interface the runtime drives."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from proto.stackline.v1 import stackline_pb2 as pb

__all__ = ["StatusSource", "Uplink", "UplinkState", "UplinkStats"]

StatusSource = Callable[[], pb.CollectorStatus]


class UplinkState(enum.Enum):
    """Where the uplink stands."""

    CONNECTING = "connecting"
    STREAMING = "streaming"
    BACKOFF = "backoff"
    STOPPED = "stopped"


@dataclass(slots=True)
class UplinkStats:
    """Counters a status line or a metrics endpoint reads."""

    sessions: int = 0
    batches_sent: int = 0
    blocks_sent: int = 0
    acknowledged_through: int = 0
    rejections: int = 0
    last_error: str = ""
    rejection_reasons: dict[str, int] = field(default_factory=dict)


class Uplink(Protocol):
    """Sends the buffer to the gateway and deletes from it only on the gateway's acks."""

    state: UplinkState
    stats: UplinkStats
    status_source: StatusSource | None
    status_interval_s: float

    async def run(self) -> None:
        """Keep sessions up, with backoff between them, until cancelled."""
        ...
