"""Store test helpers: an opened store per real backend, and value factories."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import datetime

import pytest

from poller.config import StoreSettings
from poller.models import BEIJING, Commit, DeadLetterMark, OutboundRecord, Snapshot, TypeSnapshot
from poller.store import open_store
from poller.store.base import Leadership, SnapshotStore


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


def type_snap(type_id: str, name: str = "巡店", version: int = 0) -> TypeSnapshot:
    """A task type snapshot."""
    document = f'{{"type_id":"{type_id}","type_name":"{name}"}}'.encode()
    return TypeSnapshot(type_id=type_id, hash=f"t-{type_id}-{name}", document=document,
                        version=version)


def record(n: int, topic: str = "tasks", *, value: bytes | None = b"{}") -> OutboundRecord:
    """An outbox record numbered `n` (in its key and a header)."""
    return OutboundRecord(topic=topic, key=f"t{n}".encode(), value=value,  # type: ignore[arg-type]
                          headers=(("ce_id", f"id-{n}".encode()), ("ce_subject", "任务".encode())))


async def led(store: SnapshotStore) -> Leadership:
    """The store's leadership, acquired."""
    lease = store.leadership()
    assert await lease.acquire(asyncio.Event())
    return lease


async def write(store: SnapshotStore, lease: Leadership, snapshots: Sequence[Snapshot] = (),
                marks: Sequence[DeadLetterMark] = (), **parts: object) -> int | None:
    """Commit snapshots, marks and any other parts of a Commit."""
    return await store.commit(Commit(snapshots=snapshots, marks=marks, **parts), lease)  # type: ignore[arg-type]


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[SnapshotStore]:
    """A started store on a fresh database of each real backend, stopped afterwards."""
    opened = make_store(store_url)
    await opened.start()
    try:
        yield opened
    finally:
        await opened.stop()


@pytest.fixture
async def lease(store: SnapshotStore) -> AsyncIterator[Leadership]:
    """The fixture store's leadership, held for the test."""
    held = await led(store)
    try:
        yield held
    finally:
        await held.release()
