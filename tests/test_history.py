"""The history by create-date slices, against the simulator over HTTP with memory fakes: the
resumable first run, the sweep (silent changes, vanished tasks, the breaker), live backfills and
the daily request budget."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import date, datetime, timedelta
from typing import Any

from poller.config import Settings
from poller.fetch import Page
from poller.http import HealthState
from poller.loop import ApiLimits, Poller
from poller.models import Window, beijing_now
from poller.publish import MemoryPublisher
from poller.store.memory import MemoryStore
from tests.fixtures.rig import Rig, metric

# A whole sweep pass in every cycle: the period is shorter than one interval.
EVERY_CYCLE = "0.00001"


def old_tasks(rig: Rig, count: int) -> list[str]:
    """Live tasks last modified before today (the window, open on today only, skips them)."""
    today = beijing_now().date().isoformat()
    ids = [tid for tid, task in rig.sim.store.tasks.items()
           if task["modify_time"][:10] < today and str(task["status"]) == "1"]
    assert len(ids) >= count
    return ids[:count]


def types_of(rig: Rig, task_id: str) -> list[str]:
    return [dict(r.headers)["ce_type"].decode() for r in rig.records_of(task_id)]


class TestFirstRun:
    async def test_a_first_run_resumes_where_it_stopped(self, make_rig: Callable[..., Any]) -> None:
        """A first run interrupted after every cycle (a new poller each time, as after a kill)
        resumes at its committed slice: it finishes silently, with every task stored, and costs
        little more than an uninterrupted one."""
        rig = await make_rig(tasks=300, sim_kwargs={"days": 400, "drift": False})
        start = rig.sim.requests["queryTask"]
        while not (await rig.store.load_state()).baseline_complete:
            await rig.cycle(rig.new_poller())
        interrupted = rig.sim.requests["queryTask"] - start
        assert await rig.store.count_tasks() == 300 and rig.publisher.records == []

        fresh = MemoryStore()
        await fresh.start()
        once = Poller(rig.settings, client=rig.client, store=fresh, publisher=rig.publisher,
                      health=HealthState(stuck_after_s=60, ready_window_s=60), source="t",
                      limits=ApiLimits(rows=10, rate_per_s=10**6))
        start = rig.sim.requests["queryTask"]
        lease = fresh.leadership()
        assert await lease.acquire(asyncio.Event())
        await once.run_cycle(lease)
        uninterrupted = rig.sim.requests["queryTask"] - start
        assert (await fresh.load_state()).baseline_complete
        assert interrupted <= uninterrupted * 1.2 + 2, (interrupted, uninterrupted)

    async def test_a_drifting_slice_is_read_again(self) -> None:
        """A slice whose read saw a task twice is read again; the walk moves on only after a
        read without repeats."""
        source = _Repeating()
        store, publisher = MemoryStore(), MemoryPublisher()
        await store.start()
        await publisher.start()
        env = {"WAIQIN_OPENID": "o", "WAIQIN_APPKEY": "k", "POLLER_POLL_INTERVAL": "1"}
        poller = Poller(Settings.load(env).poll, client=source, store=store, publisher=publisher,
                        health=HealthState(stuck_after_s=60, ready_window_s=60), source="t",
                        limits=ApiLimits(rows=2, rate_per_s=100))
        rereads = metric("waiqin_poller_slices_reread_total", kind="first_run")
        lease = store.leadership()
        assert await lease.acquire(asyncio.Event())
        await poller.run_cycle(lease)
        assert metric("waiqin_poller_slices_reread_total", kind="first_run") == rereads + 1
        assert source.reads_of_today == 2 and (await store.load_state()).baseline_complete


class TestSweep:
    async def test_a_change_that_does_not_move_modify_time_is_found(
            self, make_rig: Callable[..., Any]) -> None:
        """Feedback added to a task last modified days ago, without moving modify_time, is
        invisible to the window and found by the sweep, counted by its cause."""
        rig = await make_rig(POLLER_SWEEP_PERIOD_HOURS=EVERY_CYCLE)
        await rig.cycle()
        task_id = old_tasks(rig, 1)[0]
        rig.sim.store.add_feedback(task_id, touch=False)
        found = metric("waiqin_poller_sweep_changes_total", cause="modify_time_unchanged")
        await rig.cycle()
        assert types_of(rig, task_id)[0] == "FeedbackAdded"
        assert metric("waiqin_poller_sweep_changes_total", cause="modify_time_unchanged") == found + 1

    async def test_no_sweep_without_a_period(self, make_rig: Callable[..., Any]) -> None:
        """POLLER_SWEEP_PERIOD_HOURS=0: the silent change stays unseen."""
        rig = await make_rig(POLLER_SWEEP_PERIOD_HOURS="0")
        await rig.cycle()
        task_id = old_tasks(rig, 1)[0]
        rig.sim.store.add_feedback(task_id, touch=False)
        for _ in range(3):
            await rig.cycle()
        assert rig.records_of(task_id) == []

    async def test_a_hard_deleted_task_vanishes_once_after_a_second_read(
            self, make_rig: Callable[..., Any]) -> None:
        """A task gone from the API: nothing after the first read that misses it, exactly one
        TaskVanished after the confirming read, a tombstone on the state topic, and a tombstone
        kept in the store."""
        rig = await make_rig(POLLER_SWEEP_PERIOD_HOURS=EVERY_CYCLE)
        await rig.cycle()
        task_id = old_tasks(rig, 1)[0]
        rig.sim.store.hard_delete(task_id)
        await rig.cycle()
        assert rig.records_of(task_id) == [], "one read that misses it proves nothing yet"
        for _ in range(3):
            await rig.cycle()
        assert types_of(rig, task_id) == ["TaskVanished"]
        [tombstone] = [r for r in rig.publisher.of("state") if r.key == task_id.encode()]
        assert tombstone.value is None
        assert rig.store.snapshots[task_id].vanished

    async def test_a_vanished_task_that_reappears_is_restored_first(
            self, make_rig: Callable[..., Any]) -> None:
        """Back in the API, changed meanwhile: TaskRestored, then the change, one sequence up."""
        rig = await make_rig(POLLER_SWEEP_PERIOD_HOURS=EVERY_CYCLE)
        await rig.cycle()
        task_id = old_tasks(rig, 1)[0]
        rig.sim.store.hard_delete(task_id)
        for _ in range(3):
            await rig.cycle()
        rig.sim.store.reappear(task_id, task_content="复查后重新启用")
        await rig.cycle()
        assert types_of(rig, task_id) == ["TaskVanished", "TaskRestored", "TaskUpdated"]
        sequences = [dict(r.headers)["ce_sequence"] for r in rig.records_of(task_id)]
        assert sequences == [b"1", b"2", b"2"]
        assert not rig.store.snapshots[task_id].vanished

    async def test_an_api_serving_half_the_data_trips_the_breaker(
            self, make_rig: Callable[..., Any]) -> None:
        """When half of a slice's stored tasks are missing at once, nothing is announced."""
        rig = await make_rig(POLLER_SWEEP_PERIOD_HOURS=EVERY_CYCLE)
        await rig.cycle()
        trips = metric("waiqin_poller_vanish_breaker_trips_total")
        rig.sim.inject("partial_pages", count=1000, endpoint="queryTask", fraction=0.5)
        for _ in range(4):
            await rig.cycle()
        assert rig.types().count("TaskVanished") == 0
        assert metric("waiqin_poller_vanish_breaker_trips_total") > trips


class TestBackfill:
    async def test_a_requested_backfill_is_run_after_the_window(
            self, make_rig: Callable[..., Any]) -> None:
        """A backfill recorded in the store is read by the leader day by day: a change stamped
        days ago (invisible to the window) arrives, and the request ends done."""
        rig = await make_rig(POLLER_SWEEP_PERIOD_HOURS="0")
        await rig.cycle()
        task_id = old_tasks(rig, 1)[0]
        created = rig.sim.store.tasks[task_id]["create_time"]
        stamp = (datetime.strptime(created, "%Y-%m-%d %H:%M") + timedelta(minutes=1)).strftime(
            "%Y-%m-%d %H:%M")
        rig.sim.store.update_fields(task_id, task_content="补录", stamp_at=stamp)
        request = await rig.store.request_backfill(date.fromisoformat(stamp[:10]), beijing_now().date(),
                                                   beijing_now())
        for _ in range(3):
            await rig.cycle()
        assert "TaskUpdated" in types_of(rig, task_id)
        [done] = await rig.store.backfills(active_only=False)
        assert done.id == request.id and done.state == "done" and done.events >= 1


class TestBudget:
    async def test_a_tight_budget_reads_the_window_only_and_stretches_the_interval(
            self, make_rig: Callable[..., Any]) -> None:
        """With 40 requests a day, the first run keeps half of what is left for the window; then
        every cycle reads its window only (no sweep page), its changes still arrive, and the
        next cycle is postponed so that the window fits the rest of the day; the day's count is
        kept in the store."""
        rig = await make_rig(budget=40, POLLER_SWEEP_PERIOD_HOURS=EVERY_CYCLE)
        await rig.cycle()
        assert (await rig.store.load_state()).baseline_complete
        stretched = metric("waiqin_poller_interval_stretched_total")
        for _ in range(3):
            task_id = rig.fresh(1)[0]
            rig.sim.store.add_feedback(task_id)
            before = rig.sim.requests["queryTask"]
            await rig.cycle()
            assert rig.sim.requests["queryTask"] - before == 1  # the window's one page
            assert types_of(rig, task_id)[0] == "FeedbackAdded"
        assert metric("waiqin_poller_interval_stretched_total") == stretched + 3
        assert metric("waiqin_poller_interval_seconds") > 60
        stored = sum(n for (day, _), n in rig.store.usage.items() if day == beijing_now().date())
        assert stored == sum(rig.client.requests.values())


class _Repeating:
    """An API of three tasks all created today, two per page, whose first read of today's
    slice repeats a task (pagination drift); every other read is clean."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.reads_of_today = 0
        today = beijing_now().strftime("%Y-%m-%d")
        self.tasks = [{"task_id": f"t{n}", "create_time": f"{today} 08:0{n}",
                       "modify_time": f"{today} 08:0{n}"} for n in range(3)]

    async def iter_pages(self, window: Window, *, split_days: int | None = None, start_page: int = 1,
                         max_pages: int | None = None) -> AsyncIterator[Page]:
        today = beijing_now().date()
        holds_today = window.create_to is not None and window.create_to >= today >= (
            window.create_from or date.min)
        records = list(self.tasks) if holds_today else []
        if holds_today and start_page == 1:
            self.reads_of_today += 1
            if self.reads_of_today == 1:
                records = [records[0], records[1], records[1], records[2]]  # t1 twice
        pages = [records[i:i + 2] for i in range(0, len(records) + 1, 2)]
        last = len(pages) if max_pages is None else min(len(pages), start_page + max_pages - 1)
        for number in range(start_page, last + 1):
            self.requests["queryTask"] += 1
            yield Page(window, number, pages[number - 1], is_last=number == len(pages))

    async def query_task_types(self, type_ids: Sequence[str]) -> list[Any]:
        return []
