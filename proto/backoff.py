"""Capped, jittered exponential backoff for reconnect loops (shared by the collector and the
gateway, which never import each other)."""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delays that double from `initial_s` up to `max_s`, each drawn from [delay/2, delay]."""

    def __init__(self, *, initial_s: float, max_s: float) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self._next_s = initial_s

    def __repr__(self) -> str:
        return f"Backoff(next_s={self._next_s:.2f}, max_s={self.max_s})"

    def next_delay(self) -> float:
        """The delay to wait now; the one after it doubles, up to the cap."""
        delay = self._next_s * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography
        self._next_s = min(self._next_s * 2, self.max_s)
        return delay

    def reset(self) -> None:
        """Start again from the initial delay (after a session that worked)."""
        self._next_s = self.initial_s
