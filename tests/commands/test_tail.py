"""Tests for poller.commands.tail: how an event reads on one line."""

from __future__ import annotations

from datetime import timedelta

import orjson

from poller.commands.tail import KNOWN_TYPES, describe, found_by_sweep, receivers_words, status_words
from poller.models import Receiver


class TestWords:
    def test_statuses_in_words(self) -> None:
        """task_status values read as the table's words, an unknown one as its number."""
        assert [status_words(v) for v in (0, 1, 2, 3, 9)] == [
            "awaiting feedback", "feedback given", "accepted", "feedback rejected", "status 9"]

    def test_receivers_by_name(self) -> None:
        """Added and removed receivers read as names (the id when unnamed), not Python lists."""
        added = (Receiver(id="u1", name="张三"), Receiver(id="u2"))
        removed = (Receiver(id="u3", name="王五"),)
        assert receivers_words(added, removed) == "+张三, u2 −王五"
        assert receivers_words((), removed) == "−王五"

    def test_known_types_cover_dead_letters_and_every_task_event(self) -> None:
        """--type accepts every task event and DeadLetter."""
        assert {"TaskCreated", "TaskAccepted", "FeedbackAdded", "DeadLetter"} <= set(KNOWN_TYPES)


class FakeRecord:
    """A consumer record as aiokafka hands it over: headers and a value."""

    def __init__(self, headers: tuple[tuple[str, bytes], ...], value: bytes | None) -> None:
        self.headers = headers
        self.value = value


class TestDescribe:
    def test_status_change_line(self) -> None:
        """A status event reads with its time, type, task, sequence and the statuses in words."""
        record = FakeRecord((("ce_type", b"TaskAccepted"), ("ce_subject", b"t-1"), ("ce_sequence", b"3"),
                             ("ce_time", b"2026-01-02T10:00:00+08:00")), _status_event())
        line = describe(record) or ""
        assert line.startswith("2026-01-02T10:00:00+08:00")
        assert "TaskAccepted" in line and "t-1" in line and "seq=3" in line
        assert "feedback given → accepted" in line

    def test_filters(self) -> None:
        """--type and --task leave other events out."""
        record = FakeRecord((("ce_type", b"TaskAccepted"), ("ce_subject", b"t-1")), _status_event())
        assert describe(record, types={"TaskCreated"}) is None
        assert describe(record, task_ids={"t-2"}) is None

    def test_dead_letter_line(self) -> None:
        """A dead letter reads with its key and reason."""
        record = FakeRecord((("ce_type", b"DeadLetter"),), b'{"reason": "record has no task_id"}')
        assert "reason=record has no task_id" in (describe(record) or "")


LOOKBACK = timedelta(minutes=30)


class TestFoundBySweep:
    def test_stamped_before_the_window(self) -> None:
        """A change stamped on a day before the window of the cycle that saw it is marked."""
        assert found_by_sweep("2026-01-01T10:00:00+08:00", "2026-01-03T09:00:00+08:00", lookback=LOOKBACK)

    def test_within_the_window(self) -> None:
        """Stamped today, or yesterday while the lookback still reaches it, is not marked."""
        assert not found_by_sweep("2026-01-03T08:00:00+08:00", "2026-01-03T09:00:00+08:00",
                                  lookback=LOOKBACK)
        assert not found_by_sweep("2026-01-02T23:50:00+08:00", "2026-01-03T00:10:00+08:00",
                                  lookback=LOOKBACK)

    def test_days_in_beijing_time(self) -> None:
        """Days are Beijing days whatever offset the times are written in."""
        assert not found_by_sweep("2026-01-02T17:00:00+00:00", "2026-01-03T09:00:00+08:00",
                                  lookback=LOOKBACK)  # 01:00 on the 3rd in Beijing

    def test_unreadable_times_are_not_marked(self) -> None:
        """Missing or naive times never earn the mark."""
        assert not found_by_sweep("", "2026-01-03T09:00:00+08:00", lookback=LOOKBACK)
        assert not found_by_sweep("2026-01-01T10:00:00", "2026-01-03T09:00:00", lookback=LOOKBACK)

    def test_the_line_carries_the_mark_when_asked(self) -> None:
        """describe() appends the mark only when the caller asks for it (the demo does)."""
        record = FakeRecord((("ce_type", b"TaskAccepted"), ("ce_subject", b"t-1"),
                             ("ce_time", b"2026-01-02T10:00:00+08:00"),
                             ("ce_recordedtime", b"2026-01-05T10:00:00+08:00")), _status_event())
        assert (describe(record, mark_sweep_finds=LOOKBACK) or "").endswith("found by sweep[/]")
        assert "found by sweep" not in (describe(record) or "")


def _status_event() -> bytes:
    return orjson.dumps({
        "id": "e1", "type": "TaskAccepted", "task_id": "t-1", "modify_time": "2026-01-02T10:00:00+08:00",
        "observed_at": "2026-01-02T10:00:05+08:00", "sequence": 3, "from": 1, "to": 2,
        "task": {"task_id": "t-1"},
    })
