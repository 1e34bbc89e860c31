"""Collector and gateway key files.

A private key file holds one line, `stackline-ed25519-seed <base64 of the 32-byte seed>`, and is
written with mode 0600. The public key file beside it (`NAME.pub`) holds
`stackline-ed25519-public <base64 of the 32-byte key> <key id>`.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

import nacl.signing

from proto.errors import KeyFileError, UnacceptableKeyError
from proto.wire import check_public_key, key_id_of

__all__ = ["generate_key_files", "load_public_key", "load_signing_key", "public_key_line"]

PRIVATE_TAG = "stackline-ed25519-seed"
PUBLIC_TAG = "stackline-ed25519-public"


def public_key_line(public_key: bytes) -> str:
    """The text of a public key file."""
    return f"{PUBLIC_TAG} {base64.b64encode(public_key).decode()} {key_id_of(public_key)}\n"


def generate_key_files(private_path: Path, *, overwrite: bool = False) -> tuple[Path, str]:
    """Create a new key pair; return the public key file's path and the key id."""
    public_path = private_path.with_name(private_path.name + ".pub")
    if not overwrite and (private_path.exists() or public_path.exists()):
        raise KeyFileError(
            f"{private_path} already exists; refusing to overwrite a key "
            "(move it away first, or pass --force)"
        )
    signing_key = nacl.signing.SigningKey.generate()
    public_key = bytes(signing_key.verify_key)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    seed = base64.b64encode(bytes(signing_key)).decode()
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # open's mode applies only to a new file; an overwritten one keeps its own
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{PRIVATE_TAG} {seed}\n")
    public_path.write_text(public_key_line(public_key))
    return public_path, key_id_of(public_key)


def _read_tagged(path: Path, tag: str) -> bytes:
    try:
        text = path.read_text()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from exc
    fields = text.split()
    if len(fields) < 2 or fields[0] != tag:
        raise KeyFileError(f"{path} is not a Stackline key file (expected a line starting {tag!r})")
    try:
        raw = base64.b64decode(fields[1], validate=True)
    except binascii.Error as exc:
        raise KeyFileError(f"{path}: the key is not valid base64") from exc
    if len(raw) != 32:
        raise KeyFileError(f"{path}: the key is {len(raw)} bytes, expected 32")
    return raw


def load_signing_key(path: Path) -> nacl.signing.SigningKey:
    """Read a private key file made by `stackline keygen`."""
    return nacl.signing.SigningKey(_read_tagged(path, PRIVATE_TAG))


def load_public_key(path: Path) -> bytes:
    """Read a public key file and check it against the enrolment rule."""
    raw = _read_tagged(path, PUBLIC_TAG)
    try:
        check_public_key(raw)
    except UnacceptableKeyError as exc:
        raise KeyFileError(f"{path}: {exc}") from exc
    return raw
