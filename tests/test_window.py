"""Tests for the pure window arithmetic."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poller import window
from poller.models import BEIJING, PollState, Window

LOOKBACK = timedelta(minutes=30)


def bj(*args: int) -> datetime:
    return datetime(*args, tzinfo=BEIJING)


class TestBeijingDate:
    def test_utc_evening_is_next_beijing_day(self) -> None:
        """16:30 UTC is already the next day in Beijing."""
        assert window.beijing_date(datetime(2026, 3, 1, 16, 30, tzinfo=UTC)) == date(2026, 3, 2)


class TestCycle:
    def test_steady_state_is_today_only(self) -> None:
        """In steady state the window is today only."""
        state = PollState(window_from=date(2026, 3, 1))
        assert window.cycle(state, bj(2026, 3, 1, 12), lookback=LOOKBACK) == Window(
            modify_from=date(2026, 3, 1), modify_to=date(2026, 3, 1))

    def test_backwards_clock_never_inverts_the_window(self) -> None:
        """A start after today is clamped so the window is never empty."""
        state = PollState(window_from=date(2026, 3, 5))
        win = window.cycle(state, bj(2026, 3, 1, 12), lookback=LOOKBACK)
        assert win.modify_from == win.modify_to == date(2026, 3, 1)

    def test_days_of_lookback_keep_days_open(self) -> None:
        """A lookback of two days (2880 minutes) keeps the two previous days in every window."""
        lookback = timedelta(minutes=2880)
        after = window.advance(PollState(window_from=date(2026, 3, 1)), started_at=bj(2026, 3, 5, 12),
                               lookback=lookback, drift_free=True)
        win = window.cycle(after, bj(2026, 3, 5, 12, 1), lookback=lookback)
        assert (win.modify_from, win.modify_to) == (date(2026, 3, 3), date(2026, 3, 5))

    def test_clock_jump_ahead_past_midnight_does_not_pin_the_start(self) -> None:
        """A clock that jumped past midnight (further than the lookback) and came back leaves
        no day unread: the day it jumped over is scanned again after the real midnight."""
        state = PollState(window_from=date(2026, 3, 1))
        jumped = window.advance(state, started_at=bj(2026, 3, 2, 1, 0), lookback=LOOKBACK,
                                drift_free=True)  # the clock says 01:00 tomorrow
        back = window.cycle(jumped, bj(2026, 3, 1, 23, 40), lookback=LOOKBACK)  # corrected
        assert back.modify_from == date(2026, 3, 1)
        corrected = window.advance(jumped, started_at=bj(2026, 3, 1, 23, 40), lookback=LOOKBACK,
                                   drift_free=True)
        # Just after the real midnight, a change stamped 23:50 yesterday is still in the window.
        after_midnight = window.cycle(corrected, bj(2026, 3, 2, 0, 5), lookback=LOOKBACK)
        assert after_midnight.modify_from == date(2026, 3, 1)


class TestAdvance:
    def test_just_after_midnight_keeps_yesterday(self) -> None:
        """A cycle started 00:10 with a 30 minute lookback keeps yesterday in the window."""
        state = PollState(window_from=date(2026, 3, 1))
        after = window.advance(state, started_at=bj(2026, 3, 2, 0, 10), lookback=LOOKBACK, drift_free=True)
        assert after.window_from == date(2026, 3, 1)
        assert after.last_success_started_at == bj(2026, 3, 2, 0, 10)

    def test_drift_free_scan_closes_the_day(self) -> None:
        """Once start - lookback is today, a drift-free scan moves the start to today."""
        state = PollState(window_from=date(2026, 3, 1))
        after = window.advance(state, started_at=bj(2026, 3, 2, 0, 45), lookback=LOOKBACK, drift_free=True)
        assert after.window_from == date(2026, 3, 2)

    def test_scan_with_repeats_holds_the_day(self) -> None:
        """A scan that saw repeated task_ids never closes a day."""
        state = PollState(window_from=date(2026, 3, 1))
        after = window.advance(state, started_at=bj(2026, 3, 3, 12), lookback=LOOKBACK, drift_free=False)
        assert after.window_from == date(2026, 3, 1)

    def test_first_completion_sets_the_start(self) -> None:
        """The first run's completion opens the window at (start - lookback)."""
        after = window.advance(PollState(), started_at=bj(2026, 3, 2, 0, 10), lookback=LOOKBACK,
                               drift_free=False)
        assert after.window_from == date(2026, 3, 1)

    @given(st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1)),
           st.dates(min_value=date(2020, 1, 1), max_value=date(2030, 1, 1)), st.booleans())
    def test_start_follows_the_clock_and_drift(self, started: datetime, start: date,
                                               drift_free: bool) -> None:
        """Whatever the clock says, the start is never after (start of scan - lookback), and only
        a drift-free scan moves it forward."""
        state = PollState(window_from=start)
        at = started.replace(tzinfo=BEIJING)
        after = window.advance(state, started_at=at, lookback=LOOKBACK, drift_free=drift_free)
        assert after.window_from is not None
        assert after.window_from <= window.beijing_date(at - LOOKBACK)
        if not drift_free:
            assert after.window_from <= start


class TestSplit:
    @pytest.mark.parametrize(("span", "count"), [(1, 10), (3, 4), (10, 1), (30, 1)])
    def test_split_covers_every_day_once(self, span: int, count: int) -> None:
        """Sub-windows are consecutive, disjoint and cover the window exactly."""
        win = Window(modify_from=date(2026, 1, 1), modify_to=date(2026, 1, 10))
        parts = window.split(win, span)
        assert len(parts) == count
        covered = [p.modify_from + timedelta(days=i) for p in parts  # type: ignore[operator]
                   for i in range(window.days(p))]
        assert covered == [date(2026, 1, 1) + timedelta(days=i) for i in range(10)]

    def test_create_bounds_are_kept(self) -> None:
        """Five days split by two give [d0,d1], [d2,d3], [d4], keeping the create bounds."""
        d0 = date(2024, 1, 30)
        parts = window.split(Window(modify_from=d0, modify_to=d0 + timedelta(days=4), create_from=d0), 2)
        assert [(p.modify_from, p.modify_to) for p in parts] == [
            (d0, d0 + timedelta(days=1)), (d0 + timedelta(days=2), d0 + timedelta(days=3)),
            (d0 + timedelta(days=4), d0 + timedelta(days=4))]
        assert all(p.create_from == d0 for p in parts)

    def test_open_window_is_not_split(self) -> None:
        """A window without both modify bounds is scanned as given."""
        win = Window(modify_from=date(2024, 1, 1))
        assert window.split(win, 1) == [win]

    def test_span_must_be_positive(self) -> None:
        """A span below one day is a programming error, said clearly."""
        with pytest.raises(ValueError, match="at least 1"):
            window.split(Window(), 0)
