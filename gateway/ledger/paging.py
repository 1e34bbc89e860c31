"""Keyset pagination, the one loop every ledger backend's `iter_*` reads through: a page after a
key, its rows, the next page after the last row's key, until a page comes back short. No
connection or transaction is held between pages."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

__all__ = ["keyset_pages"]

_K = TypeVar("_K")
_R = TypeVar("_R")


async def keyset_pages(read: Callable[[_K], Awaitable[list[_R]]], *, start: _K,
                       key: Callable[[_R], _K], limit: int) -> AsyncIterator[_R]:
    """Every row of the pages `read(after)` returns, from `start` on, `limit` rows a page."""
    after = start
    while True:
        rows = await read(after)
        for row in rows:
            yield row
        if len(rows) < limit:
            return
        after = key(rows[-1])
