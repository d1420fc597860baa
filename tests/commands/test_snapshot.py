"""Tests for poller.commands.snapshot: state records from real stores onto the real broker."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pytest

from poller import app
from poller.commands import snapshot
from poller.config import Settings
from poller.errors import ConfigError, StoreNotFound
from poller.fetch import WaiqinClient
from poller.http import HealthState
from poller.loop import Poller
from poller.models import Commit, OutboundRecord, beijing_now
from poller.publish import KafkaPublisher, Publisher
from poller.simulator import Simulator
from poller.store import open_store
from poller.store.base import SnapshotStore
from tests.fixtures.broker import TansuBroker, consume
from tests.fixtures.simulator import APPKEY, OPENID


@dataclass
class Stack:
    """A poller leading a real store and publishing to the real broker, as the daemon does."""

    sim: Simulator
    settings: Settings
    store: SnapshotStore
    publisher: KafkaPublisher
    poller: Poller

    async def cycle(self) -> None:
        lease = self.store.leadership()
        assert await lease.acquire(asyncio.Event())
        try:
            await self.poller.run_cycle(lease)
        finally:
            await lease.release()

    async def state_records(self, count: int) -> list[Any]:
        """The state topic from the beginning, once it holds `count` records."""
        records = await consume(self.settings.kafka.bootstrap_servers, self.settings.topics.state,
                                min_records=count, timeout_s=20)
        assert len(records) == count, f"{len(records)} state records, expected {count}"
        return records


@pytest.fixture
async def stack(make_simulator: Callable[..., Awaitable[Simulator]], running_kafka_broker: TansuBroker,
                store_url: str) -> AsyncIterator[Stack]:
    sim = await make_simulator(tasks=30, days=3, seed=5)
    settings = Settings.load({
        "WAIQIN_BASE_URL": sim.base_url, "WAIQIN_OPENID": OPENID, "WAIQIN_APPKEY": APPKEY,
        "WAIQIN_RATE_LIMIT_PER_SECOND": "1000", "KAFKA_BOOTSTRAP_SERVERS": running_kafka_broker.bootstrap,
        "KAFKA_ENABLE_IDEMPOTENCE": "false", "POLLER_STORE_URL": store_url,
        "POLLER_TOPIC_PREFIX": f"snap{uuid.uuid4().hex[:8]}", "POLLER_START_MODE": "replay",
        "POLLER_SWEEP_PERIOD_HOURS": "0"})
    store = open_store(settings.store)
    publisher = KafkaPublisher(settings.kafka, settings.topics)
    await store.start()
    await publisher.start()
    try:
        async with WaiqinClient(settings.waiqin) as client:
            poller = Poller(settings.poll, client=client, store=store, publisher=publisher,
                            health=HealthState(stuck_after_s=60, ready_window_s=60),
                            source=app.event_source(settings), limits=app.api_limits(settings))
            yield Stack(sim, settings, store, publisher, poller)
    finally:
        await publisher.stop()
        await store.stop()


def by_key(records: Sequence[Any]) -> dict[bytes, list[Any]]:
    """Each key's records in the order they were written (one key, one partition)."""
    grouped: dict[bytes, list[Any]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        grouped[record.key].append(record)
    return grouped


def as_sent(record: Any) -> tuple[bytes, bytes | None, dict[str, bytes]]:
    return record.key, record.value, dict(record.headers)


class TestSnapshot:
    async def test_twice_identical_and_as_the_daemon_wrote_them(self, stack: Stack) -> None:
        """Two runs publish identical records, each the state record the daemon wrote for the
        task's stored version (key, value, ce_id, ce_sequence, ce_time); ce_recordedtime is the
        modify_time.

        1. the daemon's first run (replay) writes a state record per task; a task gets feedback
           and the next cycle writes its version 2;
        2. snapshot runs twice: 30 records each, none sent again;
        3. per task: the two snapshot records are equal, and equal the daemon's last one.
        """
        await stack.cycle()
        changed = next(iter(stack.sim.store.tasks))
        stack.sim.store.add_feedback(changed)
        await stack.cycle()
        for _ in range(2):
            assert await snapshot.run(stack.settings, snapshot.Selection()) == snapshot.Published(30)
        records = by_key(await stack.state_records(31 + 60))
        assert len(records) == 30
        for key, written in records.items():
            daemon, first, second = written[-3:]
            assert as_sent(first) == as_sent(second)
            ours, theirs = dict(first.headers), dict(daemon.headers)
            assert (first.value, ours["ce_id"], ours["ce_sequence"], ours["ce_time"]) == (
                daemon.value, theirs["ce_id"], theirs["ce_sequence"], theirs["ce_time"])
            assert ours["ce_recordedtime"] == ours["ce_time"]
            assert ours["ce_sequence"] == (b"2" if key == changed.encode() else b"1")

    async def test_a_create_date_range_or_task_ids(self, stack: Stack) -> None:
        """--created-from/--created-to and --task publish only those tasks; an id that is not
        stored fails the run after the others are published."""
        await stack.cycle()
        today = beijing_now().date()
        created_today = [t for t, task in stack.sim.store.tasks.items()
                         if task["create_time"][:10] == str(today)]
        done = await snapshot.run(stack.settings, snapshot.Selection(created=(today, today)))
        assert done.tasks == len(created_today)
        some = sorted(stack.sim.store.tasks)[:2]
        with pytest.raises(StoreNotFound, match="1 of the given tasks are not in the store"):
            await snapshot.run(stack.settings, snapshot.Selection(task_ids=(*some, "no-such-task")))
        records = by_key(await stack.state_records(30 + len(created_today) + 2))
        expected = {t: 1 + (t in created_today) + (t in some) for t in stack.sim.store.tasks}
        assert {key.decode(): len(written) for key, written in records.items()} == expected

    async def test_a_task_the_daemon_changes_meanwhile_ends_on_its_new_version(
            self, stack: Stack) -> None:
        """A task the daemon changes (or announces vanished) while its old record is being sent
        gets its new record (or tombstone) sent again, so it is the last of its key.

        1. the daemon wrote every task at version 1;
        2. while the snapshot's first batch is on its way, the daemon changes task A (a real
           cycle: commit, then publish) and task B vanishes (committed as the daemon would);
        3. the snapshot re-reads its batch and sends A's version 2 and B's tombstone again.
        """
        await stack.cycle()
        task_a, task_b = sorted(stack.sim.store.tasks)[:2]

        async def daemon_meanwhile() -> None:
            stack.sim.store.add_feedback(task_a)
            await stack.cycle()
            gone = (await stack.store.read_snapshots([task_b]))[task_b]
            lease = stack.store.leadership()
            assert await lease.acquire(asyncio.Event())
            try:
                await stack.store.commit(Commit(snapshots=[
                    replace(gone, version=gone.version + 1, vanished=True)]), lease)
            finally:
                await lease.release()

        publisher = Meanwhile(stack.publisher, daemon_meanwhile)
        done = await snapshot.republish(stack.store, publisher, snapshot.Selection(),
                                        source=app.event_source(stack.settings), max_bytes=1_000_000)
        assert done == snapshot.Published(tasks=30, resent=2)
        # 30 (first run) + A's version 2 (daemon) + 30 (snapshot) + 2 (sent again)
        records = by_key(await stack.state_records(63))
        last_a, last_b = records[task_a.encode()][-1], records[task_b.encode()][-1]
        assert dict(last_a.headers)["ce_sequence"] == b"2" and last_a.value is not None
        assert dict(last_b.headers)["ce_sequence"] == b"2" and last_b.value is None

    async def test_state_topic_turned_off(self, stack: Stack) -> None:
        """With POLLER_STATE_TOPIC=false there is nothing to publish to: a configuration error."""
        off = stack.settings.model_copy(update={"topics": stack.settings.topics.model_copy(
            update={"state_enabled": False})})
        with pytest.raises(ConfigError, match="POLLER_STATE_TOPIC=false"):
            await snapshot.run(off, snapshot.Selection())


class Meanwhile:
    """A publisher that lets `meanwhile` run once, just before its first publish goes out."""

    def __init__(self, inner: Publisher, meanwhile: Callable[[], Awaitable[None]]) -> None:
        self._inner = inner
        self._meanwhile: Callable[[], Awaitable[None]] | None = meanwhile

    async def start(self) -> None:
        await self._inner.start()

    async def stop(self) -> None:
        await self._inner.stop()

    async def ping(self) -> None:
        await self._inner.ping()

    async def publish(self, records: Sequence[OutboundRecord]) -> None:
        if self._meanwhile is not None:
            meanwhile, self._meanwhile = self._meanwhile, None
            await meanwhile()
        await self._inner.publish(records)
