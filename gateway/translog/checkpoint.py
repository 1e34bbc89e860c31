"""Checkpoints of the transparency log, as C2SP signed notes. Pure: bytes and keys in, text out.

A checkpoint (C2SP tlog-checkpoint) is the note text

    <origin>\\n<tree size, decimal>\\n<root hash, standard base64>\\n

signed as a C2SP signed note: the text, a blank line, and one line per signature

    — <key name> <base64(key id (4 bytes) || Ed25519 signature (64 bytes))>\\n

where the line starts with U+2014 EM DASH and a space, the signature covers the text including
its final newline, and key id = SHA-256(key name || 0x0A || 0x01 || public key)[:4] (0x01: the
Ed25519 signature type). A verifier key is written `<name>+<hex key id>+<base64(0x01 || public
key)>`. Verification follows the spec: signature lines from unknown keys are ignored; a line from
the verifier's key that does not verify rejects the note. Ed25519 is PyNaCl's (libsodium's
strict rules), as everywhere in Stackline.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

from gateway.errors import GatewayError

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "key_id",
    "open_note",
    "parse_checkpoint",
    "parse_verifier_key",
    "sign_note",
    "verifier_key",
]

ED25519_TYPE = b"\x01"
EM_DASH = "\u2014"
MAX_SIGNATURES = 100
HASH_BYTES = 32


class CheckpointError(GatewayError):
    """A note or checkpoint that does not parse or does not verify; the message says which."""


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte C2SP key id of an Ed25519 key under `name`."""
    _check_name(name)
    return hashlib.sha256(name.encode() + b"\n" + ED25519_TYPE + public_key).digest()[:4]


def verifier_key(name: str, public_key: bytes) -> str:
    """The text a verifier is given: `<name>+<hex key id>+<base64(0x01 || key)>`."""
    return f"{name}+{key_id(name, public_key).hex()}+{base64.b64encode(ED25519_TYPE + public_key).decode()}"


def parse_verifier_key(text: str) -> tuple[str, bytes]:
    """(name, public key) from a verifier key; CheckpointError when it is not one."""
    parts = text.strip().split("+", 2)  # the base64 key may itself hold '+'
    if len(parts) != 3:
        raise CheckpointError(f"a verifier key is name+keyid+key, not {text!r}")
    name, hex_id, encoded = parts
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise CheckpointError(f"verifier key of {name!r}: the key is not base64") from exc
    if len(raw) != 1 + HASH_BYTES or raw[:1] != ED25519_TYPE:
        raise CheckpointError(f"verifier key of {name!r}: not an Ed25519 key (type 0x01, 32 bytes)")
    if key_id(name, raw[1:]).hex() != hex_id.lower():
        raise CheckpointError(f"verifier key of {name!r}: its key id does not match the key")
    return name, raw[1:]


def _check_name(name: str) -> None:
    if not name or "+" in name or any(c.isspace() for c in name):
        raise CheckpointError(f"a key name is non-empty, without spaces or '+': {name!r}")


def sign_note(text: str, *, name: str, signing_key: nacl.signing.SigningKey) -> str:
    """The signed note of `text` (which must end in a newline and hold no blank line)."""
    if not text.endswith("\n") or "\n\n" in text or not text.strip():
        raise CheckpointError("a note's text ends with a newline and has no blank line")
    signature = signing_key.sign(text.encode()).signature
    blob = key_id(name, bytes(signing_key.verify_key)) + signature
    return f"{text}\n{EM_DASH} {name} {base64.b64encode(blob).decode()}\n"


def open_note(note: str, *, name: str, public_key: bytes) -> str:
    """The text of a signed note after checking its signature by (`name`, `public_key`);
    CheckpointError naming what is wrong otherwise."""
    split = note.rfind("\n\n")
    if split < 0 or not note.endswith("\n"):
        raise CheckpointError("not a signed note: no blank line before the signatures")
    text, lines = note[:split + 1], note[split + 2:].splitlines()
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointError(f"more than {MAX_SIGNATURES} signature lines")
    wanted = key_id(name, public_key)
    for line in lines:
        prefix = f"{EM_DASH} "
        if not line.startswith(prefix):
            raise CheckpointError(f"a signature line starts with an em dash and a space: {line[:40]!r}")
        signer, _, encoded = line[len(prefix):].partition(" ")
        try:
            blob = base64.b64decode(encoded, validate=True)
        except binascii.Error as exc:
            raise CheckpointError(f"signature of {signer!r} is not base64") from exc
        if len(blob) < 5:
            raise CheckpointError(f"signature of {signer!r} is too short")
        if signer != name or blob[:4] != wanted:
            continue  # another key's signature (a witness, say): not ours to judge
        try:
            nacl.signing.VerifyKey(public_key).verify(text.encode(), blob[4:])
        except (nacl.exceptions.BadSignatureError, ValueError) as exc:
            raise CheckpointError(f"the signature of {name} does not verify") from exc
        return text
    raise CheckpointError(f"no signature by {name} (key id {wanted.hex()}) on this note")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log's state: its origin, how many entries, and the Merkle root over them."""

    origin: str
    size: int
    root_hash: bytes

    def text(self) -> str:
        """The checkpoint's note text (C2SP tlog-checkpoint)."""
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root_hash).decode()}\n"

    def sign(self, *, name: str, signing_key: nacl.signing.SigningKey) -> str:
        """The signed checkpoint note."""
        return sign_note(self.text(), name=name, signing_key=signing_key)


def parse_checkpoint(note: str, *, name: str, public_key: bytes) -> Checkpoint:
    """A verified checkpoint from its signed note; CheckpointError naming the problem."""
    text = open_note(note, name=name, public_key=public_key)
    lines = text.split("\n")[:-1]
    if len(lines) < 3:
        raise CheckpointError("a checkpoint has an origin, a size and a root hash")
    origin, size_text, root_text = lines[0], lines[1], lines[2]
    if not origin:
        raise CheckpointError("a checkpoint's origin is empty")
    if not size_text.isdigit() or (size_text != "0" and size_text.startswith("0")):
        raise CheckpointError(f"a checkpoint's size is a decimal number, not {size_text!r}")
    try:
        root = base64.b64decode(root_text, validate=True)
    except binascii.Error as exc:
        raise CheckpointError("a checkpoint's root hash is not base64") from exc
    if len(root) != HASH_BYTES:
        raise CheckpointError(f"a checkpoint's root hash is {HASH_BYTES} bytes, not {len(root)}")
    return Checkpoint(origin, int(size_text), root)
