"""The gateway's verifier API over HTTP, as a `BundleSource` for `stackline export`.

Standard library only (urllib), each blocking call in a worker thread; ndjson streams are read a
batch of lines at a time, so a long stream never sits in memory. The bearer token goes only to the
URL given: redirects are refused rather than followed (urllib would resend the Authorization
header to wherever a redirect points). Errors come back as `GatewayRequestError` with the HTTP
status and a message that says what to do.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable
from datetime import date
from http.client import HTTPException, HTTPResponse
from pathlib import Path
from typing import Any, TypeVar

from gateway.accounting.methodology import MethodologyFile
from gateway.bundle import BlockKindName, ExportError, SourceNotFoundError
from gateway.report_signature import SignedReport
from gateway.translog.log import InclusionProof
from gateway.verifier_documents import (
    BlockLine,
    BundleFormatError,
    CheckpointInfo,
    CollectorInfo,
    LogState,
    parse_base64,
    parse_inclusion_proof,
)
from proto.credentials import read_secret

__all__ = ["TOKEN_ENV", "GatewayClient", "GatewayNotFoundError", "GatewayRequestError", "read_token"]

TOKEN_ENV = "STACKLINE_TOKEN"  # noqa: S105 - the variable's name, not a token
LINES_PER_BATCH = 1000
MAX_LINE_BYTES = 64 << 20
MAX_DOCUMENT_BYTES = 256 << 20
_T = TypeVar("_T")


class GatewayRequestError(ExportError):
    """A request the gateway refused or could not answer; `status` is the HTTP status (None when
    there was no answer)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class GatewayNotFoundError(GatewayRequestError, SourceNotFoundError):
    """A 404: the gateway has no such plant, unit, collector, checkpoint or methodology."""


def read_token(path: Path | None) -> str:
    """The bearer token from `path`, else from $STACKLINE_TOKEN; ExportError when neither has one."""
    if path is not None:
        try:
            return read_secret(path).strip()
        except (OSError, ValueError) as exc:
            raise ExportError(f"cannot read the token from {path}: {exc}") from exc
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ExportError(f"no token: give --token-file FILE or set {TOKEN_ENV}")
    return token


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(  # noqa: PLR0917 - urllib's signature
            self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
            newurl: str) -> None:
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl} refused (the token "
                                     "goes only to the URL given)", headers, fp)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class GatewayClient:
    """The verifier API of one gateway, with one bearer token."""

    def __init__(self, *, base_url: str, token: str, timeout_s: float = 120.0,
                 warn: Callable[[str], None] | None = None) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ExportError(f"{base_url!r} is not an http:// or https:// URL of a gateway")
        if parts.scheme == "http" and not _loopback(parts.hostname) and warn is not None:
            warn(f"warning: {base_url} is plain http: the token and the data travel unencrypted")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.description = f"gateway {self.base_url}"
        self._token = token
        self._opener = urllib.request.build_opener(_NoRedirect())

    def __repr__(self) -> str:
        return f"GatewayClient(base_url={self.base_url!r})"  # never the token

    # --- plumbing ---------------------------------------------------------------------------------

    def _url(self, path: str, query: dict[str, object] | None = None) -> str:
        params = {k: str(v) for k, v in (query or {}).items() if v is not None}
        return self.base_url + path + (f"?{urllib.parse.urlencode(params)}" if params else "")

    def _open(self, method: str, url: str, what: str) -> HTTPResponse:
        request = urllib.request.Request(url, method=method, headers={  # noqa: S310 - scheme checked
            "Authorization": f"Bearer {self._token}", "Accept": "application/json, application/x-ndjson"})
        try:
            response: HTTPResponse = self._opener.open(request, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            raise _refusal(exc, what) from exc
        except urllib.error.URLError as exc:
            raise GatewayRequestError(f"cannot reach the gateway at {self.base_url}: {exc.reason}") from exc
        except TimeoutError as exc:
            raise GatewayRequestError(f"{what}: no answer from {self.base_url} within "
                                      f"{self.timeout_s:.0f} s") from exc
        except (OSError, HTTPException) as exc:
            raise GatewayRequestError(f"{what}: the connection to {self.base_url} failed: {exc}") from exc
        return response

    def _fetch(self, method: str, url: str, what: str) -> tuple[bytes, dict[str, str]]:
        with self._open(method, url, what) as response:
            try:
                body = response.read(MAX_DOCUMENT_BYTES + 1)
            except (OSError, HTTPException) as exc:
                raise GatewayRequestError(f"{what}: the answer was cut off: {exc}") from exc
            if len(body) > MAX_DOCUMENT_BYTES:
                raise GatewayRequestError(f"{what}: the answer is larger than {MAX_DOCUMENT_BYTES} bytes")
            return body, {k.lower(): v for k, v in response.headers.items()}

    async def _json(self, path: str, what: str, *, query: dict[str, object] | None = None,
                    method: str = "GET") -> Any:
        body, _ = await asyncio.to_thread(self._fetch, method, self._url(path, query), what)
        try:
            return json.loads(body)
        except ValueError as exc:
            raise GatewayRequestError(f"{what}: the gateway's answer is not JSON") from exc

    async def _lines(self, path: str, what: str, query: dict[str, object]) -> AsyncIterator[Any]:
        response = await asyncio.to_thread(self._open, "GET", self._url(path, query), what)
        try:
            while True:
                batch = await asyncio.to_thread(_read_lines, response, what)
                if not batch:
                    return
                for raw in batch:
                    try:
                        yield json.loads(raw)
                    except ValueError as exc:
                        raise GatewayRequestError(f"{what}: a line of the stream is not JSON") from exc
        finally:
            await asyncio.to_thread(response.close)

    @staticmethod
    def _parsed(what: str, parse: Callable[[Any], _T], document: Any) -> _T:
        try:
            return parse(document)
        except BundleFormatError as exc:
            raise GatewayRequestError(f"{what}: the gateway's answer is not as the API says: {exc}") from exc

    # --- the API ----------------------------------------------------------------------------------

    async def log_state(self) -> LogState:
        """`GET /v1/log`."""
        document = await self._json("/v1/log", "reading the log's state")
        return self._parsed("/v1/log", LogState.from_json, document)

    async def publish_checkpoint(self) -> CheckpointInfo:
        """`POST /v1/checkpoint`."""
        document = await self._json("/v1/checkpoint", "asking for a fresh checkpoint", method="POST")
        return self._parsed("/v1/checkpoint", CheckpointInfo.from_json, document)

    async def consistency(self, old_size: int, new_size: int) -> tuple[bytes, ...]:
        """`GET /v1/proofs/consistency`."""
        what = f"the consistency proof from tree size {old_size} to {new_size}"
        document = await self._json("/v1/proofs/consistency", what,
                                    query={"old_size": old_size, "new_size": new_size})
        hashes = document.get("hashes") if isinstance(document, dict) else None
        if not isinstance(hashes, list):
            raise GatewayRequestError(f"{what}: the answer has no list of hashes")
        return tuple(self._parsed(what, _hash, h) for h in hashes)

    async def collectors(self) -> list[CollectorInfo]:
        """`GET /v1/collectors`."""
        document = await self._json("/v1/collectors", "listing the collectors")
        entries = document.get("collectors") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise GatewayRequestError("listing the collectors: the answer has no list of collectors")
        return [self._parsed("/v1/collectors", CollectorInfo.from_json, e) for e in entries]

    async def unit_collectors(self, plant_id: str, unit_id: str) -> list[str]:
        """`GET /v1/plants/{plant}/units/{unit}/collectors`."""
        what = f"the collectors of unit {unit_id} of plant {plant_id}"
        document = await self._json(f"/v1/plants/{_part(plant_id)}/units/{_part(unit_id)}/collectors",
                                    what)
        ids = document.get("collectors") if isinstance(document, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise GatewayRequestError(f"{what}: the answer has no list of collector ids")
        return list(ids)

    async def blocks(self, collector_id: str, *, from_sequence: int | None = None,
                     to_sequence: int | None = None, from_unix_ms: int | None = None,
                     to_unix_ms: int | None = None,
                     kind: BlockKindName | None = None) -> AsyncIterator[BlockLine]:
        """`GET /v1/collectors/{id}/blocks`, streamed."""
        what = f"the blocks of collector {collector_id}"
        async for document in self._lines(f"/v1/collectors/{_part(collector_id)}/blocks", what, {
                "from_sequence": from_sequence, "to_sequence": to_sequence,
                "from_unix_ms": from_unix_ms, "to_unix_ms": to_unix_ms, "kind": kind}):
            yield self._parsed(what, _block_line, document)

    async def proofs(self, collector_id: str, *, from_sequence: int, to_sequence: int,
                     tree_size: int) -> AsyncIterator[InclusionProof]:
        """`GET /v1/collectors/{id}/proofs`, streamed."""
        what = f"the inclusion proofs of collector {collector_id}"
        async for document in self._lines(f"/v1/collectors/{_part(collector_id)}/proofs", what, {
                "from_sequence": from_sequence, "to_sequence": to_sequence, "tree_size": tree_size}):
            yield self._parsed(what, parse_inclusion_proof, document)

    async def report(self, plant_id: str, unit_id: str, start: date, end: date) -> SignedReport:
        """`GET /v1/plants/{plant}/units/{unit}/report`: the body and its signature headers."""
        what = f"the report of unit {unit_id} of plant {plant_id}"
        url = self._url(f"/v1/plants/{_part(plant_id)}/units/{_part(unit_id)}/report",
                        {"from": start.isoformat(), "to": end.isoformat()})
        body, headers = await asyncio.to_thread(self._fetch, "GET", url, what)
        signature = headers.get("stackline-report-signature")
        log_key = headers.get("stackline-log-key")
        if not signature or not log_key:
            raise GatewayRequestError(f"{what}: the answer has no Stackline-Report-Signature or "
                                      "Stackline-Log-Key header")
        return SignedReport(body, self._parsed(what, _hash, signature.strip()), log_key.strip())

    async def methodology(self, name: str) -> MethodologyFile:
        """`GET /v1/methodologies/{id}`."""
        what = f"methodology {name}"
        body, headers = await asyncio.to_thread(
            self._fetch, "GET", self._url(f"/v1/methodologies/{_part(name)}"), what)
        return MethodologyFile(name, body, headers.get("stackline-methodology-digest", "").strip())


def _block_line(document: Any) -> BlockLine:
    return BlockLine.from_json(document)


def _hash(text: Any) -> bytes:
    return parse_base64(text, "base64 value")


def _part(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _read_lines(response: HTTPResponse, what: str) -> list[bytes]:
    lines: list[bytes] = []
    try:
        while len(lines) < LINES_PER_BATCH:
            line = response.readline(MAX_LINE_BYTES + 1)
            if not line:
                break
            if len(line) > MAX_LINE_BYTES:
                raise GatewayRequestError(f"{what}: a line longer than {MAX_LINE_BYTES} bytes")
            if line.strip():
                lines.append(line)
    except (OSError, HTTPException) as exc:
        raise GatewayRequestError(f"{what}: the stream was cut off: {exc}") from exc
    return lines


def _refusal(exc: urllib.error.HTTPError, what: str) -> GatewayRequestError:
    """The gateway's {"error", "detail"} as a message that says what to do next."""
    detail = exc.reason
    try:
        document = json.loads(exc.read(65536))
        if isinstance(document, dict):
            detail = f"{document.get('error', '')}: {document.get('detail', '')}".strip(": ")
    except (ValueError, OSError, HTTPException):
        pass
    status = exc.code
    if status == 401:
        message = f"the gateway refused the token ({detail}): check --token-file or ${TOKEN_ENV}"
    elif status == 403:
        message = f"{what}: the token does not allow this ({detail}); ask for a token that covers the plant"
    elif status == 404:
        return GatewayNotFoundError(f"{what}: not found at the gateway ({detail})", status=status)
    elif status == 400:
        message = f"{what}: the gateway refused the request ({detail})"
    elif 300 <= status < 400:
        message = f"{what}: {detail}"
    else:
        message = f"{what}: the gateway answered {status} ({detail})"
    return GatewayRequestError(message, status=status)
