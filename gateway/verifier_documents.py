"""The verifier API's documents as value objects: what `VerifierService` answers, how each is
written as JSON (the HTTP API's answers, an evidence bundle's files) and read back (the export's
HTTP client, the offline bundle verifier). One definition for every side, so a bundle holds what
the API serves and its verifier reads what its writer wrote (docs/verifying.md sections 7 and 8).

Pure: no I/O. Readers name the field that is wrong (`BundleFormatError`).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import GatewayError
from gateway.ledger.base import CollectorKey, StoredCheckpoint
from gateway.translog.log import InclusionProof

__all__ = [
    "BlockLine",
    "BundleFormatError",
    "CheckpointInfo",
    "CollectorInfo",
    "CollectorKeyInfo",
    "LogState",
    "b64text",
    "json_object",
    "json_text",
    "parse_base64",
    "parse_inclusion_proof",
]


class BundleFormatError(GatewayError):
    """A document of the verifier API or of a bundle that is not what its format says."""


# --- small JSON readers: every field named when it is wrong ---------------------------------------


def json_object(value: object, what: str) -> dict[str, Any]:
    """`value` as a JSON object; BundleFormatError naming `what` otherwise."""
    if not isinstance(value, dict):
        raise BundleFormatError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def _int(obj: Mapping[str, Any], key: str, what: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BundleFormatError(f"{what}: {key!r} must be a whole number >= 0, not {value!r}")
    return value


def _opt_int(obj: Mapping[str, Any], key: str, what: str) -> int | None:
    return None if obj.get(key) is None else _int(obj, key, what)


def json_text(obj: Mapping[str, Any], key: str, what: str) -> str:
    """The non-empty string `obj[key]`; BundleFormatError naming the field otherwise."""
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise BundleFormatError(f"{what}: {key!r} must be a non-empty string, not {value!r}")
    return value


def _b64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise BundleFormatError(f"{what}: expected base64 text, not {text!r}")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise BundleFormatError(f"{what}: not base64") from exc


def parse_base64(value: object, what: str) -> bytes:
    """Standard base64 (with padding) as the API and bundles write bytes; BundleFormatError."""
    return _b64(value, what)


def b64text(data: bytes) -> str:
    """Bytes as the API and bundles write them: standard base64 with padding."""
    return base64.b64encode(data).decode("ascii")


def _hashes(value: object, what: str) -> tuple[bytes, ...]:
    if not isinstance(value, list):
        raise BundleFormatError(f"{what}: 'hashes' must be a list of base64 hashes")
    return tuple(_b64(item, f"{what} hash {index}") for index, item in enumerate(value))


# --- the documents of the verifier API, as value objects -----------------------------------------


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """A published checkpoint: the signed note and, unverified, what it says."""

    note: str
    tree_size: int
    root_hash: bytes
    published_unix_ms: int
    verifier_key: str

    @classmethod
    def of(cls, stored: StoredCheckpoint, verifier_key: str) -> CheckpointInfo:
        """A checkpoint the ledger keeps, with the key that verifies it."""
        return cls(stored.note, stored.tree_size, stored.root_hash, stored.published_unix_ms,
                   verifier_key)

    def as_json(self) -> dict[str, Any]:
        """As `GET /v1/checkpoint` answers."""
        return {"note": self.note, "tree_size": self.tree_size, "root_hash": b64text(self.root_hash),
                "published_unix_ms": self.published_unix_ms, "verifier_key": self.verifier_key}

    @classmethod
    def from_json(cls, value: object, what: str = "checkpoint") -> CheckpointInfo:
        """From the API's (or a bundle's) JSON; BundleFormatError naming the field."""
        obj = json_object(value, what)
        return cls(json_text(obj, "note", what), _int(obj, "tree_size", what),
                   _b64(obj.get("root_hash"), f"{what} root_hash"),
                   _int(obj, "published_unix_ms", what), json_text(obj, "verifier_key", what))


@dataclass(frozen=True, slots=True)
class LogState:
    """`GET /v1/log`: the log's name and key, its size, its latest checkpoint."""

    origin: str
    verifier_key: str
    tree_size: int
    checkpoint: CheckpointInfo | None

    def as_json(self) -> dict[str, Any]:
        """As `GET /v1/log` answers."""
        return {"origin": self.origin, "verifier_key": self.verifier_key,
                "tree_size": self.tree_size,
                "checkpoint": None if self.checkpoint is None else self.checkpoint.as_json()}

    @classmethod
    def from_json(cls, value: object) -> LogState:
        """From the API's JSON."""
        obj = json_object(value, "log")
        latest = obj.get("checkpoint")
        return cls(json_text(obj, "origin", "log"), json_text(obj, "verifier_key", "log"),
                   _int(obj, "tree_size", "log"),
                   None if latest is None else CheckpointInfo.from_json(latest, "log checkpoint"))


@dataclass(frozen=True, slots=True)
class CollectorKeyInfo:
    """An enrolled public key of a collector."""

    key_id: str
    public_key: bytes
    enrolled_unix_ms: int

    @classmethod
    def of(cls, key: CollectorKey) -> CollectorKeyInfo:
        """An enrolled key as the ledger keeps it."""
        return cls(key.key_id, key.public_key, key.enrolled_unix_ms)

    def as_json(self) -> dict[str, Any]:
        """As `GET /v1/collectors` answers."""
        return {"key_id": self.key_id, "public_key": b64text(self.public_key),
                "enrolled_unix_ms": self.enrolled_unix_ms}


@dataclass(frozen=True, slots=True)
class CollectorInfo:
    """A collector the gateway knows: its plant, chain head and keys, oldest first."""

    collector_id: str
    plant_id: str | None
    chain_head: int
    keys: tuple[CollectorKeyInfo, ...]

    def as_json(self) -> dict[str, Any]:
        """As `GET /v1/collectors` answers."""
        return {"collector_id": self.collector_id, "plant_id": self.plant_id,
                "chain_head": self.chain_head, "keys": [k.as_json() for k in self.keys]}

    @classmethod
    def from_json(cls, value: object) -> CollectorInfo:
        """From the API's (or a bundle's) JSON."""
        obj = json_object(value, "collector")
        collector_id = json_text(obj, "collector_id", "collector")
        what = f"collector {collector_id}"
        head = obj.get("chain_head")
        # the head as a sequence number, or an object that carries one
        head_sequence = _int(json_object(head, what), "sequence", f"{what} chain_head") if isinstance(
            head, dict) else _int(obj, "chain_head", what)
        plant = obj.get("plant_id")
        if plant is not None and not isinstance(plant, str):
            raise BundleFormatError(f"{what}: 'plant_id' must be a string or null")
        raw_keys = obj.get("keys")
        if not isinstance(raw_keys, list):
            raise BundleFormatError(f"{what}: 'keys' must be a list")
        keys = []
        for index, item in enumerate(raw_keys):
            key = json_object(item, f"{what} key {index}")
            keys.append(CollectorKeyInfo(json_text(key, "key_id", f"{what} key {index}"),
                                         _b64(key.get("public_key"), f"{what} key {index} public_key"),
                                         _int(key, "enrolled_unix_ms", f"{what} key {index}")))
        return cls(collector_id, plant, head_sequence, tuple(keys))


@dataclass(frozen=True, slots=True)
class BlockLine:
    """One signed block as the API streams it and a bundle keeps it (one ndjson line): the exact
    signed bytes, and its leaf in the log (None until integrated)."""

    sequence: int
    leaf_index: int | None
    payload: bytes
    signature: bytes
    key_id: str

    def as_json(self) -> dict[str, Any]:
        """The line's object."""
        return {"sequence": self.sequence, "leaf_index": self.leaf_index,
                "payload": b64text(self.payload), "signature": b64text(self.signature),
                "key_id": self.key_id}

    def line(self) -> bytes:
        """The ndjson line, newline-terminated."""
        return json.dumps(self.as_json(), separators=(",", ":")).encode() + b"\n"

    @classmethod
    def from_json(cls, value: object, what: str = "block") -> BlockLine:
        """From one parsed line; BundleFormatError naming the field."""
        obj = json_object(value, what)
        return cls(_int(obj, "sequence", what), _opt_int(obj, "leaf_index", what),
                   _b64(obj.get("payload"), f"{what} payload"),
                   _b64(obj.get("signature"), f"{what} signature"), json_text(obj, "key_id", what))


def parse_inclusion_proof(value: object, what: str = "proof") -> InclusionProof:
    """An inclusion proof from its JSON (`InclusionProof.as_json`); BundleFormatError otherwise."""
    obj = json_object(value, what)
    return InclusionProof(json_text(obj, "collector_id", what), _int(obj, "sequence", what),
                          _int(obj, "leaf_index", what), _int(obj, "tree_size", what),
                          _hashes(obj.get("hashes"), what))

