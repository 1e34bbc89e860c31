"""C2SP signed notes and checkpoints: the key id by its formula, an interoperability vector (the
signed note in Go's golang.org/x/mod/sumdb/note documentation), round trips, and every way a note
is refused."""

from __future__ import annotations

import base64
import hashlib

import nacl.signing
import pytest

from gateway.errors import GatewayError
from gateway.translog import checkpoint as checkpoint_module
from gateway.translog.checkpoint import (
    Checkpoint,
    CheckpointError,
    key_id,
    open_note,
    parse_checkpoint,
    parse_verifier_key,
    sign_note,
    verifier_key,
)
from gateway.translog.merkle import root_from_leaves
from proto import tlog
from proto.errors import StacklineWireError

# the example of Go's sumdb/note package documentation, checked independently with PyNaCl
GO_VERIFIER_KEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_NOTE = ("If you think cryptography is the answer to your problem,\n"
           "then you don't know what your problem is.\n"
           "\n"
           "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FF"
           "YC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n")
ORIGIN = "stackline.example/gateway-1"


@pytest.fixture
def key() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(bytes(range(32)))


def test_the_go_sumdb_note_example_verifies() -> None:
    name, public_key = parse_verifier_key(GO_VERIFIER_KEY)
    assert name == "PeterNeumann"
    text = open_note(GO_NOTE, name=name, public_key=public_key)
    assert text.startswith("If you think cryptography")
    assert verifier_key(name, public_key) == GO_VERIFIER_KEY


def test_the_key_id_is_sha256_of_name_newline_type_and_key(key: nacl.signing.SigningKey) -> None:
    public = bytes(key.verify_key)
    assert key_id(ORIGIN, public) == hashlib.sha256(ORIGIN.encode() + b"\n\x01" + public).digest()[:4]


def test_a_checkpoint_round_trips_with_its_exact_text(key: nacl.signing.SigningKey) -> None:
    root = root_from_leaves([hashlib.sha256(b"\x00" + bytes([i])).digest() for i in range(5)])
    checkpoint = Checkpoint(ORIGIN, 5, root)
    note = checkpoint.sign(name=ORIGIN, signing_key=key)
    body, signature_line = note.split("\n\n")
    assert body + "\n" == f"{ORIGIN}\n5\n{base64.b64encode(root).decode()}\n"
    assert signature_line.startswith(f"\u2014 {ORIGIN} ") and signature_line.endswith("\n")
    blob = base64.b64decode(signature_line.split(" ")[2])
    assert len(blob) == 4 + 64 and blob[:4] == key_id(ORIGIN, bytes(key.verify_key))
    assert parse_checkpoint(note, name=ORIGIN, public_key=bytes(key.verify_key)) == checkpoint


def test_signatures_of_other_keys_are_ignored(key: nacl.signing.SigningKey) -> None:
    note = Checkpoint(ORIGIN, 1, bytes(32)).sign(name=ORIGIN, signing_key=key)
    witness = nacl.signing.SigningKey(bytes(32 * [7]))
    witnessed = note + sign_note(note.split("\n\n")[0] + "\n", name="witness.example",
                                 signing_key=witness).split("\n\n")[1]
    assert parse_checkpoint(witnessed, name=ORIGIN, public_key=bytes(key.verify_key)).size == 1


@pytest.mark.parametrize(("tamper", "reason"), [
    (lambda n: n.replace("\n1\n", "\n2\n", 1), "does not verify"),  # a size edited by hand
    (lambda n: n.replace("\u2014", "--"), "em dash"),
    (lambda n: n.replace("\n\n", "\n"), "no blank line"),
    (lambda n: n.rsplit(" ", 1)[0] + " not*base64\n", "not base64"),
    (lambda n: n.split("\n\n")[0] + "\n\n", "no signature by"),
], ids=["edited-size", "ascii-dashes", "no-blank-line", "bad-base64", "no-signature"])
def test_a_tampered_note_is_refused_with_a_reason(key: nacl.signing.SigningKey, tamper: object,
                                                  reason: str) -> None:
    note = Checkpoint(ORIGIN, 1, bytes(32)).sign(name=ORIGIN, signing_key=key)
    assert callable(tamper)
    with pytest.raises(CheckpointError, match=reason):
        parse_checkpoint(tamper(note), name=ORIGIN, public_key=bytes(key.verify_key))


def test_a_note_from_another_key_under_the_same_name_is_refused(key: nacl.signing.SigningKey) -> None:
    forger = nacl.signing.SigningKey(bytes(32 * [9]))
    note = Checkpoint(ORIGIN, 1, bytes(32)).sign(name=ORIGIN, signing_key=forger)
    with pytest.raises(CheckpointError, match="no signature by"):  # another key id: not ours
        parse_checkpoint(note, name=ORIGIN, public_key=bytes(key.verify_key))


@pytest.mark.parametrize("text", [
    f"{ORIGIN}\n01\n{'A' * 44}\n", f"{ORIGIN}\nx\n{'A' * 44}\n", f"{ORIGIN}\n1\nAAAA\n",
    "\n1\nAAAA\n",
    f"{ORIGIN}\n\u0663\n{'A' * 43}=\n",  # ARABIC-INDIC DIGIT THREE: a digit, not an ASCII one
    f"{ORIGIN}\n+1\n{'A' * 43}=\n", f"{ORIGIN}\n-1\n{'A' * 43}=\n",
    f"{ORIGIN}\n{2**64}\n{'A' * 43}=\n",  # past an unsigned 64-bit size
    f"{ORIGIN}\n{'9' * 5000}\n{'A' * 43}=\n",  # longer than int() parses: still a CheckpointError
], ids=["leading-zero", "not-a-number", "short-root", "no-origin", "non-ascii-digit", "plus-sign",
        "negative", "past-uint64", "5000-digits"])
def test_malformed_checkpoint_bodies_are_refused(key: nacl.signing.SigningKey, text: str) -> None:
    note = sign_note(text, name=ORIGIN, signing_key=key) if text.strip() else text
    with pytest.raises(CheckpointError):
        parse_checkpoint(note, name=ORIGIN, public_key=bytes(key.verify_key))
    if text.strip():
        with pytest.raises(CheckpointError):
            tlog.read_checkpoint_unverified(note)


def test_the_largest_size_is_an_unsigned_64_bit_number(key: nacl.signing.SigningKey) -> None:
    note = Checkpoint(ORIGIN, 2**64 - 1, bytes(32)).sign(name=ORIGIN, signing_key=key)
    assert parse_checkpoint(note, name=ORIGIN, public_key=bytes(key.verify_key)).size == 2**64 - 1


def test_a_checkpoint_is_read_unverified_only_when_asked(key: nacl.signing.SigningKey) -> None:
    """Reading without a key gives what the note states, whoever signed it; a note that is not
    signed-note shaped is still refused."""
    checkpoint = Checkpoint(ORIGIN, 7, bytes(range(32)))
    forged = checkpoint.sign(name=ORIGIN, signing_key=nacl.signing.SigningKey(bytes(32 * [9])))
    assert tlog.read_checkpoint_unverified(forged) == checkpoint
    with pytest.raises(CheckpointError, match="no signature by"):
        parse_checkpoint(forged, name=ORIGIN, public_key=bytes(key.verify_key))
    with pytest.raises(CheckpointError, match="no blank line"):
        tlog.read_checkpoint_unverified(checkpoint.text())


def test_the_checkpoint_code_is_the_shared_code_and_its_errors_are_proto_errors() -> None:
    for name in checkpoint_module.__all__:
        assert getattr(checkpoint_module, name) is getattr(tlog, name), name
    assert issubclass(CheckpointError, StacklineWireError)
    assert not issubclass(CheckpointError, GatewayError)


def test_bad_verifier_keys_and_names_are_refused() -> None:
    with pytest.raises(CheckpointError, match="key id does not match"):
        parse_verifier_key(GO_VERIFIER_KEY.replace("c74f20a3", "c74f20a4"))
    with pytest.raises(CheckpointError, match="name"):
        key_id("two words", bytes(32))


def test_a_verifier_key_whose_base64_holds_a_plus_sign_round_trips() -> None:
    """Standard base64 may contain '+', the separator of a verifier key's parts: only the first
    two '+' separate (name and key id never hold one)."""
    for seed in range(256):
        key = nacl.signing.SigningKey(bytes([seed]) * 32)
        text = verifier_key(ORIGIN, bytes(key.verify_key))
        if text.count("+") > 2:
            break
    else:
        pytest.fail("no key with a '+' in its base64 among 256 seeds")
    assert parse_verifier_key(text) == (ORIGIN, bytes(key.verify_key))


def test_characters_outside_ascii_where_base64_belongs_are_a_checkpoint_error(
        key: nacl.signing.SigningKey) -> None:
    """base64 decoding raises ValueError, not binascii.Error, for non-ASCII text: each place
    that decodes base64 must still answer CheckpointError (a note from the network)."""
    with pytest.raises(CheckpointError, match="not base64"):
        parse_verifier_key("a+00000000+é")
    note = Checkpoint(ORIGIN, 1, bytes(32)).sign(name=ORIGIN, signing_key=key)
    with pytest.raises(CheckpointError, match="not base64"):
        open_note(note.replace(note.rsplit(" ", 1)[1], "é\n"), name=ORIGIN,
                  public_key=bytes(key.verify_key))
    forged_root = sign_note(f"{ORIGIN}\n1\né\n", name=ORIGIN, signing_key=key)
    with pytest.raises(CheckpointError, match="not base64"):
        parse_checkpoint(forged_root, name=ORIGIN, public_key=bytes(key.verify_key))


def test_any_line_of_the_key_that_does_not_verify_rejects_the_note_wherever_it_stands(
        key: nacl.signing.SigningKey) -> None:
    """docs/verifying.md section 5: the verdict must not depend on the order of the lines."""
    note = Checkpoint(ORIGIN, 3, bytes(32)).sign(name=ORIGIN, signing_key=key)
    good = note.rsplit("\n", 2)[1]
    blob = bytearray(base64.b64decode(good.rsplit(" ", 1)[1]))
    blob[-1] ^= 0x01
    bad = good.rsplit(" ", 1)[0] + " " + base64.b64encode(bytes(blob)).decode()
    text = note[:note.rindex("\n\n") + 2]
    for lines in ((good, bad), (bad, good)):
        with pytest.raises(CheckpointError, match="does not verify"):
            open_note(text + "\n".join(lines) + "\n", name=ORIGIN, public_key=bytes(key.verify_key))
