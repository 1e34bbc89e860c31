"""MQTT ingest through a shared subscription; the only home of aiomqtt in the gateway.

Every gateway process subscribes to `$share/<group>/<prefix>/+/blocks`, so the broker splits the
collectors' messages between them and adding a process needs no change anywhere. The collector
id comes from the topic (the broker's ACL lets a collector publish only under its own id), and
each message goes through the same `IngestCore` as gRPC; the answer is published on
`<prefix>/<collector id>/acks`. Messages of one collector are handled in arrival order by one
task per collector, so different collectors proceed in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import uuid

import aiomqtt

from gateway.config import MqttSection
from gateway.errors import LedgerError
from gateway.ingest import IngestCore, Refusal
from proto.backoff import Backoff, check_cancelled, raise_if_cancelled
from proto.credentials import BrokerCredentials

__all__ = ["MqttIngest"]

log = logging.getLogger(__name__)

TRANSPORT = "mqtt"
MAX_QUEUED_INCOMING = 10_000
COLLECTOR_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class MqttIngest:
    """Consumes blocks from the broker for one gateway process."""

    def __init__(self, *, core: IngestCore, config: MqttSection, credentials: BrokerCredentials,
                 gateway_id: str, max_blocks_per_batch: int) -> None:
        self.core = core
        self.config = config
        self.credentials = credentials
        self.gateway_id = gateway_id
        self.max_blocks_per_batch = max_blocks_per_batch
        self.client_id = f"{gateway_id}-{uuid.uuid4().hex[:8]}"
        prefix = config.topic_prefix
        self.subscription = f"$share/{config.share_group}/{prefix}/+/blocks"
        self._topic = re.compile(rf"^{re.escape(prefix)}/([^/]+)/blocks$")
        self._queues: dict[str, asyncio.Queue[bytes]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self.connected = asyncio.Event()
        self.messages = 0
        self.dropped = 0

    def __repr__(self) -> str:
        return (f"MqttIngest(broker={self.config.host}:{self.config.port}, "
                f"subscription={self.subscription!r}, connected={self.connected.is_set()})")

    async def run(self) -> None:
        """Stay subscribed until cancelled; reconnect with capped, jittered backoff."""
        backoff = Backoff(initial_s=self.config.reconnect_initial_s,
                          max_s=self.config.reconnect_max_s)
        tls = self.credentials.tls_context()
        if tls is None:
            log.warning("MQTT ingest from %s:%d is plaintext (insecure: true in the configuration)",
                        self.config.host, self.config.port)
        last_error = ""
        try:
            while True:
                try:
                    await self._session(tls)
                except aiomqtt.MqttError as exc:
                    raise_if_cancelled(exc)
                    message = str(exc)
                except OSError as exc:
                    raise_if_cancelled(exc)
                    message = f"network error: {exc}"
                except LedgerError as exc:
                    raise_if_cancelled(exc)
                    message = f"ledger failure: {exc}"
                self.connected.clear()
                if message != last_error:
                    log.warning("MQTT ingest from %s:%d: %s; reconnecting with backoff",
                                self.config.host, self.config.port, message)
                last_error = message
                await asyncio.sleep(backoff.next_delay())
        finally:
            for worker in self._workers.values():
                worker.cancel()
            self.connected.clear()

    async def _session(self, tls: ssl.SSLContext | None) -> None:
        async with aiomqtt.Client(
            self.config.host, self.config.port, identifier=self.client_id,
            username=self.config.username, password=self.credentials.password,
            protocol=aiomqtt.ProtocolVersion.V5, keepalive=self.config.keepalive_s,
            tls_context=tls,
            # bounded: past this, paho drops incoming messages it has already PUBACKed; the
            # collectors resend them after their ack timeout (only the gateway's ack counts)
            max_queued_incoming_messages=MAX_QUEUED_INCOMING,
        ) as client:
            await client.subscribe(self.subscription, qos=1)
            self.connected.set()
            log.info("MQTT ingest subscribed to %s on %s:%d as %s", self.subscription,
                     self.config.host, self.config.port, self.client_id)
            try:
                async for message in client.messages:
                    self.messages += 1
                    await self._dispatch(client, message)
            finally:
                # the workers publish through this client: they end with it. What they had not
                # handled was not acknowledged, so the collectors send it again.
                for worker in self._workers.values():
                    worker.cancel()
                self._workers.clear()
                self._queues.clear()

    async def _dispatch(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        match = self._topic.match(message.topic.value)
        payload = message.payload if isinstance(message.payload, bytes) else b""
        if match is None or not COLLECTOR_ID.match(match.group(1)):
            await self.core.refuse(
                raw=payload, collector_id="", transport=TRANSPORT, peer=message.topic.value,
                refusal=Refusal(0, "bad_topic", f"topic {message.topic.value!r} names no collector"))
            return
        collector_id = match.group(1)
        queue = self._queues.get(collector_id)
        worker = self._workers.get(collector_id)
        if queue is None or worker is None or worker.done():
            queue = asyncio.Queue(maxsize=self.config.max_queued_per_collector)
            self._queues[collector_id] = queue
            self._workers[collector_id] = asyncio.create_task(
                self._work(client, collector_id, queue), name=f"mqtt-{collector_id}")
        try:
            queue.put_nowait(payload)
        except asyncio.QueueFull:
            # One collector's backlog must not hold up the others. Nothing of this message was
            # acknowledged, so the collector sends it again after its ack timeout.
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("collector %s has %d messages waiting here; dropped one for it to "
                            "resend (%d dropped so far)", collector_id, queue.qsize(),
                            self.dropped)

    async def _work(self, client: aiomqtt.Client, collector_id: str,
                    queue: asyncio.Queue[bytes]) -> None:
        topic = f"{self.config.topic_prefix}/{collector_id}/acks"
        peer = f"mqtt:{self.config.topic_prefix}/{collector_id}/blocks"
        while True:
            payload = await queue.get()
            try:
                answer = await self._handle(collector_id, payload, peer)
            except LedgerError:
                # nothing acknowledged: the collector sends again after its ack timeout
                log.exception("ledger failure while handling a message of collector %s",
                              collector_id)
                continue
            except Exception as exc:
                raise_if_cancelled(exc)
                # a defect met by one message must not stop this collector's worker (and with
                # it, through the queue, everyone): keep the evidence and go on
                log.exception("ALARM: unexpected failure on a message of collector %s; it is "
                              "quarantined and not acknowledged", collector_id)
                await self._keep_as_evidence(collector_id, payload, peer)
                continue
            if answer is not None:
                try:
                    await client.publish(topic, answer, qos=1)
                    check_cancelled()
                except aiomqtt.MqttError as exc:
                    raise_if_cancelled(exc)
                    log.warning("could not publish the ack for %s (%s); it will resend",
                                collector_id, exc)

    async def _keep_as_evidence(self, collector_id: str, payload: bytes, peer: str) -> None:
        with contextlib.suppress(LedgerError):
            await self.core.refuse(raw=payload, collector_id=collector_id, transport=TRANSPORT,
                                   peer=peer, refusal=Refusal(0, "internal_error",
                                   "the gateway failed on this message; see its log"))

    async def _handle(self, collector_id: str, payload: bytes, peer: str) -> bytes | None:
        answer = await self.core.handle(collector_id=collector_id, raw=payload,
                                        transport=TRANSPORT, peer=peer,
                                        max_blocks_per_batch=self.max_blocks_per_batch,
                                        hello_expected=True)
        return answer.encode(collector_id)
