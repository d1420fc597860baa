"""Pure window arithmetic: which modify dates a cycle scans and when a day may close."""

from __future__ import annotations

from datetime import date, datetime, timedelta

from poller.models import BEIJING, PollState, Window


def beijing_date(moment: datetime) -> date:
    """The Beijing calendar date of an aware moment (the API filters by Beijing dates)."""
    return moment.astimezone(BEIJING).date()


def cycle(state: PollState, now: datetime, *, lookback: timedelta) -> Window:
    """The modify-date window of a steady-state cycle: [open start, today].

    It is always one query that ends today: within [from, today] a task never leaves the result
    set (its modify date only moves forward, to today), which is what lets a scan without
    repeated task_ids prove it read every task. Splitting it into per-day queries would lose that.
    """
    assert state.window_from is not None, "cycle() needs a completed first run"
    return Window(modify_from=open_from(state.window_from, now, lookback),
                  modify_to=beijing_date(now))


def open_from(window_from: date, now: datetime, lookback: timedelta) -> date:
    """The window's first day as of `now`: the stored start, but never after (now - lookback).

    The window is derived from our own clock. A clock that jumped ahead (past midnight, further
    than the lookback) and came back must not leave the start pinned in its future: the days
    between would never be read again.
    """
    return min(window_from, beijing_date(now - lookback))


def advance(
    state: PollState, *, started_at: datetime, lookback: timedelta, drift_free: bool
) -> PollState:
    """The state after a fully published and committed scan that started at `started_at`.

    The next window starts on the Beijing date of (start - lookback), but only a drift-free scan
    may move the start past a day: while scans keep seeing repeats the day stays open.
    """
    candidate = beijing_date(started_at - lookback)
    if state.window_from is None or drift_free:
        window_from = candidate
    else:
        window_from = open_from(state.window_from, started_at, lookback)
    return state.model_copy(
        update={"window_from": window_from, "last_success_started_at": started_at}
    )


def days(window: Window) -> int:
    """How many days a bounded window spans (0 for an unbounded one)."""
    if window.modify_from is None or window.modify_to is None:
        return 0
    return (window.modify_to - window.modify_from).days + 1


def split(window: Window, span_days: int) -> list[Window]:
    """Consecutive sub-windows of at most `span_days` days, oldest first (for backfills)."""
    if span_days < 1:
        raise ValueError(f"span_days must be at least 1, got {span_days}")
    if window.modify_from is None or window.modify_to is None:
        return [window]
    parts = []
    start = window.modify_from
    while start <= window.modify_to:
        end = min(start + timedelta(days=span_days - 1), window.modify_to)
        parts.append(Window(modify_from=start, modify_to=end,
                            create_from=window.create_from, create_to=window.create_to))
        start = end + timedelta(days=1)
    return parts
