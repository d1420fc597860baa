"""Tests for poller.normalise.times: the API's minutes by table lookup, any ISO 8601 time in general."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poller.errors import NormaliseError
from poller.models import BEIJING
from poller.normalise import times


class TestApiMinute:
    @pytest.mark.parametrize(("value", "expected"), [
        pytest.param("2020-11-19 10:33", "2020-11-19T10:33:00+08:00", id="usual"),
        pytest.param("2024-02-29 23:59", "2024-02-29T23:59:00+08:00", id="leap-day"),
        pytest.param("2000-02-29 00:00", "2000-02-29T00:00:00+08:00", id="leap-century"),
        pytest.param("2000-01-01 00:00", "2000-01-01T00:00:00+08:00", id="first-day"),
        pytest.param("2099-12-31 23:59", "2099-12-31T23:59:00+08:00", id="last-day"),
    ])
    def test_canonical(self, value: str, expected: str) -> None:
        """An exact, valid API minute becomes its RFC 3339 Beijing time."""
        assert times.api_minute(value) == expected

    @pytest.mark.parametrize("value", [
        "2023-02-29 10:00", "1900-02-29 10:00", "2024-04-31 10:00", "2024-13-01 10:00",
        "2024-00-10 10:00", "2024-05-00 10:00", "2024-05-01 24:00", "2024-05-01 10:60",
        "2024-05-01T10:33", "2024-05-01 10:33:00", "2024/05/01 10:33", "1999-12-31 23:59",
        "2100-01-01 00:00", "2100-02-29 00:00", "２０２４-05-01 10:33", "2024-05-01 1033Z", "",
    ])
    def test_anything_else_is_left_to_the_general_parser(self, value: str) -> None:
        """Invalid dates, other shapes and years outside the table are not taken."""
        assert times.api_minute(value) is None

    @given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31, 23, 59)))
    def test_agrees_with_datetime(self, when: datetime) -> None:
        """Every minute of the table's years reads as datetime itself reads it."""
        value = when.strftime("%Y-%m-%d %H:%M")
        assert times.api_minute(value) == when.replace(second=0, microsecond=0, tzinfo=BEIJING).isoformat()

    @given(st.text(alphabet="0123456789- :T", min_size=16, max_size=16))
    def test_never_disagrees_with_the_general_parser(self, value: str) -> None:
        """Whatever the table takes, the general parser gives the same; what it refuses, it may reject."""
        minute = times.api_minute(value)
        if minute is not None:
            assert minute == _general(value)


def _general(value: str) -> str:
    parsed = datetime.fromisoformat(value).replace(tzinfo=BEIJING)
    return parsed.isoformat()


class TestCanonical:
    @pytest.mark.parametrize(("value", "expected"), [
        pytest.param("2020-11-19 10:33", "2020-11-19T10:33:00+08:00", id="api-minute"),
        pytest.param("2020-11-19 10:33:07", "2020-11-19T10:33:07+08:00", id="seconds"),
        pytest.param("2020-11-19T10:33:07.999", "2020-11-19T10:33:07+08:00", id="fraction-dropped"),
        pytest.param("2020-11-19T02:33:00Z", "2020-11-19T10:33:00+08:00", id="utc"),
        pytest.param("2020-11-19T10:33:00-05:00", "2020-11-19T23:33:00+08:00", id="other-zone"),
        pytest.param("1850-06-01 10:00", "1850-06-01T10:00:00+08:00", id="year-outside-table"),
        pytest.param("2023-12-31T20:00:00-05:00", "2024-01-01T09:00:00+08:00", id="crosses-year"),
    ])
    def test_canonical(self, value: str, expected: str) -> None:
        """API minutes, seconds and ISO 8601 with any zone become Beijing RFC 3339 with seconds."""
        assert times.canonical(value, "t", None) == expected

    @pytest.mark.parametrize(("value", "reason"), [
        pytest.param("yesterday", "is not a time", id="words"),
        pytest.param("20201119", "is not a time", id="basic-format"),
        pytest.param("2023-02-29 10:00", "is not a time", id="no-such-day"),
        pytest.param("9999-12-31T23:59:00-05:00", "out of range", id="beyond-9999-in-beijing"),
        pytest.param("0001-01-01 07:59", "out of range", id="before-year-1-in-utc"),
    ])
    def test_rejected(self, value: str, reason: str) -> None:
        """Unreadable times and times Beijing time or UTC cannot hold raise NormaliseError."""
        with pytest.raises(NormaliseError, match=reason) as caught:
            times.canonical(value, "modify_time", "7")
        assert caught.value.kind == "bad_time" and caught.value.task_id == "7"

    def test_to_datetime(self) -> None:
        """A canonical time reads back as the aware instant it names."""
        when = times.to_datetime("2020-11-19T10:33:00+08:00")
        assert when == datetime(2020, 11, 19, 2, 33, tzinfo=UTC)
        assert when.utcoffset() == timedelta(hours=8)
