"""The SnapshotStore and Leadership protocols: all the loop knows about persistence."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from datetime import date, datetime
from typing import Protocol

from poller.models import (
    Backfill,
    Commit,
    OutboxEntry,
    PollState,
    Snapshot,
    StoredHashes,
    TypeSnapshot,
)


class Leadership(Protocol):
    """Exactly one poller writes to a store at a time; this is how it knows it is the one.

    A leadership is passed to every write (`SnapshotStore.commit`) and checked before every
    publish, so nothing works only because someone acquired it earlier.
    """

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this process is the leader (True) or `stop` is set (False)."""

    async def ensure(self) -> None:
        """Raise LeadershipLost unless this process still holds the lock."""

    async def release(self) -> None:
        """Give leadership up; idempotent."""


class SnapshotStore(Protocol):
    """Per-task snapshots, task types, dead-letter marks, the poll state and the outbox.

    Every method raises StoreUnavailable when the database cannot be reached (retriable),
    StoreConflict when it refuses the operation, and LeadershipLost when a write is attempted
    under a leadership that is not (or no longer) held; no driver exception escapes.
    """

    async def start(self) -> None:
        """Connect and apply pending schema migrations."""

    async def stop(self) -> None:
        """Close connections; idempotent and safe after a failed start."""

    async def ping(self) -> None:
        """A cheap round trip, for readiness."""

    async def read_hashes(self, task_ids: Collection[str]) -> dict[str, StoredHashes]:
        """The stored content and rendering hashes of these tasks (absent ids are missing).

        The fast path: one indexed query per page, no documents read.
        """

    async def read_snapshots(self, task_ids: Collection[str]) -> dict[str, Snapshot]:
        """The stored snapshots of these tasks (absent ids are missing), in one query."""

    async def created_counts(self, modify_from: date | None = None) -> dict[date, int]:
        """Live (not vanished) stored tasks per create date; with `modify_from`, only tasks
        modified since (POLLER_START_DATE: the API never returns the others)."""

    async def created_ids(self, start: date, end: date, modify_from: date | None = None) -> set[str]:
        """The ids of live stored tasks created from `start` to `end` (a create-date slice)."""

    async def snapshot_page(self, after: str | None, limit: int, *,
                            created: tuple[date, date] | None = None,
                            task_ids: Collection[str] | None = None) -> list[Snapshot]:
        """Up to `limit` live snapshots with task_id greater than `after`, in task_id order;
        optionally only those created in a date range, or only these ids."""

    async def seen_dead_letters(self, fingerprints: Collection[str]) -> set[str]:
        """Which of these dead-letter fingerprints were already committed."""

    async def commit(self, commit: Commit, lease: Leadership) -> int | None:
        """Write everything of `commit` in one transaction, fenced by `lease`.

        The outbox records get increasing ids in their order; returns the id of the last one
        (None when there are none). Nothing is written when the lease is not held
        (LeadershipLost) or any part fails.
        """

    async def pending(self, limit: int) -> list[OutboxEntry]:
        """Up to `limit` outbox entries not yet marked sent, oldest first."""

    async def mark_sent(self, through_id: int) -> None:
        """Drop every outbox entry up to and including `through_id` (Kafka acknowledged them)."""

    async def outbox_depth(self) -> int:
        """How many outbox entries wait to be sent."""

    async def read_types(self, type_ids: Collection[str] | None = None) -> dict[str, TypeSnapshot]:
        """Stored task types: these ids, or all of them when None."""

    async def load_state(self) -> PollState:
        """The saved poll state; PollState() on a new store."""

    async def request_backfill(self, modify_from: date, modify_to: date, requested_at: datetime
                               ) -> Backfill:
        """Record a backfill request for the leader (any process may ask: not fenced)."""

    async def backfills(self, *, active_only: bool = True) -> list[Backfill]:
        """Backfill requests, oldest first: those pending or running, or all of them."""

    async def read_usage(self, day: date) -> dict[str, int]:
        """API requests made on a Beijing day, by endpoint."""

    async def count_tasks(self) -> int:
        """How many tasks the store holds (for the store-size metric)."""

    def leadership(self) -> Leadership:
        """A new (not yet acquired) claim on this store's single-writer lock."""
