"""The gRPC uplink: streams buffered blocks to the gateway; the only home of grpc in the collector.

On connect the collector says hello and the gateway answers with the highest contiguous sequence
it has stored; the collector drops what is acknowledged and sends the rest in batches, keeping a
bounded number of batches in flight. Every gateway answer is an end-to-end ack, the only thing
that deletes blocks from the buffer. Any trouble ends the session; the next one starts after a
capped, jittered backoff and resumes where the gateway says.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
import grpc.aio

from collector.buffer import Buffer
from collector.config import GrpcUplinkConfig
from collector.errors import UplinkError
from collector.uplink import SOFTWARE_VERSION, ReceiptSink, UplinkBase, UplinkState
from proto.backoff import cancel_count, forget_group_cancel, raise_if_cancelled
from proto.stackline.v1 import stackline_pb2 as pb
from proto.stackline.v1 import stackline_pb2_grpc as pb_grpc

__all__ = ["GrpcUplink"]

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 10.0
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class GrpcUplink(UplinkBase):
    """Sends the buffer to the gateway over one bidirectional gRPC stream at a time."""

    def __init__(
        self,
        *,
        config: GrpcUplinkConfig,
        collector_id: str,
        key_id: str,
        buffer: Buffer,
        wakeup: asyncio.Event,
        acked: asyncio.Event | None = None,
        receipts: ReceiptSink | None = None,
    ) -> None:
        super().__init__(collector_id=collector_id, key_id=key_id, buffer=buffer, wakeup=wakeup,
                         acked=acked, batch_limit=config.max_blocks_per_batch,
                         reconnect_initial_s=config.reconnect_initial_s,
                         reconnect_max_s=config.reconnect_max_s, peer=config.target,
                         receipts=receipts)
        self.config = config

    def __repr__(self) -> str:
        return f"GrpcUplink(target={self.config.target!r}, state={self.state.value})"

    async def run(self) -> None:
        """Keep a session up until cancelled."""
        try:
            while True:
                self.state = UplinkState.CONNECTING
                try:
                    await self._session()
                except UplinkError as exc:
                    raise_if_cancelled(exc)
                    self._failed(str(exc))
                except grpc.aio.AioRpcError as exc:
                    raise_if_cancelled(exc)
                    self._failed(f"gRPC {exc.code().name}: {exc.details()}")
                self.state = UplinkState.BACKOFF
                await asyncio.sleep(self._backoff.next_delay())
        finally:
            self.state = UplinkState.STOPPED

    async def _session(self) -> None:
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
        async with grpc.aio.insecure_channel(self.config.target, options=options) as channel:
            stub = pb_grpc.IngestStub(channel)
            call = stub.Stream()
            await call.write(pb.IngestRequest(hello=pb.Hello(
                collector_id=self.collector_id, key_id=self.key_id,
                software_version=SOFTWARE_VERSION, receipt_tree_size=self._receipt_tree_size())))
            try:
                async with asyncio.timeout(HELLO_TIMEOUT_S):
                    first = await call.read()
            except TimeoutError as exc:
                raise UplinkError("the gateway did not answer the hello") from exc
            ack = self._expect_ack(first)
            resume_from = self._on_resume(ack)
            self.stats.sessions += 1
            self.state = UplinkState.STREAMING
            self._backoff.reset()
            log.info("uplink to %s streaming from sequence %d", self.config.target, resume_from)
            in_flight = asyncio.Semaphore(self.config.max_batches_in_flight)
            writing = asyncio.Lock()  # a stream takes one write at a time
            before = cancel_count()
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._send(call, resume_from, in_flight, writing),
                                      name="uplink-send")
                    group.create_task(self._receive(call, in_flight), name="uplink-receive")
                    group.create_task(self._report_status(call, writing), name="uplink-status")
            except* (UplinkError, grpc.aio.AioRpcError, asyncio.InvalidStateError) as group_error:
                forget_group_cancel(before)
                first = group_error.exceptions[0]
                if isinstance(first, asyncio.InvalidStateError):
                    raise UplinkError("the stream ended while writing") from None
                raise first from None
            finally:
                call.cancel()

    def _expect_ack(self, response: object) -> pb.Ack:
        if response is grpc.aio.EOF or not isinstance(response, pb.IngestResponse):
            raise UplinkError("the gateway closed the stream")
        if response.HasField("error"):
            raise UplinkError(
                f"the gateway refused this collector: {response.error.reason}: {response.error.detail}"
            )
        return response.ack

    def _on_resume(self, ack: pb.Ack) -> int:
        stored = ack.stored_through_sequence
        self._acknowledge(stored)
        self._take_receipt(ack)
        pending = self.buffer.read_from(0, 1)
        if pending and pending[0][0] > stored + 1:
            log.error(
                "the gateway has stored up to sequence %d but this collector's oldest buffered "
                "block is %d: blocks %d..%d are gone from both sides", stored, pending[0][0],
                stored + 1, pending[0][0] - 1,
            )
        return stored + 1

    async def _report_status(
        self, call: grpc.aio.StreamStreamCall[pb.IngestRequest, pb.IngestResponse],
        writing: asyncio.Lock,
    ) -> None:
        if self.status_source is None:
            return
        while True:
            async with writing:
                await call.write(pb.IngestRequest(status=self.status_source()))
            await asyncio.sleep(self.status_interval_s)

    async def _send(
        self, call: grpc.aio.StreamStreamCall[pb.IngestRequest, pb.IngestResponse],
        next_sequence: int, in_flight: asyncio.Semaphore, writing: asyncio.Lock,
    ) -> None:
        while True:
            await in_flight.acquire()
            blocks = self.buffer.read_from(next_sequence, self.batch_limit)
            if not blocks:
                in_flight.release()
                self.wakeup.clear()
                if not self.buffer.read_from(next_sequence, 1):
                    try:
                        async with asyncio.timeout(1.0):
                            await self.wakeup.wait()
                    except TimeoutError:
                        pass
                continue
            batch = pb.Batch(receipt_tree_size=self._receipt_tree_size())
            for _, envelope in blocks:
                batch.blocks.add().ParseFromString(envelope)
            async with writing:
                await call.write(pb.IngestRequest(batch=batch))
            self.stats.batches_sent += 1
            self.stats.blocks_sent += len(blocks)
            next_sequence = blocks[-1][0] + 1

    async def _receive(
        self, call: grpc.aio.StreamStreamCall[pb.IngestRequest, pb.IngestResponse],
        in_flight: asyncio.Semaphore,
    ) -> None:
        while True:
            ack = self._expect_ack(await call.read())
            self._acknowledge(ack.stored_through_sequence)
            in_flight.release()
            self._take_receipt(ack)
            self._take_rejections(ack)
