"""Store test helpers: an opened store per real backend, and value factories."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import pytest

from poller.config import StoreSettings
from poller.models import BEIJING, Snapshot, TypeSnapshot
from poller.store import open_store
from poller.store.base import SnapshotStore


def make_store(url: str) -> SnapshotStore:
    """A store for `url`, not started."""
    return open_store(StoreSettings(url=url))


def snap(task_id: str, version: int = 0, *, hash_: str | None = None,
         modify_time: datetime | None = None, document: bytes | None = None) -> Snapshot:
    """A snapshot whose hash and document default to values derived from id and version."""
    return Snapshot(
        task_id=task_id,
        hash=hash_ if hash_ is not None else f"h-{task_id}-{version}",
        document=document if document is not None else f'{{"task_id":"{task_id}"}}'.encode(),
        version=version,
        modify_time=modify_time or datetime(2024, 5, 1, 9, 30, tzinfo=BEIJING),
    )


def type_snap(type_id: str, name: str = "巡店") -> TypeSnapshot:
    """A task type snapshot."""
    document = f'{{"type_id":"{type_id}","type_name":"{name}"}}'.encode()
    return TypeSnapshot(type_id=type_id, hash=f"t-{type_id}-{name}", document=document)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[SnapshotStore]:
    """A started store on a fresh database of each real backend, stopped afterwards."""
    opened = make_store(store_url)
    await opened.start()
    try:
        yield opened
    finally:
        await opened.stop()
