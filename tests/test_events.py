"""Tests for poller.events: CloudEvents encoding, decoding and dead letters."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from hypothesis import given, settings
from hypothesis import strategies as st

from poller import diff, events, normalise
from poller.errors import NormaliseError
from poller.metrics import EVENTS_TRUNCATED
from poller.models import OutboundRecord, Snapshot, Task
from poller.truncate import DEEP_MARKER, MAX_DEPTH
from tests.strategies import mutation_steps, raw_tasks
from tests.test_normalise import VENDOR_RECORD
from tests.test_truncate import nested, replace_at, resolve

OBSERVED_AT = datetime(2020, 12, 9, 7, 5, 30, tzinfo=UTC)
SOURCE = "urn:waiqin365:openid:demo"


def created_events(raw: dict[str, Any] = VENDOR_RECORD) -> list[events.TaskEvent]:
    return diff.observe(None, normalise.task(raw), observed_at=OBSERVED_AT, type_name="巡检").events


def long_feedback_task(entries: int = 3, chars: int = 150_000) -> dict[str, Any]:
    """The vendor record with a few very long feedback texts (450 kB of Chinese each)."""
    feedback = [{"feedback_content": f"第{n + 1}次反馈：" + "门店陈列检查记录" * (chars // 8),
                 "feedback_visit_id": str(6881395042783735132 + n),
                 "feedback_time": f"2023-04-28 11:2{n}"} for n in range(entries)]
    return {**VENDOR_RECORD, "feedback_detail": feedback,
            "latest_feedback_content": feedback[-1]["feedback_content"]}


def assert_cut_from(decoded: Any, original: Any, paths: tuple[str, ...]) -> None:
    """`decoded` equals `original` except at `paths`, where it holds a shorter prefix."""
    got, want = decoded.model_dump(by_alias=True), original.model_dump(by_alias=True)
    assert tuple(got.pop("truncated", ())) == paths
    assert "truncated" not in want
    for path in paths:
        cut, whole = resolve(got, path), resolve(want, path)
        if cut == DEEP_MARKER:
            assert isinstance(whole, dict | list)
        else:
            assert whole.startswith(cut) and len(cut) < len(whole)
        replace_at(got, path, whole)
    assert got == want


def counter(metric: Any, **labels: str) -> float:
    return float(metric.labels(**labels)._value.get())


class TestEncode:
    def test_headers(self) -> None:
        """A task event carries exactly the CloudEvents binary-mode headers of docs/design.md §4."""
        event = created_events()[0]
        record = events.encode(event, source=SOURCE)
        assert record.topic == "tasks"
        assert record.key == b"10001"
        assert list(record.headers) == [
            ("ce_specversion", b"1.0"),
            ("ce_id", event.id.encode()),
            ("ce_source", SOURCE.encode()),
            ("ce_type", b"TaskCreated"),
            ("ce_subject", b"10001"),
            ("ce_time", b"2020-12-09T15:02:00+08:00"),
            ("ce_recordedtime", b"2020-12-09T15:05:30+08:00"),
            ("ce_partitionkey", b"10001"),
            ("ce_sequence", b"1"),
            ("content-type", b"application/json"),
        ]

    def test_value_is_utf8_json(self) -> None:
        """The value is the JSON payload in UTF-8 with Chinese text as is."""
        record = events.encode(created_events()[0], source=SOURCE)
        assert "任务内容".encode() in record.value
        payload = orjson.loads(record.value)
        assert payload["type"] == "TaskCreated"
        assert payload["modify_time"] == "2020-12-09T15:02:00+08:00"
        assert payload["task"]["receivers"] == [{"id": "4622857986008792650", "name": "lm"}]
        assert payload["task_type_name"] == "巡检"

    def test_status_from_to(self) -> None:
        """Status events serialise their codes as "from" and "to"."""
        payload = orjson.loads(events.encode(created_events()[-1], source=SOURCE).value)
        assert payload["type"] == "TaskFeedbackSubmitted"
        assert (payload["from"], payload["to"]) == (0, 1)
        assert "from_status" not in payload

    def test_unknown_task_fields_reach_consumers(self) -> None:
        """Fields the API added later travel in the task of the payload."""
        raw = {**VENDOR_RECORD, "x_region": "华东"}
        payload = orjson.loads(events.encode(created_events(raw)[0], source=SOURCE).value)
        assert payload["task"]["x_region"] == "华东"

    def test_task_type_changed(self) -> None:
        """TaskTypeChanged goes to task-types, keyed by type_id, without a sequence."""
        before = normalise.task_type({"type_id": "10001", "type_name": "巡检"})
        after = normalise.task_type({"type_id": "10001", "type_name": "巡店"})
        [event], _ = diff.observe_type(before, after, observed_at=OBSERVED_AT)
        record = events.encode(event, source=SOURCE)
        headers = dict(record.headers)
        assert record.topic == "task-types" and record.key == b"10001"
        assert headers["ce_type"] == b"TaskTypeChanged" and headers["ce_subject"] == b"10001"
        assert "ce_sequence" not in headers
        payload = orjson.loads(record.value)
        assert payload["changes"] == {"type_name": {"before": "巡检", "after": "巡店"}}
        assert payload["task_type"] == {"type_id": "10001", "type_name": "巡店"}
        assert events.decode(record) == event


class TestSize:
    def test_small_payload_has_no_truncated_field(self) -> None:
        """An event within budget is written as before: no `truncated` key at all."""
        for event in created_events():
            record = events.encode(event, source=SOURCE)
            assert b"truncated" not in record.value
            assert record.value == event.__pydantic_serializer__.to_json(event, by_alias=True)

    def test_long_feedback_is_cut_to_fit(self) -> None:
        """A task with 1.8 MB of feedback gives records within 1,000,000 bytes, cut and listed."""
        before = counter(EVENTS_TRUNCATED, type="FeedbackAdded")
        created = created_events(long_feedback_task())
        assert [e.type for e in created] == ["TaskCreated", "FeedbackAdded", "FeedbackAdded",
                                             "FeedbackAdded", "TaskFeedbackSubmitted"]
        for event in created:
            assert len(event.__pydantic_serializer__.to_json(event)) > 1_000_000
            record = events.encode(event, source=SOURCE)
            assert 990_000 < events.record_size(record) <= 1_000_000
            decoded = events.decode(record)
            assert type(decoded) is type(event) and decoded.truncated
            assert_cut_from(decoded, event, decoded.truncated)
        assert counter(EVENTS_TRUNCATED, type="FeedbackAdded") == before + 3
        # Equally long texts are cut in document order: the task's copies before the entry itself.
        feedback = next(e for e in created if isinstance(e, events.FeedbackAdded))
        cut = events.decode(events.encode(feedback, source=SOURCE))
        assert isinstance(cut, events.FeedbackAdded) and cut.feedback == feedback.feedback
        assert cut.truncated == ("task.latest_feedback_content", "task.feedback_detail[0].feedback_content",
                                 "task.feedback_detail[1].feedback_content")

    @pytest.mark.parametrize("budget", [20_000, 100_000, 400_000, 2_000_000])
    def test_any_budget_is_kept(self, budget: int) -> None:
        """Every record respects its budget and still decodes to its own event type."""
        for event in created_events(long_feedback_task(chars=40_000)):
            record = events.encode(event, source=SOURCE, max_bytes=budget)
            assert events.record_size(record) <= budget
            assert type(events.decode(record)) is type(event)

    def test_size_covers_kafkas_own_estimate(self) -> None:
        """record_size is never below aiokafka's estimate, so the producer's check never refuses."""
        for event in created_events(long_feedback_task(chars=20_000)):
            record = events.encode(event, source=SOURCE, max_bytes=50_000)
            estimate = DefaultRecordBatchBuilder.estimate_size_in_bytes(
                record.key, record.value, list(record.headers))
            assert estimate <= events.record_size(record) <= 50_000

    def test_structure_too_large_is_a_dead_letter(self) -> None:
        """An event too large even with every text cut raises NormaliseError (too_large)."""
        receivers = [{"id": str(10**15 + n), "name": "张伟"} for n in range(500)]
        [event, *_] = created_events({**VENDOR_RECORD, "receivers": receivers})
        with pytest.raises(NormaliseError, match="KAFKA_MAX_MESSAGE_BYTES=8192") as caught:
            events.encode(event, source=SOURCE, max_bytes=8192)
        assert caught.value.kind == "too_large" and caught.value.task_id == "10001"

    def test_deep_unknown_field_is_cut(self) -> None:
        """An unknown field nested 600 levels deep is replaced by a marker the consumer can read."""
        [event, *_] = created_events()
        deep = event.model_copy(update={"task": Task(**{**event.task.model_dump(), "x_deep": nested(600)})})
        record = events.encode(deep, source=SOURCE)
        decoded = events.decode(record)
        [path] = decoded.truncated
        assert path == "task.x_deep" + ".a" * (MAX_DEPTH - 2)  # the container at level MAX_DEPTH + 1
        assert_cut_from(decoded, deep, decoded.truncated)

    def test_task_type_event_is_cut(self) -> None:
        """A TaskTypeChanged with a huge type name is cut like a task event."""
        name = "巡检" * 300_000
        before = normalise.task_type({"type_id": "10001", "type_name": "巡检"})
        after = normalise.task_type({"type_id": "10001", "type_name": name})
        [event], _ = diff.observe_type(before, after, observed_at=OBSERVED_AT)
        record = events.encode(event, source=SOURCE)
        decoded = events.decode(record)
        assert events.record_size(record) <= 1_000_000
        assert decoded.truncated == ("changes.type_name.after", "task_type.type_name")

    @settings(deadline=None, max_examples=50)
    @given(raw_tasks(), st.integers(min_value=0, max_value=30_000), st.integers(min_value=4096, max_value=60_000))
    def test_property_within_budget_or_dead_letter(self, raw: dict[str, Any], chars: int, budget: int) -> None:
        """Whatever the texts and the budget, a record fits and decodes, or the event is refused."""
        raw = {**raw, "task_content": "任务" * chars, "achievement": "a\n" * chars}
        for event in created_events(raw):
            try:
                record = events.encode(event, source=SOURCE, max_bytes=budget)
            except NormaliseError as exc:
                assert exc.kind == "too_large"
                continue
            assert events.record_size(record) <= budget
            decoded = events.decode(record)
            assert_cut_from(decoded, event, decoded.truncated)


class TestDeadLetter:
    def record(self, raw: object, task_id: str | None = "10001") -> OutboundRecord:
        return events.dead_letter(
            raw, reason="receivers must be a list of objects, got a string", task_id=task_id,
            window={"modify_date_from": "2020-12-09", "modify_date_to": "2020-12-10"}, page=3,
            source=SOURCE, observed_at=OBSERVED_AT,
        )

    def test_shape(self) -> None:
        """A dead letter carries the reason, the raw record, the window and the page."""
        raw = {"task_id": "10001", "receivers": "lm"}
        record = self.record(raw)
        headers = dict(record.headers)
        assert record.topic == "dead-letter" and record.key == b"10001"
        assert headers["ce_type"] == b"DeadLetter" and headers["ce_specversion"] == b"1.0"
        assert orjson.loads(record.value) == {
            "reason": "receivers must be a list of objects, got a string", "raw": raw,
            "window": {"modify_date_from": "2020-12-09", "modify_date_to": "2020-12-10"},
            "page": 3,
        }
        decoded = events.decode(record)
        assert isinstance(decoded, events.DeadLetter) and decoded.raw == raw

    def test_without_task_id(self) -> None:
        """A record with no readable task_id has an empty key; raw may be any JSON value."""
        record = self.record(["not", "an", "object"], task_id=None)
        assert record.key == b""
        assert orjson.loads(record.value)["raw"] == ["not", "an", "object"]

    def test_long_text_in_raw_is_cut(self) -> None:
        """A dead letter of a record with a huge text is cut to fit and lists the path."""
        raw = {"task_id": "10001", "receivers": "lm", "task_content": "任务内容" * 200_000}
        record = self.record(raw)
        decoded = events.decode(record)
        assert isinstance(decoded, events.DeadLetter)
        assert events.record_size(record) <= 1_000_000
        assert decoded.truncated == ("raw.task_content",)
        assert raw["task_content"].startswith(decoded.raw["task_content"])

    def test_deep_raw_stays_encodable(self) -> None:
        """A record nested 600 levels deep is dead-lettered with the deep part replaced."""
        raw = {"task_id": "10001", "x": nested(600)}
        decoded = events.decode(self.record(raw))
        assert isinstance(decoded, events.DeadLetter)
        [path] = decoded.truncated
        assert resolve({"raw": decoded.raw}, path) == DEEP_MARKER
        assert decoded.raw["task_id"] == "10001"

    def test_huge_structure_becomes_text(self) -> None:
        """A record too large even with its texts cut travels as a prefix of its JSON text."""
        raw = {"task_id": "10001", "receivers": [{"id": str(n), "name": "张伟"} for n in range(100_000)]}
        record = self.record(raw)
        decoded = events.decode(record)
        assert isinstance(decoded, events.DeadLetter) and decoded.truncated == ("raw",)
        assert events.record_size(record) <= 1_000_000
        assert isinstance(decoded.raw, str) and orjson.dumps(raw).decode().startswith(decoded.raw)

    def test_absurd_task_id_is_not_the_key(self) -> None:
        """A task_id too long to key by leaves the key and subject empty; the record still fits."""
        task_id = "9" * 3000
        record = events.dead_letter(
            {"task_id": task_id}, reason="bad", task_id=task_id, window={}, page=1, source=SOURCE,
            observed_at=OBSERVED_AT, max_bytes=8192)
        assert record.key == b"" and dict(record.headers)["ce_subject"] == b""
        assert events.record_size(record) <= 8192

    def test_id_deterministic(self) -> None:
        """The same bad record always gets the same ce_id; another one a different id."""
        one = dict(self.record({"task_id": "1", "x": 1}).headers)["ce_id"]
        assert one == dict(self.record({"x": 1, "task_id": "1"}).headers)["ce_id"]
        assert one != dict(self.record({"task_id": "1", "x": 2}).headers)["ce_id"]


class TestStateRecordOf:
    def stored(self, raw: dict[str, Any] = VENDOR_RECORD) -> tuple[events.TaskEvent, Snapshot]:
        """A new task's first event and the snapshot the daemon stored for that observation."""
        current = normalise.task(raw)
        observation = diff.observe(None, current, observed_at=OBSERVED_AT)
        snapshot = observation.snapshot(current)
        assert snapshot is not None
        return observation.events[0], snapshot

    def test_same_record_as_the_daemon_wrote_for_that_version(self) -> None:
        """Key, value, ce_id, ce_sequence and ce_time equal the daemon's state record; only
        ce_recordedtime differs (the modify_time instead of when the daemon saw the change)."""
        event, snapshot = self.stored()
        daemon = events.state_record(event, source=SOURCE)
        again = events.state_record_of(snapshot, source=SOURCE)
        assert (again.topic, again.key, again.value) == (daemon.topic, daemon.key, daemon.value)
        ours, theirs = dict(again.headers), dict(daemon.headers)
        assert ours.pop("ce_recordedtime") == theirs["ce_time"] == b"2020-12-09T15:02:00+08:00"
        theirs.pop("ce_recordedtime")
        assert ours == theirs and ours["ce_sequence"] == b"1"
        assert [name for name, _ in again.headers] == [name for name, _ in daemon.headers]

    def test_identical_every_time(self) -> None:
        """The record depends on the snapshot alone: two runs publish the same bytes."""
        _, snapshot = self.stored()
        assert events.state_record_of(snapshot, source=SOURCE) == events.state_record_of(
            snapshot, source=SOURCE)

    def test_without_modify_time_the_epoch(self) -> None:
        """A task without modify_time gets the epoch as both times, never the clock."""
        raw = {k: v for k, v in VENDOR_RECORD.items() if k != "modify_time"}
        _, snapshot = self.stored(raw)
        headers = dict(events.state_record_of(snapshot, source=SOURCE).headers)
        assert headers["ce_time"] == headers["ce_recordedtime"] == b"1970-01-01T08:00:00+08:00"

    def test_too_large_is_cut_like_the_daemons(self) -> None:
        """A task larger than the budget is cut exactly as the daemon cut its state record."""
        event, snapshot = self.stored(long_feedback_task())
        daemon = events.state_record(event, source=SOURCE, max_bytes=200_000)
        again = events.state_record_of(snapshot, source=SOURCE, max_bytes=200_000)
        assert again.value == daemon.value and events.record_size(again) <= 200_000


class TestStateTombstoneOf:
    def test_same_tombstone_as_the_daemons(self) -> None:
        """A stored vanished task's tombstone has the daemon's key, ce_id and ce_sequence."""
        current = normalise.task(VENDOR_RECORD)
        stored = diff.observe(None, current, observed_at=OBSERVED_AT).snapshot(current)
        assert stored is not None
        [event] = diff.vanished(stored, observed_at=OBSERVED_AT).events
        assert isinstance(event, events.TaskVanished)
        gone = replace(stored, version=event.sequence, vanished=True)
        daemon = events.state_tombstone(event, source=SOURCE)
        again = events.state_tombstone_of(gone, source=SOURCE)
        assert (again.topic, again.key, again.value) == (daemon.topic, daemon.key, None)
        ours, theirs = dict(again.headers), dict(daemon.headers)
        for name in ("ce_id", "ce_sequence", "ce_type", "ce_subject", "ce_source"):
            assert ours[name] == theirs[name], name
        assert ours["ce_time"] == ours["ce_recordedtime"] == b"2020-12-09T15:02:00+08:00"


class TestRoundTrip:
    @settings(deadline=None)  # wall-clock limits flake on a busy CI runner
    @given(raw_tasks(), st.data())
    def test_events_survive_encoding(self, raw: dict[str, Any], data: st.DataObject) -> None:
        """Every event decodes from its Kafka record to an equal event, header ids matching."""
        task = normalise.task(raw)
        first = diff.observe(None, task, observed_at=OBSERVED_AT)
        later, _ = data.draw(mutation_steps(raw))
        assert first.version is not None
        stored = Snapshot(task.task_id, task.hash, task.document, first.version, task.modify_time)
        second = diff.observe(stored, normalise.task(later), observed_at=OBSERVED_AT)
        for event in [*first.events, *second.events]:
            record = events.encode(event, source=SOURCE)
            assert events.decode(record) == event
            assert dict(record.headers)["ce_id"] == event.id.encode()
            assert dict(record.headers)["ce_type"] == event.type.encode()


class TestDecodeState:
    def test_state_record_decodes_to_the_task(self) -> None:
        """A state record decodes to a TaskState equal, field by field, to the event's task."""
        [created, *_] = created_events()
        state = events.decode(events.state_record(created, source=SOURCE))
        assert isinstance(state, events.TaskState)
        assert state.model_dump() == created.task.model_dump()
        assert state.truncated == ()

    def test_tombstone_decodes_to_none(self) -> None:
        """A state-topic record with a null value (a tombstone) decodes to None."""
        [created, *_] = created_events()
        headers = events.state_record(created, source=SOURCE).headers
        assert events.decode(OutboundRecord("state", b"1", None, headers)) is None

    def test_cut_state_lists_what_was_cut(self) -> None:
        """A state record cut to fit decodes with the cut paths in `truncated`."""
        [created, *_] = created_events(long_feedback_task())
        state = events.decode(events.state_record(created, source=SOURCE, max_bytes=200_000))
        assert isinstance(state, events.TaskState)
        assert state.truncated and all(p.startswith("feedback_detail[") or
                                       p == "latest_feedback_content" for p in state.truncated)
