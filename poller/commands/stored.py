"""The store as the operator commands see it: opened only if it exists, and who leads it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from poller.config import Settings
from poller.errors import StoreNotFound
from poller.redact import describe_store_url
from poller.store import open_store
from poller.store.base import SnapshotStore
from poller.store.locks import Holder, file_lock_holder


@asynccontextmanager
async def existing(settings: Settings) -> AsyncIterator[SnapshotStore]:
    """The started store of POLLER_STORE_URL; StoreNotFound instead of creating an SQLite file
    that no poller ever wrote (a typo in the path must not look like an empty store)."""
    store = open_store(settings.store)
    if settings.store.backend == "sqlite":
        from poller.store.sqlite import SqliteStore

        assert isinstance(store, SqliteStore)
        if not await asyncio.to_thread(store.path.exists):
            raise StoreNotFound(f"no store at {describe_store_url(settings.store.url)}: "
                                "no poller has run with this POLLER_STORE_URL")
    await store.start()
    try:
        yield store
    finally:
        await store.stop()


async def leader_of(store: SnapshotStore) -> Holder | None:
    """Who holds the store's leader lock (None: no daemon leads it), without taking it."""
    from poller.store.sqlite import SqliteStore

    if isinstance(store, SqliteStore):
        return await asyncio.to_thread(file_lock_holder, store.lock_path)
    from poller.store.postgres import PostgresStore

    if isinstance(store, PostgresStore):
        return await store.leader()
    return None  # the memory store has no other process to lead it
