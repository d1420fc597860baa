"""An in-memory SnapshotStore with fault injection, for unit tests of the loop."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence

from poller.errors import StoreConflict, StoreError, StoreUnavailable
from poller.models import DeadLetterMark, PollState, Snapshot, TypeSnapshot
from poller.store.rows import last_wins


class MemoryStore:
    """SnapshotStore in dicts. Writes are all-or-nothing like the real backends.

    Fault injection: `fail_next(n)` makes the next n calls raise (StoreUnavailable unless told
    otherwise) before touching any data, so a failed commit_page leaves nothing behind.
    """

    def __init__(self) -> None:
        self.snapshots: dict[str, Snapshot] = {}
        self.types: dict[str, TypeSnapshot] = {}
        self.dead_letters: dict[str, DeadLetterMark] = {}
        self.state = PollState()
        self.started = False
        self.calls: list[str] = []  # method names in call order, for assertions
        self.commits = 0  # successful commit_page calls
        self._failures: list[StoreError] = []
        self._leader: MemoryLeadership | None = None

    def __repr__(self) -> str:
        return f"MemoryStore(tasks={len(self.snapshots)})"

    async def __aenter__(self) -> MemoryStore:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def fail_next(self, calls: int = 1, error: StoreError | None = None) -> None:
        """Make the next `calls` store calls raise `error` (default: StoreUnavailable)."""
        failure = error or StoreUnavailable("injected fault: memory store unavailable")
        self._failures.extend([failure] * calls)

    def _enter(self, name: str) -> None:
        self.calls.append(name)
        if self._failures:
            raise self._failures.pop(0)
        if not self.started and name != "start":
            raise StoreUnavailable("memory store is not started")

    async def start(self) -> None:
        """Mark the store open."""
        self._enter("start")
        self.started = True

    async def stop(self) -> None:
        """Mark the store closed; idempotent, never fails (no injected faults here)."""
        self.calls.append("stop")
        self.started = False

    async def ping(self) -> None:
        """Succeeds unless a fault is injected."""
        self._enter("ping")

    async def get_hashes(self, task_ids: Collection[str]) -> dict[str, str]:
        """The stored hashes of these tasks."""
        self._enter("get_hashes")
        return {i: self.snapshots[i].hash for i in task_ids if i in self.snapshots}

    async def get_snapshots(self, task_ids: Collection[str]) -> dict[str, Snapshot]:
        """The stored snapshots of these tasks."""
        self._enter("get_snapshots")
        return {i: self.snapshots[i] for i in task_ids if i in self.snapshots}

    async def commit_page(
        self, snapshots: Sequence[Snapshot], dead_letters: Sequence[DeadLetterMark] = ()
    ) -> None:
        """Upsert snapshots and dead-letter marks at once."""
        self._enter("commit_page")
        self.snapshots.update((s.task_id, s) for s in last_wins(snapshots, lambda s: s.task_id))
        for mark in dead_letters:
            self.dead_letters.setdefault(mark.fingerprint, mark)
        self.commits += 1

    async def seen_dead_letters(self, fingerprints: Collection[str]) -> set[str]:
        """Which of these fingerprints were already marked."""
        self._enter("seen_dead_letters")
        return {f for f in fingerprints if f in self.dead_letters}

    async def get_types(self, type_ids: Collection[str] | None = None) -> dict[str, TypeSnapshot]:
        """Stored task types: these ids, or all of them when None."""
        self._enter("get_types")
        if type_ids is None:
            return dict(self.types)
        return {i: self.types[i] for i in type_ids if i in self.types}

    async def commit_types(self, types: Sequence[TypeSnapshot]) -> None:
        """Upsert task types."""
        self._enter("commit_types")
        self.types.update((t.type_id, t) for t in types)

    async def load_state(self) -> PollState:
        """The saved poll state."""
        self._enter("load_state")
        return self.state

    async def save_state(self, state: PollState) -> None:
        """Replace the poll state."""
        self._enter("save_state")
        self.state = state

    async def count_tasks(self) -> int:
        """How many tasks the store holds."""
        self._enter("count_tasks")
        return len(self.snapshots)

    def leadership(self) -> MemoryLeadership:
        """A lock shared by every leadership object of this store instance."""
        return MemoryLeadership(self)

    def revoke_leadership(self) -> None:
        """Take leadership away from its holder, as a killed lock connection would."""
        self._leader = None


class MemoryLeadership:
    """Leadership over one MemoryStore instance; polls every `poll_interval_s` while waiting."""

    def __init__(self, store: MemoryStore, *, poll_interval_s: float = 0.01) -> None:
        self._store = store
        self._poll_interval_s = poll_interval_s

    @property
    def is_held(self) -> bool:
        """Whether this object is the store's leader."""
        return self._store._leader is self

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until leader (True) or `stop` is set (False)."""
        while not stop.is_set():
            if self._store._leader in (None, self):
                self._store._leader = self
                return True
            try:
                await asyncio.wait_for(stop.wait(), timeout=self._poll_interval_s)
            except TimeoutError:
                pass
        return False

    async def ensure(self) -> None:
        """Raise StoreConflict unless still the leader."""
        if not self.is_held:
            raise StoreConflict("not the leader of the memory store")

    async def release(self) -> None:
        """Give leadership up; idempotent."""
        if self.is_held:
            self._store._leader = None
