"""Which of one collector's stored blocks a read selects, and the SQL both backends run for it.
Pure; shared by the backends (they differ only in how a parameter is written: `?` or `$n`).

Every condition is on a stored column, so no payload is decoded to select: `kind` and the window
columns are written at ingest from the verified block. A kind is written into the statement as a
literal, never bound: only then can SQLite and PostgreSQL (whose generic plans know nothing of a
parameter's value) use the partial index `blocks_config` (collector_id, sequence) WHERE kind =
CONFIG, so the configuration blocks of a long chain are found without reading the chain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["BLOCK_ROW_COLUMNS", "BlockSelection", "selection_query"]

BLOCK_ROW_COLUMNS = "entry_index, collector_id, sequence, hash, payload, signature, key_id"
"""The columns of a `StoredRow`, in `StoredRow.from_row`'s order."""


@dataclass(frozen=True, slots=True)
class BlockSelection:
    """Blocks of one collector, every bound optional and all of them combined: sequences up to
    `to_sequence` (inclusive), of one `kind` (a `pb.BlockKind` value), whose window starts in
    [from_unix_ms, to_unix_ms)."""

    to_sequence: int | None = None
    kind: int | None = None
    from_unix_ms: int | None = None
    to_unix_ms: int | None = None


def selection_query(collector_id: str, selection: BlockSelection, *, after_sequence: int,
                    limit: int, placeholder: Callable[[int], str]) -> tuple[str, list[object]]:
    """The SELECT of up to `limit` selected blocks with sequence > `after_sequence`, in sequence
    order, and its arguments; `placeholder(n)` writes the n-th parameter (1-based)."""
    conditions: list[str] = []
    args: list[object] = []

    def bind(condition: str, value: object) -> None:
        args.append(value)
        conditions.append(condition.format(placeholder(len(args))))

    bind("collector_id = {}", collector_id)
    bind("sequence > {}", after_sequence)
    if selection.to_sequence is not None:
        bind("sequence <= {}", selection.to_sequence)
    if selection.kind is not None:
        kind = int(selection.kind)  # an int, so the literal below cannot carry anything else
        conditions.append(f"kind = {kind}")
    if selection.from_unix_ms is not None:
        bind("window_start_unix_ms >= {}", selection.from_unix_ms)
    if selection.to_unix_ms is not None:
        bind("window_start_unix_ms < {}", selection.to_unix_ms)
    args.append(limit)
    query = (f"SELECT {BLOCK_ROW_COLUMNS} FROM blocks WHERE {' AND '.join(conditions)} "  # noqa: S608 - placeholders and an int literal only
             f"ORDER BY sequence LIMIT {placeholder(len(args))}")
    return query, args
