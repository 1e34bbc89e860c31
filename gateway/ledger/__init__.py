"""Ledger backends behind one interface (`gateway.ledger.base.Ledger`)."""

from __future__ import annotations

from pathlib import Path

from gateway.ledger.base import (
    AppendResult,
    BlockSelection,
    CollectorKey,
    Ledger,
    LedgerSummary,
    QuarantineEntry,
    StoredRow,
    VerifiedBlock,
)
from gateway.ledger.postgres import PostgresLedger
from gateway.ledger.sqlite import SqliteLedger

__all__ = [
    "AppendResult",
    "BlockSelection",
    "CollectorKey",
    "Ledger",
    "LedgerSummary",
    "PostgresLedger",
    "QuarantineEntry",
    "SqliteLedger",
    "StoredRow",
    "VerifiedBlock",
    "open_ledger",
]


def open_ledger(location: str, *, read_only: bool = False,
                quarantine_max_rows: int = 100_000) -> SqliteLedger | PostgresLedger:
    """A ledger from a location: `postgresql://...` (or `postgres://...`) for PostgreSQL, a SQLite
    file path or `sqlite:///path` otherwise. Nothing is opened until the first use or `open()`."""
    if location.startswith(("postgresql://", "postgres://")):
        return PostgresLedger(url=location, read_only=read_only,
                              quarantine_max_rows=quarantine_max_rows)
    path = location.removeprefix("sqlite://") if location.startswith("sqlite://") else location
    return SqliteLedger(path=Path(path), read_only=read_only,
                        quarantine_max_rows=quarantine_max_rows)
