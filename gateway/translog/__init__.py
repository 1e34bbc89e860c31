"""The transparency log: an RFC 9162 Merkle tree over the ledger in acceptance order."""
