"""Verifying the transparency log: RFC 9162 (RFC 6962) hashing and proof verification, and C2SP
signed notes and checkpoints. Pure: bytes, text and keys in, values out.

The one copy of these rules: the gateway builds its log with them (`gateway/translog`) and checks
evidence bundles; the collector checks the receipts in its acks (`collector/receipts.py`).

Merkle terms follow RFC 9162 section 2.1: D[n] is the list of n leaf inputs, MTH the Merkle Tree
Hash, PATH an inclusion proof (audit path), PROOF a consistency proof. RFC 9162's `first` /
`second` tree sizes are `old_size` / `new_size` here.

A checkpoint (C2SP tlog-checkpoint) is the note text

    <origin>\\n<tree size, decimal>\\n<root hash, standard base64>\\n

(more lines may follow) signed as a C2SP signed note: the text, a blank line, and one line per
signature

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
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import nacl.exceptions
import nacl.signing

from proto.errors import StacklineWireError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_CHECKPOINT_SIZE",
    "MAX_SIGNATURES",
    "Checkpoint",
    "CheckpointError",
    "ProofError",
    "ProofFailure",
    "consistency_ranges",
    "inclusion_ranges",
    "key_id",
    "leaf_hash",
    "node_hash",
    "open_note",
    "parse_checkpoint",
    "parse_verifier_key",
    "read_checkpoint_unverified",
    "root_from_leaves",
    "sign_note",
    "verifier_key",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""Bytes in a SHA-256 hash, and so in every leaf, node, root and proof element."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}) = HASH(), the root of the empty tree (RFC 9162 section 2.1.1)."""

MAX_CHECKPOINT_SIZE = 2**64 - 1
"""Largest tree size a checkpoint may state: an unsigned 64-bit number, as in the wire's
`uint64` fields and the Go implementations of tlog-checkpoint."""

MAX_SIGNATURES = 100
"""Signature lines a note may carry (the log's and its witnesses')."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_ED25519_TYPE = b"\x01"
_EM_DASH = "\u2014"
_SHOWN = 40
"""Characters of a hostile input quoted in an error message."""


# --- Errors ------------------------------------------------------------------------------------


class ProofFailure(StrEnum):
    """Why a proof was rejected; stable values for verdicts and API answers."""

    INVALID_SIZE = "invalid_size"
    """A tree size below zero."""
    INDEX_OUT_OF_RANGE = "index_out_of_range"
    """The leaf index is not below the tree size (RFC 9162 section 2.1.3.2 step 1)."""
    SIZE_DECREASED = "size_decreased"
    """The old tree is larger than the new one."""
    EMPTY_OLD_TREE = "empty_old_tree"
    """A consistency proof from a tree of size 0: RFC 9162 section 2.1.4.1 defines none."""
    PROOF_NOT_EMPTY = "proof_not_empty"
    """Equal tree sizes need no proof, yet one was given."""
    EMPTY_PROOF = "empty_proof"
    """A consistency proof with no hashes where one is needed (RFC 9162 section 2.1.4.2 step 1)."""
    BAD_HASH_LENGTH = "bad_hash_length"
    """A leaf hash, root or proof element that is not a 32-byte SHA-256 hash."""
    WRONG_PROOF_LENGTH = "wrong_proof_length"
    """More or fewer proof hashes than the tree sizes call for."""
    OLD_ROOT_MISMATCH = "old_root_mismatch"
    """A consistency proof that does not reproduce the old root."""
    ROOT_MISMATCH = "root_mismatch"
    """The proof does not lead to the (new) root it is checked against."""


class ProofError(StacklineWireError):
    """An inclusion or consistency proof that does not verify; `reason` says which rule failed."""

    def __init__(self, reason: ProofFailure, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class CheckpointError(StacklineWireError):
    """A note, checkpoint or verifier key that does not parse or does not verify; the message
    says which."""


# --- Hashing (RFC 9162 section 2.1.1) ------------------------------------------------------------


def leaf_hash(data: bytes) -> bytes:
    """HASH(0x00 || data): the hash of one leaf input (RFC 9162 section 2.1.1)."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """HASH(0x01 || left || right): an interior node (RFC 9162 section 2.1.1)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def root_from_leaves(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) from the n leaf hashes (RFC 9162 section 2.1.1); the empty tree gives HASH().

    Computed bottom-up, carrying an odd last node up unchanged, which equals the RFC's split at
    the largest power of two below n at every level.
    """
    if not leaf_hashes:
        return EMPTY_ROOT
    level = list(leaf_hashes)
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


# --- Tree shape: which subtrees a proof is made of -----------------------------------------------


def _split(size: int) -> int:
    """k, the largest power of two smaller than size (size >= 2; RFC 9162 section 2.1.1)."""
    return 1 << ((size - 1).bit_length() - 1)


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose MTHs make up PATH(index, D[size]), bottom-up (RFC 9162 2.1.3.1),
    for 0 <= index < size.

    PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n]) for m < k, and
    PATH(m - k, D[k:n]) : MTH(D[0:k]) otherwise; walked top-down here, then reversed.
    """
    ranges: list[tuple[int, int]] = []
    start, m, n = 0, index, size
    while n > 1:
        k = _split(n)
        if m < k:
            ranges.append((start + k, start + n))
            n = k
        else:
            ranges.append((start, start + k))
            start, m, n = start + k, m - k, n - k
    ranges.reverse()
    return ranges


def consistency_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose MTHs make up PROOF(old_size, D[new_size]), bottom-up (RFC 9162
    section 2.1.4.1), for 0 < old_size <= new_size.

    SUBPROOF(m, D[m], true) = {}; SUBPROOF(m, D[m], false) = {MTH(D[m])};
    for m < n: SUBPROOF(m, D[0:k], b) : MTH(D[k:n]) if m <= k,
    else SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k]).
    """
    ranges: list[tuple[int, int]] = []
    start, m, n, whole_old_tree = 0, old_size, new_size, True
    while m != n:
        k = _split(n)
        if m <= k:
            ranges.append((start + k, start + n))
            n = k
        else:
            ranges.append((start, start + k))
            start, m, n, whole_old_tree = start + k, m - k, n - k, False
    if not whole_old_tree:
        ranges.append((start, start + n))
    ranges.reverse()
    return ranges


# --- Verification (RFC 9162 sections 2.1.3.2 and 2.1.4.2) ----------------------------------------


def _check_hash(what: str, value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(ProofFailure.BAD_HASH_LENGTH, f"{what} is {len(value)} bytes, want {HASH_SIZE}")


def verify_inclusion(*, leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes],
                     root: bytes) -> None:
    """Check that `leaf_hash` is leaf `index` of the tree of `size` leaves with `root`.

    The algorithm of RFC 9162 section 2.1.3.2, step by step; raises `ProofError` naming the
    first rule that fails (returns None when the proof holds). Hash lengths are checked first so
    that an empty or truncated hash can never pass as a root.
    """
    if size < 0:
        raise ProofError(ProofFailure.INVALID_SIZE, f"tree size {size} is negative")
    # Step 1: leaf_index must be below tree_size (so an empty tree includes nothing).
    if not 0 <= index < size:
        raise ProofError(ProofFailure.INDEX_OUT_OF_RANGE,
                         f"leaf index {index} is outside a tree of size {size}")
    _check_hash("leaf hash", leaf_hash)
    _check_hash("root", root)
    for position, element in enumerate(proof):
        _check_hash(f"proof element {position}", element)

    want = len(inclusion_ranges(index, size))
    fn, sn = index, size - 1  # step 2
    r = leaf_hash  # step 3
    for p in proof:  # step 4
        if sn == 0:
            raise ProofError(ProofFailure.WRONG_PROOF_LENGTH,
                             f"{len(proof)} hashes, want {want} for leaf {index} of {size}")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    # Step 5.
    if sn != 0:
        raise ProofError(ProofFailure.WRONG_PROOF_LENGTH,
                         f"{len(proof)} hashes, want {want} for leaf {index} of {size}")
    if r != root:
        raise ProofError(ProofFailure.ROOT_MISMATCH,
                         f"proof for leaf {index} of {size} leads to {r.hex()}, not {root.hex()}")


def verify_consistency(*, old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> None:
    """Check that the tree of `new_size` leaves with `new_root` extends the one of `old_size`
    with `old_root`; raises `ProofError` naming the first rule that fails.

    For 0 < old_size < new_size this is RFC 9162 section 2.1.4.2, step by step. The RFC defines
    proofs only for 0 < first < second, so the edges are rules of this project, the same as
    the transparency-dev reference vectors: equal sizes need an empty proof and equal roots
    (and size 0 the empty-tree root, HASH()); a proof from size 0 to a larger tree is refused
    (it would prove nothing).
    """
    if old_size < 0 or new_size < 0:
        raise ProofError(ProofFailure.INVALID_SIZE, f"tree sizes {old_size} and {new_size}: one is negative")
    if old_size > new_size:
        raise ProofError(ProofFailure.SIZE_DECREASED,
                         f"old size {old_size} is larger than new size {new_size}")
    if old_size == new_size:
        if proof:
            raise ProofError(ProofFailure.PROOF_NOT_EMPTY,
                             f"{len(proof)} proof hashes for two trees of the same size {old_size}")
        if old_size == 0 and (old_root != EMPTY_ROOT or new_root != EMPTY_ROOT):
            raise ProofError(ProofFailure.ROOT_MISMATCH,
                             f"a tree of size 0 has root {EMPTY_ROOT.hex()} (SHA-256 of nothing)")
        if old_root != new_root:
            raise ProofError(ProofFailure.ROOT_MISMATCH,
                             f"two trees of size {old_size} with different roots")
        return
    if old_size == 0:
        raise ProofError(ProofFailure.EMPTY_OLD_TREE,
                         f"no consistency proof from an empty tree (to size {new_size})")
    # Step 1.
    if not proof:
        raise ProofError(ProofFailure.EMPTY_PROOF, f"empty proof from size {old_size} to {new_size}")
    _check_hash("old root", old_root)
    _check_hash("new root", new_root)
    for position, element in enumerate(proof):
        _check_hash(f"proof element {position}", element)

    want = len(consistency_ranges(old_size, new_size))
    wrong_length = ProofError(ProofFailure.WRONG_PROOF_LENGTH,
                              f"{len(proof)} hashes, want {want} from size {old_size} to {new_size}")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # step 2: first is an exact power of 2
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1  # step 3
    while fn & 1:  # step 4
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]  # step 5
    for c in path[1:]:  # step 6
        if sn == 0:
            raise wrong_length
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    # Step 7.
    if sn != 0:
        raise wrong_length
    if fr != old_root:
        raise ProofError(ProofFailure.OLD_ROOT_MISMATCH,
                         f"proof leads to old root {fr.hex()} at size {old_size}, not {old_root.hex()}")
    if sr != new_root:
        raise ProofError(ProofFailure.ROOT_MISMATCH,
                         f"proof leads to new root {sr.hex()} at size {new_size}, not {new_root.hex()}")


# --- Keys and signed notes (C2SP signed-note) ------------------------------------------------------


def _check_name(name: str) -> None:
    if not name or "+" in name or any(c.isspace() for c in name):
        raise CheckpointError(f"a key name is non-empty, without spaces or '+': {name[:_SHOWN]!r}")


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte C2SP key id of an Ed25519 key under `name`."""
    _check_name(name)
    return hashlib.sha256(name.encode() + b"\n" + _ED25519_TYPE + public_key).digest()[:4]


def verifier_key(name: str, public_key: bytes) -> str:
    """The text a verifier is given: `<name>+<hex key id>+<base64(0x01 || key)>`."""
    encoded = base64.b64encode(_ED25519_TYPE + public_key).decode()
    return f"{name}+{key_id(name, public_key).hex()}+{encoded}"


def parse_verifier_key(text: str) -> tuple[str, bytes]:
    """(name, public key) from a verifier key; CheckpointError when it is not one."""
    parts = text.strip().split("+", 2)  # the base64 key may itself hold '+'
    if len(parts) != 3:
        raise CheckpointError(f"a verifier key is name+keyid+key, not {text[:_SHOWN]!r}")
    name, hex_id, encoded = parts
    _check_name(name)
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:  # ValueError: characters outside ASCII
        raise CheckpointError(f"verifier key of {name!r}: the key is not base64") from exc
    if len(raw) != 1 + HASH_SIZE or raw[:1] != _ED25519_TYPE:
        raise CheckpointError(f"verifier key of {name!r}: not an Ed25519 key (type 0x01, 32 bytes)")
    if key_id(name, raw[1:]).hex() != hex_id.lower():
        raise CheckpointError(f"verifier key of {name!r}: its key id does not match the key")
    return name, raw[1:]


def sign_note(text: str, *, name: str, signing_key: nacl.signing.SigningKey) -> str:
    """The signed note of `text` (which must end in a newline and hold no blank line)."""
    if not text.endswith("\n") or "\n\n" in text or not text.strip():
        raise CheckpointError("a note's text ends with a newline and has no blank line")
    signature = signing_key.sign(text.encode()).signature
    blob = key_id(name, bytes(signing_key.verify_key)) + signature
    return f"{text}\n{_EM_DASH} {name} {base64.b64encode(blob).decode()}\n"


def _split_note(note: str) -> tuple[str, list[str]]:
    """A signed note's text (with its final newline) and its signature lines, unchecked."""
    split = note.rfind("\n\n")
    if split < 0 or not note.endswith("\n"):
        raise CheckpointError("not a signed note: no blank line before the signatures")
    return note[:split + 1], note[split + 2:].splitlines()


def open_note(note: str, *, name: str, public_key: bytes) -> str:
    """The text of a signed note after checking its signature by (`name`, `public_key`);
    CheckpointError naming what is wrong otherwise."""
    text, lines = _split_note(note)
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointError(f"more than {MAX_SIGNATURES} signature lines")
    wanted = key_id(name, public_key)
    prefix = f"{_EM_DASH} "
    signed = False
    for line in lines:
        if not line.startswith(prefix):
            raise CheckpointError(f"a signature line starts with an em dash and a space: {line[:_SHOWN]!r}")
        signer, _, encoded = line[len(prefix):].partition(" ")
        try:
            blob = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:  # ValueError: characters outside ASCII
            raise CheckpointError(f"signature of {signer[:_SHOWN]!r} is not base64") from exc
        if len(blob) < 5:
            raise CheckpointError(f"signature of {signer[:_SHOWN]!r} is too short")
        if signer != name or blob[:4] != wanted:
            continue  # another key's signature (a witness, say): not ours to judge
        try:
            nacl.signing.VerifyKey(public_key).verify(text.encode(), blob[4:])
        except (nacl.exceptions.BadSignatureError, ValueError) as exc:
            raise CheckpointError(f"the signature of {name} does not verify") from exc
        signed = True  # and read on: any other line of this key that does not verify rejects it
    if not signed:
        raise CheckpointError(f"no signature by {name} (key id {wanted.hex()}) on this note")
    return text


# --- Checkpoints (C2SP tlog-checkpoint) ------------------------------------------------------------


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


def _checkpoint_from_text(text: str) -> Checkpoint:
    lines = text.split("\n")[:-1]
    if len(lines) < 3:
        raise CheckpointError("a checkpoint has an origin, a size and a root hash")
    origin, size_text, root_text = lines[0], lines[1], lines[2]
    if not origin:
        raise CheckpointError("a checkpoint's origin is empty")
    # ASCII digits only (str.isdigit takes other scripts' digits too), no leading zero, and
    # checked for length before int() ever sees it
    if (not (size_text.isascii() and size_text.isdigit())
            or (size_text != "0" and size_text.startswith("0"))):
        raise CheckpointError(f"a checkpoint's size is a decimal number, not {size_text[:_SHOWN]!r}")
    if len(size_text) > len(str(MAX_CHECKPOINT_SIZE)) or int(size_text) > MAX_CHECKPOINT_SIZE:
        raise CheckpointError(f"a checkpoint's size {size_text[:_SHOWN]} is above 2^64 - 1")
    try:
        root = base64.b64decode(root_text, validate=True)
    except (binascii.Error, ValueError) as exc:  # ValueError: characters outside ASCII
        raise CheckpointError("a checkpoint's root hash is not base64") from exc
    if len(root) != HASH_SIZE:
        raise CheckpointError(f"a checkpoint's root hash is {len(root)} bytes, not {HASH_SIZE}")
    return Checkpoint(origin, int(size_text), root)


def parse_checkpoint(note: str, *, name: str, public_key: bytes) -> Checkpoint:
    """A verified checkpoint from its signed note; CheckpointError naming the problem.

    The origin is not compared with `name`: a caller that expects a given log checks it."""
    return _checkpoint_from_text(open_note(note, name=name, public_key=public_key))


def read_checkpoint_unverified(note: str) -> Checkpoint:
    """The checkpoint a signed note states, its signatures NOT checked (when no key is known);
    CheckpointError when it is not a checkpoint note."""
    text, _ = _split_note(note)
    return _checkpoint_from_text(text)
