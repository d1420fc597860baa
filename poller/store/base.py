"""The SnapshotStore and Leadership protocols: all the loop knows about persistence."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from typing import Protocol

from poller.models import DeadLetterMark, PollState, Snapshot, TypeSnapshot


class Leadership(Protocol):
    """Exactly one poller polls a store at a time; this is how it knows it is the one."""

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this process is the leader (True) or `stop` is set (False)."""

    async def ensure(self) -> None:
        """Raise StoreConflict if leadership was lost (e.g. the lock's connection died)."""

    async def release(self) -> None:
        """Give leadership up; idempotent."""


class SnapshotStore(Protocol):
    """Per-task snapshots, task types, dead-letter marks and the poll state.

    Every method raises StoreUnavailable when the database cannot be reached (retriable) and
    StoreConflict when another writer owns it; no driver exception escapes.
    """

    async def start(self) -> None:
        """Connect and apply pending schema migrations."""

    async def stop(self) -> None:
        """Close connections; idempotent and safe after a failed start."""

    async def ping(self) -> None:
        """A cheap round trip, for readiness."""

    async def get_hashes(self, task_ids: Collection[str]) -> dict[str, str]:
        """The stored content hash of these tasks (absent ids are missing), in one query.

        The fast path: an unchanged task needs nothing else from the store.
        """

    async def get_snapshots(self, task_ids: Collection[str]) -> dict[str, Snapshot]:
        """The stored snapshots of these tasks (absent ids are missing), in one query."""

    async def commit_page(
        self, snapshots: Sequence[Snapshot], dead_letters: Sequence[DeadLetterMark] = ()
    ) -> None:
        """Upsert a page's snapshots and dead-letter marks in one transaction."""

    async def seen_dead_letters(self, fingerprints: Collection[str]) -> set[str]:
        """Which of these dead-letter fingerprints were already sent."""

    async def get_types(self, type_ids: Collection[str] | None = None) -> dict[str, TypeSnapshot]:
        """Stored task types: these ids, or all of them when None."""

    async def commit_types(self, types: Sequence[TypeSnapshot]) -> None:
        """Upsert task types in one transaction."""

    async def load_state(self) -> PollState:
        """The saved poll state; PollState() on a new store."""

    async def save_state(self, state: PollState) -> None:
        """Replace the poll state."""

    async def count_tasks(self) -> int:
        """How many tasks the store holds (for the store-size metric)."""

    def leadership(self) -> Leadership:
        """The lock that makes this process the single active poller of this store."""
