"""What every uplink shares: its state, its counters, and the interface the runtime drives."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from collector.buffer import Buffer
from collector.errors import UplinkError
from proto.backoff import Backoff
from proto.stackline.v1 import stackline_pb2 as pb

__all__ = [
    "SOFTWARE_VERSION", "ReceiptSink", "StatusSource", "Uplink", "UplinkBase", "UplinkState",
    "UplinkStats",
]

log = logging.getLogger(__name__)

SOFTWARE_VERSION = "stackline-collector/0.1.0"

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


class ReceiptSink(Protocol):
    """Where the receipts in the gateway's acks go (collector/receipts.py)."""

    def held_tree_size(self) -> int:
        """The tree size of the held checkpoint (0: none), sent in Hello and Batch."""
        ...

    def take(self, receipt: pb.Receipt) -> object:
        """Judge and keep a receipt; never raises for what the receipt holds."""
        ...


class Uplink(Protocol):
    """Sends the buffer to the gateway and deletes from it only on the gateway's acks."""

    state: UplinkState
    stats: UplinkStats
    status_source: StatusSource | None
    status_interval_s: float

    async def run(self) -> None:
        """Keep sessions up, with backoff between them, until cancelled."""
        ...


class UplinkBase:
    """What every uplink does the same way: its state and counters, the backoff, taking the
    gateway's acks (the only thing that deletes from the buffer) and its rejections."""

    def __init__(self, *, collector_id: str, key_id: str, buffer: Buffer, wakeup: asyncio.Event,
                 acked: asyncio.Event | None, batch_limit: int, reconnect_initial_s: float,
                 reconnect_max_s: float, peer: str, receipts: ReceiptSink | None = None) -> None:
        self.collector_id = collector_id
        self.key_id = key_id
        self.buffer = buffer
        self.wakeup = wakeup
        self.acked = acked or asyncio.Event()
        self.state = UplinkState.CONNECTING
        self.stats = UplinkStats()
        self.status_source: StatusSource | None = None  # set by the runtime
        self.status_interval_s = 5.0
        self.batch_limit = batch_limit  # halved when the gateway says a batch is too large
        self.peer = peer
        self.receipts = receipts
        self._backoff = Backoff(initial_s=reconnect_initial_s, max_s=reconnect_max_s)

    def _failed(self, message: str) -> None:
        """Log a failed session once per distinct reason."""
        if message != self.stats.last_error:
            log.warning("uplink to %s: %s; retrying with backoff", self.peer, message)
        self.stats.last_error = message

    def _acknowledge(self, through: int) -> None:
        """The gateway has stored every block up to `through`: let them go."""
        head = self.buffer.chain_state().sequence
        if through > head:
            raise UplinkError(
                f"the gateway has stored up to sequence {through} but this collector's chain ends "
                f"at {head}: its buffer was replaced or reset; restore the buffer file or enrol a "
                "new collector id")
        self.buffer.acknowledge(through)
        self.stats.acknowledged_through = max(self.stats.acknowledged_through, through)
        self.acked.set()

    def _receipt_tree_size(self) -> int:
        """What Hello and Batch say about the checkpoint this collector holds."""
        return self.receipts.held_tree_size() if self.receipts is not None else 0

    def _take_receipt(self, ack: pb.Ack) -> None:
        """Hand the ack's receipt, if any, to the receipt store. Receipts are evidence, not data:
        whatever goes wrong with one, the blocks keep flowing."""
        if self.receipts is None or not ack.HasField("receipt"):
            return
        try:
            self.receipts.take(ack.receipt)
        except Exception:  # a bug in receipt handling must not stop the uplink
            log.exception("ALARM: a receipt from %s could not be handled; blocks keep flowing",
                          self.peer)

    def _take_rejections(self, ack: pb.Ack) -> None:
        """Count and log what the gateway refused; end the session if it refused anything."""
        for rejection in ack.rejections:
            if rejection.reason == "batch_too_large" and self.batch_limit > 1:
                self.batch_limit = max(1, self.batch_limit // 2)
                log.warning("the gateway takes smaller batches; sending at most %d blocks per "
                            "batch", self.batch_limit)
            self.stats.rejections += 1
            reasons = self.stats.rejection_reasons
            reasons[rejection.reason] = reasons.get(rejection.reason, 0) + 1
            log.error("gateway rejected block %d: %s: %s", rejection.sequence, rejection.reason,
                      rejection.detail)
        if ack.rejections:
            raise UplinkError(f"{len(ack.rejections)} block(s) rejected; sending again from "
                              f"sequence {ack.stored_through_sequence + 1} after a backoff")
