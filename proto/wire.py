"""Build, sign, hash and verify blocks exactly as DESIGN.md's wire contract says.

The rule every side applies (and `docs/verifying.md` states for outside verifiers):

* block hash  = SHA-256(payload)
* signature   = Ed25519 over `b"stackline/v1/block\\x00" + payload`, checked with libsodium's
  `crypto_sign_open` (PyNaCl): strict, canonical-S, small-order public keys refused
* key id      = first 16 hex digits of SHA-256(raw 32-byte public key)
* public keys are accepted at enrolment only when libsodium's `crypto_core_ed25519_is_valid_point`
  holds (canonical encoding, on the main subgroup, not of small order)
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import nacl.bindings
import nacl.exceptions
import nacl.signing
from google.protobuf.message import DecodeError

from proto.errors import UnacceptableKeyError, VerificationError
from proto.stackline.v1 import stackline_pb2 as pb

__all__ = [
    "FLAG_LETTERS",
    "GENESIS_HASH",
    "SIGNATURE_CONTEXT",
    "BlockDraft",
    "ReadingValue",
    "Signer",
    "Verifier",
    "block_hash",
    "check_public_key",
    "decode_block",
    "encode_block",
    "key_id_of",
    "sign_payload",
]

SIGNATURE_CONTEXT = b"stackline/v1/block\x00"
GENESIS_HASH = bytes(32)
HASH_BYTES = 32
SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32
MAX_SEQUENCE = 2**63 - 1  # what every ledger's signed 64-bit integer column holds


def block_hash(payload: bytes) -> bytes:
    """SHA-256 of the exact payload bytes."""
    return hashlib.sha256(payload).digest()


def key_id_of(public_key: bytes) -> str:
    """First 16 hex digits of SHA-256 of the raw 32-byte public key."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def check_public_key(public_key: bytes) -> None:
    """Refuse a key that the verification rule does not accept; raise UnacceptableKeyError."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise UnacceptableKeyError(
            f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes, this one is {len(public_key)}"
        )
    if not nacl.bindings.crypto_core_ed25519_is_valid_point(public_key):
        raise UnacceptableKeyError(
            "public key is not a canonical point of the main subgroup (small-order or "
            "non-canonical keys are refused at enrolment)"
        )


# the HJ 212-2017 data flag of each quality code (stackline.v1.Quality)
FLAG_LETTERS: dict[int, str] = {
    pb.QUALITY_NORMAL: "N",
    pb.QUALITY_CALIBRATION: "C",
    pb.QUALITY_MAINTENANCE: "M",
    pb.QUALITY_FAULT: "D",
    pb.QUALITY_COMM_LOSS: "B",
    pb.QUALITY_STOPPED: "F",
    pb.QUALITY_OVER_RANGE: "T",
    pb.QUALITY_MANUAL: "S",
}

@dataclass(frozen=True, slots=True)
class ReadingValue:
    """One decoded reading, ready to go into a block."""

    point_id: str
    time_unix_ms: int
    value: float
    quality: int
    raw_registers: tuple[int, ...] = ()
    increment: float | None = None  # totalizers only, see stackline.proto
    counter_event: int = pb.COUNTER_EVENT_UNSPECIFIED
    text: str = ""  # string points only


@dataclass(frozen=True, slots=True)
class BlockDraft:
    """Everything a block holds except the chain position, which the buffer assigns."""

    collector_id: str
    window_start_unix_ms: int
    window_end_unix_ms: int
    readings: Sequence[ReadingValue]
    config_digest: bytes
    kind: int = pb.BLOCK_KIND_READINGS
    config_document: bytes = b""


def encode_block(draft: BlockDraft, *, sequence: int, previous_hash: bytes) -> bytes:
    """Serialize a block once; these bytes are what gets signed, sent, stored and verified."""
    if not 1 <= sequence <= MAX_SEQUENCE:
        raise ValueError(f"sequence numbers run from 1 to {MAX_SEQUENCE}")
    if len(previous_hash) != HASH_BYTES:
        raise ValueError("previous_hash must be 32 bytes")
    block = pb.Block(
        collector_id=draft.collector_id,
        sequence=sequence,
        previous_hash=previous_hash,
        window_start_unix_ms=draft.window_start_unix_ms,
        window_end_unix_ms=draft.window_end_unix_ms,
        config_digest=draft.config_digest,
        kind=draft.kind,  # type: ignore[arg-type]  # an int from the same enum
        config_document=draft.config_document,
    )
    add = block.readings.add
    for reading in draft.readings:
        add(
            point_id=reading.point_id,
            time_unix_ms=reading.time_unix_ms,
            value=reading.value,
            quality=reading.quality,
            raw_registers=reading.raw_registers,
            increment=reading.increment,
            counter_event=reading.counter_event,
            text=reading.text,
        )
    return block.SerializeToString()


_INFINITY_BYTES: Final = (struct.pack("<d", math.inf), struct.pack("<d", -math.inf))
"""How a double of +-infinity is encoded on the wire (a reading's value is a double: fixed 8 bytes,
little-endian). A payload holding neither byte string cannot carry an infinite reading, so
`decode_block` only looks at each reading when one occurs (a substring search in C instead of a
Python loop over every reading)."""


def decode_block(payload: bytes) -> pb.Block:
    """Parse payload bytes into a Block; raise VerificationError('malformed_block') if they are not one."""
    block = pb.Block()
    try:
        block.ParseFromString(payload)
    except DecodeError as exc:
        raise VerificationError("malformed_block", f"payload is not a stackline.v1.Block: {exc}") from exc
    if not 1 <= block.sequence <= MAX_SEQUENCE:
        raise VerificationError("malformed_block",
                                f"sequence must be between 1 and {MAX_SEQUENCE}")
    if len(block.previous_hash) != HASH_BYTES:
        raise VerificationError(
            "malformed_block", f"previous_hash is {len(block.previous_hash)} bytes, not 32"
        )
    if not block.collector_id:
        raise VerificationError("malformed_block", "collector_id is empty")
    if _INFINITY_BYTES[0] in payload or _INFINITY_BYTES[1] in payload:
        for reading in block.readings:  # rare: only when the bytes of an infinity occur at all
            if math.isinf(reading.value):
                raise VerificationError("malformed_block", f"reading {reading.point_id} is infinite")
    return block


def sign_payload(signing_key: nacl.signing.SigningKey, payload: bytes) -> bytes:
    """Ed25519 signature over the context-prefixed payload."""
    return signing_key.sign(SIGNATURE_CONTEXT + payload).signature


class Signer:
    """Signs block payloads with one collector key."""

    def __init__(self, *, signing_key: nacl.signing.SigningKey) -> None:
        self._signing_key = signing_key
        self.public_key = bytes(signing_key.verify_key)
        self.key_id = key_id_of(self.public_key)

    def __repr__(self) -> str:
        return f"Signer(key_id={self.key_id!r})"

    def envelope(self, payload: bytes) -> pb.SignedBlock:
        """Wrap a payload in a signed envelope."""
        return pb.SignedBlock(
            payload=payload,
            signature=sign_payload(self._signing_key, payload),
            key_id=self.key_id,
        )


class Verifier:
    """Checks envelopes against one public key, by the strict libsodium rule."""

    def __init__(self, *, public_key: bytes) -> None:
        check_public_key(public_key)
        self.public_key = public_key
        self.key_id = key_id_of(public_key)
        self._verify_key = nacl.signing.VerifyKey(public_key)

    def __repr__(self) -> str:
        return f"Verifier(key_id={self.key_id!r})"

    def verify(self, payload: bytes, signature: bytes) -> None:
        """Raise VerificationError('bad_signature') unless the signature holds for this key."""
        if len(signature) != SIGNATURE_BYTES:
            raise VerificationError(
                "bad_signature", f"signature is {len(signature)} bytes, not {SIGNATURE_BYTES}"
            )
        try:
            self._verify_key.verify(SIGNATURE_CONTEXT + payload, signature)
        except nacl.exceptions.BadSignatureError as exc:
            raise VerificationError(
                "bad_signature", f"Ed25519 signature does not verify with key {self.key_id}"
            ) from exc
