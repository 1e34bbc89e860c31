"""The gateway process: the ledger, the ingest core, and the transports that feed it (the gRPC
server, the MQTT shared subscription, or both); the transparency log, and the verifier API that
serves it, the blocks and the reports (HTTP, and gRPC on the ingest server)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time

import nacl.signing

from gateway.accounting.accountant import Accountant
from gateway.config import LoadedGatewayConfig
from gateway.errors import ConfigError, EnrolmentError, LedgerError
from gateway.grpc_server import GrpcIngestServer
from gateway.ingest import IngestCore
from gateway.ledger import CollectorKey, Ledger, open_ledger
from gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.metrics import GatewaySnapshot, LogSnapshot, status_document
from gateway.metrics import render as render_metrics
from gateway.mqtt_ingest import MqttIngest
from gateway.sink import TimeSeriesSink
from gateway.tokens import MIN_TOKEN_CHARS, Tokens, TokenScope, token_digest
from gateway.translog.log import TransparencyLog
from gateway.tsdb import InfluxWriter
from gateway.verifier_api import VerifierHttpServer, VerifierService
from gateway.verifier_grpc import VerifierRpc
from proto.credentials import BrokerCredentials, read_secret
from proto.errors import KeyFileError, UnacceptableKeyError
from proto.http_endpoint import HttpEndpoint, Response
from proto.keys import generate_key_files, load_signing_key
from proto.wire import check_public_key, key_id_of

__all__ = ["GatewayRuntime", "enroll_collector"]

log = logging.getLogger(__name__)


class GatewayRuntime:
    """Runs the gateway until cancelled."""

    def __init__(self, *, config: LoadedGatewayConfig) -> None:
        self.config = config
        section = config.config
        self.ledger = open_ledger(config.ledger_location(),
                                  quarantine_max_rows=section.ledger.quarantine_max_rows)
        self.core = IngestCore(ledger=self.ledger)
        self.log = TransparencyLog(ledger=self.ledger, origin=config.log_origin(),
                                   signing_key=_log_signing_key(config),
                                   checkpoint_interval_s=section.log.checkpoint_interval_s)
        self.verifier: VerifierService | None = None
        self.verifier_http: VerifierHttpServer | None = None
        if section.verifier_api is not None:
            self.verifier = VerifierService(
                ledger=self.ledger, log=self.log, tokens=_verifier_tokens(config),
                gateway_id=section.gateway.id,
                max_report_blocks=section.verifier_api.max_report_blocks)
            self.verifier_http = VerifierHttpServer(service=self.verifier,
                                                    address=section.verifier_api.listen)
            # the gRPC Verifier shares the ingest port, which collectors reach from outside
            for address in (section.verifier_api.listen, section.listen.grpc):
                host = (address or "127.0.0.1:0").rpartition(":")[0].strip("[]")
                if host not in ("127.0.0.1", "::1", "localhost"):
                    log.warning("verifier API on %s in plaintext: bearer tokens cross the network "
                                "in the clear; put a TLS-terminating proxy in front "
                                "(docs/verifier-api.md)", address)
        self.grpc: GrpcIngestServer | None = None
        if section.listen.grpc is not None:
            self.grpc = GrpcIngestServer(
                core=self.core, address=section.listen.grpc,
                max_message_bytes=section.limits.max_message_bytes,
                max_blocks_per_batch=section.limits.max_blocks_per_batch,
                verifier=None if self.verifier is None else VerifierRpc(service=self.verifier),
            )
        self.mqtt: MqttIngest | None = None
        if section.mqtt is not None:
            mqtt = section.mqtt
            self.mqtt = MqttIngest(
                core=self.core, config=mqtt, gateway_id=section.gateway.id,
                max_blocks_per_batch=section.limits.max_blocks_per_batch,
                credentials=_broker_credentials(config),
            )
        self._mqtt_task: asyncio.Task[None] | None = None
        self.sink = _timeseries_sink(config, self.ledger)
        if self.sink is not None:
            self.core.on_stored.append(self.sink.notify)
        self.core.on_stored.append(self.log.notify)
        self.core.receipts = self.log.receipt
        self._log_task: asyncio.Task[None] | None = None
        self._sink_task: asyncio.Task[None] | None = None
        self.accountant: Accountant | None = None
        if section.accounting is not None:
            self.accountant = Accountant(ledger=self.ledger, gateway_id=section.gateway.id,
                                         interval_s=section.accounting.interval_s,
                                         writer=_timeseries_writer(config))
        self._accountant_task: asyncio.Task[None] | None = None
        self.http: HttpEndpoint | None = None
        if section.http is not None:
            self.http = HttpEndpoint(address=section.http.listen, routes={
                "/metrics": self._metrics, "/healthz": self._healthz, "/status": self._status})

    def __repr__(self) -> str:
        return (f"GatewayRuntime(id={self.config.config.gateway.id!r}, grpc={self.grpc!r}, "
                f"mqtt={self.mqtt!r})")

    async def start(self) -> int:
        """Open the ledger and start every transport; return the gRPC port (0 without gRPC)."""
        await self.ledger.open()
        keys = await self.ledger.collector_keys()
        log.info("gateway %s: ledger %r, %d enrolled collector(s)",
                 self.config.config.gateway.id, self.ledger, len(keys))
        await self.log.start()
        log.info("transparency log %s: %d leaves; checkpoints verify with %s",
                 self.log.origin, self.log.size, self.log.verifier_key)
        self._log_task = asyncio.create_task(self.log.run(), name="transparency-log")
        self._log_task.add_done_callback(_report_crash)
        port = await self.grpc.start() if self.grpc is not None else 0
        if self.mqtt is not None:
            self._mqtt_task = asyncio.create_task(self.mqtt.run(), name="mqtt-ingest")
            self._mqtt_task.add_done_callback(_report_crash)
        if self.sink is not None:
            log.info("time-series sink: %r", self.sink.writer)
            self._sink_task = asyncio.create_task(self.sink.run(), name="timeseries-sink")
            self._sink_task.add_done_callback(_report_crash)
        if self.accountant is not None:
            self._accountant_task = asyncio.create_task(self.accountant.run(), name="accountant")
            self._accountant_task.add_done_callback(_report_crash)
        if self.verifier_http is not None:
            await self.verifier_http.start()
            if self.grpc is None:
                log.info("verifier API: HTTP only (listen.grpc is null, so no gRPC Verifier)")
        if self.http is not None:
            self.http.start(asyncio.get_running_loop())
        return port

    def _sink_lag(self) -> dict[str, int] | None:
        return None if self.sink is None else self.sink.lag()

    async def _snapshot(self) -> GatewaySnapshot:
        return await GatewaySnapshot.take(gateway_id=self.config.config.gateway.id,
                                          core=self.core, sink_lag_blocks=self._sink_lag(),
                                          log=LogSnapshot.of(self.log))

    async def _metrics(self) -> Response:
        text = render_metrics(await self._snapshot(), self.core)
        if self.verifier is not None:
            text += self.verifier.metrics_text().encode()
        return Response(200, METRICS_CONTENT_TYPE, text)

    async def _status(self) -> Response:
        document = status_document(await self._snapshot(), self.core)
        return Response(200, "application/json", json.dumps(document).encode())

    async def _healthz(self) -> Response:
        problems = []
        try:
            await self.ledger.summary()
        except LedgerError as exc:
            problems.append(f"ledger: {exc}")
        if self.mqtt is not None and not self.mqtt.connected.is_set():
            problems.append("mqtt: not connected to the broker")
        body = {"ok": not problems, "gateway_id": self.config.config.gateway.id,
                "problems": problems}
        return Response(200 if not problems else 503, "application/json",
                        json.dumps(body).encode())

    async def run(self) -> None:
        """Serve until cancelled, then stop cleanly."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Stop the transports and close the ledger."""
        if self.http is not None:
            self.http.stop()
        if self.verifier_http is not None:
            await self.verifier_http.stop()
        if self._mqtt_task is not None:
            self._mqtt_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._mqtt_task
            self._mqtt_task = None
        if self.grpc is not None:
            await self.grpc.stop()
        if self._log_task is not None:
            self._log_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._log_task
            self._log_task = None
        if self._accountant_task is not None:
            self._accountant_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accountant_task
            self._accountant_task = None
        if self._sink_task is not None:
            self._sink_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sink_task
            self._sink_task = None
        if self.sink is not None:
            await self.sink.writer.close()
        if self.accountant is not None and self.accountant.writer is not None:
            await self.accountant.writer.close()
        await self.ledger.close()


def _timeseries_sink(config: LoadedGatewayConfig, ledger: Ledger) -> TimeSeriesSink | None:
    """The sink of the `timeseries` section, if there is one."""
    section = config.config.timeseries
    writer = _timeseries_writer(config)
    if section is None or writer is None:
        return None
    return TimeSeriesSink(ledger=ledger, writer=writer, cursor=section.cursor,
                          batch_lines=section.batch_lines, retry_max_s=section.retry_max_s,
                          replay_window_s=section.replay_window_s)


def _timeseries_writer(config: LoadedGatewayConfig) -> InfluxWriter | None:
    """A writer to the `timeseries` section's store, if there is one (each user its own)."""
    section = config.config.timeseries
    if section is None:
        return None
    token = None
    if section.token_file is not None:
        path = config.resolve(section.token_file)
        try:
            token = read_secret(path)
        except (OSError, ValueError) as exc:
            raise ConfigError(str(config.source), "timeseries.token_file",
                              f"cannot read a token from {path}: {exc}") from exc
    if section.insecure:
        log.warning("time-series store %s: writing in plaintext (insecure: true)", section.url)
    return InfluxWriter(url=section.url, org=section.org, bucket=section.bucket, token=token,
                        timeout_s=section.timeout_s,
                        ca_file=_path(config, section.ca_file, "timeseries.ca_file"))


def _log_signing_key(config: LoadedGatewayConfig) -> nacl.signing.SigningKey:
    """The key that signs the log's checkpoints; made (with its .pub) on the first start."""
    path = config.resolve(config.config.log.key_file)
    if not path.exists():
        try:
            generate_key_files(path)
        except (OSError, KeyFileError) as exc:
            raise ConfigError(str(config.source), "log.key_file",
                              f"no key at {path}, and cannot make one: {exc}") from exc
        log.warning("transparency log: made a new checkpoint signing key at %s (keep it; every "
                    "gateway of this ledger needs the same one)", path)
    try:
        return load_signing_key(path)
    except KeyFileError as exc:
        raise ConfigError(str(config.source), "log.key_file", str(exc)) from exc


def _verifier_tokens(config: LoadedGatewayConfig) -> Tokens:
    """The verifier API's tokens by digest; a token file is read (and checked) now."""
    section = config.config.verifier_api
    assert section is not None
    entries: list[tuple[bytes, TokenScope]] = []
    for number, token in enumerate(section.tokens):
        if token.sha256 is not None:
            digest = bytes.fromhex(token.sha256)
        else:
            assert token.token_file is not None
            field = f"verifier_api.tokens.{number}.token_file"
            path = config.resolve(token.token_file)
            try:
                text = read_secret(path)
            except (OSError, ValueError) as exc:
                raise ConfigError(str(config.source), field,
                                  f"cannot read a token from {path}: {exc}") from exc
            if len(text) < MIN_TOKEN_CHARS:
                raise ConfigError(str(config.source), field,
                                  f"the token in {path} is shorter than {MIN_TOKEN_CHARS} "
                                  "characters: make one with `stackline gateway token`")
            digest = token_digest(text)
        if any(digest == known for known, _ in entries):
            raise ConfigError(str(config.source), f"verifier_api.tokens.{number}",
                              "the same token as an earlier entry: one token has one set of plants")
        entries.append((digest, TokenScope(token.name, frozenset(token.plants))))
    return Tokens(entries)


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.critical("the %s task stopped: %r", task.get_name(), task.exception())


def _path(config: LoadedGatewayConfig, relative: str | None, field: str) -> str | None:
    if relative is None:
        return None
    path = config.resolve(relative)
    if not path.is_file():
        raise ConfigError(str(config.source), field, f"no such file: {path}")
    return str(path)


def _broker_credentials(config: LoadedGatewayConfig) -> BrokerCredentials:
    """The MQTT password and TLS files, checked now so that a wrong path stops the start."""
    mqtt = config.config.mqtt
    assert mqtt is not None
    tls = mqtt.tls
    credentials = BrokerCredentials(
        password=_secret(config, mqtt.password_file),
        ca_file=_path(config, tls.ca_file if tls else None, "mqtt.tls.ca_file"),
        cert_file=_path(config, tls.cert_file if tls else None, "mqtt.tls.cert_file"),
        key_file=_path(config, tls.key_file if tls else None, "mqtt.tls.key_file"),
    )
    try:
        credentials.tls_context()
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(str(config.source), "mqtt.tls", f"the TLS files do not load: {exc}") from exc
    return credentials


def _secret(config: LoadedGatewayConfig, relative: str | None) -> str | None:
    if relative is None:
        return None
    path = config.resolve(relative)
    try:
        return read_secret(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(str(config.source), "mqtt.password_file",
                          f"cannot read a password from {path}: {exc}") from exc


async def enroll_collector(ledger: Ledger, *, collector_id: str, public_key: bytes) -> str:
    """Check a collector's public key against the enrolment rule and register it; return its key id."""
    try:
        check_public_key(public_key)
    except UnacceptableKeyError as exc:
        raise EnrolmentError(f"refusing to enrol {collector_id}: {exc}") from exc
    key_id = key_id_of(public_key)
    await ledger.enroll(CollectorKey(collector_id, key_id, public_key, int(time.time() * 1000)))
    return key_id
