"""The verifier API over gRPC (`stackline.v1.Verifier`): request bytes in, response bytes out.

No grpc here: gateway/grpc_server.py registers these methods on the gateway's gRPC server and
maps an `ApiError`'s code to a status code (`GRPC_STATUS`). The operations, tokens and scope rules
are `VerifierService`'s, the same as over HTTP; the bearer token arrives in the `authorization`
metadata. GetReport also answers, in its initial metadata, the log key's signature over the report
(`stackline-report-signature`) and the log's verifier key (`stackline-log-key`), as HTTP does in
headers.

Every HTTP operation has its method here (tests/test_verifier_api.py checks that every rpc of the
service in the schema is answered); `GetCheckpoint{fresh: true}` is `POST /v1/checkpoint`, with
its limit of one publication a second (`CHECKPOINT_MIN_INTERVAL_S`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from gateway.errors import LedgerError
from gateway.tokens import TokenScope
from gateway.translog.log import InclusionProof
from gateway.verifier_api import (
    ApiError,
    BadRequest,
    BlockQuery,
    Unavailable,
    VerifierService,
    parse_date,
)
from gateway.verifier_documents import BlockLine, CheckpointInfo, b64text
from proto.errors import StacklineWireError
from proto.stackline.v1 import stackline_pb2 as pb

__all__ = ["GRPC_STATUS", "SERVICE", "RpcAnswer", "VerifierRpc"]

log = logging.getLogger(__name__)

SERVICE = "stackline.v1.Verifier"

GRPC_STATUS = {
    "bad_request": "INVALID_ARGUMENT",
    "unauthenticated": "UNAUTHENTICATED",
    "forbidden": "PERMISSION_DENIED",
    "not_found": "NOT_FOUND",
    "method_not_allowed": "UNIMPLEMENTED",
    "unprocessable": "FAILED_PRECONDITION",
    "unavailable": "UNAVAILABLE",
    "internal": "INTERNAL",
}
"""An `ApiError` code -> the name of the `grpc.StatusCode` it is answered with."""

_M = TypeVar("_M", bound=Message)
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RpcAnswer:
    """A unary answer: the response message's bytes, and initial metadata to send first."""

    body: bytes
    metadata: tuple[tuple[str, str], ...] = ()


_Unary = Callable[[TokenScope, bytes], Awaitable[RpcAnswer]]
_Stream = Callable[[TokenScope, bytes], Awaitable[AsyncIterator[bytes]]]


def _parse(message: type[_M], raw: bytes) -> _M:
    try:
        return message.FromString(raw)
    except DecodeError as exc:
        raise BadRequest(f"the request is not a stackline.v1.{message.__name__}: {exc}") from exc


def _checkpoint(found: CheckpointInfo) -> pb.CheckpointResponse:
    return pb.CheckpointResponse(note=found.note, tree_size=found.tree_size,
                                 root_hash=found.root_hash, verifier_key=found.verifier_key,
                                 published_unix_ms=found.published_unix_ms)


def _inclusion_proof(proof: InclusionProof) -> bytes:
    return pb.InclusionProofResponse(
        leaf_index=proof.leaf_index, tree_size=proof.tree_size, hashes=list(proof.hashes),
        collector_id=proof.collector_id, sequence=proof.sequence).SerializeToString()


def _logged_block(entry: BlockLine) -> bytes:
    logged = pb.LoggedBlock(block=pb.SignedBlock(payload=entry.payload, signature=entry.signature,
                                                 key_id=entry.key_id),
                            sequence=entry.sequence)
    if entry.leaf_index is not None:
        logged.leaf_index = entry.leaf_index
    return logged.SerializeToString()


async def _messages(pages: AsyncIterator[list[_T]],
                    encode: Callable[[_T], bytes]) -> AsyncIterator[bytes]:
    """One message per item of the service's pages."""
    try:
        async for page in pages:
            for item in page:
                yield encode(item)
    finally:  # a stream cut short: let the ledger pages go now, not when collected
        close = getattr(pages, "aclose", None)
        if close is not None:
            await close()


class VerifierRpc:
    """The `stackline.v1.Verifier` methods over a `VerifierService`."""

    def __init__(self, *, service: VerifierService) -> None:
        self.service = service
        self.unary: dict[str, _Unary] = {
            "ListCollectors": self._list_collectors, "GetCheckpoint": self._get_checkpoint,
            "GetInclusionProof": self._get_inclusion_proof,
            "GetConsistencyProof": self._get_consistency_proof, "GetReport": self._get_report,
            "GetMethodology": self._get_methodology, "GetLog": self._get_log,
            "ListUnitCollectors": self._list_unit_collectors}
        self.streams: dict[str, _Stream] = {
            "StreamBlocks": self._stream_blocks,
            "StreamInclusionProofs": self._stream_inclusion_proofs}

    def __repr__(self) -> str:
        return f"VerifierRpc({self.service!r})"

    async def call(self, method: str, raw: bytes, *, authorization: str | None,
                   peer: str) -> RpcAnswer:
        """Answer a unary method; ApiError (counted and logged) when refused."""
        _, answer = await self._checked(method, authorization, peer,
                                        lambda scope: self.unary[method](scope, raw))
        return answer

    async def open_stream(self, method: str, raw: bytes, *, authorization: str | None,
                          peer: str) -> AsyncIterator[bytes]:
        """Check a streaming request, then its messages; ApiError (counted and logged) when
        refused, or when the ledger fails part way (Unavailable)."""
        scope, messages = await self._checked(method, authorization, peer,
                                              lambda scope: self.streams[method](scope, raw))
        return self._guarded(messages, method, peer, scope)

    async def _checked(self, method: str, authorization: str | None, peer: str,
                       answer: Callable[[TokenScope], Awaitable[_T]]) -> tuple[TokenScope, _T]:
        """The token's scope and the method's answer; a refusal or a failed ledger is counted,
        logged and raised as an ApiError."""
        scope: TokenScope | None = None
        try:
            scope = self.service.authenticate(authorization)
            return scope, await answer(scope)
        except ApiError as exc:
            self._refused(exc, peer, scope, method)
            raise
        except LedgerError as exc:
            error = Unavailable("the gateway's ledger failed; try again later")
            log.exception("verifier API (grpc): the ledger failed answering %s", method)
            self._refused(error, peer, scope, method)
            raise error from exc

    async def _guarded(self, messages: AsyncIterator[bytes], method: str, peer: str,
                       scope: TokenScope) -> AsyncIterator[bytes]:
        try:
            async for message in messages:
                yield message
        except (LedgerError, StacklineWireError) as exc:
            error = Unavailable("the gateway's ledger failed part way through the stream; ask "
                                "again from the last sequence received")
            log.exception("verifier API (grpc): %s failed part way", method)
            self._refused(error, peer, scope, method)
            raise error from exc

    def _refused(self, error: ApiError, peer: str, scope: TokenScope | None, method: str) -> None:
        self.service.refused(transport="grpc", error=error, peer=peer, scope=scope,
                             what=f"{SERVICE}/{method}")

    # --- the methods -------------------------------------------------------------------------------

    async def _list_collectors(self, scope: TokenScope, raw: bytes) -> RpcAnswer:
        _parse(pb.ListCollectorsRequest, raw)
        entries = await self.service.collectors(scope)
        response = pb.ListCollectorsResponse(collectors=[
            pb.CollectorInfo(collector_id=e.collector_id, plant_id=e.plant_id or "",
                             chain_head=e.chain_head,
                             keys=[pb.VerifierKey(key_id=k.key_id, public_key=k.public_key,
                                                  enrolled_unix_ms=k.enrolled_unix_ms)
                                   for k in e.keys])
            for e in entries])
        return RpcAnswer(response.SerializeToString())

    async def _stream_blocks(self, scope: TokenScope, raw: bytes) -> AsyncIterator[bytes]:
        request = _parse(pb.BlocksRequest, raw)
        pages = await self.service.open_blocks(scope, request.collector_id, BlockQuery(
            request.from_sequence or None, request.to_sequence or None,
            request.from_unix_ms or None, request.to_unix_ms or None, request.kind or None))
        return _messages(pages, _logged_block)

    async def _stream_inclusion_proofs(self, scope: TokenScope,
                                       raw: bytes) -> AsyncIterator[bytes]:
        request = _parse(pb.InclusionProofsRequest, raw)
        if not request.HasField("tree_size"):
            raise BadRequest("tree_size is required: take it from a checkpoint you checked")
        pages = await self.service.open_proofs(
            scope, request.collector_id, from_sequence=request.from_sequence or None,
            to_sequence=request.to_sequence or None, tree_size=request.tree_size)
        return _messages(pages, _inclusion_proof)

    async def _get_log(self, scope: TokenScope, raw: bytes) -> RpcAnswer:
        _parse(pb.LogRequest, raw)
        state = await self.service.log_state()
        response = pb.LogResponse(origin=state.origin, verifier_key=state.verifier_key,
                                  tree_size=state.tree_size)
        if state.checkpoint is not None:
            response.checkpoint.CopyFrom(_checkpoint(state.checkpoint))
        return RpcAnswer(response.SerializeToString())

    async def _get_checkpoint(self, scope: TokenScope, raw: bytes) -> RpcAnswer:
        request = _parse(pb.CheckpointRequest, raw)
        if request.fresh and request.tree_size:
            raise BadRequest("fresh and tree_size exclude each other: fresh publishes a "
                             "checkpoint of everything stored now, tree_size asks for a published "
                             "one; give one of the two")
        if request.fresh:
            found = await self.service.publish()
        else:
            found = await self.service.checkpoint(request.tree_size or None)
        return RpcAnswer(_checkpoint(found).SerializeToString())

    async def _get_inclusion_proof(self, scope: TokenScope, raw: bytes) -> RpcAnswer:
        request = _parse(pb.InclusionProofRequest, raw)
        proof = await self.service.inclusion(scope, request.collector_id, request.sequence,
                                             request.tree_size)
        return RpcAnswer(_inclusion_proof(proof))

    async def _get_consistency_proof(self, scope: TokenScope, raw: bytes) -> RpcAnswer:
        request = _parse(pb.ConsistencyProofRequest, raw)
        hashes = await self.service.consistency(request.old_size, request.new_size)
        return RpcAnswer(pb.ConsistencyProofResponse(
            hashes=hashes, old_size=request.old_size,
            new_size=request.new_size).SerializeToString())

    async def _get_report(self, scope: TokenScope, raw: bytes) -> RpcAnswer:
        request = _parse(pb.ReportRequest, raw)
        report = await self.service.report(scope, request.plant_id, request.unit_id,
                                           parse_date("from_date", request.from_date),
                                           parse_date("to_date", request.to_date))
        return RpcAnswer(pb.ReportResponse(report_json=report.body).SerializeToString(), (
            ("stackline-report-signature", b64text(report.signature)),
            ("stackline-log-key", report.log_key)))

    async def _list_unit_collectors(self, scope: TokenScope, raw: bytes) -> RpcAnswer:
        request = _parse(pb.UnitCollectorsRequest, raw)
        found = await self.service.unit_collectors(scope, request.plant_id, request.unit_id)
        return RpcAnswer(pb.UnitCollectorsResponse(collector_ids=found).SerializeToString())

    async def _get_methodology(self, scope: TokenScope, raw: bytes) -> RpcAnswer:
        request = _parse(pb.MethodologyRequest, raw)
        found = await self.service.methodology(request.methodology_id)
        return RpcAnswer(pb.MethodologyResponse(document=found.data,
                                                digest=found.digest).SerializeToString())
