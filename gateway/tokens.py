"""Bearer tokens of the verifier API: what a token may read, and how a presented token is found.

Pure: no I/O. The gateway keeps only SHA-256 digests of its tokens (the configuration holds a
digest, or names a file holding the token); a presented token is hashed and compared with every
configured digest in constant time, so neither the configuration nor the comparison gives the
token away.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "ALL_PLANTS",
    "MIN_TOKEN_CHARS",
    "TokenScope",
    "Tokens",
    "bearer_token",
    "new_token",
    "token_digest",
    "token_stanza",
]

ALL_PLANTS = "*"
"""In a token's `plants`: every plant, and the collectors whose plant is not known."""

MIN_TOKEN_CHARS = 16
"""A token read from a file must be at least this long (`new_token` makes 43 characters)."""

_BEARER = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr] +([!-~]+) *$")


def token_digest(token: str) -> bytes:
    """SHA-256 of the token's UTF-8 text: what the configuration holds (as hex)."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def new_token() -> str:
    """A fresh random token: 32 bytes from the system's CSPRNG, URL-safe base64."""
    return secrets.token_urlsafe(32)


def token_stanza(*, name: str, plants: Iterable[str], token: str) -> str:
    """The `verifier_api.tokens` entry (YAML) for a token: its name, digest and plants."""
    listed = ", ".join(f'"{p}"' if p == ALL_PLANTS else p for p in plants)
    return (f"    - name: {name}\n"
            f"      sha256: {token_digest(token).hex()}\n"
            f"      plants: [{listed}]\n")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` value (RFC 6750), or None when there is
    none or it is not a bearer credential."""
    if authorization is None:
        return None
    found = _BEARER.match(authorization)
    return found.group(1) if found else None


@dataclass(frozen=True, slots=True)
class TokenScope:
    """One configured token: its name (for logs, never the token) and the plants it may read."""

    name: str
    plants: frozenset[str]

    @property
    def every_plant(self) -> bool:
        """Scoped to "*": every plant, and collectors of no known plant."""
        return ALL_PLANTS in self.plants

    def may_read(self, plant_id: str | None) -> bool:
        """Whether this token may read a plant's data (None: a collector of no known plant)."""
        if self.every_plant:
            return True
        return plant_id is not None and plant_id in self.plants


class Tokens:
    """The configured tokens, by digest."""

    def __init__(self, entries: Iterable[tuple[bytes, TokenScope]]) -> None:
        self._entries = tuple(entries)
        for digest, _ in self._entries:
            if len(digest) != hashlib.sha256().digest_size:
                raise ValueError("a token digest is 32 bytes (SHA-256)")

    def __repr__(self) -> str:
        return f"Tokens({', '.join(scope.name for _, scope in self._entries)})"

    def __len__(self) -> int:
        return len(self._entries)

    def find(self, token: str) -> TokenScope | None:
        """The scope of a presented token, or None. Every digest is compared, in constant time,
        whatever matches, so the time taken does not tell which one did."""
        presented = token_digest(token)
        found: TokenScope | None = None
        for digest, scope in self._entries:
            if hmac.compare_digest(presented, digest):
                found = scope
        return found
