"""Broker credentials both sides resolve from their configuration (secrets and TLS files), and
the TLS context that checks the broker's certificate. No network code here."""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["BrokerCredentials", "read_secret"]


class BrokerCredentials:
    """A password and TLS files, already resolved to absolute paths."""

    def __init__(self, *, password: str | None = None, ca_file: str | None = None,
                 cert_file: str | None = None, key_file: str | None = None) -> None:
        self.password = password
        self.ca_file = ca_file
        self.cert_file = cert_file
        self.key_file = key_file

    def __repr__(self) -> str:  # never print the password
        return (f"BrokerCredentials(password={'set' if self.password else 'none'}, "
                f"ca_file={self.ca_file!r}, cert_file={self.cert_file!r})")

    def tls_context(self) -> ssl.SSLContext | None:
        """A client context verifying the broker against `ca_file` (None: plaintext)."""
        if self.ca_file is None:
            return None
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file and self.key_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


def read_secret(path: Path) -> str:
    """The first line of a file that holds one secret; OSError or ValueError if there is none."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0]:
        raise ValueError(f"{path} is empty")
    return lines[0]
