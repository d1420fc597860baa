"""Create-date slices and the walk through the history: sizes, coverage, cost."""

from __future__ import annotations

import itertools
import math
from datetime import date, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poller import slices
from poller.models import Walk, Window
from poller.slices import FLOOR, Slice

TODAY = date(2026, 11, 25)
ROWS, MAX_PAGES = 100, 10


def read_walk(counts: dict[date, int], today: date = TODAY) -> tuple[list[Slice], int]:
    """Walk the history held in `counts` as the first run does; the slices read and the
    requests it cost (full pages, the short last page, the pages of abandoned over-full reads)."""
    walk = slices.start(today)
    done: list[Slice] = []
    requests = 0
    while (read := slices.next_slice(walk)) is not None:
        tasks = sum(n for d, n in counts.items() if read.start <= d <= read.end)
        full = tasks // ROWS
        if slices.is_overflowing(read, full, max_pages=MAX_PAGES):
            requests += MAX_PAGES + 1  # the reader stops at the first full page past the limit
            walk = slices.after_overflow(walk, read)
            continue
        requests += full + 1
        done.append(read)
        walk = slices.after_read(walk, read, tasks, rows=ROWS, max_pages=MAX_PAGES)
    return done, requests


class TestSlice:
    def test_days_and_window(self) -> None:
        """A slice knows its days and filters create dates (and the start date when set)."""
        week = Slice(date(2026, 1, 1), date(2026, 1, 7))
        assert week.days == 7 and week.describe() == "2026-01-01..2026-01-07"
        assert week.window(None, TODAY) == Window(create_from=date(2026, 1, 1), create_to=date(2026, 1, 7))
        assert week.window(date(2026, 3, 1), TODAY) == Window(
            modify_from=date(2026, 3, 1), modify_to=TODAY,
            create_from=date(2026, 1, 1), create_to=date(2026, 1, 7))

    def test_a_slice_never_ends_before_it_starts(self) -> None:
        """An inverted slice is a bug, refused at once."""
        with pytest.raises(ValueError, match="must not end before"):
            Slice(date(2026, 1, 2), date(2026, 1, 1))


class TestWalk:
    def test_starts_with_today(self) -> None:
        """The first slice of a walk is today alone."""
        assert slices.next_slice(slices.start(TODAY)) == Slice(TODAY, TODAY)

    def test_sizes_follow_the_fill(self) -> None:
        """A slice half as full as the target makes the next one twice as wide (at most 4x)."""
        week = Slice(TODAY - timedelta(days=6), TODAY)
        walk = slices.after_read(Walk(end=TODAY, width=7), week, 250, rows=ROWS, max_pages=MAX_PAGES)
        assert walk.end == TODAY - timedelta(days=7) and walk.width == 14
        walk = slices.after_read(Walk(end=TODAY, width=7), week, 1, rows=ROWS, max_pages=MAX_PAGES)
        assert walk.width == 28

    def test_an_empty_slice_reaches_the_floor(self) -> None:
        """After an empty slice, everything older is one slice: the empty years cost one request."""
        walk = slices.after_read(Walk(end=TODAY, width=30, dense_width=30), Slice(TODAY - timedelta(days=29), TODAY), 0,
                                 rows=ROWS, max_pages=MAX_PAGES)
        assert slices.next_slice(walk) == Slice(FLOOR, TODAY - timedelta(days=30))
        assert walk.dense_width == 30

    def test_an_over_full_reach_reads_its_newer_part_first(self) -> None:
        """An over-full slice is cut back to its newer part, at most twice the last dense width."""
        walk = Walk(end=date(2025, 1, 31), width=(date(2025, 1, 31) - FLOOR).days + 1, dense_width=5)
        read = slices.next_slice(walk)
        assert read is not None and read.start == FLOOR
        walk = slices.after_overflow(walk, read)
        assert slices.next_slice(walk) == Slice(date(2025, 1, 22), date(2025, 1, 31))

    def test_a_single_day_is_never_split(self) -> None:
        """One day is read whole, however many pages it fills."""
        assert not slices.is_overflowing(Slice(TODAY, TODAY), 50, max_pages=MAX_PAGES)
        with pytest.raises(ValueError, match="single day"):
            slices.after_overflow(Walk(end=TODAY), Slice(TODAY, TODAY))

    @settings(deadline=None)
    @given(st.dictionaries(st.dates(min_value=date(2012, 1, 1), max_value=TODAY),
                           st.integers(min_value=0, max_value=3000), max_size=60))
    def test_every_day_is_read_exactly_once(self, counts: dict[date, int]) -> None:
        """Whatever the history, the slices read cover every day from the floor to today once,
        and only single days exceed the page limit."""
        done, _ = read_walk(counts)
        covered = sorted(done, key=lambda s: s.start)
        assert covered[0].start == FLOOR and covered[-1].end == TODAY
        for older, newer in itertools.pairwise(covered):
            assert older.end + timedelta(days=1) == newer.start
        for read in done:
            tasks = sum(n for d, n in counts.items() if read.start <= d <= read.end)
            assert read.days == 1 or tasks // ROWS <= MAX_PAGES

    def test_a_dense_history_costs_little_more_than_its_pages(self) -> None:
        """Three years of 900 tasks a day (about 10,000 pages of 100 rows) cost at most 1.5x
        the pages they fill, the empty years before them included."""
        counts = {TODAY - timedelta(days=n): 900 for n in range(3 * 365)}
        _, requests = read_walk(counts)
        pages = math.ceil(sum(counts.values()) / ROWS)
        assert requests <= 1.5 * pages

    def test_a_gap_in_the_history_costs_one_over_full_read(self) -> None:
        """A week without tasks in a dense history: one reach to the floor, cut back once."""
        counts = {TODAY - timedelta(days=n): 900 for n in range(400) if not 200 <= n < 207}
        _, requests = read_walk(counts)
        _, without_gap = read_walk(counts | {
            TODAY - timedelta(days=n): 900 for n in range(200, 207)})
        assert requests <= without_gap + MAX_PAGES + 1 + 2


class TestPlanned:
    def test_fills_up_to_capacity(self) -> None:
        """The sweep's slice ends at `end` and reaches back as far as the capacity allows."""
        counts = {date(2026, 1, d): 100 for d in range(1, 11)}
        assert slices.planned(counts, date(2026, 1, 10), capacity=350) == Slice(
            date(2026, 1, 8), date(2026, 1, 10))

    def test_the_oldest_slice_reaches_the_floor(self) -> None:
        """Once the stored history fits, the slice reaches back to the floor."""
        counts = {date(2026, 1, 1): 10}
        assert slices.planned(counts, date(2026, 1, 5), capacity=350) == Slice(FLOOR, date(2026, 1, 5))
        assert slices.planned({}, date(2026, 1, 5), capacity=1) == Slice(FLOOR, date(2026, 1, 5))

    def test_a_day_over_capacity_is_one_slice(self) -> None:
        """A single day holding more than the capacity is a slice of its own."""
        counts = {date(2026, 1, 5): 5000, date(2026, 1, 4): 10}
        assert slices.planned(counts, date(2026, 1, 5), capacity=350) == Slice(
            date(2026, 1, 5), date(2026, 1, 5))
        assert slices.planned(counts, date(2026, 1, 4), capacity=350) == Slice(FLOOR, date(2026, 1, 4))
