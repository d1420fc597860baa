"""Snapshot stores: SQLite (embedded default), PostgreSQL (shared/HA) and memory (tests)."""

from __future__ import annotations

from poller.config import StoreSettings
from poller.store.base import SnapshotStore


def open_store(settings: StoreSettings) -> SnapshotStore:
    """The store named by `POLLER_STORE_URL`, not yet started (call `start()` or `async with`).

    Each backend is imported on demand, so an SQLite deployment never loads asyncpg.
    """
    if settings.backend == "sqlite":
        from poller.store.sqlite import SqliteStore

        return SqliteStore.from_url(settings.url)
    from poller.store.postgres import PostgresStore

    return PostgresStore(settings.url)
