"""Capped, jittered exponential backoff for reconnect loops (shared by the collector and the
gateway, which never import each other)."""

from __future__ import annotations

import asyncio
import random

__all__ = ["Backoff", "cancel_count", "check_cancelled", "forget_group_cancel", "raise_if_cancelled"]


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


def raise_if_cancelled(cause: BaseException | None) -> None:
    """Re-raise a cancellation that a library turned into its own error.

    Some clients (aiomqtt, grpc, pymodbus) catch `CancelledError` inside their calls and raise
    their own exception instead; a retry loop that catches that exception would then swallow the
    cancellation and run forever. Call this first in such an `except` block.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from cause


def cancel_count() -> int:
    """How many cancellation requests the current task has pending (see `forget_group_cancel`)."""
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


def forget_group_cancel(before: int) -> None:
    """Undo the cancellation request a failing `asyncio.TaskGroup` leaves on its parent task.

    Python 3.11's TaskGroup cancels its parent when a child fails and does not always take the
    request back (fixed in 3.12), so `cancelling()` would stay raised and `raise_if_cancelled`
    would mistake the next ordinary error for a cancellation. Call with `cancel_count()` taken
    before the group, in the handler of the group's error.
    """
    task = asyncio.current_task()
    while task is not None and task.cancelling() > before:
        task.uncancel()


def check_cancelled() -> None:
    """Raise CancelledError if this task was asked to stop but is still running.

    Python 3.11's `asyncio.wait_for` (used inside aiomqtt's calls) can swallow a cancellation that
    arrives as the awaited operation completes; a loop calling such a library would then never
    stop. Call this after each such await in a loop (in tasks that own no TaskGroup).
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
