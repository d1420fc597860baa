"""Tests for poller.wire: a page split into its records' bytes, parsed only when read."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poller import normalise, wire
from poller.errors import SourceResponseError
from tests.strategies import raw_tasks, renderings

RECORDS: list[Any] = [
    {"task_id": "t1", "status": "1", "x": [1, {"y": "深"}]},
    {"task_id": 42, "status": 2},
    {"status": 3},
    {"task_id": "", "z": None},
]


def split(records: list[Any] | str) -> wire.WireRecords:
    data = records if isinstance(records, str) else orjson.dumps(records).decode()
    result = wire.split("queryTask", data)
    assert result is not None
    return result


class TestSplit:
    def test_records_read_as_a_whole_page_parse(self) -> None:
        """Each record, read on demand, is what parsing the whole page gives."""
        page = split(RECORDS)
        assert len(page) == 4 and page == RECORDS and list(page) == RECORDS
        assert page[-1] == RECORDS[-1] and page[1:3] == RECORDS[1:3]

    def test_task_ids_and_hashes(self) -> None:
        """task_ids are `task_id_of` the parsed records; hashes the rendering hash of each
        record's bytes; raw_ids the task_id values as sent."""
        page = split(RECORDS)
        assert page.task_ids == [normalise.task_id_of(r) for r in RECORDS] == ["t1", "42", None, None]
        assert page.hashes == [normalise.rendering_hash(orjson.dumps(r)) for r in RECORDS]
        assert page.raw_ids == ["t1", 42, None, ""]

    def test_whitespace_is_part_of_the_rendering(self) -> None:
        """The same record with other spacing is another rendering (and the same record)."""
        tight, loose = split('[{"task_id":"a"}]'), split('[ {"task_id" : "a"} ]')
        assert tight.hashes != loose.hashes and list(tight) == list(loose)

    @pytest.mark.parametrize("data", [
        pytest.param('[{"task_id":"a"}, 3]', id="a-record-not-an-object"),
        pytest.param('{"task_id":"a"}', id="not-an-array"),
        pytest.param('[{"task_id":"a"', id="truncated"),
        pytest.param("[" * 2000 + "]" * 2000, id="too-deep"),
    ])
    def test_declines_what_is_not_an_array_of_objects(self, data: str) -> None:
        """Anything else is left to a whole-page parse (None)."""
        assert wire.split("queryTask", data) is None

    def test_a_record_only_msgspec_reads_fails_the_page_when_read(self) -> None:
        """A record orjson refuses (a number out of double range) raises the page's
        SourceResponseError when it is read, as a whole-page parse would have."""
        page = split('[{"task_id":"a","n":1e400}]')
        with pytest.raises(SourceResponseError, match="response_data is a string but not JSON"):
            page[0]

    @settings(deadline=None)  # wall-clock limits flake on a busy CI runner
    @given(st.lists(raw_tasks(), max_size=5), st.data())
    def test_any_page(self, records: list[Any], data: st.DataObject) -> None:
        """For any page of renderings, ids and hashes agree with the parsed records'."""
        records = [data.draw(renderings(r)) for r in records]
        page = split(records)
        assert page == records
        assert page.task_ids == [normalise.task_id_of(r) for r in records]
        assert page.hashes == [normalise.received_hash(r) for r in records]
