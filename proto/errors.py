"""Exceptions of the shared wire package."""

from __future__ import annotations

__all__ = ["KeyFileError", "StacklineWireError", "UnacceptableKeyError", "VerificationError"]


class StacklineWireError(Exception):
    """Root of every error raised by the `proto` package."""


class VerificationError(StacklineWireError):
    """A signature or payload did not verify; `reason` is a stable machine-readable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class UnacceptableKeyError(StacklineWireError):
    """A public key that the verification rule refuses (wrong length, non-canonical, small order)."""


class KeyFileError(StacklineWireError):
    """A key file that is missing, unreadable or not in the Stackline key format."""
