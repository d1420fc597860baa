"""Tests for poller.schemas: the checked-in contract matches the code and the wire."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import jsonschema
import orjson
import pytest
import yaml

from poller import diff, events, normalise, schemas
from poller.models import OutboundRecord
from tests.test_diff import BEFORE, FEEDBACK_1, FEEDBACK_2, ZHANG, after, stored
from tests.test_normalise import VENDOR_RECORD

OBSERVED_AT = datetime(2020, 12, 9, 7, 5, tzinfo=UTC)
REGENERATE = "schemas drifted from poller/events.py: run `python -m poller.schemas` and commit"


def sample_records() -> list[OutboundRecord]:
    """At least one record of every published payload."""
    everything = after(task_content="新内容", receivers=[ZHANG], feedback_deadline="",
                       feedback_detail=[FEEDBACK_2, FEEDBACK_1], task_status="1", status=0)
    observations = [
        diff.observe(None, normalise.task(VENDOR_RECORD), observed_at=OBSERVED_AT),
        diff.observe(stored(BEFORE), normalise.task(everything), observed_at=OBSERVED_AT),
    ]
    for before, now in (("1", "2"), ("1", "3"), ("3", "0")):
        observations.append(diff.observe(
            stored(after(task_status=before)), normalise.task(after(task_status=now, status="0")),
            observed_at=OBSERVED_AT,
        ))
    observations.append(diff.observe(stored(after(status="0")), normalise.task(after()),
                                     observed_at=OBSERVED_AT))
    observations.append(diff.vanished(stored(BEFORE), observed_at=OBSERVED_AT, type_name="巡检"))
    records = [events.encode(event, source="test") for obs in observations for event in obs.events]
    records += [events.state_record(obs.events[0], source="test") for obs in observations]
    [type_event], _ = diff.observe_type(
        normalise.task_type({"type_id": "1", "type_name": "a"}),
        normalise.task_type({"type_id": "1", "type_name": "b"}), observed_at=OBSERVED_AT)
    records.append(events.encode(type_event, source="test"))
    records.append(events.dead_letter(
        {"task_id": "1", "receivers": "x"}, reason="bad", task_id="1",
        window={"modify_date_from": "2020-12-09", "modify_date_to": None}, page=1,
        source="test", observed_at=OBSERVED_AT))
    # Cut to fit: `truncated` is part of the contract too, and a collapsed raw is a string.
    long_text = "门店陈列检查记录" * 20_000
    [cut_event, *_] = diff.observe(None, normalise.task({**VENDOR_RECORD, "task_content": long_text}),
                                   observed_at=OBSERVED_AT).events
    records.append(events.encode(cut_event, source="test", max_bytes=20_000))
    records.append(events.state_record(cut_event, source="test", max_bytes=20_000))
    records.append(events.dead_letter(
        {"task_id": "1", "receivers": [{"id": str(n)} for n in range(5000)]}, reason="bad",
        task_id="1", window={"modify_date_from": None, "modify_date_to": None}, page=1,
        source="test", observed_at=OBSERVED_AT, max_bytes=20_000))
    assert all(b'"truncated"' in record.value for record in records[-3:])
    return records


def tombstone() -> OutboundRecord:
    """The state-topic tombstone of a vanished task."""
    [event] = diff.vanished(stored(BEFORE), observed_at=OBSERVED_AT).events
    assert isinstance(event, events.TaskVanished)
    return events.state_tombstone(event, source="test")


class TestCheckedIn:
    def test_files_match_the_code(self) -> None:
        """Every checked-in schema file equals what the models generate now."""
        for name, text in schemas.generate().items():
            path = schemas.HERE / name
            assert path.exists(), f"{name} missing; {REGENERATE}"
            assert path.read_text(encoding="utf-8") == text, f"{name}: {REGENERATE}"

    def test_no_stale_files(self) -> None:
        """No schema file is left over from an event that no longer exists."""
        generated = set(schemas.generate())
        on_disk = {p.name for p in schemas.HERE.iterdir() if p.suffix in {".json", ".yaml"}}
        assert on_disk == generated, REGENERATE


class TestJsonSchemas:
    @pytest.mark.parametrize("model", schemas.PAYLOADS, ids=lambda m: m.__name__)
    def test_valid_schema(self, model: type[Any]) -> None:
        """Each event schema is a valid JSON Schema 2020-12 document."""
        jsonschema.Draft202012Validator.check_schema(schemas.json_schema(model))

    def test_wire_payloads_validate(self) -> None:
        """Every payload the poller sends validates against the schema of its ce_type."""
        seen = set()
        for record in sample_records():
            ce_type = dict(record.headers)["ce_type"].decode()
            schema = orjson.loads((schemas.HERE / f"{ce_type}.json").read_bytes())
            jsonschema.Draft202012Validator(schema).validate(orjson.loads(record.value))
            seen.add(ce_type)
        assert seen == {model.__name__ for model in schemas.PAYLOADS}

    def test_wire_headers_validate(self) -> None:
        """Every record's headers validate against the AsyncAPI CloudEvents header schema."""
        doc = yaml.safe_load((schemas.HERE / schemas.ASYNCAPI_FILE).read_text(encoding="utf-8"))
        header_schema = doc["components"]["schemas"]["CloudEventHeaders"]
        for record in [*sample_records(), tombstone()]:
            headers = {key: value.decode() for key, value in record.headers}
            jsonschema.Draft202012Validator(header_schema).validate(headers)


class TestAsyncApi:
    def document(self) -> dict[str, Any]:
        text = (schemas.HERE / schemas.ASYNCAPI_FILE).read_text(encoding="utf-8")
        loaded: dict[str, Any] = yaml.safe_load(text)
        return loaded

    def test_topics(self) -> None:
        """The document describes the four topics with their prefixed addresses."""
        doc = self.document()
        assert doc["asyncapi"] == "3.0.0"
        addresses = {channel["address"] for channel in doc["channels"].values()}
        assert addresses == {"{prefix}.tasks", "{prefix}.tasks.state", "{prefix}.task-types",
                             "{prefix}.poller.dead-letter"}
        assert set(doc["channels"]["state"]["messages"]) == {"TaskState"}
        assert doc["components"]["parameters"]["prefix"]["default"] == "waiqin365"
        assert set(doc["channels"]["tasks"]["messages"]) == {
            model.__name__ for model in events.TASK_EVENTS
        }

    def test_references_resolve(self) -> None:
        """Every $ref points at a node of the document or a schema file beside it."""
        doc = self.document()
        for ref in _refs(doc):
            if ref.startswith("#/"):
                node: Any = doc
                for part in ref[2:].split("/"):
                    node = node[part]
            else:
                assert (schemas.HERE / ref).is_file(), ref

    def test_messages_have_key_and_headers(self) -> None:
        """Every message names its Kafka key, its CloudEvents headers and its ce_type."""
        for name, message in self.document()["components"]["messages"].items():
            assert message["bindings"]["kafka"]["key"]["type"] == "string"
            base, own, *_ = message["headers"]["allOf"]
            assert base == {"$ref": "#/components/schemas/CloudEventHeaders"}
            assert own["properties"]["ce_type"] == {"const": name}


    def test_state_payload_admits_tombstones(self) -> None:
        """The state message's payload accepts a state record's value and a tombstone's null."""
        doc = self.document()
        payload = doc["components"]["messages"]["TaskState"]["payload"]
        task_state = orjson.loads((schemas.HERE / "TaskState.json").read_bytes())
        resolved = {"oneOf": [task_state if "$ref" in option else option
                              for option in payload["oneOf"]]}
        [_, *_, state] = [r for r in sample_records() if r.topic == "state"]
        jsonschema.Draft202012Validator(resolved).validate(orjson.loads(state.value))
        jsonschema.Draft202012Validator(resolved).validate(tombstone().value)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft202012Validator(resolved).validate({"task_status": 1})


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        for value in node.values():
            found.extend(_refs(value))
        return found
    if isinstance(node, list):
        return [ref for item in node for ref in _refs(item)]
    return []
