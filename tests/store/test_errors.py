"""Driver errors stop at the store edge: every one maps to StoreUnavailable or StoreConflict."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import asyncpg
import pytest

from poller.errors import StoreConflict, StoreError, StoreUnavailable
from poller.store import postgres, sqlite
from poller.store.postgres import PostgresStore
from poller.store.sqlite import SqliteStore
from tests.fixtures.postgres import ADMIN_URL, pg_execute
from tests.store.conftest import led, snap, write

PG_CASES = [
    pytest.param(ConnectionRefusedError(111, "refused"), StoreUnavailable, id="refused"),
    pytest.param(TimeoutError(), StoreUnavailable, id="timeout"),
    pytest.param(asyncpg.exceptions.ConnectionDoesNotExistError("gone"), StoreUnavailable,
                 id="connection-gone"),
    pytest.param(asyncpg.exceptions.SerializationError("retry"), StoreUnavailable,
                 id="serialization"),
    pytest.param(asyncpg.exceptions.DeadlockDetectedError("deadlock"), StoreUnavailable,
                 id="deadlock"),
    pytest.param(asyncpg.exceptions.AdminShutdownError("bye"), StoreUnavailable, id="shutdown"),
    pytest.param(asyncpg.exceptions.TooManyConnectionsError("full"), StoreUnavailable,
                 id="too-many"),
    pytest.param(asyncpg.exceptions.LockNotAvailableError("nowait"), StoreUnavailable,
                 id="lock-not-available"),
    pytest.param(asyncpg.exceptions.ObjectNotInPrerequisiteStateError("not accepting connections"),
                 StoreUnavailable, id="database-refusing-connections"),
    pytest.param(asyncpg.exceptions.InterfaceError("connection is closed"), StoreUnavailable,
                 id="closed"),
    pytest.param(asyncpg.exceptions.InternalClientError("state"), StoreUnavailable,
                 id="broken-protocol"),
    pytest.param(asyncpg.exceptions.NotNullViolationError("null"), StoreConflict, id="not-null"),
    pytest.param(asyncpg.exceptions.UndefinedTableError("no table"), StoreConflict,
                 id="undefined-table"),
    pytest.param(asyncpg.exceptions.InsufficientPrivilegeError("denied"), StoreConflict,
                 id="privilege"),
    pytest.param(asyncpg.exceptions.InterfaceError("another operation is in progress"),
                 StoreConflict, id="misuse"),
]


def _sqlite_error(code: int) -> sqlite3.Error:
    error = sqlite3.OperationalError("injected")
    error.sqlite_errorcode = code
    return error


SQLITE_CASES = [
    pytest.param(sqlite3.SQLITE_BUSY, StoreUnavailable, id="busy"),
    pytest.param(sqlite3.SQLITE_LOCKED, StoreUnavailable, id="locked"),
    pytest.param(sqlite3.SQLITE_IOERR_SHORT_READ, StoreUnavailable, id="io-extended"),
    pytest.param(sqlite3.SQLITE_FULL, StoreUnavailable, id="disk-full"),
    pytest.param(sqlite3.SQLITE_CANTOPEN, StoreUnavailable, id="cannot-open"),
    pytest.param(sqlite3.SQLITE_CONSTRAINT_NOTNULL, StoreConflict, id="constraint"),
    pytest.param(sqlite3.SQLITE_CORRUPT, StoreConflict, id="corrupt"),
]


class TestErrorMapping:
    @pytest.mark.parametrize(("error", "expected"), PG_CASES)
    def test_postgres(self, error: BaseException, expected: type[StoreError]) -> None:
        """Each asyncpg/OS error maps to the class whose retry policy fits it."""
        assert isinstance(error, postgres.DRIVER_ERRORS)
        assert type(postgres.map_error(error, "db")) is expected

    @pytest.mark.parametrize(("code", "expected"), SQLITE_CASES)
    def test_sqlite(self, code: int, expected: type[StoreError]) -> None:
        """Each SQLite result code (extended codes included) maps to the right class."""
        assert type(sqlite.map_error(_sqlite_error(code), Path("x.db"))) is expected

    def test_sqlite_error_without_code(self) -> None:
        """A sqlite3 error that carries no result code is not retriable."""
        mapped = sqlite.map_error(sqlite3.ProgrammingError("closed"), Path("x.db"))
        assert type(mapped) is StoreConflict


class TestRealFailures:
    async def test_sqlite_write_lock_held_elsewhere(self, tmp_path: Path) -> None:
        """A commit blocked by another writer past the busy timeout is StoreUnavailable."""
        store = SqliteStore(tmp_path / "poller.db", busy_timeout_s=0.1)
        async with store:
            lease = await led(store)
            other = sqlite3.connect(tmp_path / "poller.db", isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                with pytest.raises(StoreUnavailable, match="locked"):
                    await write(store, lease, [snap("t1")])
                other.execute("ROLLBACK")
                await write(store, lease, [snap("t1")])  # and it recovers once the lock is gone
            finally:
                other.close()
            assert await store.count_tasks() == 1

    async def test_postgres_killed_pool_connection(self, pg_url: str) -> None:
        """Killed pool sessions surface as StoreUnavailable at worst, and the store recovers."""
        async with PostgresStore(pg_url) as store:
            await pg_execute(
                pg_url,
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'waiqin-poller' AND datname = current_database()",
            )
            with contextlib.suppress(StoreUnavailable):
                await store.ping()
            await asyncio.wait_for(store.ping(), 10)
            lease = await led(store)
            await write(store, lease, [snap("t1")])
            await lease.release()

    async def test_postgres_database_refusing_connections(self, pg_url: str) -> None:
        """A database that refuses connections (maintenance) is an outage, StoreUnavailable."""
        name = pg_url.rsplit("/", 1)[1]
        await pg_execute(ADMIN_URL, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            store = PostgresStore(pg_url)
            with pytest.raises(StoreUnavailable, match="55000"):
                await store.start()
            await store.stop()
        finally:
            await pg_execute(ADMIN_URL, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
