"""A real Mosquitto for the tests, started from the repository's example configuration.

`docs/mosquitto/mosquitto.conf` and `docs/mosquitto/acl` are used as they are; only the listener
ports and the file locations are rewritten to a temporary folder. Users and passwords are made
with `mosquitto_passwd`, TLS certificates with `openssl`.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port
from tests.server_process import ServerProcess, accepts_connections

EXAMPLE = REPO / "docs" / "mosquitto"
GATEWAY_USER = "stackline-gateway"


def mosquitto_binary() -> str:
    """The broker's path; fail (not skip) with the way to install it."""
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if found is None:
        pytest.fail("mosquitto is not installed: run `apt-get install -y mosquitto` "
                    "(.ci/run does this on a fresh machine)")
    return found


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(directory: Path, client_names: list[str]) -> None:
    """A CA, a server certificate for 127.0.0.1, and one client certificate per name."""
    directory.mkdir(parents=True, exist_ok=True)
    curve = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *curve, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=stackline-test-ca", cwd=directory)
    (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, ext in [("server", ["-extfile", "server.ext"])] + [(n, []) for n in client_names]:
        _openssl("req", *curve, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name if name != 'server' else '127.0.0.1'}", cwd=directory)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", *ext, cwd=directory)


class Broker(ServerProcess):
    """One Mosquitto process on free ports, which a test can kill and start again."""

    name = "mosquitto"
    log_name = "mosquitto.log"

    def __init__(self, directory: Path, users: dict[str, str]) -> None:
        super().__init__(directory)
        self.users = users
        self.port = free_port()
        self.tls_port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.certificates = directory / "tls"
        make_certificates(self.certificates, ["client"])
        passwords = directory / "passwords"
        for index, (user, password) in enumerate(users.items()):
            subprocess.run(
                ["mosquitto_passwd", *(["-c"] if index == 0 else []), "-b", str(passwords),
                 user, password], check=True, capture_output=True)
        shutil.copy(EXAMPLE / "acl", directory / "acl")
        (directory / "data").mkdir(exist_ok=True)
        self.config = directory / "mosquitto.conf"
        self.config.write_text(self._rewrite((EXAMPLE / "mosquitto.conf").read_text()))

    def __repr__(self) -> str:
        return f"Broker(port={self.port}, tls_port={self.tls_port}, running={self.running})"

    def _rewrite(self, text: str) -> str:
        tls = self.certificates
        replacements = {
            r"^password_file .*$": f"password_file {self.directory / 'passwords'}",
            r"^acl_file .*$": f"acl_file {self.directory / 'acl'}",
            r"^persistence_location .*$": f"persistence_location {self.directory / 'data'}/",
            r"^log_dest .*$": f"log_dest file {self.directory / 'mosquitto.log'}",
            r"^listener 1883 127\.0\.0\.1$": f"listener {self.port} 127.0.0.1",
            r"^listener 8883$": f"listener {self.tls_port} 127.0.0.1",
            r"^cafile .*$": f"cafile {tls / 'ca.crt'}",
            r"^certfile .*$": f"certfile {tls / 'server.crt'}",
            r"^keyfile .*$": f"keyfile {tls / 'server.key'}",
        }
        for pattern, value in replacements.items():
            text, count = re.subn(pattern, value, text, flags=re.MULTILINE)
            assert count == 1, f"docs/mosquitto/mosquitto.conf no longer has {pattern!r}"
        if os.geteuid() == 0:
            # started as root, mosquitto drops to the `mosquitto` user, which cannot read the
            # test's private temporary folder
            text = "user root\n" + text
        return text

    def start(self) -> None:
        """Start the broker and wait until both listeners accept connections."""
        assert not self.running
        self.process = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        for port in (self.port, self.tls_port):
            self._wait_ready(functools.partial(accepts_connections, port), f"listen on {port}")
