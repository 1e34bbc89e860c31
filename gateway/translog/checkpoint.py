"""Checkpoints of the transparency log, as C2SP signed notes.

The code lives in `proto.tlog`, shared with the collector (which checks the checkpoints in its
receipts); this module keeps the gateway's import path. `CheckpointError` is therefore a
`proto.errors.StacklineWireError`, not a `GatewayError`.
"""

from __future__ import annotations

from proto.tlog import (
    Checkpoint,
    CheckpointError,
    key_id,
    open_note,
    parse_checkpoint,
    parse_verifier_key,
    sign_note,
    verifier_key,
)

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "key_id",
    "open_note",
    "parse_checkpoint",
    "parse_verifier_key",
    "sign_note",
    "verifier_key",
]
