"""Pure: how many pages a cycle may read besides its window, within the API's daily budget.

The window always comes first. The sweep gets the pages that spread one pass over the sweep
period; backfills and the first run get about one interval's worth of requests at the
configured rate. With WAIQIN_DAILY_REQUEST_BUDGET set, everything beyond the window only uses
what the Beijing day has left, pro rata over its remaining hours, and when the window alone would
exceed the budget the interval is stretched instead (never an error).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from poller import slices
from poller.models import BEIJING

DAY_S = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class CyclePlan:
    """What one cycle may do beyond its window, and when the next one starts."""

    extra_pages: int  # pages for the first run, backfills and the sweep, in that order
    sweep_pages: int  # the sweep's share of extra_pages
    interval_s: float  # seconds from this cycle's start to the next one's
    is_stretched: bool = False  # the budget cannot afford the window at the configured interval


def sweep_pages_per_cycle(pages_per_pass: int, *, period_h: float, interval_s: float) -> int:
    """Pages each cycle reads so that one sweep pass fits the period (0: the sweep is off)."""
    if period_h <= 0 or pages_per_pass <= 0:
        return 0
    cycles_per_period = max(1.0, period_h * 3600 / interval_s)
    return math.ceil(pages_per_pass / cycles_per_period)


def pages_per_pass(counts: Mapping[date, int], today: date, *, rows: int, max_pages: int) -> int:
    """Requests one sweep pass costs: each planned slice's pages, its short last page included."""
    capacity = slice_capacity(rows=rows, max_pages=max_pages)
    total, end = 0, today
    while (planned := slices.planned(counts, end, capacity=capacity)) is not None:
        stored = sum(n for day, n in counts.items() if planned.start <= day <= planned.end)
        total += stored // rows + 1
        end = planned.start - slices.ONE_DAY
    return total


def slice_capacity(*, rows: int, max_pages: int) -> int:
    """Stored tasks a sweep slice is planned for: half the page limit, room to grow."""
    return max(1, max_pages * rows // 2)


def interval_allowance(interval_s: float, rate_per_s: float) -> int:
    """About one interval's worth of requests at the client's rate (at least 10)."""
    return max(10, math.ceil(interval_s * rate_per_s))


def plan_cycle(*, now: datetime, interval_s: float, window_requests: int, wanted_extra: int,
               sweep_pages: int, budget: int | None, used_today: int,
               pro_rata: bool = True) -> CyclePlan:
    """The pages beyond the window this cycle may read, and the interval to the next cycle.

    `window_requests` is what one window cycle costs (its pages and task-type requests);
    `wanted_extra` what the first run or the backfills and the sweep would like to read.
    Backfills and the sweep share what is left pro rata over the day's remaining cycles; the
    first run (`pro_rata=False`) may use all of it but the window's reserve for the day.
    """
    if budget is None:
        return CyclePlan(wanted_extra, min(sweep_pages, wanted_extra), interval_s)
    left = budget - used_today
    remaining_s = max(1.0, seconds_to_midnight(now))
    cycles_left = max(1.0, remaining_s / interval_s)
    window_need = window_requests * cycles_left
    if not pro_rata:
        # The window cannot start before the first run ends; when the day cannot afford it at
        # this interval anyway (it will be stretched), half of what is left is kept for it.
        reserve = min(window_need, left / 2)
        return CyclePlan(max(0, min(wanted_extra, int(left - reserve))), 0, interval_s)
    if window_need > left:
        # Stretch: the window alone at this interval would overrun the day's budget.
        stretched = remaining_s if left <= window_requests else remaining_s * window_requests / left
        return CyclePlan(0, 0, max(interval_s, stretched), is_stretched=True)
    extra = min(wanted_extra, int((left - window_need) / cycles_left))
    return CyclePlan(extra, min(sweep_pages, extra), interval_s)


def projected_per_day(*, window_requests: float, interval_s: float, pages_per_pass: int,
                      period_h: float) -> float:
    """Requests a day at the current rate: the window's cycles and the sweep's passes."""
    sweep = pages_per_pass * 24 / period_h if period_h > 0 else 0.0
    return window_requests * DAY_S / interval_s + sweep


def seconds_to_midnight(now: datetime) -> float:
    """Seconds until the next Beijing midnight (when the API's daily count starts over)."""
    local = now.astimezone(BEIJING)
    midnight = (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - local).total_seconds()
