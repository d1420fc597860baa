"""The soak's verdict finds every way a stream can lose, contradict or misstate a task."""

from __future__ import annotations

from typing import Any

import orjson

from benchmarks.soak_judge import Truth, judge
from poller import normalise
from poller.models import OutboundRecord
from tests.consumer_model import expected


def raw(task_id: str, content: str, minute: int = 0) -> dict[str, Any]:
    """An API record of a task, as the simulator would serve it."""
    return {"task_id": task_id, "task_type_id": "", "task_content": content,
            "receivers": [{"id": "u1", "name": "甲"}], "feedback_detail": [], "task_status": 0,
            "status": 1, "create_time": "2026-03-01 08:00", "modify_time": f"2026-03-01 09:{minute:02d}"}


def task(record: dict[str, Any]) -> dict[str, Any]:
    return normalise.to_task(normalise.task(record).document).model_dump(mode="json")


def event(ce_id: str, sequence: int, record: dict[str, Any]) -> OutboundRecord:
    return OutboundRecord("tasks", record["task_id"].encode(), orjson.dumps({"task": task(record)}),
                          _headers(ce_id, record["task_id"], sequence))


def state(sequence: int, record: dict[str, Any]) -> OutboundRecord:
    return OutboundRecord("state", record["task_id"].encode(), orjson.dumps(task(record)),
                          _headers(f"s-{sequence}", record["task_id"], sequence))


def dead_letter(record: dict[str, Any]) -> OutboundRecord:
    return OutboundRecord("dead-letter", None, orjson.dumps({"raw": record}))


def _headers(ce_id: str, subject: str, sequence: int) -> tuple[tuple[str, bytes], ...]:
    return (("ce_id", ce_id.encode()), ("ce_subject", subject.encode()),
            ("ce_sequence", str(sequence).encode()))


A, B, C = raw("t1", "A"), raw("t1", "B", 1), raw("t1", "A", 2)  # C: changed back to A
TRUTH = Truth(finals={"t1": expected(C)}, initial={"t1": expected(A)})


class TestJudge:
    def test_a_truthful_stream_passes(self) -> None:
        """Events in any order, a re-send, and a state record of the newest event: nothing wrong."""
        events = [event("e2", 2, B), event("e3", 3, C), event("e2", 2, B)]
        verdict = judge(events, [state(2, B), state(3, C)], [], TRUTH)
        assert (verdict.lost, verdict.contradictions, verdict.state_wrong, verdict.problems) == ([], [], [], [])
        assert (verdict.events, verdict.duplicates, verdict.state_records) == (2, 1, 2)

    def test_a_lost_change_back_is_lost(self) -> None:
        """A consumer left with B while the task went back to A has lost a change."""
        verdict = judge([event("e2", 2, B)], [state(2, B)], [], TRUTH)
        assert len(verdict.lost) == 1 and "t1" in verdict.lost[0]

    def test_a_task_without_events_holds_its_initial_state(self) -> None:
        """A task whose changes cancelled out within a cycle is judged by its state before churn."""
        assert judge([], [], [], TRUTH).lost == []  # A -> B -> A, B never seen
        assert len(judge([], [], [], Truth(finals={"t1": expected(B)}, initial={"t1": expected(A)})).lost) == 1

    def test_contradictions_are_counted(self) -> None:
        """One ce_id with two payloads, and one sequence with two states, are contradictions."""
        verdict = judge([event("e2", 2, B), event("e2", 2, C), event("e3", 3, B), event("e4", 3, C)],
                        [state(3, C)], [], TRUTH)
        assert len(verdict.contradictions) == 2

    def test_a_stale_or_missing_state_record_is_wrong(self) -> None:
        """The newest state record must be the newest event's task; a task with events needs one
        (a tombstone removes it)."""
        events = [event("e2", 2, B), event("e3", 3, C)]
        assert len(judge(events, [state(3, C), state(2, B)], [], TRUTH).state_wrong) == 1
        assert len(judge(events, [], [], TRUTH).state_wrong) == 1
        tombstone = OutboundRecord("state", b"t1", None, _headers("s-4", "t1", 4))
        assert len(judge(events, [state(3, C), tombstone], [], TRUTH).state_wrong) == 1

    def test_noise_and_unexpected_dead_letters_are_problems(self) -> None:
        """An event for a task never mutated, a dead letter never injected, an injected record
        never dead-lettered: each is a problem."""
        other = raw("t2", "X")
        injected = frozenset({orjson.dumps({"task_id": "bad"}, option=orjson.OPT_SORT_KEYS)})
        truth = Truth(finals=TRUTH.finals, initial=TRUTH.initial, injected=injected)
        verdict = judge([event("e3", 3, C), event("x1", 1, other)], [state(3, C), state(1, other)],
                        [dead_letter({"task_id": "other"})], truth)
        assert len(verdict.problems) == 3, verdict.problems
