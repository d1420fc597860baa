"""The memory store: the protocol in dicts, with injected faults and a revocable lock."""

from __future__ import annotations

import asyncio

import pytest

from poller.errors import LeadershipLost, StoreConflict, StoreUnavailable
from poller.models import DeadLetterMark, PollState
from poller.store.memory import MemoryStore
from tests.store.conftest import led, record, snap, type_snap, write


@pytest.fixture
async def memory() -> MemoryStore:
    """A started memory store."""
    store = MemoryStore()
    await store.start()
    return store


class TestMemoryStore:
    async def test_round_trips(self, memory: MemoryStore) -> None:
        """Snapshots, marks, types, state and outbox records come back as committed."""
        lease = await led(memory)
        last = await write(memory, lease, [snap("t1"), snap("t1", 2)], [DeadLetterMark("fp", None)],
                           types=[type_snap("a")], state=PollState(baseline_complete=True),
                           records=[record(1), record(2)])
        assert await memory.read_snapshots(["t1", "x"]) == {"t1": snap("t1", 2)}
        assert await memory.seen_dead_letters(["fp", "y"]) == {"fp"}
        assert await memory.read_types() == {"a": type_snap("a")}
        assert await memory.read_types(["b"]) == {}
        assert (await memory.load_state()).baseline_complete
        assert await memory.count_tasks() == 1
        assert [entry.record for entry in await memory.pending(5)] == [record(1), record(2)]
        assert last == 2 and memory.commits == 1

    async def test_a_chosen_operation_fails(self, memory: MemoryStore) -> None:
        """fail("commit", 2) fails exactly the next two commits, which store nothing; other
        operations are untouched."""
        lease = await led(memory)
        memory.fail("commit", times=2)
        for _ in range(2):
            with pytest.raises(StoreUnavailable):
                await write(memory, lease, [snap("t1")])
        await memory.ping()
        assert await memory.count_tasks() == 0
        await write(memory, lease, [snap("t1")])
        assert await memory.count_tasks() == 1

    async def test_injected_custom_error(self, memory: MemoryStore) -> None:
        """An injected error of another kind is raised as given; unknown operations are refused."""
        memory.fail("load_state", error=StoreConflict("boom"))
        with pytest.raises(StoreConflict, match="boom"):
            await memory.load_state()
        with pytest.raises(ValueError, match="no operation"):
            memory.fail("commit_everything")

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
        with pytest.raises(LeadershipLost):
            await first.ensure()
        await second.ensure()

    async def test_revoked(self) -> None:
        """revoke_leadership() makes the holder's ensure() fail, as a lost lock would."""
        store = MemoryStore()
        lead = store.leadership()
        assert await lead.acquire(asyncio.Event())
        store.revoke_leadership()
        with pytest.raises(LeadershipLost):
            await lead.ensure()
        stop = asyncio.Event()
        stop.set()
        assert not await store.leadership().acquire(stop)
