"""The report signature: how a gateway signs a report's bytes with its log key, and how anyone
checks it (docs/verifying.md section 6).

A rule of the report's wire format, not of one transport: the verifier API signs with it
(gateway/verifier_api.py, served over HTTP and gRPC), `stackline export` carries the signature in
an evidence bundle (gateway/bundle.py), and `stackline verify --bundle` checks it offline
(gateway/bundle_verify.py). Pure: bytes and keys in, bytes or a verdict out.
"""

from __future__ import annotations

from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

__all__ = ["REPORT_SIGNATURE_CONTEXT", "SignedReport", "sign_report", "verify_report_signature"]

REPORT_SIGNATURE_CONTEXT = b"stackline/v1/report\x00"
"""Ed25519 by the log key over this prefix + the report's bytes: the report signature rule."""


@dataclass(frozen=True, slots=True)
class SignedReport:
    """A report's canonical JSON bytes, the log key's signature over them, and the log's verifier
    key (the C2SP note verifier key whose key signed them)."""

    body: bytes
    signature: bytes
    log_key: str


def sign_report(body: bytes, signing_key: nacl.signing.SigningKey) -> bytes:
    """The report signature: Ed25519 over REPORT_SIGNATURE_CONTEXT + body."""
    return bytes(signing_key.sign(REPORT_SIGNATURE_CONTEXT + body).signature)


def verify_report_signature(body: bytes, signature: bytes, public_key: bytes) -> bool:
    """True when `signature` is the log key's report signature over `body` (libsodium's rule)."""
    try:
        nacl.signing.VerifyKey(public_key).verify(REPORT_SIGNATURE_CONTEXT + body, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError, TypeError):
        return False
    return True
