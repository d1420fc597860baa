"""Tests for poller.consumer: decoding, de-duplication, per-task order, the view and bootstrap."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import OffsetAndTimestamp

from poller import consumer, diff, events, normalise
from poller.consumer import Envelope, Message, TaskStream, TaskView, Verdict
from poller.errors import ConsumeError
from poller.localbroker import TansuBroker
from poller.models import OutboundRecord, Snapshot
from poller.publish import KafkaPublisher
from tests.fixtures.broker import kafka_settings, topic_settings
from tests.test_diff import FEEDBACK_1, ZHANG, after

OBSERVED_AT = datetime(2020, 12, 10, 2, 5, tzinfo=UTC)
SOURCE = "urn:waiqin365:openid:test"


class Poller:
    """What the poller publishes for successive observations: each flush is the observation's
    events, then its state record (poller/plan.py)."""

    def __init__(self) -> None:
        self.snapshots: dict[str, Snapshot] = {}

    def observe(self, raw: dict[str, Any]) -> list[OutboundRecord]:
        task = normalise.task(raw)
        before = self.snapshots.get(task.task_id)
        seen = diff.observe(before, task, observed_at=OBSERVED_AT)
        self.snapshots[task.task_id] = seen.snapshot(task) or before  # type: ignore[assignment]
        records = [events.encode(event, source=SOURCE) for event in seen.events]
        if records:
            records.append(events.state_record(seen.events[0], source=SOURCE))
        return records

    def vanish(self, task_id: str) -> list[OutboundRecord]:
        """The sweep confirmed the task gone: TaskVanished, then the state tombstone."""
        before = self.snapshots[task_id]
        seen = diff.vanished(before, observed_at=OBSERVED_AT)
        self.snapshots[task_id] = replace(before, version=seen.version, vanished=True)
        [event] = seen.events
        assert isinstance(event, events.TaskVanished)
        return [events.encode(event, source=SOURCE), events.state_tombstone(event, source=SOURCE)]


def task(task_id: str, **changes: Any) -> dict[str, Any]:
    """A raw API record of task `task_id` (test_diff's record with `changes`)."""
    return after(task_id=task_id, **changes)


def events_of(flush: list[OutboundRecord]) -> list[OutboundRecord]:
    return [record for record in flush if record.topic == "tasks"]


def state_of(flush: list[OutboundRecord]) -> OutboundRecord:
    [state] = [record for record in flush if record.topic == "state"]
    return state


def tombstone(state: OutboundRecord, sequence: int | None) -> OutboundRecord:
    """A tombstone of the state record's key, at `sequence` (no ce_sequence when None)."""
    headers = tuple((name, str(sequence).encode() if name == "ce_sequence" else value)
                    for name, value in state.headers
                    if not (name == "ce_sequence" and sequence is None))
    return OutboundRecord("state", state.key, None, headers)


def head(task_id: str, sequence: int | None, ce_id: str | None = None) -> Envelope:
    return Envelope(ce_id or f"{task_id}-{sequence}-{time.perf_counter_ns()}", "TaskUpdated",
                    task_id, sequence)


class TestDecode:
    def test_every_kind_decodes_to_its_model(self) -> None:
        """Events, state records and tombstones decode to their model, envelope from headers."""
        flush = Poller().observe(task("T1", feedback_detail=[FEEDBACK_1], task_status="1"))
        created, feedback, submitted, state = (consumer.decode(r) for r in flush)
        assert isinstance(created.payload, events.TaskCreated)
        assert isinstance(feedback.payload, events.FeedbackAdded)
        assert isinstance(submitted.payload, events.TaskFeedbackSubmitted)
        assert isinstance(state.payload, events.TaskState)
        assert state.task is not None and created.task is not None
        assert state.task.model_dump() == created.task.model_dump()
        assert (state.task_id, state.sequence, state.ce_type) == ("T1", 1, "TaskState")
        assert created.envelope.ce_id == created.payload.id
        gone = consumer.decode(tombstone(flush[-1], 2))
        assert gone.is_tombstone and gone.task is None and gone.sequence == 2

    def test_newer_task_event_type_keeps_task_and_sequence(self) -> None:
        """A task event of a type this release does not know decodes to the shared envelope."""
        [created, *_] = Poller().observe(task("T1"))
        headers = tuple((n, b"TaskArchived" if n == "ce_type" else v) for n, v in created.headers)
        value = created.value.replace(b'"type":"TaskCreated"', b'"type":"TaskArchived"')
        message = consumer.decode(OutboundRecord("tasks", created.key, value, headers))
        assert type(message.payload) is events.TaskEvent
        assert message.ce_type == "TaskArchived" and message.sequence == 1
        assert message.task is not None and message.task.task_id == "T1"

    def test_record_without_headers_is_a_clear_error(self) -> None:
        """A record without CloudEvents headers raises ConsumeError naming the missing header."""
        with pytest.raises(ConsumeError, match=r"^a record: no ce_id header; not a record of"):
            consumer.decode(OutboundRecord("tasks", b"1", b"{}", ()))

    def test_value_not_matching_its_type_is_a_clear_error(self) -> None:
        """A value that does not fit its ce_type's schema raises ConsumeError naming the field."""
        [created, *_] = Poller().observe(task("T1"))
        bad = OutboundRecord("tasks", created.key, b'{"type": "TaskCreated"}', created.headers)
        with pytest.raises(ConsumeError, match=r"TaskCreated does not match its schema: id: "):
            consumer.decode(bad)


class TestRecentIds:
    def test_bounded_lru(self) -> None:
        """An id is reported as seen until more than `capacity` newer ids pushed it out."""
        recent = consumer.RecentIds(capacity=2)
        assert [recent.seen(i) for i in ("a", "b", "a", "c")] == [False, False, True, False]
        assert recent.seen("a") is True  # "a" was refreshed, so "b" was forgotten
        assert recent.seen("b") is False


def message(record: OutboundRecord) -> Message:
    return consumer.decode(record)


class TestTaskView:
    def test_higher_sequence_wins(self) -> None:
        """A later observation replaces the task; an older or equal one changes nothing."""
        poller = Poller()
        first = poller.observe(task("T1"))
        second = poller.observe(task("T1", task_content="新内容"))
        view = TaskView()
        assert view.apply(message(state_of(second))) is True
        assert view.apply(message(state_of(first))) is False
        assert view.apply(message(events_of(second)[0])) is False
        assert view.tasks()["T1"].task_content == "新内容"
        assert view.sequences() == {"T1": 2}

    def test_tombstone_and_vanish_remove_a_task(self) -> None:
        """A tombstone (with or without a sequence) removes the task but keeps its version."""
        state = state_of(Poller().observe(task("T1")))
        for gone in (tombstone(state, 2), tombstone(state, 1), tombstone(state, None)):
            view = TaskView()
            view.apply(message(state))
            assert view.apply(message(gone)) is True
            assert view.tasks() == {} and len(view) == 1
            entry = view.get("T1")
            assert entry is not None and entry.task is None and entry.sequence >= 1
            assert view.apply(message(state)) is False  # an older state does not resurrect it

    def test_vanished_task_leaves_and_comes_back(self) -> None:
        """TaskVanished and its tombstone remove the task; its reappearance restores it."""
        poller = Poller()
        created = poller.observe(task("T1"))
        vanished, gone = poller.vanish("T1")
        back = poller.observe(task("T1", task_content="回来了"))
        assert consumer.decode(back[0]).ce_type == "TaskRestored"
        by_events, by_state = ([*created, vanished], back), ([state_of(created), gone],
                                                              [state_of(back)])
        for gone_by, back_by in (by_events, by_state):
            view = TaskView()
            for record in gone_by:
                view.apply(message(record))
            assert view.tasks() == {} and view.sequences() == {"T1": 2}
            for record in back_by:
                view.apply(message(record))
            assert view.tasks()["T1"].task_content == "回来了" and view.sequences() == {"T1": 3}

    def test_other_records_are_ignored(self) -> None:
        """Records without a task version (dead letters, task types) leave the view alone."""
        letter = events.dead_letter({"task_id": "T1"}, reason="bad", task_id="T1", window={},
                                    page=1, source=SOURCE, observed_at=OBSERVED_AT)
        view = TaskView()
        assert view.apply(message(letter)) is False and len(view) == 0


class TestTaskStream:
    @pytest.mark.parametrize(("applied", "arriving", "verdict"), [
        ([], 5, Verdict.NEW),
        ([3], 4, Verdict.NEXT),
        ([3], 3, Verdict.SAME),
        ([3], 6, Verdict.GAP),
        ([3, 4], 2, Verdict.STALE),
    ], ids=["first-sight", "next", "same-observation", "gap", "older"])
    def test_verdicts(self, applied: list[int], arriving: int, verdict: Verdict) -> None:
        """Each sequence is judged against the task's last applied one."""
        stream = TaskStream()
        for sequence in applied:
            stream.accept(head("T1", sequence))
        assert stream.accept(head("T1", arriving)) is verdict

    def test_duplicate_id_is_skipped(self) -> None:
        """A ce_id seen before is a duplicate, whatever its sequence."""
        stream = TaskStream()
        assert stream.accept(head("T1", 1, "id-1")) is Verdict.NEW
        assert stream.accept(head("T1", 1, "id-1")) is Verdict.DUPLICATE
        assert stream.counts == {Verdict.NEW: 1, Verdict.DUPLICATE: 1}

    def test_gap_is_recorded(self) -> None:
        """A jump of more than one is applied and kept with the missing sequences."""
        stream = TaskStream()
        stream.accept(head("T1", 2))
        assert stream.accept(head("T1", 5)).is_applied
        [gap] = stream.gaps
        assert (gap.task_id, list(gap.missing), stream.gap_count) == ("T1", [3, 4], 1)

    def test_seeded_from_state(self) -> None:
        """With a view from the state topic, its versions count as applied, whole: an event of
        that same version is stale, the next is applied, and an unknown task starts at 0."""
        poller = Poller()
        poller.observe(task("T1"))
        second = poller.observe(task("T1", task_content="新内容"))
        view = TaskView()
        view.apply(message(state_of(second)))
        stream = TaskStream(view=view)
        assert stream.accept(head("T1", 2)) is Verdict.STALE
        assert stream.accept(head("T1", 3)) is Verdict.NEXT
        assert stream.accept(head("T1", 3)) is Verdict.SAME
        assert stream.accept(head("T2", 1)) is Verdict.NEXT
        assert stream.accept(head("T3", 4)) is Verdict.GAP

    def test_deliveries_follow_the_view_and_skip_unreadable(self) -> None:
        """deliveries() returns what to act on, updates the view and sets bad records aside."""
        poller = Poller()
        flush = events_of(poller.observe(task("T1"))) + events_of(
            poller.observe(task("T1", receivers=[ZHANG])))
        bad = OutboundRecord("tasks", b"T1", b"{}", ())
        stream = TaskStream(view=TaskView())
        got = list(stream.deliveries([flush[0], bad, flush[0], *flush[1:]]))
        assert [d.verdict for d in got] == [Verdict.NEXT, Verdict.NEXT]
        assert [type(d.message.payload).__name__ for d in got] == ["TaskCreated", "TaskReassigned"]
        assert stream.view is not None and stream.view.sequences() == {"T1": 2}
        [error] = stream.unreadable
        assert "no ce_id header" in str(error)


class TestStartOffset:
    @pytest.mark.parametrize(("found", "end", "start"), [
        (None, 7, 7),
        (OffsetAndTimestamp(0, -1), 7, 7),
        (OffsetAndTimestamp(3, 1_700_000_000_000), 7, 3),
        (OffsetAndTimestamp(9, 1_700_000_000_000), 7, 7),
    ], ids=["none-that-recent", "tansu-none", "within-margin", "after-the-end"])
    def test_start(self, found: OffsetAndTimestamp | None, end: int, start: int) -> None:
        """A partition starts at the margin's first record, never beyond the end read first."""
        assert consumer.start_offset(found, end) == start


# --- against the broker ---------------------------------------------------------------------


@pytest.fixture
async def publisher(running_kafka_broker: TansuBroker) -> AsyncIterator[KafkaPublisher]:
    async with KafkaPublisher(kafka_settings(running_kafka_broker), topic_settings()) as made:
        yield made


@pytest.fixture
async def reader(running_kafka_broker: TansuBroker, publisher: KafkaPublisher
                 ) -> AsyncIterator[AIOKafkaConsumer]:
    """A group-less consumer, started after the publisher created the topics."""
    made = AIOKafkaConsumer(bootstrap_servers=running_kafka_broker.bootstrap, group_id=None,
                            enable_auto_commit=False)
    await made.start()
    try:
        yield made
    finally:
        await made.stop()


def prefix_of(publisher: KafkaPublisher) -> str:
    return publisher.topic_names["tasks"].removesuffix(".tasks")


async def follow_to_end(reader: AIOKafkaConsumer, boot: consumer.Bootstrap
                        ) -> list[consumer.Delivery]:
    """Everything follow() delivers up to the task topic's current end."""
    ends = await reader.end_offsets(list(boot.offsets))
    got: list[consumer.Delivery] = []
    async with asyncio.timeout(20):
        async for batch in consumer.follow(reader, boot, timeout_ms=100):
            got.extend(batch)
            if all([await reader.position(tp) >= end for tp, end in ends.items()]):
                return got
    raise AssertionError("unreachable")


class TestBootstrap:
    async def test_late_consumer_gets_state_then_only_newer_events(
            self, publisher: KafkaPublisher, reader: AIOKafkaConsumer) -> None:
        """A consumer joining late holds every task from the state topic and is then handed
        only the events the state does not hold, with no gap."""
        poller = Poller()
        content, reassigned = {"task_content": "新内容"}, {"task_content": "新内容", "receivers": [ZHANG]}
        for step in ({}, content, reassigned):
            for task_id in ("T1", "T2", "T3"):
                await publisher.publish(poller.observe(task(task_id, **step)))
        boot = await consumer.bootstrap(reader, prefix=prefix_of(publisher))
        assert boot.state_records == 9
        assert boot.view.sequences() == {"T1": 3, "T2": 3, "T3": 3}
        assert boot.view.tasks()["T2"].receivers[0].name == "张三"

        later = poller.observe(task("T2", **reassigned, feedback_detail=[FEEDBACK_1],
                                    task_status="1"))
        await publisher.publish(later)
        got = await follow_to_end(reader, boot)
        assert [(d.message.task_id, d.message.ce_type, d.verdict) for d in got] == [
            ("T2", "FeedbackAdded", Verdict.NEXT), ("T2", "TaskFeedbackSubmitted", Verdict.SAME)]
        assert boot.view.sequences()["T2"] == 4
        assert boot.stream.gap_count == 0 and boot.stream.counts[Verdict.STALE] == 9

    async def test_event_whose_state_record_is_missing_is_still_applied(
            self, publisher: KafkaPublisher, reader: AIOKafkaConsumer) -> None:
        """An observation whose events landed but whose state record did not (a crash between
        the two topics) is read again from the margin and applied."""
        poller = Poller()
        await publisher.publish(poller.observe(task("T1")))
        await publisher.publish(events_of(poller.observe(task("T1", task_content="新内容"))))
        boot = await consumer.bootstrap(reader, prefix=prefix_of(publisher))
        assert boot.view.sequences() == {"T1": 1}
        got = await follow_to_end(reader, boot)
        assert [(d.message.ce_type, d.verdict) for d in got] == [("TaskUpdated", Verdict.NEXT)]
        assert boot.view.tasks()["T1"].task_content == "新内容" and boot.stream.gap_count == 0

    async def test_state_lagging_beyond_the_margin_shows_as_a_gap(
            self, publisher: KafkaPublisher, reader: AIOKafkaConsumer) -> None:
        """An event older than the margin whose state record never landed is not re-read; the
        task's next event reports the gap and still brings the view up to date."""
        poller = Poller()
        await publisher.publish(poller.observe(task("T1")))
        await publisher.publish(events_of(poller.observe(task("T1", task_content="新内容"))))
        two_hours_later = time.time() + 7200
        boot = await consumer.bootstrap(reader, prefix=prefix_of(publisher),
                                        margin=timedelta(hours=1), now=lambda: two_hours_later)
        await publisher.publish(poller.observe(task("T1", task_content="新内容", receivers=[ZHANG])))
        got = await follow_to_end(reader, boot)
        assert [(d.message.ce_type, d.verdict) for d in got] == [("TaskReassigned", Verdict.GAP)]
        [gap] = boot.stream.gaps
        assert list(gap.missing) == [2] and got[0].gap == gap
        assert boot.view.tasks()["T1"].receivers[0].name == "张三"

    async def test_vanished_task_is_not_undone_by_older_events(
            self, publisher: KafkaPublisher, reader: AIOKafkaConsumer) -> None:
        """A task whose tombstone is in the state topic stays gone although its older events
        are read again within the margin; its reappearance brings it back."""
        poller = Poller()
        for flush in (poller.observe(task("T1")), poller.observe(task("T1", task_content="新")),
                      poller.vanish("T1")):
            await publisher.publish(flush)
        boot = await consumer.bootstrap(reader, prefix=prefix_of(publisher))
        assert boot.view.tasks() == {} and boot.view.sequences() == {"T1": 3}
        await publisher.publish(poller.observe(task("T1", task_content="回来了")))
        got = await follow_to_end(reader, boot)
        assert [(d.message.ce_type, d.verdict) for d in got] == [
            ("TaskRestored", Verdict.NEXT), ("TaskUpdated", Verdict.SAME)]
        assert boot.view.tasks()["T1"].task_content == "回来了" and boot.stream.gap_count == 0

    async def test_missing_topic_is_a_clear_error(self, reader: AIOKafkaConsumer) -> None:
        """Bootstrapping under a prefix without topics names the topic and the settings."""
        with pytest.raises(ConsumeError, match=r"^topic nowhere\.tasks does not exist: check the "
                                               r"prefix \(POLLER_TOPIC_PREFIX\)"):
            await consumer.bootstrap(reader, prefix="nowhere")
