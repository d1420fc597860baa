"""The soak's stores and how each is taken away for a while (a store outage)."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from tests.fixtures.postgres import ADMIN_URL, pg_execute, with_database

STORES = ("sqlite", "postgresql")


class SoakStore(Protocol):
    """A fresh store for one soak, and outages of it."""

    name: str

    @property
    def url(self) -> str:
        """POLLER_STORE_URL for the daemon."""

    async def create(self) -> None:
        """Make the empty store (the daemon migrates it)."""

    async def drop(self) -> None:
        """Remove the store; safe after a failed create."""

    def outage(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Within: the daemon can no longer write (and on PostgreSQL not even connect)."""


class SqliteStore:
    """A file under the soak's work directory; an outage makes it immutable.

    `chattr +i` on the database and its `-wal` file (never the `-shm`: SQLite maps it, and an
    immutable mapping would kill the daemon with SIGBUS): writes fail with SQLITE_IOERR_WRITE,
    reads go on. Needs root, like chattr itself.
    """

    name = "sqlite"

    def __init__(self, work: Path) -> None:
        self.path = work / "soak.db"

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path}"

    async def create(self) -> None:
        pass  # the daemon creates the file

    async def drop(self) -> None:
        _chattr("-i", *self._files())  # never leave an undeletable file behind

    @contextlib.asynccontextmanager
    async def outage(self) -> AsyncIterator[None]:
        files = self._files()
        if len(files) < 2:
            raise RuntimeError(f"{self.path} is not an open WAL database: {files}")
        _chattr("+i", *files)
        try:
            yield
        finally:
            _chattr("-i", *files)

    def _files(self) -> list[Path]:
        return [p for p in (self.path, self.path.with_name(self.path.name + "-wal")) if p.exists()]


class PostgresStore:
    """A new database on the test server; an outage refuses connections to it and terminates
    every session the daemon holds (its pool and the leader's lock session)."""

    name = "postgresql"

    def __init__(self, admin_url: str = ADMIN_URL) -> None:
        self.admin_url = admin_url
        self.database = f"poller_soak_{uuid.uuid4().hex[:12]}"

    @property
    def url(self) -> str:
        return with_database(self.admin_url, self.database)

    async def create(self) -> None:
        await pg_execute(self.admin_url, f'CREATE DATABASE "{self.database}"')

    async def drop(self) -> None:
        await pg_execute(self.admin_url, f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    @contextlib.asynccontextmanager
    async def outage(self) -> AsyncIterator[None]:
        await self._allow_connections(False)
        try:
            terminated = await pg_execute(
                self.admin_url, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                "WHERE datname = $1 AND pid <> pg_backend_pid()", self.database)
            if not terminated:
                raise RuntimeError(f"no session of the daemon on {self.database} to terminate")
            yield
        finally:
            await self._allow_connections(True)

    async def _allow_connections(self, allow: bool) -> None:
        await pg_execute(self.admin_url,
                         f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS {str(allow).lower()}')


def store_for(kind: str, work: Path) -> SoakStore:
    """The store named on the command line; ValueError for an unknown name."""
    if kind == "sqlite":
        return SqliteStore(work)
    if kind == "postgresql":
        return PostgresStore()
    raise ValueError(f"unknown store {kind!r}; expected one of {', '.join(STORES)}")


def _chattr(flag: str, *paths: Path) -> None:
    if not paths:
        return
    done = subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"chattr {flag} failed ({done.stderr.strip()}): an SQLite store outage needs root "
                           "and a file system with the immutable attribute")
