"""The poll loop against the simulator over HTTP, with the memory store and publisher fakes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from poller import events
from poller.config import PollSettings, Settings
from poller.errors import PublishUnavailable, SourceResponseError, StoreUnavailable
from poller.fetch import WaiqinClient
from poller.http import HealthState
from poller.loop import Poller
from poller.models import OutboundRecord
from poller.publish import MemoryPublisher
from poller.simulator import Simulator
from poller.store.memory import MemoryStore
from tests.fixtures.simulator import settings_for
from tests.integration.harness import eventually

SOURCE = "https://sim/api/cusTask/test-openid"


def poll_settings(**overrides: str) -> PollSettings:
    """PollSettings read the way the daemon reads them: from environment names."""
    env = {"WAIQIN_OPENID": "-", "WAIQIN_APPKEY": "-", "POLLER_POLL_INTERVAL": "0.05",
           "POLLER_TYPE_REFRESH_SECONDS": "3600", **overrides}
    return Settings.load(env).poll


class Rig:
    """A Poller wired to a simulator, a memory store and a memory publisher."""

    def __init__(self, sim: Simulator, client: WaiqinClient, settings: PollSettings) -> None:
        self.sim = sim
        self.store = MemoryStore()
        self.publisher = MemoryPublisher()
        self.health = HealthState(stuck_after_s=60, ready_window_s=60)
        self.poller = Poller(settings, client=client, store=self.store, publisher=self.publisher,
                             health=self.health, source=SOURCE)

    async def cycle(self) -> Any:
        """One cycle as the leader (the loop normally acquires leadership first)."""
        leadership = self.store.leadership()
        assert await leadership.acquire(asyncio.Event())
        self.poller._leadership = leadership
        try:
            return await self.poller.run_cycle()
        finally:
            await leadership.release()

    def types(self, topic: str = "tasks") -> list[str]:
        return [dict(r.headers)["ce_type"].decode() for r in self.publisher.of(topic)]  # type: ignore[arg-type]

    def records_of(self, task_id: str) -> list[OutboundRecord]:
        return [r for r in self.publisher.of("tasks") if r.key == task_id.encode()]

    def fresh(self, count: int) -> list[str]:
        ids = [t for t, task in self.sim.store.tasks.items()
               if str(task["status"]) == "1" and str(task["task_status"]) == "0"]
        return ids[:count]


@pytest.fixture
async def make_rig(make_simulator: Callable[..., Any]) -> AsyncIterator[Callable[..., Any]]:
    clients: list[WaiqinClient] = []

    async def make(*, rows: int = 10, tasks: int = 40, sim_kwargs: dict[str, Any] | None = None,
                   **settings: Any) -> Rig:
        sim = await make_simulator(tasks=tasks, days=3, seed=3, **(sim_kwargs or {}))
        client = WaiqinClient(settings_for(sim, page_rows=rows), backoff_base_s=0.01)
        await client.start()
        clients.append(client)
        rig = Rig(sim, client, poll_settings(**settings))
        await rig.store.start()
        await rig.publisher.start()
        return rig

    yield make
    for client in clients:
        await client.stop()


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class TestFirstRun:
    async def test_baseline_records_history_silently(self, make_rig: Callable[..., Any]) -> None:
        """A baseline stores every task and publishes nothing."""
        rig = await make_rig()
        await rig.cycle()
        assert rig.publisher.records == []
        assert await rig.store.count_tasks() == 40
        state = await rig.store.load_state()
        assert state.baseline_complete and state.window_from is not None

    async def test_replay_emits_every_task_as_new(self, make_rig: Callable[..., Any]) -> None:
        """Replay emits a TaskCreated (and its derived events) for every task."""
        rig = await make_rig(POLLER_START_MODE="replay")
        await rig.cycle()
        assert rig.types().count("TaskCreated") == 40

    async def test_start_date_limits_the_first_scan(self, make_rig: Callable[..., Any]) -> None:
        """With a start date only tasks modified since then are recorded."""
        rig = await make_rig(POLLER_START_DATE=(rig_today() - timedelta(days=0)).isoformat())
        await rig.cycle()
        today = rig_today().isoformat()
        expected = sum(1 for t in rig.sim.store.tasks.values() if t["modify_time"][:10] >= today)
        assert await rig.store.count_tasks() == expected


def rig_today() -> Any:
    from poller.models import beijing_now
    return beijing_now().date()


class TestSteadyState:
    async def test_a_change_is_published_before_its_snapshot_is_committed(
            self, make_rig: Callable[..., Any]) -> None:
        """A failed publish commits nothing, and the retry re-emits the same ce_ids."""
        rig = await make_rig()
        await rig.cycle()
        task_id = rig.fresh(1)[0]
        rig.sim.store.add_feedback(task_id)
        rig.publisher.fail_next(1)
        with pytest.raises(PublishUnavailable):
            await rig.cycle()
        assert rig.publisher.records == []
        stored = (await rig.store.get_snapshots([task_id]))[task_id]
        assert stored.version == 0, "the page must not be committed without acks"
        await rig.cycle()
        first = [dict(r.headers)["ce_id"] for r in rig.records_of(task_id)]
        assert [dict(r.headers)["ce_type"] for r in rig.records_of(task_id)] == [
            b"FeedbackAdded", b"TaskFeedbackSubmitted"]
        assert (await rig.store.get_snapshots([task_id]))[task_id].version == 1
        # A crash after publish, before commit: the next cycle re-emits identical ids.
        rig.sim.store.set_task_status(task_id, 2)
        commit = rig.store.commit_page

        async def crash_once(*args: Any, **kwargs: Any) -> None:
            rig.store.commit_page = commit  # type: ignore[method-assign]
            raise StoreUnavailable("disk gone")

        rig.store.commit_page = crash_once  # type: ignore[method-assign]
        before = len(rig.publisher.records)
        with pytest.raises(StoreUnavailable):
            await rig.cycle()
        published_once = [dict(r.headers)["ce_id"] for r in rig.publisher.records[before:]]
        await rig.cycle()
        again = [dict(r.headers)["ce_id"] for r in rig.publisher.records[before + len(published_once):]]
        assert published_once and again[-len(published_once):] == published_once
        assert first == [dict(r.headers)["ce_id"] for r in rig.records_of(task_id)][:2]

    async def test_unchanged_window_publishes_nothing(self, make_rig: Callable[..., Any]) -> None:
        """Cycles over drifting renderings of unchanged tasks publish nothing."""
        rig = await make_rig()
        for _ in range(4):
            await rig.cycle()
        assert rig.publisher.records == []

    async def test_repeats_hold_the_window_and_emit_once(self, make_rig: Callable[..., Any]) -> None:
        """A change mid-scan repeats a task: counted, window kept open, no double events."""
        rig = await make_rig(rows=5)
        await rig.cycle()
        # Move the whole window back so the scan spans several pages of older tasks.
        state = await rig.store.load_state()
        old = state.model_copy(update={"window_from": rig_today() - timedelta(days=3)})
        await rig.store.save_state(old)
        first_page_ids = [t["task_id"] for t in rig.sim.store.query(
            modify_from=old.window_from, modify_to=rig_today())[:5]]
        mutated = first_page_ids[0]
        original = rig.poller._process_page

        async def mutate_after_first_page(page: Any, *args: Any, **kwargs: Any) -> None:
            await original(page, *args, **kwargs)
            if page.number == 1:
                rig.sim.store.update_fields(mutated, task_content="中途修改")

        rig.poller._process_page = mutate_after_first_page  # type: ignore[method-assign]
        repeats = metric("waiqin_poller_scan_repeats_total")
        stats = await rig.cycle()
        assert stats.repeats >= 1 and metric("waiqin_poller_scan_repeats_total") > repeats
        assert (await rig.store.load_state()).window_from == old.window_from
        assert rig.types().count("TaskUpdated") == 1

    async def test_a_server_ignoring_page_fails_the_cycle(self, make_rig: Callable[..., Any]) -> None:
        """Identical full pages raise instead of looping forever; the loop survives it."""
        rig = await make_rig(rows=5)
        await rig.cycle()
        state = await rig.store.load_state()
        await rig.store.save_state(state.model_copy(
            update={"window_from": rig_today() - timedelta(days=3)}))
        rig.sim.inject("ignore_page", count=10)
        with pytest.raises(SourceResponseError, match="ignores `page`"):
            await rig.cycle()


class TestDeadLetters:
    async def test_same_bad_record_is_dead_lettered_once(self, make_rig: Callable[..., Any]) -> None:
        """A bad record returned every cycle goes to the dead-letter topic once."""
        rig = await make_rig()
        await rig.cycle()
        rig.sim.inject("malformed_record", count=5, variant="missing_task_id")
        for _ in range(3):
            await rig.cycle()
        dead = rig.publisher.of("dead-letter")
        assert len(dead) == 1
        body = orjson.loads(dead[0].value)
        assert body["raw"]["task_content"] == "没有任务编号的记录" and body["page"] == 1
        assert dead[0].key == b""


class TestTaskTypes:
    async def test_events_carry_type_names_and_type_changes_are_published(
            self, make_rig: Callable[..., Any]) -> None:
        """Task events carry the type name; a changed type yields TaskTypeChanged."""
        rig = await make_rig(POLLER_TYPE_REFRESH_SECONDS="0.01")
        await rig.cycle()
        task_id = rig.fresh(1)[0]
        type_id = str(rig.sim.store.tasks[task_id]["task_type_id"])
        rig.sim.store.update_type(type_id, type_name="重点客户拜访")
        rig.sim.store.add_feedback(task_id)
        await asyncio.sleep(0.02)  # let the refresh interval elapse (a clock, not a sync point)
        await rig.cycle()
        changed = rig.publisher.of("task-types")
        assert [dict(r.headers)["ce_type"] for r in changed] == [b"TaskTypeChanged"]
        feedback = events.decode(rig.records_of(task_id)[0])
        assert feedback.task_type_name == "重点客户拜访"  # type: ignore[union-attr]

    async def test_refused_query_task_type_never_blocks_task_events(
            self, make_rig: Callable[..., Any]) -> None:
        """Without queryTaskType, task events flow without names and a gauge says so."""
        rig = await make_rig(sim_kwargs={"grant_task_types": False})
        await rig.cycle()
        task_id = rig.fresh(1)[0]
        rig.sim.store.add_feedback(task_id)
        await rig.cycle()
        feedback = events.decode(rig.records_of(task_id)[0])
        assert feedback.type == "FeedbackAdded" and feedback.task_type_name is None  # type: ignore[union-attr]
        assert metric("waiqin_poller_task_types_refused") == 1


class TestRun:
    async def test_store_outage_is_waited_out(self, make_rig: Callable[..., Any]) -> None:
        """run() survives failing cycles and goes on once the store is back."""
        rig = await make_rig(POLLER_MAX_BACKOFF_SECONDS="0.05")
        rig.store.fail_next(calls=3)
        failures = metric("waiqin_poller_cycles_total", outcome="failure")
        task = asyncio.create_task(rig.poller.run())
        try:
            await eventually(lambda: rig.health.last_success_at is not None, timeout_s=10, interval_s=0.01)
            assert metric("waiqin_poller_cycles_total", outcome="failure") > failures
        finally:
            rig.poller.stop()
            await asyncio.wait_for(task, 5)

    async def test_lost_leadership_is_regained_before_polling_again(
            self, make_rig: Callable[..., Any]) -> None:
        """A cycle that finds its lock lost fails before committing; polling resumes once the
        lock is acquired again, and the change is published then."""
        rig = await make_rig()
        task = asyncio.create_task(rig.poller.run())
        try:
            await eventually(lambda: rig.health.last_success_at is not None, timeout_s=10, interval_s=0.01)
            failures = metric("waiqin_poller_cycles_total", outcome="failure")
            task_id = rig.fresh(1)[0]
            rig.store.revoke_leadership()
            rig.sim.store.add_feedback(task_id)
            await eventually(lambda: rig.store.snapshots[task_id].version, timeout_s=10, interval_s=0.01)
            assert metric("waiqin_poller_cycles_total", outcome="failure") > failures
            assert "FeedbackAdded" in [dict(r.headers)["ce_type"].decode() for r in rig.records_of(task_id)]
        finally:
            rig.poller.stop()
            await asyncio.wait_for(task, 5)
