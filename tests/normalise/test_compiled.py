"""Tests for poller.normalise.compiled: the fast path for records still in bytes."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poller import normalise
from poller.models import NormalisedTask
from poller.normalise import compiled, digest
from poller.normalise.fields import TASK
from tests.strategies import garbled_tasks, hostile_tasks, hostile_values, raw_tasks, renderings

USUAL: dict[str, Any] = {
    "task_id": "10001", "task_type_id": "10007", "status": 1, "task_status": "2",
    "execute_demand": "", "create_time": "2020-11-19 10:33", "modify_time": "2020-12-09 15:02",
    "task_content": "巡检", "creator": {"name": "lm", "id": "46"},
    "receivers": [{"name": "b", "id": "9"}, {"name": "a", "id": "1"}],
    "feedback_detail": [{"feedback_content": "第二", "feedback_visit_id": "7",
                         "feedback_time": "2020-11-20 09:00"},
                        {"feedback_content": "第一", "feedback_visit_id": "7",
                         "feedback_time": "2020-11-19 11:00"}],
    "visit_implement_id": "",
}


def fields(task: NormalisedTask) -> tuple[Any, ...]:
    return task.task_id, task.document, task.hash, task.type_id, task.modify_time


def assert_agrees(body: bytes) -> None:
    """`encoded_task` of `body` declines, or agrees field for field with `task` of its parse."""
    quick = normalise.encoded_task(body)
    if quick is None:
        return
    assert fields(quick) == fields(normalise.task(orjson.loads(body)))


class TestEncodedTask:
    def test_usual_record(self) -> None:
        """A record of the usual shape is normalised from its bytes exactly as when parsed."""
        body = orjson.dumps(USUAL)
        quick = normalise.encoded_task(body)
        assert quick is not None and fields(quick) == fields(normalise.task(USUAL))

    @pytest.mark.parametrize("change", [
        pytest.param({"x_unknown": "kept"}, id="unknown-field"),
        pytest.param({"task_content": None}, id="null"),
        pytest.param({"task_type_id": 10007}, id="number-in-text-field"),
        pytest.param({"status": 1.0}, id="float-code"),
        pytest.param({"status": "256"}, id="code-beyond-the-table"),
        pytest.param({"status": True}, id="boolean-code"),
        pytest.param({"create_time": "2020-11-19 10:33:00"}, id="time-with-seconds"),
        pytest.param({"creator": "lm"}, id="object-as-text"),
        pytest.param({"creator": {"id": "46"}}, id="object-missing-a-field"),
        pytest.param({"receivers": [{"name": "a", "id": "1"}, {"name": "a2", "id": "1"}]},
                     id="duplicate-set-key"),
        pytest.param({"receivers": [{"name": "", "id": "1"}]}, id="empty-member-text"),
        pytest.param({"task_id": ""}, id="no-task-id"),
    ])
    def test_declines_what_the_rules_must_decide(self, change: dict[str, Any]) -> None:
        """Anything but the usual shape is left to the rules (None), which then decide."""
        assert normalise.encoded_task(orjson.dumps({**USUAL, **change})) is None

    def test_absent_values_are_dropped(self) -> None:
        """"" and [] mean absent: the document has no such key, as by the rules."""
        body = orjson.dumps({**USUAL, "receivers": [], "creator": "", "status": ""})
        quick = normalise.encoded_task(body)
        assert quick is not None and fields(quick) == fields(normalise.task(orjson.loads(body)))
        assert b'"receivers"' not in quick.document and b'"status"' not in quick.document

    def test_document_is_compact_sorted_json(self) -> None:
        """The document is the canonical JSON: keys sorted, sets sorted by their key."""
        quick = compiled.document(orjson.dumps(USUAL))
        assert quick is not None
        document, task_id, type_id, modify = quick
        parsed = orjson.loads(document)
        assert list(parsed) == sorted(parsed)
        assert [r["id"] for r in parsed["receivers"]] == ["1", "9"]
        assert (task_id, type_id, modify) == ("10001", "10007", "2020-12-09T15:02:00+08:00")

    @settings(deadline=None)  # wall-clock limits flake on a busy CI runner
    @given(raw_tasks(), st.data())
    def test_matches_the_rules_for_any_rendering(self, raw: dict[str, Any], data: st.DataObject) -> None:
        """Whatever rendering it accepts, it normalises exactly as `task` does the parsed record."""
        assert_agrees(orjson.dumps(data.draw(renderings(raw))))

    @settings(deadline=None)  # wall-clock limits flake on a busy CI runner
    @given(raw_tasks())
    def test_takes_the_usual_shape(self, raw: dict[str, Any]) -> None:
        """A record of the API's usual shape without unknown fields never needs parsing."""
        usual = {k: v for k, v in raw.items() if k in TASK.fields}
        assert normalise.encoded_task(orjson.dumps(usual)) is not None

    @settings(deadline=None, max_examples=300)
    @given(st.one_of(garbled_tasks(), hostile_tasks(), hostile_values))
    def test_never_raises(self, raw: Any) -> None:
        """Any bytes of any value: declined, or the very result of the rules."""
        assert_agrees(digest.json_bytes(raw, sort_keys=False))
