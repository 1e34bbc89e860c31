"""The transparency log's nodes as a ledger serves them for reading: one `AsyncHashStore` over
whatever reads a backend gives it (the tree size, a batch of nodes). Appends go through the
backend's `log_integrate`, in its own transaction, never through this reader."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from gateway.errors import LedgerError
from gateway.translog.merkle import NodeId, NodeWrite

__all__ = ["NodeReader"]


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
