"""Finding a configuration document among a collector's CONFIG blocks. Pure; shared by the backends.

A readings block names its configuration by `config_digest` = SHA-256 of the canonical document;
the document itself travels once, in a `BLOCK_KIND_CONFIG` block of the same chain. A backend
selects that collector's CONFIG blocks (a partial index keeps this cheap), newest first, and this
module picks the one whose document hashes to the digest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from google.protobuf.message import DecodeError

from proto.stackline.v1 import stackline_pb2 as pb

__all__ = ["CONFIG_KIND", "config_document_with_digest"]

# stored in blocks.kind; the SQL of both backends filters on it (and indexes it)
CONFIG_KIND = int(pb.BLOCK_KIND_CONFIG)


def config_document_with_digest(payloads: Iterable[bytes], digest: bytes) -> bytes | None:
    """The config document, among CONFIG block payloads, whose SHA-256 is `digest` (None if none).

    The digest is recomputed from the document rather than read from the block's own
    `config_digest` field: what a reading refers to is the document with that hash.
    """
    for payload in payloads:
        try:
            block = pb.Block.FromString(payload)
        except DecodeError:  # stored blocks were parsed at ingest; a damaged one is not a match
            continue
        document = block.config_document
        if document and hashlib.sha256(document).digest() == digest:
            return document
    return None
