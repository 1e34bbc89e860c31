"""The MQTT uplink: signed blocks to the broker, acks back from the gateway; the only home of
aiomqtt in the collector.

Blocks go out as `IngestRequest` messages (a hello, then batches) with QoS 1 on
`<prefix>/<collector id>/blocks`; the gateway answers each with an `IngestResponse` on
`<prefix>/<collector id>/acks`. A PUBACK only means the broker has the message: blocks leave the
buffer on the gateway's ack alone. If no ack moves forward within `ack_timeout_s`, the collector
sends again from the last acknowledged sequence (the gateway stores each block once, so a resend
is harmless); if the gateway rejects a block, the session ends and the next one, after a backoff,
starts from there. By default one message is in flight at a time, so that
gateways sharing the subscription see one collector's batches in order.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

import aiomqtt
from google.protobuf.message import DecodeError

from collector.buffer import Buffer
from collector.config import MqttUplinkConfig
from collector.errors import UplinkError
from collector.uplink import SOFTWARE_VERSION, ReceiptSink, UplinkBase, UplinkState
from proto.backoff import (
    cancel_count,
    check_cancelled,
    forget_group_cancel,
    raise_if_cancelled,
)
from proto.credentials import BrokerCredentials
from proto.stackline.v1 import stackline_pb2 as pb

__all__ = ["MqttUplink"]

log = logging.getLogger(__name__)



class MqttUplink(UplinkBase):
    """Publishes the buffer through an MQTT broker."""

    def __init__(
        self,
        *,
        config: MqttUplinkConfig,
        credentials: BrokerCredentials,
        collector_id: str,
        key_id: str,
        buffer: Buffer,
        wakeup: asyncio.Event,
        acked: asyncio.Event | None = None,
        receipts: ReceiptSink | None = None,
    ) -> None:
        super().__init__(collector_id=collector_id, key_id=key_id, buffer=buffer, wakeup=wakeup,
                         acked=acked, batch_limit=config.max_blocks_per_message,
                         reconnect_initial_s=config.reconnect_initial_s,
                         reconnect_max_s=config.reconnect_max_s,
                         peer=f"MQTT broker {config.host}:{config.port}", receipts=receipts)
        self.config = config
        self.credentials = credentials
        self.blocks_topic = f"{config.topic_prefix}/{collector_id}/blocks"
        self.acks_topic = f"{config.topic_prefix}/{collector_id}/acks"
        self._tls = credentials.tls_context()
        # last sequence of each message published and not yet covered by an ack
        self._in_flight: collections.deque[int] = collections.deque()
        self._next_sequence = 1
        self._progress_at = time.monotonic()
        self._ack_arrived = asyncio.Event()  # internal: wakes the sender; `acked` is the runtime's

    def __repr__(self) -> str:
        return (f"MqttUplink(broker={self.config.host}:{self.config.port}, "
                f"state={self.state.value})")

    async def run(self) -> None:
        """Keep a broker session up until cancelled."""
        if self._tls is None:
            log.warning("MQTT uplink to %s:%d is plaintext (insecure: true in the configuration)",
                        self.config.host, self.config.port)
        try:
            while True:
                self.state = UplinkState.CONNECTING
                try:
                    await self._session()
                except (aiomqtt.MqttError, UplinkError) as exc:
                    raise_if_cancelled(exc)
                    self._failed(str(exc))
                except OSError as exc:
                    raise_if_cancelled(exc)
                    self._failed(f"network error: {exc}")
                self.state = UplinkState.BACKOFF
                await asyncio.sleep(self._backoff.next_delay())
        finally:
            self.state = UplinkState.STOPPED

    async def _session(self) -> None:
        async with aiomqtt.Client(
            self.config.host, self.config.port,
            identifier=self.config.client_id or self.collector_id,
            username=self.config.username, password=self.credentials.password,
            protocol=aiomqtt.ProtocolVersion.V5, keepalive=self.config.keepalive_s,
            tls_context=self._tls, timeout=self.config.ack_timeout_s,
        ) as client:
            await client.subscribe(self.acks_topic, qos=1)
            self.stats.sessions += 1
            self.state = UplinkState.STREAMING
            self._backoff.reset()
            self._restart_from_acknowledged()
            hello = pb.IngestRequest(hello=pb.Hello(
                collector_id=self.collector_id, key_id=self.key_id,
                software_version=SOFTWARE_VERSION, receipt_tree_size=self._receipt_tree_size()))
            await client.publish(self.blocks_topic, hello.SerializeToString(), qos=1)
            log.info("MQTT uplink connected to %s:%d, sending from sequence %d",
                     self.config.host, self.config.port, self._next_sequence)
            before = cancel_count()
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._send(client), name="mqtt-send")
                    group.create_task(self._receive(client), name="mqtt-receive")
                    group.create_task(self._report_status(client), name="mqtt-status")
            except* (aiomqtt.MqttError, UplinkError, OSError) as group_error:
                forget_group_cancel(before)
                raise group_error.exceptions[0] from None

    async def _report_status(self, client: aiomqtt.Client) -> None:
        if self.status_source is None:
            return
        while True:
            status = pb.IngestRequest(status=self.status_source())
            await client.publish(self.blocks_topic, status.SerializeToString(), qos=1)
            check_cancelled()
            await asyncio.sleep(self.status_interval_s)

    def _restart_from_acknowledged(self) -> None:
        self._next_sequence = self.buffer.acknowledged_through() + 1
        self._in_flight.clear()
        self._progress_at = time.monotonic()

    async def _send(self, client: aiomqtt.Client) -> None:
        while True:
            if self._in_flight and time.monotonic() - self._progress_at > self.config.ack_timeout_s:
                log.warning("no ack from the gateway for %.0f s; sending again from sequence %d",
                            self.config.ack_timeout_s,
                            self.buffer.acknowledged_through() + 1)
                self._restart_from_acknowledged()
            blocks = []
            if len(self._in_flight) < self.config.max_messages_in_flight:
                blocks = self.buffer.read_from(self._next_sequence, self.batch_limit)
            if not blocks:
                await self._wait_for_work()
                continue
            batch = pb.Batch(receipt_tree_size=self._receipt_tree_size())
            for _, envelope in blocks:
                batch.blocks.add().ParseFromString(envelope)
            if not self._in_flight:
                self._progress_at = time.monotonic()
            await client.publish(self.blocks_topic,
                                 pb.IngestRequest(batch=batch).SerializeToString(), qos=1)
            check_cancelled()
            self._in_flight.append(blocks[-1][0])
            self._next_sequence = blocks[-1][0] + 1
            self.stats.batches_sent += 1
            self.stats.blocks_sent += len(blocks)

    async def _wait_for_work(self) -> None:
        """Until a new block, an ack, or a moment to check the ack timeout."""
        self.wakeup.clear()
        self._ack_arrived.clear()
        if (len(self._in_flight) < self.config.max_messages_in_flight
                and self.buffer.read_from(self._next_sequence, 1)):
            return  # a block arrived while the events were being cleared
        waits = [asyncio.ensure_future(e.wait()) for e in (self.wakeup, self._ack_arrived)]
        try:
            await asyncio.wait(waits, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            check_cancelled()
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                continue
            response = pb.IngestResponse()
            try:
                response.ParseFromString(bytes(payload))
            except DecodeError:
                log.warning("unreadable message on %s ignored", self.acks_topic)
                continue
            if response.HasField("error"):
                raise UplinkError(f"the gateway refused this collector: {response.error.reason}: "
                                  f"{response.error.detail}")
            self._on_ack(response.ack)

    def _on_ack(self, ack: pb.Ack) -> None:
        stored = ack.stored_through_sequence
        before = self.buffer.acknowledged_through()
        self._acknowledge(stored)
        self._take_receipt(ack)
        if stored > before or not ack.rejections:
            self._progress_at = time.monotonic()
        while self._in_flight and self._in_flight[0] <= stored:
            self._in_flight.popleft()
        if stored >= self._next_sequence:
            self._next_sequence = stored + 1
        self._ack_arrived.set()
        self._take_rejections(ack)
