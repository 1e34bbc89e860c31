"""Where the gateway's ledger lives: `ledger.path` (SQLite) or `ledger.url` (PostgreSQL) in the
configuration, and `open_ledger` choosing the backend from a location. No server needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import load_gateway_config
from gateway.errors import ConfigError
from gateway.ledger import PostgresLedger, SqliteLedger, open_ledger


def _write(tmp_path: Path, ledger: dict[str, Any] | None) -> Path:
    document: dict[str, Any] = {"gateway": {"id": "gw-1"}}
    if ledger is not None:
        document["ledger"] = ledger
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_without_a_ledger_section_the_ledger_is_ledger_sqlite_beside_the_config(
        tmp_path: Path) -> None:
    loaded = load_gateway_config(_write(tmp_path, None))
    assert loaded.ledger_location() == str(tmp_path.resolve() / "ledger.sqlite")
    assert loaded.ledger_path() == tmp_path.resolve() / "ledger.sqlite"


def test_a_ledger_path_is_resolved_against_the_config_file(tmp_path: Path) -> None:
    loaded = load_gateway_config(_write(tmp_path, {"path": "data/ledger.db",
                                                   "quarantine_max_rows": 500}))
    assert loaded.ledger_location() == str(tmp_path.resolve() / "data" / "ledger.db")
    assert loaded.config.ledger.quarantine_max_rows == 500


def test_a_ledger_url_is_taken_as_it_is(tmp_path: Path) -> None:
    url = "postgresql://stackline@db.example:5432/ledger"
    loaded = load_gateway_config(_write(tmp_path, {"url": url}))
    assert loaded.ledger_location() == url
    with pytest.raises(ConfigError, match=r"ledger\.url: .*PostgreSQL database, not a file"):
        loaded.ledger_path()


def test_path_and_url_together_are_refused_naming_both(tmp_path: Path) -> None:
    path = _write(tmp_path, {"path": "ledger.sqlite", "url": "postgresql://db.example/ledger"})
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(path)
    assert str(caught.value) == (f"{path.resolve()}: ledger: Value error, set either path (a SQLite "
                                 "file) or url (PostgreSQL), not both")


def test_a_url_that_is_not_postgresql_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ledger: .*url must be a postgresql://"):
        load_gateway_config(_write(tmp_path, {"url": "mysql://db.example/ledger"}))


def test_an_unknown_ledger_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ledger\.dsn: unknown key"):
        load_gateway_config(_write(tmp_path, {"dsn": "postgresql://db.example/ledger"}))


@pytest.mark.parametrize("location", ["postgresql://u@db.example:5432/ledger",
                                      "postgres://u@db.example/ledger"])
def test_open_ledger_picks_postgresql_for_its_urls(location: str) -> None:
    ledger = open_ledger(location, read_only=True, quarantine_max_rows=123)
    assert isinstance(ledger, PostgresLedger)
    assert (ledger.url, ledger.read_only, ledger.quarantine_max_rows) == (location, True, 123)


@pytest.mark.parametrize(("location", "path"), [
    ("/var/lib/stackline/ledger.sqlite", "/var/lib/stackline/ledger.sqlite"),
    ("sqlite:///var/lib/stackline/ledger.sqlite", "/var/lib/stackline/ledger.sqlite"),
    ("ledger.sqlite", "ledger.sqlite"),
])
def test_open_ledger_picks_sqlite_for_paths(location: str, path: str) -> None:
    ledger = open_ledger(location)
    assert isinstance(ledger, SqliteLedger)
    assert ledger.path == Path(path)
