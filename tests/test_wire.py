"""The wire contract (DESIGN.md, "Wire contract"): hashing, signing, key ids, block codec, the
verification rule, the chain rules, key files, and drift of the generated protobuf code.

Where the contract fixes a rule, the test computes the expected value independently (hashlib,
PyNaCl) instead of round-tripping through the code under test.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import shutil
import stat
import struct
from pathlib import Path
from typing import Any

import nacl.bindings
import nacl.exceptions
import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import proto.codegen
from proto import wire
from proto.chain import ChainHead, Placement, StoredBlock, place_block
from proto.errors import KeyFileError, UnacceptableKeyError, VerificationError
from proto.keys import generate_key_files, load_public_key, load_signing_key
from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import (
    GENESIS_HASH,
    BlockDraft,
    ReadingValue,
    Signer,
    Verifier,
    block_hash,
    check_public_key,
    decode_block,
    encode_block,
    key_id_of,
)
from tests.conftest import SHARED_VECTORS

CONTEXT = b"stackline/v1/block\x00"  # written out here, not imported: the test pins the rule

# RFC 8032, section 7.1, TEST 1: a fixed seed and the public key it must give.
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")

# Small-order points in their canonical encodings (the eight-torsion subgroup of edwards25519).
IDENTITY = bytes.fromhex("0100000000000000000000000000000000000000000000000000000000000000")
ORDER_2 = bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f")
ORDER_4 = bytes(32)  # y = 0
# y = 1 + p: a non-canonical encoding (of the identity), y >= p = 2**255 - 19.
NON_CANONICAL_IDENTITY = bytes.fromhex("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f")


def _draft(collector_id: str = "plant-c1", values: tuple[float, ...] = (1.5, 2.25)) -> BlockDraft:
    readings = [
        ReadingValue(f"plant/dev/p{index}", 1_700_000_000_000 + index, value, pb.QUALITY_NORMAL,
                     (index, 0xFFFF))
        for index, value in enumerate(values)
    ]
    return BlockDraft(
        collector_id=collector_id,
        window_start_unix_ms=1_700_000_000_000,
        window_end_unix_ms=1_700_000_001_000,
        readings=readings,
        config_digest=hashlib.sha256(b"config").digest(),
    )


@pytest.fixture
def signing_key() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(RFC8032_SEED)


@pytest.fixture
def payload() -> bytes:
    return encode_block(_draft(), sequence=1, previous_hash=GENESIS_HASH)


# --- hash, signature, key id -------------------------------------------------------------------


def test_block_hash_is_sha256_of_the_payload_bytes(payload: bytes) -> None:
    assert block_hash(payload) == hashlib.sha256(payload).digest()
    assert len(block_hash(payload)) == 32


def test_signature_covers_the_context_prefixed_payload_and_not_the_bare_payload(
    signing_key: nacl.signing.SigningKey, payload: bytes,
) -> None:
    envelope = Signer(signing_key=signing_key).envelope(payload)
    assert envelope.payload == payload
    assert len(envelope.signature) == 64
    verify_key = nacl.signing.VerifyKey(RFC8032_PUBLIC)
    # What an outside verifier does with nothing but DESIGN.md and libsodium:
    assert verify_key.verify(CONTEXT + payload, envelope.signature) == CONTEXT + payload
    with pytest.raises(nacl.exceptions.BadSignatureError):
        verify_key.verify(payload, envelope.signature)
    # Ed25519 is deterministic: the signature is exactly libsodium's over the prefixed bytes.
    assert envelope.signature == signing_key.sign(CONTEXT + payload).signature


def test_key_id_is_first_16_hex_digits_of_sha256_of_the_raw_public_key(
    signing_key: nacl.signing.SigningKey,
) -> None:
    signer = Signer(signing_key=signing_key)
    assert signer.public_key == RFC8032_PUBLIC
    expected = hashlib.sha256(RFC8032_PUBLIC).hexdigest()[:16]
    assert signer.key_id == expected
    assert key_id_of(RFC8032_PUBLIC) == expected
    assert len(expected) == 16
    assert expected == expected.lower()
    assert signer.envelope(b"x").key_id == expected
    assert Verifier(public_key=RFC8032_PUBLIC).key_id == expected


def test_a_signed_envelope_survives_serialization_and_verifies(
    signing_key: nacl.signing.SigningKey, payload: bytes,
) -> None:
    wire_bytes = Signer(signing_key=signing_key).envelope(payload).SerializeToString()
    envelope = pb.SignedBlock.FromString(wire_bytes)
    Verifier(public_key=RFC8032_PUBLIC).verify(envelope.payload, envelope.signature)
    assert envelope.payload == payload  # carried as bytes, never re-encoded


# --- block codec --------------------------------------------------------------------------------


def test_genesis_previous_hash_is_32_zero_bytes() -> None:
    assert GENESIS_HASH == b"\x00" * 32
    block = decode_block(encode_block(_draft(), sequence=1, previous_hash=GENESIS_HASH))
    assert block.previous_hash == b"\x00" * 32


def test_encoded_block_carries_every_field(payload: bytes) -> None:
    block = decode_block(payload)
    draft = _draft()
    assert block.collector_id == "plant-c1"
    assert block.sequence == 1
    assert block.window_start_unix_ms == draft.window_start_unix_ms
    assert block.window_end_unix_ms == draft.window_end_unix_ms
    assert block.config_digest == draft.config_digest
    assert block.kind == pb.BLOCK_KIND_READINGS
    assert [(r.point_id, r.time_unix_ms, r.value, r.quality, tuple(r.raw_registers))
            for r in block.readings] == [
        ("plant/dev/p0", 1_700_000_000_000, 1.5, pb.QUALITY_NORMAL, (0, 0xFFFF)),
        ("plant/dev/p1", 1_700_000_000_001, 2.25, pb.QUALITY_NORMAL, (1, 0xFFFF)),
    ]


@pytest.mark.parametrize("sequence", [0, -1])
def test_encode_block_refuses_sequence_below_1(sequence: int) -> None:
    with pytest.raises(ValueError, match="sequence"):
        encode_block(_draft(), sequence=sequence, previous_hash=GENESIS_HASH)


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_encode_block_refuses_a_previous_hash_of_the_wrong_length(length: int) -> None:
    with pytest.raises(ValueError, match="previous_hash"):
        encode_block(_draft(), sequence=2, previous_hash=bytes(length))


def _raw_block(**fields: Any) -> bytes:
    values: dict[str, Any] = {"collector_id": "c1", "sequence": 1, "previous_hash": bytes(32)}
    values.update(fields)
    return pb.Block(**values).SerializeToString()


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        pytest.param(b"\xff\xff\xff", "corrupt", id="garbage"),
        pytest.param(b"garbage", "corrupt", id="text"),
        pytest.param(b"\x0a\x05ab", "corrupt", id="truncated-string"),
        pytest.param(b"", "sequence", id="empty"),
        pytest.param(_raw_block(collector_id=""), "collector_id", id="empty-collector-id"),
        pytest.param(_raw_block(sequence=0), "sequence", id="sequence-0"),
        pytest.param(_raw_block(previous_hash=bytes(31)), "previous_hash", id="31-byte-previous-hash"),
        pytest.param(_raw_block(previous_hash=b""), "previous_hash", id="no-previous-hash"),
        pytest.param(_raw_block(readings=[pb.Reading(point_id="p", value=math.inf)]), "infinite",
                     id="infinite-value"),
    ],
)
def test_decode_block_rejects_malformed_payloads(payload: bytes, why: str) -> None:
    with pytest.raises(VerificationError) as caught:
        decode_block(payload)
    assert caught.value.reason == "malformed_block"
    assert why in str(caught.value)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=1,
                       max_size=40),
       document=st.binary(max_size=64))
def test_decode_block_refuses_a_block_exactly_when_a_reading_is_infinite(
        values: list[float], document: bytes) -> None:
    """decode_block only walks the readings when the bytes of an infinity occur in the payload:
    wherever the infinity is, and whatever else holds those bytes, the verdict is the loop's."""
    infinity = struct.pack("<d", math.inf)
    payload = _raw_block(readings=[pb.Reading(point_id=f"p{i}", value=v) for i, v in enumerate(values)],
                         config_document=document + infinity)  # the bytes occur in every payload
    if any(math.isinf(v) for v in values):
        with pytest.raises(VerificationError, match="infinite"):
            decode_block(payload)
    else:
        assert len(decode_block(payload).readings) == len(values)


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["+inf", "-inf"])
def test_decode_block_finds_an_infinity_among_many_finite_readings(sign: float) -> None:
    readings = [pb.Reading(point_id=f"p{i}", value=float(i)) for i in range(40)]
    readings[27] = pb.Reading(point_id="p27", value=sign * math.inf)
    with pytest.raises(VerificationError, match="p27 is infinite"):
        decode_block(_raw_block(readings=readings))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decode_block_on_arbitrary_bytes_returns_a_block_or_refuses_with_a_reason(data: bytes) -> None:
    try:
        block = decode_block(data)
    except VerificationError as exc:
        reason = exc.reason
    else:
        reason = "accepted"
        assert block.sequence >= 1
        assert len(block.previous_hash) == 32
        assert block.collector_id
    assert reason in ("malformed_block", "accepted")


_identifiers = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-./", min_size=1, max_size=40)
_readings = st.lists(
    st.builds(
        ReadingValue,
        point_id=_identifiers,
        time_unix_ms=st.integers(min_value=0, max_value=2**62),
        value=st.floats(allow_infinity=False),
        quality=st.sampled_from([pb.QUALITY_NORMAL, pb.QUALITY_FAULT, pb.QUALITY_COMM_LOSS]),
        raw_registers=st.lists(st.integers(0, 0xFFFF), max_size=4).map(tuple),
    ),
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(
    collector_id=_identifiers,
    sequence=st.integers(min_value=1, max_value=2**63 - 1),
    previous_hash=st.binary(min_size=32, max_size=32),
    readings=_readings,
    digest=st.binary(min_size=32, max_size=32),
)
def test_block_round_trip(collector_id: str, sequence: int, previous_hash: bytes,
                          readings: list[ReadingValue], digest: bytes) -> None:
    draft = BlockDraft(collector_id=collector_id, window_start_unix_ms=10, window_end_unix_ms=20,
                       readings=readings, config_digest=digest)
    block = decode_block(encode_block(draft, sequence=sequence, previous_hash=previous_hash))
    assert (block.collector_id, block.sequence, block.previous_hash, block.config_digest) == (
        collector_id, sequence, previous_hash, digest)
    assert len(block.readings) == len(readings)
    for got, want in zip(block.readings, readings, strict=True):
        assert got.point_id == want.point_id
        assert got.time_unix_ms == want.time_unix_ms
        assert got.quality == want.quality
        assert tuple(got.raw_registers) == want.raw_registers
        assert (math.isnan(got.value) and math.isnan(want.value)) or got.value == want.value


# --- Verifier ------------------------------------------------------------------------------------


@pytest.fixture
def signed(signing_key: nacl.signing.SigningKey, payload: bytes) -> tuple[bytes, bytes]:
    envelope = Signer(signing_key=signing_key).envelope(payload)
    return envelope.payload, envelope.signature


def test_verifier_accepts_the_signers_signature(signed: tuple[bytes, bytes]) -> None:
    Verifier(public_key=RFC8032_PUBLIC).verify(*signed)


@settings(max_examples=100, deadline=None)
@given(where=st.sampled_from(["payload", "signature"]), position=st.integers(min_value=0),
       bit=st.integers(min_value=0, max_value=7))
def test_a_flipped_bit_in_payload_or_signature_is_a_bad_signature(where: str, position: int,
                                                                    bit: int) -> None:
    key = nacl.signing.SigningKey(RFC8032_SEED)
    payload = encode_block(_draft(), sequence=1, previous_hash=GENESIS_HASH)
    signature = Signer(signing_key=key).envelope(payload).signature
    target = bytearray(payload if where == "payload" else signature)
    target[position % len(target)] ^= 1 << bit
    args = (bytes(target), signature) if where == "payload" else (payload, bytes(target))
    with pytest.raises(VerificationError) as caught:
        Verifier(public_key=RFC8032_PUBLIC).verify(*args)
    assert caught.value.reason == "bad_signature"


def test_one_byte_flip_in_payload_and_in_signature(signed: tuple[bytes, bytes]) -> None:
    payload, signature = signed
    verifier = Verifier(public_key=RFC8032_PUBLIC)
    flipped_payload = payload[:-1] + bytes([payload[-1] ^ 0xFF])
    flipped_signature = bytes([signature[0] ^ 0x01]) + signature[1:]
    for args in ((flipped_payload, signature), (payload, flipped_signature)):
        with pytest.raises(VerificationError) as caught:
            verifier.verify(*args)
        assert caught.value.reason == "bad_signature"


@pytest.mark.parametrize("length", [0, 63, 65, 128])
def test_a_signature_of_the_wrong_length_is_refused(signed: tuple[bytes, bytes], length: int) -> None:
    payload, signature = signed
    wrong = (signature * 2)[:length]
    with pytest.raises(VerificationError) as caught:
        Verifier(public_key=RFC8032_PUBLIC).verify(payload, wrong)
    assert caught.value.reason == "bad_signature"
    assert str(length) in caught.value.detail


def test_another_collectors_key_does_not_verify(signed: tuple[bytes, bytes]) -> None:
    other = bytes(nacl.signing.SigningKey.generate().verify_key)
    with pytest.raises(VerificationError) as caught:
        Verifier(public_key=other).verify(*signed)
    assert caught.value.reason == "bad_signature"


# --- enrolment rule: check_public_key --------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(IDENTITY, id="identity"),
        pytest.param(ORDER_2, id="order-2"),
        pytest.param(ORDER_4, id="order-4-all-zero"),
        pytest.param(NON_CANONICAL_IDENTITY, id="non-canonical"),
        pytest.param(RFC8032_PUBLIC[:31], id="31-bytes"),
        pytest.param(RFC8032_PUBLIC + b"\x00", id="33-bytes"),
        pytest.param(b"", id="empty"),
    ],
)
def test_check_public_key_refuses_small_order_non_canonical_and_wrong_length_keys(key: bytes) -> None:
    with pytest.raises(UnacceptableKeyError):
        check_public_key(key)
    with pytest.raises(UnacceptableKeyError):
        Verifier(public_key=key)


def test_check_public_key_accepts_ordinary_keys() -> None:
    check_public_key(RFC8032_PUBLIC)
    for _ in range(20):
        check_public_key(bytes(nacl.signing.SigningKey.generate().verify_key))


CCTV = SHARED_VECTORS / "ed25519" / "cctv_ed25519vectors.json"

# The vectors that libsodium's crypto_sign_open (PyNaCl 1.6) accepts over the bare message.
PYNACL_ACCEPTS = (
    7, 29, 50, 117, 139, 161, 182, 249, 305, 411, 425, 438, 465, 473, 481, 489, 497, 511, 525, 538,
    565, 573, 581, 589, 597, 611, 625, 638, 665, 673, 681, 689, 697, 711, 725, 738, 765, 773, 781,
    789, 797, 832, 899,
)
# Vectors whose public key passes our enrolment rule; every other key is refused before any
# signature is looked at.
ENROLABLE_KEYS = (
    266, 267, 278, 279, 285, 286, 297, 298, 304, 305, 316, 317, 319, 320, 322, 323, 335, 336, 348,
    349, 361, 362, 374, 375, 387, 388, 399, 400,
)
# What the project as a whole accepts: an enrolable key and a signature libsodium accepts.
PROJECT_ACCEPTS = (305,)


@pytest.fixture(scope="module")
def cctv_vectors() -> list[dict[str, Any]]:
    if not CCTV.is_file():
        pytest.skip(f"shared Ed25519 edge-case vectors not found at {CCTV}")
    vectors: list[dict[str, Any]] = json.loads(CCTV.read_text())
    return vectors


def _vector(entry: dict[str, Any]) -> tuple[bytes, bytes, bytes]:
    return bytes.fromhex(entry["key"]), bytes.fromhex(entry["sig"]), entry["msg"].encode()


def test_cctv_vectors_pynacl_accepts_exactly_the_pinned_set(cctv_vectors: list[dict[str, Any]]) -> None:
    assert len(cctv_vectors) == 914
    accepted = []
    for entry in cctv_vectors:
        key, sig, msg = _vector(entry)
        try:
            nacl.signing.VerifyKey(key).verify(msg, sig)
        except nacl.exceptions.BadSignatureError:
            continue
        accepted.append(entry["number"])
    assert tuple(sorted(accepted)) == PYNACL_ACCEPTS
    assert len(PYNACL_ACCEPTS) == 43  # the figure DESIGN.md quotes


def test_cctv_vectors_every_key_check_public_key_refuses_is_refused_at_enrolment(
    cctv_vectors: list[dict[str, Any]],
) -> None:
    enrolable = []
    for entry in cctv_vectors:
        key = bytes.fromhex(entry["key"])
        try:
            check_public_key(key)
        except UnacceptableKeyError:
            with pytest.raises(UnacceptableKeyError):
                Verifier(public_key=key)
            assert not nacl.bindings.crypto_core_ed25519_is_valid_point(key)
            continue
        Verifier(public_key=key)
        enrolable.append(entry["number"])
    assert tuple(enrolable) == ENROLABLE_KEYS
    # A key that is itself of small order or non-canonically encoded never gets enrolled.
    for entry in cctv_vectors:
        flags = set(entry["flags"] or ())
        if flags & {"low_order_A", "low_order_component_A", "non_canonical_A"}:
            assert entry["number"] not in ENROLABLE_KEYS, entry


def test_cctv_vectors_the_project_rule_accepts_only_well_formed_signatures(
    cctv_vectors: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Our Verifier signs over a context prefix; with the prefix emptied it applies the same rule
    # (enrolment check, then crypto_sign_open) to the vectors' bare messages.
    monkeypatch.setattr(wire, "SIGNATURE_CONTEXT", b"")
    accepted = []
    for entry in cctv_vectors:
        key, sig, msg = _vector(entry)
        try:
            Verifier(public_key=key).verify(msg, sig)
        except (UnacceptableKeyError, VerificationError):
            continue
        accepted.append(entry["number"])
    assert tuple(accepted) == PROJECT_ACCEPTS
    assert set(PROJECT_ACCEPTS) == set(PYNACL_ACCEPTS) & set(ENROLABLE_KEYS)
    only = next(e for e in cctv_vectors if e["number"] == PROJECT_ACCEPTS[0])
    assert not only["flags"]  # the one ordinary signature among the edge cases


# --- chain placement -----------------------------------------------------------------------------

H1 = hashlib.sha256(b"block 1").digest()
H2 = hashlib.sha256(b"block 2").digest()
H2_OTHER = hashlib.sha256(b"another block 2").digest()
HEAD_2 = ChainHead(sequence=2, hash=H2)


def test_chain_head_empty_is_sequence_0_at_the_genesis_hash() -> None:
    assert ChainHead.empty() == ChainHead(sequence=0, hash=bytes(32))


@pytest.mark.parametrize(
    ("head", "sequence", "hash_", "previous", "stored", "expected"),
    [
        pytest.param(ChainHead.empty(), 1, H1, GENESIS_HASH, None, Placement.NEXT, id="first"),
        pytest.param(HEAD_2, 3, b"h3", H2, None, Placement.NEXT, id="next"),
        pytest.param(ChainHead.empty(), 1, H1, H2, None, Placement.BROKEN_LINK, id="first-bad-parent"),
        pytest.param(HEAD_2, 3, b"h3", H1, None, Placement.BROKEN_LINK, id="broken-link"),
        pytest.param(HEAD_2, 4, b"h4", b"h3", None, Placement.SEQUENCE_GAP, id="gap"),
        pytest.param(ChainHead.empty(), 2, H2, H1, None, Placement.SEQUENCE_GAP, id="gap-at-start"),
        pytest.param(HEAD_2, 2, H2, H1, StoredBlock(H2, H1), Placement.DUPLICATE, id="duplicate-head"),
        pytest.param(HEAD_2, 1, H1, GENESIS_HASH, StoredBlock(H1, GENESIS_HASH), Placement.DUPLICATE,
                     id="duplicate-old"),
        pytest.param(HEAD_2, 2, H2_OTHER, H1, StoredBlock(H2, H1), Placement.FORK, id="fork"),
        pytest.param(HEAD_2, 2, H2_OTHER, b"elsewhere", StoredBlock(H2, H1),
                     Placement.REPLAYED_SEQUENCE, id="replayed-sequence"),
    ],
)
def test_place_block_every_placement(head: ChainHead, sequence: int, hash_: bytes, previous: bytes,
                                     stored: StoredBlock | None, expected: Placement) -> None:
    placement = place_block(head=head, sequence=sequence, block_hash=hash_, previous_hash=previous,
                            stored_at_sequence=stored)
    assert placement is expected
    assert placement.accepted is (expected in (Placement.NEXT, Placement.DUPLICATE))


def test_place_block_at_or_below_the_head_needs_the_stored_block() -> None:
    with pytest.raises(ValueError, match="stored block"):
        place_block(head=HEAD_2, sequence=2, block_hash=H2, previous_hash=H1, stored_at_sequence=None)


def test_placement_values_are_the_stable_reason_codes() -> None:
    assert {p.value for p in Placement} == {
        "next", "duplicate", "fork", "replayed_sequence", "broken_link", "sequence_gap"}


def _chain(value_lists: list[list[float]]) -> list[tuple[int, bytes, bytes]]:
    """(sequence, hash, previous_hash) of a real chain of encoded blocks."""
    out = []
    previous = GENESIS_HASH
    for sequence, values in enumerate(value_lists, start=1):
        payload = encode_block(_draft(values=tuple(values)), sequence=sequence, previous_hash=previous)
        decoded = decode_block(payload)
        assert decoded.previous_hash == previous
        out.append((sequence, block_hash(payload), previous))
        previous = block_hash(payload)
    return out


@settings(max_examples=60, deadline=None)
@given(
    value_lists=st.lists(st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=3),
                         min_size=1, max_size=12),
    data=st.data(),
)
def test_a_valid_chain_in_order_is_all_next_and_any_replay_is_duplicate(
    value_lists: list[list[float]], data: st.DataObject,
) -> None:
    chain = _chain(value_lists)
    stored: dict[int, StoredBlock] = {}
    head = ChainHead.empty()
    for sequence, hash_, previous in chain:
        assert place_block(head=head, sequence=sequence, block_hash=hash_, previous_hash=previous,
                           stored_at_sequence=stored.get(sequence)) is Placement.NEXT
        stored[sequence] = StoredBlock(hash_, previous)
        head = ChainHead(sequence, hash_)
        # re-feeding any block stored so far is a duplicate
        again = data.draw(st.integers(min_value=1, max_value=sequence), label="replayed")
        seq_again, hash_again, prev_again = chain[again - 1]
        assert place_block(head=head, sequence=seq_again, block_hash=hash_again,
                           previous_hash=prev_again, stored_at_sequence=stored[seq_again]) \
            is Placement.DUPLICATE
    # and a block other than the stored one at the same place is a fork
    victim = data.draw(st.integers(min_value=1, max_value=len(chain)), label="forked")
    _, stored_hash, stored_previous = chain[victim - 1]
    forged = hashlib.sha256(stored_hash + b"forged").digest()
    assert place_block(head=head, sequence=victim, block_hash=forged, previous_hash=stored_previous,
                       stored_at_sequence=stored[victim]) is Placement.FORK


# --- key files -----------------------------------------------------------------------------------


def test_generate_key_files_writes_a_0600_private_key_and_a_public_key(tmp_path: Path) -> None:
    private = tmp_path / "keys" / "c1.key"
    public, key_id = generate_key_files(private)
    assert public == tmp_path / "keys" / "c1.key.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    private_fields = private.read_text().split()
    assert private_fields[0] == "stackline-ed25519-seed"
    seed = base64.b64decode(private_fields[1])
    raw_public = bytes(nacl.signing.SigningKey(seed).verify_key)
    assert public.read_text().split() == [
        "stackline-ed25519-public", base64.b64encode(raw_public).decode(), key_id]
    assert key_id == hashlib.sha256(raw_public).hexdigest()[:16]


def test_generate_key_files_refuses_to_overwrite(tmp_path: Path) -> None:
    private = tmp_path / "c1.key"
    generate_key_files(private)
    before = (private.read_bytes(), Path(f"{private}.pub").read_bytes())
    with pytest.raises(KeyFileError, match="already exists"):
        generate_key_files(private)
    assert (private.read_bytes(), Path(f"{private}.pub").read_bytes()) == before
    # a stray public key alone also blocks it
    lone = tmp_path / "lone.key"
    Path(f"{lone}.pub").write_text("something")
    with pytest.raises(KeyFileError):
        generate_key_files(lone)
    assert not lone.exists()


def test_generate_key_files_overwrite_makes_a_new_private_key_0600(tmp_path: Path) -> None:
    private = tmp_path / "c1.key"
    _, first = generate_key_files(private)
    os.chmod(private, 0o644)  # e.g. loosened by a careless copy
    _, second = generate_key_files(private, overwrite=True)
    assert second != first
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert key_id_of(load_public_key(Path(f"{private}.pub"))) == second


def test_key_files_round_trip(tmp_path: Path) -> None:
    private = tmp_path / "c1.key"
    public, key_id = generate_key_files(private)
    signing_key = load_signing_key(private)
    public_key = load_public_key(public)
    assert bytes(signing_key.verify_key) == public_key
    signer = Signer(signing_key=signing_key)
    assert signer.key_id == key_id
    payload = encode_block(_draft(), sequence=1, previous_hash=GENESIS_HASH)
    Verifier(public_key=public_key).verify(payload, signer.envelope(payload).signature)


@pytest.mark.parametrize(
    ("which", "content"),
    [
        pytest.param("private", "", id="private-empty"),
        pytest.param("private", "stackline-ed25519-public AAAA", id="private-wrong-tag"),
        pytest.param("private", "stackline-ed25519-seed not*base64!", id="private-bad-base64"),
        pytest.param("private", "stackline-ed25519-seed " + base64.b64encode(bytes(31)).decode(),
                     id="private-31-bytes"),
        pytest.param("public", "stackline-ed25519-seed " + base64.b64encode(RFC8032_PUBLIC).decode(),
                     id="public-wrong-tag"),
        pytest.param("public", "stackline-ed25519-public " + base64.b64encode(bytes(33)).decode(),
                     id="public-33-bytes"),
        pytest.param("public", "stackline-ed25519-public " + base64.b64encode(IDENTITY).decode(),
                     id="public-small-order"),
    ],
)
def test_corrupted_key_files_raise_key_file_error_naming_the_path(tmp_path: Path, which: str,
                                                                    content: str) -> None:
    path = tmp_path / f"broken-{which}.key"
    path.write_text(content)
    load = load_signing_key if which == "private" else load_public_key
    with pytest.raises(KeyFileError) as caught:
        load(path)
    assert str(path) in str(caught.value)


def test_a_missing_key_file_raises_key_file_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.key"
    for load in (load_signing_key, load_public_key):
        with pytest.raises(KeyFileError) as caught:
            load(path)
        assert str(path) in str(caught.value)


# --- generated code drift ------------------------------------------------------------------------


@pytest.fixture
def proto_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the schema and the committed generated code, with codegen pointed at it."""
    source = proto.codegen.ROOT / proto.codegen.SCHEMA.parent
    target = tmp_path / proto.codegen.SCHEMA.parent
    target.mkdir(parents=True)
    for name in (proto.codegen.SCHEMA.name, *proto.codegen.GENERATED_FILES):
        shutil.copy2(source / name, target / name)
    monkeypatch.setattr(proto.codegen, "ROOT", tmp_path)
    return target


def test_committed_generated_code_matches_the_schema() -> None:
    assert proto.codegen.main(["--check"]) == 0


def test_an_unmodified_copy_passes_the_drift_check(proto_copy: Path) -> None:
    assert proto.codegen.main(["--check"]) == 0


@pytest.mark.parametrize("name", proto.codegen.GENERATED_FILES)
def test_the_drift_check_fails_on_an_edited_generated_file(
    proto_copy: Path, name: str, capsys: pytest.CaptureFixture[str],
) -> None:
    edited = proto_copy / name
    edited.write_bytes(edited.read_bytes() + b"\n# edited by hand\n")
    assert proto.codegen.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert f"drift: {proto.codegen.SCHEMA.parent / name}" in out
    assert out.count("drift:") == 1


def test_the_drift_check_fails_on_a_schema_change_and_regeneration_fixes_it(proto_copy: Path) -> None:
    schema = proto_copy / proto.codegen.SCHEMA.name
    schema.write_text(schema.read_text().replace(
        "  string key_id = 3;    // 16 lowercase hex digits",
        "  string key_id = 3;    // 16 lowercase hex digits\n  string note = 4;", 1))
    assert proto.codegen.main(["--check"]) == 1
    (proto_copy / "stackline_pb2.py").unlink()
    assert proto.codegen.main(["--check"]) == 1
    assert proto.codegen.main([]) == 0
    assert proto.codegen.main(["--check"]) == 0
    assert "note" in (proto_copy / "stackline_pb2.pyi").read_text()


def test_a_sequence_past_a_signed_64_bit_integer_is_malformed() -> None:
    block = pb.Block(collector_id="c1", sequence=2**63, previous_hash=bytes(32))
    with pytest.raises(VerificationError) as refused:
        decode_block(block.SerializeToString())
    assert refused.value.reason == "malformed_block"
