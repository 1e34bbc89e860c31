"""The gRPC server: the ingest stream and, when the verifier API is configured, the Verifier
service (gateway/verifier_grpc.py); the only home of grpc in the gateway.

Requests arrive as raw bytes (no deserializer is registered) so that a message that does not parse
is still in hand to be quarantined as evidence; the stream then goes on. A stream must start with a
hello naming an enrolled collector; the answer is an ack saying where to resume.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from gateway.errors import GatewayError, LedgerError
from gateway.ingest import Answer, IngestCore, Refusal
from gateway.verifier_api import ApiError
from gateway.verifier_grpc import GRPC_STATUS, RpcAnswer, VerifierRpc
from gateway.verifier_grpc import SERVICE as VERIFIER_SERVICE
from proto.stackline.v1 import stackline_pb2 as pb

__all__ = ["GrpcIngestServer"]

log = logging.getLogger(__name__)

TRANSPORT = "grpc"
SERVICE = "stackline.v1.Ingest"
VERIFIER_MAX_SEND_BYTES = 64 * 1024 * 1024  # a year's report is a few MB; ingest answers are small

_UnaryHandler = Callable[[bytes, "grpc.aio.ServicerContext[bytes, bytes]"], Awaitable[bytes]]
_StreamHandler = Callable[[bytes, "grpc.aio.ServicerContext[bytes, bytes]"], AsyncIterator[bytes]]


class GrpcIngestServer:
    """Serves `stackline.v1.Ingest/Stream` on one address, and `stackline.v1.Verifier` when given
    a `verifier`."""

    def __init__(self, *, core: IngestCore, address: str, max_message_bytes: int,
                 max_blocks_per_batch: int, verifier: VerifierRpc | None = None) -> None:
        self.core = core
        self.address = address
        self.max_message_bytes = max_message_bytes
        self.max_blocks_per_batch = max_blocks_per_batch
        self.verifier = verifier
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self.active_streams = 0

    def __repr__(self) -> str:
        return f"GrpcIngestServer(address={self.address!r}, port={self.port})"

    async def start(self) -> int:
        """Bind and start serving; return the bound port (useful with port 0)."""
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length",
             max(self.max_message_bytes, VERIFIER_MAX_SEND_BYTES) if self.verifier
             else self.max_message_bytes),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ])
        handler = grpc.method_handlers_generic_handler(SERVICE, {
            "Stream": grpc.stream_stream_rpc_method_handler(self._stream),
        })
        server.add_generic_rpc_handlers((handler,))
        if self.verifier is not None:
            server.add_generic_rpc_handlers((self._verifier_handler(self.verifier),))
        try:
            self.port = server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise GatewayError(f"cannot listen for gRPC on {self.address}: is another gateway "
                               "running there? Change listen.grpc or stop the other one") from exc
        await server.start()
        self._server = server
        log.info("gRPC ingest%s listening on %s (plaintext)",
                 " and verifier API" if self.verifier else "",
                 self.address.rsplit(":", 1)[0] + f":{self.port}")
        return self.port

    async def stop(self, grace_s: float = 2.0) -> None:
        """Stop accepting streams; let running ones finish within the grace period."""
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None

    async def wait(self) -> None:
        """Serve until the server stops."""
        if self._server is not None:
            await self._server.wait_for_termination()

    async def _hello(self, raw: bytes, peer: str) -> tuple[str, bytes]:
        """The stream's first message must be a hello naming an enrolled collector: return the
        collector id ("" when refused) and the answer (where to resume, or why not)."""
        request = pb.IngestRequest()
        try:
            request.ParseFromString(raw)
        except DecodeError as exc:
            refusal = Refusal(0, "malformed_message", f"not a stackline.v1.IngestRequest: {exc}")
        else:
            if request.WhichOneof("kind") == "hello":
                claimed = request.hello.collector_id
                answer = await self.core.handle(
                    collector_id=claimed, raw=raw, transport=TRANSPORT, peer=peer,
                    max_blocks_per_batch=self.max_blocks_per_batch, hello_expected=True)
                response = answer.encode(claimed)
                assert response is not None  # a hello is always answered
                return ("" if answer.error else claimed), response
            refusal = Refusal(0, "protocol_violation", "a stream must start with a hello")
        refusal = await self.core.refuse(raw=raw, collector_id="", transport=TRANSPORT,
                                         peer=peer, refusal=refusal)
        return "", Answer(error=refusal).encode("") or b""

    async def _stream(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        peer = context.peer()
        collector_id = ""
        self.active_streams += 1
        try:
            async for raw in requests:
                if not collector_id:
                    collector_id, first_answer = await self._hello(raw, peer)
                    yield first_answer
                    if not collector_id:
                        return
                    log.info("collector %s connected from %s", collector_id, peer)
                    continue
                answer = await self.core.handle(
                    collector_id=collector_id, raw=raw, transport=TRANSPORT, peer=peer,
                    max_blocks_per_batch=self.max_blocks_per_batch, hello_expected=False)
                response = answer.encode(collector_id)
                if response is not None:
                    yield response
                if answer.error is not None:
                    return
        except LedgerError as exc:
            # Nothing of this batch was acknowledged; the collector keeps it and retries.
            log.exception("ledger failure while serving collector %r", collector_id or "?")
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"the gateway's ledger failed ({exc}); retry later")
        finally:
            self.active_streams -= 1
            if collector_id:
                log.info("collector %s disconnected", collector_id)

    # --- the Verifier service ------------------------------------------------------------------

    @staticmethod
    def _verifier_handler(verifier: VerifierRpc) -> grpc.GenericRpcHandler:
        def unary(method: str) -> _UnaryHandler:
            async def handle(raw: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
                try:
                    answer: RpcAnswer = await verifier.call(
                        method, raw, authorization=_authorization(context), peer=context.peer())
                except ApiError as exc:
                    await context.abort(_status(exc), exc.detail)
                if answer.metadata:
                    await context.send_initial_metadata(answer.metadata)
                return answer.body
            return handle

        def stream(method: str) -> _StreamHandler:
            async def handle(raw: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
                             ) -> AsyncIterator[bytes]:
                try:
                    messages = await verifier.open_stream(
                        method, raw, authorization=_authorization(context), peer=context.peer())
                    async for message in messages:
                        yield message
                except ApiError as exc:
                    await context.abort(_status(exc), exc.detail)
            return handle

        handlers = {name: grpc.unary_unary_rpc_method_handler(unary(name))
                    for name in verifier.unary}
        handlers |= {name: grpc.unary_stream_rpc_method_handler(stream(name))
                     for name in verifier.streams}
        return grpc.method_handlers_generic_handler(VERIFIER_SERVICE, handlers)


def _authorization(context: grpc.aio.ServicerContext[bytes, bytes]) -> str | None:
    """The `authorization` metadata of a call (the first, if sent twice)."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            return value
    return None


def _status(error: ApiError) -> grpc.StatusCode:
    return grpc.StatusCode[GRPC_STATUS.get(error.code, "INTERNAL")]
