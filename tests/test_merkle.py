"""RFC 9162 Merkle tree: every transparency-dev vector (valid and `wantErr`) through the verifiers,
the README's hasher facts and 8-leaf roots, and proofs generated from stored subtree hashes
checked against a naive transcription of RFC 9162's MTH, PATH and PROOF definitions."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError, LedgerError
from gateway.translog import merkle
from gateway.translog.merkle import (
    EMPTY_ROOT,
    HashStore,
    MemoryHashStore,
    MerkleTree,
    NodeId,
    NodeWrite,
    ProofError,
    ProofFailure,
    ProofRequestError,
    leaf_hash,
    node_hash,
    root_from_leaves,
    verify_consistency,
    verify_inclusion,
)
from proto import tlog
from proto.errors import StacklineWireError
from tests.conftest import SHARED_VECTORS

MERKLE_VECTORS = SHARED_VECTORS / "merkle"
F = ProofFailure

# --- A naive reference: RFC 9162 section 2.1 transcribed, recursion and all ---------------------


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    """The largest power of two smaller than n."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def naive_mth(hashes: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes (RFC 9162 2.1.1)."""
    n = len(hashes)
    if n == 0:
        return _sha256(b"")
    if n == 1:
        return hashes[0]
    k = _k(n)
    return _sha256(b"\x01" + naive_mth(hashes[:k]) + naive_mth(hashes[k:]))


def naive_path(m: int, hashes: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) (RFC 9162 2.1.3.1)."""
    n = len(hashes)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*naive_path(m, hashes[:k]), naive_mth(hashes[k:])]
    return [*naive_path(m - k, hashes[k:]), naive_mth(hashes[:k])]


def naive_subproof(m: int, hashes: Sequence[bytes], whole: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) (RFC 9162 2.1.4.1)."""
    n = len(hashes)
    if m == n:
        return [] if whole else [naive_mth(hashes)]
    k = _k(n)
    if m <= k:
        return [*naive_subproof(m, hashes[:k], whole), naive_mth(hashes[k:])]
    return [*naive_subproof(m - k, hashes[k:], False), naive_mth(hashes[:k])]


def naive_proof(m: int, hashes: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) (RFC 9162 2.1.4.1)."""
    return naive_subproof(m, hashes, True)


def leaves_for(count: int) -> list[bytes]:
    return [leaf_hash(b"block %d" % i) for i in range(count)]


def grown_tree(leaves: Sequence[bytes]) -> MerkleTree:
    tree = MerkleTree(store=MemoryHashStore())
    for leaf in leaves:
        tree.append(leaf)
    return tree


# --- The shared vectors ------------------------------------------------------------------------


def _b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def _vector_files(kind: str) -> list[Path]:
    return sorted((MERKLE_VECTORS / kind).rglob("*.json"))


def _vector_id(path: Path) -> str:
    return str(path.relative_to(MERKLE_VECTORS))


INCLUSION_FILES = _vector_files("inclusion")
CONSISTENCY_FILES = _vector_files("consistency")

# What each tampering in the vectors must be rejected for, where the tampering alone decides it.
# Changed indexes and sizes are left out: which rule they break first depends on the numbers.
EXPECTED_REASONS: dict[str, set[ProofFailure]] = {
    "wrong leaf": {F.BAD_HASH_LENGTH},
    "wrong root1": {F.BAD_HASH_LENGTH},
    "wrong root2": {F.BAD_HASH_LENGTH},
    "preceding garbage": {F.BAD_HASH_LENGTH},
    "trailing garbage": {F.BAD_HASH_LENGTH},
    "empty leaf": {F.BAD_HASH_LENGTH},
    "empty root and leaf": {F.BAD_HASH_LENGTH},
    "truncated proof": {F.WRONG_PROOF_LENGTH},
    "inserted component": {F.WRONG_PROOF_LENGTH},
    "removed component": {F.WRONG_PROOF_LENGTH},
    "preceding root": {F.WRONG_PROOF_LENGTH},
    "trailing root": {F.WRONG_PROOF_LENGTH},
    "preceding root1": {F.WRONG_PROOF_LENGTH},
    "preceding root2": {F.WRONG_PROOF_LENGTH},
    "trailing root1": {F.WRONG_PROOF_LENGTH},
    "trailing root2": {F.WRONG_PROOF_LENGTH},
    "preceding proof @0": {F.WRONG_PROOF_LENGTH},
    "treeSize mul @2": {F.WRONG_PROOF_LENGTH},
    "size2 mul @2": {F.WRONG_PROOF_LENGTH},
    "random root": {F.ROOT_MISMATCH},
    "swapped roots": {F.ROOT_MISMATCH, F.OLD_ROOT_MISMATCH},
    "empty proof": {F.EMPTY_PROOF},
    "sizes do not watch and proof is empty": {F.EMPTY_PROOF},
    "size1 is greater than size2": {F.SIZE_DECREASED},
    "size1 is greater than size2 again": {F.SIZE_DECREASED},
    "consistency check on empty tree (size1 is zero) is useless": {F.EMPTY_OLD_TREE},
    "size1 is zero and does not equal size2": {F.EMPTY_OLD_TREE},
    "size1 is zero and size2 is not zero": {F.EMPTY_OLD_TREE},
    "sizes match but proof is not empty and sizes are one": {F.PROOF_NOT_EMPTY},
    "sizes match but proof is not empty and sizes are zero": {F.PROOF_NOT_EMPTY},
    "roots do not match and sizes are zero": {F.ROOT_MISMATCH},
    "roots do not not match and sizes are one": {F.ROOT_MISMATCH},
    "sizes are equal (one) but roots are not": {F.ROOT_MISMATCH},
    "sizes are equal (zero) but roots are not": {F.ROOT_MISMATCH},
    "sizes are equal (zero) and proof is empty": {F.ROOT_MISMATCH},
}


def _expected_reasons(desc: str) -> set[ProofFailure] | None:
    if desc.startswith("modified proof"):
        return {F.ROOT_MISMATCH, F.OLD_ROOT_MISMATCH}
    return EXPECTED_REASONS.get(desc)


def _check_outcome(case: dict[str, Any], verify: Any) -> None:
    if not case["wantErr"]:
        verify()
        return
    with pytest.raises(ProofError) as caught:
        verify()
    expected = _expected_reasons(case["desc"])
    if expected is not None:
        assert caught.value.reason in expected, (case["desc"], str(caught.value))


# the shared vectors live beside the checkout (../shared/reference/vectors), as the Ed25519 ones
# of test_wire.py do; a checkout without them skips these tests, saying so
needs_vectors = pytest.mark.skipif(not MERKLE_VECTORS.is_dir(),
                                   reason=f"shared Merkle vectors not found at {MERKLE_VECTORS}")


@needs_vectors
def test_the_vector_set_is_complete() -> None:
    """Guards the parametrised tests below against a moved or half-copied vector folder."""
    assert len(INCLUSION_FILES) == 98
    assert len(CONSISTENCY_FILES) == 98
    valid = [path for path in INCLUSION_FILES + CONSISTENCY_FILES
             if not json.loads(path.read_text())["wantErr"]]
    assert len(valid) == 12


@pytest.mark.parametrize("path", INCLUSION_FILES, ids=_vector_id)
def test_inclusion_vector(path: Path) -> None:
    case = json.loads(path.read_text())

    def verify() -> None:
        verify_inclusion(leaf_hash=_b64(case["leafHash"]), index=case["leafIdx"], size=case["treeSize"],
                         proof=[_b64(p) for p in case["proof"] or []], root=_b64(case["root"]))

    _check_outcome(case, verify)


@pytest.mark.parametrize("path", CONSISTENCY_FILES, ids=_vector_id)
def test_consistency_vector(path: Path) -> None:
    case = json.loads(path.read_text())

    def verify() -> None:
        verify_consistency(old_size=case["size1"], new_size=case["size2"], old_root=_b64(case["root1"]),
                           new_root=_b64(case["root2"]), proof=[_b64(p) for p in case["proof"] or []])

    _check_outcome(case, verify)


# --- The README's hasher facts and the classic 8-leaf tree --------------------------------------

EIGHT_LEAF_INPUTS = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f",
)]


def _readme_roots() -> dict[int, bytes]:
    text = (SHARED_VECTORS / "README.md").read_text()
    return {int(size): bytes.fromhex(root)
            for size, root in re.findall(r"^\| (\d+) \| `([0-9a-f]{64})` \|$", text, re.MULTILINE)}


def test_hasher_facts() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert root_from_leaves([]) == EMPTY_ROOT
    assert leaf_hash(b"").hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    assert leaf_hash(b"L123456").hex() == "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    assert node_hash(b"N123", b"N456").hex() == (
        "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb")


@needs_vectors
def test_eight_leaf_reference_roots() -> None:
    roots = _readme_roots()
    assert sorted(roots) == list(range(1, 9))
    hashes = [leaf_hash(data) for data in EIGHT_LEAF_INPUTS]
    tree = grown_tree(hashes)
    for size, want in roots.items():
        assert root_from_leaves(hashes[:size]) == want, size
        assert tree.root(size) == want, size
        assert naive_mth(hashes[:size]) == want, size


@pytest.mark.parametrize("path", [p for p in INCLUSION_FILES + CONSISTENCY_FILES
                                  if p.name == "happy-path.json"], ids=_vector_id)
def test_generated_proofs_equal_the_vectors(path: Path) -> None:
    """The happy paths are proofs over the 8-leaf tree: the store produces them byte for byte."""
    case = json.loads(path.read_text())
    tree = grown_tree([leaf_hash(data) for data in EIGHT_LEAF_INPUTS])
    want = [_b64(p) for p in case["proof"] or []]
    if "leafIdx" in case:
        assert tree.root(case["treeSize"]) == _b64(case["root"])
        assert tree.inclusion_proof(case["leafIdx"], case["treeSize"]) == want
    else:
        assert tree.root(case["size2"]) == _b64(case["root2"])
        assert tree.consistency_proof(case["size1"], case["size2"]) == want


# --- Generation against the naive reference ------------------------------------------------------

SMALL = 70


@pytest.fixture(scope="module")
def small() -> tuple[list[bytes], MerkleTree]:
    leaves = leaves_for(SMALL)
    return leaves, grown_tree(leaves)


def test_roots_of_every_size(small: tuple[list[bytes], MerkleTree]) -> None:
    leaves, tree = small
    assert tree.size == SMALL
    for size in range(SMALL + 1):
        want = naive_mth(leaves[:size])
        assert tree.root(size) == want, size
        assert root_from_leaves(leaves[:size]) == want, size


def test_inclusion_proofs_of_every_leaf_of_every_size(small: tuple[list[bytes], MerkleTree]) -> None:
    leaves, tree = small
    checked = 0
    for size in range(1, SMALL + 1):
        root = tree.root(size)
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            assert proof == naive_path(index, leaves[:size]), (index, size)
            verify_inclusion(leaf_hash=leaves[index], index=index, size=size, proof=proof, root=root)
            _assert_inclusion_tampering_fails(leaves, index, size, proof, root)
            checked += 1
    assert checked == SMALL * (SMALL + 1) // 2


def _assert_inclusion_tampering_fails(leaves: list[bytes], index: int, size: int, proof: list[bytes],
                                      root: bytes) -> None:
    def reason(*, leaf: bytes = leaves[index], at: int = index, path: Sequence[bytes] = proof,
               against: bytes = root) -> ProofFailure:
        with pytest.raises(ProofError) as caught:
            verify_inclusion(leaf_hash=leaf, index=at, size=size, proof=path, root=against)
        return caught.value.reason

    for position in range(len(proof)):
        flipped = [*proof]
        flipped[position] = bytes([proof[position][0] ^ 1]) + proof[position][1:]
        assert reason(path=flipped) == F.ROOT_MISMATCH
    assert reason(leaf=bytes([leaves[index][0] ^ 1]) + leaves[index][1:]) == F.ROOT_MISMATCH
    assert reason(path=[*proof, root]) == F.WRONG_PROOF_LENGTH
    if proof:
        assert reason(path=proof[:-1]) == F.WRONG_PROOF_LENGTH
        assert reason(leaf=leaves[(index + 1) % size]) == F.ROOT_MISMATCH
        assert reason(at=(index + 1) % size) in {F.ROOT_MISMATCH, F.WRONG_PROOF_LENGTH}
    assert reason(at=size) == F.INDEX_OUT_OF_RANGE
    assert reason(against=EMPTY_ROOT) == F.ROOT_MISMATCH


def test_consistency_proofs_between_every_pair_of_sizes(small: tuple[list[bytes], MerkleTree]) -> None:
    leaves, tree = small
    checked = 0
    for new_size in range(1, SMALL + 1):
        new_root = tree.root(new_size)
        for old_size in range(1, new_size + 1):
            proof = tree.consistency_proof(old_size, new_size)
            assert proof == naive_proof(old_size, leaves[:new_size]), (old_size, new_size)
            old_root = tree.root(old_size)
            verify_consistency(old_size=old_size, new_size=new_size, old_root=old_root, new_root=new_root,
                               proof=proof)
            if old_size < new_size:
                _assert_consistency_tampering_fails(old_size, new_size, old_root, new_root, proof)
            checked += 1
    assert checked == SMALL * (SMALL + 1) // 2
    assert tree.consistency_proof(0, 0) == []
    verify_consistency(old_size=0, new_size=0, old_root=EMPTY_ROOT, new_root=EMPTY_ROOT, proof=[])


def _assert_consistency_tampering_fails(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                                        proof: list[bytes]) -> None:
    def reason(*, old: int = old_size, new: int = new_size, path: Sequence[bytes] = proof,
               first: bytes = old_root, second: bytes = new_root) -> ProofFailure:
        with pytest.raises(ProofError) as caught:
            verify_consistency(old_size=old, new_size=new, old_root=first, new_root=second, proof=path)
        return caught.value.reason

    for position in range(len(proof)):
        flipped = [*proof]
        flipped[position] = bytes([proof[position][0] ^ 1]) + proof[position][1:]
        assert reason(path=flipped) in {F.ROOT_MISMATCH, F.OLD_ROOT_MISMATCH}
    assert reason(path=[*proof, new_root]) == F.WRONG_PROOF_LENGTH
    assert reason(path=proof[:-1]) == (F.WRONG_PROOF_LENGTH if len(proof) > 1 else F.EMPTY_PROOF)
    assert reason(first=new_root, second=old_root) in {F.ROOT_MISMATCH, F.OLD_ROOT_MISMATCH}
    # an old root that is not the old tree's: when the old size is a power of two the proof
    # starts from the root given, so it is the new root that fails to come out
    assert reason(first=bytes([old_root[0] ^ 1]) + old_root[1:]) in {F.ROOT_MISMATCH, F.OLD_ROOT_MISMATCH}
    assert reason(second=node_hash(new_root, new_root)) == F.ROOT_MISMATCH
    assert reason(old=new_size, new=old_size) == F.SIZE_DECREASED
    assert reason(old=0) == F.EMPTY_OLD_TREE


def test_a_rewritten_history_fails_consistency() -> None:
    """A log that changed leaf 10 after publishing checkpoints cannot prove it extends them."""
    leaves = leaves_for(50)
    honest = grown_tree(leaves)
    forked = grown_tree([*leaves[:10], leaf_hash(b"edited block"), *leaves[11:]])
    for old_size in range(11, 50):
        published = honest.root(old_size)
        for tree in (honest, forked):
            # Whichever proof the forked log serves, its new root does not extend the old one.
            with pytest.raises(ProofError) as caught:
                verify_consistency(old_size=old_size, new_size=50, old_root=published,
                                   new_root=forked.root(50), proof=tree.consistency_proof(old_size, 50))
            assert caught.value.reason in {F.ROOT_MISMATCH, F.OLD_ROOT_MISMATCH}
    for old_size in range(1, 11):  # before the edit the two logs agree
        verify_consistency(old_size=old_size, new_size=50, old_root=honest.root(old_size),
                           new_root=forked.root(50), proof=forked.consistency_proof(old_size, 50))


@pytest.fixture(scope="module")
def medium() -> tuple[list[bytes], MerkleTree]:
    leaves = leaves_for(3000)
    tree = MerkleTree(store=MemoryHashStore())
    start = 0
    for batch in (1, 2, 3, 500, 1, 1024, 1469):  # uneven batches cross many subtree boundaries
        tree.append_many(leaves[start:start + batch])
        start += batch
    assert start == len(leaves)
    return leaves, tree


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_random_sizes_up_to_a_few_thousand(medium: tuple[list[bytes], MerkleTree],
                                           data: st.DataObject) -> None:
    leaves, tree = medium
    size = data.draw(st.integers(1, len(leaves)), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    old_size = data.draw(st.integers(1, size), label="old_size")
    root = tree.root(size)
    assert root == naive_mth(leaves[:size])

    proof = tree.inclusion_proof(index, size)
    assert proof == naive_path(index, leaves[:size])
    verify_inclusion(leaf_hash=leaves[index], index=index, size=size, proof=proof, root=root)

    consistency = tree.consistency_proof(old_size, size)
    assert consistency == naive_proof(old_size, leaves[:size])
    verify_consistency(old_size=old_size, new_size=size, old_root=tree.root(old_size), new_root=root,
                       proof=consistency)


_JUNK_PROOF = st.lists(st.binary(min_size=32, max_size=32), max_size=12)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_only_the_true_proof_verifies(medium: tuple[list[bytes], MerkleTree], data: st.DataObject) -> None:
    """Proofs as they arrive from outside: random hashes, or the tree's own proof, for a leaf
    index that may be outside the tree. Exactly the tree's proof for the right index verifies;
    anything else is a ProofError, never another exception."""
    leaves, tree = medium
    size = data.draw(st.integers(1, 600), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    claimed = data.draw(st.integers(0, size + 3) | st.just(index), label="claimed index")
    true_path = tree.inclusion_proof(index, size)
    path = data.draw(_JUNK_PROOF | st.just(true_path), label="path")

    def holds(check: Callable[[], None]) -> bool:
        try:
            check()
        except ProofError:
            return False
        return True

    root = tree.root(size)
    assert holds(lambda: verify_inclusion(leaf_hash=leaves[index], index=claimed, size=size,
                                          proof=path, root=root)) == (
        claimed == index and path == true_path)
    old_size = data.draw(st.integers(1, size), label="old_size")
    true_proof = tree.consistency_proof(old_size, size)
    proof = data.draw(_JUNK_PROOF | st.just(true_proof), label="consistency proof")
    assert holds(lambda: verify_consistency(old_size=old_size, new_size=size,
                                            old_root=tree.root(old_size), new_root=root,
                                            proof=proof)) == (proof == true_proof)


@settings(max_examples=30, deadline=None)
@given(batches=st.lists(st.integers(0, 40), max_size=12))
def test_batched_appends_store_the_same_nodes_as_single_ones(batches: list[int]) -> None:
    leaves = leaves_for(sum(batches))
    one_by_one, batched = MemoryHashStore(), MemoryHashStore()
    single = MerkleTree(store=one_by_one)
    for leaf in leaves:
        single.append(leaf)
    tree, start = MerkleTree(store=batched), 0
    for batch in batches:
        assert tree.append_many(leaves[start:start + batch]) == start + batch
        start += batch
    size = len(leaves)
    nodes = _complete_nodes(size)
    assert len(nodes) == 2 * size - size.bit_count()
    assert batched.leaf_count() == one_by_one.leaf_count() == size
    assert batched.get(nodes) == one_by_one.get(nodes)
    for level in range(size.bit_length() + 1):  # nothing beyond the complete subtrees
        with pytest.raises(LedgerError):
            batched.get([(level, size >> level)])


def _complete_nodes(size: int) -> list[NodeId]:
    return [(level, index) for level in range(size.bit_length()) for index in range(size >> level)]


# --- Cost: store reads per proof and per append ---------------------------------------------------


@dataclass
class CountingStore:
    """A `HashStore` wrapper that counts round trips and nodes read and written."""

    inner: HashStore
    get_calls: int = 0
    node_reads: int = 0
    put_calls: int = 0
    node_writes: int = 0
    max_writes_per_put: int = 0

    def leaf_count(self) -> int:
        return self.inner.leaf_count()

    def get(self, nodes: Sequence[NodeId]) -> list[bytes]:
        self.get_calls += 1
        self.node_reads += len(nodes)
        return self.inner.get(nodes)

    def put(self, nodes: Sequence[NodeWrite], *, leaf_count: int) -> None:
        self.put_calls += 1
        self.node_writes += len(nodes)
        self.max_writes_per_put = max(self.max_writes_per_put, len(nodes))
        self.inner.put(nodes, leaf_count=leaf_count)

    def reset(self) -> None:
        self.get_calls = self.node_reads = 0


MILLION = 1_000_000


@pytest.fixture(scope="module")
def million() -> CountingStore:
    store = MemoryHashStore()
    tree = MerkleTree(store=store)
    chunk = 100_000
    for start in range(0, MILLION, chunk):
        # Distinct 32-byte values stand in for leaf hashes: the tree hashes whatever it is given,
        # and this keeps building the store to ~1M node hashes.
        tree.append_many([i.to_bytes(32, "big") for i in range(start, start + chunk)])
    return CountingStore(store)


@pytest.mark.parametrize("size", [MILLION, MILLION - 1, 777_777])
def test_one_proof_on_a_million_leaves_reads_log_n_nodes(million: CountingStore, size: int) -> None:
    tree = MerkleTree(store=million)
    bound = 4 * math.ceil(math.log2(size))
    root = tree.root(size)
    for index in (0, 1, size // 2, size - 2, size - 1, 123_457):
        million.reset()
        proof = tree.inclusion_proof(index, size)
        assert million.get_calls == 1, "one batched read per proof"
        assert million.node_reads <= bound, (index, million.node_reads)
        verify_inclusion(leaf_hash=index.to_bytes(32, "big"), index=index, size=size, proof=proof, root=root)
    for old_size in (1, 3, size // 3, size - 1):
        million.reset()
        proof = tree.consistency_proof(old_size, size)
        assert million.get_calls == 1
        assert million.node_reads <= bound, (old_size, million.node_reads)
        verify_consistency(old_size=old_size, new_size=size, old_root=tree.root(old_size), new_root=root,
                           proof=proof)
    million.reset()
    tree.root(size)
    assert million.node_reads == size.bit_count()


def test_appends_cost_amortised_constant_reads_and_writes() -> None:
    store = CountingStore(MemoryHashStore())
    tree = MerkleTree(store=store)
    leaves = leaves_for(4096 + 37)
    for leaf in leaves:
        tree.append(leaf)
    n = len(leaves)
    assert store.put_calls == n
    assert store.node_writes == 2 * n - n.bit_count()  # every complete subtree, once
    assert store.max_writes_per_put <= n.bit_length()
    assert store.node_reads < n  # only left siblings of newly completed parents
    assert tree.root(n) == naive_mth(leaves)

    store.reset()
    tree.append_many(leaves_for(300))  # a batch reads at most the right edge it starts from
    assert store.node_reads <= n.bit_count()


# --- Bad requests and a store that refuses to be rewritten -----------------------------------------


def test_proofs_outside_the_tree_are_refused(small: tuple[list[bytes], MerkleTree]) -> None:
    _, tree = small
    for call in (lambda: tree.root(SMALL + 1), lambda: tree.root(-1),
                 lambda: tree.inclusion_proof(0, SMALL + 1), lambda: tree.inclusion_proof(5, 5),
                 lambda: tree.inclusion_proof(-1, 5), lambda: tree.inclusion_proof(0, 0),
                 lambda: tree.consistency_proof(6, 5), lambda: tree.consistency_proof(0, 5),
                 lambda: tree.consistency_proof(1, SMALL + 1)):
        with pytest.raises(ProofRequestError):
            call()
    assert issubclass(ProofRequestError, GatewayError)


def test_verification_is_the_shared_code_and_its_errors_are_proto_errors() -> None:
    """The gateway's names for hashing and verification are proto.tlog's own objects (one copy,
    shared with the collector); a proof that fails is a proto error, not a gateway error."""
    for name in ("EMPTY_ROOT", "HASH_SIZE", "ProofError", "ProofFailure", "leaf_hash", "node_hash",
                 "root_from_leaves", "verify_consistency", "verify_inclusion"):
        assert getattr(merkle, name) is getattr(tlog, name), name
    assert issubclass(ProofError, StacklineWireError)
    assert not issubclass(ProofError, GatewayError)


def test_verifiers_refuse_negative_sizes() -> None:
    with pytest.raises(ProofError) as caught:
        verify_inclusion(leaf_hash=EMPTY_ROOT, index=0, size=-1, proof=[], root=EMPTY_ROOT)
    assert caught.value.reason == F.INVALID_SIZE
    with pytest.raises(ProofError) as caught:
        verify_consistency(old_size=-1, new_size=1, old_root=EMPTY_ROOT, new_root=EMPTY_ROOT, proof=[])
    assert caught.value.reason == F.INVALID_SIZE
    assert str(caught.value).startswith("invalid_size: ")


def test_a_leaf_hash_must_be_32_bytes() -> None:
    tree = MerkleTree(store=MemoryHashStore())
    with pytest.raises(ValueError, match="32 bytes"):
        tree.append(b"short")
    assert tree.size == 0


def test_the_memory_store_refuses_holes_overwrites_and_bad_counts() -> None:
    store = MemoryHashStore()
    MerkleTree(store=store).append_many(leaves_for(4))
    node = bytes(32)
    for nodes, leaf_count in (
        ([(0, 3, node)], 4),  # overwrite
        ([(0, 5, node)], 5),  # hole
        ([(0, 4, b"short")], 5),  # not a hash
        ([(0, 4, node)], 6),  # count does not match the leaves
        ([(-1, 0, node)], 4),  # no such level
    ):
        with pytest.raises(LedgerError):
            store.put(nodes, leaf_count=leaf_count)
    assert store.leaf_count() == 4
    assert len(store.get(_complete_nodes(4))) == 7
    with pytest.raises(LedgerError):
        store.get([(3, 0)])
