"""An in-memory SnapshotStore with fault injection, for unit tests of the loop."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Collection
from dataclasses import replace
from datetime import date, datetime

from poller.errors import LeadershipLost, StoreError, StoreUnavailable
from poller.models import (
    Backfill,
    Commit,
    DeadLetterMark,
    OutboxEntry,
    PollState,
    Snapshot,
    StoredHashes,
    TypeSnapshot,
)
from poller.store.base import Leadership
from poller.store.rows import last_wins


class MemoryStore:
    """SnapshotStore in dicts. A commit is all-or-nothing like on the real backends.

    Fault injection: `fail("commit", times=2)` makes the next two calls of that operation raise
    (StoreUnavailable unless told otherwise) before touching any data; `revoke_leadership()`
    takes the lock away from its holder, as a killed lock connection would.
    """

    def __init__(self) -> None:
        self.snapshots: dict[str, Snapshot] = {}
        self.types: dict[str, TypeSnapshot] = {}
        self.dead_letters: dict[str, DeadLetterMark] = {}
        self.outbox: dict[int, OutboxEntry] = {}
        self.backfill_requests: dict[int, Backfill] = {}
        self.usage: dict[tuple[date, str], int] = {}
        self.state = PollState()
        self.started = False
        self.commits = 0  # successful commits that wrote something
        self._next_outbox_id = 1
        self._failures: dict[str, list[StoreError]] = defaultdict(list)
        self._leader: MemoryLeadership | None = None

    def __repr__(self) -> str:
        return f"MemoryStore(tasks={len(self.snapshots)}, outbox={len(self.outbox)})"

    async def __aenter__(self) -> MemoryStore:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def fail(self, operation: str, times: int = 1, error: StoreError | None = None) -> None:
        """Make the next `times` calls of `operation` (a method name) raise `error`."""
        if not callable(getattr(self, operation, None)):
            raise ValueError(f"MemoryStore has no operation {operation!r}")
        failure = error or StoreUnavailable(f"injected fault: {operation} unavailable")
        self._failures[operation].extend([failure] * times)

    def _enter(self, operation: str) -> None:
        if self._failures[operation]:
            raise self._failures[operation].pop(0)
        if not self.started and operation != "start":
            raise StoreUnavailable("memory store is not started")

    async def start(self) -> None:
        """Mark the store open."""
        self._enter("start")
        self.started = True

    async def stop(self) -> None:
        """Mark the store closed; idempotent, never fails."""
        self.started = False

    async def ping(self) -> None:
        """Succeeds unless a fault is injected."""
        self._enter("ping")

    async def read_hashes(self, task_ids: Collection[str]) -> dict[str, StoredHashes]:
        """The stored hashes of these tasks."""
        self._enter("read_hashes")
        found = (self.snapshots.get(i) for i in task_ids)
        return {s.task_id: StoredHashes(s.hash, s.received, s.vanished) for s in found if s is not None}

    async def read_snapshots(self, task_ids: Collection[str]) -> dict[str, Snapshot]:
        """The stored snapshots of these tasks."""
        self._enter("read_snapshots")
        return {i: self.snapshots[i] for i in task_ids if i in self.snapshots}

    def _live(self, modify_from: date | None) -> list[Snapshot]:
        return [s for s in self.snapshots.values() if not s.vanished and (
            modify_from is None or (s.modify_time is not None and s.modify_time.date() >= modify_from))]

    async def created_counts(self, modify_from: date | None = None) -> dict[date, int]:
        """Live stored tasks per create date."""
        self._enter("created_counts")
        return dict(Counter(s.create_date for s in self._live(modify_from) if s.create_date))

    async def created_ids(self, start: date, end: date, modify_from: date | None = None) -> set[str]:
        """Ids of live stored tasks created from `start` to `end`."""
        self._enter("created_ids")
        return {s.task_id for s in self._live(modify_from)
                if s.create_date is not None and start <= s.create_date <= end}

    async def snapshot_page(self, after: str | None, limit: int, *,
                            created: tuple[date, date] | None = None,
                            task_ids: Collection[str] | None = None) -> list[Snapshot]:
        """Live snapshots after `after` in task_id order, optionally by create date or ids."""
        self._enter("snapshot_page")
        chosen = [s for s in self._live(None) if s.task_id > (after or "")
                  and (created is None or (s.create_date is not None
                                           and created[0] <= s.create_date <= created[1]))
                  and (task_ids is None or s.task_id in task_ids)]
        return sorted(chosen, key=lambda s: s.task_id)[:limit]

    async def seen_dead_letters(self, fingerprints: Collection[str]) -> set[str]:
        """Which of these fingerprints were already marked."""
        self._enter("seen_dead_letters")
        return {f for f in fingerprints if f in self.dead_letters}

    async def commit(self, commit: Commit, lease: Leadership) -> int | None:
        """Apply `commit` at once, if `lease` leads this store."""
        self._enter("commit")
        if commit.is_empty:
            return None
        if not isinstance(lease, MemoryLeadership) or not lease.leads(self):
            raise LeadershipLost("not the leader of the memory store: nothing was written")
        self.snapshots.update((s.task_id, s) for s in last_wins(commit.snapshots, lambda s: s.task_id))
        for task_id, received in commit.renderings:
            self.snapshots[task_id] = replace(self.snapshots[task_id], received=received)
        for mark in commit.marks:
            self.dead_letters.setdefault(mark.fingerprint, mark)
        self.types.update((t.type_id, t) for t in commit.types)
        if commit.state is not None:
            self.state = commit.state
        for day, endpoint, count in commit.usage:
            self.usage[(day, endpoint)] = max(count, self.usage.get((day, endpoint), 0))
        if commit.backfill is not None:
            self.backfill_requests[commit.backfill.id] = commit.backfill
        last = None
        for record in commit.records:
            last = self._next_outbox_id
            self.outbox[last] = OutboxEntry(last, record)
            self._next_outbox_id += 1
        self.commits += 1
        return last

    async def pending(self, limit: int) -> list[OutboxEntry]:
        """The oldest unsent outbox entries."""
        self._enter("pending")
        return [self.outbox[i] for i in sorted(self.outbox)[:limit]]

    async def mark_sent(self, through_id: int) -> None:
        """Drop the outbox entries up to `through_id`."""
        self._enter("mark_sent")
        for entry_id in [i for i in self.outbox if i <= through_id]:
            del self.outbox[entry_id]

    async def outbox_depth(self) -> int:
        """How many outbox entries wait."""
        self._enter("outbox_depth")
        return len(self.outbox)

    async def read_types(self, type_ids: Collection[str] | None = None) -> dict[str, TypeSnapshot]:
        """Stored task types: these ids, or all of them when None."""
        self._enter("read_types")
        if type_ids is None:
            return dict(self.types)
        return {i: self.types[i] for i in type_ids if i in self.types}

    async def load_state(self) -> PollState:
        """The saved poll state."""
        self._enter("load_state")
        return self.state

    async def request_backfill(self, modify_from: date, modify_to: date, requested_at: datetime
                               ) -> Backfill:
        """Record a backfill request."""
        self._enter("request_backfill")
        request = Backfill(len(self.backfill_requests) + 1, modify_from, modify_to, requested_at)
        self.backfill_requests[request.id] = request
        return request

    async def backfills(self, *, active_only: bool = True) -> list[Backfill]:
        """Backfill requests, oldest first."""
        self._enter("backfills")
        return [b for _, b in sorted(self.backfill_requests.items())
                if not active_only or b.state in ("pending", "running")]

    async def read_usage(self, day: date) -> dict[str, int]:
        """API requests made on a Beijing day, by endpoint."""
        self._enter("read_usage")
        return {endpoint: count for (when, endpoint), count in self.usage.items() if when == day}

    async def count_tasks(self) -> int:
        """How many tasks the store holds."""
        self._enter("count_tasks")
        return len(self.snapshots)

    def leadership(self) -> MemoryLeadership:
        """A claim on this store instance's lock."""
        return MemoryLeadership(self)

    def revoke_leadership(self) -> None:
        """Take leadership away from its holder, as a killed lock connection would."""
        self._leader = None

    def _claim(self, lease: MemoryLeadership) -> bool:
        if self._leader in (None, lease):
            self._leader = lease
            return True
        return False

    def _give_up(self, lease: MemoryLeadership) -> None:
        if self._leader is lease:
            self._leader = None


class MemoryLeadership:
    """Leadership over one MemoryStore instance; polls every `poll_interval_s` while waiting."""

    def __init__(self, store: MemoryStore, *, poll_interval_s: float = 0.01) -> None:
        self._store = store
        self._poll_interval_s = poll_interval_s
        self._is_held = False

    def leads(self, store: MemoryStore) -> bool:
        """Whether this claim holds `store`'s lock right now."""
        return self._is_held and store is self._store and store._leader is self

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until leader (True) or `stop` is set (False)."""
        while not stop.is_set():
            if self._store._claim(self):
                self._is_held = True
                return True
            try:
                await asyncio.wait_for(stop.wait(), timeout=self._poll_interval_s)
            except TimeoutError:
                pass
        return False

    async def ensure(self) -> None:
        """Raise LeadershipLost unless still the leader."""
        if not self.leads(self._store):
            raise LeadershipLost("not the leader of the memory store")

    async def release(self) -> None:
        """Give leadership up; idempotent."""
        self._is_held = False
        self._store._give_up(self)
