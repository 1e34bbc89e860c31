"""Checks on the gateway's transparency log, for receipts: C2SP signed checkpoint notes and
RFC 9162 inclusion and consistency proofs. Pure: text, bytes and keys in, values out.

The rules are those of DESIGN.md and docs/verifying.md: leaf hash = SHA-256(0x00 || payload),
node hash = SHA-256(0x01 || left || right); a checkpoint is the note text `<origin>\\n<tree
size>\\n<base64 root>\\n` (more lines may follow), signed as a C2SP signed note by an Ed25519 key
written `<name>+<hex key id>+<base64(0x01 || public key)>`, key id = SHA-256(name || 0x0A || 0x01
|| public key)[:4]. Signature lines of other keys are ignored; a line of the configured key that
does not verify rejects the note. Ed25519 is PyNaCl's (libsodium's strict rules).

The collector and the gateway never import each other, so this is the collector's own copy of
the checks the gateway's `gateway/translog` makes; the tests hold the two to the same answers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

from collector.errors import CheckpointInvalid, ProofInvalid, ReceiptError

__all__ = [
    "HASH_SIZE",
    "MAX_NOTE_BYTES",
    "MAX_PROOF_HASHES",
    "MAX_TREE_SIZE",
    "Checkpoint",
    "LogKey",
    "leaf_hash",
    "parse_log_key",
    "read_checkpoint",
    "verify_checkpoint",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
MAX_TREE_SIZE = 2**63 - 1
"""Largest tree size, leaf index or sequence the collector takes (what SQLite's integers hold)."""
MAX_PROOF_HASHES = 64
"""An audit path or consistency proof of any tree up to 2^64 leaves has fewer hashes than this."""
MAX_NOTE_BYTES = 16_384
"""Longest checkpoint note taken (room for dozens of witness signatures)."""
MAX_SIGNATURE_LINES = 100

_ED25519 = b"\x01"
_EM_DASH = "\u2014"


def leaf_hash(payload: bytes) -> bytes:
    """SHA-256(0x00 || payload): a block's leaf in the log."""
    return hashlib.sha256(b"\x00" + payload).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


# --- keys and notes -------------------------------------------------------------------------------


def _key_id(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + _ED25519 + public_key).digest()[:4]


@dataclass(frozen=True, slots=True)
class LogKey:
    """The gateway log's checkpoint key, as a C2SP verifier key names it."""

    name: str
    public_key: bytes

    @property
    def key_id(self) -> bytes:
        """The 4-byte C2SP key id."""
        return _key_id(self.name, self.public_key)

    @property
    def text(self) -> str:
        """The verifier key text, `<name>+<hex key id>+<base64(0x01 || key)>`."""
        encoded = base64.b64encode(_ED25519 + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{encoded}"


def parse_log_key(text: str) -> LogKey:
    """A C2SP Ed25519 verifier key; ReceiptError saying what is wrong otherwise."""
    parts = text.strip().split("+", 2)  # the base64 key may hold "+" itself
    if len(parts) != 3:
        raise ReceiptError("a log verifier key is <name>+<hex key id>+<base64 key>, as the gateway "
                           "logs it at start ('checkpoints verify with ...')")
    name, hex_id, encoded = parts
    if not name or any(c.isspace() for c in name):
        raise ReceiptError("the key name (before the first '+') is empty or has spaces")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise ReceiptError("the key (after the second '+') is not base64") from exc
    if len(raw) != 1 + HASH_SIZE or raw[:1] != _ED25519:
        raise ReceiptError("not an Ed25519 verifier key (type 0x01 and 32 bytes of key)")
    key = LogKey(name, raw[1:])
    if key.key_id.hex() != hex_id.lower():
        raise ReceiptError(f"the key id {hex_id!r} does not match the key (it would be "
                           f"{key.key_id.hex()}): the text was changed or cut")
    return key


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log's state as a checkpoint states it: origin, tree size, root hash."""

    origin: str
    size: int
    root: bytes


def _split_note(note: str) -> tuple[str, list[str]]:
    if len(note) > MAX_NOTE_BYTES or len(note.encode()) > MAX_NOTE_BYTES:
        raise CheckpointInvalid(f"the note is longer than {MAX_NOTE_BYTES} bytes")
    split = note.rfind("\n\n")
    if split < 0 or not note.endswith("\n"):
        raise CheckpointInvalid("not a signed note: no blank line before the signatures")
    return note[:split + 1], note[split + 2:].splitlines()


def _parse_text(text: str) -> Checkpoint:
    lines = text.split("\n")[:-1]
    if len(lines) < 3:
        raise CheckpointInvalid("a checkpoint has an origin, a tree size and a root hash")
    origin, size_text, root_text = lines[0], lines[1], lines[2]
    if not origin:
        raise CheckpointInvalid("the checkpoint's origin is empty")
    if not (size_text.isascii() and size_text.isdigit()) or (size_text != "0" and size_text[0] == "0"):
        raise CheckpointInvalid(f"the tree size is a decimal number, not {size_text[:30]!r}")
    if len(size_text) > 19 or int(size_text) > MAX_TREE_SIZE:
        raise CheckpointInvalid(f"the tree size {size_text[:30]} is out of range")
    try:
        root = base64.b64decode(root_text, validate=True)
    except binascii.Error as exc:
        raise CheckpointInvalid("the root hash is not base64") from exc
    if len(root) != HASH_SIZE:
        raise CheckpointInvalid(f"the root hash is {len(root)} bytes, not {HASH_SIZE}")
    return Checkpoint(origin, int(size_text), root)


def read_checkpoint(note: str) -> Checkpoint:
    """The checkpoint a note states, without checking any signature (no key configured)."""
    text, _ = _split_note(note)
    return _parse_text(text)


def verify_checkpoint(note: str, key: LogKey) -> Checkpoint:
    """The checkpoint of a note signed by `key`, with `key`'s name as its origin;
    CheckpointInvalid naming what is wrong otherwise."""
    text, lines = _split_note(note)
    if len(lines) > MAX_SIGNATURE_LINES:
        raise CheckpointInvalid(f"more than {MAX_SIGNATURE_LINES} signature lines")
    wanted = key.key_id
    signed = False
    for line in lines:
        if not line.startswith(f"{_EM_DASH} "):
            raise CheckpointInvalid(f"a signature line starts with an em dash: {line[:40]!r}")
        signer, _, encoded = line[2:].partition(" ")
        try:
            blob = base64.b64decode(encoded, validate=True)
        except binascii.Error as exc:
            raise CheckpointInvalid(f"the signature of {signer[:40]!r} is not base64") from exc
        if signer != key.name or blob[:4] != wanted:
            continue  # another key's signature (a witness, say): not this check's to judge
        try:
            nacl.signing.VerifyKey(key.public_key).verify(text.encode(), blob[4:])
        except (nacl.exceptions.BadSignatureError, ValueError) as exc:
            raise CheckpointInvalid(f"the signature of {key.name} does not verify") from exc
        signed = True
        break
    if not signed:
        raise CheckpointInvalid(f"no signature by {key.name} (key id {wanted.hex()}) on the note")
    checkpoint = _parse_text(text)
    if checkpoint.origin != key.name:
        raise CheckpointInvalid(f"the checkpoint's origin {checkpoint.origin[:80]!r} is not the "
                                f"configured log {key.name!r}")
    return checkpoint


# --- proofs (RFC 9162 sections 2.1.3.2 and 2.1.4.2) -------------------------------------------------


def _check_hashes(what: str, hashes: Sequence[bytes]) -> None:
    if len(hashes) > MAX_PROOF_HASHES:
        raise ProofInvalid(f"the {what} has {len(hashes)} hashes, more than any tree needs")
    for position, value in enumerate(hashes):
        if len(value) != HASH_SIZE:
            raise ProofInvalid(f"hash {position} of the {what} is {len(value)} bytes, not {HASH_SIZE}")


def verify_inclusion(*, leaf: bytes, index: int, size: int, proof: Sequence[bytes],
                     root: bytes) -> None:
    """Check that `leaf` is leaf `index` of the tree of `size` leaves with `root`; ProofInvalid
    naming the rule that fails otherwise."""
    if not 0 <= index < size:
        raise ProofInvalid(f"leaf index {index} is outside a tree of size {size}")
    _check_hashes("audit path", [leaf, root, *proof])
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofInvalid(f"the audit path is too long for leaf {index} of {size}")
        if fn & 1 or fn == sn:
            r = _node(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = _node(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofInvalid(f"the audit path is too short for leaf {index} of {size}")
    if r != root:
        raise ProofInvalid(f"the audit path of leaf {index} leads to {r.hex()[:16]}..., not the "
                           f"root {root.hex()[:16]}... of size {size}")


def verify_consistency(*, old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> None:
    """Check that the tree of `new_size` leaves with `new_root` extends the one of `old_size`
    with `old_root`; ProofInvalid naming the rule that fails otherwise. Equal sizes need equal
    roots and no proof; there is no proof from an empty tree."""
    if not 0 < old_size <= new_size:
        raise ProofInvalid(f"no consistency proof from size {old_size} to {new_size}")
    _check_hashes("consistency proof", [old_root, new_root, *proof])
    if old_size == new_size:
        if proof or old_root != new_root:
            raise ProofInvalid(f"two trees of size {old_size} with different roots or a proof")
        return
    if not proof:
        raise ProofInvalid(f"an empty consistency proof from size {old_size} to {new_size}")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # the old tree is a complete subtree: its root is the seed
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofInvalid(f"the consistency proof from {old_size} to {new_size} is too long")
        if fn & 1 or fn == sn:
            fr, sr = _node(c, fr), _node(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = _node(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofInvalid(f"the consistency proof from {old_size} to {new_size} is too short")
    if fr != old_root:
        raise ProofInvalid(f"the proof leads to root {fr.hex()[:16]}... at size {old_size}, not "
                           f"{old_root.hex()[:16]}...")
    if sr != new_root:
        raise ProofInvalid(f"the proof leads to root {sr.hex()[:16]}... at size {new_size}, not "
                           f"{new_root.hex()[:16]}...")
