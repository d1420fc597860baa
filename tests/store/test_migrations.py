"""Versioned schema migrations: applied once, idempotent, and a newer schema is refused."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import date
from typing import Any

import pytest

from poller.errors import StoreConflict
from poller.store.migrations import LATEST_VERSION, MIGRATIONS, VERSION_TABLE, Migration, pending
from poller.store.sqlite import path_from_url
from tests.fixtures.postgres import pg_execute
from tests.store.conftest import led, make_store, snap, write


def _sqlite_value(url: str, statement: str) -> Any:
    with sqlite3.connect(path_from_url(url)) as conn:
        row = conn.execute(statement).fetchone()
    conn.close()
    return None if row is None else row[0]


async def raw(url: str, statement: str) -> Any:
    """Run one statement on the database behind `url`, outside the store; the first value."""
    if url.startswith("sqlite:"):
        return await asyncio.to_thread(_sqlite_value, url, statement)
    return await pg_execute(url, statement)


class TestPending:
    def test_new_database_gets_every_step(self) -> None:
        """A database at version 0 needs every migration, in order."""
        assert pending(0) == list(MIGRATIONS)
        assert [m.version for m in MIGRATIONS] == sorted({m.version for m in MIGRATIONS})

    def test_current_database_needs_nothing(self) -> None:
        """A database at the latest version needs no step."""
        assert pending(LATEST_VERSION) == []

    def test_only_later_steps_apply(self) -> None:
        """Only the steps after the recorded version are pending."""
        steps = [Migration(n, f"step {n}", (), ()) for n in (1, 2, 3)]
        assert [m.version for m in pending(1, steps)] == [2, 3]

    def test_newer_database_is_refused(self) -> None:
        """A version beyond this release's last step raises StoreConflict naming both."""
        with pytest.raises(StoreConflict, match=rf"version {LATEST_VERSION + 1}.*newer"):
            pending(LATEST_VERSION + 1)


class TestSchema:
    async def test_fresh_store_is_at_latest(self, store_url: str) -> None:
        """start() brings a new database to the latest version, one row per step."""
        async with make_store(store_url) as store:  # type: ignore[attr-defined]
            assert await store.schema_version() == LATEST_VERSION
        assert await raw(store_url, "SELECT count(*) FROM schema_version") == len(MIGRATIONS)

    async def test_restart_is_idempotent(self, store_url: str) -> None:
        """Starting again on a migrated database changes nothing and keeps the data."""
        async with make_store(store_url) as store:  # type: ignore[attr-defined]
            lease = await led(store)
            await write(store, lease, [snap("t1")])
            await lease.release()
        async with make_store(store_url) as store:  # type: ignore[attr-defined]
            assert await store.schema_version() == LATEST_VERSION
            assert await store.count_tasks() == 1
        assert await raw(store_url, "SELECT count(*) FROM schema_version") == len(MIGRATIONS)

    async def test_concurrent_starts(self, store_url: str) -> None:
        """Two stores starting at once on a new database migrate it exactly once."""
        first, second = make_store(store_url), make_store(store_url)
        try:
            await asyncio.gather(first.start(), second.start())
        finally:
            await first.stop()
            await second.stop()
        assert await raw(store_url, "SELECT count(*) FROM schema_version") == len(MIGRATIONS)

    async def test_newer_schema_is_refused(self, store_url: str) -> None:
        """A database stamped by a newer release makes start() raise StoreConflict."""
        async with make_store(store_url):
            pass
        await raw(
            store_url,
            "INSERT INTO schema_version (version, description, applied_at)"
            f" VALUES ({LATEST_VERSION + 1}, 'from the future', '2099-01-01T00:00:00+08:00')",
        )
        newer = make_store(store_url)
        with pytest.raises(StoreConflict, match="newer waiqin-poller"):
            await newer.start()
        await newer.stop()


async def _at_version_3(url: str) -> None:
    """A database as release 3 left it, holding one task whose document has a create time."""
    dialect = "sqlite" if url.startswith("sqlite:") else "postgresql"
    statements = [VERSION_TABLE[dialect]]
    for step in MIGRATIONS[:3]:
        statements += [*step.statements(dialect),
                       f"INSERT INTO schema_version (version, description, applied_at)"
                       f" VALUES ({step.version}, 'v{step.version}', '2026-01-01T00:00:00+08:00')"]
    document = '{"create_time":"2024-05-06T09:30:00+08:00","task_id":"t1"}'
    if dialect == "sqlite":
        path_from_url(url).parent.mkdir(parents=True, exist_ok=True)
        statements.append("INSERT INTO tasks (task_id, hash, document, version) VALUES"
                          f" ('t1', 'h', CAST('{document}' AS BLOB), 1)")
    else:
        statements.append("INSERT INTO tasks (task_id, hash, document, version) VALUES"
                          f" ('t1', 'h', convert_to('{document}', 'UTF8'), 1)")
    for statement in statements:
        await raw(url, statement)


class TestVersion4:
    async def test_existing_tasks_get_their_create_date(self, store_url: str) -> None:
        """Upgrading a release-3 store fills each task's create date from its document, so the
        sweep knows its slices at once."""
        await _at_version_3(store_url)
        async with make_store(store_url) as store:  # type: ignore[attr-defined]
            assert await store.schema_version() == LATEST_VERSION
            assert await store.created_counts() == {date(2024, 5, 6): 1}
