"""Shared fixtures: paths, free ports, waiting on a condition with a deadline, PostgreSQL, and
every ledger backend in turn."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from gateway.ledger import Ledger, PostgresLedger, SqliteLedger
from tests.serial_pty import pty_pair  # noqa: F401 - a fixture, shared by the serial tests

REPO = Path(__file__).resolve().parent.parent
FIRMWARE = REPO / "firmware-config"
DEMO_PLANT = FIRMWARE / "plants" / "demo-plant.yaml"
SHARED_VECTORS = REPO.parent / "shared" / "reference" / "vectors"
_T = TypeVar("_T")


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_for(condition: Callable[[], Awaitable[bool]], *, timeout_s: float,
                   what: str, interval_s: float = 0.05) -> None:
    """Poll an async condition until it holds; fail the test naming `what` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await condition():
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(interval_s)


def wait_for_sync(condition: Callable[[], bool], *, timeout_s: float, what: str,
                  interval_s: float = 0.05) -> None:
    """The same for a plain condition."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


# --- PostgreSQL ---------------------------------------------------------------------------------------

PG_URL_ENV = "STACKLINE_TEST_PG"
PG_SKIP_ENV = "STACKLINE_SKIP_PG"
DEFAULT_TEST_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_CONNECT_TIMEOUT_S = 5.0


def run_async(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine on its own event loop in a helper thread: usable from sync code and from
    inside a running loop (a test's direct access to the store, behind the ledger's back)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def pg_execute(url: str, *statements: str) -> None:
    """Run statements on one short connection."""
    conn = await asyncpg.connect(url, timeout=PG_CONNECT_TIMEOUT_S)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def pg_fetchval(url: str, query: str, *args: object) -> Any:
    """One value from one short connection."""
    conn = await asyncpg.connect(url, timeout=PG_CONNECT_TIMEOUT_S)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


def with_database(url: str, database: str) -> str:
    """The same server URL, naming another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


@dataclass(frozen=True)
class PostgresServer:
    """The test session's PostgreSQL: a server URL for CREATE/DROP DATABASE, and a throwaway
    database made for this session."""

    admin_url: str
    database: str

    @property
    def database_url(self) -> str:
        return with_database(self.admin_url, self.database)

    def database_exists(self, name: str) -> bool:
        return bool(run_async(pg_fetchval(self.admin_url,
                                          "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
                                          name)))


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A throwaway database (stackline_test_<hex>) on the machine's PostgreSQL, dropped at the end.

    The server is $STACKLINE_TEST_PG (default postgresql://postgres@127.0.0.1:5432/postgres). If it
    does not answer, every PostgreSQL test fails saying how to start it; STACKLINE_SKIP_PG=1 skips
    them instead (CI must not, so it is never the default).
    """
    if os.environ.get(PG_SKIP_ENV) == "1":
        pytest.skip(f"{PG_SKIP_ENV}=1: PostgreSQL ledger tests skipped")
    admin_url = os.environ.get(PG_URL_ENV, DEFAULT_TEST_PG)
    server = PostgresServer(admin_url, f"stackline_test_{secrets.token_hex(6)}")
    problem = ""
    try:
        run_async(pg_execute(admin_url, f'CREATE DATABASE "{server.database}"'))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem:  # failed outside the except block, so the report shows only this message
        pytest.fail(
            f"PostgreSQL is not usable at {admin_url} ({problem}).\n"
            "The PostgreSQL ledger tests need it. Start the local server with\n"
            "    pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n"
            f"(.ci/run does this), or set {PG_URL_ENV} to a server where this user may create "
            f"databases, or set {PG_SKIP_ENV}=1 to skip these tests.", pytrace=False)
    try:
        yield server
    finally:
        run_async(pg_execute(admin_url, f'DROP DATABASE IF EXISTS "{server.database}" WITH (FORCE)'))


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> str:
    """A ledger URL on a new, empty schema of the session's database (`?search_path=`): each test
    starts clean, for the cost of one CREATE SCHEMA. Dropped with the database."""
    schema = f"t_{secrets.token_hex(6)}"
    run_async(pg_execute(postgres.database_url, f'CREATE SCHEMA "{schema}"'))
    return f"{postgres.database_url}?search_path={schema}"


@pytest.fixture
def postgres_database(postgres: PostgresServer) -> Iterator[str]:
    """A ledger URL on a database of its own (a plain postgresql://host/db URL, as an operator
    writes one), dropped after the test."""
    name = f"{postgres.database}_{secrets.token_hex(3)}"
    run_async(pg_execute(postgres.admin_url, f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(postgres.admin_url, name)
    finally:
        run_async(pg_execute(postgres.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgres"])
async def any_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ledger]:
    """An empty ledger of each backend in turn (a SQLite file; a fresh PostgreSQL schema), closed
    after the test: for tests of the `Ledger` contract that every backend must keep."""
    opened: SqliteLedger | PostgresLedger
    if request.param == "sqlite":
        opened = SqliteLedger(path=tmp_path / "ledger.sqlite")
    else:
        opened = PostgresLedger(url=request.getfixturevalue("postgres_url"))
    try:
        yield opened
    finally:
        await opened.close()
