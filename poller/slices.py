"""Pure: create-date slices of the task history, and the walk that reads them newest first.

A task's create date never changes, so a slice of create dates is a fixed set of tasks (today's
aside): offset paging over it is far steadier than over the whole history, and progress can be
kept as "every slice newer than this date was read". The first run, the sweep and backfills
read the history this way.

The walk starts at today and goes back in time. Each slice is sized from how full the one
before it was, aiming at half of `max_pages` pages; after an empty slice the next one reaches
back to the floor in one request (the years before a company's first task cost one request).
A slice of more than one day that turns out to fill more than `max_pages` pages is abandoned
and its newer part read first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta

from poller.models import Walk, Window

# The oldest create date any walk asks for. Waiqin365 went live in the early 2010s, so the
# years before it cost one empty request.
FLOOR = date(2000, 1, 1)
ONE_DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Slice:
    """An inclusive range of create dates, read as one queryTask scan."""

    start: date
    end: date

    def __post_init__(self) -> None:
        if self.start > self.end:
            raise ValueError(f"a slice must not end before it starts: {self.start} > {self.end}")

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def window(self, modify_from: date | None, today: date) -> Window:
        """The queryTask filter of this slice; `modify_from` is POLLER_START_DATE when set."""
        return Window(modify_from=modify_from, modify_to=max(modify_from, today) if modify_from else None,
                      create_from=self.start, create_to=self.end)

    def describe(self) -> str:
        return self.start.isoformat() if self.days == 1 else f"{self.start}..{self.end}"


def next_slice(walk: Walk, floor: date = FLOOR) -> Slice | None:
    """The next slice of a walk, or None when it reached the floor."""
    if walk.end < floor:
        return None
    return Slice(max(floor, walk.end - timedelta(days=walk.width - 1)), walk.end)


def start(today: date) -> Walk:
    """A walk that begins with today's slice."""
    return Walk(end=today)


def after_read(walk: Walk, read: Slice, tasks: int, *, rows: int, max_pages: int) -> Walk:
    """The walk after a complete, drift-free read of `read`, which held `tasks` tasks."""
    following = read.start - ONE_DAY
    if tasks == 0:  # an empty stretch: everything older in one request
        return Walk(end=following, width=(following - FLOOR).days + 1,
                    dense_width=walk.dense_width)
    target = max_pages * rows / 2
    width = max(1, min(4 * read.days, round(read.days * target / tasks)))
    return Walk(end=following, width=width, dense_width=width)


def after_overflow(walk: Walk, read: Slice) -> Walk:
    """The walk after `read` (more than one day) filled more than the page limit: read its
    newer part first, no wider than twice the last slice that held tasks, and at most half."""
    if read.days == 1:
        raise ValueError("a single day cannot be split; it is read whole")
    width = max(1, min(read.days // 2, 2 * walk.dense_width))
    return walk.model_copy(update={"end": read.end, "width": width})


def is_overflowing(read: Slice, full_pages: int, *, max_pages: int) -> bool:
    """Whether a read of `read` should stop and split: more full pages than the limit allows
    for a slice of more than one day."""
    return read.days > 1 and full_pages > max_pages


def share_read(counts: Mapping[date, int], end: date) -> float:
    """How much of the stored history a walk back to `end` has read, by tasks (what a pass
    costs), not days: a few years of tasks are far fewer days than the walk's reach to the floor."""
    total = sum(counts.values())
    return sum(n for day, n in counts.items() if day > end) / total if total else 0.0


def planned(counts: Mapping[date, int], end: date, *, capacity: int, floor: date = FLOOR) -> Slice | None:
    """The widest slice ending at `end` whose stored tasks fit `capacity` (at least one day).

    `counts` holds stored tasks per create date (the sweep knows the history it swept before);
    days without tasks cost nothing, so a quiet stretch joins the slice that ends after it.
    """
    if end < floor:
        return None
    total = 0
    for day in sorted((d for d, n in counts.items() if n and floor <= d <= end), reverse=True):
        total += counts[day]
        if total > capacity and day < end:  # a single day over capacity is read whole
            return Slice(day + ONE_DAY, end)
    return Slice(floor, end)
