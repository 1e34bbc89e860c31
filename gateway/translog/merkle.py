"""RFC 9162 (RFC 6962) Merkle tree: appending leaves and generating roots and proofs from stored
complete-subtree hashes. Pure: no I/O beyond the `HashStore` passed in.

Hashing, the tree shape of proofs and proof verification live in `proto.tlog`, shared with the
collector; they are re-exported here under the names the gateway has always used. `ProofError`
(a proof that does not verify) is therefore a `proto.errors.StacklineWireError`; `ProofRequestError`
(a request for a size or index this tree does not have) is the gateway's own. Terms follow RFC 9162
section 2.1 (see `proto.tlog`).

Storage layout (see `HashStore`): node (level, index) is the root of the complete subtree over
leaves [index * 2**level, (index + 1) * 2**level); level 0 holds the leaf hashes. Only complete
subtrees are stored, and a stored node never changes, so every proof is assembled from
O(log n) stored nodes; only the incomplete right edge of a tree is hashed on request, from the
complete pieces it is made of.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, TypeAlias

from gateway.errors import GatewayError, LedgerError
from proto.tlog import (
    EMPTY_ROOT,
    HASH_SIZE,
    ProofError,
    ProofFailure,
    consistency_ranges,
    inclusion_ranges,
    leaf_hash,
    node_hash,
    root_from_leaves,
    verify_consistency,
    verify_inclusion,
)

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "AsyncHashStore",
    "AsyncMerkleTree",
    "HashStore",
    "MemoryHashStore",
    "MerkleTree",
    "NodeId",
    "NodeWrite",
    "ProofError",
    "ProofFailure",
    "ProofRequestError",
    "leaf_hash",
    "node_hash",
    "root_from_leaves",
    "verify_consistency",
    "verify_inclusion",
]

NodeId: TypeAlias = tuple[int, int]
"""(level, index) of a complete subtree: leaves [index * 2**level, (index + 1) * 2**level)."""

NodeWrite: TypeAlias = tuple[int, int, bytes]
"""(level, index, hash) of a complete subtree, as written to a `HashStore`."""


# --- Errors ------------------------------------------------------------------------------------


class ProofRequestError(GatewayError):
    """A root or proof asked for a size or index the tree does not have (the request is wrong,
    not the log)."""


# --- Which stored subtrees a root or proof is folded from -------------------------------------


def _subtree_nodes(start: int, end: int) -> list[NodeId]:
    """The complete subtrees, left to right, whose right-to-left fold is MTH(D[start:end]).

    Holds for every subtree the RFC's recursion produces: such a start is a multiple of the
    smallest power of two not below end - start, so each piece of the binary decomposition of
    the length is an aligned complete subtree.
    """
    nodes: list[NodeId] = []
    while start < end:
        level = (end - start).bit_length() - 1
        nodes.append((level, start >> level))
        start += 1 << level
    return nodes


def _fold_right(hashes: Sequence[bytes]) -> bytes:
    """node(h0, node(h1, ... node(h[-2], h[-1]))): MTH from its complete-subtree pieces."""
    result = hashes[-1]
    for left in reversed(hashes[:-1]):
        result = node_hash(left, result)
    return result


# --- Storage -----------------------------------------------------------------------------------


class HashStore(Protocol):
    """Where a `MerkleTree` keeps the hashes of its complete subtrees, and its leaf count.

    Layout, one row per node, shaped for a SQL table later::

        CREATE TABLE merkle_node (
            level INTEGER NOT NULL,   -- 0 = leaf hashes; a node at level L spans 2**L leaves
            idx   BIGINT  NOT NULL,   -- position on its level, from 0
            hash  BYTEA   NOT NULL,   -- 32 bytes
            PRIMARY KEY (level, idx)
        );

    plus the leaf count (a one-row table, or max(idx) + 1 at level 0), written in the same
    transaction as the rows of an append. Node (L, i) exists exactly when (i + 1) * 2**L is at
    most the leaf count. A tree of n leaves holds 2n - popcount(n) rows, ~64 bytes of hash per
    leaf. Rows are written once and never change (the log is append-only), so replicas and caches
    can serve them as they are.

    `MerkleTree` is the single writer of a store; reads may come from anywhere. A put that would
    rewrite a stored node must be refused (the primary key does that for a SQL table), so a
    second writer racing the first fails instead of forking the log.
    """

    def leaf_count(self) -> int:
        """Number of leaves appended so far."""
        ...

    def get(self, nodes: Sequence[NodeId]) -> list[bytes]:
        """The hashes of `nodes`, in order, in one round trip. A node the store should hold and
        does not is an integrity failure: raise `LedgerError`, never return a placeholder."""
        ...

    def put(self, nodes: Sequence[NodeWrite], *, leaf_count: int) -> None:
        """Store new complete-subtree nodes and advance the leaf count, all or nothing."""
        ...


class MemoryHashStore:
    """A `HashStore` in memory: one bytearray of concatenated 32-byte hashes per level."""

    def __init__(self) -> None:
        self._levels: list[bytearray] = []
        self._leaf_count = 0

    def __repr__(self) -> str:
        return f"MemoryHashStore(leaf_count={self._leaf_count}, levels={len(self._levels)})"

    def leaf_count(self) -> int:
        """Number of leaves appended so far."""
        return self._leaf_count

    def get(self, nodes: Sequence[NodeId]) -> list[bytes]:
        """The hashes of `nodes`, in order; `LedgerError` for a node not stored."""
        out: list[bytes] = []
        for level, index in nodes:
            row = self._levels[level] if 0 <= level < len(self._levels) else None
            if row is None or not 0 <= index < len(row) // HASH_SIZE:
                raise LedgerError(f"Merkle node (level {level}, index {index}) is not stored")
            out.append(bytes(row[index * HASH_SIZE:(index + 1) * HASH_SIZE]))
        return out

    def put(self, nodes: Sequence[NodeWrite], *, leaf_count: int) -> None:
        """Append nodes (each the next index on its level) and set the leaf count, all or
        nothing: a write that would leave a hole or overwrite a node is refused."""
        stored = {level: len(row) // HASH_SIZE for level, row in enumerate(self._levels)}
        batches: dict[int, list[bytes]] = {}
        for level, index, node in nodes:
            batch = batches.get(level)
            if batch is None:
                batch = batches[level] = []
            if index != stored.get(level, 0) + len(batch) or level < 0 or len(node) != HASH_SIZE:
                raise LedgerError(f"refused Merkle node write at (level {level}, index {index}): "
                                  "nodes are appended in order, once, as 32-byte hashes")
            batch.append(node)
        leaves_after = stored.get(0, 0) + len(batches.get(0, []))
        if leaves_after != leaf_count:
            raise LedgerError(f"refused leaf count {leaf_count}: the store holds {self._leaf_count} leaves "
                              f"and this write brings level 0 to {leaves_after}")
        for level, batch in sorted(batches.items()):
            while len(self._levels) <= level:
                self._levels.append(bytearray())
            self._levels[level] += b"".join(batch)
        self._leaf_count = leaf_count


# --- The tree ----------------------------------------------------------------------------------


def _edge_nodes(size: int) -> list[NodeId]:
    """The complete subtrees along the right edge of a tree of `size` leaves, largest first (one
    per set bit of the size): all an append needs to read."""
    return [(level, (size >> level) - 1)
            for level in reversed(range(size.bit_length())) if size >> level & 1]


def _edge_reads(size: int, count: int) -> list[NodeId]:
    """The right-edge nodes of a tree of `size` leaves that appending `count` leaves combines
    into new parents: the ones not on the right edge of the grown tree. Only these are read."""
    after = set(_edge_nodes(size + count))
    return [node for node in _edge_nodes(size) if node not in after]


def _append_writes(size: int, edge: dict[NodeId, bytes], leaf_hashes: Sequence[bytes]
                   ) -> tuple[list[NodeWrite], int]:
    """The node writes that append `leaf_hashes` to a tree of `size` leaves, given the hashes of
    `_edge_reads(size, len(leaf_hashes))` in `edge`; and the new size."""
    stack: list[NodeId] = _edge_nodes(size)
    known = dict(edge)
    writes: list[NodeWrite] = []
    for leaf in leaf_hashes:
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes, not {len(leaf)}")
        level, index, node = 0, size, leaf
        writes.append((level, index, node))
        while index & 1:  # a right child: its parent is now complete
            left = known[stack.pop()]
            level, index, node = level + 1, index >> 1, node_hash(left, node)
            writes.append((level, index, node))
        stack.append((level, index))
        known[(level, index)] = node
        size += 1
    return writes, size


def _check_size(size: int, leaf_count: int) -> None:
    if not 0 <= size <= leaf_count:
        raise ProofRequestError(f"tree size {size} is outside 0..{leaf_count}")


def _proof_ranges(kind: str, first: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose MTHs answer a request: ("root", 0, size), ("inclusion", index,
    size) or ("consistency", old_size, new_size); ProofRequestError for an impossible one."""
    if kind == "root":
        return [(0, size)] if size else []
    if kind == "inclusion":
        if not 0 <= first < size:
            raise ProofRequestError(f"leaf index {first} is outside a tree of size {size}")
        return inclusion_ranges(first, size)
    if not 0 <= first <= size:
        raise ProofRequestError(f"no consistency proof from size {first} to {size}")
    if first == 0 and size > 0:
        raise ProofRequestError(f"no consistency proof from an empty tree (to size {size})")
    return [] if first == size else consistency_ranges(first, size)


def _pieces(ranges: Sequence[tuple[int, int]]) -> tuple[list[list[NodeId]], list[NodeId]]:
    """Per range, the stored complete subtrees it folds from; and all of them, for one read."""
    pieces = [_subtree_nodes(start, end) for start, end in ranges]
    return pieces, [node for nodes in pieces for node in nodes]


def _fold_pieces(pieces: Sequence[Sequence[NodeId]], got: Sequence[bytes]) -> list[bytes]:
    """MTH of each range from the hashes read for `_pieces`."""
    wanted = sum(len(nodes) for nodes in pieces)
    if len(got) != wanted:
        raise LedgerError(f"asked the hash store for {wanted} Merkle nodes, got {len(got)}")
    out: list[bytes] = []
    offset = 0
    for nodes in pieces:
        out.append(_fold_right(got[offset:offset + len(nodes)]))
        offset += len(nodes)
    return out


def _fold_many(plans: Sequence[tuple[list[list[NodeId]], list[NodeId]]], wanted: Sequence[NodeId],
               got: Sequence[bytes]) -> list[list[bytes]]:
    """Each plan's answer from one read of the union of their nodes."""
    if len(got) != len(wanted):
        raise LedgerError(f"asked the hash store for {len(wanted)} Merkle nodes, got {len(got)}")
    found = dict(zip(wanted, got, strict=True))
    return [_fold_pieces(pieces, [found[node] for node in nodes]) for pieces, nodes in plans]


class MerkleTree:
    """An append-only RFC 9162 Merkle tree over a `HashStore`.

    Holds no state of its own: every answer comes from the store, so several readers can share
    one store. Append costs amortised O(1) hashes and reads (one leaf plus the parents it completes;
    only the right-edge nodes those parents combine are read); `root`, `inclusion_proof` and
    `consistency_proof` each read O(log n) stored nodes in one `HashStore.get` and hash only the
    incomplete right edge, at most log2(n) hashes.
    """

    def __init__(self, *, store: HashStore) -> None:
        self._store = store

    def __repr__(self) -> str:
        return f"MerkleTree(size={self.size}, store={self._store!r})"

    @property
    def size(self) -> int:
        """Number of leaves in the tree now."""
        return self._store.leaf_count()

    def append(self, leaf_hash: bytes) -> int:
        """Append one leaf hash (see `leaf_hash`); returns its index."""
        return self.append_many([leaf_hash]) - 1

    def append_many(self, leaf_hashes: Iterable[bytes]) -> int:
        """Append leaf hashes in order, in one `HashStore.put`; returns the new tree size."""
        leaves = list(leaf_hashes)
        size = self._store.leaf_count()
        reads = _edge_reads(size, len(leaves))
        edge = dict(zip(reads, self._store.get(reads), strict=True)) if reads else {}
        writes, size = _append_writes(size, edge, leaves)
        if writes:
            self._store.put(writes, leaf_count=size)
        return size

    def root(self, size: int) -> bytes:
        """MTH(D[size]) for any size up to the current one (RFC 9162 section 2.1.1)."""
        found = self._answer("root", 0, size)
        return found[0] if found else EMPTY_ROOT

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """PATH(index, D[size]), bottom-up (RFC 9162 section 2.1.3.1), for 0 <= index < size."""
        return self._answer("inclusion", index, size)

    def inclusion_proofs(self, indexes: Sequence[int], size: int) -> list[list[bytes]]:
        """`inclusion_proof` of several leaves, from one `HashStore.get` of every node they need."""
        _check_size(size, self._store.leaf_count())
        plans = [_pieces(_proof_ranges("inclusion", index, size)) for index in indexes]
        wanted = list(dict.fromkeys(node for _, nodes in plans for node in nodes))
        return _fold_many(plans, wanted, self._store.get(wanted))

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """PROOF(old_size, D[new_size]) (RFC 9162 section 2.1.4.1); empty for equal sizes.

        RFC 9162 defines no proof from an empty tree, so 0 == old_size < new_size is refused.
        """
        return self._answer("consistency", old_size, new_size)

    def _answer(self, kind: str, first: int, size: int) -> list[bytes]:
        _check_size(size, self._store.leaf_count())
        pieces, wanted = _pieces(_proof_ranges(kind, first, size))
        return _fold_pieces(pieces, self._store.get(wanted))


class AsyncHashStore(Protocol):
    """A `HashStore` whose reads and writes are awaited (a database behind an async driver)."""

    async def leaf_count(self) -> int:
        """Number of leaves appended so far."""
        ...

    async def get(self, nodes: Sequence[NodeId]) -> list[bytes]:
        """As `HashStore.get`."""
        ...

    async def put(self, nodes: Sequence[NodeWrite], *, leaf_count: int) -> None:
        """As `HashStore.put`."""
        ...


class AsyncMerkleTree:
    """`MerkleTree` over an `AsyncHashStore`: the same nodes, reads and answers."""

    def __init__(self, *, store: AsyncHashStore) -> None:
        self._store = store

    def __repr__(self) -> str:
        return f"AsyncMerkleTree(store={self._store!r})"

    async def size(self) -> int:
        """Number of leaves in the tree now."""
        return await self._store.leaf_count()

    async def append_many(self, leaf_hashes: Iterable[bytes]) -> int:
        """As `MerkleTree.append_many`."""
        leaves = list(leaf_hashes)
        size = await self._store.leaf_count()
        reads = _edge_reads(size, len(leaves))
        edge = dict(zip(reads, await self._store.get(reads), strict=True)) if reads else {}
        writes, size = _append_writes(size, edge, leaves)
        if writes:
            await self._store.put(writes, leaf_count=size)
        return size

    async def root(self, size: int) -> bytes:
        """As `MerkleTree.root`."""
        found = await self._answer("root", 0, size)
        return found[0] if found else EMPTY_ROOT

    async def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """As `MerkleTree.inclusion_proof`."""
        return await self._answer("inclusion", index, size)

    async def inclusion_proofs(self, indexes: Sequence[int], size: int) -> list[list[bytes]]:
        """As `MerkleTree.inclusion_proofs`."""
        _check_size(size, await self._store.leaf_count())
        plans = [_pieces(_proof_ranges("inclusion", index, size)) for index in indexes]
        wanted = list(dict.fromkeys(node for _, nodes in plans for node in nodes))
        return _fold_many(plans, wanted, await self._store.get(wanted))

    async def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """As `MerkleTree.consistency_proof`."""
        return await self._answer("consistency", old_size, new_size)

    async def _answer(self, kind: str, first: int, size: int) -> list[bytes]:
        _check_size(size, await self._store.leaf_count())
        pieces, wanted = _pieces(_proof_ranges(kind, first, size))
        return _fold_pieces(pieces, await self._store.get(wanted))
