"""The poll loop against the simulator over HTTP, with the memory store and publisher fakes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import orjson
import pytest

from poller import events
from poller.errors import (
    LeadershipLost,
    PublishUnavailable,
    SourceResponseError,
    StoreConflict,
    StoreUnavailable,
)
from poller.fetch import Page, WaiqinClient
from poller.loop import Poller
from poller.models import OutboundRecord, Window
from poller.pages import ScanStats
from tests.fixtures.rig import SOURCE, Rig, metric, poll_settings, today
from tests.fixtures.simulator import settings_for
from tests.integration.harness import eventually


def ids(records: list[OutboundRecord]) -> list[bytes]:
    return [dict(r.headers)["ce_id"] for r in records]


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
        rig = await make_rig(POLLER_START_DATE=today().isoformat())
        await rig.cycle()
        expected = sum(1 for t in rig.sim.store.tasks.values()
                       if t["modify_time"][:10] >= today().isoformat())
        assert await rig.store.count_tasks() == expected


class TestSteadyState:
    async def test_unchanged_window_publishes_nothing(self, make_rig: Callable[..., Any]) -> None:
        """Cycles over drifting renderings of unchanged tasks publish and commit nothing new."""
        rig = await make_rig()
        for _ in range(4):
            await rig.cycle()
        assert rig.publisher.records == []

    async def test_an_identical_rendering_is_not_normalised_again(
            self, make_rig: Callable[..., Any]) -> None:
        """With a tidy API every task of a second scan is recognised by its rendering alone."""
        rig = await make_rig(sim_kwargs={"drift": False})
        await rig.cycle()
        await rig.open_window_days_back(3)
        stats = await rig.cycle()
        assert stats.tasks > 0 and stats.unchanged == stats.tasks and stats.changed == 0

    async def test_repeats_are_counted_and_emit_once(self, make_rig: Callable[..., Any]) -> None:
        """A change mid-scan repeats a task: counted as drift, its change emitted once."""
        rig = await make_rig(rows=5)
        await rig.cycle()
        win = Window(modify_from=today() - timedelta(days=3), modify_to=today())
        mutated = rig.sim.store.query(modify_from=win.modify_from, modify_to=win.modify_to)[0]["task_id"]

        def mutate_after_first_page(page: Page, stats: ScanStats) -> None:
            if page.number == 1:
                rig.sim.store.update_fields(mutated, task_content="中途修改")

        lease = rig.store.leadership()
        assert await lease.acquire(asyncio.Event())
        repeats = metric("waiqin_poller_scan_repeats_total")
        stats = await rig.poller.pages.scan(win, lease, on_page=mutate_after_first_page)
        await lease.release()
        assert stats.repeats >= 1 and metric("waiqin_poller_scan_repeats_total") > repeats
        assert rig.types().count("TaskUpdated") == 1

    async def test_a_repeated_malformed_record_holds_the_window(
            self, make_rig: Callable[..., Any]) -> None:
        """A malformed record whose task_id is readable counts in the repeat check like any
        other: seen on two pages of one scan, it keeps the scanned days in the window."""
        rig = await make_rig(rows=5)
        await rig.cycle()
        await rig.open_window_days_back(3)
        held = (await rig.store.load_state()).window_from
        rig.sim.inject("malformed_record", count=2, endpoint="queryTask",
                       record={"task_id": "bad-1", "receivers": "张伟"})
        stats = await rig.cycle()
        assert stats.repeats >= 1
        assert (await rig.store.load_state()).window_from == held

    async def test_a_server_ignoring_page_fails_the_cycle(self, make_rig: Callable[..., Any]) -> None:
        """Identical full pages raise instead of looping forever."""
        rig = await make_rig(rows=5)
        await rig.cycle()
        await rig.open_window_days_back(3)
        rig.sim.inject("ignore_page", count=10)
        with pytest.raises(SourceResponseError, match="ignores `page`"):
            await rig.cycle()


class TestStoreAndStreamAgree:
    async def test_a_failed_commit_publishes_nothing_and_the_revert_is_not_lost(
            self, make_rig: Callable[..., Any]) -> None:
        """A change whose commit fails is not published; when the task changes back before the
        next cycle, the consumer still ends with the task as it is."""
        rig = await make_rig()
        await rig.cycle()
        task_id = rig.fresh(1)[0]
        before = rig.sim.store.get(task_id)["receivers"]
        rig.sim.store.reassign(task_id, [*before, {"id": "u-extra", "name": "新人"}])
        rig.store.fail("commit", error=StoreUnavailable("disk full"))
        with pytest.raises(StoreUnavailable):
            await rig.cycle()
        assert rig.publisher.records == []
        rig.sim.store.reassign(task_id, before)
        await rig.cycle()
        consumer = rig.consumer()
        assert consumer.contradictions == []
        assert task_id not in consumer.tasks  # nothing to tell: A, then A again

    async def test_a_failed_publish_is_resent_first_and_the_revert_follows(
            self, make_rig: Callable[..., Any]) -> None:
        """A committed change whose publish fails stays in the outbox; the next cycle sends it
        first, then the reverse change with the next sequence: the consumer ends with A."""
        rig = await make_rig()
        await rig.cycle()
        task_id = rig.fresh(1)[0]
        before = rig.sim.store.get(task_id)["receivers"]
        rig.sim.store.reassign(task_id, [*before, {"id": "u-extra", "name": "新人"}])
        rig.publisher.fail_next(1)
        with pytest.raises(PublishUnavailable):
            await rig.cycle()
        assert await rig.store.outbox_depth() == 2  # the event and the task's state record
        rig.sim.store.reassign(task_id, before)
        await rig.cycle()
        records = rig.records_of(task_id)
        sent = [(dict(r.headers)["ce_type"], dict(r.headers)["ce_sequence"]) for r in records]
        assert sent == [(b"TaskReassigned", b"1"), (b"TaskReassigned", b"2")]
        consumer = rig.consumer()
        assert consumer.contradictions == [] and consumer.differences(rig.truth(task_id)) == []
        assert await rig.store.outbox_depth() == 0

    async def test_a_restarted_poller_resends_the_outbox_byte_for_byte(
            self, make_rig: Callable[..., Any]) -> None:
        """What a crashed poller committed but did not send, its successor sends unchanged
        (same ids, same payloads) before reading anything new."""
        rig = await make_rig()
        await rig.cycle()
        task_id = rig.fresh(1)[0]
        rig.sim.store.add_feedback(task_id)
        rig.publisher.fail_next(1)
        with pytest.raises(PublishUnavailable):
            await rig.cycle()
        committed = [entry.record for entry in await rig.store.pending(10)]
        requests = rig.sim.requests["queryTask"]
        rig.sim.inject("http_500", count=50, endpoint="queryTask")  # nothing new can be read
        with pytest.raises(Exception, match="500"):
            await rig.cycle(rig.new_poller())
        assert rig.publisher.records == committed and rig.sim.requests["queryTask"] > requests
        assert [dict(r.headers)["ce_type"] for r in committed] == [
            b"FeedbackAdded", b"TaskFeedbackSubmitted", b"TaskState"]

    async def test_a_state_record_follows_each_observation(self, make_rig: Callable[..., Any]) -> None:
        """After an observation's events comes one current-state record: key task_id, value the
        task after the change (the events' `task`), ce_type TaskState, the same ce_sequence."""
        rig = await make_rig()
        await rig.cycle()
        task_id = rig.fresh(1)[0]
        rig.sim.store.add_feedback(task_id)
        await rig.cycle()
        [state] = rig.publisher.of("state")
        headers = dict(state.headers)
        assert state.key == task_id.encode() and headers["ce_type"] == b"TaskState"
        last_event = rig.records_of(task_id)[-1]
        assert headers["ce_sequence"] == dict(last_event.headers)["ce_sequence"] == b"1"
        assert state.value is not None and last_event.value is not None
        assert orjson.loads(state.value) == orjson.loads(last_event.value)["task"]
        assert rig.publisher.records[-1] is state  # sent right after the events, in one flush

    async def test_no_state_records_when_turned_off(self, make_simulator: Callable[..., Any]) -> None:
        """POLLER_STATE_TOPIC=false: events only."""
        sim = await make_simulator(tasks=20, days=3, seed=3)
        async with WaiqinClient(settings_for(sim)) as client:
            rig = Rig(sim, client, poll_settings())
            rig.poller = Poller(rig.settings, client=client, store=rig.store, publisher=rig.publisher,
                                health=rig.health, source=SOURCE, clock=rig.clock, state_topic=False)
            await rig.store.start()
            await rig.publisher.start()
            await rig.cycle()
            rig.sim.store.add_feedback(rig.fresh(1)[0])
            await rig.cycle()
        assert rig.publisher.of("tasks") and rig.publisher.of("state") == []

    async def test_a_task_changing_back_and_forth_gets_new_ids(self, make_rig: Callable[..., Any]) -> None:
        """A→B→A→B within one minute: three changes, three sequences, three different ids."""
        rig = await make_rig()
        await rig.cycle()
        task_id = rig.fresh(1)[0]
        a = rig.sim.store.get(task_id)["receivers"]
        b = [*a, {"id": "u-extra", "name": "新人"}]
        for receivers in (b, a, b):
            rig.sim.store.reassign(task_id, receivers)
            await rig.cycle()
        records = rig.records_of(task_id)
        assert [dict(r.headers)["ce_sequence"] for r in records] == [b"1", b"2", b"3"]
        assert len(set(ids(records))) == 3
        consumer = rig.consumer()
        assert consumer.contradictions == [] and consumer.differences(rig.truth(task_id)) == []


class TestNoRecordStopsTheStream:
    @pytest.mark.parametrize("poison", [
        pytest.param({"x_deep": "nested"}, id="nested-600-levels"),
        pytest.param({"create_time": "9999-12-31T23:59:00-05:00"}, id="time-out-of-range"),
        pytest.param({"task_status": 2**70}, id="status-beyond-64-bits"),
    ])
    async def test_a_poison_record_is_dead_lettered_and_the_rest_flows(
            self, make_rig: Callable[..., Any], poison: dict[str, Any]) -> None:
        """A record no rule can read goes to the dead-letter topic once; the other changes of
        the page are published and the window moves on."""
        rig = await make_rig()
        await rig.cycle()
        good, bad = rig.fresh(2)
        fields = {"x_deep": _nested(600)} if "x_deep" in poison else poison
        record = {**rig.sim.store.get(bad), **fields, "modify_time": rig.sim.store.get(bad)["modify_time"]}
        rig.sim.inject("malformed_record", count=3, endpoint="queryTask", record=record)
        rig.sim.store.add_feedback(good)
        for _ in range(3):
            await rig.cycle()
        assert rig.types("dead-letter") == ["DeadLetter"]
        assert "FeedbackAdded" in [dict(r.headers)["ce_type"].decode() for r in rig.records_of(good)]
        assert (await rig.store.load_state()).window_from is not None


    async def test_an_event_too_large_is_cut_to_fit(self, make_rig: Callable[..., Any]) -> None:
        """With KAFKA_MAX_MESSAGE_BYTES at 8 KiB, a long feedback text arrives cut to fit, its path
        listed in `truncated`, instead of stopping the stream."""
        rig = await make_rig(max_message_bytes=8192)
        await rig.cycle()
        task_id = rig.fresh(1)[0]
        rig.sim.store.add_feedback(task_id, content="门店陈列需要整改。" * 1000)
        await rig.cycle()
        records = rig.records_of(task_id)
        assert [dict(r.headers)["ce_type"] for r in records] == [b"FeedbackAdded", b"TaskFeedbackSubmitted"]
        for record in records:
            assert record.value is not None and len(record.value) < 8192
            assert "feedback.feedback_content" in orjson.loads(record.value)["truncated"] or \
                "task.feedback_detail[0].feedback_content" in orjson.loads(record.value)["truncated"]


class TestBackoff:
    async def test_a_persistent_store_error_is_backed_off_not_spun(
            self, make_rig: Callable[..., Any]) -> None:
        """An unreadable poll state (StoreConflict on every cycle) waits between attempts and
        keeps the leadership instead of failing thousands of times a second."""
        rig = await make_rig(POLLER_MAX_BACKOFF_SECONDS="0.2")
        rig.store.fail("load_state", times=10**6, error=StoreConflict("unreadable poll state"))
        failures = metric("waiqin_poller_cycles_total", outcome="failure")
        task = asyncio.create_task(rig.poller.run())
        started = time.monotonic()
        try:
            await eventually(lambda: metric("waiqin_poller_cycles_total", outcome="failure")
                             >= failures + 4, timeout_s=10, interval_s=0.01)
            elapsed = time.monotonic() - started
        finally:
            rig.poller.stop()
            await asyncio.wait_for(task, 5)
        assert elapsed >= 3 * 0.2 * 0.9, f"4 failures in {elapsed:.3f}s: not backed off"

    async def test_store_outage_is_waited_out(self, make_rig: Callable[..., Any]) -> None:
        """run() survives failing cycles and goes on once the store is back."""
        rig = await make_rig(POLLER_MAX_BACKOFF_SECONDS="0.05")
        rig.store.fail("load_state", times=3)
        failures = metric("waiqin_poller_cycles_total", outcome="failure")
        task = asyncio.create_task(rig.poller.run())
        try:
            await eventually(lambda: rig.health.last_success_at is not None, timeout_s=10, interval_s=0.01)
            assert metric("waiqin_poller_cycles_total", outcome="failure") >= failures + 3
        finally:
            rig.poller.stop()
            await asyncio.wait_for(task, 5)


class TestFencing:
    async def test_a_deposed_leader_publishes_and_commits_nothing(
            self, make_rig: Callable[..., Any]) -> None:
        """A poller whose lock was taken away sends nothing and writes nothing: not the
        page's events, not the outbox of earlier cycles, not the poll state."""
        rig = await make_rig()
        await rig.cycle()
        task_id = rig.fresh(1)[0]
        rig.sim.store.add_feedback(task_id)
        state = await rig.store.load_state()
        lease = rig.store.leadership()
        assert await lease.acquire(asyncio.Event())
        rig.store.revoke_leadership()
        with pytest.raises(LeadershipLost):
            await rig.poller.run_cycle(lease)
        assert rig.publisher.records == []
        assert await rig.store.load_state() == state and await rig.store.outbox_depth() == 0

    async def test_lost_leadership_is_regained_before_polling_again(
            self, make_rig: Callable[..., Any]) -> None:
        """A cycle that finds its lock lost fails before committing; polling resumes once the
        lock is acquired again, and the change is published then."""
        rig = await make_rig(POLLER_MAX_BACKOFF_SECONDS="0.05")
        task = asyncio.create_task(rig.poller.run())
        try:
            await eventually(lambda: rig.health.last_success_at is not None, timeout_s=10, interval_s=0.01)
            failures = metric("waiqin_poller_cycles_total", outcome="failure")
            task_id = rig.fresh(1)[0]
            rig.store.revoke_leadership()
            rig.sim.store.add_feedback(task_id)
            await eventually(lambda: rig.store.snapshots[task_id].version, timeout_s=10, interval_s=0.01)
            assert metric("waiqin_poller_cycles_total", outcome="failure") > failures
            await eventually(lambda: rig.records_of(task_id), timeout_s=10, interval_s=0.01)
            assert rig.types()[0] == "FeedbackAdded"
        finally:
            rig.poller.stop()
            await asyncio.wait_for(task, 5)


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
        assert dead[0].value is not None
        body = orjson.loads(dead[0].value)
        assert body["raw"]["task_content"] == "没有任务编号的记录" and body["page"] == 1
        assert dead[0].key == b""

    async def test_a_re_rendered_bad_record_is_not_a_new_dead_letter(
            self, make_rig: Callable[..., Any]) -> None:
        """The same bad record rendered differently (numbers as strings, other key order, an
        empty field) is the same content: dead-lettered once."""
        rig = await make_rig()
        await rig.cycle()
        renderings = [
            {"task_id": "bad-7", "receivers": "张伟", "status": 1, "execute_demand": 2},
            {"execute_demand": "2", "status": "1", "receivers": "张伟", "task_id": "bad-7",
             "achievement": ""},
        ]
        for rendering in renderings:
            rig.sim.inject("malformed_record", count=1, endpoint="queryTask", record=rendering)
            await rig.cycle()
        assert rig.types("dead-letter") == ["DeadLetter"]


class TestTaskTypes:
    async def test_events_carry_type_names_and_type_changes_are_published(
            self, make_rig: Callable[..., Any]) -> None:
        """Task events carry the type name; a changed type yields TaskTypeChanged once the
        refresh interval has passed on the poller's clock."""
        rig = await make_rig(POLLER_TYPE_REFRESH_SECONDS="60")
        await rig.cycle()
        task_id = rig.fresh(1)[0]
        type_id = str(rig.sim.store.tasks[task_id]["task_type_id"])
        rig.sim.store.update_type(type_id, type_name="重点客户拜访")
        rig.sim.store.add_feedback(task_id)
        await rig.cycle()
        assert rig.publisher.of("task-types") == []  # not due yet
        rig.clock.advance(61)
        await rig.cycle()
        assert rig.types("task-types") == ["TaskTypeChanged"]
        rig.sim.store.add_feedback(task_id)
        await rig.cycle()
        feedback = events.decode(rig.records_of(task_id)[-1])
        assert feedback.task_type_name == "重点客户拜访"  # type: ignore[union-attr]

    async def test_a_type_renamed_back_and_forth_gets_new_ids(self, make_rig: Callable[..., Any]) -> None:
        """A task type renamed A→B→A: two TaskTypeChanged with different ids."""
        rig = await make_rig(POLLER_TYPE_REFRESH_SECONDS="60")
        await rig.cycle()
        type_id = str(next(iter(rig.sim.store.tasks.values()))["task_type_id"])
        original = rig.sim.store.types[type_id]["type_name"]
        for name in ("临时名称", original):
            rig.sim.store.update_type(type_id, type_name=name)
            rig.clock.advance(61)
            await rig.cycle()
        assert len(set(ids(rig.publisher.of("task-types")))) == 2

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


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": "深"}
    for _ in range(depth):
        value = {"a": value}
    return value
