"""Tests for poller.events: CloudEvents encoding, decoding and dead letters."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from poller import diff, events, normalise
from poller.models import OutboundRecord, Snapshot
from tests.strategies import mutation_steps, raw_tasks
from tests.test_normalise import VENDOR_RECORD

OBSERVED_AT = datetime(2020, 12, 9, 7, 5, 30, tzinfo=UTC)
SOURCE = "urn:waiqin365:openid:demo"


def created_events(raw: dict[str, Any] = VENDOR_RECORD) -> list[events.TaskEvent]:
    return diff.observe(None, normalise.task(raw), observed_at=OBSERVED_AT, type_name="巡检").events


class TestEncode:
    def test_headers(self) -> None:
        """A task event carries exactly the CloudEvents binary-mode headers of DESIGN.md §4."""
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

    def test_id_deterministic(self) -> None:
        """The same bad record always gets the same ce_id; another one a different id."""
        one = dict(self.record({"task_id": "1", "x": 1}).headers)["ce_id"]
        assert one == dict(self.record({"x": 1, "task_id": "1"}).headers)["ce_id"]
        assert one != dict(self.record({"task_id": "1", "x": 2}).headers)["ce_id"]


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
