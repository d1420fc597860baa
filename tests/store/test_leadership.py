"""The leader lock of both real backends: one holder, and a takeover within seconds."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from poller.errors import LeadershipLost
from poller.store.base import Leadership
from poller.store.locks import file_lock_holder
from poller.store.postgres import LEADER_KEY, PostgresStore
from poller.store.sqlite import path_from_url
from tests.fixtures.postgres import ADMIN_URL, pg_execute
from tests.integration.harness import eventually
from tests.store.conftest import make_store, record, snap, write

TAKEOVER_S = 5.0  # the promise: another replica leads within seconds
# A separate process that takes the lock, says so, and then waits to be killed.
HOLDER = """
import asyncio, sys
from poller.config import StoreSettings
from poller.store import open_store

async def main():
    lead = open_store(StoreSettings(url=sys.argv[1])).leadership()
    assert await lead.acquire(asyncio.Event())
    print("LEADER", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


def leader(url: str) -> Leadership:
    """A fresh leadership object for the store at `url` (each its own connection or fd)."""
    return make_store(url).leadership()


async def stopped_after(seconds: float) -> asyncio.Event:
    """An event that gets set after `seconds`: the bound of a "must keep waiting" check."""
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    return stop


@pytest.fixture
async def holder(store_url: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """Another process holding the lock of `store_url`; killed at the end if still alive."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, store_url,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(30):
            assert proc.stdout is not None
            while (line := await proc.stdout.readline()) and line.strip() != b"LEADER":
                pass
        assert line.strip() == b"LEADER", "the holder process exited before leading"
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


class TestLeadership:
    async def test_only_one_leads(self, store_url: str) -> None:
        """While one instance holds the lock, a second one keeps waiting until told to stop."""
        first, second = leader(store_url), leader(store_url)
        try:
            assert await first.acquire(asyncio.Event())
            assert not await second.acquire(await stopped_after(1.5))
            await first.ensure()
            with pytest.raises(LeadershipLost):
                await second.ensure()
        finally:
            await first.release()
            await second.release()

    async def test_takeover_after_release(self, store_url: str) -> None:
        """When the leader releases, the waiting instance leads within seconds."""
        first, second = leader(store_url), leader(store_url)
        try:
            assert await first.acquire(asyncio.Event())
            waiting = asyncio.create_task(second.acquire(asyncio.Event()))
            await first.release()
            await first.release()
            assert await asyncio.wait_for(waiting, TAKEOVER_S)
            await second.ensure()
            with pytest.raises(LeadershipLost):
                await first.ensure()
        finally:
            await first.release()
            await second.release()

    async def test_takeover_after_kill(
        self, store_url: str, holder: asyncio.subprocess.Process
    ) -> None:
        """Steps: another process leads; we wait; it is killed with SIGKILL; we lead in seconds."""
        ours = leader(store_url)
        try:
            waiting = asyncio.create_task(ours.acquire(asyncio.Event()))
            done, _ = await asyncio.wait({waiting}, timeout=1.2)
            assert not done, "took the lock while another process held it"
            holder.kill()
            await holder.wait()
            assert await asyncio.wait_for(waiting, TAKEOVER_S)
            await ours.ensure()
        finally:
            await ours.release()

    async def test_stop_already_set(self, store_url: str) -> None:
        """acquire() with `stop` already set returns False without leading."""
        stop = asyncio.Event()
        stop.set()
        lead = leader(store_url)
        assert not await lead.acquire(stop)
        with pytest.raises(LeadershipLost):
            await lead.ensure()
        await lead.release()

    async def test_reacquire_after_release(self, store_url: str) -> None:
        """An instance can lead again after releasing, and acquiring twice is harmless."""
        lead = leader(store_url)
        try:
            assert await lead.acquire(asyncio.Event())
            assert await lead.acquire(asyncio.Event())
            await lead.release()
            assert await lead.acquire(asyncio.Event())
            await lead.ensure()
        finally:
            await lead.release()


async def advisory_holder_pid(url: str) -> int:
    """The backend pid holding the leader lock in this database."""
    pid = await pg_execute(
        url,
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND classid::bigint = $1 AND objid::bigint = $2"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        LEADER_KEY >> 32, LEADER_KEY & 0xFFFF_FFFF,
    )
    assert pid is not None, "nobody holds the leader lock"
    return int(pid)


class TestAdvisoryLock:
    async def test_terminated_connection_loses_leadership(self, pg_url: str) -> None:
        """Killing the leader's lock session makes its ensure() fail and lets another lead."""
        first, second = leader(pg_url), leader(pg_url)
        try:
            assert await first.acquire(asyncio.Event())
            waiting = asyncio.create_task(second.acquire(asyncio.Event()))
            pid = await advisory_holder_pid(pg_url)
            assert await pg_execute(pg_url, "SELECT pg_terminate_backend($1)", pid)
            with pytest.raises(LeadershipLost, match="lost"):
                await first.ensure()
            assert await asyncio.wait_for(waiting, TAKEOVER_S)
            await second.ensure()
        finally:
            await first.release()
            await second.release()


    async def test_commit_is_fenced_by_the_lock(self, pg_url: str) -> None:
        """A leader whose lock session died cannot commit, even without calling ensure():
        the page's own transaction checks the lock, and nothing is written."""
        store, rival = make_store(pg_url), make_store(pg_url)
        await store.start()
        await rival.start()
        lead, rival_lead = store.leadership(), rival.leadership()
        try:
            assert await lead.acquire(asyncio.Event())
            await write(store, lead, [snap("before")])
            assert await pg_execute(pg_url, "SELECT pg_terminate_backend($1)",
                                    await advisory_holder_pid(pg_url))
            assert await asyncio.wait_for(rival_lead.acquire(asyncio.Event()), TAKEOVER_S)
            with pytest.raises(LeadershipLost, match="nothing was written"):
                await write(store, lead, [snap("after")], records=[record(1)])
            assert set(await rival.read_snapshots(["before", "after"])) == {"before"}
            assert await rival.outbox_depth() == 0
        finally:
            await lead.release()
            await rival_lead.release()
            await store.stop()
            await rival.stop()


class TestFileLock:
    async def test_removed_lock_file_loses_leadership(self, tmp_path: Path) -> None:
        """If the lock file is deleted, the holder's ensure() fails: a newcomer could lock anew."""
        url = f"sqlite:///{tmp_path}/poller.db"
        lead = leader(url)
        try:
            assert await lead.acquire(asyncio.Event())
            await lead.ensure()
            os.unlink(f"{path_from_url(url)}.lock")
            with pytest.raises(LeadershipLost, match="removed or replaced"):
                await lead.ensure()
        finally:
            await lead.release()

    async def test_lock_file_names_the_holder(self, tmp_path: Path) -> None:
        """The sidecar lock file next to the database holds the leader's pid."""
        url = f"sqlite:///{tmp_path}/sub/poller.db"
        lead = leader(url)
        try:
            assert await lead.acquire(asyncio.Event())
            lock_file = Path(f"{path_from_url(url)}.lock")
            assert (await asyncio.to_thread(lock_file.read_text)).strip() == str(os.getpid())
        finally:
            await lead.release()


class TestHolder:
    async def test_file_lock_holder_is_the_leading_process(
            self, tmp_path: Path, holder_of: HolderFactory) -> None:
        """The lock file's holder is seen without taking the lock: the pid of the process that
        leads, and nobody once it is killed (with the stale pid still in the file)."""
        url = f"sqlite:///{tmp_path}/poller.db"
        lock_file = Path(f"{path_from_url(url)}.lock")
        assert file_lock_holder(lock_file) is None  # no file yet
        proc = await holder_of(url)
        seen = file_lock_holder(lock_file)
        assert seen is not None and seen.pid == proc.pid and str(lock_file) in seen.where
        ours = leader(url)
        assert not await ours.acquire(await stopped_after(0.6)), "looking took the lock"
        proc.kill()
        await proc.wait()
        assert file_lock_holder(lock_file) is None
        assert (await asyncio.to_thread(lock_file.read_text)).strip() == str(proc.pid)

    async def test_without_a_lock_table_a_shared_probe_decides(
            self, tmp_path: Path, holder_of: HolderFactory) -> None:
        """Where the kernel lists no locks (not Linux), a shared lock tried and dropped tells."""
        url = f"sqlite:///{tmp_path}/poller.db"
        lock_file = Path(f"{path_from_url(url)}.lock")
        no_table = tmp_path / "no-proc-locks"
        proc = await holder_of(url)
        seen = file_lock_holder(lock_file, proc_locks=no_table)
        assert seen is not None and seen.pid == proc.pid
        proc.kill()
        await proc.wait()
        assert file_lock_holder(lock_file, proc_locks=no_table) is None
        ours = leader(url)
        try:
            assert await ours.acquire(asyncio.Event()), "the probe left a lock behind"
        finally:
            await ours.release()

    async def test_advisory_lock_holder_is_the_leading_session(
            self, pg_url: str, holder_of: HolderFactory) -> None:
        """pg_locks names the leading session of this database only: its backend pid, client
        and application, and nobody once the leader is killed."""
        store = PostgresStore(pg_url)
        await store.start()
        elsewhere = await asyncpg.connect(ADMIN_URL, timeout=10)  # another database, same server
        try:
            await elsewhere.execute("SELECT pg_advisory_lock($1)", LEADER_KEY)
            assert await store.leader() is None
            proc = await holder_of(pg_url)
            seen = await store.leader()
            assert seen is not None
            assert seen.pid == await advisory_holder_pid(pg_url)
            assert "waiqin-poller-leader" in seen.where and "127.0.0.1:" in seen.where
            assert seen.since is not None
            proc.kill()
            await proc.wait()
            # The server ends a killed client's session, and its lock, within seconds.
            await eventually(lambda: _is_none(store.leader()), timeout_s=TAKEOVER_S,
                             what="the killed leader's lock to go")
        finally:
            await elsewhere.close()
            await store.stop()


HolderFactory = Callable[[str], Awaitable[asyncio.subprocess.Process]]


@pytest.fixture
async def holder_of() -> AsyncIterator[HolderFactory]:
    """Factory: another process holding the lock of a store URL; killed at the end."""
    started: list[asyncio.subprocess.Process] = []

    async def make(url: str) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", HOLDER, url,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        started.append(proc)
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            while (line := await proc.stdout.readline()) and line.strip() != b"LEADER":
                pass
        assert line.strip() == b"LEADER", "the holder process exited before leading"
        return proc

    yield make
    for proc in started:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def _is_none(value: Awaitable[object]) -> bool:
    return await value is None
