"""The gateway process: ledger, ingest core and the gRPC server under one TaskGroup."""

from __future__ import annotations

import logging
import time

from gateway.config import LoadedGatewayConfig
from gateway.errors import EnrolmentError
from gateway.grpc_server import GrpcIngestServer
from gateway.ingest import IngestCore
from gateway.ledger import CollectorKey, Ledger, SqliteLedger
from proto.errors import UnacceptableKeyError
from proto.wire import check_public_key, key_id_of

__all__ = ["GatewayRuntime", "enroll_collector"]

log = logging.getLogger(__name__)


class GatewayRuntime:
    """Runs the gateway until cancelled."""

    def __init__(self, *, config: LoadedGatewayConfig) -> None:
        self.config = config
        section = config.config
        self.ledger = SqliteLedger(path=config.ledger_path(),
                                   quarantine_max_rows=section.ledger.quarantine_max_rows)
        self.core = IngestCore(ledger=self.ledger)
        self.grpc = GrpcIngestServer(
            core=self.core, address=section.listen.grpc,
            max_message_bytes=section.limits.max_message_bytes,
            max_blocks_per_batch=section.limits.max_blocks_per_batch,
        )

    def __repr__(self) -> str:
        return f"GatewayRuntime(id={self.config.config.gateway.id!r}, grpc={self.grpc!r})"

    async def start(self) -> int:
        """Open the ledger and start listening; return the gRPC port."""
        await self.ledger.open()
        keys = await self.ledger.collector_keys()
        log.info("gateway %s: ledger %s, %d enrolled collector(s)",
                 self.config.config.gateway.id, self.ledger.path, len(keys))
        return await self.grpc.start()

    async def run(self) -> None:
        """Serve until cancelled, then stop cleanly."""
        await self.start()
        try:
            await self.grpc.wait()
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Stop the server and close the ledger."""
        await self.grpc.stop()
        await self.ledger.close()


async def enroll_collector(ledger: Ledger, *, collector_id: str, public_key: bytes) -> str:
    """Check a collector's public key against the enrolment rule and register it; return its key id."""
    try:
        check_public_key(public_key)
    except UnacceptableKeyError as exc:
        raise EnrolmentError(f"refusing to enrol {collector_id}: {exc}") from exc
    key_id = key_id_of(public_key)
    await ledger.enroll(CollectorKey(collector_id, key_id, public_key, int(time.time() * 1000)))
    return key_id
