"""Tests for poller.normalise: canonical documents, hashes, malformed records."""

from __future__ import annotations

import copy
import gc
import tracemalloc
from datetime import datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poller import normalise
from poller.errors import NormaliseError
from poller.models import BEIJING, Task
from poller.normalise import fast
from tests.strategies import (
    garbled_tasks,
    hostile_tasks,
    hostile_values,
    nested,
    raw_tasks,
    renderings,
    rerendered,
)

# The queryTask item of the vendor documentation.
VENDOR_RECORD: dict[str, Any] = {
    "status": 1, "task_status": "1", "create_time": "2020-11-19 10:33", "execute_demand": "1",
    "feedback_deadline": "2020-11-25 10:10", "modify_time": "2020-12-09 15:02",
    "latest_feedback_content": "…", "task_id": "10001", "task_source_name": "任务来源1",
    "task_source_id": "10001", "visit_implement_id": "10001",
    "latest_feedback_time": "2020-11-19 10:33", "task_type_id": "10001",
    "receivers": [{"name": "lm", "id": "4622857986008792650"}],
    "creator": {"name": "lm", "id": "4622857986008792650"}, "task_content": "任务内容",
    "customer_id": "7269195022934925565",
    "feedback_detail": [{"feedback_content": "第一次反馈",
                         "feedback_visit_id": "6881395042783735132",
                         "feedback_time": "2023-04-28 11:21"}],
}


def record(**changes: Any) -> dict[str, Any]:
    """The vendor record with some fields replaced."""
    raw = copy.deepcopy(VENDOR_RECORD)
    raw.update(changes)
    return raw


def document(raw: object) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(normalise.task(raw).document)
    return result


class TestTask:
    def test_vendor_record(self) -> None:
        """The vendor's example record normalises to the documented canonical form."""
        result = normalise.task(VENDOR_RECORD)
        doc = orjson.loads(result.document)
        assert result.task_id == "10001"
        assert result.type_id == "10001"
        assert result.modify_time == datetime(2020, 12, 9, 15, 2, tzinfo=BEIJING)
        assert doc["task_status"] == 1 and doc["execute_demand"] == 1 and doc["status"] == 1
        assert doc["create_time"] == "2020-11-19T10:33:00+08:00"
        assert doc["feedback_detail"][0]["feedback_time"] == "2023-04-28T11:21:00+08:00"
        assert list(doc) == sorted(doc)

    def test_document_is_utf8_with_non_ascii_kept(self) -> None:
        """The canonical document keeps Chinese text as UTF-8, not \\u escapes."""
        assert "任务内容".encode() in normalise.task(VENDOR_RECORD).document

    def test_seconds_accepted(self) -> None:
        """A time with seconds is read too, and ':00' seconds mean the same minute."""
        assert normalise.task(record(modify_time="2020-12-09 15:02:00")).hash == \
            normalise.task(VENDOR_RECORD).hash
        assert document(record(modify_time="2020-12-09 15:02:07"))["modify_time"] == \
            "2020-12-09T15:02:07+08:00"

    def test_empty_strings_are_absent(self) -> None:
        """Empty strings and nulls are dropped, so they hash like a missing field."""
        plain = normalise.task(VENDOR_RECORD)
        assert normalise.task(record(achievement="", x_other=None)).hash == plain.hash
        without = record()
        del without["latest_feedback_content"]
        assert normalise.task(record(latest_feedback_content="")).hash == \
            normalise.task(without).hash

    def test_receivers_are_a_set_by_id(self) -> None:
        """Receivers are sorted by id and duplicates merged."""
        doc = document(record(receivers=[
            {"id": "2", "name": "b"}, {"id": 1, "name": "a"}, {"name": "b", "id": "2"},
        ]))
        assert doc["receivers"] == [{"id": "1", "name": "a"}, {"id": "2", "name": "b"}]

    def test_feedback_is_a_set_sorted_oldest_first(self) -> None:
        """Feedback entries are sorted by time and duplicates merged."""
        late = {"feedback_content": "二", "feedback_visit_id": "2",
                "feedback_time": "2023-05-01 09:00"}
        early = {"feedback_content": "一", "feedback_visit_id": "1",
                 "feedback_time": "2023-04-28 11:21"}
        doc = document(record(feedback_detail=[late, early, dict(late)]))
        assert [f["feedback_visit_id"] for f in doc["feedback_detail"]] == ["1", "2"]

    def test_unknown_fields_kept_and_normalised(self) -> None:
        """Unknown fields reach the document, normalised recursively (numbers as strings)."""
        doc = document(record(x_extra={"b": 2, "a": "", "c": [1, "", None]}, x_flag=True))
        assert doc["x_extra"] == {"b": "2", "c": ["1"]}
        assert doc["x_flag"] is True

    def test_hash_carries_the_normalisation_version(self) -> None:
        """The hash covers the version, so a rule change re-baselines every task."""
        result = normalise.task(VENDOR_RECORD)
        assert result.hash == normalise.content_hash(result.document)
        assert normalise.NORMALISATION_VERSION >= 1
        import xxhash
        assert result.hash != xxhash.xxh3_128_hexdigest(result.document)

    def test_to_task(self) -> None:
        """The canonical document reads back as the typed Task model."""
        task = normalise.to_task(normalise.task(VENDOR_RECORD).document)
        assert isinstance(task, Task)
        assert task.task_status == 1
        assert task.receivers[0].id == "4622857986008792650"
        assert task.feedback_deadline == datetime(2020, 11, 25, 10, 10, tzinfo=BEIJING)

    def test_same_result_every_time(self) -> None:
        """Normalising the same record twice gives equal results (nothing is remembered)."""
        assert normalise.task(VENDOR_RECORD) == normalise.task(copy.deepcopy(VENDOR_RECORD))

    def test_memory_stays_flat(self) -> None:
        """Normalising thousands of distinct records retains nothing (no memo, no time cache)."""
        records = [record(task_id=str(n), modify_time=f"2020-12-{1 + n % 28:02d} {n % 24:02d}:{n % 60:02d}",
                          task_content=f"内容{n}") for n in range(5000)]
        normalise.task(records[0])  # the first call may allocate for good (imports, tables)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for raw in records:
                normalise.task(raw)
            gc.collect()
            retained = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert retained < 64 * 1024, f"{retained:,} bytes retained after 5,000 records"

    def test_numbers_beyond_python_str_guard(self) -> None:
        """Integers too long for str() (4,300 digits) are still decimal strings in text and unknown fields."""
        doc = document(record(task_type_id=10**5000, x_big=-(10**4400)))
        assert doc["task_type_id"] == "1" + "0" * 5000
        assert doc["x_big"] == "-1" + "0" * 4400


MALFORMED = [
    pytest.param(["not", "an", "object"], "not a JSON object but a list", None, id="list"),
    pytest.param("text", "not a JSON object but a string", None, id="string"),
    pytest.param(record(task_id=""), "no non-empty task_id", None, id="empty-task-id"),
    pytest.param({"task_content": "x"}, "no non-empty task_id", None, id="missing-task-id"),
    pytest.param(record(receivers={"id": "1"}), "receivers must be a list of objects", "10001",
                 id="receivers-object"),
    pytest.param(record(receivers=["1"]), r"receivers\[0\] must be an object", "10001",
                 id="receivers-of-strings"),
    pytest.param(record(receivers=[{"name": "x"}]), r"receivers\[0\] has no id", "10001",
                 id="receiver-without-id"),
    pytest.param(record(feedback_detail="第一次反馈"), "feedback_detail must be a list of objects",
                 "10001", id="feedback-string"),
    pytest.param(record(feedback_detail=[[1]]), r"feedback_detail\[0\] must be an object",
                 "10001", id="feedback-of-lists"),
    pytest.param(record(creator="lm"), "creator must be an object", "10001", id="creator-string"),
    pytest.param(record(modify_time="2020-13-45 99:99"), "modify_time is not a time", "10001",
                 id="bad-time"),
    pytest.param(record(create_time="yesterday"), "create_time is not a time", "10001",
                 id="words-time"),
    pytest.param(record(feedback_deadline=1606270200), "feedback_deadline must be a time string",
                 "10001", id="epoch-time"),
    pytest.param(record(feedback_detail=[{"feedback_time": "2023/04/28 11:21"}]),
                 r"feedback_detail\[0\]\.feedback_time is not a time", "10001",
                 id="feedback-bad-time"),
    pytest.param(record(task_status="done"), "task_status must be an integer", "10001",
                 id="status-word"),
    pytest.param(record(status=[1]), "status must be an integer", "10001", id="status-list"),
    pytest.param(record(status=2**70), "status must be a 64-bit integer", "10001",
                 id="status-beyond-64-bits"),
    pytest.param(record(task_content={"a": 1}), "task_content must be a string", "10001",
                 id="content-object"),
    # Each of these once escaped as another exception and stopped the stream (issue 10, item 3).
    pytest.param(record(x_unknown=nested(600, 1, as_objects=False)), "x_unknown nests deeper than 64",
                 "10001", id="unknown-field-600-deep"),
    pytest.param(record(receivers=[{"id": "1", "x": nested(5000, "a", as_objects=True)}]),
                 r"receivers\[0\]\.x nests deeper than 64", "10001", id="receiver-field-5000-deep"),
    pytest.param(record(modify_time="9999-12-31T23:59:00-05:00"), "modify_time is out of range",
                 "10001", id="time-beyond-year-9999"),
    pytest.param(record(create_time="0001-01-01 07:59"), "create_time is out of range", "10001",
                 id="time-before-year-1-in-utc"),
    pytest.param(record(status="9" * 5000), "status must be an integer", "10001",
                 id="status-beyond-str-guard"),
    pytest.param(record(task_content="\ud800"), "holds a value JSON cannot carry", "10001",
                 id="lone-surrogate"),
]


# The metric label of each case (the rest are "bad_shape").
KINDS = {
    "list": "not_object", "string": "not_object", "empty-task-id": "no_id",
    "missing-task-id": "no_id", "bad-time": "bad_time", "words-time": "bad_time",
    "epoch-time": "bad_time", "feedback-bad-time": "bad_time", "status-word": "bad_number",
    "status-list": "bad_number", "status-beyond-64-bits": "bad_number",
    "unknown-field-600-deep": "too_deep", "receiver-field-5000-deep": "too_deep",
    "time-beyond-year-9999": "bad_time", "time-before-year-1-in-utc": "bad_time",
    "status-beyond-str-guard": "bad_number", "lone-surrogate": "bad_value",
}


class TestMalformed:
    @pytest.mark.parametrize(("raw", "reason", "task_id"), MALFORMED)
    def test_rejected_with_reason(
        self, raw: object, reason: str, task_id: str | None, request: pytest.FixtureRequest
    ) -> None:
        """A record normalisation cannot read raises NormaliseError naming what is wrong."""
        with pytest.raises(NormaliseError, match=reason) as caught:
            normalise.task(raw)
        assert caught.value.task_id == task_id
        assert caught.value.reason == str(caught.value)
        case = request.node.callspec.id
        assert caught.value.kind == KINDS.get(case, "bad_shape")


class TestProperties:
    @settings(deadline=None)  # wall-clock limits flake on a busy CI runner
    @given(raw_tasks(), st.data())
    def test_equivalent_renderings_hash_alike(
        self, raw: dict[str, Any], data: st.DataObject
    ) -> None:
        """Shuffled keys and lists, numbers vs strings, empties and duplicates: same hash."""
        other = data.draw(renderings(raw))
        assert normalise.task(other).document == normalise.task(raw).document
        assert normalise.task(other).hash == normalise.task(raw).hash

    @settings(deadline=None)  # wall-clock limits flake on a busy CI runner
    @given(raw_tasks())
    def test_idempotent(self, raw: dict[str, Any]) -> None:
        """Normalising a canonical document again gives the same document."""
        once = normalise.task(raw)
        assert normalise.task(orjson.loads(once.document)).document == once.document

    @settings(deadline=None)  # wall-clock limits flake on a busy CI runner
    @given(raw_tasks(), st.data())
    def test_fast_path_matches_general_rules(
        self, raw: dict[str, Any], data: st.DataObject
    ) -> None:
        """Whatever the fast path accepts, it normalises exactly as the general rules do."""
        other = data.draw(renderings(raw))
        quick = fast.document(other)
        general = normalise.general_document(other)
        if quick is not None:
            assert orjson.dumps(quick, option=orjson.OPT_SORT_KEYS) == \
                orjson.dumps(general, option=orjson.OPT_SORT_KEYS)

    @settings(deadline=None)  # wall-clock limits flake on a busy CI runner
    @given(raw_tasks())
    def test_fast_path_takes_the_usual_shape(self, raw: dict[str, Any]) -> None:
        """A record of the API's usual shape never needs the general rules."""
        assert fast.document(raw) is not None

    @settings(deadline=None)  # wall-clock limits flake on a busy CI runner
    @given(raw_tasks())
    def test_to_task_reads_every_document(self, raw: dict[str, Any]) -> None:
        """Every canonical document is a valid Task."""
        task = normalise.to_task(normalise.task(raw).document)
        assert task.task_id == raw["task_id"]


class TestGarbled:
    @settings(deadline=None, max_examples=300)
    @given(garbled_tasks())
    def test_only_normalise_errors(self, raw: dict[str, Any]) -> None:
        """Any JSON in any field either normalises (to a valid Task) or raises NormaliseError."""
        try:
            result = normalise.task(raw)
        except NormaliseError as exc:
            assert exc.reason and exc.kind
            return
        assert normalise.to_task(result.document).task_id == result.task_id
        quick = fast.document(raw)
        if quick is not None:
            assert orjson.dumps(quick, option=orjson.OPT_SORT_KEYS) == result.document


class TestHostile:
    @settings(deadline=None, max_examples=300)
    @given(st.one_of(hostile_values, hostile_tasks()))
    def test_only_normalise_errors(self, raw: Any) -> None:
        """Any JSON value, however deep, long or far in time, normalises or raises NormaliseError."""
        try:
            result = normalise.task(raw)
        except NormaliseError as exc:
            assert exc.reason and exc.kind
            assert exc.task_id == (normalise.task_id_of(raw) if exc.kind not in ("not_object", "no_id")
                                   else None)
        else:
            assert normalise.to_task(result.document).task_id == result.task_id

    @settings(deadline=None, max_examples=300)
    @given(st.one_of(hostile_values, hostile_tasks()))
    def test_hashes_never_raise(self, raw: Any) -> None:
        """The received hash, the fingerprint and the readable task_id exist for any JSON value."""
        assert -(2**63) <= normalise.received_hash(raw) < 2**63
        assert len(normalise.fingerprint(raw)) == 32
        task_id = normalise.task_id_of(raw)
        assert task_id is None or (type(task_id) is str and task_id)


class TestTaskType:
    def test_canonical(self) -> None:
        """A task type normalises with its id as a string and extras kept."""
        snap = normalise.task_type({"type_id": 10001, "type_name": "巡检", "sort": 3, "memo": ""})
        assert snap.type_id == "10001"
        assert orjson.loads(snap.document) == {"sort": "3", "type_id": "10001", "type_name": "巡检"}

    def test_renderings_hash_alike(self) -> None:
        """Key order and number drift do not change a type's hash."""
        one = normalise.task_type({"type_id": "7", "type_name": "a"})
        other = normalise.task_type({"type_name": "a", "type_id": 7, "extra": None})
        assert one.hash == other.hash

    @pytest.mark.parametrize(("raw", "reason"), [
        pytest.param([1], "not a JSON object", id="list"),
        pytest.param({"type_name": "a"}, "no non-empty type_id", id="no-id"),
        pytest.param({"type_id": "1", "type_name": {"zh": "a"}}, "type_name must be a string",
                     id="name-object"),
    ])
    def test_malformed(self, raw: object, reason: str) -> None:
        """An unreadable task type raises NormaliseError."""
        with pytest.raises(NormaliseError, match=reason):
            normalise.task_type(raw)


class TestFingerprint:
    def test_stable(self) -> None:
        """The same bad record gives the same fingerprint, whatever its key order."""
        bad = {"task_id": "1", "receivers": "x"}
        same = {"receivers": "x", "task_id": "1"}
        other = {"task_id": "1", "receivers": "y"}
        assert normalise.fingerprint(bad) == normalise.fingerprint(same)
        assert normalise.fingerprint(bad) != normalise.fingerprint(other)

    def test_any_json_value(self) -> None:
        """Non-object records have fingerprints too."""
        assert normalise.fingerprint([1, 2]) != normalise.fingerprint("[1, 2]")
        assert len(normalise.fingerprint(None)) == 32
        assert normalise.fingerprint(nested(5000, 1, as_objects=False)) != \
            normalise.fingerprint(nested(5000, 2, as_objects=False))

    def test_rerendered_bad_record_keeps_its_fingerprint(self) -> None:
        """Number vs string, key order and "" vs missing do not make a bad record new (issue 10, item 7)."""
        bad = {"task_id": "1", "receivers": "x", "status": 1, "x_extra": {"n": 2, "m": ""}}
        again = {"x_extra": {"n": "2"}, "status": "1", "achievement": "", "receivers": "x", "task_id": 1}
        assert normalise.fingerprint(bad) == normalise.fingerprint(again)

    def test_sets_stay_sets(self) -> None:
        """The order of a set field does not change the fingerprint, even when its members are bad."""
        one = {"task_id": "1", "receivers": [{"id": "2"}, {"name": "no id"}, "x"]}
        other = {"task_id": "1", "receivers": ["x", {"name": "no id"}, {"id": 2}]}
        assert normalise.fingerprint(one) == normalise.fingerprint(other)

    def test_well_formed_record(self) -> None:
        """A record that normalises has the fingerprint of its canonical document."""
        rendered = record(status="1", receivers=[*VENDOR_RECORD["receivers"], *VENDOR_RECORD["receivers"]])
        assert normalise.fingerprint(VENDOR_RECORD) == normalise.fingerprint(rendered)
        assert normalise.fingerprint(VENDOR_RECORD) == \
            normalise.fingerprint(orjson.loads(normalise.task(VENDOR_RECORD).document))

    @settings(deadline=None, max_examples=200)
    @given(st.one_of(hostile_tasks(), garbled_tasks(), hostile_values), st.data())
    def test_renderings_share_a_fingerprint(self, raw: Any, data: st.DataObject) -> None:
        """Any record, malformed or not, re-rendered the way the API drifts keeps its fingerprint."""
        assert normalise.fingerprint(data.draw(rerendered(raw))) == normalise.fingerprint(raw)


class TestReceivedHash:
    def test_signed_64_bit(self) -> None:
        """The hash fits a signed 64-bit column (SQLite INTEGER, PostgreSQL BIGINT)."""
        hashes = [normalise.received_hash(record(task_id=str(n))) for n in range(200)]
        assert all(-(2**63) <= h < 2**63 for h in hashes)
        assert any(h < 0 for h in hashes) and len(set(hashes)) == 200

    def test_exactly_as_received(self) -> None:
        """The same bytes hash alike; another key order or number rendering is another rendering."""
        shuffled = dict(reversed(list(VENDOR_RECORD.items())))
        assert normalise.received_hash(VENDOR_RECORD) == normalise.received_hash(copy.deepcopy(VENDOR_RECORD))
        assert normalise.received_hash(shuffled) != normalise.received_hash(VENDOR_RECORD)
        assert normalise.received_hash(record(status="1")) != normalise.received_hash(VENDOR_RECORD)

    def test_seeded_with_the_normalisation_version(self) -> None:
        """The hash depends on the rules' version, so a rules change makes every rendering new."""
        import xxhash
        unseeded = xxhash.xxh3_64_intdigest(orjson.dumps(VENDOR_RECORD))
        assert normalise.received_hash(VENDOR_RECORD) % 2**64 != unseeded

    def test_values_orjson_refuses(self) -> None:
        """Nesting past orjson's limit, huge integers and lone surrogates still hash, and differ."""
        values = [nested(3000, 1, as_objects=True), nested(3000, 2, as_objects=True), 2**70, 2**71,
                  10**5000, "\ud800", "\ud801"]
        assert len({normalise.received_hash(value) for value in values}) == len(values)


class TestTaskIdOf:
    @pytest.mark.parametrize(("raw", "expected"), [
        pytest.param(VENDOR_RECORD, "10001", id="string"),
        pytest.param({"task_id": 10001}, "10001", id="number"),
        pytest.param({"task_id": 10001.0}, "10001", id="whole-float"),
        pytest.param({"task_id": 10**5000}, "1" + "0" * 5000, id="beyond-str-guard"),
        pytest.param({"task_id": ""}, None, id="empty"),
        pytest.param({"task_id": True}, None, id="boolean"),
        pytest.param({"task_id": {"id": 1}}, None, id="object"),
        pytest.param({"receivers": "x"}, None, id="missing"),
        pytest.param([{"task_id": "1"}], None, id="not-an-object"),
    ])
    def test_readable_task_id(self, raw: object, expected: str | None) -> None:
        """The task_id of any record, malformed or not, by the same rule as task(); None if unreadable."""
        assert normalise.task_id_of(raw) == expected

