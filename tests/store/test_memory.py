"""The memory store: the protocol in dicts, with injected faults and a revocable lock."""

from __future__ import annotations

import asyncio

import pytest

from poller.errors import StoreConflict, StoreUnavailable
from poller.models import DeadLetterMark, PollState
from poller.store.memory import MemoryStore
from tests.store.conftest import snap, type_snap


@pytest.fixture
async def memory() -> MemoryStore:
    """A started memory store."""
    store = MemoryStore()
    await store.start()
    return store


class TestMemoryStore:
    async def test_round_trips(self, memory: MemoryStore) -> None:
        """Snapshots, marks, types and state come back as committed."""
        await memory.commit_page([snap("t1"), snap("t1", 2)], [DeadLetterMark("fp", None)])
        await memory.commit_types([type_snap("a")])
        await memory.save_state(PollState(baseline_complete=True))
        assert await memory.get_snapshots(["t1", "x"]) == {"t1": snap("t1", 2)}
        assert await memory.seen_dead_letters(["fp", "y"]) == {"fp"}
        assert await memory.get_types() == {"a": type_snap("a")}
        assert await memory.get_types(["b"]) == {}
        assert (await memory.load_state()).baseline_complete
        assert await memory.count_tasks() == 1
        assert memory.commits == 1

    async def test_injected_faults(self, memory: MemoryStore) -> None:
        """fail_next(n) fails exactly the next n calls, and a failed commit stores nothing."""
        memory.fail_next(2)
        with pytest.raises(StoreUnavailable):
            await memory.commit_page([snap("t1")])
        with pytest.raises(StoreUnavailable):
            await memory.ping()
        await memory.ping()
        assert await memory.count_tasks() == 0
        assert memory.calls == ["start", "commit_page", "ping", "ping", "count_tasks"]

    async def test_injected_custom_error(self, memory: MemoryStore) -> None:
        """An injected error of another kind is raised as given."""
        memory.fail_next(error=StoreConflict("boom"))
        with pytest.raises(StoreConflict, match="boom"):
            await memory.load_state()

    async def test_not_started(self) -> None:
        """Calls before start() raise StoreUnavailable; stop() is idempotent."""
        store = MemoryStore()
        with pytest.raises(StoreUnavailable):
            await store.ping()
        await store.stop()
        await store.stop()


class TestMemoryLeadership:
    async def test_one_leader_and_takeover(self) -> None:
        """One leader at a time; after release the waiting one leads."""
        store = MemoryStore()
        first, second = store.leadership(), store.leadership()
        assert await first.acquire(asyncio.Event())
        waiting = asyncio.create_task(second.acquire(asyncio.Event()))
        await first.release()
        assert await asyncio.wait_for(waiting, 2)
        with pytest.raises(StoreConflict):
            await first.ensure()
        await second.ensure()

    async def test_revoked(self) -> None:
        """revoke_leadership() makes the holder's ensure() fail, as a lost lock would."""
        store = MemoryStore()
        lead = store.leadership()
        assert await lead.acquire(asyncio.Event())
        store.revoke_leadership()
        with pytest.raises(StoreConflict):
            await lead.ensure()
        stop = asyncio.Event()
        stop.set()
        assert not await store.leadership().acquire(stop)
