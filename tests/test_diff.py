"""Tests for poller.diff: the docs/design.md §4 event table, one case per row, plus properties."""

from __future__ import annotations

import copy
import dataclasses
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poller import diff, normalise
from poller.events import TaskEvent
from poller.models import BEIJING, NormalisedTask, Snapshot
from tests.strategies import mutation_steps, raw_tasks, renderings
from tests.test_normalise import VENDOR_RECORD

OBSERVED_AT = datetime(2020, 12, 9, 7, 5, tzinfo=UTC)

# A task as it typically looks before a change: awaiting feedback, one receiver, no feedback.
BEFORE: dict[str, Any] = {
    **copy.deepcopy(VENDOR_RECORD),
    "task_status": "0",
    "feedback_detail": [],
    "latest_feedback_content": "",
    "latest_feedback_time": "",
    "modify_time": "2020-12-09 15:02",
}
FEEDBACK_1 = {"feedback_content": "第一次反馈", "feedback_visit_id": "6881395042783735132",
              "feedback_time": "2020-12-09 16:00"}
FEEDBACK_2 = {"feedback_content": "第二次反馈", "feedback_visit_id": "6881395042783735133",
              "feedback_time": "2020-12-10 09:30"}
LM = {"name": "lm", "id": "4622857986008792650"}
ZHANG = {"name": "张三", "id": "4622857986008792651"}


def after(**changes: Any) -> dict[str, Any]:
    """BEFORE with some fields replaced and a later modify_time, as the API returns a change."""
    raw = copy.deepcopy(BEFORE)
    raw["modify_time"] = "2020-12-10 10:00"
    raw.update(changes)
    return raw


def stored(raw: dict[str, Any], version: int = 3) -> Snapshot:
    """The snapshot the store holds for `raw`."""
    return written(normalise.task(raw), version)


def written(task: NormalisedTask, version: int) -> Snapshot:
    """The snapshot a commit writes for an observed task at `version`."""
    return Snapshot(task.task_id, task.hash, task.document, version, task.modify_time)


def observe(before: dict[str, Any] | None, now: dict[str, Any]) -> diff.Observation:
    previous = stored(before) if before is not None else None
    return diff.observe(previous, normalise.task(now), observed_at=OBSERVED_AT, type_name="巡检")


def types(events: list[TaskEvent]) -> list[str]:
    return [event.type for event in events]


def normalised_feedback(entry: dict[str, Any]) -> dict[str, Any]:
    """A feedback entry in canonical form."""
    [canonical] = orjson.loads(normalise.task({"task_id": "x", "feedback_detail": [entry]}).document)[
        "feedback_detail"]
    return dict(canonical)


# One case per row of the docs/design.md §4 table: (before, after, expected event types, details).
ROWS = [
    pytest.param(BEFORE, after(task_content="任务内容（已修改）"), ["TaskUpdated"],
                 {"changes": {"task_content": {"before": "任务内容",
                                               "after": "任务内容（已修改）"}}},
                 id="TaskUpdated-content-edited"),
    pytest.param(BEFORE, after(task_type_id="10002"), ["TaskUpdated"],
                 {"changes": {"task_type_id": {"before": "10001", "after": "10002"}}},
                 id="TaskUpdated-type-changed"),
    pytest.param(BEFORE, after(customer_id="7269195022934925566"), ["TaskUpdated"],
                 {"changes": {"customer_id": {"before": "7269195022934925565",
                                              "after": "7269195022934925566"}}},
                 id="TaskUpdated-customer-changed"),
    pytest.param(BEFORE, after(execute_demand="2"), ["TaskUpdated"],
                 {"changes": {"execute_demand": {"before": 1, "after": 2}}},
                 id="TaskUpdated-execute-demand-1-to-2"),
    pytest.param(BEFORE, after(task_source_id="10002", task_source_name="任务来源2"),
                 ["TaskUpdated"],
                 {"changes": {"task_source_id": {"before": "10001", "after": "10002"},
                              "task_source_name": {"before": "任务来源1", "after": "任务来源2"}}},
                 id="TaskUpdated-source-changed"),
    pytest.param(BEFORE, after(achievement="完成率 80%"), ["TaskUpdated"],
                 {"changes": {"achievement": {"before": None, "after": "完成率 80%"}}},
                 id="TaskUpdated-achievement-added"),
    pytest.param(BEFORE, after(visit_implement_id="10002"), ["TaskUpdated"],
                 {"changes": {"visit_implement_id": {"before": "10001", "after": "10002"}}},
                 id="TaskUpdated-visit-id-changed"),
    pytest.param(BEFORE, after(x_region="华东"), ["TaskUpdated"],
                 {"changes": {"x_region": {"before": None, "after": "华东"}}},
                 id="TaskUpdated-unknown-field-appeared"),
    pytest.param(BEFORE, after(receivers=[LM, ZHANG]), ["TaskReassigned"],
                 {"added": ({"id": ZHANG["id"], "name": "张三"},), "removed": ()},
                 id="TaskReassigned-receiver-added"),
    pytest.param(after(receivers=[LM, ZHANG]), after(receivers=[ZHANG]), ["TaskReassigned"],
                 {"added": (), "removed": ({"id": LM["id"], "name": "lm"},)},
                 id="TaskReassigned-receiver-removed"),
    pytest.param(BEFORE, after(receivers=[ZHANG]), ["TaskReassigned"],
                 {"added": ({"id": ZHANG["id"], "name": "张三"},),
                  "removed": ({"id": LM["id"], "name": "lm"},)},
                 id="TaskReassigned-handed-over"),
    pytest.param(BEFORE, after(receivers=[{"name": "林明", "id": LM["id"]}]), ["TaskUpdated"],
                 {"changes": {"receivers": {"before": [{"id": LM["id"], "name": "lm"}],
                                            "after": [{"id": LM["id"], "name": "林明"}]}}},
                 id="TaskUpdated-receiver-renamed-same-id"),
    pytest.param(after(feedback_detail=[FEEDBACK_1, FEEDBACK_2]), after(feedback_detail=[FEEDBACK_2]),
                 ["TaskUpdated"], {"changes": {"feedback_detail": {
                     "before": [normalised_feedback(FEEDBACK_1), normalised_feedback(FEEDBACK_2)],
                     "after": [normalised_feedback(FEEDBACK_2)]}}},
                 id="TaskUpdated-feedback-entry-removed"),
    pytest.param(BEFORE, after(feedback_deadline="2020-11-30 18:00"), ["TaskDeadlineChanged"],
                 {"before": datetime(2020, 11, 25, 10, 10, tzinfo=BEIJING),
                  "after": datetime(2020, 11, 30, 18, 0, tzinfo=BEIJING)},
                 id="TaskDeadlineChanged-moved"),
    pytest.param(BEFORE, after(feedback_deadline=""), ["TaskDeadlineChanged"],
                 {"before": datetime(2020, 11, 25, 10, 10, tzinfo=BEIJING), "after": None},
                 id="TaskDeadlineChanged-cleared"),
    pytest.param(BEFORE, after(feedback_detail=[FEEDBACK_1], latest_feedback_content="第一次反馈",
                               latest_feedback_time="2020-12-09 16:00"),
                 ["FeedbackAdded"], {}, id="FeedbackAdded-one"),
    pytest.param(BEFORE, after(feedback_detail=[FEEDBACK_2, FEEDBACK_1]),
                 ["FeedbackAdded", "FeedbackAdded"], {}, id="FeedbackAdded-two-oldest-first"),
    pytest.param(after(feedback_detail=[FEEDBACK_1]),
                 after(feedback_detail=[FEEDBACK_1, FEEDBACK_2]),
                 ["FeedbackAdded"], {}, id="FeedbackAdded-only-the-new-one"),
    pytest.param(BEFORE, after(task_status="1"), ["TaskFeedbackSubmitted"],
                 {"from_status": 0, "to_status": 1}, id="TaskFeedbackSubmitted-0-to-1"),
    pytest.param(after(task_status="1"), after(task_status=2), ["TaskAccepted"],
                 {"from_status": 1, "to_status": 2}, id="TaskAccepted-1-to-2"),
    pytest.param(after(task_status="1"), after(task_status="3"), ["TaskRejected"],
                 {"from_status": 1, "to_status": 3}, id="TaskRejected-1-to-3"),
    pytest.param(after(task_status="3"), after(task_status="0"), ["TaskReopened"],
                 {"from_status": 3, "to_status": 0}, id="TaskReopened-3-to-0"),
    pytest.param(BEFORE, after(status=0), ["TaskDeleted"], {}, id="TaskDeleted-1-to-0"),
    pytest.param(after(status="0"), after(status=1), ["TaskRestored"], {},
                 id="TaskRestored-0-to-1"),
    pytest.param(
        BEFORE,
        after(task_content="新内容", receivers=[ZHANG], feedback_deadline="2020-12-01 10:00",
              feedback_detail=[FEEDBACK_2, FEEDBACK_1], task_status="1", status=0),
        ["TaskUpdated", "TaskReassigned", "TaskDeadlineChanged", "FeedbackAdded",
         "FeedbackAdded", "TaskFeedbackSubmitted", "TaskDeleted"],
        {}, id="all-rows-at-once-in-table-order"),
]


class TestTable:
    @pytest.mark.parametrize(("before", "now", "expected", "details"), ROWS)
    def test_row(self, before: dict[str, Any], now: dict[str, Any], expected: list[str],
                 details: dict[str, Any]) -> None:
        """Each row of the §4 table yields exactly its event(s), with its details."""
        result = observe(before, now)
        assert types(result.events) == expected
        first = result.events[0].model_dump()
        for key, value in details.items():
            assert first[key] == value
        assert result.version == 4

    def test_feedback_oldest_first(self) -> None:
        """Several new feedback entries come out oldest first, each carrying its entry."""
        result = observe(BEFORE, after(feedback_detail=[FEEDBACK_2, FEEDBACK_1]))
        contents = [event.model_dump()["feedback"]["feedback_content"] for event in result.events]
        assert contents == ["第一次反馈", "第二次反馈"]

    def test_envelope(self) -> None:
        """Every event carries task_id, modify_time (+08:00), the type name and the task after."""
        result = observe(BEFORE, after(task_status="1", feedback_detail=[FEEDBACK_1]))
        for event in result.events:
            assert event.task_id == "10001"
            assert event.modify_time == datetime(2020, 12, 10, 10, 0, tzinfo=BEIJING)
            assert event.modify_time.utcoffset() == BEIJING.utcoffset(None)
            assert event.observed_at == OBSERVED_AT
            assert event.task_type_name == "巡检"
            assert event.task.task_status == 1 and len(event.task.feedback_detail) == 1
            assert event.sequence == 4

    def test_unknown_status_codes_are_updates(self) -> None:
        """A task_status or status outside the documented codes is reported as a field change."""
        result = observe(BEFORE, after(task_status="5", status="2"))
        assert types(result.events) == ["TaskUpdated"]
        assert result.events[0].model_dump()["changes"] == {
            "status": {"before": 1, "after": 2}, "task_status": {"before": 0, "after": 5},
        }


class TestCreation:
    @pytest.mark.parametrize(("raw", "expected"), [
        pytest.param(BEFORE, ["TaskCreated"], id="fresh-task"),
        pytest.param(VENDOR_RECORD, ["TaskCreated", "FeedbackAdded", "TaskFeedbackSubmitted"],
                     id="first-seen-with-feedback-given"),
        pytest.param(after(task_status="2", feedback_detail=[FEEDBACK_1, FEEDBACK_2]),
                     ["TaskCreated", "FeedbackAdded", "FeedbackAdded", "TaskAccepted"],
                     id="first-seen-accepted"),
        pytest.param(after(status="0"), ["TaskCreated", "TaskDeleted"], id="first-seen-deleted"),
    ])
    def test_created(self, raw: dict[str, Any], expected: list[str]) -> None:
        """A new task yields TaskCreated, then the rest as if it had no feedback, status 0/1."""
        result = observe(None, raw)
        assert types(result.events) == expected
        assert result.version == 1
        assert all(event.sequence == 1 for event in result.events)

    def test_status_event_from_zero(self) -> None:
        """The status event of a new task says it came from 0 (awaiting feedback)."""
        event = observe(None, VENDOR_RECORD).events[-1].model_dump()
        assert (event["from_status"], event["to_status"]) == (0, 1)

    def test_baseline_is_silent(self) -> None:
        """silent=True records a new task at version 0 without events."""
        result = diff.observe(None, normalise.task(VENDOR_RECORD), observed_at=OBSERVED_AT,
                              silent=True)
        assert result.events == []
        assert result.version == 0


class TestSilent:
    @pytest.mark.parametrize("now", [
        pytest.param(after(), id="modify-time-alone"),
        pytest.param(after(latest_feedback_content="催办", latest_feedback_time="2020-12-10 09:00"),
                     id="latest-feedback-alone"),
    ])
    def test_rewritten_without_events(self, now: dict[str, Any]) -> None:
        """A change that is not news rewrites the snapshot at the same version, no events."""
        result = observe(BEFORE, now)
        assert result.events == []
        assert result.version == 3

    def test_unchanged_hash(self) -> None:
        """The same hash yields no events and nothing to write."""
        assert observe(BEFORE, copy.deepcopy(BEFORE)) is diff.UNCHANGED

    def test_old_representation_does_not_flood(self) -> None:
        """A snapshot stored under older rules (other time and number forms) yields no events."""
        old_rules = orjson.dumps({**BEFORE, "receivers": [LM], "feedback_detail": []})
        previous = Snapshot(task_id="10001", hash="hash-of-normalisation-v0", document=old_rules,
                            version=3, modify_time=None)
        result = diff.observe(previous, normalise.task(BEFORE), observed_at=OBSERVED_AT)
        assert result.events == []
        assert result.version == 3

    def test_new_normalisation_version_does_not_flood(self) -> None:
        """A hash that differs only because the rules changed yields no events."""
        previous = dataclasses.replace(stored(VENDOR_RECORD), hash="hash-of-normalisation-v0")
        result = diff.observe(previous, normalise.task(VENDOR_RECORD), observed_at=OBSERVED_AT)
        assert result.events == []
        assert result.version == 3


class TestIds:
    def test_deterministic(self) -> None:
        """Observing the same change twice gives the same event ids."""
        now = after(task_status="1", feedback_detail=[FEEDBACK_1], task_content="x")
        first = [event.id for event in observe(BEFORE, now).events]
        assert first == [event.id for event in observe(BEFORE, now).events]
        assert len(set(first)) == len(first)

    def test_feedback_entries_of_one_observation_differ(self) -> None:
        """Two feedback entries added at once get two ids."""
        first, second = observe(BEFORE, after(feedback_detail=[FEEDBACK_1, FEEDBACK_2])).events
        assert first.type == second.type == "FeedbackAdded" and first.id != second.id

    def test_different_states_differ(self) -> None:
        """Two different updates of a task get different ids."""
        one = observe(BEFORE, after(task_content="a")).events[0]
        other = observe(BEFORE, after(task_content="b")).events[0]
        assert one.id != other.id

    def test_a_task_changing_back_and_forth_never_reuses_an_id(self) -> None:
        """A→B→A→B (a receiver added, removed, added again) gives three changes three ids: the
        version each observation gives the task is part of the id."""
        a, b = BEFORE, after(receivers=[LM, {"id": "u-9", "name": "周九"}])
        snapshot = stored(a, version=0)
        ids: list[str] = []
        for raw in (b, a, b):
            task = normalise.task(raw)
            result = diff.observe(snapshot, task, observed_at=OBSERVED_AT)
            ids.extend(event.id for event in result.events)
            assert result.version is not None
            snapshot = written(task, result.version)
        assert len(ids) == 3 and len(set(ids)) == 3


class TestObserveType:
    def type_snapshot(self, **raw: Any) -> Any:
        return normalise.task_type({"type_id": "10001", "type_name": "巡检", **raw})

    def test_first_sight_silent(self) -> None:
        """The first sight of a type is recorded without an event."""
        events, stored_type = diff.observe_type(None, self.type_snapshot(), observed_at=OBSERVED_AT)
        assert events == [] and stored_type is not None and stored_type.version == 0

    def test_unchanged(self) -> None:
        """A type re-read unchanged yields nothing."""
        snap = self.type_snapshot()
        assert diff.observe_type(snap, self.type_snapshot(), observed_at=OBSERVED_AT) == ([], None)

    def test_renamed(self) -> None:
        """A renamed type yields TaskTypeChanged with the change and the full type."""
        [event], stored_type = diff.observe_type(
            dataclasses.replace(self.type_snapshot(), version=2), self.type_snapshot(type_name="巡店"),
            observed_at=OBSERVED_AT)
        assert stored_type is not None and stored_type.version == 3
        assert event.type_id == "10001"
        assert event.changes["type_name"].model_dump() == {"before": "巡检", "after": "巡店"}
        assert event.task_type.type_name == "巡店"

    def test_normalisation_only(self) -> None:
        """A type whose hash changed only through normalisation yields nothing."""
        previous = dataclasses.replace(self.type_snapshot(), hash="old", version=2)
        events, stored_type = diff.observe_type(previous, self.type_snapshot(), observed_at=OBSERVED_AT)
        assert events == [] and stored_type is not None and stored_type.version == 2

    def test_renamed_back_and_forth_never_reuses_an_id(self) -> None:
        """A type renamed A→B→A→B gets three ids: its own version is part of each."""
        current = self.type_snapshot()
        ids = []
        for name in ("巡店", "巡检", "巡店"):
            [event], stored_type = diff.observe_type(current, self.type_snapshot(type_name=name),
                                                     observed_at=OBSERVED_AT)
            assert stored_type is not None
            ids.append(event.id)
            current = stored_type
        assert len(set(ids)) == 3


class TestProperties:
    @settings(deadline=None)  # wall-clock limits flake on a busy CI runner
    @given(raw_tasks(), st.data())
    def test_diff_of_itself_is_empty(self, raw: dict[str, Any], data: st.DataObject) -> None:
        """A task observed again, however rendered, yields nothing and writes nothing."""
        previous = stored(raw)
        again = normalise.task(data.draw(renderings(raw)))
        assert diff.observe(previous, again, observed_at=OBSERVED_AT) is diff.UNCHANGED

    @settings(max_examples=50, deadline=None)
    @given(raw_tasks(), st.data())
    def test_replayed_mutations(self, raw: dict[str, Any], data: st.DataObject) -> None:
        """A random life of a task yields the expected events, in order, with sequence +1 each."""
        snapshot = stored(raw, version=0)
        for _ in range(data.draw(st.integers(1, 6))):
            raw, expected = data.draw(mutation_steps(raw))
            task = normalise.task(raw)
            result = diff.observe(snapshot, task, observed_at=OBSERVED_AT)
            assert types(result.events) == expected
            assert result.version == snapshot.version + (1 if expected else 0)
            assert all(event.sequence == result.version for event in result.events)
            snapshot = written(task, result.version)

    @settings(deadline=None)  # wall-clock limits flake on a busy CI runner
    @given(raw_tasks())
    def test_ids_deterministic(self, raw: dict[str, Any]) -> None:
        """Replaying an observation gives the same events with the same ids."""
        task = normalise.task(raw)
        one = diff.observe(None, task, observed_at=OBSERVED_AT)
        other = diff.observe(None, task, observed_at=OBSERVED_AT)
        assert one.events == other.events
        assert len({event.id for event in one.events}) == len(one.events)
