"""The transparency log's nodes as a ledger serves them for reading: one `AsyncHashStore` over
whatever reads a backend gives it (the tree size, a batch of nodes). Appends go through the
backend's `log_integrate`, in its own transaction, never through this reader."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from gateway.errors import LedgerError
from gateway.translog.merkle import NodeId, NodeWrite

__all__ = ["NodeReader", "in_requested_order", "leaf_with_payload"]


def in_requested_order(nodes: Sequence[NodeId], found: dict[NodeId, bytes]) -> list[bytes]:
    """The hashes a backend found, in the order they were asked for; LedgerError naming the
    first node that should be stored and is not."""
    missing = [node for node in nodes if node not in found]
    if missing:
        level, index = missing[0]
        raise LedgerError(f"the transparency log's node (level {level}, index {index}) is "
                          "missing from the ledger: run stackline verify")
    return [found[node] for node in nodes]


def leaf_with_payload(row: Sequence[Any]) -> tuple[int, str, int, bytes]:
    """(leaf index, collector, sequence, the block's payload or b"" when the block is not
    stored) from a backend's row of log_leaves joined to blocks."""
    return int(row[0]), str(row[1]), int(row[2]), b"" if row[3] is None else bytes(row[3])


class NodeReader:
    """An `AsyncHashStore` that only reads, through a ledger backend's two queries."""

    def __init__(self, *, owner: object, size: Callable[[], Awaitable[int]],
                 nodes: Callable[[Sequence[NodeId]], Awaitable[list[bytes]]]) -> None:
        self._owner = owner
        self._size = size
        self._nodes = nodes

    def __repr__(self) -> str:
        return f"NodeReader({self._owner!r})"

    async def leaf_count(self) -> int:
        """The log's size as the ledger records it."""
        return await self._size()

    async def get(self, nodes: Sequence[NodeId]) -> list[bytes]:
        """Stored nodes, in order; LedgerError for one that should be stored and is not."""
        return await self._nodes(nodes)

    async def put(self, nodes: Sequence[NodeWrite], *, leaf_count: int) -> None:
        """Refused: the log is appended through `log_integrate`."""
        raise LedgerError("the log is appended through log_integrate, not through its reader")
